"""An item's lifecycle after its upload: retry a failed item, delete an item completely.

Both are idempotent: retrying an item that is not failed, or deleting one already deleted,
changes nothing and says so. Deletion is the compensation step of the platform: whatever an
upload left (stored upload and artifacts, rows in every LanceDB table, catalog entry, dynamic
partition), a person can take it back; a tombstone records that it was deleted, and
``analysis.deleted`` is published. The same bytes uploaded again are a new item (the tombstone
goes, and the upload runs again).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass
from typing import Any

import dagster as dg

from narra_dagster import registry
from narra_dagster.app.processing import ProcessResult, execute_item
from narra_dagster.app.status import partition_status
from narra_dagster.core.kind import MediaKind
from narra_dagster.core.media import is_partition_key
from narra_dagster.resources.events import make_event

DELETED = "analysis.deleted"


@dataclass
class LifecycleResult:
    """What ``retry`` or ``delete`` did to one id: ``status`` is ``succeeded`` | ``failed`` |
    ``skipped`` (nothing to do) | ``deleted`` | ``unknown`` (no such item)."""

    media_id: str
    status: str
    kind: str | None = None
    detail: str = ""
    error_class: str | None = None
    run_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def find_item(instance: dg.DagsterInstance, media_id: str) -> tuple[str, MediaKind] | None:
    """The (partition key, kind) of an item given its key or an unambiguous prefix of it (at
    least 6 hex digits), or None when no partition matches.

    Raises:
        ValueError: when the prefix matches several items.
    """
    matches = []
    for kind in registry.KINDS:
        if is_partition_key(media_id):
            if instance.has_dynamic_partition(kind.partitions.name, media_id):
                matches.append((media_id, kind))
        elif len(media_id) >= 6:
            matches += [(key, kind) for key in instance.get_dynamic_partitions(kind.partitions.name)
                        if key.startswith(media_id)]
    if len(matches) > 1:
        raise ValueError(f"{media_id!r} matches {len(matches)} items; give more of the media id")
    return matches[0] if matches else None


def retry_items(media_ids: list[str], instance: dg.DagsterInstance,
                defs: dg.Definitions) -> list[LifecycleResult]:
    """Run the whole chain of each failed item again, now, in this process (its per-item job,
    recorded on ``instance``). An item that is not failed is left alone (``skipped``)."""
    out = []
    for media_id in media_ids:
        found = _find(instance, media_id, out)
        if found is None:
            continue
        key, kind = found
        (item,) = partition_status(instance, defs, key)
        if item["state"] != "failed":
            out.append(LifecycleResult(key, "skipped", kind.name, f"not failed: {item['state']}"))
            continue
        result = ProcessResult(path="", source_name=item["source_name"] or key,
                               partition_key=key, kind=kind.name)
        execute_item(result, instance, defs, launched_by="narra retry")
        out.append(LifecycleResult(key, result.status, kind.name, result.error or "",
                                   result.error_class, result.run_id))
    return out


def delete_items(media_ids: list[str], instance: dg.DagsterInstance,
                 defs: dg.Definitions) -> list[LifecycleResult]:
    """Remove each item completely: its rows in the search index and the image tables, its
    stored upload and artifacts and its dynamic partition; then write its tombstone and publish
    ``analysis.deleted``. An id already deleted is ``skipped``."""
    resources = defs.resources
    tombstones = resources["media_store"].tombstones()
    out = []
    for media_id in media_ids:
        if is_partition_key(media_id) and media_id in tombstones and not _exists(instance, media_id):
            out.append(LifecycleResult(media_id, "skipped", tombstones[media_id].get("kind"),
                                       "already deleted"))
            continue
        found = _find(instance, media_id, out)
        if found is None:
            continue
        key, kind = found
        out.append(_delete(key, kind, instance, resources))
    return out


def _delete(key: str, kind: MediaKind, instance: dg.DagsterInstance,
            resources: dict) -> LifecycleResult:
    store = resources["media_store"]
    try:
        manifest = store.manifest(key)
    except FileNotFoundError:
        manifest = {}
    rows = resources["search_index"].delete_item(key)
    if "image_index" in resources:
        rows += resources["image_index"].delete_item(key)
    files = store.delete_item(key)
    # Dagster's open-source event log storages cannot wipe single partitions (1.13 raises
    # NotImplementedError), so the runs and materializations stay in the orchestrator's history,
    # like any run record; the partition goes, and with it the item from every partition view.
    instance.delete_dynamic_partition(kind.partitions.name, key)
    now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    names = [n["name"] for n in manifest.get("names", [])] or [manifest.get("source_name")]
    store.write_tombstone(key, {"media_id": key, "kind": kind.name, "names": names,
                                "deleted_at": now})
    if "event_sink" in resources:
        resources["event_sink"].publish([make_event(
            DELETED, run_id=f"delete-{key}", media_id=key, kind=kind.name, occurred_at=now,
            source_name=manifest.get("source_name"),
            metadata={"index_rows": rows, "files": files})])
    return LifecycleResult(key, "deleted", kind.name,
                           f"{files} stored files and {rows} index rows removed")


def _exists(instance: dg.DagsterInstance, key: str) -> bool:
    return any(instance.has_dynamic_partition(k.partitions.name, key) for k in registry.KINDS)


def _find(instance, media_id: str, out: list[LifecycleResult]) -> tuple[str, MediaKind] | None:
    try:
        found = find_item(instance, media_id)
    except ValueError as exc:
        out.append(LifecycleResult(media_id, "unknown", detail=str(exc)))
        return None
    if found is None:
        out.append(LifecycleResult(media_id, "unknown", detail="no item has this media id"))
    return found
