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
   ``s3://`` source), answered with one ``AddDynamicPartitionsRequest`` per kind and one
   ``RunRequest`` per new item. The run key ``<kind>:<partition key>:v<pipeline version>`` is the
   inbox sensor's, so the same bytes uploaded both ways, or twice, never run twice.
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
from dagster_aws.s3 import S3Resource
from dagster_aws.s3.sensor import get_objects
from pydantic import Field, PrivateAttr

from narra_dagster import PIPELINE_VERSION
from narra_dagster.errors import BadInputError
from narra_dagster.ingest import store_upload
from narra_dagster.jobs import JOBS_BY_KIND
from narra_dagster.partitions import PARTITIONS_BY_KIND
from narra_dagster.resources.media_store import MediaStore
from narra_dagster.sensors.upload import PARTIAL_SUFFIXES, _printable


class S3Inbox(dg.ConfigurableResource):
    """An S3 bucket prefix that the S3 upload sensor watches."""

    s3: S3Resource = Field(description="dagster-aws S3 resource: endpoint, region, credentials.")
    bucket: str = Field(description="Bucket that receives uploads.")
    prefix: str = Field(default="inbox/", description="Key prefix watched for uploads.")
    max_per_tick: int = Field(default=50, ge=1, description="Objects taken per sensor tick.")

    _client = PrivateAttr(default=None)

    @property
    def client(self):
        if self._client is None:
            self._client = self.s3.get_client()
        return self._client

    def list_since(self, since: float) -> list[dict]:
        """Objects under the prefix with ``LastModified`` >= ``since`` (epoch seconds), oldest
        first; folder markers and partial-upload names left out."""
        out = []
        for obj in get_objects(self.bucket, self.prefix, client=self.client):
            name = PurePosixPath(obj["Key"]).name
            if obj["Key"].endswith("/") or not name or name.startswith(".") \
                    or name.endswith(PARTIAL_SUFFIXES):
                continue
            if obj["LastModified"].timestamp() >= since:
                out.append(obj)
        return out


def _uri(inbox: S3Inbox, key: str) -> str:
    return f"s3://{inbox.bucket}/{key}"


@dg.sensor(
    name="s3_upload_sensor",
    jobs=list(JOBS_BY_KIND.values()),
    minimum_interval_seconds=15,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Registers each new object under the S3 inbox prefix as a partition and starts its run.",
)
def s3_upload_sensor(
    context: dg.SensorEvaluationContext, s3_inbox: S3Inbox, media_store: MediaStore
) -> dg.SensorResult:
    cursor = json.loads(context.cursor) if context.cursor else {}
    since = float(cursor.get("since", 0.0))
    taken: dict[str, str] = cursor.get("taken", {})
    seen: dict[str, list] = cursor.get("seen", {})

    listed = s3_inbox.list_since(since)
    fresh = [o for o in listed if taken.get(o["Key"]) != o["ETag"]]
    stable = [o for o in fresh if seen.get(o["Key"]) == [o["Size"], o["ETag"]]]
    picked = stable[: s3_inbox.max_per_tick]
    picked_keys = {o["Key"] for o in picked}

    new_keys: dict[str, list[str]] = {}
    run_requests: list[dg.RunRequest] = []
    rejected = already = 0
    for obj in picked:
        name = PurePosixPath(obj["Key"]).name
        with tempfile.TemporaryDirectory(prefix="narra-s3-") as tmp:
            local = Path(tmp) / "object"
            s3_inbox.client.download_file(s3_inbox.bucket, obj["Key"], str(local))
            try:
                upload = store_upload(local, media_store, source_name=name,
                                      ingested_by=f"s3_upload_sensor {_uri(s3_inbox, obj['Key'])}")
            except BadInputError as exc:
                context.log.warning(f"rejected {_uri(s3_inbox, _printable(obj['Key']))}: [{exc.code}] {exc}")
                rejected += 1
                continue
        partitions = PARTITIONS_BY_KIND[upload.kind]
        keys = new_keys.setdefault(upload.kind, [])
        if upload.partition_key in keys or context.instance.has_dynamic_partition(
                partitions.name, upload.partition_key):
            already += 1
            continue
        keys.append(upload.partition_key)
        run_requests.append(dg.RunRequest(
            run_key=f"{upload.kind}:{upload.partition_key}:v{PIPELINE_VERSION}",
            job_name=JOBS_BY_KIND[upload.kind].name,
            partition_key=upload.partition_key,
            tags={"narra/source_name": _printable(upload.source_name)[:63] or "-",
                  "narra/kind": upload.kind},
        ))

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
    summary = (f"{len(run_requests)} new, {already} already known, {rejected} rejected, "
               f"{len(new_seen) - waiting} not yet stable, {waiting} waiting for the next tick")
    context.log.info(summary)
    return dg.SensorResult(
        run_requests=run_requests,
        dynamic_partitions_requests=[
            PARTITIONS_BY_KIND[kind].build_add_request(keys)  # type: ignore[index]
            for kind, keys in new_keys.items() if keys
        ],
        cursor=json.dumps({"since": new_since, "taken": new_taken, "seen": new_seen,
                           "last_tick": summary,
                           "at": dt.datetime.fromtimestamp(time.time(), dt.timezone.utc).isoformat(
                               timespec="seconds")}, sort_keys=True),
        skip_reason=None if run_requests else dg.SkipReason(f"nothing new: {summary}"),
    )
