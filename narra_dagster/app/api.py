"""The HTTP API and the web app: ``narra serve [--host 127.0.0.1] [--port 8080]``.

A FastAPI app on uvicorn, on the same application layer as the ``narra`` command. It holds the
text embedder and the search index open, so a query costs tens of milliseconds instead of a
process start, imports and a model load; ``narra search`` asks it when it runs (it finds it by
``$NARRA_HOME/serve.json``, :func:`narra_dagster.settings.server_file`). No media is processed in
this process: uploads are stored and their runs asked of Dagster (:mod:`narra_dagster.app.uploads`,
the ``run_request_sensor``); processing stays in Dagster runs.

Routes (OpenAPI docs at ``/api/docs``; errors are JSON ``{"error": {"code", "message"}}``):

- ``POST /api/v1/media`` (multipart field ``file``): 202 with the new item, 200 for bytes
  already uploaded, 413/415/422 refused (:mod:`narra_dagster.app.uploads`);
- ``GET /api/v1/search?q=&kind=&limit=&min_relevance=``: ``{"query", "hits", "no_good_match"}``,
  the hits with the fields of ``narra search --json``;
- ``GET /api/v1/media?state=&kind=&cursor=&limit=``: items, newest first, paged
  (``{"items", "next_cursor"}``); ``GET /api/v1/media/{media_id}``: one item
  (:func:`item_view`; 404 for an unknown or deleted id); ``.../details``: with what its stages
  found (:mod:`narra_dagster.app.details`); ``POST .../retry``: a failed item's chain run again
  (409 when it is not failed); ``DELETE``: removed completely, as ``narra delete``;
  ``.../source``: the uploaded file, with HTTP Range (206) so players can seek;
  ``.../thumbnail``, ``.../pages/{n}`` (a PDF page as WebP), ``.../files/{name}`` (keyframes and
  thumbnails);
- ``GET /api/v1/events?media_id=``: the domain events as server-sent events, resumable with
  ``Last-Event-ID`` (:mod:`narra_dagster.app.streams`);
- ``GET /healthz``: liveness; ``GET /readyz``: 200 once the model and the index are loaded;
  ``GET /metrics``: Prometheus text (the health checks and runs by status);
- ``/`` and ``/items/{media_id}``: the web app (:mod:`narra_dagster.app.web`).

Access: bound to 127.0.0.1 by default. With ``NARRA_API_TOKEN`` set (or ``NARRA_API_TOKEN_FILE``
naming a file holding it), every ``/api`` route and ``/metrics`` need ``Authorization: Bearer
<token>`` or the web app's session cookie (401 otherwise; the token is compared in constant time
with :func:`hmac.compare_digest` and never logged; the cookie holds a random, expiring session
id, not the token). :func:`check_bind` refuses a non-loopback address without a token unless
``insecure``. With or without a token, a request that changes something must come from this
server's own origin and carry ``Authorization`` or ``X-Narra-Request``; the Host header must be
one of the server's names; stored files are served inert (:mod:`narra_dagster.app.security`).
"""

import hmac
import ipaddress
import json
import os
import threading
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

from narra_dagster import settings
from narra_dagster.app.security import SESSION_COOKIE

API_PREFIX = "/api/v1"
_CACHE_IMMUTABLE = {"Cache-Control": "private, max-age=86400"}
OVERVIEW = ("language", "duration_s", "has_video", "pages", "width", "height", "summary",
            "keywords")
"""What ``GET /api/v1/media/{id}`` adds from the item's findings (``.../details`` has them all)."""
ERROR_SCHEMA = {
    "title": "Error", "type": "object", "required": ["error"],
    "properties": {"error": {"type": "object", "required": ["code", "message"], "properties": {
        "code": {"type": "string"}, "message": {"type": "string"}}}}}
"""The JSON schema of every error answer, ``{"error": {"code", "message"}}``."""
_PICTURE = {200: {"content": {"image/webp": {}}, "description": "A WebP picture."}}
WAITING_NOTE_S = 30.0
"""A run request older than this (seconds) that no run has taken up gets a ``note`` on the item:
the daemon, which starts runs, is probably not running."""
SESSION_BODY_MAX_BYTES = 4096
"""The largest body ``POST /api/v1/session`` reads (JSON with one token); a larger one is 413
before any token is compared, so a sign-in without the token cannot fill the memory."""


def _epoch(iso: str | None) -> float:
    import datetime as dt

    try:
        return dt.datetime.fromisoformat(iso or "").timestamp()
    except ValueError:
        return time.time()


