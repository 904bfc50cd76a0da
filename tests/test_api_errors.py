"""Bounded and boring errors of the HTTP API, each a finding of the front-door review rerun on
a real `narra serve` (fresh NARRA_HOME, its own Dagster instance, the real embedder) with its log
captured: page renders in a fixed set of widths with a size-capped cache; malformed multipart
bodies, missing stored files, stalled and abandoned uploads, and several files in one request
answered with a JSON error and no traceback in the log.

The server runs with a 2 s body timeout (``NARRA_UPLOAD_IDLE_TIMEOUT_S``) and a 0.5 MiB page
cache (``NARRA_PAGE_CACHE_MB``) so both limits are reached in seconds.
"""

from __future__ import annotations

import hashlib
import io
import socket
import time

import httpx
import pytest
from PIL import Image

from .services import wait_for
from .support.server import CSRF, SAMPLE_PDF, narra_serve, png_bytes, upload

IDLE_TIMEOUT_S = 2.0
PAGE_CACHE_MB = 0.5


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    home = tmp_path_factory.mktemp("api-errors") / "narra"
    with narra_serve(home, env={"NARRA_UPLOAD_IDLE_TIMEOUT_S": str(IDLE_TIMEOUT_S),
                                "NARRA_PAGE_CACHE_MB": str(PAGE_CACHE_MB)}) as running:
        yield running


@pytest.fixture(scope="module")
def pdf_id(server) -> str:
    answer = upload(server, "spec.pdf", SAMPLE_PDF.read_bytes())
    assert answer.status_code == 202, answer.text
    return answer.json()["media_id"]


def _renders(server, media_id: str) -> list:
    """Every page render of the item anywhere under its NARRA_HOME (the cache, the store)."""
    return sorted(p for p in server.home.rglob("page_*_w*.webp") if media_id in str(p))


def _no_traceback(server, offset: int) -> None:
    since = server.log_since(offset)
    assert "Traceback" not in since and "Exception in ASGI" not in since, since[-6000:]


def _parts(server) -> list:
    return sorted((server.home / "uploads").glob("*.part"))


def test_page_renders_come_in_three_widths_in_a_capped_cache(server, pdf_id):
    page = f"{server.api}/media/{pdf_id}/pages"
    for width in [64 + 32 * i for i in range(60)]:  # 60 widths, 64-1952 pixels
        answer = httpx.get(f"{page}/1", params={"width": width}, timeout=60)
        assert answer.status_code == 200, answer.text
    assert [p.name for p in _renders(server, pdf_id)] == [
        "page_0001_w1600.webp", "page_0001_w320.webp", "page_0001_w800.webp"]
    for asked, served in ((100, 320), (559, 320), (560, 800), (1000, 800), (1300, 1600),
                          (2000, 1600)):
        picture = httpx.get(f"{page}/1", params={"width": asked}, timeout=60)
        assert Image.open(io.BytesIO(picture.content)).width == served, asked

    # Every page at 1600 pixels passes the 0.5 MiB cap: the least recently used go first.
    cap = int(PAGE_CACHE_MB * 1024 * 1024)
    for number in range(1, 18):
        assert httpx.get(f"{page}/{number}", params={"width": 1600}, timeout=60).status_code == 200
    kept = _renders(server, pdf_id)
    total = sum(p.stat().st_size for p in kept)
    assert total <= cap + max(p.stat().st_size for p in kept), (total, [p.name for p in kept])
    assert len(kept) < 3 + 16  # some of the 19 renders were evicted...
    assert "page_0017_w1600.webp" in {p.name for p in kept}  # ...never the newest


def test_a_malformed_multipart_body_is_400_without_a_traceback(server):
    offset = len(server.log())
    multipart = {**CSRF, "Content-Type": "multipart/form-data; boundary=XyZ"}
    part = (b'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n'
            + png_bytes((1, 2, 3)))
    bodies = {
        "a 10,000-character file name": None,
        "a truncated body": part,
        "another boundary than declared": part.replace(b"--XyZ", b"--Other") + b"\r\n--Other--\r\n",
        "no boundary at all": b"just some bytes, not multipart",
    }
    for what, body in bodies.items():
        if body is None:
            answer = httpx.post(f"{server.api}/media", headers=CSRF, timeout=60,
                                files={"file": ("x" * 10_000 + ".png", png_bytes((4, 5, 6)))})
        else:
            answer = httpx.post(f"{server.api}/media", headers=multipart, content=body,
                                timeout=60)
        assert answer.status_code == 400, (what, answer.text)
        assert answer.json()["error"]["code"] == "bad_multipart", what
    assert _parts(server) == []
    _no_traceback(server, offset)


