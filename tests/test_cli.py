"""The commands a user runs, as subprocesses: `narra process/search/status` and
`dagster asset materialize` for one partition."""

import json
import subprocess
import sys

import dagster as dg
import pytest

from narra_dagster.defs.intake.uploads import store_upload
from narra_dagster.resources import LocalMediaStore

from .conftest import REPO, SAMPLE_VIDEO, subprocess_env


def _run(args, env, timeout=300):
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO)


def test_readme_flow_process_then_search_then_status(home, tmp_path):
    """What the README shows: process the sample video, then find a phrase and its second."""
    env = subprocess_env(home)
    timeline = json.loads(SAMPLE_VIDEO.with_suffix(".json").read_text())
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"")
    done = _run(["narra", "process", str(SAMPLE_VIDEO), str(junk), "--json"], env)
    results = {r["source_name"]: r for r in json.loads(done.stdout)}
    assert done.returncode == 1  # one file failed, so the command says so
    assert results["sample_video.mp4"]["status"] == "succeeded"
    assert results["junk.mp4"]["error_class"] == "empty_file"
    assert (home / "dagster" / "dagster.yaml").exists()

    again = _run(["narra", "process", str(SAMPLE_VIDEO), "--json"], env)
    assert again.returncode == 0 and json.loads(again.stdout)[0]["status"] == "skipped"

    found = _run(["narra", "search", "cup of coffee", "--json", "--limit", "3"], env)
    assert found.returncode == 0, found.stderr
    hit = json.loads(found.stdout)[0]
    spoken = next(s for s in timeline if "cup of coffee" in s["text"])
    assert hit["media_id"] == results["sample_video.mp4"]["partition_key"]
    assert hit["kind"] == "video" and hit["source_name"] == "sample_video.mp4"
    assert abs(hit["start_s"] - spoken["start_s"]) < 2.0, (hit, spoken)
    assert {"end_s", "text", "score"} <= hit.keys()

    status = _run(["narra", "status", "--all", "--json"], env)
    states = {i["source_name"]: i for i in json.loads(status.stdout)}
    assert states["sample_video.mp4"]["state"] == "searchable"
    assert all(states["sample_video.mp4"]["assets"].values())
    assert "junk.mp4" not in states  # an empty file is refused before it becomes a partition


BAD_OPTIONS = [
    (["search", "coffee", "--kind", "spreadsheet"], "unknown kind 'spreadsheet'"),
    (["search", "coffee", "--limit", "0"], "--limit"),
    (["search", "coffee", "--limit", "many"], "--limit"),
    (["search", "--image", "/nonexistent.jpg"], "does not exist"),
    (["search"], "give a query"),
    (["catalog", "--category", "spaceships"], "unknown category 'spaceships'"),
    (["process", "/nonexistent/clip.mp4"], "does not exist"),
    (["process"], "Missing argument"),
    (["retry"], "Missing argument"),
    (["delete"], "Missing argument"),
    (["dev", "--port", "70000"], "--port"),
    (["serve-health", "--port", "-1"], "--port"),
    (["health", "--heartbeat-tolerance", "0"], "--heartbeat-tolerance"),
    (["status", "--frobnicate"], "No such option"),
    (["status", "--env", "NARRA_STAGE_TIME_LIMIT_S=soon"], "NARRA_STAGE_TIME_LIMIT_S='soon'"),
    (["status", "--env", "NARRA_WHISPER_MODEL=large"], "NARRA_WHISPER_MODEL='large'"),
    (["search", "x", "--min-relevance", "2"], "--min-relevance"),
    (["serve", "--host", "0.0.0.0"], "NARRA_API_TOKEN"),
]


@pytest.mark.parametrize("args,message", BAD_OPTIONS, ids=[" ".join(a) for a, _ in BAD_OPTIONS])
def test_every_bad_option_is_one_message_and_a_nonzero_exit(home, args, message):
    """A wrong option or setting ends the command at once with a message naming it, exit code 2,
    no traceback, before anything is loaded or changed."""
    env = subprocess_env(home)
    if "--env" in args:
        name, value = args[args.index("--env") + 1].split("=", 1)
        env[name] = value
        args = args[: args.index("--env")]
    done = _run(["narra", *args], env, timeout=120)
    output = done.stdout + done.stderr
    assert done.returncode == 2, output
    assert message in " ".join(output.split()), output
    assert "Traceback" not in output
    assert not (home / "media").exists()  # nothing was stored


