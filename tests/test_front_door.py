"""The front door: `narra serve` with a real Dagster daemon and real models, used over HTTP and
through the web app in a real browser (Debian's chromium driven by Playwright).

One server, one daemon and one NARRA_HOME for the module: every upload below is processed by
Dagster runs the daemon launches from the ``run_request_sensor``, never inside the server.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import httpx
import pytest

from tests.support.media import make_talking_video, speak, write_audio

from .conftest import REPO, subprocess_env
from .services import daemon, free_port, wait_for

TOKEN = "front-door-token"
LIMIT = 3_000_000  # NARRA_MAX_UPLOAD_BYTES of the server under test
CHROMIUM = "/usr/bin/chromium"
PDF = Path("/usr/share/doc/shared-mime-info/shared-mime-info-spec.pdf")  # 17 pages of text


class FrontDoor:
    def __init__(self, url: str, home: Path, logs: Path):
        self.url, self.home, self.logs = url, home, logs
        self.client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"},
                                   timeout=60)

    def log_tail(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-4000:]}"
                         for p in sorted(self.logs.glob("*.log")))

    def upload(self, path: Path, name: str | None = None) -> httpx.Response:
        with open(path, "rb") as fh:
            return self.client.post("/api/v1/media", files={"file": (name or path.name, fh)})

    def item(self, media_id: str) -> dict:
        return self.client.get(f"/api/v1/media/{media_id}").json()

    def wait_state(self, media_id: str, states: set[str], timeout_s: float = 180,
                   changed_from_run: str | None = None) -> dict:
        def done():
            item = self.item(media_id)
            run = (item.get("last_run") or {}).get("run_id")
            if item.get("state") in states and (changed_from_run is None or run != changed_from_run):
                return item
            return None
        return wait_for(done, timeout_s, f"{media_id} {states}", interval_s=0.5,
                        on_timeout=self.log_tail)


@pytest.fixture(scope="module")
def front_door(tmp_path_factory, embedder, transcriber):
    """`narra serve` (token, 3 MB upload limit) and `dagster-daemon run` on one fresh home."""
    root = tmp_path_factory.mktemp("front-door")
    home, logs = root / "narra", root / "logs"
    logs.mkdir()
    (home / "dagster").mkdir(parents=True)
    shutil.copyfile(REPO / "dagster.yaml", home / "dagster" / "dagster.yaml")
    token_file = root / "token"
    token_file.write_text(TOKEN)
    env = {**subprocess_env(home), "NARRA_API_TOKEN_FILE": str(token_file),
           "NARRA_MAX_UPLOAD_BYTES": str(LIMIT)}
    port = free_port()
    with daemon(env, logs / "daemon.log"):
        log = open(logs / "serve.log", "w")
        proc = subprocess.Popen([sys.executable, "-m", "narra_dagster.cli", "serve", "--port",
                                 str(port)], env=env, cwd=REPO, stdout=log,
                                stderr=subprocess.STDOUT)
        door = FrontDoor(f"http://127.0.0.1:{port}", home, logs)
        try:
            wait_for(lambda: _ready(door.url), 120, "the API ready", on_timeout=door.log_tail)
            yield door
        finally:
            door.client.close()
            proc.terminate()
            proc.wait(timeout=30)  # open event streams do not hold the shutdown
            log.close()


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> tuple[Path, list]:
    """A 2-sentence spoken audio file (Ogg/Opus, about 6 s)."""
    audio, timeline = speak(["The lighthouse keeper feeds the seagulls at dawn.",
                             "Fresh bread arrives from the bakery on Tuesday."])
    path = tmp_path_factory.mktemp("clip") / "lighthouse.ogg"
    return write_audio(audio, path, "opus"), timeline


def _events(door: FrontDoor, media_id: str, last_event_id: str | None, until: str,
            timeout_s: float = 60) -> list[tuple[str, dict]]:
    """Read the item's event stream until an event of type ``until``; (id, event) pairs."""
    headers = {"Last-Event-ID": last_event_id} if last_event_id is not None else {}
    out: list[tuple[str, dict]] = []
    deadline = time.monotonic() + timeout_s
    with door.client.stream("GET", f"/api/v1/events?media_id={media_id}", headers=headers,
                            timeout=httpx.Timeout(timeout_s, read=20)) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        event_id = None
        for line in response.iter_lines():
            if line.startswith("id: "):
                event_id = line[4:]
            elif line.startswith("data: "):
                out.append((event_id, json.loads(line[6:])))
                if out[-1][1]["type"] == until:
                    break
            assert time.monotonic() < deadline, out
    return out


