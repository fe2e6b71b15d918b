"""Turning library errors into the one-line messages the UI shows."""

from __future__ import annotations

import re


def first_sentence(text: str) -> str:
    """The first sentence of `text` on one line (library messages go on to say where they looked)."""
    flat = " ".join(str(text).split())
    return re.split(r"(?<=[.!?])\s", flat, maxsplit=1)[0]