def dagster_ui_url() -> str:
    """Where people open the Dagster UI, for links to an item's runs:
    ``$NARRA_DAGSTER_UI_URL``, default ``http://127.0.0.1:3000`` (``narra dev``'s)."""
    return os.environ.get("NARRA_DAGSTER_UI_URL", "http://127.0.0.1:3000").rstrip("/")


def api_token() -> str | None:
    """The API's bearer token: ``$NARRA_API_TOKEN``, else the first line of the file named by
    ``$NARRA_API_TOKEN_FILE``; None when neither is set (no authentication).

    Raises:
        ValueError: when the token file cannot be read or is empty.
    """
    token = os.environ.get("NARRA_API_TOKEN")
    if token:
        return token.strip()
    path = os.environ.get("NARRA_API_TOKEN_FILE")
    if not path:
        return None
    try:
        token = Path(path).read_text().strip().splitlines()[0].strip()
    except (OSError, IndexError):
        raise ValueError(f"NARRA_API_TOKEN_FILE={path}: cannot read a token from it") from None
    if not token:
        raise ValueError(f"NARRA_API_TOKEN_FILE={path} is empty")
    return token


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None, insecure: bool) -> None:
    """Refuse to serve on a non-loopback address without a token.

    Raises:
        ValueError: when ``host`` is not loopback, no token is set and ``insecure`` is False.
    """
    if not is_loopback(host) and not token and not insecure:
        raise ValueError(f"refusing to serve on {host} without NARRA_API_TOKEN: anyone who can "
                         "reach it could search everything indexed; set a token, or pass "
                         "--insecure")


class _Searcher:
    """The definitions, the Dagster instance, the embedder and the index, loaded once (in the
    background at start-up)."""

    def __init__(self) -> None:
        self.ready = threading.Event()
        self.error: str | None = None
        self.embedder = self.index = self.defs = self.instance = self.health = None

    def load(self) -> None:
        try:
            from narra_dagster.app.runtime import load_definitions, open_instance

            self.defs = load_definitions()
            self.instance = open_instance()
            resources = self.defs.resources
            self.embedder, self.index = resources["embedder"], resources["search_index"]
            self.embedder.embed(["warm up"])  # loads the model
            self.index.count()  # opens the table
        except Exception as exc:  # reported by /readyz and by each request that needs it
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            self.ready.set()


# The item states of the API, from app.status's (which also names Dagster run statuses).
_STATES = {"registered": "queued", "queued": "queued", "not_started": "queued",
           "starting": "queued", "started": "running", "canceling": "running",
           "success": "running", "canceled": "failed", "failure": "failed",
           "failed": "failed", "searchable": "searchable", "deleted": "deleted"}
STATES = ("queued", "running", "searchable", "failed", "deleted")


def item_view(item: dict[str, Any], manifest: dict[str, Any]) -> dict[str, Any]:
    """One item as the API shows it, from :func:`narra_dagster.app.status.partition_status`'s
    record and the item's manifest: ``state`` (one of :data:`STATES`), ``stages`` (each asset's
    last materialization: ``materialized_at`` ISO 8601 UTC, ``run_id``), ``error_class`` and
    ``error`` when it failed, ``size_bytes`` (bytes) and ``ingested_at``."""
    run = item.get("last_run") or {}
    state = _STATES.get(item["state"], "running")
    key = item["media_id"]
    return {
        "media_id": key, "kind": item.get("kind"), "source_name": item.get("source_name"),
        "names": item.get("names", []), "state": state,
        "stages": [{"asset": asset, **(done or {"materialized_at": None, "run_id": None})}
                   for asset, done in item.get("assets", {}).items()],
        "error_class": run.get("error_class") if state == "failed" else None,
        "error": run.get("error") if state == "failed" else None,
        "last_run": run or None,
        "size_bytes": manifest.get("size_bytes"), "ingested_at": manifest.get("ingested_at"),
        "deleted_at": item.get("deleted_at"),
        "links": {"self": f"{API_PREFIX}/media/{key}",
                  "source": f"{API_PREFIX}/media/{key}/source" if state != "deleted" else None,
                  "dagster_run": f"{dagster_ui_url()}/runs/{run['run_id']}" if run.get("run_id")
                  else None},
    }


