"""What keeps the front door shut: response policies, the origin of requests that change
something, the Host header, browser sessions, and the type stored files are served as.

The threats (README, "Security"): any web page a user visits can make the browser send requests
to ``http://127.0.0.1:8080`` (forms and ``no-cors`` fetches need no permission, and every port of
127.0.0.1 is one *site* to a browser, so ``SameSite`` cookies go with them); a name or header
on a stored file can make the browser run it as a page of narra's origin; a DNS name an
attacker controls can be pointed at 127.0.0.1 after the page loaded (DNS rebinding).

- :class:`SecurityHeaders`: every response gets ``X-Content-Type-Options: nosniff``, a strict
  ``Content-Security-Policy`` (:data:`PAGE_POLICY`: the app's own files only, no inline script,
  no framing), ``Referrer-Policy``, ``Cross-Origin-Resource-Policy`` and
  ``Cross-Origin-Opener-Policy``. Stored files carry :data:`FILE_POLICY` instead
  (:func:`stored_file_headers`), which gives a file opened on its own an opaque origin and no
  script at all.
- :class:`OriginCheck`: a POST, PUT, PATCH or DELETE must come from this server's own origin
  (``Sec-Fetch-Site`` same-origin or absent, ``Origin`` one of the server's) and carry a header
  a cross-site form or ``no-cors`` fetch cannot send: ``Authorization`` or :data:`CSRF_HEADER`.
  Otherwise 403 ``cross_site``, before the body is read, with or without a token. This is
  OWASP's "custom request header" defence plus Fetch Metadata checks (OWASP Cross-Site Request
  Forgery Prevention Cheat Sheet); no CORS is answered, so a browser never lets another origin
  set that header.
- The Host header is checked by Starlette's ``TrustedHostMiddleware`` against
  :func:`allowed_hosts` (400 otherwise): a rebound DNS name is refused.
- :class:`Sessions`: the web app trades the token for a random session id (256 bits from
  :mod:`secrets`), kept in this process with an expiry; the cookie never holds the token.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import secrets
import threading
import time
from pathlib import Path

CSRF_HEADER = "X-Narra-Request"
"""A request that changes something sends this header (any non-empty value) or
``Authorization``. Neither can be sent by a form or a ``no-cors`` fetch of another site."""

PAGE_POLICY = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: "
               "blob:; media-src 'self' blob:; connect-src 'self'; font-src 'self'; "
               "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
"""The Content-Security-Policy of the web app's pages and of every API answer."""

FILE_POLICY = "sandbox; default-src 'none'; frame-ancestors 'none'"
"""The Content-Security-Policy of stored files (uploads, thumbnails, page renders): opened on
their own they get an opaque origin (``sandbox``) and may load and run nothing."""

INLINE_TYPES = frozenset({
    "video/mp4", "video/webm", "video/quicktime", "video/x-matroska", "video/ogg",
    "audio/mpeg", "audio/mp4", "audio/ogg", "audio/wav", "audio/x-wav", "audio/flac",
    "audio/x-flac", "audio/webm", "audio/aac",
    "image/jpeg", "image/png", "image/webp", "image/gif", "image/bmp", "image/tiff",
    "image/heic", "image/heif", "image/avif",
})
"""Types a browser shows inline without running anything: the players' and pictures'. Every
other stored file (PDFs, anything unrecognized) is sent as an attachment."""

UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
SESSION_COOKIE = "narra_session"
SESSION_HOURS = 12.0
"""Default lifetime of a browser session (hours), ``$NARRA_SESSION_HOURS``."""
MAX_SESSIONS = 1000


def sniffed_type(path: Path) -> str:
    """The media type of a stored file from its first bytes, never from its name (the ``filetype``
    library's magic numbers: MP4, WebM, Matroska, Ogg, MP3, WAV, FLAC, JPEG, PNG, WebP, GIF,
    TIFF, BMP, HEIC, PDF...); ``application/octet-stream`` when nothing matches.

    Raises:
        OSError: when the file cannot be read (FileNotFoundError when it is gone).
    """
    import filetype

    with open(path, "rb") as fh:
        head = fh.read(8192)
    kind = filetype.guess(head)
    return kind.mime if kind is not None else "application/octet-stream"


def stored_file_headers(path: Path, download_name: str) -> tuple[str, dict[str, str]]:
    """(media type, headers) for serving a stored file: the type sniffed from its bytes
    (:func:`sniffed_type`), :data:`FILE_POLICY`, and ``Content-Disposition`` inline for the
    types of :data:`INLINE_TYPES`, else an attachment of type ``application/octet-stream``.
    ``download_name`` is the name a browser saves it under (ASCII, no quotes: the caller makes
    it from the media id, never from the uploaded name).

    Raises:
        OSError: from :func:`sniffed_type`.
    """
    media_type = sniffed_type(path)
    inline = media_type in INLINE_TYPES
    if not inline:
        media_type = "application/octet-stream"
    return media_type, {
        "Content-Security-Policy": FILE_POLICY,
        "Content-Disposition": f'{"inline" if inline else "attachment"}; filename="{download_name}"',
    }


