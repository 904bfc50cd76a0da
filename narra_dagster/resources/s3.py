"""S3 backends (dagster-aws + boto3): the media store and the search index on object storage.

Credentials never appear in configuration files: boto3 and LanceDB take them from the standard
AWS chain (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` or an instance/pod role). The bucket,
prefix and endpoint come from :func:`s3_resources_from_env` (``NARRA_S3_BUCKET``,
``NARRA_S3_PREFIX``, ``NARRA_S3_ENDPOINT_URL``, ``AWS_REGION``).

Atomic writes on S3: a single ``PutObject`` (and a multipart upload, at its
``CompleteMultipartUpload``) makes the whole new object visible at once; a reader sees the old
object or the new one, never part of one, and an upload that fails before completing changes
nothing. So :meth:`S3MediaStore.writer` writes to a local temporary file and uploads it to the
final key once the block succeeded: no temporary key on S3 is needed (a temp key + copy would
only add a second request and a key to clean up after a crash). Multipart parts of an upload
killed mid-way are invisible and are removed by the bucket's ``AbortIncompleteMultipartUpload``
lifecycle rule (README, "Production").
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import dagster as dg
from dagster_aws.s3 import S3Resource
from dagster_aws.s3.sensor import get_objects
from pydantic import Field, PrivateAttr

from narra_dagster import settings
from narra_dagster.resources.inbox import PARTIAL_SUFFIXES
from narra_dagster.resources.media_store import MediaStore, _check, next_version
from narra_dagster.resources.search_index import LanceSearchIndex

# boto3 switches to multipart above this size (bytes); each part is this big.
_MULTIPART_BYTES = 64 * 1024**2


def _not_found(exc: Exception) -> bool:
    code = getattr(exc, "response", {}).get("Error", {}).get("Code")
    return code in ("404", "NoSuchKey", "NotFound")


class S3MediaStore(MediaStore):
    """Media store in an S3 bucket: ``s3://<bucket>/<prefix>/<partition_key>/<artifact>``.

    Readers that need a file (PyAV, numpy) get one from :meth:`local_path`: the object is
    downloaded once into a cache folder private to this process and re-downloaded only when its
    ETag changed. Writes are local temp file -> one upload (see the module docstring).
    """

    s3: S3Resource = Field(description="dagster-aws S3 resource: endpoint, region, credentials.")
    bucket: str = Field(description="Bucket holding the media store.")
    prefix: str = Field(default="media", description="Key prefix of the store, no slashes at the ends.")
    cache_dir: str = Field(
        default_factory=lambda: str(settings.narra_home() / "cache" / "s3"),
        description="Local folder for downloaded artifacts; each process uses its own subfolder.",
    )

    _client = PrivateAttr(default=None)

    @property
    def client(self):
        if self._client is None:
            self._client = self.s3.get_client()
        return self._client

    def probe(self) -> str:
        import uuid

        key = f"{self.prefix.strip('/')}/.health-{uuid.uuid4().hex}"
        self.client.put_object(Bucket=self.bucket, Key=key, Body=b"ok")
        self.client.delete_object(Bucket=self.bucket, Key=key)
        return f"s3://{self.bucket}/{self.prefix}"

    def delete_item(self, key: str) -> int:
        _check(key, "source")
        prefix = f"{self.prefix.strip('/')}/{key}/"
        doomed = [{"Key": o["Key"]} for page in self.client.get_paginator("list_objects_v2")
                  .paginate(Bucket=self.bucket, Prefix=prefix) for o in page.get("Contents", [])]
        for start in range(0, len(doomed), 1000):  # DeleteObjects takes 1000 keys at most
            self.client.delete_objects(Bucket=self.bucket,
                                       Delete={"Objects": doomed[start:start + 1000]})
        return len(doomed)

    def write_tombstone(self, key: str, record: dict) -> None:
        _check(key, "source")
        self.client.put_object(Bucket=self.bucket,
                               Key=f"{self.prefix.strip('/')}/_deleted/{key}.json",
                               Body=json.dumps(record).encode())

    def tombstones(self) -> dict[str, dict]:
        prefix = f"{self.prefix.strip('/')}/_deleted/"
        out = {}
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket,
                                                                          Prefix=prefix):
            for obj in page.get("Contents", []):
                key = PurePosixPath(obj["Key"]).stem
                body = self.client.get_object(Bucket=self.bucket, Key=obj["Key"])["Body"].read()
                out[key] = json.loads(body)
        return out

    def take_tombstone(self, key: str) -> dict | None:
        record = self.tombstone(key)
        if record is None:
            return None
        # the new version is recorded before the tombstone goes (as the local store does)
        self.client.put_object(Bucket=self.bucket, Key=self._record_key("_versions", key),
                               Body=json.dumps(next_version(record)).encode())
        self.client.delete_object(Bucket=self.bucket, Key=self._record_key("_deleted", key))
        return record

    def tombstone(self, key: str) -> dict | None:
        return self._read_record("_deleted", key)

    def version(self, key: str) -> dict | None:
        return self._read_record("_versions", key)

    def forget_version(self, key: str) -> None:
        _check(key, "source")
        self.client.delete_object(Bucket=self.bucket, Key=self._record_key("_versions", key))

    def _record_key(self, folder: str, key: str) -> str:
        _check(key, "source")
        return f"{self.prefix.strip('/')}/{folder}/{key}.json"

    def _read_record(self, folder: str, key: str) -> dict | None:
        try:
            body = self.client.get_object(Bucket=self.bucket,
                                          Key=self._record_key(folder, key))["Body"].read()
        except self.client.exceptions.NoSuchKey:
            return None
        try:
            return json.loads(body)
        except ValueError:
            return None

    def _key(self, key: str, name: str) -> str:
        _check(key, name)
        return f"{self.prefix.strip('/')}/{key}/{name}" if self.prefix.strip("/") else f"{key}/{name}"

    def _cache(self, key: str) -> Path:
        # Per process: two run workers on one host never race on one cached file.
        folder = Path(self.cache_dir) / f"pid-{os.getpid()}" / key
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def _head(self, key: str, name: str) -> dict | None:
        try:
            return self.client.head_object(Bucket=self.bucket, Key=self._key(key, name))
        except Exception as exc:  # botocore ClientError
            if _not_found(exc):
                return None
            raise

    def local_path(self, key: str, name: str) -> Path:
        head = self._head(key, name)
        if head is None:
            raise FileNotFoundError(f"{name} of {key} is not in the media store ({self.uri(key, name)})")
        folder = self._cache(key)
        path, tag = folder / name, folder / f".{name}.etag"
        if path.exists() and tag.exists() and tag.read_text() == head["ETag"]:
            return path
        fd, tmp_name = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
        os.close(fd)
        try:
            self.client.download_file(self.bucket, self._key(key, name), tmp_name)
            os.replace(tmp_name, path)
        finally:
            Path(tmp_name).unlink(missing_ok=True)
        tag.write_text(head["ETag"])
        return path

    @contextlib.contextmanager
    def writer(self, key: str, name: str) -> Iterator[Path]:
        from boto3.s3.transfer import TransferConfig

        s3_key = self._key(key, name)
        folder = self._cache(key)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            yield tmp
            self.client.upload_file(
                tmp_name, self.bucket, s3_key,
                Config=TransferConfig(multipart_threshold=_MULTIPART_BYTES,
                                      multipart_chunksize=_MULTIPART_BYTES))
            # What was just written is what is cached, under its new ETag.
            head = self.client.head_object(Bucket=self.bucket, Key=s3_key)
            os.replace(tmp, folder / name)
            (folder / f".{name}.etag").write_text(head["ETag"])
        finally:
            tmp.unlink(missing_ok=True)

    def exists(self, key: str, name: str) -> bool:
        return self._head(key, name) is not None

    def uri(self, key: str, name: str) -> str:
        return f"s3://{self.bucket}/{self._key(key, name)}"

    def read_bytes(self, key: str, name: str) -> bytes:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key, name))["Body"].read()
        except Exception as exc:
            if _not_found(exc):
                raise FileNotFoundError(f"{name} of {key} is not in the media store "
                                        f"({self.uri(key, name)})") from exc
            raise


def lance_storage_options(endpoint_url: str | None, region: str | None) -> dict[str, str]:
    """LanceDB (object_store) options for an S3-compatible endpoint. Credentials are not put
    here: object_store reads ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` from the
    environment like boto3. ``allow_http`` only for a plain-HTTP endpoint (a local server)."""
    options: dict[str, str] = {}
    if region:
        options["region"] = region
    if endpoint_url:
        options["endpoint"] = endpoint_url
        if endpoint_url.startswith("http://"):
            options["allow_http"] = "true"
    return options


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


class S3LanceSearchIndex(LanceSearchIndex):
    """The LanceDB search index at an ``s3://bucket/prefix`` URI, with object_store options
    (``endpoint``, ``region``, ``allow_http``) for S3-compatible servers.

    Concurrent commits from several hosts rely on S3 conditional writes (``If-None-Match``),
    which Lance uses when the store supports them; narra also serializes index writes with the
    ``search_index`` pool (one slot), so two writers never commit the same table at once.
    """

    storage_options: dict[str, str] = Field(default_factory=dict,
                                            description="LanceDB storage_options (no secrets).")

    def _table(self):
        import lancedb

        if self._db is None:
            self._db = lancedb.connect(self.uri, storage_options=self.storage_options or None)
        return super()._table()


def s3_resources_from_env(env: dict[str, str] | None = None) -> dict:
    """Media store, search index (and the S3 inbox, when ``NARRA_S3_INBOX_PREFIX`` is set) on S3,
    configured from the environment; ``{}`` when ``NARRA_S3_BUCKET`` is unset.

    Variables: ``NARRA_S3_BUCKET`` (required), ``NARRA_S3_PREFIX`` (default ``narra``; media under
    ``<prefix>/media``, the index under ``<prefix>/index``), ``NARRA_S3_ENDPOINT_URL`` (an
    S3-compatible server; unset for AWS), ``AWS_REGION``, ``NARRA_S3_INBOX_PREFIX`` (uploads).
    """
    
    env = os.environ if env is None else env
    bucket = env.get("NARRA_S3_BUCKET")
    if not bucket:
        return {}
    prefix = env.get("NARRA_S3_PREFIX", "narra").strip("/")
    endpoint = env.get("NARRA_S3_ENDPOINT_URL") or None
    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or None
    s3 = S3Resource(endpoint_url=endpoint, region_name=region)
    out = {
        "media_store": S3MediaStore(s3=s3, bucket=bucket, prefix=f"{prefix}/media"),
        "search_index": S3LanceSearchIndex(uri=f"s3://{bucket}/{prefix}/index",
                                           storage_options=lance_storage_options(endpoint, region)),
    }
    if env.get("NARRA_S3_INBOX_PREFIX"):
        out["s3_inbox"] = S3Inbox(s3=s3, bucket=bucket, prefix=env["NARRA_S3_INBOX_PREFIX"])
    return out
