"""Who is asking: the owner key that runs and uploads belong to, and two ASGI middlewares that
make it trustworthy.

A visitor is, in order: the Hugging Face user signed in with OAuth (runs follow them across
browsers), else their browser (an HttpOnly cookie holding a random token that page scripts cannot
read, set by `BrowserCookie`), else the page session (an API client that keeps no cookies). Only
digests of these secrets are ever written to disk, and folder names are keyed with a per-install
secret, so neither a job.json nor a folder name lets anyone act as someone else.

`PrivateFiles` closes Gradio's file route over the data directory: a file the app returns is
served from Gradio's cache (a copy under a content hash), so nothing else in the data directory
(runs, other visitors' uploads, bundles) may be fetched by guessing its path.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any, Awaitable, Callable
from urllib.parse import unquote

from specpl.io import atomic_write_text

COOKIE = "specpl_browser"
COOKIE_MAX_AGE_S = 400 * 24 * 3600  # browsers cap cookie lifetimes near this
FILE_ROUTES = ("/gradio_api/file=", "/file=")
SECRET_FILE = ".secret"

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]


def owner_key(username: str | None, browser_token: str | None, session_hash: str | None) -> str:
    """The key runs are recorded under: ``hf:<user>``, or a digest of the browser or session secret."""
    if username:
        return f"hf:{username}"
    if browser_token:
        return "browser:" + _digest(browser_token)
    return "session:" + _digest(session_hash or "")


def browser_token(request: Any) -> str | None:
    """The browser cookie of a `gr.Request`, when it is well formed."""
    cookies = getattr(request, "cookies", None) or {}
    token = cookies.get(COOKIE) if hasattr(cookies, "get") else None
    return (
        token
        if isinstance(token, str) and 20 <= len(token) <= 100 and token.replace("-", "").replace("_", "").isalnum()
        else None
    )


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()[:32]


def install_secret(data_dir: Path) -> bytes:
    """A random secret kept in the data directory (created once), to key folder names with."""
    path = data_dir / SECRET_FILE
    if not path.is_file():
        atomic_write_text(path, secrets.token_hex(32))
        path.chmod(0o600)
    return path.read_text(encoding="utf-8").strip().encode()


def folder_name(secret: bytes, owner: str) -> str:
    """An owner's folder name: unguessable without the install secret, the same across restarts."""
    return hmac.new(secret, owner.encode(), hashlib.sha256).hexdigest()[:32]


class BrowserCookie:
    """ASGI middleware: give every browser a random identity cookie on its first response."""

    def __init__(self, app: Callable, cross_site: bool = False) -> None:
        self.app = app
        # Inside a Space's iframe the app is a third party, so the cookie must be SameSite=None.
        self.attributes = (
            "; Path=/; HttpOnly; Secure; SameSite=None; Partitioned"
            if cross_site
            else "; Path=/; HttpOnly; SameSite=Lax"
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or _has_cookie(scope):
            await self.app(scope, receive, send)
            return
        header = f"{COOKIE}={secrets.token_urlsafe(32)}; Max-Age={COOKIE_MAX_AGE_S}{self.attributes}".encode("latin-1")

        async def send_with_cookie(message: dict) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (b"set-cookie", header)]}
            await send(message)

        await self.app(scope, receive, send_with_cookie)


def _has_cookie(scope: Scope) -> bool:
    for name, value in scope.get("headers") or []:
        if name == b"cookie":
            parsed = SimpleCookie()
            parsed.load(value.decode("latin-1"))
            if COOKIE in parsed:
                return True
    return False


class PrivateFiles:
    """ASGI middleware: refuse Gradio's file route for paths in the data directory outside Gradio's
    cache. `data_dir` and `cache_dir` are passed as keyword arguments through `Middleware`."""

    def __init__(self, app: Callable, data_dir: str, cache_dir: str) -> None:
        self.app = app
        self.data_dir = Path(data_dir).resolve()
        self.cache_dir = Path(cache_dir).resolve()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self._private(scope.get("path", "")):
            await send({"type": "http.response.start", "status": 403, "headers": [(b"content-type", b"text/plain")]})
            await send({"type": "http.response.body", "body": b"File not allowed."})
            return
        await self.app(scope, receive, send)

    def _private(self, path: str) -> bool:
        route = next((r for r in FILE_ROUTES if path.startswith(r) or f"{r}" in path), None)
        if route is None:
            return False
        target = unquote(path.split(route, 1)[1])
        try:
            resolved = Path(target).resolve()
        except (OSError, ValueError):
            return True
        return resolved.is_relative_to(self.data_dir) and not resolved.is_relative_to(self.cache_dir)