def create_app(*, token: str | None = None, server_id: str | None = None,
               hosts: list[str] | None = None):
    """The ASGI app. ``token``: the bearer token every ``/api/v1`` route and ``/metrics``
    require (None: none; ``/healthz``, ``/readyz`` and the docs stay open). ``server_id``: sent
    as the ``X-Narra-Server`` header of every response, so a client that found this server
    through :func:`settings.server_file` can check it reached this server and not another
    program on the port. ``hosts``: the Host names it answers to (default
    :func:`narra_dagster.app.security.allowed_hosts`); any other Host is refused with 400.

    Every response carries the policies of :class:`~narra_dagster.app.security.SecurityHeaders`;
    a request that changes something must pass
    :class:`~narra_dagster.app.security.OriginCheck` (403 ``cross_site`` otherwise)."""
    from fastapi import Depends, FastAPI, HTTPException, Query, Request
    from fastapi import Path as PathParam
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from starlette.middleware.trustedhost import TrustedHostMiddleware

    from narra_dagster.app.security import (OriginCheck, SecurityHeaders, Sessions,
                                            allowed_hosts)

    searcher = _Searcher()
    sessions = Sessions()

    @asynccontextmanager
    async def lifespan(app):
        from narra_dagster.app.uploads import remove_stale_parts

        remove_stale_parts()
        threading.Thread(target=searcher.load, name="narra-api-load", daemon=True).start()
        yield

    app = FastAPI(title="narra", version="1", lifespan=lifespan, docs_url=None,
                  openapi_url="/api/openapi.json", redoc_url=None,
                  description="Upload media, follow their processing, search what they say "
                              "and show, retry and remove items.")
    _mount_docs(app)
    # Starlette runs the last added outermost: the policies go on every answer, the refusals
    # of a wrong Host and of a cross-site request included.
    app.add_middleware(OriginCheck)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=hosts or allowed_hosts())
    app.add_middleware(SecurityHeaders)

    if server_id:
        @app.middleware("http")
        async def _identify(request: Request, call_next):
            response = await call_next(request)
            response.headers["X-Narra-Server"] = server_id
            return response

    def error(status: int, code: str, message: str) -> JSONResponse:
        return JSONResponse({"error": {"code": code, "message": message}}, status_code=status,
                            headers={"WWW-Authenticate": "Bearer"} if status == 401 else None)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        codes = {400: "bad_request", 401: "unauthorized", 404: "not_found",
                 405: "method_not_allowed", 409: "conflict", 413: "too_large",
                 416: "range_not_satisfiable", 503: "not_ready"}
        detail = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        return error(exc.status_code, codes.get(exc.status_code, "http_error"), detail)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("query", "body"))
        return error(422, "invalid_request", f"{where}: {first.get('msg', 'invalid')}")

    @app.exception_handler(FileNotFoundError)
    async def _missing_file(request: Request, exc: FileNotFoundError):
        # A stored file removed under the server (by hand, by a deletion under way): one log
        # line and 404 (410 when the item is being deleted: its tombstone is written first),
        # never a 500 with a traceback. The message names no server path.
        import logging

        from starlette.concurrency import run_in_threadpool

        media_id = request.path_params.get("media_id")
        logging.getLogger("narra.api").warning("%s %s: a stored file is missing: %s",
                                               request.method, request.url.path, exc)

        def deleted() -> bool:
            try:
                return searcher.defs.resources["media_store"].tombstone(media_id) is not None
            except Exception:  # noqa: BLE001 - the answer is 404 then, not a second error
                return False

        if media_id and searcher.defs is not None and await run_in_threadpool(deleted):
            return error(410, "deleted", f"item {media_id!r} has been deleted")
        return error(404, "missing_file", f"a stored file of item {media_id!r} is missing"
                     if media_id else "a stored file is missing")

    def openapi() -> dict[str, Any]:
        # The spec says what the handlers above answer: FastAPI documents its own 422 body
        # ({"detail": [...]}), which this API never sends; schemathesis checks answers by it.
        from fastapi.openapi.utils import get_openapi

        if app.openapi_schema is None:
            spec = get_openapi(title=app.title, version=app.version,
                               description=app.description, routes=app.routes)
            spec.setdefault("components", {}).setdefault("schemas", {})[
                "HTTPValidationError"] = ERROR_SCHEMA
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = openapi

    def authorized(request: Request) -> None:
        if token is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, value = given.partition(" ")
        if scheme.lower() == "bearer":
            if hmac.compare_digest(value.strip().encode(), token.encode()):
                return
        elif sessions.valid(request.cookies.get(SESSION_COOKIE)):  # the web app's session
            return
        raise HTTPException(401, "a valid 'Authorization: Bearer <token>' header is needed")

    @app.get(f"{API_PREFIX}/session", tags=["access"])
    def session_state(request: Request) -> dict[str, bool]:
        """For the web app: whether this server needs a token (``required``) and whether this
        browser holds a valid session (``signed_in``; always true without a token)."""
        return {"required": token is not None,
                "signed_in": token is None or sessions.valid(request.cookies.get(SESSION_COOKIE))}

    @app.post(f"{API_PREFIX}/session", tags=["access"])
    async def session(request: Request):
        """For the web app: trade the token (JSON ``{"token": ...}``) for a session: an
        HttpOnly, SameSite=Strict cookie holding a random session id (never the token) that
        expires (``NARRA_SESSION_HOURS``, default 12) and authorizes what a page loads itself
        (players, pictures, the event stream). 401 for a wrong token; 204 when the server has
        none."""
        from fastapi.responses import Response

        if token is None:
            return Response(status_code=204)
        # Read before any token is checked, so bounded: a token is a line, not a file.
        body = bytearray()
        async for piece in request.stream():
            body += piece
            if len(body) > SESSION_BODY_MAX_BYTES:
                return error(413, "too_large", f"a sign-in body is at most "
                                               f"{SESSION_BODY_MAX_BYTES} bytes")
        try:
            given = str(json.loads(body).get("token", ""))
        except (ValueError, AttributeError):
            given = ""
        # surrogatepass: a lone surrogate (JSON "\ud800") is a wrong token, not an error
        if not hmac.compare_digest(given.strip().encode("utf-8", "surrogatepass"),
                                   token.encode()):
            return error(401, "unauthorized", "that token is not right")
        response = Response(status_code=204)
        response.set_cookie(SESSION_COOKIE, sessions.create(), httponly=True, samesite="strict",
                            path="/", max_age=int(sessions.seconds),
                            secure=request.url.scheme == "https")
        return response

    @app.delete(f"{API_PREFIX}/session", tags=["access"], status_code=204)
    def sign_out(request: Request):
        """Sign out: the browser's session ends here and its cookie is removed."""
        from fastapi.responses import Response

        sessions.end(request.cookies.get(SESSION_COOKIE))
        response = Response(status_code=204)
        response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict",
                               secure=request.url.scheme == "https")
        return response

    def loaded() -> _Searcher:
        if not searcher.ready.wait(timeout=120):
            raise HTTPException(503, "the search model is still loading")
        if searcher.error:
            raise HTTPException(503, f"search is not available: {searcher.error}")
        return searcher

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"])
    def readyz():
        """Readiness: 200 once the embedder and the index are loaded, else 503."""
        if not searcher.ready.is_set():
            return error(503, "not_ready", "the search model is still loading")
        if searcher.error:
            return error(503, "not_ready", searcher.error)
        return {"status": "ready"}

    @app.get(f"{API_PREFIX}/search", tags=["search"], dependencies=[Depends(authorized)])
    def search(
        q: Annotated[str, Query(min_length=1, max_length=1000, pattern=r"\w",
                                description="What to look for: at least one word.")],
        kind: Annotated[str | None, Query(description="video, image, document, or a name "
                                                      "people use (pdf, audio, photo...)")] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 10,
        min_relevance: Annotated[float | None, Query(ge=0.0, le=1.0)] = None,
    ) -> dict[str, Any]:
        """Hybrid search over everything indexed, best first, one hit per place. ``hits`` is
        empty, and ``no_good_match`` true, when nothing indexed is relevant enough."""
        from narra_dagster.app.queries import search_text
        from narra_dagster.registry import UnknownKindError

        s = loaded()
        try:
            hits = search_text(q, embedder=s.embedder, search_index=s.index, kind=kind,
                               limit=limit, min_relevance=min_relevance)
        except UnknownKindError as exc:
            return error(422, "unknown_kind", str(exc))
        return {"query": q, "hits": [h.model_dump() for h in hits], "no_good_match": not hits}

    def items(s: _Searcher, media_id: str | None = None) -> list[dict[str, Any]]:
        from narra_dagster.app.status import partition_status

        store = s.defs.resources["media_store"]
        out = []
        for item in partition_status(s.instance, s.defs, media_id):
            if media_id and item["media_id"] != media_id:
                continue  # partition_status takes prefixes; the API takes whole ids
            out.append(item_view(item, _manifest(store, item)))
        return out

    def _manifest(store, item: dict[str, Any]) -> dict[str, Any]:
        try:
            return store.manifest(item["media_id"]) if item["state"] != "deleted" else {}
        except (FileNotFoundError, ValueError, OSError):
            return {}

    def one(s: _Searcher, media_id: str, *, deleted: bool = False) -> dict[str, Any]:
        from narra_dagster.core.media import is_partition_key

        found = items(s, media_id) if is_partition_key(media_id) else []
        if not found:
            raise HTTPException(404, f"no item {media_id!r}")
        if found[0]["state"] == "deleted" and not deleted:
            raise HTTPException(404, f"item {media_id!r} was deleted at {found[0]['deleted_at']}")
        return found[0]

    @app.get(f"{API_PREFIX}/media", tags=["media"], dependencies=[Depends(authorized)])
    def list_media(
        state: Annotated[str | None, Query(pattern="^(" + "|".join(STATES) + ")$")] = None,
        kind: Annotated[str | None, Query(description="video, image or document")] = None,
        cursor: Annotated[str | None, Query(max_length=2000, description="The previous page's "
                                                                          "next_cursor.")] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
    ) -> dict[str, Any]:
        """Items, newest upload first, ``limit`` per page; ``next_cursor`` is null on the last
        page. Without ``state`` a page costs the same however many items there are (see
        :func:`narra_dagster.app.status.status_page`); filtering by ``state`` looks at every
        item (a state is known only from Dagster's records), so it grows with their number."""
        from narra_dagster.app.status import status_page

        s = loaded()
        if kind is not None:
            from narra_dagster.registry import UnknownKindError, get

            try:
                kind = get(kind).name
            except UnknownKindError as exc:
                return error(422, "unknown_kind", str(exc))
        store = s.defs.resources["media_store"]
        if state is None:
            try:
                found, next_cursor = status_page(s.instance, s.defs, kind=kind, cursor=cursor,
                                                 limit=limit)
            except ValueError as exc:
                return error(400, "bad_cursor", str(exc))
            page = [item_view(i, _manifest(store, i)) for i in found]
            return {"items": page, "next_cursor": next_cursor}
        try:
            offset = int(cursor or 0)
        except ValueError:
            return error(400, "bad_cursor", f"not a cursor from a previous page: {cursor[:40]!r}")
        every = [i for i in items(s) if i["state"] == state and (kind is None or i["kind"] == kind)]
        every.sort(key=lambda i: i["ingested_at"] or i["deleted_at"] or "", reverse=True)
        more = offset + limit < len(every)
        return {"items": every[offset:offset + limit],
                "next_cursor": str(offset + limit) if more else None}

    @app.get(f"{API_PREFIX}/media/{{media_id}}", tags=["media"],
             dependencies=[Depends(authorized)])
    def get_media(media_id: str) -> dict[str, Any]:
        """One item: its state, each stage's last materialization, its error if it failed, and
        what describes it once found: language, duration (seconds), pages, size in pixels,
        summary and keywords."""
        return described(media_id, overview_only=True)

    def described(media_id: str, *, overview_only: bool) -> dict[str, Any]:
        """One item with its findings (those of :data:`OVERVIEW`, or all), read once, and
        ``queued`` while a run asked for it does not exist yet."""
        from narra_dagster.app.details import item_details
        from narra_dagster.app.uploads import waiting_request

        s = loaded()
        item = one(s, media_id)
        found = item_details(s.defs.resources["media_store"], media_id, item["kind"])
        item = {**item, **({k: found[k] for k in OVERVIEW if k in found} if overview_only
                           else found)}
        waiting = waiting_request(media_id, s.instance)
        if waiting is not None:  # asked for (an upload, a retry), its run not created yet
            item.update(state="queued", error=None, error_class=None, requested=waiting)
            if time.time() - _epoch(waiting.get("requested_at")) > WAITING_NOTE_S:
                item["note"] = ("its run has not been started yet: is the Dagster daemon running "
                                "(`narra dev`, or `dagster-daemon run`)?")
        return item

    @app.delete(f"{API_PREFIX}/media/{{media_id}}", tags=["media"],
                dependencies=[Depends(authorized)])
    def delete_media(media_id: str) -> dict[str, Any]:
        """Remove the item completely (index rows, stored files, partition), as `narra delete`;
        afterwards it is ``deleted`` and search shows nothing of it."""
        from narra_dagster.app.lifecycle import delete_items
        from narra_dagster.resources.item_lock import ItemBusy

        s = loaded()
        item = one(s, media_id, deleted=True)
        if item["state"] == "deleted":
            return item
        try:
            (result,) = delete_items([media_id], s.instance, s.defs)
        except ItemBusy as exc:
            return error(409, exc.code, f"item {media_id!r} is being changed by another request: "
                                        f"try again in a moment ({exc})")
        if result.status != "deleted":
            return error(409, "not_deleted", result.detail or result.status)
        return one(s, media_id, deleted=True)

    @app.get(f"{API_PREFIX}/media/{{media_id}}/source", tags=["media"],
             dependencies=[Depends(authorized)])
    def media_source(media_id: str):
        """The uploaded file itself, with HTTP Range support (206 partial content), so players
        can seek. Its type is sniffed from its bytes, never taken from its name: audio, video
        and pictures are served inline for the players, anything else (PDFs included) as an
        attachment; all with a sandboxing Content-Security-Policy, so nothing in it can run as
        this app."""
        from narra_dagster.app.security import stored_file_headers
        from narra_dagster.resources.media_store import SOURCE

        s = loaded()
        one(s, media_id)
        path = s.defs.resources["media_store"].local_path(media_id, SOURCE)
        if not path.exists():
            raise HTTPException(404, f"item {media_id!r} has no stored source")
        media_type, headers = stored_file_headers(path, f"{media_id}.source")
        return FileResponse(path, media_type=media_type, headers=headers)

    @app.post(f"{API_PREFIX}/media", tags=["media"], status_code=202,
              dependencies=[Depends(authorized)],
              openapi_extra={"requestBody": {"required": True, "content": {
                  "multipart/form-data": {"schema": {
                      "type": "object", "required": ["file"],
                      "properties": {"file": {"type": "string", "format": "binary"}}}}}}})
    async def upload_media(request: Request):
        """Upload one file (multipart field ``file``). It is streamed to disk, its type sniffed
        from its bytes (415 when narra cannot process it, 413 past the size limit), stored, and
        its run asked of Dagster: 202 with the new item. The same bytes again answer the same
        ``media_id`` with 200 and start no second run. The file name is metadata only."""
        from starlette.concurrency import run_in_threadpool

        from narra_dagster.app.uploads import UploadError, accept_upload, max_upload_bytes, receive_file
        from narra_dagster.core.errors import BadInputError
        from narra_dagster.resources.item_lock import ItemBusy

        s = await run_in_threadpool(loaded)  # may wait for the start-up: not on the event loop
        try:
            path, name, _size, digest = await receive_file(request, max_upload_bytes())
        except UploadError as exc:
            return error(exc.status, exc.code, str(exc))
        try:
            accepted = await run_in_threadpool(accept_upload, path, name, s.instance,
                                               s.defs.resources, digest)
        except BadInputError as exc:
            status = {"unsupported_type": 415, "too_large": 413}.get(exc.code, 422)
            return error(status, exc.code, str(exc))
        except ItemBusy as exc:
            return error(409, exc.code, f"the item these bytes make is being changed by another "
                                        f"request (a deletion?): try again in a moment ({exc})")
        finally:
            path.unlink(missing_ok=True)
        upload = accepted.upload
        item = await run_in_threadpool(one, s, upload.partition_key)
        body = {"media_id": upload.partition_key, "kind": upload.kind,
                "source_name": item["source_name"], "state": item["state"],
                "new": accepted.new, "run_requested": accepted.run_requested,
                "status_url": f"{API_PREFIX}/media/{upload.partition_key}",
                "events_url": f"{API_PREFIX}/events?media_id={upload.partition_key}"}
        return JSONResponse(body, status_code=202 if accepted.run_requested else 200,
                            headers={"Location": body["status_url"]})

    @app.post(f"{API_PREFIX}/media/{{media_id}}/retry", tags=["media"], status_code=202,
              dependencies=[Depends(authorized)])
    def retry_media(media_id: str):
        """Run a failed item's whole chain again (a new Dagster run). 409 when the item is not
        failed; a retry already asked for and not yet started is answered, not repeated."""
        from narra_dagster.app.uploads import ItemGone, request_retry
        from narra_dagster.resources.item_lock import ItemBusy

        s = loaded()
        item = one(s, media_id)
        if item["state"] != "failed":
            return error(409, "not_failed", f"item {media_id!r} is {item['state']}, not failed: "
                                             "there is nothing to retry")
        try:
            request_retry(media_id, item["kind"], item["source_name"] or media_id, s.instance,
                          s.defs.resources)
        except ItemGone as exc:
            return error(410, exc.code, str(exc))
        except ItemBusy as exc:
            return error(409, exc.code, f"item {media_id!r} is being changed by another request "
                                        f"(a deletion?): try again in a moment ({exc})")
        return JSONResponse(get_media(media_id), status_code=202)

    @app.get(f"{API_PREFIX}/media/{{media_id}}/details", tags=["media"],
             dependencies=[Depends(authorized)])
    def media_details(media_id: str) -> dict[str, Any]:
        """What the item's stages found, for its page: transcript segments, keyframes, labels,
        OCR text, summary and keywords, near-duplicates, pages (whatever exists so far)."""
        return described(media_id, overview_only=False)

    def picture(path: Path):
        """A stored or rendered WebP picture, read whole (hundreds of KB at most) in the route:
        a file removed meanwhile raises FileNotFoundError here (404 by ``_missing_file``), not
        after the response started. Inert as every stored file (FILE_POLICY)."""
        from narra_dagster.app.security import FILE_POLICY

        return Response(path.read_bytes(), media_type="image/webp",
                        headers={**_CACHE_IMMUTABLE, "Content-Security-Policy": FILE_POLICY})

    @app.get(f"{API_PREFIX}/media/{{media_id}}/thumbnail", tags=["media"],
             dependencies=[Depends(authorized)], responses=_PICTURE,
             response_class=Response)
    def media_thumbnail(media_id: str):
        """A small picture of the item (WebP): an image's thumbnail, a video's first keyframe,
        a PDF's first page. 404 when it has none (yet), e.g. audio."""
        from narra_dagster.app.details import thumbnail

        s = loaded()
        item = one(s, media_id)
        path = thumbnail(s.defs.resources["media_store"], media_id, item["kind"])
        if path is None:
            raise HTTPException(404, f"item {media_id!r} has no thumbnail")
        return picture(path)

    @app.get(f"{API_PREFIX}/media/{{media_id}}/pages/{{page}}", tags=["media"],
             dependencies=[Depends(authorized)], responses=_PICTURE,
             response_class=Response)
    def media_page(media_id: str, page: Annotated[int, PathParam(ge=1)],
                   width: Annotated[int, Query(ge=64, le=2000, description=(
                       "Pixels; served at the nearest of 320, 800 and 1600 (a tie goes to "
                       "the wider)."))] = 800):
        """Page ``page`` (1-based) of a PDF as a WebP picture, at the width of 320, 800 or 1600
        pixels nearest to ``width`` (rendered once by PDFium, then kept in a size-capped cache:
        :func:`narra_dagster.app.details.page_image`). 404 for another kind, a page it does
        not have, or a page that cannot be drawn."""
        from narra_dagster.app.details import NoSuchPage, page_image
        from narra_dagster.core.errors import BadInputError

        s = loaded()
        item = one(s, media_id)
        if item["kind"] != "document":
            raise HTTPException(404, f"item {media_id!r} is a {item['kind']}, it has no pages")
        try:
            path = page_image(s.defs.resources["media_store"], media_id, page, width)
        except (BadInputError, NoSuchPage) as exc:
            raise HTTPException(404, str(exc)) from None
        return picture(path)

    @app.get(f"{API_PREFIX}/media/{{media_id}}/files/{{name}}", tags=["media"],
             dependencies=[Depends(authorized)], responses=_PICTURE,
             response_class=Response)
    def media_file(media_id: str, name: str):
        """A stored derivative the pages show: a keyframe (``frame_0003.webp``), its thumbnail
        (``thumb_0003.webp``), an image's thumbnails (``thumb_small.webp``,
        ``thumb_medium.webp``)."""
        from narra_dagster.app.details import DERIVATIVE

        s = loaded()
        one(s, media_id)
        store = s.defs.resources["media_store"]
        if not DERIVATIVE.fullmatch(name) or not store.exists(media_id, name):
            raise HTTPException(404, f"item {media_id!r} has no file {name!r}")
        return picture(store.local_path(media_id, name))

    @app.get(f"{API_PREFIX}/events", tags=["events"], dependencies=[Depends(authorized)])
    async def events(
        request: Request,
        media_id: Annotated[str | None, Query(pattern="^[0-9a-f]{16}$")] = None,
        after: Annotated[str | None, Query(description="Resume after this event id (as the "
                                                       "Last-Event-ID header).")] = None,
    ):
        """The domain events (``upload.received``, ``analysis.started``,
        ``<stage>.completed``/``failed``, ``analysis.completed``/``failed``,
        ``analysis.deleted``...) as server-sent events, each with an ``id:``. A client that
        reconnects with ``Last-Event-ID`` (or ``?after=``) gets what it missed; ``0`` replays
        from the start. Without either, a stream for one ``media_id`` starts with that item's
        history, a stream of everything with what happens next. A stream for one ``media_id``
        carries only its current version's events: an item deleted and uploaded again does
        not replay the deleted version's."""
        from starlette.concurrency import run_in_threadpool

        from narra_dagster.app.streams import event_stream

        def start() -> tuple[Any, str, float | None]:  # blocking (start-up, a file, Redis)
            resources = loaded().defs.resources
            sink = resources["event_sink"]
            position = request.headers.get("last-event-id") or after
            if position is None:
                position = "0" if media_id else sink.end_position()
            sink.read_after(position, limit=1)  # ValueError for an id this sink never gave
            # an item deleted and uploaded again: only its current version's events
            version = resources["media_store"].version(media_id) if media_id else None
            since = (version or {}).get("since")
            return sink, position, since

        try:
            sink, position, since = await run_in_threadpool(start)
        except ValueError as exc:
            return error(400, "bad_event_id", str(exc))
        return StreamingResponse(event_stream(request, sink, position, media_id, since),
                                 media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.get(f"{API_PREFIX}/events/position", tags=["events"],
             dependencies=[Depends(authorized)])
    def events_position() -> dict[str, str]:
        """The id of the newest event: a stream opened with ``?after=`` it sees only what
        happens next."""
        return {"position": loaded().defs.resources["event_sink"].end_position()}

    @app.get("/metrics", tags=["health"])
    def metrics(request: Request):
        """Prometheus metrics: the health checks (instance, storage, daemon heartbeats, sensors)
        and Dagster's runs by status; the report is cached for 10 s. Needs the token as the API
        does, unless ``NARRA_METRICS_OPEN=1``, which opens it to clients on loopback only."""
        from fastapi.responses import Response

        from narra_dagster.app.health import prometheus_text, run_metrics
        from narra_dagster.app.health_server import HealthService
        from narra_dagster.app.security import metrics_open

        if not metrics_open(request.client.host if request.client else None):
            authorized(request)
        s = loaded()
        if s.health is None:
            s.health = HealthService(s.instance, s.defs, models=False)
        return Response(prometheus_text(s.health.report(), run_metrics(s.instance)),
                        media_type="text/plain; version=0.0.4; charset=utf-8")

    from narra_dagster.app.web import mount_web

    mount_web(app)

    return app


def _mount_docs(app) -> None:
    """``/api/docs``: Swagger UI from the ``swagger-ui-bundle`` package, served by this process
    (FastAPI's default page loads it from a CDN, which a self-hosted machine may not reach, and
    starts it with an inline script, which the pages' Content-Security-Policy forbids). It is
    started by ``/static/docs.js``, which also adds the ``X-Narra-Request`` header to the
    requests its "Try it out" sends, as the web app does."""
    from fastapi.responses import HTMLResponse
    from fastapi.staticfiles import StaticFiles
    from swagger_ui_bundle import swagger_ui_path

    app.mount("/api/docs-static", StaticFiles(directory=str(swagger_ui_path)), name="docs-static")
    page = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>narra API</title>
  <link rel="stylesheet" href="/api/docs-static/swagger-ui.css">
  <link rel="icon" href="/api/docs-static/favicon-32x32.png">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="/api/docs-static/swagger-ui-bundle.js"></script>
  <script src="/static/docs.js"></script>
</body>
</html>
"""

    @app.get("/api/docs", include_in_schema=False)
    def docs():
        return HTMLResponse(page, headers={"Cache-Control": "no-cache"})


def serve(host: str = "127.0.0.1", port: int = 8080, *, insecure: bool = False,
          log_level: str = "info") -> None:
    """Run the API with uvicorn until interrupted (SIGINT/SIGTERM end it cleanly). Once the port
    is bound, ``$NARRA_HOME/serve.json`` says where (``{"url", "pid", "server_id"}``); it is
    removed when this server stops, and never written by a server that could not bind.

    Raises:
        ValueError: from :func:`check_bind` or :func:`api_token`.
    """
    import secrets

    import uvicorn

    token = api_token()
    check_bind(host, token, insecure)
    local = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host  # where this machine reaches it
    shown = f"[{local}]" if ":" in local else local
    server_id = secrets.token_hex(8)
    marker = settings.server_file()
    record = {"url": f"http://{shown}:{port}", "pid": os.getpid(), "server_id": server_id}

    class Server(uvicorn.Server):
        async def startup(self, sockets=None):
            await super().startup(sockets)
            if self.started:  # bound: say where, atomically
                marker.parent.mkdir(parents=True, exist_ok=True)
                tmp = marker.with_name(f".serve-{os.getpid()}.tmp")
                tmp.write_text(json.dumps({**record, "started": time.time()}))
                tmp.replace(marker)

        async def shutdown(self, sockets=None):
            try:
                if json.loads(marker.read_text()).get("server_id") == server_id:
                    marker.unlink()
            except (OSError, ValueError):
                pass
            await super().shutdown(sockets)

    from narra_dagster.app.security import allowed_hosts

    app = create_app(token=token, server_id=server_id, hosts=allowed_hosts(host))
    # open event streams end within 3 s of SIGTERM instead of holding the shutdown
    Server(uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=True,
                          timeout_graceful_shutdown=3)).run()
