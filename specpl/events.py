"""Progress events: one JSON object a line in ``events.jsonl`` and, optionally, a callback.

The app reads the file from another process, so every line is flushed as it is written; a reader
ignores a torn last line.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

EventCallback = Callable[[dict[str, Any]], None]


class EventLog:
    def __init__(self, path: Path | None, callback: EventCallback | None = None) -> None:
        self.path = path
        self.callback = callback

    def emit(self, kind: str, **fields: Any) -> dict[str, Any]:
        event = {"type": kind, "time": time.time(), **fields}
        if self.path is not None:
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(event) + "\n")
        if self.callback is not None:
            self.callback(event)
        return event


def read_events(path: Path) -> list[dict[str, Any]]:
    """All complete events in `path` (a half-written last line is skipped)."""
    return read_new_events(path, 0)[0]


def read_new_events(path: Path, offset: int) -> tuple[list[dict[str, Any]], int]:
    """Events written since byte `offset`, and the offset to pass next time. Only whole lines are
    consumed, so a poller never sees (or skips) a line that is still being written."""
    if not path.exists():
        return [], offset
    with open(path, "rb") as handle:
        handle.seek(offset)
        data = handle.read()
    complete = data[: data.rfind(b"\n") + 1]
    events = []
    for line in complete.decode("utf-8", errors="replace").splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return events, offset + len(complete)
