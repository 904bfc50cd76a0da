"""Status: per item, its stages' last materializations and its last run's outcome.

An item deleted and uploaded again is a new version of it (``version`` 2, 3...; see
:meth:`narra_dagster.resources.media_store.MediaStore.version`). Dagster's open-source storages
cannot wipe a partition's history, so the deleted version's runs and materializations stay
there; status counts only the runs created since the deletion and the materializations of those
runs, so a re-uploaded item is ``registered``/``queued`` until its own run makes it
``searchable``. ``narra status``, the API and the web page all read these functions.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
from collections.abc import Sequence
from typing import Any

import dagster as dg

from narra_dagster import registry
from narra_dagster.core.batch import batch_item_tag, item_results
from narra_dagster.core.kind import MediaKind
from narra_dagster.core.media import is_partition_key
from narra_dagster.core.runs import run_failure
from narra_dagster.core.stage import names_of
from narra_dagster.resources.media_store import MediaStore


def last_materialization(instance: dg.DagsterInstance, asset: str | dg.AssetKey, key: str):
    """The newest materialization record of one asset partition, or None."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey.from_coercible(asset),
                              asset_partitions=[key]), limit=1
    ).records
    return records[0] if records else None


def item_status(instance: dg.DagsterInstance, media_store: MediaStore, kind: MediaKind,
                key: str) -> dict[str, Any]:
    """One live item (see :func:`items_status`)."""
    return items_status(instance, media_store, [(kind, key)])[0]


def items_status(instance: dg.DagsterInstance, media_store: MediaStore,
                 entries: Sequence[tuple[MediaKind, str]]) -> list[dict[str, Any]]:
    """Live items, in the order given: source name and every name, each asset's last
    materialization (``materialized_at`` ISO 8601 UTC, ``run_id``), the last run's outcome and
    the item's ``state`` (``registered``, ``queued``/``started``..., ``searchable``, ``failed``).

    Asked together, so a page costs two queries per stage, one per item and one or two per
    distinct run, whatever the number of items stored: each stage's newest materializations of
    all the given partitions, the per-item runs of all of them, the batch runs by item tag, and
    a batch run's per-item results once for all its items.
    """
    by_kind: dict[str, list[str]] = {}
    for kind, key in entries:
        by_kind.setdefault(kind.name, []).append(key)
    versions = {key: _version(media_store, key) for _, key in entries}
    cuts = {key: v["since"] for key, v in versions.items()
            if v and isinstance(v.get("since"), (int, float))}
    found: dict[tuple[str, str], Any] = {}  # (asset, key) -> last materialization record
    for kind_name, keys in by_kind.items():
        for stage in registry.get(kind_name).stages:
            for key, record in _last_materializations(instance, stage.key, keys).items():
                found[(stage.key.to_user_string(), key)] = record
    # A re-uploaded item's materializations count only when their run began after the
    # deletion: a stage of the deleted version that finished just after it was deleted is
    # recorded later than the deletion, by a run created before it. One query, only for them.
    created: dict[str, float] = {}  # run id -> when the run was created (seconds)
    run_ids = list({r.run_id for (_, key), r in found.items() if key in cuts})
    if run_ids:
        created = {r.dagster_run.run_id: r.create_timestamp.timestamp()
                   for r in instance.get_run_records(dg.RunsFilter(run_ids=run_ids))}
    materialized: dict[tuple[str, str], dict[str, Any]] = {
        (asset, key): {"materialized_at": _iso(r.timestamp), "run_id": r.run_id}
        for (asset, key), r in found.items()
        if key not in cuts or (r.timestamp >= cuts[key]
                               and created.get(r.run_id, r.timestamp) >= cuts[key])}
    # Each item's newest run of its own (a per-item run tags its partition): one query.
    own_runs: dict[str, Any] = {}
    keys = [key for _, key in entries]
    for record in instance.get_run_records(dg.RunsFilter(tags={"dagster/partition": keys})):
        key = record.dagster_run.tags.get("dagster/partition")
        if key in cuts and record.create_timestamp.timestamp() < cuts[key]:
            continue  # a run of a deleted version
        if key not in own_runs or record.create_timestamp > own_runs[key].create_timestamp:
            own_runs[key] = record
    results: dict[str, list[dict[str, Any]]] = {}
    failures: dict[str, tuple[str | None, str | None]] = {}
    out = []
    for kind, key in entries:
        try:
            manifest = media_store.manifest(key)
        except (FileNotFoundError, ValueError):
            manifest = {}
        assets = {stage.key.to_user_string(): materialized.get((stage.key.to_user_string(), key))
                  for stage in kind.stages}
        # The item's last run: its own run, or a batch run that listed it (tagged per item).
        runs = [*([own_runs[key]] if key in own_runs else []),
                *(r for r in instance.get_run_records(
                    dg.RunsFilter(tags={batch_item_tag(key): "1"}), limit=1)
                  if key not in cuts or r.create_timestamp.timestamp() >= cuts[key])]
        last_run = None
        if runs:
            run = max(runs, key=lambda r: r.create_timestamp).dagster_run
            status = run.status.value
            error, error_class = None, None
            if run.status == dg.DagsterRunStatus.FAILURE:
                if run.run_id not in failures:
                    failures[run.run_id] = run_failure(instance, run.run_id)
                error, error_class = failures[run.run_id]
            if run.job_name == kind.batch_job_name:  # a batch run: this item's own outcome
                if run.run_id not in results:
                    results[run.run_id] = item_results(instance, run.run_id)
                item = next((i for i in results[run.run_id] if i["partition_key"] == key), None)
                if item is not None:
                    error, error_class = item["error"], item["error_class"]
                    # isolated: handed to a run of its own, which is queued or starting
                    status = {"succeeded": "SUCCESS", "isolated": "QUEUED"}.get(
                        item["status"], "FAILURE")
            last_run = {"run_id": run.run_id, "job": run.job_name, "status": status,
                        "error": error, "error_class": error_class}
        done = all(assets.values())
        out.append({
            "media_id": key, "kind": kind.name, "source_name": manifest.get("source_name"),
            "names": [n["name"] for n in names_of(manifest)] if manifest else [],
            "state": "failed" if last_run and last_run["status"] == "FAILURE"
            else ("searchable" if done else
                  (last_run["status"].lower() if last_run else "registered")),
            "last_run": last_run, "assets": assets,
            "version": (versions[key] or {}).get("version") or 1,
        })
    return out


