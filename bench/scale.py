"""python -m bench.scale [--sizes 1000 10000 100000] [--json bench-scale.json] [--work DIR]

How narra and Dagster behave as the number of items grows, on the production instance
(``dagster.production.yaml``: PostgreSQL run, event log and schedule storage, the queued run
coordinator) in a database ``narra_scale`` created for the run and dropped at its end, with a
fresh NARRA_HOME in a temporary folder.

Items are synthetic, registered and materialized without being processed: 80% images, 15%
videos, 5% PDFs, each with a 16-hex-digit partition key as :mod:`narra_dagster.core.media` makes
them. For each item the bench writes its manifest into the media store as ``store_upload`` does,
adds its dynamic partition (batches of 1,000), records one runless ``ASSET_MATERIALIZATION`` per
stage of its kind (the ``EventLogEntry`` that ``DagsterInstance.report_runless_asset_event``
builds, written with ``event_log_storage.store_event_batch``, 1,000 events of one asset per
batch, since a batch updates the asset's row in ``asset_keys`` from its last event only) and one
row in the LanceDB ``chunks`` table (text from a small vocabulary, a random unit-norm float32
384-d vector), after which the index gets what the daily ``search_index_maintenance`` asset does
(``LanceSearchIndex.maintain()``: scalar indices, the ANN index from 10k rows, compaction that
brings the new rows into the FTS index). No source bytes, no runs, no asset check results, no
data-version tags: only what narra's surfaces and Dagster's asset pages read. Sizes are
cumulative: the bench grows from 0 to the first size, measures, grows to the next...

Measured at each size:

1. sensor ticks, evaluated in this process on the instance with the project's resources (what
   the daemon's tick runs, without its gRPC round trip and without applying the result):
   ``upload_sensor`` with an empty inbox and with 10 new small JPEGs (random bytes, so new
   items; their stored copies are removed after each tick), ``run_request_sensor`` with 10 request
   files asking the first runs of 10 registered images (as after 10 uploads through the API),
   ``domain_events_sensor`` with its cursor at now; median of 5, ms;
2. the Dagster storage calls narra's item surfaces make per item (an asset partition's last
   materialization, runs by partition tag, ``has_dynamic_partition``), ms per call, on an
   instance as narra opens it (dagster-postgres's ``NullPool``: a new PostgreSQL connection per
   call) and on one holding a pooled connection as ``dagster-webserver`` does;
3. ``narra status`` as a user runs it (a subprocess): default arguments, ``--json``, and
   ``--limit 50`` and ``--all`` when ``narra status --help`` offers them; wall seconds, or
   "timeout" past ``--status-timeout`` (120 s; a variant that timed out is not run again at
   larger sizes);
4. ``narra serve``'s item list ``GET /api/v1/media?limit=50`` (first page, then the page at its
   ``next_cursor``): p50 of 20 requests each (after one warm-up request; fewer when 20 would
   exceed ``--api-budget`` seconds), ms;
5. ``GET /api/v1/search?q=`` p50/p95 over 50 queries of 1-3 vocabulary words after one warm-up
   query, ms;
6. from ``--backfill-from`` items on (10k): with ``dagster-webserver`` and ``dagster-daemon`` on
   the instance (``workspace.yaml``), the GraphQL ``launchPartitionBackfill`` of the image kind's
   last stage (``image_catalog``) over ``--backfill-partitions`` (10,000) of its partitions, or
   all of them when there are fewer (8,000 at 10k items): the mutation's wall seconds, seconds
   from its answer to the backfill's first run, runs created after ``--backfill-watch`` (60 s)
   and runs/s. The run queue is closed for the whole bench (``max_concurrent_runs: 0``), so the
   backfill's runs are created and queued but never launched: this measures Dagster's backfill
   machinery, not 2 cores running thousands of failing runs. Then the backfill is cancelled,
   the daemon stopped and the backfill's runs deleted, so the next size starts as before;
7. the Dagster UI's asset page of ``image_catalog`` (``/assets/image_catalog``, until its
   Status section shows the latest materialization) and its Partitions tab
   (``?view=partitions``, until the count of materialized partitions is shown, not 0), loaded
   by Chromium (Playwright) in a fresh browser context each time: first load and median of 3,
   s; also until the page's last GraphQL answer. The first load after a growth also brings
   Dagster's asset status cache (the partition status the Partitions tab shows, kept in the
   ``asset_keys`` table) up to date with the new materializations.

Prints one table (rows: sizes) and writes every figure, with each phase's duration, to ``--json``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import json
import logging
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import REPO, fresh_home, log, narra_cmd, percentile

DB = "narra_scale"
PG = {"host": os.environ.get("NARRA_BENCH_PG_HOST", "127.0.0.1"),
      "port": int(os.environ.get("NARRA_BENCH_PG_PORT", "5432")),
      "user": os.environ.get("NARRA_BENCH_PG_USER", "postgres"),
      "password": os.environ.get("NARRA_BENCH_PG_PASSWORD", "")}
BATCH = 1000
"""Partitions per ``add_dynamic_partitions`` call and events per ``store_event_batch``."""
ROWS_PER_WRITE = 20_000
"""LanceDB rows per ``table.add``."""
VOCABULARY = (
    "harbour lighthouse ferry island beach kite seagull dawn bread bakery tuesday coffee cup "
    "kitchen table garden water morning rocket launch coast fire trail astronaut moon planet "
    "station train horse field brick wall gravel coins cat chair sleeping dog park bicycle "
    "river bridge mountain snow forest autumn leaves invoice contract report meeting budget "
    "quarter revenue chart diagram map street market fruit vegetables fish nets boat sail "
    "storm cloud rain sunset city night lights crowd concert guitar piano school children "
    "teacher lesson library book page chapter museum painting statue church tower clock").split()
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]

_started: list[subprocess.Popen] = []
"""Every process group this bench started, stopped on exit whatever happens."""


# ---------------------------------------------------------------------------------------------
# the database, the home and the processes


def _pg_connect(db: str = "postgres"):
    import psycopg2

    conn = psycopg2.connect(dbname=db, connect_timeout=5, **PG)
    conn.autocommit = True
    return conn


def create_database(name: str = DB) -> None:
    """Drop ``name`` if a previous run left it, and create it empty."""
    with contextlib.closing(_pg_connect()) as conn, conn.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        cur.execute(f'CREATE DATABASE "{name}"')


def drop_database(name: str = DB) -> None:
    """Drop ``name`` (connections still open to it are ended)."""
    with contextlib.closing(_pg_connect()) as conn, conn.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def production_home(work: Path, db: str = DB) -> dict[str, str]:
    """A fresh NARRA_HOME under ``work`` whose DAGSTER_HOME has ``dagster.production.yaml`` on
    database ``db``, with the run queue closed (``max_concurrent_runs: 0``: runs are created,
    never launched); returns the environment for narra and Dagster processes."""
    import yaml

    env = fresh_home(work, "home")
    env.update(DAGSTER_PG_HOST=PG["host"], DAGSTER_PG_PORT=str(PG["port"]),
               DAGSTER_PG_USER=PG["user"], DAGSTER_PG_PASSWORD=PG["password"], DAGSTER_PG_DB=db)
    config = yaml.safe_load((REPO / "dagster.production.yaml").read_text())
    config["concurrency"]["runs"]["max_concurrent_runs"] = 0
    dagster_home = Path(env["DAGSTER_HOME"])
    for stale in ("history", "storage", "schedules"):  # fresh_home's SQLite instance: unused
        shutil.rmtree(dagster_home / stale, ignore_errors=True)
    (dagster_home / "dagster.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(cmd: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen:
    """Start ``cmd`` in a process group of its own (stopped by :func:`stop`, and at exit)."""
    out = open(log_path, "a")
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True)
    out.close()
    _started.append(proc)
    return proc


def stop(proc: subprocess.Popen, grace_s: float = 30.0) -> None:
    """SIGINT to the process's group, SIGKILL to what is left of it after ``grace_s`` seconds
    (or at once once the leader has gone: its code servers go with it)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(10)
    if proc in _started:
        _started.remove(proc)


