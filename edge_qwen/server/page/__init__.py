"""The chat page ``serve`` answers at ``/``: one HTML file, its script and its style, from this package."""

from __future__ import annotations

from importlib import resources

from starlette.requests import Request
from starlette.responses import Response

# the page loads only its own script and style; images the user attaches are data: URLs
POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
)
FILES = {"/": ("index.html", "text/html"), "/page/page.js": ("page.js", "text/javascript"),
         "/page/page.css": ("page.css", "text/css")}  # fmt: skip


async def serve_file(request: Request) -> Response:
    name, media = FILES[request.url.path]
    body = resources.files(__name__).joinpath(name).read_bytes()
    headers = {
        "Content-Security-Policy": POLICY,
        "X-Content-Type-Options": "nosniff",
        "Cache-Control": "no-cache",
        "Referrer-Policy": "no-referrer",
    }
    return Response(body, media_type=f"{media}; charset=utf-8", headers=headers)
