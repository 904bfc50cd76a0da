"""python -m bench.front_door [--work DIR] [--clips 3] [--concurrent 20] [--big-mb 1024]

The HTTP API's figures, on a fresh NARRA_HOME with a real `dagster-daemon run` and `narra
serve` (the production path: the server stores, the run_request_sensor asks, the daemon runs):

1. upload-to-searchable of a 20 s spoken clip, split into: the upload itself (POST to 202),
   waiting for the sensor (202 to the run's creation), the queue (creation to the run's start),
   the run's start-up (start to its first step: a worker process, imports, resources), the
   steps' own processing, and the rest (the run's end, materialization records, our polling
   every 0.25 s);
2. 20 uploads at once (distinct photos): answers, items lost, seconds until all are searchable;
3. search p50/p95 through HTTP (after the above, so over what they indexed);
4. the server's memory (RSS, sampled every 20 ms) while a 1 GB upload streams in, with the
   daemon stopped so that no run starts, and how fast it answers ``/healthz`` meanwhile.

Prints a table and writes the figures to ``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

from bench.common import REPO, fresh_home, log, percentile

SENTENCES = [
    "The lighthouse keeper feeds the seagulls at dawn.",
    "Fresh bread arrives from the bakery every Tuesday.",
    "A red kite circles slowly above the empty beach.",
    "The ferry to the island leaves at half past nine.",
    "Old fishing nets are drying on the harbour wall.",
]
PHOTO_NAMES = ["coffee", "chelsea", "astronaut", "rocket"]


def _clip(folder: Path, i: int) -> Path:
    from tests.support.media import make_talking_video

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"clip20s_{i}.mp4"
    if not path.exists():
        order = SENTENCES[i % len(SENTENCES):] + SENTENCES[:i % len(SENTENCES)]
        tmp = path.with_suffix(".tmp.mp4")
        make_talking_video(tmp, order, [PHOTO_NAMES[(i + k) % 4] for k in range(len(order))],
                           gap_s=0.5)
        tmp.rename(path)
    return path


def _pictures(folder: Path, count: int) -> list[Path]:
    """``count`` distinct photos-like pictures (scikit-image's photos, each tinted and
    labelled with its number, so no two have the same bytes or look alike)."""
    import numpy as np
    from PIL import Image, ImageDraw
    from skimage import data

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(count):
        path = folder / f"photo_{i:03d}.jpg"
        if not path.exists():
            base = Image.fromarray(getattr(data, PHOTO_NAMES[i % 4])()).convert("RGB")
            base.thumbnail((480, 480))
            tint = np.array(base, dtype=np.float32) * (0.7 + 0.3 * ((i * 37) % 10) / 10)
            image = Image.fromarray(tint.clip(0, 255).astype(np.uint8))
            ImageDraw.Draw(image).text((10, 10), f"photo {i}", fill=(255, 255, 0))
            image.save(path, quality=85)
        out.append(path)
    return out


def _big_wav(path: Path, size: int) -> Path:
    """A WAV header declaring ``size`` bytes of 16 kHz mono silence, then a sparse file of
    zeros: a valid upload of that size, made in an instant."""
    if not path.exists() or path.stat().st_size != size:
        data = size - 44
        header = (b"RIFF" + struct.pack("<I", size - 8) + b"WAVEfmt " +
                  struct.pack("<IHHIIHH", 16, 1, 1, 16000, 32000, 2, 16) + b"data" +
                  struct.pack("<I", data))
        with open(path, "wb") as fh:
            fh.write(header)
            fh.truncate(size)
    return path


def _start_daemon(env: dict, home: Path) -> subprocess.Popen:
    import dagster as dg

    log_file = open(home / "daemon.log", "a")
    proc = subprocess.Popen([sys.executable, "-m", "dagster._daemon", "run", "-m",
                             "narra_dagster.definitions"], env=env, stdout=log_file,
                            stderr=subprocess.STDOUT, start_new_session=True, cwd=REPO)
    started = time.time()
    with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
        while not any(h.daemon_type == "SENSOR" and h.timestamp > started
                      for h in instance.get_daemon_heartbeats().values()):
            if proc.poll() is not None or time.time() - started > 300:
                raise RuntimeError((home / "daemon.log").read_text()[-3000:])
            time.sleep(0.2)
    return proc


def _stop(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(60)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def _wait_state(client, key: str, timeout_s: float = 600) -> tuple[str, float]:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        state = client.get(f"/api/v1/media/{key}").json().get("state")
        if state in ("searchable", "failed"):
            return state, time.time()
        time.sleep(0.25)
    return "timeout", time.time()


def latency(client, instance, clips: list[Path]) -> list[dict]:
    import dagster as dg

    out = []
    for clip in clips:
        t0 = time.time()
        with open(clip, "rb") as fh:
            response = client.post("/api/v1/media", files={"file": (clip.name, fh)})
        accepted = time.time()
        key = response.json()["media_id"]
        state, seen = _wait_state(client, key)
        record = instance.get_run_records(dg.RunsFilter(tags={"dagster/partition": key}),
                                          limit=1)[0]
        logs = instance.all_logs(record.dagster_run.run_id, of_type={
            dg.DagsterEventType.STEP_START, dg.DagsterEventType.STEP_SUCCESS})
        first_step = min(e.timestamp for e in logs)
        last_step = max(e.timestamp for e in logs)
        steps = sum(e.dagster_event.event_specific_data.duration_ms / 1000 for e in logs
                    if e.dagster_event.event_type == dg.DagsterEventType.STEP_SUCCESS)
        created = record.create_timestamp.timestamp()
        row = {"clip": clip.name, "state": state, "total_s": seen - t0,
               "upload_s": accepted - t0, "sensor_wait_s": created - accepted,
               "queue_s": record.start_time - created, "run_start_s": first_step - record.start_time,
               "processing_s": last_step - first_step, "steps_sum_s": steps,
               "rest_s": seen - last_step}
        out.append({k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()})
        log(f"latency {clip.name}: {out[-1]}")
    return out


def concurrent_uploads(client_factory, files: list[Path]) -> dict:
    def one(path: Path):
        with client_factory() as client, open(path, "rb") as fh:
            response = client.post("/api/v1/media", files={"file": (path.name, fh)})
            return response.status_code, response.json().get("media_id")

    t0 = time.time()
    with concurrent.futures.ThreadPoolExecutor(len(files)) as pool:
        answers = list(pool.map(one, files))
    answered = time.time() - t0
    keys = {key for status, key in answers if status in (200, 202)}
    with client_factory() as client:
        states = {key: _wait_state(client, key) for key in keys}
    done = [t for s, t in states.values() if s == "searchable"]
    lost = sum(1 for status, key in answers
               if status not in (200, 202) or states[key][0] != "searchable")
    return {"uploads": len(files), "statuses": sorted({s for s, _ in answers}),
            "items": len(keys), "searchable": len(done), "lost": lost,
            "all_answered_s": round(answered, 2),
            "all_searchable_s": round(max(done) - t0, 2) if done else None}


def search_latency(client, queries: list[str], rounds: int) -> dict:
    for q in queries[:5]:
        client.get("/api/v1/search", params={"q": q})  # warm
    times = []
    for _ in range(rounds):
        for q in queries:
            t0 = time.perf_counter()
            assert client.get("/api/v1/search", params={"q": q}).status_code == 200
            times.append((time.perf_counter() - t0) * 1000)
    rows = client.get("/api/v1/media", params={"limit": 1}).json()["total"]
    return {"queries": len(times), "items": rows, "p50_ms": round(percentile(times, 50), 1),
            "p95_ms": round(percentile(times, 95), 1)}


def memory_during_upload(url: str, pid: int, big: Path) -> dict:
    import httpx
    import psutil

    server = psutil.Process(pid)
    baseline = server.memory_info().rss
    peak = [baseline]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], server.memory_info().rss)
            time.sleep(0.02)

    pings: list[float] = []

    def ping():  # does the server still answer while the upload streams?
        with httpx.Client(base_url=url, timeout=30, headers={"X-Narra-Request": "1"}) as client:
            while not stop.is_set():
                t = time.perf_counter()
                client.get("/healthz")
                pings.append((time.perf_counter() - t) * 1000)
                time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    pinger = threading.Thread(target=ping, daemon=True)
    pinger.start()
    t0 = time.time()
    with httpx.Client(base_url=url, timeout=600, headers={"X-Narra-Request": "1"}) as client, open(big, "rb") as fh:
        response = client.post("/api/v1/media", files={"file": ("long-silence.wav", fh)})
    took = time.time() - t0
    stop.set()
    sampler.join()
    pinger.join()
    key = response.json().get("media_id")
    with httpx.Client(base_url=url, timeout=600, headers={"X-Narra-Request": "1"}) as client:
        t1 = time.time()
        client.delete(f"/api/v1/media/{key}")
        deleted = time.time() - t1
    mb = big.stat().st_size / 1e6
    return {"upload_mb": round(mb), "status": response.status_code,
            "seconds": round(took, 2), "mb_per_s": round(mb / took, 1),
            "server_rss_before_mb": round(baseline / 1e6), "server_rss_peak_mb": round(peak[0] / 1e6),
            "growth_mb": round((peak[0] - baseline) / 1e6), "delete_s": round(deleted, 2),
            "healthz_meanwhile": {"requests": len(pings),
                                  "p50_ms": round(percentile(pings, 50), 1),
                                  "max_ms": round(max(pings), 1) if pings else None}}


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.front_door", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default=os.environ.get("NARRA_BENCH_WORK", str(REPO / ".bench-work")))
    p.add_argument("--clips", type=int, default=3)
    p.add_argument("--concurrent", type=int, default=20)
    p.add_argument("--big-mb", type=int, default=1024)
    p.add_argument("--out", default="bench-front-door.json")
    args = p.parse_args()

    import dagster as dg
    import httpx

    from tests.services import free_port

    work = Path(args.work) / "front-door"
    clips = [_clip(work / "clips", i) for i in range(args.clips)]
    pictures = _pictures(work / "photos", args.concurrent)
    big = _big_wav(work / "big.wav", args.big_mb * 1024 * 1024)
    env = fresh_home(work / "homes", "api")
    env["NARRA_MAX_UPLOAD_BYTES"] = str(2 * big.stat().st_size)
    home = Path(env["NARRA_HOME"])
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    daemon = _start_daemon(env, home)
    serve_log = open(home / "serve.log", "w")
    serve = subprocess.Popen([sys.executable, "-m", "narra_dagster.cli", "serve", "--port",
                              str(port)], env=env, stdout=serve_log, stderr=subprocess.STDOUT,
                             start_new_session=True, cwd=REPO)
    results: dict = {}
    try:
        deadline = time.time() + 180
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline:
                raise RuntimeError((home / "serve.log").read_text()[-3000:])
            time.sleep(0.3)
        with httpx.Client(base_url=url, timeout=120, headers={"X-Narra-Request": "1"}) as client, \
                dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
            results["latency"] = latency(client, instance, clips)
            results["concurrent"] = concurrent_uploads(
                lambda: httpx.Client(base_url=url, timeout=300, headers={"X-Narra-Request": "1"}), pictures)
            log(f"concurrent: {results['concurrent']}")
            queries = [" ".join(s.split()[1:4]) for s in SENTENCES] + [
                "lighthouse keeper", "bread bakery tuesday", "coffee cup", "a cat", "harbour wall",
                "island ferry", "kite above the beach", "seagulls at dawn", "fishing nets"]
            results["search"] = search_latency(client, queries, rounds=10)
            log(f"search: {results['search']}")
        _stop(daemon)
        results["memory"] = memory_during_upload(url, serve.pid, big)
        log(f"memory: {results['memory']}")
    finally:
        if daemon.poll() is None:
            _stop(daemon)
        _stop(serve)
        serve_log.close()
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
