"""The S3 upload sensor: objects put under a bucket prefix become partitions and runs.

One tick:

1. List the prefix (dagster-aws ``get_objects``: every page of ``ListObjectsV2``, oldest first)
   and keep objects modified at or after the cursor's ``since`` (S3 ``LastModified`` has 1-second
   resolution, so the bound is inclusive and ``taken`` remembers what was already taken then).
2. An object is taken once its size and ETag are the same as at the previous tick (``seen`` in
   the cursor): an uploader that overwrites a key, or a tool that writes a placeholder first,
   is waited for. At most ``max_per_tick`` objects, oldest first.
3. Each taken object is downloaded to a temporary file and stored like an inbox file
   (``store_upload``: content hash -> partition key, copy into the media store, manifest with
   ``s3://`` source), answered with one ``AddDynamicPartitionsRequest`` per kind and the new
   items' runs, batched per kind as the inbox sensor batches them. Only new partitions get a
   run, so the same bytes uploaded both ways, or twice, never run twice.
4. ``since`` moves to the oldest object not yet taken (or the newest listed when all were), so
   an object that was still changing, or over the cap, is listed again next tick.

Objects are never deleted or moved: the bucket's lifecycle rules own their retention.
"""

import datetime as dt
import json
import tempfile
import time
from pathlib import Path, PurePosixPath

import dagster as dg
from narra_dagster import registry
from narra_dagster.core.errors import BadInputError
from narra_dagster.defs.intake.uploads import NewItems, store_upload
from narra_dagster.core.kind import printable
from narra_dagster.resources.media_store import MediaStore


def _uri(inbox, key: str) -> str:
    return f"s3://{inbox.bucket}/{key}"


def s3_upload_tick(context: dg.SensorEvaluationContext, s3_inbox, media_store: MediaStore,
                   ) -> dg.SensorResult:
    """One tick of the S3 upload sensor (see the module docstring); ``s3_inbox`` is an
    :class:`narra_dagster.resources.s3.S3Inbox`."""
    cursor = json.loads(context.cursor) if context.cursor else {}
    since = float(cursor.get("since", 0.0))
    taken: dict[str, str] = cursor.get("taken", {})
    seen: dict[str, list] = cursor.get("seen", {})

    listed = s3_inbox.list_since(since)
    fresh = [o for o in listed if taken.get(o["Key"]) != o["ETag"]]
    stable = [o for o in fresh if seen.get(o["Key"]) == [o["Size"], o["ETag"]]]
    picked = stable[: s3_inbox.max_per_tick]
    picked_keys = {o["Key"] for o in picked}

    new = NewItems(context.instance, "s3_upload_sensor", media_store)
    rejected = 0
    for obj in picked:
        name = PurePosixPath(obj["Key"]).name
        with tempfile.TemporaryDirectory(prefix="narra-s3-") as tmp:
            local = Path(tmp) / "object"
            s3_inbox.client.download_file(s3_inbox.bucket, obj["Key"], str(local))
            try:
                upload = store_upload(local, media_store, source_name=name,
                                      ingested_by=f"s3_upload_sensor {_uri(s3_inbox, obj['Key'])}")
            except BadInputError as exc:
                context.log.warning(f"rejected {_uri(s3_inbox, printable(obj['Key']))}: [{exc.code}] {exc}")
                rejected += 1
                continue
            new.add(upload, local)

    remaining = [o for o in fresh if o["Key"] not in picked_keys]
    if remaining:
        new_since = min(o["LastModified"].timestamp() for o in remaining)
    else:
        new_since = max([since] + [o["LastModified"].timestamp() for o in listed])
    modified = {o["Key"]: o["LastModified"].timestamp() for o in listed}
    new_taken = {k: e for k, e in taken.items() if modified.get(k, 0.0) >= new_since}
    new_taken.update({o["Key"]: o["ETag"] for o in picked})
    new_seen = {o["Key"]: [o["Size"], o["ETag"]] for o in remaining}
    waiting = len(remaining) - sum(1 for o in remaining if seen.get(o["Key"]) != [o["Size"], o["ETag"]])
    summary = (f"{new.new_items} new in {len(new.run_requests)} runs, {new.already} already known, "
               f"{rejected} rejected, {len(new_seen) - waiting} not yet stable, {waiting} waiting for the next tick")
    context.log.info(summary)
    return new.sensor_result(
        json.dumps({"since": new_since, "taken": new_taken, "seen": new_seen,
                    "last_tick": summary,
                    "at": dt.datetime.fromtimestamp(time.time(), dt.timezone.utc).isoformat(
                        timespec="seconds")}, sort_keys=True),
        summary)


def build_s3_upload_sensor() -> dg.SensorDefinition:
    """The S3 upload sensor; it needs the ``s3_inbox`` resource (``NARRA_S3_INBOX_PREFIX``), so
    :func:`narra_dagster.definitions.build_defs` adds it only when that resource exists.
    (Built in a function so that the defs folder loader, and a base install without
    dagster-aws, never meet it.)"""
    from narra_dagster.resources.s3 import S3Inbox

    @dg.sensor(
        name="s3_upload_sensor",
        jobs=registry.jobs(),
        minimum_interval_seconds=15,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Registers each new object under the S3 inbox prefix as a partition and starts its run.",
    )
    def s3_upload_sensor(
        context: dg.SensorEvaluationContext, s3_inbox: S3Inbox, media_store: MediaStore
    ) -> dg.SensorResult:
        return s3_upload_tick(context, s3_inbox, media_store)

    return s3_upload_sensor
