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


def _get(url, token=None, method="GET", headers=None, raw=False):
    request = urllib.request.Request(url, method=method, headers=headers or {})
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            body = response.read()
            return (response.status, body, response.headers) if raw else (response.status,
                                                                           json.loads(body))
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
    yield from _serve(home)


def _serve(home):
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


def test_items_are_listed_followed_served_with_ranges_and_deleted(home, tmp_path):
    """Real uploads processed by `narra process`'s code, then followed and removed over HTTP."""
    import dagster as dg
    from PIL import Image
    from skimage import data

    from narra_dagster.app.processing import process_files
    from narra_dagster.app.runtime import load_definitions, open_instance

    from .support.media import speak, write_audio

    photo = tmp_path / "coffee.jpg"
    Image.fromarray(data.coffee()).save(photo)
    audio, _ = speak(["The lighthouse keeper counts seagulls every morning."])
    speech = write_audio(audio, tmp_path / "keeper.m4a", "m4a")
    with open_instance() as instance:
        results = process_files([photo, speech], instance, load_definitions())
    assert [r.status for r in results] == ["succeeded", "succeeded"], results
    image_key, audio_key = (r.partition_key for r in results)

    for url, env, _ in _serve(home):
        api = f"{url}/api/v1/media"
        status, page = _get(f"{api}?limit=1", token=TOKEN)
        assert status == 200 and len(page["items"]) == 1 and page["next_cursor"]
        status, rest = _get(f"{api}?limit=1&cursor={page['next_cursor']}", token=TOKEN)
        assert rest["next_cursor"] is None
        assert _get(f"{api}?cursor=not-one-of-ours", token=TOKEN)[1]["error"]["code"] == "bad_cursor"
        assert {i["media_id"] for i in page["items"] + rest["items"]} == {image_key, audio_key}
        status, videos = _get(f"{api}?kind=audio&state=searchable", token=TOKEN)
        assert [i["media_id"] for i in videos["items"]] == [audio_key]
        status, photos = _get(f"{api}?kind=photo", token=TOKEN)
        assert [(i["media_id"], i["state"]) for i in photos["items"]] == [(image_key, "searchable")]
        assert _get(f"{api}?state=lost", token=TOKEN)[0] == 422

        status, item = _get(f"{api}/{audio_key}", token=TOKEN)
        assert status == 200 and item["state"] == "searchable" and item["kind"] == "video"
        assert item["source_name"] == "keeper.m4a" and item["size_bytes"] == speech.stat().st_size
        assert item["stages"] and all(st["materialized_at"] for st in item["stages"])
        assert item["error_class"] is None and item["links"]["dagster_run"].startswith("http://127.0.0.1:3000/runs/")
        for missing in ("0123456789abcdef", "not-a-key"):
            status, body = _get(f"{api}/{missing}", token=TOKEN)
            assert status == 404 and body["error"]["code"] == "not_found"
        assert _get(f"{api}/{audio_key}")[0] == 401

        # The stored upload, whole and by range (players seek with Range requests).
        status, whole, headers = _get(f"{api}/{audio_key}/source", token=TOKEN, raw=True)
        assert status == 200 and whole == speech.read_bytes()
        assert headers["Accept-Ranges"] == "bytes" and headers["Content-Type"].startswith("audio/")
        status, part, headers = _get(f"{api}/{audio_key}/source", token=TOKEN, raw=True,
                                     headers={"Range": "bytes=100-199"})
        assert status == 206 and part == whole[100:200]
        assert headers["Content-Range"] == f"bytes 100-199/{len(whole)}"

        # Delete: gone from the item routes and from search; listed as deleted.
        status, gone = _get(f"{api}/{image_key}", token=TOKEN, method="DELETE")
        assert status == 200 and gone["state"] == "deleted"
        assert _get(f"{api}/{image_key}", token=TOKEN)[0] == 404
        assert _get(f"{api}/{image_key}/source", token=TOKEN)[0] == 404
        status, found = _get(f"{url}/api/v1/search?q=espresso&min_relevance=0&limit=50", token=TOKEN)
        assert image_key not in {h["media_id"] for h in found["hits"]}
        status, deleted = _get(f"{api}?state=deleted", token=TOKEN)
        assert [i["media_id"] for i in deleted["items"]] == [image_key]
        status, every = _get(api, token=TOKEN)  # newest first: the deletion is newer
        assert [(i["media_id"], i["state"]) for i in every["items"]] == [
            (image_key, "deleted"), (audio_key, "searchable")] and every["next_cursor"] is None
    with dg.DagsterInstance.get() as instance:
        assert not instance.has_dynamic_partition("images", image_key)