def stop_all() -> None:
    for proc in list(_started):
        stop(proc, grace_s=10)


class Fatal(RuntimeError):
    """Raised by a :func:`_wait` predicate for what waiting longer cannot fix."""


def _wait(predicate, timeout_s: float, what: str, proc: subprocess.Popen | None = None,
          log_path: Path | None = None, interval_s: float = 0.3):
    """Poll ``predicate`` until it returns a truthy value (returned); its errors count as "not
    yet", but :class:`Fatal`. Raises RuntimeError after ``timeout_s`` or once ``proc`` ended."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Fatal:
            raise
        except Exception:  # noqa: BLE001 - not up yet (connection refused...)
            pass
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(interval_s)
    tail = log_path.read_text()[-3000:] if log_path and log_path.exists() else ""
    raise RuntimeError(f"{what} did not happen within {timeout_s} s\n{tail}")


# ---------------------------------------------------------------------------------------------
# synthetic items


def image_kind():
    """The image kind (registry entry)."""
    from narra_dagster import registry

    return registry.get("image")


def last_image_stage():
    """The asset key of the image kind's last stage (``image_catalog``): the backfill's and the
    UI page's asset."""
    return image_kind().stages[-1].key


def kind_of(i: int) -> str:
    """Item ``i``'s kind: 16 of every 20 images, 3 videos, 1 PDF (80/15/5%)."""
    r = i % 20
    return "image" if r < 16 else ("video" if r < 19 else "document")


_EXT = {"image": ".jpg", "video": ".mp4", "document": ".pdf"}
_INDEX_ORIGIN = {"image": "image_index_rows", "video": "video_index_rows",
                 "document": "document_index_rows"}


def item(i: int, base_ts: float) -> dict[str, Any]:
    """Item ``i``: its partition key (16 hex digits of a SHA-256), kind, name, ingest time."""
    digest = hashlib.sha256(f"narra-scale:{i}".encode()).hexdigest()
    kind = kind_of(i)
    return {"i": i, "key": digest[:16], "sha256": digest, "kind": kind,
            "name": f"{kind}_{i:07d}{_EXT[kind]}", "ts": base_ts + i}


def manifest(it: dict[str, Any]) -> dict[str, Any]:
    """The manifest ``store_upload`` writes for a new item."""
    now = dt.datetime.fromtimestamp(it["ts"], dt.timezone.utc).isoformat(timespec="seconds")
    size = 40_000 + (it["i"] * 7919) % 5_000_000
    entry = {"name": it["name"], "declared_kind": it["kind"], "ingested_by": "bench.scale",
             "ingested_at": now}
    return {"partition_key": it["key"], "kind": it["kind"], "declared_kind": it["kind"],
            "source_name": it["name"], "size_bytes": size, "sha256": it["sha256"],
            "ingested_by": "bench.scale", "ingested_at": now, "names": [entry]}


def materialization_entry(asset_key, partition: str, timestamp: float):
    """The runless ``ASSET_MATERIALIZATION`` event log entry of one asset partition, built as
    ``DagsterInstance.report_runless_asset_event`` builds it (Dagster 1.13)."""
    import dagster as dg
    from dagster._core.events import DagsterEvent, DagsterEventType, StepMaterializationData
    from dagster._core.events.log import EventLogEntry
    from dagster._core.instance.utils import RUNLESS_JOB_NAME, RUNLESS_RUN_ID

    event = DagsterEvent(
        event_type_value=DagsterEventType.ASSET_MATERIALIZATION.value,
        event_specific_data=StepMaterializationData(
            dg.AssetMaterialization(asset_key=asset_key, partition=partition)),
        job_name=RUNLESS_JOB_NAME)
    return EventLogEntry(user_message="", level=logging.INFO, job_name=RUNLESS_JOB_NAME,
                         run_id=RUNLESS_RUN_ID, error_info=None, timestamp=timestamp,
                         step_key=None, dagster_event=event)


def _text(rng: random.Random) -> str:
    return " ".join(rng.choice(VOCABULARY) for _ in range(rng.randint(6, 14)))


