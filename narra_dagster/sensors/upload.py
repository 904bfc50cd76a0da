"""The upload sensor: files dropped into the inbox become partitions and runs.

One tick:

1. Files registered by the previous tick (listed in the cursor with their partition key, size
   and modification time) are moved from the inbox to ``inbox/.processed/<partition key>/``. They are moved only now, after Dagster has committed
   that tick's partitions, run requests and cursor together, so a daemon crash mid-tick can never
   leave a file moved but unregistered: nothing a user dropped is lost.
2. Stable files (unchanged for ``stable_seconds``; not hidden, not ``.part``/``.tmp``) are taken,
   oldest first, up to ``max_per_tick``: hashed into a partition key, copied into the media store,
   and answered with one ``AddDynamicPartitionsRequest`` per kind and one ``RunRequest`` per new
   item whose ``run_key`` is ``<kind>:<key>:v<pipeline version>``. A file whose bytes are already
   a partition starts no second run. A file of an unknown type is moved to
   ``inbox/.rejected/`` with a ``.reason.txt`` beside it.
"""


import json
import os
import shutil
import time
from pathlib import Path

import dagster as dg
from pydantic import Field

from narra_dagster import PIPELINE_VERSION, settings
from narra_dagster.jobs import JOBS_BY_KIND
from narra_dagster.errors import BadInputError
from narra_dagster.ingest import store_upload
from narra_dagster.partitions import PARTITIONS_BY_KIND
from narra_dagster.resources.media_store import MediaStore

PARTIAL_SUFFIXES = (".part", ".tmp", ".partial", ".crdownload", ".download", "~")


class LocalInbox(dg.ConfigurableResource):
    """A local inbox folder that the upload sensor watches."""

    path: str = Field(default_factory=lambda: str(settings.inbox_dir()),
                      description="Folder watched for uploads; default $NARRA_HOME/inbox.")
    stable_seconds: float = Field(
        default=2.0, ge=0.0,
        description="A file is taken once it has not been modified for this long (seconds).")
    max_per_tick: int = Field(default=50, ge=1, description="Files taken per sensor tick.")

    @property
    def processed_dir(self) -> Path:
        return Path(self.path) / ".processed"

    @property
    def rejected_dir(self) -> Path:
        return Path(self.path) / ".rejected"

    def candidates(self, now: float) -> tuple[list[os.DirEntry], int]:
        """Return (stable files oldest first, number of files still being written)."""
        root = Path(self.path)
        root.mkdir(parents=True, exist_ok=True)
        stable, unstable = [], 0
        with os.scandir(root) as entries:
            for entry in entries:
                if entry.name.startswith(".") or entry.name.endswith(PARTIAL_SUFFIXES):
                    continue
                if not entry.is_file(follow_symlinks=False):
                    continue
                if now - entry.stat().st_mtime < self.stable_seconds:
                    unstable += 1
                    continue
                stable.append(entry)
        stable.sort(key=lambda e: (e.stat().st_mtime, e.name))
        return stable, unstable

    def move_processed(self, name: str, key: str, size: int, mtime_ns: int) -> Path | None:
        """Move ``inbox/<name>`` to ``.processed/<key>/<name>`` if it is still the file that was
        registered (same size in bytes and modification time in ns). Returns None, and moves
        nothing, when it is gone or was replaced since: a replaced file is then a new upload."""
        source = Path(self.path) / name
        try:
            stat = source.stat()
        except FileNotFoundError:
            return None
        if (stat.st_size, stat.st_mtime_ns) != (size, mtime_ns):
            return None
        target = self.processed_dir / key / name
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(source, target)
        return target

    def reject(self, name: str, reason: str) -> Path:
        """Move ``inbox/<name>`` to ``.rejected/`` (never overwriting) with a reason file."""
        self.rejected_dir.mkdir(parents=True, exist_ok=True)
        target = self.rejected_dir / name
        if target.exists():
            target = self.rejected_dir / f"{int(time.time() * 1000)}-{name}"
        shutil.move(str(Path(self.path) / name), target)
        target.with_name(target.name + ".reason.txt").write_text(reason + "\n", encoding="utf-8")
        return target


def _printable(name: str) -> str:
    return name.encode("unicode_escape").decode("ascii")[:200]


@dg.sensor(
    name="upload_sensor",
    jobs=list(JOBS_BY_KIND.values()),
    minimum_interval_seconds=5,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Registers each new file in the inbox as a partition and starts its run.",
)
def upload_sensor(
    context: dg.SensorEvaluationContext, inbox: LocalInbox, media_store: MediaStore
) -> dg.SensorResult:
    cursor = json.loads(context.cursor) if context.cursor else {}
    moved = 0
    for name, (key, size, mtime_ns) in cursor.get("registered", {}).items():
        if inbox.move_processed(name, key, size, mtime_ns) is not None:
            moved += 1

    stable, unstable = inbox.candidates(time.time())
    registered: dict[str, tuple[str, int, int]] = {}
    new_keys: dict[str, list[str]] = {}
    run_requests: list[dg.RunRequest] = []
    rejected = already = 0
    for entry in stable[: inbox.max_per_tick]:
        stat = entry.stat()
        try:
            upload = store_upload(Path(entry.path), media_store, ingested_by="upload_sensor")
        except BadInputError as exc:
            inbox.reject(entry.name, f"[{exc.code}] {exc}")
            context.log.warning(f"rejected {_printable(entry.name)}: [{exc.code}] {exc}")
            rejected += 1
            continue
        except OSError as exc:  # vanished or unreadable mid-tick: try again next tick
            context.log.warning(f"could not read {_printable(entry.name)} yet: {exc}")
            continue
        registered[entry.name] = (upload.partition_key, stat.st_size, stat.st_mtime_ns)
        partitions = PARTITIONS_BY_KIND[upload.kind]
        keys = new_keys.setdefault(upload.kind, [])
        if upload.partition_key in keys or context.instance.has_dynamic_partition(
            partitions.name, upload.partition_key
        ):
            already += 1
            continue
        keys.append(upload.partition_key)
        run_requests.append(
            dg.RunRequest(
                run_key=f"{upload.kind}:{upload.partition_key}:v{PIPELINE_VERSION}",
                job_name=JOBS_BY_KIND[upload.kind].name,
                partition_key=upload.partition_key,
                tags={"narra/source_name": _printable(upload.source_name)[:63] or "-",
                      "narra/kind": upload.kind},
            )
        )

    waiting = max(0, len(stable) - inbox.max_per_tick)
    summary = (f"{len(run_requests)} new, {already} already known, {rejected} rejected, "
               f"{moved} moved to processed, {unstable} still being written, {waiting} waiting")
    context.log.info(summary)
    new_cursor = json.dumps({"registered": registered, "last_tick": summary}, sort_keys=True)
    return dg.SensorResult(
        run_requests=run_requests,
        dynamic_partitions_requests=[
            PARTITIONS_BY_KIND[kind].build_add_request(keys)  # type: ignore[index]
            for kind, keys in new_keys.items() if keys
        ],
        cursor=new_cursor,
        skip_reason=None if run_requests else dg.SkipReason(f"nothing new: {summary}"),
    )