def test_kind_option_accepts_the_names_people_type(home):
    """pdf, audio, photos... are the kinds they name; the hits are of that kind only."""
    env = subprocess_env(home)
    for name in ("pdf", "audio", "photos", "Video", "document"):
        done = _run(["narra", "search", "coffee", "--kind", name, "--json"], env, timeout=120)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == []


def test_dagster_asset_materialize_one_partition(home, silent_clip):
    env = subprocess_env(home)
    upload = store_upload(silent_clip, LocalMediaStore(root=str(home / "media")))
    (home / "dagster").mkdir(parents=True)
    with dg.DagsterInstance.from_config(str(home / "dagster")) as instance:
        instance.add_dynamic_partitions("videos", [upload.partition_key])
    done = _run([sys.executable, "-m", "dagster", "asset", "materialize", "-m",
                 "narra_dagster.definitions", "--select", "video_source,video_audio",
                 "--partition", upload.partition_key], env)
    assert done.returncode == 0, done.stderr[-3000:]
    with dg.DagsterInstance.from_config(str(home / "dagster")) as instance:
        for asset in ("video_source", "video_audio"):
            records = instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset),
                                      asset_partitions=[upload.partition_key]), limit=1).records
            assert records, asset


def _descendants(pid: int) -> set[int]:
    """Every process below ``pid``, from /proc (Linux)."""
    import os

    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    parent = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(parent, []).append(int(entry))
    out, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in out:
                out.add(child)
                todo.append(child)
    return out


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.daemon
def test_sigterm_to_narra_dev_stops_its_whole_process_tree(home):
    """`narra dev` starts the web server, the daemon and code servers; SIGTERM to it must leave
    none of them running."""
    import signal
    import time
    import urllib.request

    from .services import free_port, wait_for

    port, api_port = free_port(), free_port()
    proc = subprocess.Popen(["narra", "dev", "--port", str(port), "--api-port", str(api_port)],
                            env=subprocess_env(home), cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        def up(url=f"http://127.0.0.1:{port}/server_info"):
            try:
                return urllib.request.urlopen(url, timeout=2).status == 200
            except OSError:
                return False

        api = f"http://127.0.0.1:{api_port}/healthz"
        wait_for(lambda: up() and up(api), 180, "the Dagster UI and the API answering", interval_s=2)
        tree = _descendants(proc.pid)
        # dagster dev, the web server, the daemon (and code servers), the API
        assert len(tree) >= 4, tree
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(_alive(p) for p in tree):
            time.sleep(0.5)
        assert not [p for p in tree if _alive(p)]
        assert not up() and not up(api)
        assert not (home / "serve.json").exists()
    finally:
        if proc.poll() is None:
            proc.kill()


def test_status_shows_a_hostile_name_with_its_controls_escaped(home, tmp_path):
    """A file name that retitles the terminal and colours it reaches `narra status` as visible
    escapes; `--json` keeps the exact name."""
    from PIL import Image

    hostile = "holiday\x1b]0;pwned\x07\x1b[31m.png"
    picture = tmp_path / "picture.png"
    Image.new("RGB", (8, 8), (1, 2, 3)).save(picture)
    upload = store_upload(picture, LocalMediaStore(root=str(home / "media")), source_name=hostile)
    (home / "dagster").mkdir(parents=True)
    with dg.DagsterInstance.from_config(str(home / "dagster")) as instance:
        instance.add_dynamic_partitions("images", [upload.partition_key])
    env = subprocess_env(home) | {"COLUMNS": "200"}
    shown = _run(["narra", "status", "--all"], env, timeout=120)
    assert shown.returncode == 0, shown.stderr
    assert upload.partition_key in shown.stdout
    assert "\x1b" not in shown.stdout and "\x07" not in shown.stdout
    assert "\\x1b]0;pwned\\x07" in shown.stdout
    exact = _run(["narra", "status", "--all", "--json"], env, timeout=120)
    assert [i["source_name"] for i in json.loads(exact.stdout)] == [hostile]