def grow(instance, store, index, start_i: int, stop_i: int, base_ts: float) -> dict[str, Any]:
    """Add items ``start_i``..``stop_i - 1``: manifests, dynamic partitions, one materialization
    per stage, one index row each, then the index's maintenance. Returns seconds per phase and
    the rates (items/s, events/s)."""
    from narra_dagster import registry
    from narra_dagster.resources.media_store import MANIFEST

    items = [item(i, base_ts) for i in range(start_i, stop_i)]
    n = len(items)
    out: dict[str, Any] = {"items_added": n}
    total_started = time.perf_counter()

    started = time.perf_counter()
    for k, it in enumerate(items, 1):
        store.write_json(it["key"], MANIFEST, manifest(it))
        if k % 20_000 == 0:
            log(f"  manifests: {k}/{n}")
    out["manifests_s"] = round(time.perf_counter() - started, 2)
    log(f"  manifests: {n} in {out['manifests_s']} s ({n / max(out['manifests_s'], 1e-9):.0f}/s)")

    by_kind: dict[str, list[dict]] = {}
    for it in items:
        by_kind.setdefault(it["kind"], []).append(it)
    started = time.perf_counter()
    for kind, kind_items in by_kind.items():
        name = registry.get(kind).partitions.name
        for b in range(0, len(kind_items), BATCH):
            instance.add_dynamic_partitions(name, [it["key"] for it in kind_items[b:b + BATCH]])
    out["partitions_s"] = round(time.perf_counter() - started, 2)
    log(f"  partitions: {n} in {out['partitions_s']} s "
        f"({n / max(out['partitions_s'], 1e-9):.0f}/s)")

    started = time.perf_counter()
    storage = instance.event_log_storage
    events = 0
    for kind, kind_items in by_kind.items():
        for s, stage in enumerate(registry.get(kind).stages):
            for b in range(0, len(kind_items), BATCH):
                batch = [materialization_entry(stage.key, it["key"], it["ts"] + 1 + s)
                         for it in kind_items[b:b + BATCH]]
                storage.store_event_batch(batch)
                events += len(batch)
        log(f"  events: {events} stored ({kind} done, {time.perf_counter() - started:.1f} s)")
    out["events"] = events
    out["events_s"] = round(time.perf_counter() - started, 2)
    out["events_per_s"] = round(events / max(out["events_s"], 1e-9))

    # A bulk load leaves PostgreSQL without statistics for the new rows until autovacuum's
    # ANALYZE gets to them (minutes later, by row-count thresholds); planned without them, a
    # query on 50 partitions walked all 80,000 events of an asset (55 ms instead of 0.5 ms).
    # A library grown by uploads has them: analyze now, as autovacuum would have.
    started = time.perf_counter()
    conn = _pg_connect(DB)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("ANALYZE")
    finally:
        conn.close()
    out["analyze_s"] = round(time.perf_counter() - started, 2)

    out.update(write_index_rows(index, items, seed=start_i))
    log(f"  index: {n} rows in {out['index_rows_s']} s, maintain {out['index_maintain_s']} s "
        f"({out['index']['vector_index'] or 'no ANN index'})")
    out["total_s"] = round(time.perf_counter() - total_started, 2)
    out["items_per_s"] = round(n / max(out["total_s"], 1e-9))
    return out


def write_index_rows(index, items: list[dict[str, Any]], seed: int) -> dict[str, Any]:
    """One row per item in the search index's ``chunks`` table, in the resource's schema and
    under its write lock (``ROWS_PER_WRITE`` rows per commit: the resource's own
    ``upsert_partition`` is one commit per item), then ``maintain()`` as the daily maintenance
    asset runs it. Returns the seconds of each and the maintenance report's gist."""
    import numpy as np
    import pyarrow as pa

    from narra_dagster.resources.embedder import EMBEDDING_DIM
    from narra_dagster.resources.index_lock import write_lock
    from narra_dagster.resources.search_index import SCHEMA, TABLE

    out: dict[str, Any] = {}
    started = time.perf_counter()
    rng = random.Random(seed)
    nrng = np.random.default_rng(seed)
    table = index._table()  # created with its FTS index by the resource, as on a first write
    for b in range(0, len(items), ROWS_PER_WRITE):
        chunk = items[b:b + ROWS_PER_WRITE]
        m = len(chunk)
        vectors = nrng.standard_normal((m, EMBEDDING_DIM)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        data = pa.table({
            "id": [f"{it['key']}:{_INDEX_ORIGIN[it['kind']]}:00000" for it in chunk],
            "media_id": [it["key"] for it in chunk],
            "kind": [it["kind"] for it in chunk],
            "source_name": [it["name"] for it in chunk],
            "chunk_index": pa.array([0] * m, pa.int32()),
            "start_s": [0.0 if it["kind"] == "video" else None for it in chunk],
            "end_s": [30.0 if it["kind"] == "video" else None for it in chunk],
            "page": pa.array([1 if it["kind"] == "document" else None for it in chunk], pa.int32()),
            "box": pa.nulls(m, pa.list_(pa.float32(), 4)),
            "origin": [_INDEX_ORIGIN[it["kind"]] for it in chunk],
            "text": [_text(rng) for _ in chunk],
            "words": ["[]"] * m,
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)),
                                                        EMBEDDING_DIM),
        }, schema=SCHEMA)
        with write_lock(index.uri, TABLE):
            table.checkout_latest()
            table.add(data)
    out["index_rows_s"] = round(time.perf_counter() - started, 2)
    started = time.perf_counter()
    report = index.maintain()
    out["index_maintain_s"] = round(time.perf_counter() - started, 2)
    out["index"] = {k: report[k] for k in ("rows", "indices", "vector_index", "scalar_index_s",
                                           "ann_index_s", "optimize_s")}
    return out


# ---------------------------------------------------------------------------------------------
# 1. sensor ticks


def _new_pictures(folder: Path, count: int, rng: random.Random) -> list[Path]:
    """``count`` small JPEGs (160x120 noise, ~15 KB) with bytes never seen before, their
    modification time 60 s ago so the inbox takes them as stable at once."""
    import numpy as np
    from PIL import Image

    nrng = np.random.default_rng(rng.getrandbits(63))
    folder.mkdir(parents=True, exist_ok=True)
    old = time.time() - 60
    out = []
    for j in range(count):
        path = folder / f"new_{rng.getrandbits(40):010x}_{j}.jpg"
        Image.fromarray(nrng.integers(0, 256, (120, 160, 3), dtype=np.uint8)).save(path, quality=80)
        os.utime(path, (old, old))
        out.append(path)
    return out


def _median_ms(times: list[float]) -> float:
    return round(statistics.median(times) * 1000, 1)


