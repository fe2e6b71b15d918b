"""The in-memory front-end asset cache: same bytes as the file, compressed as asked, immutable,
and everything else passed on to Gradio."""

from __future__ import annotations

import asyncio
import gzip

import brotli

from app.runtime.assets import BuildAssetCache


def call(
    middleware, path: str, method: str = "GET", accept: str = ""
) -> tuple[int, dict[bytes, bytes], bytes, list[str]]:
    passed: list[str] = []
    sent: list[dict] = []

    async def downstream(scope, receive, send):
        passed.append(scope["path"])
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def receive():
        return {"type": "http.request", "body": b""}

    async def send(message):
        sent.append(message)

    middleware.app = downstream
    scope = {"type": "http", "method": method, "path": path, "headers": [(b"accept-encoding", accept.encode())]}
    asyncio.run(middleware(scope, receive, send))
    return sent[0]["status"], dict(sent[0]["headers"]), sent[1]["body"], passed


def test_assets_are_served_from_memory_in_the_encoding_asked_for(tmp_path):
    build = tmp_path / "assets"
    build.mkdir()
    source = b"export const x = 1;\n" * 200
    (build / "Index-AbC_1.js").write_bytes(source)
    cache = BuildAssetCache(None, build_dir=build)

    status, headers, body, passed = call(cache, "/assets/Index-AbC_1.js", accept="gzip, deflate, br, zstd")
    assert status == 200 and not passed
    assert headers[b"content-encoding"] == b"br" and brotli.decompress(body) == source
    assert headers[b"cache-control"] == b"public, max-age=31536000, immutable"
    assert headers[b"content-type"] in (b"application/javascript", b"text/javascript")
    assert int(headers[b"content-length"]) == len(body)

    _, headers, body, _ = call(cache, "/assets/Index-AbC_1.js", accept="gzip")
    assert headers[b"content-encoding"] == b"gzip" and gzip.decompress(body) == source
    _, headers, body, _ = call(cache, "/assets/Index-AbC_1.js")
    assert b"content-encoding" not in headers and body == source
    _, headers, body, _ = call(cache, "/assets/Index-AbC_1.js", method="HEAD", accept="br")
    assert body == b"" and int(headers[b"content-length"]) > 0


def test_anything_but_a_plain_build_file_goes_to_gradio(tmp_path):
    build = tmp_path / "assets"
    build.mkdir()
    (tmp_path / "secret.js").write_text("no")
    (build / "sub").mkdir()
    (build / "sub" / "x.js").write_text("no")
    cache = BuildAssetCache(None, build_dir=build)
    for path in (
        "/assets/../secret.js",
        "/assets/sub/x.js",
        "/assets/%2e%2e/secret.js",
        "/assets/missing.js",
        "/assets/",
        "/config",
        "/file=/etc/passwd",
    ):
        status, _, _, passed = call(cache, path)
        assert (status, passed) == (404, [path]), path
    status, _, _, passed = call(cache, "/assets/sub", method="POST")
    assert passed == ["/assets/sub"]
    assert cache._assets == {}  # misses are not remembered: random names cannot grow the cache
