"""The page's assets: the files under ``static/`` (shipped in the package:
no CDN, no external fonts), their content types, and the content security
policy every HTML page is served with (see :mod:`.server`)."""

from __future__ import annotations

from importlib import resources

_STATIC_TYPES = {
    ".html": b"text/html; charset=utf-8",
    ".js": b"text/javascript; charset=utf-8",
    ".css": b"text/css; charset=utf-8",
    ".svg": b"image/svg+xml",
    ".png": b"image/png",
}
_CSP = (
    b"default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    b"img-src 'self' data:; connect-src 'self' ws: wss:; frame-ancestors 'self'"
)


def _load_static() -> dict[str, bytes]:
    out = {}
    for entry in resources.files("trioflow.diagnostics").joinpath("static").iterdir():
        if entry.is_file():
            out[entry.name] = entry.read_bytes()
    return out