def sensor_ticks(instance, resources: dict, image_keys: list[str],
                 ticks: int = 5) -> dict[str, Any]:
    """Median milliseconds of ``ticks`` evaluations of each sensor (a fresh cursor each time,
    as the tick after a restart): ``upload_sensor`` on an empty inbox and on 10 new images,
    ``run_request_sensor`` with 10 request files (first runs of items in ``image_keys``, as
    after 10 uploads through the API), ``domain_events_sensor`` with its cursor at now (no run
    since)."""
    import dagster as dg

    from narra_dagster.defs.events.sensor import domain_events_sensor
    from narra_dagster.defs.intake.inbox_sensor import upload_sensor
    from narra_dagster.defs.intake.requests import request_run, run_request_sensor

    inbox, store = resources["inbox"], resources["media_store"]
    upload_resources = {"inbox": inbox, "media_store": store}
    out: dict[str, Any] = {}
    inbox_dir = Path(inbox.path)
    inbox_dir.mkdir(parents=True, exist_ok=True)
    assert not any(p for p in inbox_dir.iterdir() if not p.name.startswith(".")), "inbox not empty"

    def tick(sensor, cursor=None, **res):
        context = dg.build_sensor_context(instance=instance, cursor=cursor, resources=res or None)
        started = time.perf_counter()
        result = sensor(context)
        return time.perf_counter() - started, result

    logging.getLogger("dagster").setLevel(logging.WARNING)  # the ticks' summaries: not printed
    tick(upload_sensor, **upload_resources)  # imports, resource set-up: not counted
    empty = [tick(upload_sensor, **upload_resources)[0] for _ in range(ticks)]
    out["upload_sensor_empty_ms"] = _median_ms(empty)

    rng = random.Random(len(image_keys))
    new_times, registered = [], []
    for _ in range(ticks):
        files = _new_pictures(inbox_dir, 10, rng)
        took, result = tick(upload_sensor, **upload_resources)
        new_times.append(took)
        keys = [key for add in result.dynamic_partitions_requests for key in add.partition_keys]
        registered.append((len(keys), len(result.run_requests)))
        for path in files:
            path.unlink(missing_ok=True)
        for key in keys:  # stored by the tick, never registered: leave the store as it was
            store.delete_item(key)
    out["upload_sensor_10_new_ms"] = _median_ms(new_times)
    out["upload_sensor_10_new_items_runs"] = registered
    log(f"  upload_sensor: empty {out['upload_sensor_empty_ms']} ms, 10 new "
        f"{out['upload_sensor_10_new_ms']} ms (new items, runs asked per tick: {registered})")

    from narra_dagster import settings

    folder = settings.requests_dir()
    # As after 10 uploads through the API: their partitions exist, their first runs do not.
    written = [request_run(key, "image", f"image_{j}.jpg", folder=folder)
               for j, key in enumerate(image_keys[:10])]
    times, asked = [], 0
    for _ in range(ticks):
        took, result = tick(run_request_sensor)
        times.append(took)
        asked = len(result.run_requests)
    for path in written:
        path.unlink(missing_ok=True)
    out["run_request_sensor_10_ms"] = _median_ms(times)
    out["run_request_sensor_requests"] = asked
    log(f"  run_request_sensor: 10 requests {out['run_request_sensor_10_ms']} ms "
        f"({asked} runs asked)")

    cursor = json.dumps({"updated_after": time.time()})
    times = [tick(domain_events_sensor, cursor, event_sink=resources["event_sink"])[0]
             for _ in range(ticks)]
    out["domain_events_sensor_ms"] = _median_ms(times)
    log(f"  domain_events_sensor: {out['domain_events_sensor_ms']} ms")
    return out


# ---------------------------------------------------------------------------------------------
# 2. Dagster's storage calls


def query_cost(dagster_home: str, keys: list[str]) -> dict[str, Any]:
    """Milliseconds per call (mean over ``keys``) of the Dagster storage calls narra's item
    surfaces make per item: an asset partition's last materialization (``fetch_materializations``
    of ``image_catalog``), runs by partition tag (``get_run_records``), ``has_dynamic_partition``;
    on an instance as narra's processes open it (dagster-postgres's ``NullPool``: a new
    PostgreSQL connection for every call) and on one holding a pooled connection, as
    ``dagster-webserver`` does (``optimize_for_webserver``)."""
    import dagster as dg

    out: dict[str, Any] = {}
    for label in ("new_connection", "pooled"):
        with dg.DagsterInstance.from_config(dagster_home) as instance:
            if label == "pooled":
                instance.optimize_for_webserver(statement_timeout=0, pool_recycle=3600,
                                                max_overflow=10)
            calls = {
                "fetch_materializations": lambda k: instance.fetch_materializations(
                    dg.AssetRecordsFilter(asset_key=last_image_stage(), asset_partitions=[k]),
                    limit=1),
                "run_records_by_tag": lambda k: instance.get_run_records(
                    dg.RunsFilter(tags={"dagster/partition": k}), limit=1),
                "has_dynamic_partition": lambda k: instance.has_dynamic_partition(
                    image_kind().partitions.name, k),
            }
            for name, call in calls.items():
                call(keys[0])
                started = time.perf_counter()
                for key in keys:
                    call(key)
                took = (time.perf_counter() - started) / len(keys)
                out[f"{name}_{label}_ms"] = round(took * 1000, 2)
    log("  Dagster calls (ms, new connection / pooled): " + ", ".join(
        f"{n} {out[f'{n}_new_connection_ms']} / {out[f'{n}_pooled_ms']}"
        for n in ("fetch_materializations", "run_records_by_tag", "has_dynamic_partition")))
    return out


# ---------------------------------------------------------------------------------------------
# 3. narra status