def _version(media_store: MediaStore, key: str) -> dict[str, Any] | None:
    try:
        return media_store.version(key)
    except (OSError, ValueError):
        return None


def _last_materializations(instance: dg.DagsterInstance, asset_key: dg.AssetKey,
                           keys: Sequence[str]) -> dict[str, Any]:
    """Partition -> its newest materialization record, for ``keys``, in two indexed queries
    whatever the number of partitions stored: the newest event id per partition (a GROUP BY on
    Dagster's ``(asset_key, event type, partition, id)`` index), then those events by id.

    Why not ``fetch_materializations`` over the partitions with a limit: PostgreSQL answers its
    ``ORDER BY id DESC LIMIT`` by walking the asset's events newest first and filtering, 60 ms
    at 100,000 items when the page's items are not the newest (``python -m bench.scale``).
    """
    if not keys:
        return {}
    latest = instance.event_log_storage.get_latest_storage_id_by_partition(
        asset_key, dg.DagsterEventType.ASSET_MATERIALIZATION, set(keys))
    if not latest:
        return {}
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=asset_key, storage_ids=list(latest.values())),
        limit=len(latest)).records
    return {record.partition_key: record for record in records}


def deleted_status(key: str, stone: dict[str, Any]) -> dict[str, Any]:
    """A deleted item, from its tombstone: ``state`` ``deleted`` and when."""
    names = stone.get("names") or []
    return {"media_id": key, "kind": stone.get("kind"),
            "source_name": names[0] if names else None, "names": names,
            "state": "deleted", "deleted_at": stone.get("deleted_at"),
            "last_run": None, "assets": {}}


def partition_status(instance: dg.DagsterInstance, defs: dg.Definitions,
                     media_id: str | None = None) -> list[dict[str, Any]]:
    """Every item (:func:`item_status`), then every deleted item (:func:`deleted_status`).

    ``media_id`` may be a prefix of a partition key; a whole key is looked up directly. Without
    one this reads every item: O(items), for ``narra status --all`` and exports; pages use
    :func:`status_page`.
    """
    media_store: MediaStore = defs.resources["media_store"]  # type: ignore[assignment]
    items = []
    for media_kind in registry.KINDS:
        if media_id and is_partition_key(media_id):
            keys = [media_id] if instance.has_dynamic_partition(
                media_kind.partitions.name, media_id) else []
        else:
            keys = [k for k in instance.get_dynamic_partitions(media_kind.partitions.name)
                    if not media_id or k.startswith(media_id)]
        for start in range(0, len(keys), 500):  # a few hundred partitions per query
            items += items_status(instance, media_store,
                                  [(media_kind, key) for key in keys[start:start + 500]])
    listed = {item["media_id"] for item in items}
    for key, stone in sorted(media_store.tombstones().items()):
        if key in listed or (media_id and not key.startswith(media_id)):
            continue  # deleted, then uploaded again: the live item is what counts
        items.append(deleted_status(key, stone))
    return items