def test_upload_to_searchable_with_replayable_events(front_door, clip):
    door = front_door
    path, timeline = clip
    response = door.upload(path)
    assert response.status_code == 202, response.text
    body = response.json()
    key = body["media_id"]
    assert body["kind"] == "video" and body["source_name"] == "lighthouse.ogg"
    assert body["state"] == "queued" and body["status_url"] == f"/api/v1/media/{key}"

    # The same bytes again: the same item, no second run.
    again = door.upload(path, name="copy.ogg")
    assert again.status_code == 200 and again.json()["media_id"] == key
    assert again.json()["run_requested"] is False

    item = door.wait_state(key, {"searchable", "failed"})
    assert item["state"] == "searchable", item
    assert item["names"] == ["lighthouse.ogg", "copy.ogg"]
    assert all(stage["materialized_at"] for stage in item["stages"])

    # Server-sent events from the start, in order; then resumed after the run started.
    events = _events(door, key, "0", until="analysis.completed")
    types = [e["type"] for _, e in events]
    assert types[0] == "upload.received" and types[1] == "analysis.started", types
    assert "video_transcript.completed" in types and types[-1] == "analysis.completed"
    assert all(e["media_id"] == key for _, e in events)
    started_id = events[1][0]
    resumed = _events(door, key, started_id, until="analysis.completed")
    assert [e["type"] for _, e in resumed] == types[2:]
    assert [i for i, _ in resumed] == [i for i, _ in events[2:]]  # the same ids

    hits = door.client.get("/api/v1/search", params={"q": "lighthouse keeper seagulls"}).json()
    assert hits["hits"] and hits["hits"][0]["media_id"] == key
    spoken = timeline[0]
    assert spoken.start_s - 1.0 <= hits["hits"][0]["start_s"] <= spoken.end_s

    listed = door.client.get("/api/v1/media", params={"state": "searchable"}).json()
    assert key in [i["media_id"] for i in listed["items"]]


