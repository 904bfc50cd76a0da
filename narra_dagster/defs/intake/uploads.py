"""Taking an uploaded file into the media store: the step shared by the sensors and the
application layer (``narra process``, ``narra ingest``)."""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import dagster as dg

from narra_dagster import registry
from narra_dagster.core.batch import batch_run_request, plan_batches
from narra_dagster.core.errors import BadInputError
from narra_dagster.core.kind import MediaKind
from narra_dagster.core.media import KEY_LENGTH, file_sha256
from narra_dagster.core.stage import name_fits, names_of
from narra_dagster.resources.item_lock import item_lock
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


class ChangedWhileReading(OSError):
    """The file's bytes changed between being hashed and being copied (a writer still at it,
    or someone rewriting it on purpose): nothing was stored under its key. Read it again later
    (the inbox sensor tries it next tick)."""


# O_NONBLOCK: a FIFO named as an upload opens at once (and is then refused) instead of waiting
# for a writer that may never come; it changes nothing for a regular file.
_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
_BLOCK = 1024 * 1024


@contextlib.contextmanager
def _reading(source: Path | BinaryIO) -> Iterator[tuple[BinaryIO, str]]:
    """(an open binary file, the name it came under) for a path (opened here) or an open file
    (the caller's; not closed)."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        with os.fdopen(os.open(path, _OPEN_FLAGS), "rb") as fh:
            yield fh, path.name
    else:
        name = getattr(source, "name", None)
        yield source, Path(name).name if isinstance(name, str) else ""


def _classify(fh: BinaryIO, name: str) -> tuple[MediaKind, os.stat_result]:
    st = os.fstat(fh.fileno())
    if not stat.S_ISREG(st.st_mode):
        raise BadInputError("not a regular file (a folder, FIFO, socket or device): there is "
                            "nothing to store", code="not_a_file")
    if st.st_size == 0:
        raise BadInputError("the file is empty (0 bytes): there is nothing to process",
                            code="empty_file")
    if st.st_size > MAX_UPLOAD_BYTES:
        raise BadInputError(
            f"the file is {st.st_size} bytes, over the {MAX_UPLOAD_BYTES}-byte limit",
            code="too_large")
    kind = registry.kind_for_open_file(fh, name)
    if kind is None:
        raise BadInputError(
            "not a file type narra recognizes (neither its first bytes nor its extension match "
            f"{' or '.join(k.noun for k in registry.KINDS)})", code="unsupported_type")
    return kind, st


def classify_upload(path: Path | BinaryIO, name: str | None = None) -> MediaKind:
    """Return the kind of a file that narra can process.

    Args:
        path: the file's path, or a binary file already open for reading (with a real
            descriptor; its position is not moved).
        name: the name whose extension is the fallback when the bytes say nothing
            recognisable; default the path's (or the open file's) name.

    Raises:
        BadInputError: ``not_a_file`` for a folder, FIFO, socket or device; ``empty_file`` for
            0 bytes (rejected before it becomes a partition: every empty file has the same
            content, so it would be one item whatever its name), ``unsupported_type`` when the
            bytes and extension match no supported kind, ``too_large`` past 20 GiB.
        OSError: when the file cannot be opened or read.
    """
    with _reading(path) as (fh, arrived_as):
        return _classify(fh, name if name is not None else arrived_as)[0]


def _copy_verified(fh: BinaryIO, media_store: MediaStore, key: str, digest: str) -> int:
    """Copy ``fh`` from its start into the store as item ``key``'s source, hashing as it goes;
    the copy is kept only if its SHA-256 is ``digest``. Returns the bytes copied."""
    copied = hashlib.sha256()
    with media_store.writer(key, SOURCE) as tmp:
        with open(tmp, "wb") as out:  # the writer's temporary file, mode 0600
            for block in iter(lambda: os.read(fh.fileno(), _BLOCK), b""):
                copied.update(block)
                out.write(block)
        if copied.hexdigest() != digest:  # raising here leaves nothing stored
            raise ChangedWhileReading(
                f"the file changed while it was read (SHA-256 {digest[:16]}... when hashed, "
                f"{copied.hexdigest()[:16]}... when copied): nothing was stored")
        return tmp.stat().st_size


def store_upload(path: Path | BinaryIO, media_store: MediaStore, *,
                 source_name: str | None = None, ingested_by: str = "narra",
                 sha256: str | None = None) -> Upload:
    """Hash a file, copy it into the media store under its partition key, record a manifest.

    The file is opened once (a path is opened here; an open file is the caller's) and sniffed,
    hashed and copied from that one descriptor, so a name swapped meanwhile for a link to
    another file changes nothing: the inbox sensor passes the file it opened without following
    links (:meth:`narra_dagster.resources.inbox.LocalInbox.open_file`). The copy is hashed as
    it is written and kept only if it has the digest the key came from: a content-addressed
    key always names the bytes stored under it.

    Idempotent: the same bytes give the same key, and an item already in the store is not
    copied again. Names are metadata: each new name the same bytes arrive under is added to the
    manifest's ``names``; ``source_name`` stays the first, unless only a later name fits the
    bytes' kind. ``sha256``: the file's digest (hex) when the caller computed it already, as
    the HTTP API does while it receives the bytes; else it is computed here.

    Args:
        path: the file's path (links in it are followed: the caller named it), or a binary
            file open for reading with a real descriptor (read from its start).
        source_name: the name the file arrived under; default the path's name (an open file's
            ``name`` when it is a string).

    Raises:
        BadInputError: see :func:`classify_upload`.
        ChangedWhileReading: the bytes changed between hashing and copying (an ``OSError``).
        OSError: when the file cannot be read or the store cannot be written.
    """
    with _reading(path) as (fh, arrived_as):
        name = source_name if source_name is not None else arrived_as
        kind_of, st = _classify(fh, name)
        kind = kind_of.name
        if sha256 is None:
            os.lseek(fh.fileno(), 0, os.SEEK_SET)
            sha256 = hashlib.file_digest(fh, "sha256").hexdigest()
        digest = sha256
        key = digest[:KEY_LENGTH]
        # A name whose bytes are not UTF-8 (Python holds them as surrogates) is kept readable,
        # with U+FFFD for the undecodable bytes: it is metadata, never a path.
        name = name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        tombstone = media_store.take_tombstone(key)
        if not media_store.exists(key, SOURCE):
            os.lseek(fh.fileno(), 0, os.SEEK_SET)
            size = _copy_verified(fh, media_store, key, digest)
        else:
            size = st.st_size
    declared = registry.kind_for_extension(name)  # what the name claims, checked by each stage
    now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    # the nouns travel with the upload, so a stage can word its error without the registry
    entry = {"name": name, "declared_kind": declared.name if declared else None,
             "declared_noun": declared.noun if declared else None,
             "ingested_by": ingested_by, "ingested_at": now}
    renamed_to_fit = False
    if not media_store.exists(key, MANIFEST):
        media_store.write_json(key, MANIFEST, {
            "partition_key": key, "kind": kind, "noun": registry.noun(kind),
            "declared_kind": entry["declared_kind"],
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

    Each upload is decided on under its item's lock
    (:func:`narra_dagster.resources.item_lock.item_lock`), which a deletion holds too: when a
    deletion of the same bytes ran between the store and this decision (the upload's tombstone
    back, or its stored files gone), the upload is stored again, now that nothing can
    interleave, and becomes the item's new version.

    Args:
        instance: the Dagster instance (its partitions say what is new).
        launched_by: the ``narra/launched_by`` tag of the runs (the sensor's name).
        media_store: the store the uploads went to; without it an upload a deletion removed
            between its store and :meth:`add` is not stored again.
    """

    def __init__(self, instance: dg.DagsterInstance, launched_by: str,
                 media_store: MediaStore | None = None):
        self._instance = instance
        self._launched_by = launched_by
        self._media_store = media_store
        self._keys: dict[str, list[str]] = {}
        self._first: dict[str, list[tuple[Upload, float | None]]] = {}
        self._again: list[dg.RunRequest] = []
        self.already = 0

    def add(self, upload: Upload, path: Path | None = None) -> bool:
        """Take one stored upload; True when it is a new item (its partition and run asked), or
        an item that failed only because of its name and now has one that fits (run again,
        under a run key naming the fix). ``path``: the file, still readable, so a kind that
        declares durations (:attr:`MediaKind.media_seconds`) can size its batch, and so an
        upload a deletion removed meanwhile can be stored again.

        Raises:
            ItemBusy: the item stayed locked by a deletion for 30 s (the caller tries the file
                again next tick).
            BadInputError, OSError: from storing the file again (see :func:`store_upload`).
        """
        from narra_dagster.defs.intake.requests import ran_before

        with item_lock(upload.partition_key):
            store = self._media_store
            if store is not None and path is not None and (
                    store.tombstone(upload.partition_key) is not None
                    or not store.exists(upload.partition_key, SOURCE)
                    or not store.exists(upload.partition_key, MANIFEST)):
                upload = store_upload(path, store, source_name=upload.source_name,
                                      ingested_by=self._launched_by, sha256=upload.sha256)
            return self._add(upload, path, ran_before)

    def _add(self, upload: Upload, path: Path | None, ran_before) -> bool:
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
        restored = upload.restored_after
        if restored is None and ran_before(self._instance, upload.partition_key):
            # ran before, no partition now: deleted (its tombstone taken by a store that met
            # the deletion), so not a first run either
            restored = dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")
        if restored:
            # An item deleted and uploaded again needs a run key its first upload did not use.
            self._again.append(kind.run_request(upload, reason=f"restored-{restored}"))
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
