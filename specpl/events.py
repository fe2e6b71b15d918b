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
    if not path.exists():
        return []
    events = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return events
