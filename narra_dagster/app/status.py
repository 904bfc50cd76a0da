"""Status: per item, its stages' last materializations and its last run's outcome."""

from __future__ import annotations

import datetime as dt
from typing import Any

import dagster as dg

from narra_dagster import registry
from narra_dagster.core.batch import batch_item_tag, item_results
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


def partition_status(instance: dg.DagsterInstance, defs: dg.Definitions,
                     media_id: str | None = None) -> list[dict[str, Any]]:
    """Per partition: source name and every name, each asset's last materialization, the last
    run's outcome and the item's ``state`` (``registered``, ``queued``/``started``...,
    ``searchable``, ``failed``); then every deleted item (``state`` ``deleted``, from its
    tombstone).

    ``media_id`` may be a prefix of a partition key.
    """
    media_store: MediaStore = defs.resources["media_store"]  # type: ignore[assignment]
    items = []
    for media_kind in registry.KINDS:
        kind = media_kind.name
        chain = [stage.key for stage in media_kind.stages]
        for key in instance.get_dynamic_partitions(media_kind.partitions.name):
            if media_id and not key.startswith(media_id):
                continue
            try:
                manifest = media_store.manifest(key)
            except (FileNotFoundError, ValueError):
                manifest = {}
            source_name = manifest.get("source_name")
            names = [n["name"] for n in names_of(manifest)] if manifest else []
            assets = {}
            for asset in chain:
                record = last_materialization(instance, asset, key)
                assets[asset.to_user_string()] = None if record is None else {
                    "materialized_at": _iso(record.timestamp), "run_id": record.run_id}
            # The item's last run: its own run, or a batch run that listed it (tagged per item).
            runs = [*instance.get_run_records(dg.RunsFilter(tags={"dagster/partition": key}), limit=1),
                    *instance.get_run_records(dg.RunsFilter(tags={batch_item_tag(key): "1"}), limit=1)]
            last_run = None
            if runs:
                run = max(runs, key=lambda r: r.create_timestamp).dagster_run
                status = run.status.value
                error, error_class = (run_failure(instance, run.run_id)
                                      if run.status == dg.DagsterRunStatus.FAILURE else (None, None))
                if run.tags.get(batch_item_tag(key)):  # a batch run: this item's own outcome
                    item = next((i for i in item_results(instance, run.run_id)
                                 if i["partition_key"] == key), None)
                    if item is not None:
                        error, error_class = item["error"], item["error_class"]
                        # isolated: handed to a run of its own, which is queued or starting
                        status = {"succeeded": "SUCCESS", "isolated": "QUEUED"}.get(
                            item["status"], "FAILURE")
                last_run = {"run_id": run.run_id, "job": run.job_name, "status": status,
                            "error": error, "error_class": error_class}
            done = all(assets.values())
            items.append({
                "media_id": key, "kind": kind, "source_name": source_name, "names": names,
                "state": "failed" if last_run and last_run["status"] == "FAILURE"
                else ("searchable" if done else (last_run["status"].lower() if last_run else "registered")),
                "last_run": last_run, "assets": assets,
            })
    listed = {item["media_id"] for item in items}
    for key, stone in sorted(media_store.tombstones().items()):
        if key in listed or (media_id and not key.startswith(media_id)):
            continue  # deleted, then uploaded again: the live item is what counts
        names = stone.get("names") or []
        items.append({"media_id": key, "kind": stone.get("kind"),
                      "source_name": names[0] if names else None, "names": names,
                      "state": "deleted", "deleted_at": stone.get("deleted_at"),
                      "last_run": None, "assets": {}})
    return items


def _iso(timestamp: float) -> str:
    return dt.datetime.fromtimestamp(timestamp, dt.timezone.utc).isoformat(timespec="seconds")
