"""python -m bench.intake [--work DIR] [--photos 100] [--clips 20] [--latency 3] [--out FILE]

Uploads at scale through the production path, against ``narra process`` on the same files:

1. **Throughput**: ``--photos`` distinct photos and ``--clips`` spoken 20 s clips, first through
   ``narra process FOLDER`` (one call; one batch run per kind, in that process), then dropped
   into the inbox of a running ``dagster-daemon`` (the upload sensor registers them and starts
   batch runs of up to 50 items per kind; each run a worker process of its own). Wall time of
   each, from the first byte handed over to the last item searchable (its last stage
   materialized), and their ratio. Each path gets a fresh NARRA_HOME with the exported models
   already in place, as a running deployment has them.
2. **Upload-to-searchable** of one more short clip dropped alone into the same inbox
   (``--latency`` times, a new clip each), split into: the sensor (the drop to the run's
   creation: the file's stability wait, Dagster's sensor loop and the tick), the queue (creation
   to the run's start: the run queue, then the run worker process launched), the run's start-up
   (its start to its first step: imports, definitions, resources), processing (first step's
   start to the last stage's materialization) and the rest (until our poll, every 0.25 s, sees
   it).

Prints a table and writes the figures to ``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import time
from pathlib import Path

from bench.common import REPO, fresh_home, log, narra_cmd, run_measured
from bench.front_door import _clip, _pictures, _start_daemon, _stop
from bench.overhead import warm_up


def _drop(path: Path, inbox: Path) -> None:
    """Hand a file to the inbox as a careful uploader does (a partial name, then a rename)."""
    part = inbox / (path.name + ".part")
    shutil.copyfile(path, part)
    part.rename(inbox / path.name)


def _finished(instance, keys_by_kind: dict[str, set[str]]) -> dict[str, float]:
    """Key -> time its last stage was materialized, for the keys that are; failed items
    (their runs ended without it) -> NaN."""
    import dagster as dg

    from narra_dagster import registry
    from narra_dagster.core.batch import item_results

    done: dict[str, float] = {}
    for kind, keys in keys_by_kind.items():
        last = registry.get(kind).stages[-1].key
        for record in instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=last, asset_partitions=list(keys)),
                limit=len(keys) * 2).records:
            done.setdefault(record.partition_key, record.timestamp)
    for record in instance.get_run_records(dg.RunsFilter(statuses=[dg.DagsterRunStatus.FAILURE])):
        for item in item_results(instance, record.dagster_run.run_id):
            if item["status"] == "failed":
                done.setdefault(item["partition_key"], float("nan"))
    return done


def throughput(files: list[Path], latency_clips: list[Path], work: Path, models: Path) -> dict:
    """Both paths on ``files``: wall seconds, runs, items searchable, and the ratio; then the
    upload-to-searchable of each of ``latency_clips`` in the same running deployment."""
    import dagster as dg

    from narra_dagster.core.media import partition_key_for
    from narra_dagster.registry import kind_for_file

    keys_by_kind: dict[str, set[str]] = {}
    for f in files:
        keys_by_kind.setdefault(kind_for_file(f).name, set()).add(partition_key_for(f))
    folder = work / "upload"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for f in files:
        os.link(f, folder / f.name)

    env = fresh_home(work / "homes", "process", models)
    log(f"narra process: {len(files)} files")
    measured = run_measured([*narra_cmd(), "process", "--json", str(folder)], env)
    results = json.loads(measured.stdout)
    process = {"wall_s": round(measured.wall_s, 2),
               "succeeded": sum(r["status"] == "succeeded" for r in results),
               "runs": len({r["run_id"] for r in results if r.get("run_id")}),
               "peak_rss_mb": round(measured.peak_rss_bytes / 2**20)}
    log(f"narra process: {process}")

    env = fresh_home(work / "homes", "inbox", models)
    home = Path(env["NARRA_HOME"])
    inbox = home / "inbox"
    inbox.mkdir(parents=True)
    daemon = _start_daemon(env, home)
    try:
        with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
            log(f"inbox: dropping {len(files)} files")
            t0 = time.time()
            for f in files:
                _drop(f, inbox)
            dropped = time.time() - t0
            total = sum(len(k) for k in keys_by_kind.values())
            deadline = t0 + 3600
            while True:
                done = _finished(instance, keys_by_kind)
                if len(done) >= total or time.time() > deadline:
                    break
                time.sleep(0.5)
            finished = [t for t in done.values() if t == t]
            runs = instance.get_run_records()
            inbox_path = {
                "wall_s": round(max(finished) - t0, 2) if finished else None,
                "drop_s": round(dropped, 2), "succeeded": len(finished),
                "runs": len(runs),
                "items_per_run": sorted(int(r.dagster_run.tags.get("narra/batch_size", 1))
                                        for r in runs),
            }
            log(f"inbox: {inbox_path}")
            out = {"process": process, "inbox": inbox_path,
                   "ratio": round(inbox_path["wall_s"] / process["wall_s"], 2)
                   if inbox_path["wall_s"] else None}
            out["latency"] = latency(instance, inbox, latency_clips)
    finally:
        _stop(daemon)
    return out


def latency(instance, inbox: Path, clips: list[Path]) -> list[dict]:
    """Upload-to-searchable of each of ``clips``, dropped alone one after the other (see the
    module docstring for the split). Seconds."""
    import dagster as dg

    from narra_dagster import registry
    from narra_dagster.core.media import partition_key_for

    last = registry.get("video").stages[-1].key
    rows = []
    for clip in clips:
        key = partition_key_for(clip)
        t0 = time.time()
        _drop(clip, inbox)
        while True:
            records = instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=last, asset_partitions=[key]), limit=1).records
            if records or time.time() - t0 > 600:
                break
            time.sleep(0.25)
        seen = time.time()
        record = instance.get_run_records(dg.RunsFilter(tags={"dagster/partition": key}),
                                          limit=1)[0]
        logs = instance.all_logs(record.dagster_run.run_id, of_type={
            dg.DagsterEventType.STEP_START, dg.DagsterEventType.ASSET_MATERIALIZATION})
        first_step = min(e.timestamp for e in logs
                         if e.dagster_event.event_type == dg.DagsterEventType.STEP_START)
        searchable = records[0].timestamp
        created = record.create_timestamp.timestamp()
        row = {"total_s": searchable - t0, "sensor_s": created - t0,
               "queue_s": record.start_time - created, "run_start_s": first_step - record.start_time,
               "processing_s": searchable - first_step, "poll_s": seen - searchable}
        row["overhead_s"] = row["total_s"] - row["processing_s"]
        rows.append({k: round(v, 2) for k, v in row.items()})
        log(f"latency {clip.name}: {rows[-1]}")
        time.sleep(6)  # the next drop lands at another point of the sensor's 5 s loop
    return rows


def _latency_clip(folder: Path, i: int) -> Path:
    """A short spoken clip no other clip of the bench repeats (its first sentence names it), so
    its upload is a new item."""
    from bench.front_door import PHOTO_NAMES, SENTENCES
    from tests.support.media import make_talking_video

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"latency_{i}.mp4"
    if not path.exists():
        tmp = path.with_suffix(".tmp.mp4")
        make_talking_video(tmp, [f"This is latency clip number {i}.", *SENTENCES[:3]],
                           [PHOTO_NAMES[(i + k) % 4] for k in range(4)], gap_s=0.5)
        tmp.rename(path)
    return path


def latency_only(clips: list[Path], work: Path, models: Path) -> list[dict]:
    """:func:`latency` in a fresh deployment of its own (``--latency-only``)."""
    import dagster as dg

    env = fresh_home(work / "homes", "latency", models)
    home = Path(env["NARRA_HOME"])
    (home / "inbox").mkdir(parents=True)
    daemon = _start_daemon(env, home)
    try:
        with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
            return latency(instance, home / "inbox", clips)
    finally:
        _stop(daemon)


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.intake", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default=os.environ.get("NARRA_BENCH_WORK", str(REPO / ".bench-work")))
    p.add_argument("--photos", type=int, default=100)
    p.add_argument("--clips", type=int, default=20)
    p.add_argument("--latency", type=int, default=5)
    p.add_argument("--out", default="bench-intake.json")
    p.add_argument("--latency-only", action="store_true",
                   help="only the upload-to-searchable drops, in a deployment of their own")
    args = p.parse_args()

    work = Path(args.work) / "intake"
    media = Path(args.work) / "front-door"  # the same generated media as bench.front_door
    photos = _pictures(media / "photos100", args.photos)
    clips = [_clip(media / "clips", i) for i in range(args.clips)]
    latency_clips = [_latency_clip(media / "latency", i) for i in range(args.latency)]
    files = [*photos, *clips[:args.clips]]
    models = warm_up("video", str(latency_clips[0]), work)
    image_models = warm_up("image", str(photos[0]), work)
    for model in image_models.glob("*"):  # one models folder with every kind's exports
        if not (models / model.name).exists():
            (shutil.copytree if model.is_dir() else shutil.copyfile)(model, models / model.name)
    if args.latency_only:
        results = {"latency": latency_only(latency_clips, work, models)}
    else:
        results = throughput(files, latency_clips, work, models)
    rows = results["latency"]
    results["latency_median"] = {k: round(statistics.median(r[k] for r in rows), 2)
                                 for k in rows[0]} if rows else {}
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    proc, inbox = results.get("process"), results.get("inbox")
    if proc and inbox:
        print(f"\n| path | items | wall s | runs |\n|---|---|---|---|\n"
              f"| narra process | {proc['succeeded']} | {proc['wall_s']} | {proc['runs']} |\n"
              f"| inbox + daemon | {inbox['succeeded']} | {inbox['wall_s']} | {inbox['runs']} |\n"
              f"ratio inbox / process: {results['ratio']}")
    if rows:
        m = results["latency_median"]
        print(f"upload-to-searchable (median of {len(rows)}): {m['total_s']} s = sensor "
              f"{m['sensor_s']} + queue {m['queue_s']} + run start {m['run_start_s']} + "
              f"processing {m['processing_s']}")


if __name__ == "__main__":
    main()