def test_a_missing_stored_file_is_404_without_a_traceback(server, pdf_id):
    offset = len(server.log())
    answer = upload(server, "red.png", png_bytes((200, 10, 10)))
    image_id = answer.json()["media_id"]
    (server.home / "media" / image_id / "source").unlink()
    pdf_source = server.home / "media" / pdf_id / "source"
    hidden = pdf_source.with_name("source.hidden")
    pdf_source.rename(hidden)
    for render in _renders(server, pdf_id):
        render.unlink()
    try:
        for path in (f"{image_id}/source", f"{pdf_id}/source", f"{pdf_id}/pages/2",
                     f"{pdf_id}/thumbnail", f"{image_id}/files/thumb_medium.webp"):
            answer = httpx.get(f"{server.api}/media/{path}", timeout=60)
            assert answer.status_code == 404, (path, answer.text)
            assert answer.json()["error"]["code"] in ("missing_file", "not_found"), path
            assert str(server.home) not in answer.text  # no server path in the answer
    finally:
        hidden.rename(pdf_source)
    _no_traceback(server, offset)


def _start_upload(server, body_bytes: int) -> socket.socket:
    """Open an upload that declares 10 MB and sends its headers and ``body_bytes`` of its file,
    then nothing more."""
    host, port = server.url.removeprefix("http://").split(":")
    conn = socket.create_connection((host, int(port)))
    head = (b'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="slow.mp4"\r\n'
            b"Content-Type: video/mp4\r\n\r\n")
    conn.sendall(b"POST /api/v1/media HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Narra-Request: 1\r\n"
                 b"Content-Type: multipart/form-data; boundary=XyZ\r\n"
                 b"Content-Length: 10000000\r\n\r\n" + head + b"\0" * body_bytes)
    wait_for(lambda: _parts(server), 10, "the partial upload on disk", interval_s=0.1)
    return conn


def test_a_stalled_upload_body_is_408_within_the_timeout(server):
    offset = len(server.log())
    conn = _start_upload(server, 100_000)
    conn.settimeout(IDLE_TIMEOUT_S + 10)
    started = time.monotonic()
    answer, waited = b"", None
    try:  # the answer's head and body may come in separate segments: read until it closes
        while piece := conn.recv(4096):
            if waited is None:
                waited = time.monotonic() - started
            answer += piece
    except (socket.timeout, ConnectionResetError):
        pass
    waited = time.monotonic() - started if waited is None else waited
    conn.close()
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b'"body_timeout"' in answer and waited < IDLE_TIMEOUT_S + 3, waited
    assert _parts(server) == []
    _no_traceback(server, offset)


def test_a_client_disconnect_mid_upload_logs_one_line_and_removes_the_partial_file(server):
    offset = len(server.log())
    conn = _start_upload(server, 200_000)
    conn.close()
    wait_for(lambda: not _parts(server) and server.log_since(offset).strip(), 10,
             "the partial upload removed and logged", interval_s=0.1)
    time.sleep(0.5)  # anything else the disconnect would log
    lines = server.log_since(offset).strip().splitlines()
    assert len(lines) == 1 and "disconnected" in lines[0], lines[:20]


def test_two_files_in_one_request_are_refused_and_nothing_is_stored(server):
    offset = len(server.log())
    first, second = png_bytes((9, 99, 9)), png_bytes((99, 9, 99))
    for files in ([("file", ("a.png", first)), ("file", ("b.png", second))],
                  [("file", ("a.png", first)), ("extra", ("b.png", second))]):
        answer = httpx.post(f"{server.api}/media", headers=CSRF, files=files, timeout=60)
        assert answer.status_code == 400, answer.text
        error = answer.json()["error"]
        assert error["code"] == "one_file_per_request"
        assert "one request per file" in error["message"]
    for data in (first, second):
        key = hashlib.sha256(data).hexdigest()[:16]
        assert httpx.get(f"{server.api}/media/{key}", timeout=30).status_code == 404
        assert not (server.home / "media" / key).exists()
    assert _parts(server) == []
    _no_traceback(server, offset)