def test_refusals_401_404_413_415_and_a_hostile_name(front_door, tmp_path):
    door = front_door
    # a program without the token; the header proves it is no other site's page (else 403)
    open_client = httpx.Client(base_url=door.url, timeout=30, headers={"X-Narra-Request": "1"})
    small = tmp_path / "x.bin"
    small.write_bytes(b"\x00\x01 not media at all " * 50)
    with open(small, "rb") as fh:
        refused = open_client.post("/api/v1/media", files={"file": ("x.bin", fh)})
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "unauthorized"
    assert open_client.get("/api/v1/media").status_code == 401
    assert open_client.get("/healthz").status_code == 200  # liveness stays open
    docs = open_client.get("/api/docs")  # OpenAPI docs, their scripts served here (no CDN)
    assert docs.status_code == 200 and "/api/docs-static/swagger-ui-bundle.js" in docs.text
    assert open_client.get("/api/docs-static/swagger-ui-bundle.js").status_code == 200
    spec = open_client.get("/api/openapi.json").json()
    assert "multipart/form-data" in spec["paths"]["/api/v1/media"]["post"]["requestBody"]["content"]
    open_client.close()

    unknown = door.upload(small)
    assert unknown.status_code == 415 and unknown.json()["error"]["code"] == "unsupported_type"
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    assert door.upload(empty).json()["error"]["code"] == "empty_file"
    big = tmp_path / "big.wav"
    big.write_bytes(b"RIFF" + b"\x00" * (LIMIT + 10))
    too_big = door.upload(big)
    assert too_big.status_code == 413 and too_big.json()["error"]["code"] == "too_large"
    not_form = door.client.post("/api/v1/media", content=b"raw bytes",
                                headers={"Content-Type": "application/octet-stream"})
    assert not_form.status_code == 415
    assert not list((door.home / "uploads").glob("*.part"))  # nothing half-received is left

    # Just under the limit: received in several pieces, stored byte for byte.
    quiet = tmp_path / "quiet.wav"
    size = LIMIT - 200_000
    quiet.write_bytes(b"RIFF" + struct.pack("<I", size - 8) + b"WAVEfmt "
                      + struct.pack("<IHHIIHH", 16, 1, 1, 16000, 32000, 2, 16) + b"data"
                      + struct.pack("<I", size - 44) + bytes(size - 44))
    accepted = door.upload(quiet)
    assert accepted.status_code == 202, accepted.text
    stored = door.home / "media" / accepted.json()["media_id"] / "source"
    assert hashlib.sha256(stored.read_bytes()).digest() == hashlib.sha256(quiet.read_bytes()).digest()
    door.wait_state(accepted.json()["media_id"], {"searchable", "failed"})
    assert door.client.get("/api/v1/media/0123456789abcdef").status_code == 404
    assert door.client.get("/api/v1/media/not-an-id").status_code == 404
    bad = door.client.get("/api/v1/events", headers={"Last-Event-ID": "not-a-position"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "bad_event_id"

    # A file name built to escape: path parts, quotes, control and non-UTF-8 bytes, 300 long.
    image = tmp_path / "photo.png"
    from PIL import Image
    Image.new("RGB", (64, 48), (200, 30, 30)).save(image)
    boundary = "narra-boundary-1234"
    hostile = b'../../../etc/x\\..\\"q\x01\xff' + b"n" * 300 + b".png"
    body = (f"--{boundary}\r\n".encode()
            + b'Content-Disposition: form-data; name="file"; filename="' + hostile + b'"\r\n'
            + b"Content-Type: image/png\r\n\r\n" + image.read_bytes()
            + f"\r\n--{boundary}--\r\n".encode())
    response = door.client.post("/api/v1/media", content=body, headers={
        "Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert response.status_code == 202, response.text
    name = response.json()["source_name"]
    assert "/" not in name and "\\" not in name and "\x01" not in name and len(name) <= 255
    written = {p.name for p in door.home.rglob("*")}
    assert not any("etc" == n or n.startswith("nnnn") for n in written)
    assert not Path("/etc/x").exists()
    door.wait_state(response.json()["media_id"], {"searchable", "failed"})


def test_retry_and_delete_leave_nothing_behind(front_door, clip, tmp_path):
    door = front_door
    broken = tmp_path / "broken.mp4"
    broken.write_bytes((REPO / "samples" / "sample_video.mp4").read_bytes()[:6000])
    key = door.upload(broken).json()["media_id"]
    failed = door.wait_state(key, {"failed", "searchable"})
    assert failed["state"] == "failed" and failed["error_class"] == "corrupt_media", failed
    assert failed["error"]
    first_run = failed["last_run"]["run_id"]

    retried = door.client.post(f"/api/v1/media/{key}/retry")
    assert retried.status_code == 202, retried.text
    assert retried.json()["state"] == "queued" and retried.json()["error"] is None
    twice = door.client.post(f"/api/v1/media/{key}/retry")  # a double click: still one run
    assert twice.status_code in (202, 409)
    again = door.wait_state(key, {"failed", "searchable"}, changed_from_run=first_run)
    assert again["state"] == "failed" and again["error_class"] == "corrupt_media"
    time.sleep(6)  # a second retry run, had one been asked for, would have started by now
    with dg.DagsterInstance.from_config(str(door.home / "dagster")) as instance:
        runs = instance.get_runs(dg.RunsFilter(tags={"dagster/partition": key}))
    assert len(runs) == 2, [r.tags.get("dagster/run_key") for r in runs]

    searchable = door.upload(clip[0]).json()["media_id"]
    old_run = door.wait_state(searchable, {"searchable"})["last_run"]["run_id"]
    conflict = door.client.post(f"/api/v1/media/{searchable}/retry")
    assert conflict.status_code == 409 and conflict.json()["error"]["code"] == "not_failed"

    for media_id in (key, searchable):
        deleted = door.client.delete(f"/api/v1/media/{media_id}")
        assert deleted.status_code == 200 and deleted.json()["state"] == "deleted"
        assert door.client.get(f"/api/v1/media/{media_id}").status_code == 404
        assert not (door.home / "media" / media_id).exists()
        assert door.client.get(f"/api/v1/media/{media_id}/source").status_code == 404
    hits = door.client.get("/api/v1/search", params={"q": "lighthouse keeper seagulls"}).json()
    assert searchable not in [h["media_id"] for h in hits["hits"]]

    # Uploaded again: a new version, whose event stream (what the page follows) is its own,
    # never the deleted version's "analysis.completed" read as the new upload's.
    again = door.upload(clip[0])
    assert again.status_code == 202 and again.json()["state"] == "queued", again.text
    stream = _events(door, searchable, None, until="analysis.completed", timeout_s=240)
    assert stream[0][1]["type"] != "analysis.completed"
    stale = [(e["type"], e["occurred_at"]) for _, e in stream
             if e["run_id"] == old_run or e["type"] == "analysis.deleted"]
    assert not stale, stale
    assert door.wait_state(searchable, {"searchable"})["last_run"]["run_id"] != old_run
    assert door.client.delete(f"/api/v1/media/{searchable}").status_code == 200


# ---- the web app, in a real browser ----

@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: the browser tests need Debian's chromium "
                    "(apt-get install chromium; .ci/run installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--autoplay-policy=no-user-gesture-required"])
        yield browser
        browser.close()


@pytest.fixture
def page(browser, front_door, request):
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    page = context.new_page()
    page.set_default_timeout(30_000)
    # The page's Content-Security-Policy must hold the whole app: no refusal, no script error,
    # no console error at all, except the API's own error answers that the page shows (Chromium
    # logs every 4xx of a fetch: the 401 before sign-in, the 415 of a refused upload); a page
    # file or icon that fails to load is one.
    refused: list[str] = []

    def on_console(message):
        url = message.location.get("url") or ""
        if message.type == "error" and not (
                message.text.startswith("Failed to load resource") and "/api/v1/" in url):
            refused.append(f"{message.text} ({url})")

    page.on("console", on_console)
    page.on("pageerror", lambda exc: refused.append(f"uncaught: {exc}"))
    page.goto(front_door.url + "/")
    page.fill("#token", TOKEN)  # the API has a token: the page asks for it once
    page.click("#login-form button")
    page.wait_for_selector("#home-view:not([hidden])")
    yield page
    shots = front_door.home.parent / "screenshots"
    shots.mkdir(exist_ok=True)
    page.screenshot(path=str(shots / f"{request.node.name}.png"), full_page=True)
    context.close()
    assert refused == [], refused


def test_web_upload_watch_search_and_play_at_the_second(page, front_door, tmp_path):
    clip = tmp_path / "garden.mp4"
    timeline = make_talking_video(clip, ["Please water the tomato plants in the greenhouse.",
                                         "The orange cat sleeps beside the warm stove."],
                                  ["coffee", "chelsea"])
    page.set_input_files("#files", str(clip))
    upload = page.locator("[data-testid=upload]").filter(has_text="garden.mp4")
    upload.locator(".state.searchable").wait_for(timeout=180_000)
    assert upload.locator(".stage.done").count() == upload.locator(".stage").count() > 5

    page.fill("#q", "orange cat sleeps beside the stove")
    page.press("#q", "Enter")
    page.wait_for_url(lambda url: "?q=orange%20cat" in url)  # linkable
    hit = page.locator("[data-testid=hit]").first
    hit.wait_for()
    page.locator("article.group").first.locator("mark").first.wait_for()
    hit.click()
    player = page.locator("[data-testid=player]")
    player.wait_for()
    page.wait_for_function("() => document.querySelector('[data-testid=player]').currentTime > 0")
    current = player.evaluate("p => p.currentTime")
    expected = page.evaluate("""async () => (await (await fetch(
        '/api/v1/search?q=orange+cat+sleeps+beside+the+stove')).json()).hits[0].start_s""")
    assert abs(current - expected) < 0.5, (current, expected)
    assert timeline[1].start_s - 1.0 <= expected <= timeline[1].end_s

    # The item's page: stages, a transcript whose timestamps seek the player.
    page.locator("article.group h3 a").first.click()
    page.wait_for_selector("[data-testid=item-state]")
    assert page.text_content("[data-testid=item-state]") == "searchable"
    # Whisper may keep both sentences in one segment (faster-whisper 1.2 with VAD does here), so
    # the player is moved away first and the last timestamp must bring it back to its second.
    button = page.locator(".transcript button").last
    target = sum(int(x) * 60 ** i for i, x in enumerate(reversed(button.text_content().split(":"))))
    page.wait_for_function("() => document.querySelector('[data-testid=player]').readyState >= 1")
    page.evaluate("() => { const p = document.querySelector('[data-testid=player]'); "
                  "p.pause(); p.currentTime = p.duration - 0.2; }")
    button.click()
    page.wait_for_function("t => Math.abs(document.querySelector('[data-testid=player]')"
                           ".currentTime - t) < 1.5", arg=target)


def test_web_pdf_hit_shows_its_page_and_a_bad_file_its_error(page, front_door, tmp_path):
    response = front_door.upload(PDF)
    assert response.status_code in (200, 202)
    key = response.json()["media_id"]
    front_door.wait_state(key, {"searchable"})
    page.goto(front_door.url + "/?q=magic+number+detection")
    page.locator("[data-testid=hit]").first.click()
    image = page.locator("[data-testid=page]")
    image.wait_for()
    page.wait_for_function("() => document.querySelector('[data-testid=page]').naturalWidth > 500")
    hit = page.evaluate("""async () => (await (await fetch(
        '/api/v1/search?q=magic+number+detection')).json()).hits[0]""")
    assert image.get_attribute("src").endswith(f"/pages/{hit['page']}?width=1000")
    assert page.locator(".page-text mark").count() >= 1

    # A picture with words in it: the hit shows the picture with a box around them.
    from PIL import Image, ImageDraw, ImageFont

    sign = tmp_path / "sign.png"
    image = Image.new("RGB", (800, 400), "white")
    font = ImageFont.truetype("/usr/share/fonts/truetype/dejavu/DejaVuSerif.ttf", 56)
    ImageDraw.Draw(image).text((60, 170), "Harbour ferry timetable", fill="black", font=font)
    image.save(sign)
    front_door.wait_state(front_door.upload(sign).json()["media_id"], {"searchable"})
    page.goto(front_door.url + "/?q=harbour+ferry+timetable")
    page.locator("[data-testid=hit]").first.click()
    box = page.locator("[data-testid=box]")
    box.wait_for()
    drawn = box.bounding_box()
    shown = page.locator("[data-testid=picture]").bounding_box()
    hit = page.evaluate("""async () => (await (await fetch(
        '/api/v1/search?q=harbour+ferry+timetable')).json()).hits[0]""")
    x0, y0, x1, y1 = hit["box"]  # pixels of the 800 x 400 picture, inside the drawn words
    assert 40 <= x0 < x1 <= 760 and 150 <= y0 < y1 <= 260, hit
    # the box on screen is the hit's box scaled to the picture's size there (3 px border)
    scale = shown["width"] / 800
    assert abs(drawn["x"] - (shown["x"] + x0 * scale)) < 5
    assert abs(drawn["y"] - (shown["y"] + y0 * scale)) < 5
    assert abs(drawn["width"] - (x1 - x0) * scale) < 8

    # A video cut off after 5,000 bytes: taken (it starts like an MP4), then its run fails,
    # and the page shows the classified error the event stream brought.
    cut = tmp_path / "holiday.mp4"
    cut.write_bytes((REPO / "samples" / "sample_video.mp4").read_bytes()[:5000])
    page.set_input_files("#files", str(cut))
    upload = page.locator("[data-testid=upload]").filter(has_text="holiday.mp4")
    upload.locator(".state.failed").wait_for(timeout=120_000)
    assert "[corrupt_media]" in upload.locator(".error").inner_text()
    # And one narra cannot take at all: refused at once, with the reason.
    junk = tmp_path / "data.bin"
    junk.write_bytes(bytes(range(256)) * 8)
    page.set_input_files("#files", str(junk))
    refused = page.locator("[data-testid=upload]").filter(has_text="data.bin")
    refused.locator(".state.failed").wait_for()
    assert "[unsupported_type]" in refused.locator(".error").inner_text()