def status_variants(env: dict[str, str]) -> dict[str, list[str]]:
    """The ``narra status`` invocations to time: default arguments and ``--json``, then
    ``--limit 50`` and ``--all`` when this checkout's ``narra status --help`` lists them."""
    variants = {"default": [], "json": ["--json"]}
    helped = subprocess.run([*narra_cmd(), "status", "--help"], env={**env, "COLUMNS": "200"},
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    if "--limit" in helped.stdout:
        variants["limit50"] = ["--limit", "50"]
    if "--all" in helped.stdout:
        variants["all"] = ["--all"]
    return variants


def run_timed(cmd: list[str], env: dict[str, str], timeout_s: float) -> tuple[float, int, int, str]:
    """Run ``cmd`` (in a process group of its own, killed if this bench stops first); return
    its wall seconds, peak RSS (bytes), exit code and the end of its stderr.

    Raises:
        TimeoutError: past ``timeout_s`` (the process group is killed).
    """
    err_path = Path(env["NARRA_HOME"]) / f".status-{time.monotonic_ns()}.err"
    with open(err_path, "w") as err:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=err,
                                start_new_session=True)
        _started.append(proc)
        try:
            while True:
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    break
                if time.perf_counter() - started > timeout_s:
                    raise TimeoutError(" ".join(cmd))
                time.sleep(0.02)
            wall = time.perf_counter() - started
            proc.returncode = os.waitstatus_to_exitcode(status)
        finally:
            if proc.returncode is None:
                stop(proc, grace_s=0)
            elif proc in _started:
                _started.remove(proc)
    tail = err_path.read_text()[-1000:]
    err_path.unlink()
    return wall, usage.ru_maxrss * 1024, proc.returncode, tail


def narra_status(env: dict[str, str], variants: dict[str, list[str]], timeout_s: float,
                 timed_out: set[str]) -> dict[str, Any]:
    """Wall seconds of each ``narra status`` variant (a subprocess, as a user runs it); the
    string "timeout" past ``timeout_s``; a variant in ``timed_out`` (it timed out at a smaller
    size) is not run again and recorded as "timeout"."""
    out: dict[str, Any] = {}
    for name, extra in variants.items():
        if name in timed_out:
            out[name] = "timeout"
            log(f"  narra status {' '.join(extra)}: timeout (skipped, timed out at a smaller size)")
            continue
        try:
            wall, rss, code, stderr = run_timed([*narra_cmd(), "status", *extra], env, timeout_s)
        except TimeoutError:
            timed_out.add(name)
            out[name] = "timeout"
            log(f"  narra status {' '.join(extra)}: timeout (> {timeout_s:.0f} s)")
            continue
        if code != 0:
            out[name] = f"exit {code}"
            log(f"  narra status {' '.join(extra)}: exit {code}: {stderr[-500:]}")
            continue
        out[name] = round(wall, 2)
        out[f"{name}_peak_rss_mb"] = round(rss / 1e6)
        log(f"  narra status {' '.join(extra)}: {out[name]} s (peak RSS {round(rss / 1e6)} MB)")
    return out


# ---------------------------------------------------------------------------------------------
# 4, 5. the HTTP API


def _timed_gets(client, path: str, params: dict, count: int, budget_s: float) -> list[float]:
    """Milliseconds of up to ``count`` GETs (at least 3), stopping once ``budget_s`` is spent."""
    times: list[float] = []
    spent = 0.0
    while len(times) < count and (len(times) < 3 or spent < budget_s):
        started = time.perf_counter()
        response = client.get(path, params=params)
        took = time.perf_counter() - started
        response.raise_for_status()
        times.append(took * 1000)
        spent += took
    return times


def api_figures(env: dict[str, str], home: Path, budget_s: float, queries: int = 50,
                requests: int = 20) -> dict[str, Any]:
    """Start ``narra serve``, then: the item list's first and second page (p50 of ``requests``
    each, ms) and search p50/p95 over ``queries`` queries (ms); the server is stopped after."""
    import httpx

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = home / "serve.log"
    started = time.perf_counter()
    proc = start([*narra_cmd(), "serve", "--port", str(port)], env, log_path)
    out: dict[str, Any] = {}
    try:
        _wait(lambda: httpx.get(f"{url}/readyz", timeout=5).status_code == 200, 600,
              "narra serve ready", proc, log_path)
        out["serve_ready_s"] = round(time.perf_counter() - started, 2)
        with httpx.Client(base_url=url, timeout=600) as client:
            t = time.perf_counter()
            response = client.get("/api/v1/media", params={"limit": 50})
            response.raise_for_status()
            first = response.json()
            out["list_warmup_ms"] = round((time.perf_counter() - t) * 1000, 1)
            out["list_first_page_items"] = len(first["items"])
            if "total" in first:
                out["list_total"] = first["total"]
            page1 = _timed_gets(client, "/api/v1/media", {"limit": 50}, requests, budget_s)
            out["list_page1_p50_ms"] = round(percentile(page1, 50), 1)
            out["list_page1_requests"] = len(page1)
            if first.get("next_cursor") is not None:
                params = {"limit": 50, "cursor": first["next_cursor"]}
                page2 = _timed_gets(client, "/api/v1/media", params, requests, budget_s)
                out["list_page2_p50_ms"] = round(percentile(page2, 50), 1)
                out["list_page2_requests"] = len(page2)
            log(f"  API list: page 1 p50 {out['list_page1_p50_ms']} ms, page 2 p50 "
                f"{out.get('list_page2_p50_ms')} ms ({len(page1)} requests each; warm-up "
                f"{out['list_warmup_ms']} ms)")

            rng = random.Random(7)
            words = [" ".join(rng.sample(VOCABULARY, rng.randint(1, 3)))
                     for _ in range(queries + 1)]
            t = time.perf_counter()
            client.get("/api/v1/search", params={"q": words[0]}).raise_for_status()
            out["search_warmup_ms"] = round((time.perf_counter() - t) * 1000, 1)
            times, hits = [], []
            for q in words[1:]:
                t = time.perf_counter()
                response = client.get("/api/v1/search", params={"q": q})
                times.append((time.perf_counter() - t) * 1000)
                response.raise_for_status()
                hits.append(len(response.json()["hits"]))
            out["search_p50_ms"] = round(percentile(times, 50), 1)
            out["search_p95_ms"] = round(percentile(times, 95), 1)
            out["search_queries"] = len(times)
            out["search_mean_hits"] = round(sum(hits) / len(hits), 1)
            log(f"  API search: p50 {out['search_p50_ms']} ms, p95 {out['search_p95_ms']} ms "
                f"({len(times)} queries, {out['search_mean_hits']} hits each on average)")
    finally:
        stop(proc)
    return out


# ---------------------------------------------------------------------------------------------
# 6, 7. Dagster: the webserver, a backfill, the UI


def _graphql(url: str, query: str, variables: dict | None = None, timeout: float = 600) -> dict:
    import httpx

    response = httpx.post(f"{url}/graphql", json={"query": query, "variables": variables or {}},
                          timeout=timeout)
    response.raise_for_status()
    body = response.json()
    if body.get("errors"):
        raise RuntimeError(f"GraphQL errors: {body['errors']}")
    return body["data"]