def status_page(instance: dg.DagsterInstance, defs: dg.Definitions, *, kind: str | None = None,
                cursor: str | None = None, limit: int = 50,
                ) -> tuple[list[dict[str, Any]], str | None]:
    """One page of items, newest first: live items by upload, deleted ones by deletion.

    What it costs does not grow with the number of items: per kind, one or two indexed queries
    on Dagster's dynamic partitions table (``get_paginated_dynamic_partitions``, newest row
    first), ``limit`` manifests read to interleave the kinds by upload time, and
    :func:`item_status` for the ``limit`` items shown. Deleted items come from the tombstones
    (one small file per deletion).

    Args:
        kind: only this kind's items (a registry name).
        cursor: the ``next_cursor`` of the previous page; None for the first.
        limit: items per page.

    Returns:
        (items, next_cursor): next_cursor is None on the last page.

    Raises:
        ValueError: for a cursor this function did not make.
    """
    media_store: MediaStore = defs.resources["media_store"]  # type: ignore[assignment]
    kinds = [k for k in registry.KINDS if kind is None or k.name == kind]
    state = _decode(cursor) if cursor else {"kinds": {}, "deleted": 0}
    candidates: list[tuple[str, int, str, str]] = []  # (when, tie-break, source, key)
    fetched: dict[str, Any] = {}
    for media_kind in kinds:
        position = state["kinds"].get(media_kind.name)
        if position == "end":
            continue
        page = instance.get_paginated_dynamic_partitions(
            media_kind.partitions.name, limit=limit, ascending=False, cursor=position)
        fetched[media_kind.name] = (position, page)
        newest = "\uffff"
        for order, key in enumerate(page.results):
            try:
                when = media_store.manifest(key).get("ingested_at") or ""
            except (FileNotFoundError, ValueError, OSError):
                when = ""
            # never newer than the row before it: what a page takes of a kind is a prefix of
            # that kind's rows, so its cursor is exact
            newest = min(newest, when)
            candidates.append((newest, -order, media_kind.name, key))
    tombstones = {key: stone for key, stone in media_store.tombstones().items()
                  if kind is None or stone.get("kind") == kind}
    stones = sorted(((stone.get("deleted_at") or "", key) for key, stone in tombstones.items()),
                    reverse=True)
    for when, key in stones[state["deleted"]:state["deleted"] + limit]:
        candidates.append((when, 0, "deleted", key))
    candidates.sort(key=lambda c: (c[0], c[1]), reverse=True)
    chosen = candidates[:limit]
    taken = {source: sum(1 for c in chosen if c[2] == source)
             for source in {c[2] for c in candidates}}
    more = len(candidates) > limit
    next_state = {"kinds": dict(state["kinds"]),
                  "deleted": state["deleted"] + taken.get("deleted", 0)}
    for name, (position, page) in fetched.items():
        n = taken.get(name, 0)
        if n == len(page.results):
            next_state["kinds"][name] = page.cursor if page.has_more else "end"
            more = more or page.has_more
        elif n:  # part of this kind's rows shown: the cursor after exactly n of them
            next_state["kinds"][name] = instance.get_paginated_dynamic_partitions(
                registry.get(name).partitions.name, limit=n, ascending=False,
                cursor=position).cursor
    more = more or len(stones) > next_state["deleted"]
    live = iter(items_status(instance, media_store, [(registry.get(source), key)
                                                     for _, _, source, key in chosen
                                                     if source != "deleted"]))
    items = [deleted_status(key, tombstones[key]) if source == "deleted" else next(live)
             for _, _, source, key in chosen]
    return items, _encode(next_state) if more else None


def _encode(state: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(state, separators=(",", ":")).encode()).decode()


def _decode(cursor: str) -> dict[str, Any]:
    try:
        state = json.loads(base64.urlsafe_b64decode(cursor.encode()))
        if not isinstance(state.get("kinds"), dict) or not isinstance(state.get("deleted"), int):
            raise ValueError
        return state
    except (ValueError, TypeError, AttributeError, binascii.Error) as exc:
        raise ValueError(f"not a cursor from a previous page: {cursor[:40]!r}") from exc


def _iso(timestamp: float) -> str:
    return dt.datetime.fromtimestamp(timestamp, dt.timezone.utc).isoformat(timespec="seconds")
