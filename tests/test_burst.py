"""A burst of 500 files in the inbox is registered without a duplicate run, every sensor tick
finishing well inside Dagster's 60 s limit, on PostgreSQL: 10 batch runs of 50 items, each item in
exactly one of them.

Small PNGs when the image chain is present, else 0.1 s WAV clips (the video chain takes audio).
A real ``dagster-daemon`` on the production instance config (Postgres) runs the real upload
sensor (50 files per tick). ``max_concurrent_runs: 0`` keeps the queued runs from launching: the
test is about registration (partitions, run requests, run keys, sensor ticks), not processing.
The figures are printed (run with ``-s``): files, ticks, seconds per tick, runs.
"""

import datetime as dt
import io
import json
import re
import shutil
import statistics
import wave

import numpy as np

import dagster as dg
import pytest
from dagster._core.scheduler.instigation import TickStatus
from PIL import Image

from narra_dagster.core.batch import MAX_BATCH_ITEMS, batch_keys

from .conftest import subprocess_env
from .services import daemon, pg_database, pg_env, production_dagster_home, wait_for

FILES = 500
DUPLICATES = 20
DAGSTER_TICK_LIMIT_S = 60


def _png(i: int) -> bytes:
    """An 8x8 RGB PNG whose pixels encode ``i``: distinct bytes, so a distinct partition."""
    image = Image.new("RGB", (8, 8), (i % 256, (i // 256) % 256, 128))
    image.putpixel((0, 0), (255 - i % 256, 7, (i * 37) % 256))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _wav(i: int) -> bytes:
    """A 0.1 s, 16 kHz mono WAV clip: a tone whose pitch encodes ``i`` (distinct bytes)."""
    t = np.arange(1600) / 16000
    samples = (0.3 * np.sin(2 * np.pi * (200 + i) * t) * 32767).astype("<i2")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(samples.tobytes())
    return buffer.getvalue()


def _evaluation_seconds(daemon_log: str) -> list[int]:
    """Seconds (1 s resolution) from the daemon's "Checking for new runs for sensor:
    upload_sensor" to the sensor's own summary line, per tick that took files: the time spent in
    the sensor function, as opposed to the daemon creating the runs it requested."""
    stamp = re.compile(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) \+0000")
    out, started = [], None
    for line in daemon_log.splitlines():
        found = stamp.search(line)
        if not found:
            continue
        at = dt.datetime.strptime(found.group(1), "%Y-%m-%d %H:%M:%S").timestamp()
        if "Checking for new runs for sensor: upload_sensor" in line:
            started = at
        elif "upload_sensor - " in line and " new in " in line and started is not None:
            if not line.split("upload_sensor - ", 1)[1].startswith("0 new"):
                out.append(int(at - started))
            started = None
    return out


def _burst_kind() -> tuple[str, str, callable]:
    """Small images when this checkout has the image chain, else short audio clips (which the
    video chain takes): (kind, file suffix, maker)."""
    from narra_dagster.definitions import build_defs

    if build_defs().resolve_job_def("image_pipeline").partitions_def is not None:
        return "image", ".png", _png
    return "video", ".wav", _wav


@pytest.mark.daemon
def test_burst_of_500_files_registers_each_once(home, tmp_path, monkeypatch):
    kind, suffix, make = _burst_kind()
    partitions_name = {"image": "images", "video": "videos"}[kind]
    inbox = home / "inbox"
    inbox.mkdir(parents=True)
    payloads = [make(i) for i in range(FILES)]
    assert len(set(payloads)) == FILES
    for i, data in enumerate(payloads):
        (inbox / f"item_{i:03d}{suffix}").write_bytes(data)
    with pg_database() as db:
        for k, v in pg_env(db).items():
            monkeypatch.setenv(k, v)
        dagster_home = production_dagster_home(
            home / "dagster", concurrency={"runs": {"max_concurrent_runs": 0},
                                           "pools": {"default_limit": 1}})
        log = tmp_path / "daemon.log"
        with daemon(subprocess_env(home), log) as proc, \
                dg.DagsterInstance.from_config(str(dagster_home)) as instance:
            def registered(expected_runs):
                def check():
                    assert proc.poll() is None, log.read_text()[-3000:]
                    left = [p for p in inbox.iterdir() if p.is_file()]
                    items = sum(len(batch_keys(r)) for r in instance.get_runs(
                        dg.RunsFilter(job_name=f"{kind}_batch")))
                    return (not left and items >= expected_runs
                            and len(instance.get_dynamic_partitions(partitions_name)) >= FILES)
                return check

            wait_for(registered(FILES), 480, f"{FILES} files registered", interval_s=2,
                     on_timeout=lambda: log.read_text()[-3000:])
            # The same bytes again under new names: taken, moved, no second run.
            for i in range(DUPLICATES):
                (inbox / f"again_{i:03d}{suffix}").write_bytes(payloads[i])
            wait_for(registered(FILES), 120, "the duplicates taken", interval_s=2,
                     on_timeout=lambda: log.read_text()[-3000:])

            runs = instance.get_runs(dg.RunsFilter(job_name=f"{kind}_batch"))
            assert not instance.get_runs(dg.RunsFilter(job_name=f"{kind}_pipeline"))
            items = [k for r in runs for k in batch_keys(r)]
            run_keys = [r.tags.get("dagster/run_key") for r in runs]
            partitions = instance.get_dynamic_partitions(partitions_name)
            sensor = next(s for s in instance.all_instigator_state() if s.name == "upload_sensor")
            ticks = [t for t in instance.get_ticks(sensor.instigator_origin_id, sensor.selector_id)
                     if t.end_timestamp is not None]
            busy = [t for t in ticks if t.run_ids]
            seconds = [t.end_timestamp - t.timestamp for t in ticks]
            busy_seconds = [t.end_timestamp - t.timestamp for t in busy]
            figures = {
                "files": FILES, "kind": kind, "duplicate_files_dropped_again": DUPLICATES,
                "runs": len(runs), "distinct_run_keys": len(set(run_keys)),
                "partitions": len(partitions), "ticks": len(ticks), "ticks_with_runs": len(busy),
                "items_per_run": sorted({len(batch_keys(r)) for r in runs}),
                "seconds_per_busy_tick_mean": round(statistics.mean(busy_seconds), 3),
                "seconds_per_busy_tick_max": round(max(busy_seconds), 3),
                "seconds_per_tick_max": round(max(seconds), 3),
                "sensor_evaluation_seconds_per_busy_tick": _evaluation_seconds(log.read_text()),
                "first_to_last_busy_tick_s": round(busy[0].end_timestamp - busy[-1].timestamp, 1),
            }
            print("\nburst figures:", json.dumps(figures))
            (tmp_path / "burst.json").write_text(json.dumps(figures))

            assert len(runs) == FILES // MAX_BATCH_ITEMS == len(set(run_keys))
            assert None not in run_keys
            assert sorted(items) == sorted(set(items)) == sorted(partitions)  # each item once
            assert len(partitions) == len(set(partitions)) == FILES
            assert all(r.status == dg.DagsterRunStatus.QUEUED for r in runs)
            assert all(r.tags[f"narra/item-{k}"] == "1" for r in runs for k in batch_keys(r))
            assert [len(t.run_ids) for t in busy] == [1] * len(runs)
            assert max(seconds) < DAGSTER_TICK_LIMIT_S
            assert all(t.status != TickStatus.FAILURE for t in ticks)
            processed = list((inbox / ".processed").rglob(f"*{suffix}"))
            assert len(processed) == FILES + DUPLICATES
    shutil.rmtree(inbox, ignore_errors=True)