_LOCATIONS = """{ workspaceOrError { __typename ... on Workspace { locationEntries {
  name loadStatus locationOrLoadError { __typename ... on PythonError { message } } } } } }"""


def start_webserver(env: dict[str, str], home: Path) -> tuple[subprocess.Popen, str, float]:
    """``dagster-webserver -w workspace.yaml`` on a free port, waited for until its code location
    is loaded; returns the process, its URL and the seconds that took."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = home / "webserver.log"
    started = time.perf_counter()
    proc = start([shutil.which("dagster-webserver") or "dagster-webserver", "-w",
                  str(REPO / "workspace.yaml"), "-h", "127.0.0.1", "-p", str(port)], env, log_path)

    def loaded():
        entries = _graphql(url, _LOCATIONS, timeout=10)["workspaceOrError"]["locationEntries"]
        if any(e["locationOrLoadError"] and e["locationOrLoadError"]["__typename"] == "PythonError"
               for e in entries):
            raise Fatal(f"code location failed to load: {entries}")
        return entries and all(e["loadStatus"] == "LOADED" and e["locationOrLoadError"]
                               for e in entries)

    _wait(loaded, 300, "dagster-webserver's code location loaded", proc, log_path, 0.5)
    return proc, url, round(time.perf_counter() - started, 2)


def start_daemon(env: dict[str, str], home: Path, instance) -> tuple[subprocess.Popen, float]:
    """``dagster-daemon run -w workspace.yaml``, waited for until its backfill daemon has sent a
    heartbeat; returns the process and the seconds that took."""
    log_path = home / "daemon.log"
    started_at = time.time()
    proc = start([shutil.which("dagster-daemon") or "dagster-daemon", "run", "-w",
                  str(REPO / "workspace.yaml")], env, log_path)
    _wait(lambda: any(h.daemon_type == "BACKFILL" and h.timestamp > started_at
                      for h in instance.get_daemon_heartbeats().values()),
          300, "dagster-daemon's backfill heartbeat", proc, log_path, 0.5)
    return proc, round(time.time() - started_at, 2)


_LAUNCH = """mutation($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
  __typename ... on LaunchBackfillSuccess { backfillId }
  ... on PythonError { message } ... on PartitionKeysNotFoundError { message } } }"""
_CANCEL = """mutation($id: String!) { cancelPartitionBackfill(backfillId: $id) {
  __typename ... on PythonError { message } } }"""


def backfill(env: dict[str, str], home: Path, url: str, instance, keys: list[str],
             watch_s: float) -> dict[str, Any]:
    """Launch an asset backfill of ``image_catalog`` over ``keys`` through GraphQL with the
    daemon running: the mutation's wall seconds, the seconds from its answer to the first run
    the backfill created, the runs created within ``watch_s`` seconds of the answer and their
    rate (runs/s); then cancel it, stop the daemon and delete the backfill's runs."""
    import dagster as dg

    out: dict[str, Any] = {"partitions": len(keys)}
    daemon, out["daemon_ready_s"] = start_daemon(env, home, instance)
    backfill_id = None
    try:
        started = time.perf_counter()
        result = _graphql(url, _LAUNCH, {"params": {
            "partitionNames": keys, "assetSelection": [{"path": last_image_stage().path}],
            "title": f"bench.scale {len(keys)} partitions"}})["launchPartitionBackfill"]
        answered = time.perf_counter()
        out["launch_s"] = round(answered - started, 2)
        if result["__typename"] != "LaunchBackfillSuccess":
            raise RuntimeError(f"launchPartitionBackfill: {result}")
        backfill_id = result["backfillId"]
        log(f"  backfill {backfill_id}: launched over {len(keys)} partitions in "
            f"{out['launch_s']} s")
        runs = dg.RunsFilter(tags={"dagster/backfill": backfill_id})
        first = None
        counts = []
        while time.perf_counter() - answered < watch_s:
            count = instance.get_runs_count(runs)
            now = time.perf_counter() - answered
            counts.append((round(now, 1), count))
            if count and first is None:
                first = now
                log(f"  backfill: first run after {first:.1f} s")
            time.sleep(0.5)
        created = instance.get_runs_count(runs)
        out["first_run_s"] = round(first, 2) if first is not None else None
        out["runs_after_watch"] = created
        out["watch_s"] = watch_s
        out["runs_per_s"] = round(created / watch_s, 2)
        out["runs_per_s_after_first"] = (round(created / (watch_s - first), 2)
                                         if first is not None and watch_s > first else None)
        out["run_counts"] = counts[::10]
        status = instance.get_backfill(backfill_id).status.value
        log(f"  backfill: {created} runs after {watch_s:.0f} s ({out['runs_per_s']} runs/s), "
            f"backfill {status}")

        started = time.perf_counter()
        cancelled = _graphql(url, _CANCEL, {"id": backfill_id})["cancelPartitionBackfill"]
        if cancelled["__typename"] != "CancelBackfillSuccess":
            raise RuntimeError(f"cancelPartitionBackfill: {cancelled}")
        try:
            _wait(lambda: instance.get_backfill(backfill_id).status.value
                  in ("CANCELED", "COMPLETED", "FAILED", "COMPLETED_SUCCESS", "COMPLETED_FAILED"),
                  180, "the backfill's cancellation", interval_s=1)
            out["cancel_s"] = round(time.perf_counter() - started, 2)
        except RuntimeError:
            out["cancel_s"] = "timeout"
        out["status_after_cancel"] = instance.get_backfill(backfill_id).status.value
        log(f"  backfill: cancelled in {out['cancel_s']} s ({out['status_after_cancel']})")
    finally:
        stop(daemon)
        if backfill_id is not None:
            out.update(_remove_backfill_runs(instance, backfill_id))
    return out


def _remove_backfill_runs(instance, backfill_id: str) -> dict[str, Any]:
    """Cancel what is left of a backfill's runs and delete them all (with their events), so the
    items look as before the backfill; returns how many and their statuses before."""
    import dagster as dg

    records = instance.get_run_records(dg.RunsFilter(tags={"dagster/backfill": backfill_id}))
    statuses: dict[str, int] = {}
    started = time.perf_counter()
    for record in records:
        run = record.dagster_run
        statuses[run.status.value] = statuses.get(run.status.value, 0) + 1
        if not run.is_finished:
            instance.report_run_canceled(run, message="bench.scale: backfill run not to execute")
        instance.delete_run(run.run_id)
    took = round(time.perf_counter() - started, 2)
    log(f"  backfill: {len(records)} runs deleted in {took} s (statuses before: {statuses})")
    return {"runs_deleted": len(records), "run_statuses": statuses, "delete_runs_s": took}


