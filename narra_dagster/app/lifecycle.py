"""An item's lifecycle after its upload: retry a failed item, delete an item completely.

Both are idempotent: retrying an item that is not failed, or deleting one already deleted,
changes nothing and says so. Deletion is the compensation step of the platform: whatever an
upload left (stored upload and artifacts, rows in every LanceDB table, catalog entry and
references in other images, the inbox's processed copy, pending run request, dynamic partition),
a person can take it back, also while the item is being uploaded again or processed (see
:func:`_delete`); a tombstone records that it was deleted, and ``analysis.deleted`` is
published. The same bytes uploaded again are a new version of the item (the tombstone goes, the
upload runs again, and its state comes from its own runs only).
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
from narra_dagster.defs.image.references import forget_image
from narra_dagster.defs.intake.requests import withdraw_request
from narra_dagster.resources.events import make_event
from narra_dagster.resources.item_lock import ItemBusy, item_lock

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
    """Remove each item completely (see :func:`_delete`); then its tombstone stays and
    ``analysis.deleted`` is published. An id already deleted is ``skipped``; an item another
    request held locked for 30 s is ``failed`` with ``error_class`` ``item_busy`` (nothing
    removed; ask again)."""
    resources = defs.resources
    store = resources["media_store"]
    out = []
    for media_id in media_ids:
        if is_partition_key(media_id) and not _exists(instance, media_id):
            stone = store.tombstone(media_id)
            if stone is not None:
                out.append(LifecycleResult(media_id, "skipped", stone.get("kind"),
                                           "already deleted"))
                continue
        found = _find(instance, media_id, out)
        if found is None:
            continue
        key, kind = found
        try:
            out.append(_delete(key, kind, instance, resources))
        except ItemBusy as exc:
            out.append(LifecycleResult(key, "failed", kind.name, str(exc), exc.code))
    return out


def _delete(key: str, kind: MediaKind, instance: dg.DagsterInstance,
            resources: dict) -> LifecycleResult:
    """Delete one item, as a compensation that completes: under the item's lock (which every
    intake door and each stage's check after writing take,
    :mod:`narra_dagster.resources.item_lock`), in this order:

    1. the tombstone, first: from then on every stage of the item refuses to start or to keep
       what it wrote (``deleted``, :func:`narra_dagster.core.stage.refuse_if_deleted`), and
       an upload of the same bytes becomes a new version;
    2. its pending run request (the sensor reads requests under the same lock) and its queued
       per-item runs (canceled; a run already started ends ``deleted`` at its next stage);
    3. its rows in the search index and the image tables, its stored upload and artifacts,
       the inbox's ``.processed`` copy of it, its dynamic partition;
    4. after the lock: the item taken out of the other images' neighbours, duplicates and
       catalog rows (:func:`narra_dagster.defs.image.references.forget_image`).

    A deletion that dies midway leaves the tombstone and the partition: asked again, it runs
    the remaining steps (each is idempotent).

    Raises:
        ItemBusy: another request held the item for 30 s; nothing was removed.
    """
    store = resources["media_store"]
    image_index = resources.get("image_index")
    with item_lock(key):
        if not instance.has_dynamic_partition(kind.partitions.name, key):  # deleted meanwhile
            return LifecycleResult(key, "skipped", kind.name, "already deleted")
        try:
            manifest = store.manifest(key)
        except (FileNotFoundError, ValueError):
            manifest = {}
        now = dt.datetime.now(dt.timezone.utc)
        stamp = now.isoformat(timespec="milliseconds")
        previous = store.tombstone(key) or {}  # a deletion that died midway: same record
        version = (store.version(key) or {}).get("version") or previous.get("version") or 1
        names = [n["name"] for n in manifest.get("names", [])] or previous.get("names") or [
            manifest.get("source_name")]
        stone = {"media_id": key, "kind": kind.name, "names": names,
                 "deleted_at": previous.get("deleted_at") or stamp,
                 "deleted_at_s": previous.get("deleted_at_s") or now.timestamp(),
                 "version": version}
        store.write_tombstone(key, stone)
        withdrawn = withdraw_request(key)
        canceled = _cancel_queued_runs(instance, key)
        referrers = image_index.referencing(key) if image_index is not None else []
        rows = resources["search_index"].delete_item(key)
        if image_index is not None:
            rows += image_index.delete_item(key)
        files = store.delete_item(key)
        inbox = resources.get("inbox")
        if inbox is not None and hasattr(inbox, "remove_processed"):
            files += inbox.remove_processed(key)
        # Dagster's open-source event log storages cannot wipe single partitions (1.13 raises
        # NotImplementedError), so the runs and materializations stay in the orchestrator's
        # history; status counts only those of an item's current version (app/status.py).
        instance.delete_dynamic_partition(kind.partitions.name, key)
        store.forget_version(key)  # the tombstone carries the number now
    changed = (forget_image(key, referrers, store, image_index)
               if image_index is not None and referrers else 0)
    if "event_sink" in resources:
        resources["event_sink"].publish([make_event(
            DELETED, run_id=f"delete-{key}-v{version}", media_id=key, kind=kind.name,
            occurred_at=stone["deleted_at"], source_name=manifest.get("source_name"),
            metadata={"index_rows": rows, "files": files, "runs_canceled": canceled,
                      "request_withdrawn": withdrawn, "references_removed": changed})])
    detail = f"{files} stored files and {rows} index rows removed"
    if canceled or withdrawn:
        detail += f", {canceled + withdrawn} waiting runs canceled"
    if changed:
        detail += f", taken out of {changed} other items"
    return LifecycleResult(key, "deleted", kind.name, detail)


def _cancel_queued_runs(instance: dg.DagsterInstance, key: str) -> int:
    """Cancel the item's per-item runs that have not started (queued in the run coordinator);
    a started run, or a batch run that also holds other items, is left to end ``deleted`` at
    the item's next stage. Returns how many were canceled."""
    waiting = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED]
    runs = instance.get_runs(dg.RunsFilter(tags={"dagster/partition": key}, statuses=waiting))
    for run in runs:
        instance.report_run_canceled(run, message=f"item {key} was deleted")
    return len(runs)


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
