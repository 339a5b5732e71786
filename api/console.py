"""The console, `/console`: a single page made of plain ES modules (`api/static/console/`) and
the JavaScript client, served from the package as they are (no build step, no CDN: air-gapped
deployments get the same page). The client's copy there (`static/console/longrun.js`, so that
it ships in the wheel with the page) is `clients/js/longrun.js` byte for byte: a test checks.

The page talks to this API with the key the user pastes, which it keeps in the tab's session
storage; its event streams use the run-scoped `events_url` tokens, so the key is in no URL.
A Content-Security-Policy holds the page to this origin: no inline script, no other host.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

PAGE_DIR = Path(__file__).resolve().parent / "static" / "console"
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}


def install(app: FastAPI) -> None:
    app.mount("/console/assets", StaticFiles(directory=PAGE_DIR), name="console-assets")

    @app.get("/console", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(PAGE_DIR / "index.html", headers=HEADERS, media_type="text/html")
