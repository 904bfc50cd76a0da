"""Taking an uploaded file into the media store: the step shared by the sensors and the
application layer (``narra process``, ``narra ingest``)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import dagster as dg

from narra_dagster import registry
from narra_dagster.core.batch import batch_run_request, plan_batches
from narra_dagster.core.errors import BadInputError
from narra_dagster.core.kind import MediaKind
from narra_dagster.core.media import KEY_LENGTH, file_sha256
from narra_dagster.core.stage import name_fits, names_of
from narra_dagster.resources.media_store import MANIFEST, SOURCE, MediaStore

MAX_UPLOAD_BYTES = 20 * 1024**3  # 20 GiB: far beyond any clip, short of filling a disk by mistake


@dataclass(frozen=True)
class Upload:
    """An upload taken into the media store."""

    partition_key: str
    kind: str
    source_name: str
    size_bytes: int
    sha256: str
    renamed_to_fit: bool = False
    """The item had only names claiming another kind, and this upload gave it one that fits:
    it failed only because of its name and should be processed again."""
    restored_after: str | None = None
    """When the item had been deleted: the time of that deletion (its bytes are back, a new
    item to process from scratch)."""


def classify_upload(path: Path) -> MediaKind:
    """Return the kind of a file that narra can process.

    Raises:
        BadInputError: ``empty_file`` for 0 bytes (rejected before it becomes a partition: every
            empty file has the same content, so it would be one item whatever its name),
            ``unsupported_type`` when the bytes and extension match no supported kind,
            ``too_large`` past 20 GiB.
        OSError: when the file cannot be read.
    """
    size = path.stat().st_size
    if size == 0:
        raise BadInputError("the file is empty (0 bytes): there is nothing to process",
                            code="empty_file")
    if size > MAX_UPLOAD_BYTES:
        raise BadInputError(f"the file is {size} bytes, over the {MAX_UPLOAD_BYTES}-byte limit",
                            code="too_large")
    kind = registry.kind_for_file(path)
    if kind is None:
        raise BadInputError(
            "not a file type narra recognizes (neither its first bytes nor its extension match "
            f"{' or '.join(k.noun for k in registry.KINDS)})", code="unsupported_type")
    return kind


def store_upload(path: Path, media_store: MediaStore, *, source_name: str | None = None,
                 ingested_by: str = "narra", sha256: str | None = None) -> Upload:
    """Hash a file, copy it into the media store under its partition key, record a manifest.

    Idempotent: the same bytes give the same key, and an item already in the store is not
    copied again. Names are metadata: each new name the same bytes arrive under is added to the
    manifest's ``names``; ``source_name`` stays the first, unless only a later name fits the
    bytes' kind. ``sha256``: the file's digest (hex) when the caller computed it already, as
    the HTTP API does while it receives the bytes; else it is computed here.

    Raises:
        BadInputError: see :func:`classify_upload`.
        OSError: when the file cannot be read or the store cannot be written.
    """
    kind = classify_upload(path).name
    digest = sha256 or file_sha256(path)
    key = digest[:KEY_LENGTH]
    name = source_name if source_name is not None else path.name
    # A name whose bytes are not UTF-8 (Python holds them as surrogates) is kept readable,
    # with U+FFFD for the undecodable bytes: it is metadata, never a path.
    name = name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    tombstone = media_store.take_tombstone(key)
    if not media_store.exists(key, SOURCE):
        size = media_store.put_file(key, SOURCE, path)
    else:
        size = path.stat().st_size
    declared = registry.kind_for_extension(name)  # what the name claims, checked by each stage
    now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    entry = {"name": name, "declared_kind": declared.name if declared else None,
             "ingested_by": ingested_by, "ingested_at": now}
    renamed_to_fit = False
    if not media_store.exists(key, MANIFEST):
        media_store.write_json(key, MANIFEST, {
            "partition_key": key, "kind": kind, "declared_kind": entry["declared_kind"],
            "source_name": name, "size_bytes": size, "sha256": digest,
            "ingested_by": ingested_by, "ingested_at": now, "names": [entry],
        })
    else:
        manifest = media_store.manifest(key)
        names = names_of(manifest)
        if name not in {n["name"] for n in names}:
            fitted_before = name_fits(manifest)
            manifest["names"] = [*names, entry]
            renamed_to_fit = not fitted_before and name_fits(manifest)
            if renamed_to_fit:  # shown in search and status: the name that fits, not the wrong one
                manifest["source_name"] = name
            media_store.write_json(key, MANIFEST, manifest)
    return Upload(partition_key=key, kind=kind, source_name=name, size_bytes=size, sha256=digest,
                  renamed_to_fit=renamed_to_fit,
                  restored_after=tombstone.get("deleted_at", "?") if tombstone else None)


class NewItems:
    """What one sensor tick asks Dagster for: the partitions of new contents and their runs.

    A content already a partition (uploaded before, or twice in this tick) adds nothing; so
    does its run key, which is idempotent per item anyway. The new items of one kind become
    batch runs (:func:`narra_dagster.core.batch.plan_batches`: at most 50 items or 30 minutes
    of declared media each); an item alone in its batch, or run again (renamed to fit, restored
    after a delete), gets a per-item run.

    Args:
        instance: the Dagster instance (its partitions say what is new).
        launched_by: the ``narra/launched_by`` tag of the runs (the sensor's name).
    """

    def __init__(self, instance: dg.DagsterInstance, launched_by: str):
        self._instance = instance
        self._launched_by = launched_by
        self._keys: dict[str, list[str]] = {}
        self._first: dict[str, list[tuple[Upload, float | None]]] = {}
        self._again: list[dg.RunRequest] = []
        self.already = 0

    def add(self, upload: Upload, path: Path | None = None) -> bool:
        """Take one stored upload; True when it is a new item (its partition and run asked), or
        an item that failed only because of its name and now has one that fits (run again,
        under a run key naming the fix). ``path``: the file, still readable, so a kind that
        declares durations (:attr:`MediaKind.media_seconds`) can size its batch."""
        kind = registry.get(upload.kind)
        keys = self._keys.setdefault(kind.name, [])
        if upload.partition_key in keys:  # new this tick: its run reads every name it has
            self.already += 1
            return False
        if self._instance.has_dynamic_partition(kind.partitions.name, upload.partition_key):
            self.already += 1
            if upload.renamed_to_fit:
                self._again.append(kind.run_request(upload, reason="renamed"))
                return True
            return False
        keys.append(upload.partition_key)
        if upload.restored_after:
            # An item deleted and uploaded again needs a run key its first upload did not use.
            self._again.append(kind.run_request(upload, reason=f"restored-{upload.restored_after}"))
        else:
            seconds = kind.media_seconds(path) if kind.media_seconds and path else None
            self._first.setdefault(kind.name, []).append((upload, seconds))
        return True

    @property
    def run_requests(self) -> list[dg.RunRequest]:
        """The tick's run requests: batch runs of new items per kind, then per-item runs."""
        out: list[dg.RunRequest] = []
        for kind_name, items in self._first.items():
            kind = registry.get(kind_name)
            uploads = {u.partition_key: u for u, _ in items}
            for keys in plan_batches([(u.partition_key, s) for u, s in items]):
                out.append(kind.run_request(uploads[keys[0]]) if len(keys) == 1
                           else batch_run_request(kind, keys, self._launched_by))
        return out + self._again

    @property
    def new_items(self) -> int:
        """Items this tick asks a run for."""
        return sum(len(items) for items in self._first.values()) + len(self._again)

    def sensor_result(self, cursor: str, summary: str) -> dg.SensorResult:
        """The tick's ``SensorResult``: one add request per kind, the run requests, the cursor,
        and a skip reason saying ``summary`` when nothing is new."""
        run_requests = self.run_requests
        return dg.SensorResult(
            run_requests=run_requests,
            dynamic_partitions_requests=[registry.get(kind).partitions.build_add_request(keys)
                                         for kind, keys in self._keys.items() if keys],
            cursor=cursor,
            skip_reason=None if run_requests else dg.SkipReason(f"nothing new: {summary}"),
        )
