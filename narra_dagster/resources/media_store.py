"""The media store: where uploads and every stage's artifacts live, one folder per partition.

Paths are built only from a validated partition key and from artifact names chosen by the code
(``source``, ``audio.wav``, ``transcript.json``...), never from a user's file name, so a hostile
name such as ``../../etc/passwd.mp4`` cannot escape the store. Every write goes to a temporary
name in the same folder and is renamed into place (``os.replace`` is atomic on POSIX), so a crash
leaves either the old artifact or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import glob
import json
import os
import re
import shutil
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field

from narra_dagster import settings
from narra_dagster.core.media import is_partition_key

_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")

SOURCE = "source"
TOMBSTONES = "_deleted"  # <root>/_deleted/<key>.json: never a partition key, so never an item
VERSIONS = "_versions"  # <root>/_versions/<key>.json: items deleted and uploaded again
MANIFEST = "manifest.json"


def _check(key: str, name: str) -> None:
    if not is_partition_key(key):
        raise ValueError(f"not a partition key: {key!r}")
    if not _NAME.match(name) or ".." in name:
        raise ValueError(f"not an artifact name: {name!r}")


class MediaStore(dg.ConfigurableResource, ABC):
    """Interface of a content-addressed media store (local folder here; S3 in production).

    Artifacts are addressed by ``(partition_key, name)``. ``partition_key`` must be 16 lowercase
    hex digits and ``name`` a short lowercase artifact name; anything else raises ``ValueError``.
    """

    @abstractmethod
    def local_path(self, key: str, name: str) -> Path:
        """Return a local filesystem path holding the artifact, for libraries that need one.

        Raises:
            FileNotFoundError: when the artifact does not exist.
        """

    @abstractmethod
    @contextlib.contextmanager
    def writer(self, key: str, name: str) -> Iterator[Path]:
        """Yield a temporary local path to write the artifact to; on a clean exit it is moved
        into place atomically, on an exception it is deleted and nothing changes."""

    @abstractmethod
    def exists(self, key: str, name: str) -> bool:
        """True when the artifact exists."""

    @abstractmethod
    def uri(self, key: str, name: str) -> str:
        """A location a person can open (a path or an ``s3://`` URL), for metadata."""

    def put_file(self, key: str, name: str, source: Path) -> int:
        """Copy a local file into the store atomically; return its size in bytes."""
        with self.writer(key, name) as tmp:
            shutil.copyfile(source, tmp)
            return tmp.stat().st_size

    def write_bytes(self, key: str, name: str, data: bytes) -> int:
        """Write bytes atomically; return the size in bytes."""
        with self.writer(key, name) as tmp:
            tmp.write_bytes(data)
        return len(data)

    def write_json(self, key: str, name: str, value: Any) -> int:
        """Write a JSON document atomically (UTF-8, indented); return the size in bytes."""
        return self.write_bytes(key, name, json.dumps(value, indent=1, ensure_ascii=False).encode())

    def read_bytes(self, key: str, name: str) -> bytes:
        """Return an artifact's bytes. Raises ``FileNotFoundError`` when it does not exist."""
        return self.local_path(key, name).read_bytes()

    def read_json(self, key: str, name: str) -> Any:
        """Return a JSON artifact. Raises ``FileNotFoundError`` when it does not exist."""
        return json.loads(self.read_bytes(key, name))

    @abstractmethod
    def probe(self) -> str:
        """Check the store can be written now (write and remove a small object); return where.

        Raises:
            OSError (or the backend's client error): when it cannot.
        """

    @abstractmethod
    def delete_item(self, key: str) -> int:
        """Remove everything stored for one item (its upload and every artifact); return how
        many files went (0 when nothing was there).

        Raises:
            ValueError: when ``key`` is not a partition key.
        """

    @abstractmethod
    def write_tombstone(self, key: str, record: dict[str, Any]) -> None:
        """Record that an item was deleted (who, when, its names): the one thing kept of it,
        outside its folder, so status can say "deleted" instead of "unknown"."""

    @abstractmethod
    def tombstones(self) -> dict[str, dict[str, Any]]:
        """Partition key -> tombstone record, of every deleted item."""

    @abstractmethod
    def take_tombstone(self, key: str) -> dict[str, Any] | None:
        """Remove and return an item's tombstone (its bytes were uploaded again), or None.
        A store that keeps versions (:meth:`version`) records here that a new version of the
        item begins."""

    def tombstone(self, key: str) -> dict[str, Any] | None:
        """The tombstone of item ``key`` when it is deleted now, else None. Stages ask it before
        and after they write (:mod:`narra_dagster.core.stage`); a store should answer it with
        one lookup (this default lists every tombstone)."""
        return self.tombstones().get(key)

    def version(self, key: str) -> dict[str, Any] | None:
        """The current version of an item deleted before and uploaded again:
        ``{"version": n (2 for the first re-upload), "since": the deletion's time, seconds
        since the epoch}``; None for an item never deleted (version 1), or for a store that
        does not keep versions. Status counts only the runs and materializations of the
        current version (:mod:`narra_dagster.app.status`)."""
        return None

    def forget_version(self, key: str) -> None:
        """Drop the version record of ``key`` (its deletion's tombstone carries the number)."""

    def manifest(self, key: str) -> dict[str, Any]:
        """Return what was recorded at ingest: kind, source name, size, SHA-256, time."""
        return self.read_json(key, MANIFEST)


def next_version(tombstone: dict[str, Any]) -> dict[str, Any]:
    """The version record that begins when a deleted item's bytes are uploaded again:
    ``{"version": the deleted one's + 1, "since": the deletion's time, seconds since the
    epoch}`` (:meth:`MediaStore.version`).

    Args:
        tombstone: the deletion's record (``deleted_at_s``, or the older ``deleted_at`` ISO
            time; ``version``, 1 when absent).
    """
    since = tombstone.get("deleted_at_s")
    if not isinstance(since, (int, float)):
        try:  # a tombstone written before deletions recorded the exact time
            since = dt.datetime.fromisoformat(tombstone.get("deleted_at", "")).timestamp()
        except (TypeError, ValueError):
            since = time.time()
    return {"version": int(tombstone.get("version") or 1) + 1, "since": since}


# A temporary file this old was left by a writer that died (SIGKILL, power loss) before its
# cleanup ran; a live write of one artifact never takes this long.
ORPHAN_AGE_S = 3600.0


def _remove_orphans(folder: Path, name: str) -> int:
    """Delete temporary files of artifact ``name`` in ``folder`` older than
    :data:`ORPHAN_AGE_S` seconds; return how many. Errors (a file removed meanwhile) are ignored."""
    removed = 0
    cutoff = time.time() - ORPHAN_AGE_S
    for tmp in folder.glob(f".{glob.escape(name)}.*.tmp"):
        try:
            if tmp.stat().st_mtime < cutoff:
                tmp.unlink()
                removed += 1
        except OSError:
            continue
    return removed


class LocalMediaStore(MediaStore):
    """Media store in a local folder: ``<root>/<partition_key>/<artifact>``."""

    root: str = Field(
        default_factory=lambda: str(settings.media_dir()),
        description="Folder of the store; default $NARRA_HOME/media.",
    )

    def probe(self) -> str:
        settings.private_dir(Path(self.root))
        with tempfile.NamedTemporaryFile(dir=self.root, prefix=".health-", suffix=".tmp") as fh:
            fh.write(b"ok")
            fh.flush()
        return self.root

    def delete_item(self, key: str) -> int:
        _check(key, SOURCE)
        folder = self._dir(key)
        # Renamed away first, so a reader never sees a half-deleted item under its key; a name
        # of its own per call, as a deletion and a stage refusing to write may both remove it.
        doomed = folder.with_name(f".deleting-{key}-{os.getpid()}-{os.urandom(4).hex()}")
        try:
            os.replace(folder, doomed)
        except FileNotFoundError:  # nothing there, or removed by another caller just now
            return 0
        count = sum(1 for p in doomed.rglob("*") if p.is_file())
        shutil.rmtree(doomed, ignore_errors=True)
        return count

    def write_tombstone(self, key: str, record: dict[str, Any]) -> None:
        _check(key, SOURCE)
        folder = Path(self.root) / TOMBSTONES
        settings.private_dir(folder)
        fd, tmp = tempfile.mkstemp(prefix=f".{key}.", suffix=".tmp", dir=folder)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(record, fh)
        os.replace(tmp, folder / f"{key}.json")

    def tombstones(self) -> dict[str, dict[str, Any]]:
        folder = Path(self.root) / TOMBSTONES
        if not folder.exists():
            return {}
        return {p.stem: json.loads(p.read_text(encoding="utf-8"))
                for p in folder.glob("*.json") if is_partition_key(p.stem)}

    def take_tombstone(self, key: str) -> dict[str, Any] | None:
        record = self._read_record(TOMBSTONES, key)
        if record is None:
            return None
        path = Path(self.root) / TOMBSTONES / f"{key}.json"
        # A new version of the item begins: recorded before the tombstone goes, so a crash in
        # between leaves the item deleted, never a live item whose old runs count as its own.
        self._write_record(VERSIONS, key, next_version(record))
        path.unlink(missing_ok=True)
        return record

    def tombstone(self, key: str) -> dict[str, Any] | None:
        return self._read_record(TOMBSTONES, key)

    def version(self, key: str) -> dict[str, Any] | None:
        try:
            return self._read_record(VERSIONS, key)
        except ValueError:  # a torn record: the item reads as version 1
            return None

    def _read_record(self, folder_name: str, key: str) -> dict[str, Any] | None:
        _check(key, SOURCE)
        try:
            return json.loads((Path(self.root) / folder_name / f"{key}.json")
                              .read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None

    def forget_version(self, key: str) -> None:
        _check(key, SOURCE)
        (Path(self.root) / VERSIONS / f"{key}.json").unlink(missing_ok=True)

    def _write_record(self, folder_name: str, key: str, record: dict[str, Any]) -> None:
        folder = Path(self.root) / folder_name
        settings.private_dir(folder)
        fd, tmp = tempfile.mkstemp(prefix=f".{key}.", suffix=".tmp", dir=folder)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(record, fh)
        os.replace(tmp, folder / f"{key}.json")

    def _dir(self, key: str) -> Path:
        return Path(self.root) / key

    def local_path(self, key: str, name: str) -> Path:
        _check(key, name)
        path = self._dir(key) / name
        if not path.exists():
            raise FileNotFoundError(f"{name} of {key} is not in the media store ({path})")
        return path

    @contextlib.contextmanager
    def writer(self, key: str, name: str) -> Iterator[Path]:
        _check(key, name)
        folder = self._dir(key)
        settings.private_dir(folder)
        _remove_orphans(folder, name)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            yield tmp
            os.replace(tmp, folder / name)
        finally:
            tmp.unlink(missing_ok=True)

    def exists(self, key: str, name: str) -> bool:
        _check(key, name)
        return (self._dir(key) / name).exists()

    def uri(self, key: str, name: str) -> str:
        _check(key, name)
        return str(self._dir(key) / name)
