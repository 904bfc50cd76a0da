"""The HTTP API: ``narra serve [--host 127.0.0.1] [--port 8080]``.

A FastAPI app on uvicorn, on the same application layer as the ``narra`` command. It holds the
text embedder and the search index open, so a query costs tens of milliseconds instead of a
process start, imports and a model load; ``narra search`` asks it when it runs (it finds it by
``$NARRA_HOME/serve.json``, :func:`narra_dagster.settings.server_file`). No media is processed in
this process: processing stays in Dagster runs.

Routes (OpenAPI docs at ``/api/docs``; errors are JSON ``{"error": {"code", "message"}}``):

- ``GET /api/v1/search?q=&kind=&limit=&min_relevance=``: ``{"query", "hits", "no_good_match"}``,
  the hits with the fields of ``narra search --json``;
- ``GET /healthz``: liveness, ``{"status": "ok"}``; ``GET /readyz``: 200 once the model and the
  index are loaded.

Access: bound to 127.0.0.1 by default. With ``NARRA_API_TOKEN`` set (or ``NARRA_API_TOKEN_FILE``
naming a file holding it), every ``/api`` route needs ``Authorization: Bearer <token>`` (401
otherwise; compared in constant time with :func:`hmac.compare_digest`; never logged).
:func:`check_bind` refuses a non-loopback address without a token unless ``insecure``.
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

API_PREFIX = "/api/v1"


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
    """The embedder and the index, loaded once (in the background at start-up)."""

    def __init__(self) -> None:
        self.ready = threading.Event()
        self.error: str | None = None
        self.embedder = self.index = None

    def load(self) -> None:
        try:
            from narra_dagster.app.runtime import load_definitions

            resources = load_definitions().resources
            self.embedder, self.index = resources["embedder"], resources["search_index"]
            self.embedder.embed(["warm up"])  # loads the model
            self.index.count()  # opens the table
        except Exception as exc:  # reported by /readyz and by each search
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            self.ready.set()


def create_app(*, token: str | None = None, server_id: str | None = None):
    """The ASGI app. ``token``: the bearer token every ``/api/v1`` route requires (None: none;
    ``/healthz``, ``/readyz`` and the docs stay open). ``server_id``: sent as the
    ``X-Narra-Server`` header of every response, so a client that found this server through
    :func:`settings.server_file` can check it reached this server and not another program on
    the port."""
    from fastapi import Depends, FastAPI, HTTPException, Query, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    searcher = _Searcher()

    @asynccontextmanager
    async def lifespan(app):
        threading.Thread(target=searcher.load, name="narra-api-load", daemon=True).start()
        yield

    app = FastAPI(title="narra", version="1", lifespan=lifespan, docs_url="/api/docs",
                  openapi_url="/api/openapi.json", redoc_url=None,
                  description="Search what narra's media say and show.")

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
        codes = {401: "unauthorized", 404: "not_found", 405: "method_not_allowed",
                 503: "not_ready"}
        detail = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        return error(exc.status_code, codes.get(exc.status_code, "http_error"), detail)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("query", "body"))
        return error(422, "invalid_request", f"{where}: {first.get('msg', 'invalid')}")

    def authorized(request: Request) -> None:
        if token is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, value = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(),
                                                                 token.encode()):
            raise HTTPException(401, "a valid 'Authorization: Bearer <token>' header is needed")

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

    return app


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

    app = create_app(token=token, server_id=server_id)
    Server(uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=True)).run()
