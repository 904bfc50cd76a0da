"""The web app: a small static front end (HTML, CSS and plain JavaScript, no build step) served
by ``narra serve`` itself. It uses only the public ``/api/v1`` routes.

Paths: ``/`` (search, ``/?q=...`` linkable, and uploads), ``/items/<media_id>`` (an item's
page); the files under ``/static/``. The pages themselves hold no data and need no token; when
the API has one, the page asks for it once and trades it for an HttpOnly, SameSite=Strict cookie
(``POST /api/v1/session``), so players and pictures load with it too.
"""

from __future__ import annotations

from pathlib import Path

WEB_DIR = Path(__file__).resolve().parent


def mount_web(app) -> None:
    """Add ``/``, ``/items/{media_id}`` and ``/static`` to a FastAPI app."""
    from fastapi.responses import FileResponse
    from fastapi.staticfiles import StaticFiles

    index = WEB_DIR / "index.html"
    no_cache = {"Cache-Control": "no-cache"}

    @app.get("/", include_in_schema=False)
    def home():
        return FileResponse(index, media_type="text/html", headers=no_cache)

    @app.get("/items/{media_id}", include_in_schema=False)
    def item_page(media_id: str):
        return FileResponse(index, media_type="text/html", headers=no_cache)

    app.mount("/static", StaticFiles(directory=WEB_DIR / "static"), name="static")
