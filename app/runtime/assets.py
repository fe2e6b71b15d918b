"""Serve Gradio's built front-end files from memory, compressed once and cached by the browser.

A first visit fetches about 115 small JavaScript and CSS files from `/assets/`. Gradio answers
each through its FastAPI route (path checks, a threaded file read, compression per request), which
on a 2-core machine adds up to most of a second while the browser is also busy parsing. The file
names carry a content hash, so they never change under the same name: this middleware reads each
file once, keeps its brotli and gzip forms, and marks it immutable, so a second visit does not
even revalidate. Anything else (and any name that is not a plain file in the build folder) goes
on to Gradio untouched.
"""

from __future__ import annotations

import gzip
import mimetypes
import re
from pathlib import Path
from typing import Any, Awaitable, Callable

import gradio

Scope = dict[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[dict]], Callable[[dict], Awaitable[None]]], Awaitable[None]]

BUILD_DIR = Path(gradio.__file__).parent / "templates" / "frontend" / "assets"
PREFIX = "/assets/"
PLAIN_NAME = re.compile(r"[A-Za-z0-9_.\-]+")
IMMUTABLE = b"public, max-age=31536000, immutable"


class _Asset:
    """One build file: its bytes as sent for each encoding the browser may accept."""

    def __init__(self, path: Path) -> None:
        self.content_type = (mimetypes.guess_type(path.name)[0] or "application/octet-stream").encode()
        raw = path.read_bytes()
        self.bodies: dict[str, bytes] = {"identity": raw, "gzip": gzip.compress(raw, compresslevel=6, mtime=0)}
        try:
            import brotli

            self.bodies["br"] = brotli.compress(raw, quality=5)
        except ImportError:  # gradio ships brotli, but gzip alone is fine
            pass

    def pick(self, accept_encoding: str) -> tuple[str, bytes]:
        accepted = {part.split(";")[0].strip() for part in accept_encoding.split(",")}
        for encoding in ("br", "gzip"):
            if encoding in accepted and encoding in self.bodies:
                return encoding, self.bodies[encoding]
        return "identity", self.bodies["identity"]


class BuildAssetCache:
    """ASGI middleware for `GET/HEAD /assets/<hashed file>`; pass it to FastAPI as middleware."""

    def __init__(self, app: ASGIApp, build_dir: Path = BUILD_DIR) -> None:
        self.app = app
        self.build_dir = build_dir
        self._assets: dict[str, _Asset] = {}  # only real build files, so the cache is bounded by the build

    def _asset(self, name: str) -> _Asset | None:
        if name not in self._assets:  # races only build the same value twice
            path = self.build_dir / name
            if not (PLAIN_NAME.fullmatch(name) and path.is_file()):
                return None
            self._assets[name] = _Asset(path)
        return self._assets[name]

    async def __call__(
        self, scope: Scope, receive: Callable[[], Awaitable[dict]], send: Callable[[dict], Awaitable[None]]
    ) -> None:
        path = scope.get("path", "")
        asset = None
        if scope["type"] == "http" and scope.get("method") in ("GET", "HEAD") and path.startswith(PREFIX):
            asset = self._asset(path[len(PREFIX) :])
        if asset is None:
            await self.app(scope, receive, send)
            return
        request_headers = dict(scope.get("headers") or [])
        encoding, body = asset.pick(request_headers.get(b"accept-encoding", b"").decode("latin-1"))
        headers = [
            (b"content-type", asset.content_type),
            (b"content-length", str(len(body)).encode()),
            (b"cache-control", IMMUTABLE),
            (b"vary", b"Accept-Encoding"),
        ]
        if encoding != "identity":
            headers.append((b"content-encoding", encoding.encode()))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})
