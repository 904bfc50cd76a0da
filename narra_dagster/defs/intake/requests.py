"""Runs asked for by the HTTP API: an upload to process, a failed item to retry.

The API process stores an upload through the same intake as the inbox sensor
(:func:`narra_dagster.defs.intake.uploads.store_upload`) and adds its partition at once, so the
item is listed (``queued``) from the moment its upload ends. It never runs anything itself:
:func:`request_run` writes one small JSON file per item under ``$NARRA_HOME/requests/``, and
the ``run_request_sensor`` turns the files into runs on its next tick (Dagster's sensor loop
looks every 5 s): the first runs of new items of one kind as batch runs (up to 50 items or 30
minutes of media, :func:`narra_dagster.core.batch.plan_batches`), an item alone or run again (a
retry, a rename) in a per-item run. Its run is then an ordinary queued Dagster run: in the UI, under
the run coordinator's limits and pools, retried by run retries, seen by the domain events
sensor.

Why a file and not a run launched from the API: launching needs the code location's job
snapshot, which Dagster's public API offers only to sensors, schedules, the UI and its GraphQL.
A sensor also gives the idempotence for free: each request's ``run_key`` (``<kind>:<key>:v<n>``,
plus the request's ``reason`` for a retry) starts at most one run, however often the file is
read.

One tick: files taken by the previous tick (listed in the cursor with their modification time)
are removed, now that Dagster has committed that tick's runs together with its cursor; a file
rewritten since (a new retry of the same item) stays for this tick. Then every request file,
oldest first, up to :data:`MAX_PER_TICK`, becomes a run request; an unreadable one is moved
aside to ``requests/.rejected/`` with the reason logged, never retried forever.

Deletion: ``narra delete`` and ``DELETE /api/v1/media/{id}`` withdraw the item's request
(:func:`withdraw_request`) while holding the item's lock
(:func:`narra_dagster.resources.item_lock.item_lock`), and the sensor reads each request under
the same lock, so a request is either taken before the deletion (its run then finds the item
deleted and ends ``deleted``, :mod:`narra_dagster.core.stage`) or gone. A request whose item has
no partition any more although it ran before (a batch run asking a deleted item to run alone) is
dropped: the sensor adds a missing partition only for an item that never ran, so a deleted item
never comes back.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path
from typing import Any

import dagster as dg

from narra_dagster import registry, settings
from narra_dagster.core.batch import batch_item_tag, batch_run_request, plan_batches
from narra_dagster.core.kind import printable
from narra_dagster.core.media import is_partition_key
from narra_dagster.resources.item_lock import ItemBusy, item_lock

MAX_PER_TICK = 200
LOCK_WAIT_S = 5.0
"""Seconds the sensor waits for an item held by a deletion or an upload before leaving its
request for the next tick."""


def request_run(media_id: str, kind: str, source_name: str, *, reason: str | None = None,
                media_seconds: float | None = None, folder: Path | None = None) -> Path:
    """Ask the ``run_request_sensor`` to run one item's per-item job.

    Args:
        media_id: the partition key (16 hex digits); its partition must exist.
        kind: ``video``, ``image`` or ``document``.
        source_name: the name shown in the run's tags (metadata only).
        reason: None for an item's first run; for any later run a word naming why
            (``retry-<n>``, ``renamed-...``, ``restored-...``), which becomes part of the run key
            so the run happens once per reason.
        media_seconds: the duration the file declares, when its kind declares one; sizes the
            batch run the item joins.
        folder: default ``$NARRA_HOME/requests``.

    Returns:
        The request file, written atomically (a temporary file renamed into place). One file per
        item: a second request before the sensor took the first replaces it.

    Raises:
        ValueError: for a malformed media id or an unknown kind.
        OSError: when the file cannot be written.
    """
    if not is_partition_key(media_id):
        raise ValueError(f"not a media id: {media_id!r}")
    registry.get(kind)
    folder = folder or settings.requests_dir()
    folder.mkdir(parents=True, exist_ok=True)
    record = {"media_id": media_id, "kind": registry.get(kind).name, "source_name": source_name,
              "reason": reason, "media_seconds": media_seconds,
              "requested_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")}
    path = folder / f"{media_id}.json"
    tmp = folder / f".{media_id}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(record))
    tmp.replace(path)
    return path


def pending_request(media_id: str, folder: Path | None = None) -> dict[str, Any] | None:
    """The request for ``media_id`` the sensor has not yet turned into a run, or None."""
    path = (folder or settings.requests_dir()) / f"{media_id}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def withdraw_request(media_id: str, folder: Path | None = None) -> bool:
    """Remove the request of ``media_id`` the sensor has not taken yet (the item is being
    deleted); True when there was one. The caller holds the item's lock, as the sensor does
    when it reads a request, so the sensor never takes a request withdrawn before it looked.

    Raises:
        ValueError: for a malformed media id.
    """
    if not is_partition_key(media_id):
        raise ValueError(f"not a media id: {media_id!r}")
    folder = folder or settings.requests_dir()
    try:
        (folder / f"{media_id}.json").unlink()
        return True
    except FileNotFoundError:
        return False


def has_first_run(instance: dg.DagsterInstance, media_id: str) -> bool:
    """Whether an item's first run exists: a per-item or batch run tagged with the item
    (:func:`narra_dagster.core.batch.batch_item_tag`). One indexed query on the run tags."""
    return bool(instance.get_run_ids(dg.RunsFilter(tags={batch_item_tag(media_id): "1"}), limit=1))


def ran_before(instance: dg.DagsterInstance, media_id: str) -> bool:
    """Whether any run of the item exists: its first run (:func:`has_first_run`) or a run on
    its partition (``narra process``, a retry). An item that ran and has no partition any more
    was deleted. At most two indexed queries on the run tags."""
    return has_first_run(instance, media_id) or bool(instance.get_run_ids(
        dg.RunsFilter(tags={"dagster/partition": media_id}), limit=1))


def run_request_for(request: dict[str, Any]) -> tuple[dg.RunRequest, registry.MediaKind]:
    """The ``RunRequest`` of one request record (see :func:`request_run`).

    Raises:
        ValueError: for a record without a valid media id, or with an unknown kind.
        KeyError: for a record missing a field.
    """
    key = request["media_id"]
    if not is_partition_key(key):
        raise ValueError(f"not a media id: {key!r}")
    kind = registry.get(request["kind"])
    run_key = kind.run_key(key) + (f":{request['reason']}" if request.get("reason") else "")
    name = printable(request.get("source_name") or "")[:63] or "-"
    return dg.RunRequest(run_key=run_key, job_name=kind.job_name, partition_key=key,
                         tags={"narra/source_name": name, "narra/kind": kind.name,
                               "narra/launched_by": "narra serve", batch_item_tag(key): "1"}), kind


@dg.sensor(
    name="run_request_sensor",
    jobs=registry.jobs(),
    minimum_interval_seconds=1,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Starts the runs the HTTP API asked for (uploads, retries): one run per request "
                "file in $NARRA_HOME/requests, under an idempotent run key.",
)
def run_request_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
    folder = settings.requests_dir()
    cursor = json.loads(context.cursor) if context.cursor else {}
    for name, mtime_ns in cursor.get("taken", {}).items():
        path = folder / name
        try:
            if path.stat().st_mtime_ns == mtime_ns:
                path.unlink()
        except FileNotFoundError:
            pass
    try:
        files = sorted((p for p in folder.glob("*.json")), key=lambda p: p.stat().st_mtime_ns)
    except FileNotFoundError:
        files = []
    taken: dict[str, int] = {}
    run_requests: list[dg.RunRequest] = []
    first: dict[str, list[tuple[dg.RunRequest, float | None]]] = {}
    adds: dict[str, list[str]] = {}
    for path in files[:MAX_PER_TICK]:
        try:
            if not is_partition_key(path.stem):
                raise ValueError(f"not a media id: {path.stem!r}")
            # Read and decided on under the item's lock: a deletion withdraws the request under
            # it, so the request is either read before the deletion began or gone.
            with item_lock(path.stem, timeout_s=LOCK_WAIT_S):
                mtime_ns = path.stat().st_mtime_ns
                record = json.loads(path.read_text())
                request, kind = run_request_for(record)
                key = request.partition_key
                if key != path.stem:
                    raise ValueError(f"the request in {path.name} names another item, {key}")
                exists = context.instance.has_dynamic_partition(kind.partitions.name, key)
                if not exists and ran_before(context.instance, key):
                    # the item ran before and its partition is gone: it was deleted
                    path.unlink(missing_ok=True)
                    context.log.info(f"dropped the run request of {key}: the item was deleted")
                    continue
        except FileNotFoundError:
            continue
        except ItemBusy:
            context.log.info(f"{path.name}: its item is busy (a deletion or an upload); "
                             "left for the next tick")
            continue
        except (OSError, ValueError, KeyError, TypeError) as exc:
            rejected = folder / ".rejected"
            rejected.mkdir(exist_ok=True)
            path.replace(rejected / path.name)
            context.log.warning(f"moved unreadable run request {path.name} aside: "
                                f"{type(exc).__name__}: {exc}")
            continue
        taken[path.name] = mtime_ns
        if not exists:
            adds.setdefault(kind.name, []).append(key)
        if record.get("reason"):
            run_requests.append(request)
        elif not has_first_run(context.instance, key):  # a tick evaluated twice runs it once
            seconds = record.get("media_seconds")
            first.setdefault(kind.name, []).append(
                (request, float(seconds) if isinstance(seconds, (int, float)) else None))
    for kind_name, items in first.items():  # first runs: batched per kind
        by_key = {r.partition_key: r for r, _ in items}
        for keys in plan_batches([(r.partition_key, s) for r, s in items]):
            run_requests.append(by_key[keys[0]] if len(keys) == 1 else
                                batch_run_request(registry.get(kind_name), keys, "narra serve"))
    summary = f"{len(run_requests)} run requests taken, {max(0, len(files) - MAX_PER_TICK)} waiting"
    if run_requests:
        context.log.info(summary)
    return dg.SensorResult(
        run_requests=run_requests,
        dynamic_partitions_requests=[registry.get(k).partitions.build_add_request(keys)
                                     for k, keys in adds.items()],
        cursor=json.dumps({"taken": taken}, sort_keys=True),
        skip_reason=None if run_requests else dg.SkipReason("no run requests"),
    )