def allowed_hosts(bound: str | None = None) -> list[str]:
    """Host names this server answers to: ``localhost``, ``127.0.0.1``, ``::1``, the address it
    is bound to, and ``$NARRA_ALLOWED_HOSTS`` (comma separated; ``*.example.org`` patterns as
    Starlette's ``TrustedHostMiddleware`` takes them). Bound to every interface (``0.0.0.0``,
    ``::``), the machine's host name is added too; other names it is reached by (a reverse
    proxy's) must be listed."""
    hosts = ["localhost", "127.0.0.1", "::1"]
    if bound and bound not in ("0.0.0.0", "::", ""):
        hosts.append(bound.strip("[]").lower())
    elif bound in ("0.0.0.0", "::"):
        import socket

        hosts += [socket.gethostname().lower(), socket.getfqdn().lower()]
    extra = os.environ.get("NARRA_ALLOWED_HOSTS", "")
    hosts += [h.strip().lower() for h in extra.split(",") if h.strip()]
    return list(dict.fromkeys(hosts))


def _allowed_origins() -> set[str]:
    extra = os.environ.get("NARRA_ALLOWED_ORIGINS", "")
    return {o.strip().rstrip("/").lower() for o in extra.split(",") if o.strip()}


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class _Headers:
    def __init__(self, scope):
        self.raw = {k.decode("latin-1").lower(): v.decode("latin-1")
                    for k, v in scope.get("headers", [])}

    def get(self, name: str, default: str | None = None) -> str | None:
        return self.raw.get(name, default)


async def _refuse(send, status: int, code: str, message: str) -> None:
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class OriginCheck:
    """ASGI middleware: refuse (403 ``cross_site``) a request that changes something unless it
    proves it comes from this server's own pages or from a program, not from another site's
    page. See the module's docstring for the rules and their source."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] not in UNSAFE_METHODS:
            return await self.app(scope, receive, send)
        headers = _Headers(scope)
        why = self.refusal(headers, scope.get("scheme", "http"))
        if why:
            return await _refuse(send, 403, "cross_site", why)
        return await self.app(scope, receive, send)

    @staticmethod
    def refusal(headers: _Headers, scheme: str) -> str | None:
        """Why the request is refused, or None when it may go on."""
        site = headers.get("sec-fetch-site")
        if site is not None and site not in ("same-origin", "none"):
            return (f"refused: a request from another site (Sec-Fetch-Site: {site}) may not "
                    "change anything here")
        origin = headers.get("origin")
        if origin is not None:
            own = f"{scheme}://{headers.get('host', '')}".lower()
            if origin.rstrip("/").lower() not in {own, *_allowed_origins()}:
                return (f"refused: a request from {origin[:100]!r} may not change anything on "
                        f"{own}; set NARRA_ALLOWED_ORIGINS to allow another origin")
        if not (headers.get("authorization") or headers.get(CSRF_HEADER.lower())):
            return (f"refused: a request that changes something needs an 'Authorization: Bearer "
                    f"<token>' header or a '{CSRF_HEADER}: 1' header")
        return None


class SecurityHeaders:
    """ASGI middleware: the policies every response carries (see the module's docstring); a
    header the route set itself (a stored file's :data:`FILE_POLICY`, the API docs' policy) is
    kept."""

    DEFAULTS = (
        ("content-security-policy", PAGE_POLICY),
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        ("referrer-policy", "no-referrer"),
        ("cross-origin-opener-policy", "same-origin"),
        ("cross-origin-resource-policy", "same-origin"),
    )

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                present = {k.lower() for k, _ in message.get("headers", [])}
                extra = [(k.encode(), v.encode()) for k, v in self.DEFAULTS
                         if k.encode() not in present]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        return await self.app(scope, receive, send_with_headers)


class Sessions:
    """Browser sessions of the web app: random ids with an expiry, in this process's memory
    (a restart signs everyone out). Only a SHA-256 of each id is kept, so a lookup leaks
    nothing about other ids through its timing.

    Args:
        hours: lifetime of a session (hours); default ``$NARRA_SESSION_HOURS`` or
            :data:`SESSION_HOURS`.
    """

    def __init__(self, hours: float | None = None):
        if hours is None:
            raw = os.environ.get("NARRA_SESSION_HOURS")
            hours = float(raw) if raw else SESSION_HOURS
        self.seconds = hours * 3600.0
        self._expiry: dict[str, float] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _digest(session_id: str) -> str:
        return hashlib.sha256(session_id.encode("utf-8", "replace")).hexdigest()

    def create(self) -> str:
        """A new session id (43 URL-safe characters), valid for :attr:`seconds`."""
        session_id = secrets.token_urlsafe(32)
        now = time.time()
        with self._lock:
            self._expiry = {d: t for d, t in self._expiry.items() if t > now}
            while len(self._expiry) >= MAX_SESSIONS:  # the oldest go first
                self._expiry.pop(min(self._expiry, key=self._expiry.__getitem__))
            self._expiry[self._digest(session_id)] = now + self.seconds
        return session_id

    def valid(self, session_id: str | None) -> bool:
        """True for a session id this process gave out, not expired and not ended."""
        if not session_id:
            return False
        with self._lock:
            expires = self._expiry.get(self._digest(session_id))
        return expires is not None and expires > time.time()

    def end(self, session_id: str | None) -> None:
        """End a session (sign-out); an unknown id changes nothing."""
        if session_id:
            with self._lock:
                self._expiry.pop(self._digest(session_id), None)


def metrics_open(client_host: str | None) -> bool:
    """Whether ``/metrics`` answers without the token: only with ``NARRA_METRICS_OPEN=1`` and
    then only to a client on loopback (a Prometheus scraper on the same machine)."""
    return os.environ.get("NARRA_METRICS_OPEN") == "1" and _is_loopback(client_host or "")