_SHOWN = {
    # the Status section's latest materialization, with its age ("24 hours ago")
    "overview": r"""() => /Latest materialization\s*\n[^\n]*ago/.test(document.body.innerText)""",
    # the partition status filter's count, e.g. "Materialized (8,000)", once it is not 0
    "partitions": r"""() => { const m = /Materialized \(([\d,]+)\)/.exec(document.body.innerText);
                              return m !== null && parseInt(m[1].replace(/,/g, '')) > 0; }""",
}


def _load(browser, page_url: str, shown_js: str, timeout_s: float) -> dict[str, float]:
    """One load of ``page_url`` in a fresh browser context: seconds until ``shown_js`` is true
    (the figure is on screen), and until the last GraphQL answer before the network is idle."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    try:
        page = context.new_page()
        last = [None]
        page.on("requestfinished",
                lambda r: last.__setitem__(0, time.perf_counter()) if "/graphql" in r.url else None)
        started = time.perf_counter()
        page.goto(page_url, wait_until="commit", timeout=timeout_s * 1000)
        page.wait_for_function(shown_js, timeout=timeout_s * 1000, polling=50)
        shown = time.perf_counter() - started
        page.wait_for_load_state("networkidle", timeout=timeout_s * 1000)
        return {"shown_s": shown, "graphql_done_s": (last[0] or started) - started}
    finally:
        context.close()


def ui_asset_page(url: str, loads: int = 3, timeout_s: float = 300) -> dict[str, Any]:
    """Seconds until Chromium shows ``image_catalog``'s asset page (the Status section's latest
    materialization) and its Partitions tab (the count of materialized partitions), each load in
    a fresh browser context (cold cache, as a user opening a link): first load and median of
    ``loads``; also until its last GraphQL answer (the page's data all loaded)."""
    from playwright.sync_api import sync_playwright

    out: dict[str, Any] = {}
    asset = "/".join(last_image_stage().path)
    pages = {"overview": f"{url}/assets/{asset}",
             "partitions": f"{url}/assets/{asset}?view=partitions"}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        try:
            for name, page_url in pages.items():
                try:
                    runs = [_load(browser, page_url, _SHOWN[name], timeout_s)
                            for _ in range(loads)]
                except Exception as exc:  # noqa: BLE001 - e.g. never shown: the other page goes on
                    out[f"{name}_error"] = f"{type(exc).__name__}: {exc}"[:2000]
                    log(f"  UI {name}: {out[f'{name}_error'][:300]}")
                    continue
                shown = [r["shown_s"] for r in runs]
                done = [r["graphql_done_s"] for r in runs]
                out[f"{name}_first_s"] = round(shown[0], 2)
                out[f"{name}_median_s"] = round(statistics.median(shown), 2)
                out[f"{name}_loads_s"] = [round(t, 2) for t in shown]
                out[f"{name}_graphql_done_median_s"] = round(statistics.median(done), 2)
                log(f"  UI {name}: shown after {out[f'{name}_first_s']} s first, median "
                    f"{out[f'{name}_median_s']} s; last GraphQL answer median "
                    f"{out[f'{name}_graphql_done_median_s']} s")
        finally:
            browser.close()
    return out


# ---------------------------------------------------------------------------------------------
# the table


def _fmt(value, unit: str = "") -> str:
    if isinstance(value, int) and value >= 1_000:
        return f"{value:,}"
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    if isinstance(value, float) and value >= 100:
        return f"{value:.0f}{unit}"
    return f"{value}{unit}"


_ERROR_KEYS = ("upload_sensor_empty_ms", "upload_sensor_10_new_ms", "run_request_sensor_10_ms",
               "domain_events_sensor_ms", "fetch_materializations_new_connection_ms",
               "fetch_materializations_pooled_ms", "default", "limit50", "all",
               "list_page1_p50_ms", "list_page2_p50_ms", "search_p50_ms", "search_p95_ms",
               "partitions", "launch_s", "first_run_s", "runs_per_s", "runs_per_s_after_first",
               "overview_first_s", "overview_median_s", "partitions_first_s",
               "partitions_median_s")


def table(results: list[dict[str, Any]]) -> str:
    """The Markdown table of the results, one row per size."""
    head = ("| items | insert s (items/s) | upload_sensor ms (empty / 10 new) | run_request_sensor "
            "ms (10 requests) | domain events sensor ms | Dagster call ms (new connection / "
            "pooled) | narra status s (default / --limit 50 / --all) | API list p50 ms (page 1 / "
            "page 2) | search p50 / p95 ms | backfill: partitions, launch s / first run s / runs "
            "per s | UI asset page s (overview / partitions tab; first, median) |")
    lines = [head, "|" + "---|" * 11]

    def part(name: str) -> dict[str, Any]:  # a failed measurement shows as "error"
        got = r.get(name) or {}
        return {k: "error" for k in _ERROR_KEYS} if "error" in got else got

    for r in results:
        ins, sen, st, api = r["insert"], part("sensors"), part("status"), part("api")
        q, bf, ui = part("queries"), part("backfill") or None, part("ui")
        status = " / ".join(_fmt(st.get(k)) for k in ("default", "limit50", "all"))
        calls = (f"{_fmt(q.get('fetch_materializations_new_connection_ms'))} / "
                 f"{_fmt(q.get('fetch_materializations_pooled_ms'))}" if q else "-")
        back = (f"{_fmt(bf.get('partitions'))}: {_fmt(bf.get('launch_s'))} / "
                f"{_fmt(bf.get('first_run_s'))} / {_fmt(bf.get('runs_per_s'))} "
                f"({_fmt(bf.get('runs_per_s_after_first'))} after the first)" if bf else "-")
        uis = (f"{_fmt(ui.get('overview_first_s'))}, {_fmt(ui.get('overview_median_s'))} / "
               f"{_fmt(ui.get('partitions_first_s'))}, {_fmt(ui.get('partitions_median_s'))}"
               if ui else "-")
        lines.append(
            f"| {r['items']:,} | {_fmt(ins['total_s'])} ({_fmt(ins['items_per_s'])}) | "
            f"{_fmt(sen.get('upload_sensor_empty_ms'))} / "
            f"{_fmt(sen.get('upload_sensor_10_new_ms'))} | "
            f"{_fmt(sen.get('run_request_sensor_10_ms'))} | "
            f"{_fmt(sen.get('domain_events_sensor_ms'))} | "
            f"{calls} | {status} | {_fmt(api.get('list_page1_p50_ms'))} / "
            f"{_fmt(api.get('list_page2_p50_ms'))} | {_fmt(api.get('search_p50_ms'))} / "
            f"{_fmt(api.get('search_p95_ms'))} | {back} | {uis} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------


def _interrupt(signum, _frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000, 100_000],
                   help="item counts to grow to and measure at, ascending (cumulative)")
    p.add_argument("--json", default="bench-scale.json", help="where to write the figures")
    p.add_argument("--work", default=None,
                   help="folder for NARRA_HOME (DIR/home; default: a new temporary folder); "
                        "removed at the end unless --keep")
    p.add_argument("--keep", action="store_true",
                   help="keep the work folder and the database at the end")
    p.add_argument("--status-timeout", type=float, default=120.0,
                   help="seconds after which a narra status is killed and recorded as timeout")
    p.add_argument("--api-budget", type=float, default=120.0,
                   help="seconds each timed API list series may take (at least 3 requests)")
    p.add_argument("--backfill-from", type=int, default=10_000,
                   help="measure the backfill at sizes from this many items on")
    p.add_argument("--backfill-partitions", type=int, default=10_000)
    p.add_argument("--backfill-watch", type=float, default=60.0,
                   help="seconds to count the backfill's runs for")
    p.add_argument("--skip", nargs="*", default=[],
                   choices=["sensors", "queries", "status", "api", "ui", "backfill"],
                   help="measurements to leave out")
    args = p.parse_args()
    sizes = sorted(set(args.sizes))

    # Stop cleanly on SIGTERM and SIGINT, even when started with them ignored (a background job
    # of a non-interactive shell ignores SIGINT): the finally below stops every process.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _interrupt)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="narra-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    results: list[dict[str, Any]] = []
    report: dict[str, Any] = {"sizes": sizes, "machine": {"cpus": os.cpu_count()},
                              "database": DB, "work": str(work), "results": results}
    bench_started = time.perf_counter()
    log(f"scale bench: sizes {sizes}, work {work}, database {DB}")
    create_database()
    try:
        env = production_home(work)
        os.environ.update({k: v for k, v in env.items()
                           if k.startswith(("NARRA_", "DAGSTER_")) or k == "PYTHONPATH"})
        home = Path(env["NARRA_HOME"])
        import dagster as dg

        from narra_dagster import registry
        from narra_dagster.app.runtime import load_definitions

        defs = load_definitions()
        resources = defs.resources
        store, index = resources["media_store"], resources["search_index"]
        base_ts = time.time() - max(sizes) - 86_400
        timed_out: set[str] = set()
        with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
            assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
            variants = status_variants(env)
            log(f"narra status variants: {list(variants)}")
            have = 0
            for size in sizes:
                phases: dict[str, float] = {}
                row: dict[str, Any] = {"items": size}
                results.append(row)
                log(f"growing {have} -> {size} items")
                t = time.perf_counter()
                row["insert"] = grow(instance, store, index, have, size, base_ts)  # must work
                phases["insert"] = time.perf_counter() - t
                ins = row["insert"]
                log(f"  insert: {ins['items_added']} items in {ins['total_s']} s "
                    f"({ins['items_per_s']} items/s; {ins['events_per_s']} events/s)")
                have = size
                image_keys = instance.get_dynamic_partitions(image_kind().partitions.name)
                row["by_kind"] = {k.name: len(instance.get_dynamic_partitions(k.partitions.name))
                                  for k in registry.KINDS}

                def phase(name: str, measure) -> None:
                    """Take one measurement; a failure is recorded, and the others go on."""
                    t = time.perf_counter()
                    try:
                        row[name] = measure()
                    except Exception as exc:  # noqa: BLE001 - recorded in the figures
                        row[name] = {"error": f"{type(exc).__name__}: {exc}"[:3000]}
                        log(f"  {name} failed: {row[name]['error'][:500]}")
                    phases[name] = time.perf_counter() - t

                if "sensors" not in args.skip:
                    phase("sensors", lambda: sensor_ticks(instance, resources, image_keys))
                if "queries" not in args.skip:
                    phase("queries", lambda: query_cost(env["DAGSTER_HOME"], image_keys[-30:]))
                if "status" not in args.skip:
                    phase("status", lambda: narra_status(env, variants, args.status_timeout,
                                                         timed_out))
                if "api" not in args.skip:
                    phase("api", lambda: api_figures(env, home, args.api_budget))
                want_backfill = "backfill" not in args.skip and size >= args.backfill_from
                web = None
                if "ui" not in args.skip or want_backfill:
                    phase("webserver", lambda: start_webserver(env, home))
                    if "error" not in row["webserver"]:
                        web, url, ready_s = row["webserver"]
                        row["webserver"] = {"ready_s": ready_s}
                try:
                    if web is not None and "ui" not in args.skip:
                        phase("ui", lambda: ui_asset_page(url))
                    if web is not None and want_backfill:
                        keys = image_keys[:args.backfill_partitions]
                        phase("backfill", lambda: backfill(env, home, url, instance, keys,
                                                           args.backfill_watch))
                finally:
                    if web is not None:
                        stop(web)
                row["phase_s"] = {k: round(v, 1) for k, v in phases.items()}
                log(f"size {size} done; phases (s): {row['phase_s']}")
                Path(args.json).write_text(json.dumps(report, indent=2))
    finally:
        stop_all()
        report["total_s"] = round(time.perf_counter() - bench_started, 1)
        Path(args.json).write_text(json.dumps(report, indent=2))
        if not args.keep:
            with contextlib.suppress(Exception):
                drop_database()
            shutil.rmtree(work if not args.work else work / "home", ignore_errors=True)
    print(table(results))
    log(f"figures written to {args.json}; {report['total_s']} s in all")


if __name__ == "__main__":
    main()
