"""`narra serve`: the HTTP API as a real server process, and `narra search` answered by it."""

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from narra_dagster.resources import LanceSearchIndex
from narra_dagster.resources.search_index import IndexRow

from .conftest import REPO, subprocess_env
from .services import free_port, wait_for

KEY = "cccccccccccccccc"
TOKEN = "s3cret-token-for-tests"
TEXTS = ["the lighthouse keeper counts seagulls every morning",
         "a recipe for bread with sourdough and rye flour"]


def _get(url, token=None):
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.fixture
def server(home, embedder):
    index = LanceSearchIndex(uri=str(home / "index"))
    rows = [IndexRow(media_id=KEY, kind="video", origin="video_index_rows",
                     source_name="harbour.m4a", chunk_index=i, start_s=10.0 * i,
                     end_s=10.0 * i + 9, text=t, vector=v.tolist(),
                     words=[(w, 10.0 * i + k, 10.0 * i + k + 0.5) for k, w in enumerate(t.split())])
            for i, (t, v) in enumerate(zip(TEXTS, embedder.embed(TEXTS)))]
    index.upsert_partition(KEY, "video", rows, origin="video_index_rows")
    port = free_port()
    token_file = home / "api-token"
    token_file.write_text(TOKEN + "\n")
    env = {**subprocess_env(home), "NARRA_API_TOKEN_FILE": str(token_file)}  # server and CLI
    log = open(home / "serve.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "narra_dagster.cli", "serve", "--port", str(port)],
                            env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _alive(url) and _get(f"{url}/readyz")[0] == 200, 120, "the API ready",
                 on_timeout=lambda: (home / "serve.log").read_text())
        yield url, env, home
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
    assert not (home / "serve.json").exists()  # removed when the server stops


def _alive(url):
    try:
        urllib.request.urlopen(f"{url}/healthz", timeout=2)
        return True
    except OSError:
        return False


def test_search_over_http_and_the_cli_asks_the_running_server(server):
    url, env, home = server
    marker = json.loads((home / "serve.json").read_text())
    assert marker["url"] == url and marker["server_id"]
    assert urllib.request.urlopen(f"{url}/healthz").headers["X-Narra-Server"] == marker["server_id"]
    status, body = _get(f"{url}/api/v1/search?q=%3F%3F", token=TOKEN)
    assert status == 422  # no word to look for

    status, body = _get(f"{url}/api/v1/search?q=keeper+counts+seagulls")
    assert status == 401 and body["error"]["code"] == "unauthorized"
    status, body = _get(f"{url}/api/v1/search?q=keeper+counts+seagulls", token="wrong")
    assert status == 401
    status, body = _get(f"{url}/api/v1/search?q=keeper+counts+seagulls&limit=3", token=TOKEN)
    assert status == 200 and body["no_good_match"] is False
    hit = body["hits"][0]
    assert (hit["media_id"], hit["start_s"], hit["end_s"]) == (KEY, 2.0, 4.5)
    assert hit["text"][slice(*hit["match"])] == "keeper counts seagulls"

    status, body = _get(f"{url}/api/v1/search?q=quarterly+tax+return+deadline", token=TOKEN)
    assert status == 200 and body == {"query": "quarterly tax return deadline", "hits": [],
                                      "no_good_match": True}
    status, body = _get(f"{url}/api/v1/search?q=bread&limit=0", token=TOKEN)
    assert status == 422 and body["error"]["code"] == "invalid_request" and "limit" in body["error"]["message"]
    status, body = _get(f"{url}/api/v1/search?q=bread&kind=spreadsheet", token=TOKEN)
    assert status == 422 and body["error"]["code"] == "unknown_kind"

    # The CLI's answer through the server is the one it computes itself (--local).
    def requests():
        time.sleep(0.5)  # uvicorn's access log line
        return (home / "serve.log").read_text().count("GET /api/v1/search?q=keeper")

    args = ["narra", "search", "keeper counts seagulls", "--json"]
    before = requests()
    served = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    after_served = requests()
    local = subprocess.run(args + ["--local"], env=env, capture_output=True, text=True, timeout=300)
    assert served.returncode == local.returncode == 0, (served.stderr, local.stderr)
    assert json.loads(served.stdout) == json.loads(local.stdout)
    assert (after_served, requests()) == (before + 1, before + 1)  # --local did not ask it

    nothing = subprocess.run(["narra", "search", "quarterly tax return deadline"], env=env,
                             capture_output=True, text=True, timeout=120)
    assert nothing.returncode == 0 and "no good match" in nothing.stdout



def test_the_cli_sends_nothing_to_another_program_on_the_port(home):
    """A serve.json left behind (or a port reused by another program): the CLI checks the
    server's id before it sends the query and the token, then searches itself."""
    import os
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    seen = []

    class Other(BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append((self.path, self.headers.get("Authorization")))
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b'{"hits": [{"fake": true}]}')

        def log_message(self, *args):
            pass

    other = HTTPServer(("127.0.0.1", 0), Other)
    threading.Thread(target=other.serve_forever, daemon=True).start()
    try:
        home.mkdir(parents=True, exist_ok=True)
        (home / "serve.json").write_text(json.dumps({
            "url": f"http://127.0.0.1:{other.server_address[1]}", "pid": os.getpid(),
            "server_id": "0123456789abcdef"}))
        env = {**subprocess_env(home), "NARRA_API_TOKEN": TOKEN}
        done = subprocess.run(["narra", "search", "keeper", "--json"], env=env,
                              capture_output=True, text=True, timeout=300)
    finally:
        other.shutdown()
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []  # its own (empty) index, not the other's answer
    assert seen == [("/healthz", None)]
