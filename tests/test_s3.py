"""The media store, the search index and the upload sensor on a real S3 API: moto's server mode
on 127.0.0.1, spoken to over HTTP by boto3 (dagster-aws) and by LanceDB's object_store."""

import json
import shutil
from pathlib import Path

import boto3
import dagster as dg
import pytest

from narra_dagster.core.media import file_sha256
from narra_dagster.resources.media_store import SOURCE
from narra_dagster.resources.s3 import S3LanceSearchIndex, S3MediaStore, s3_resources_from_env
from narra_dagster.defs.intake.s3_sensor import build_s3_upload_sensor

from .conftest import ingest_and_materialize

BUCKET = "narra-test"


@pytest.fixture(scope="module")
def s3_endpoint():
    """A moto S3 server in this process's threads on a free port, with fake credentials."""
    moto_server = pytest.importorskip("moto.server", reason="moto[server] is not installed")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3(s3_endpoint, monkeypatch):
    """Env for the AWS chain and a fresh bucket; returns (endpoint, boto3 client)."""
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    client.create_bucket(Bucket=BUCKET)
    yield s3_endpoint, client
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
        for obj in page.get("Contents", []):
            client.delete_object(Bucket=BUCKET, Key=obj["Key"])
    client.delete_bucket(Bucket=BUCKET)


@pytest.fixture
def s3_resources(s3, home, transcriber, embedder, monkeypatch):
    endpoint, _ = s3
    monkeypatch.setenv("NARRA_S3_BUCKET", BUCKET)
    monkeypatch.setenv("NARRA_S3_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("NARRA_S3_INBOX_PREFIX", "uploads/")
    return {**s3_resources_from_env(), "transcriber": transcriber, "embedder": embedder}


def _keys(client, prefix=""):
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return sorted(o["Key"] for p in pages for o in p.get("Contents", []))


def _cached_temp_files(store: S3MediaStore):
    return list(Path(store.cache_dir).rglob("*.tmp"))


def test_media_store_on_s3_is_atomic(s3_resources, s3):
    _, client = s3
    store: S3MediaStore = s3_resources["media_store"]
    key = "0123456789abcdef"
    assert store.write_json(key, "probe.json", {"a": 1}) > 0
    assert store.read_json(key, "probe.json") == {"a": 1}
    assert store.exists(key, "probe.json") and not store.exists(key, "audio.wav")
    assert store.uri(key, "probe.json") == f"s3://{BUCKET}/narra/media/{key}/probe.json"
    assert json.loads(store.local_path(key, "probe.json").read_text()) == {"a": 1}
    # Rewritten by someone else: the cached copy is refreshed by ETag.
    client.put_object(Bucket=BUCKET, Key=f"narra/media/{key}/probe.json", Body=b'{"a": 2}')
    assert json.loads(store.local_path(key, "probe.json").read_text()) == {"a": 2}
    # A stage that fails half-way through writing leaves nothing behind, here or on S3.
    with pytest.raises(RuntimeError):
        with store.writer(key, "audio.wav") as tmp:
            tmp.write_bytes(b"RIFF half a wav")
            raise RuntimeError("killed mid-write")
    assert not store.exists(key, "audio.wav")
    assert _keys(client) == [f"narra/media/{key}/probe.json"]
    assert _cached_temp_files(store) == []
    with pytest.raises(FileNotFoundError):
        store.local_path(key, "audio.wav")
    with pytest.raises(ValueError):
        store.write_bytes("../etc", "x", b"")


def test_video_chain_on_s3(s3_resources, s3, instance, speech_video):
    _, client = s3
    index: S3LanceSearchIndex = s3_resources["search_index"]
    assert index.uri == f"s3://{BUCKET}/narra/index"
    key, result = ingest_and_materialize(speech_video[0], s3_resources, instance)
    assert result.success, [e.message for e in result.all_events if e.is_failure]
    media = _keys(client, f"narra/media/{key}/")
    assert {k.rsplit("/", 1)[1] for k in media} == {
        "source", "manifest.json", "probe.json", "audio.wav", "transcript.json", "chunks.json",
        "embeddings.npy"}
    assert any(k.startswith("narra/index/chunks.lance/") for k in _keys(client, "narra/index/"))
    chunks = s3_resources["media_store"].read_json(key, "chunks.json")
    assert index.count(key) == len(chunks) > 0
    hits = index.search("cup of coffee", s3_resources["embedder"].embed(["cup of coffee"])[0], limit=3)
    assert hits[0].media_id == key and "coffee" in hits[0].text.lower()
    # Re-materializing writes the same rows again, no duplicates.
    _, again = ingest_and_materialize(speech_video[0], s3_resources, instance)
    assert again.success and index.count(key) == len(chunks)
    assert _cached_temp_files(s3_resources["media_store"]) == []


def _tick(instance, resources, cursor):
    with dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources) as ctx:
        result = build_s3_upload_sensor()(ctx)
    for request in result.dynamic_partitions_requests:
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    return result


def test_s3_upload_sensor_takes_stable_objects_once(s3_resources, s3, instance, silent_clip,
                                                   speech_video, tmp_path):
    _, client = s3
    resources = {"s3_inbox": s3_resources["s3_inbox"], "media_store": s3_resources["media_store"]}
    client.upload_file(str(silent_clip), BUCKET, "uploads/world.mp4")
    client.put_object(Bucket=BUCKET, Key="uploads/notes.txt", Body=b"just some text")
    client.put_object(Bucket=BUCKET, Key="uploads/big.mp4.part", Body=b"partial")

    first = _tick(instance, resources, None)
    assert not first.run_requests  # seen once: not yet known to be stable
    second = _tick(instance, resources, first.cursor)
    assert [r.run_key for r in second.run_requests] == [
        f"video:{file_sha256(silent_clip)[:16]}:v1"]
    request = second.run_requests[0]
    assert request.job_name == "video_pipeline" and request.tags["narra/source_name"] == "world.mp4"
    assert s3_resources["media_store"].exists(request.partition_key, SOURCE)
    assert instance.get_dynamic_partitions("videos") == [request.partition_key]

    # Nothing new: nothing taken again. The same bytes under another key start no second run.
    third = _tick(instance, resources, second.cursor)
    assert not third.run_requests
    client.upload_file(str(silent_clip), BUCKET, "uploads/copy-of-world.mp4")
    speech = speech_video[0]
    client.upload_file(str(speech), BUCKET, "uploads/talk.mp4")
    fourth = _tick(instance, resources, third.cursor)
    assert not fourth.run_requests
    fifth = _tick(instance, resources, fourth.cursor)
    assert [r.run_key for r in fifth.run_requests] == [f"video:{file_sha256(speech)[:16]}:v1"]
    assert not _tick(instance, resources, fifth.cursor).run_requests
    # A key overwritten with new bytes is a new upload.
    other = tmp_path / "other.mp4"
    shutil.copyfile(speech, other)
    with open(other, "ab") as fh:
        fh.write(b"\0" * 16)  # trailing bytes after the MP4 boxes: same video, other content hash
    client.upload_file(str(other), BUCKET, "uploads/world.mp4")
    sixth = _tick(instance, resources, fifth.cursor)
    seventh = _tick(instance, resources, sixth.cursor)
    assert [r.run_key for r in sixth.run_requests + seventh.run_requests] == [
        f"video:{file_sha256(other)[:16]}:v1"]


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_a_deleted_item_uploaded_again_begins_a_new_version_on_either_store(
        backend, s3_resources, tmp_path):
    """Deletion and re-upload as the lifecycle drives them, on the local store and on S3: the
    tombstone is seen at once (stages ask it), taking it begins version 2 since the deletion's
    time, and forgetting the version leaves version 1 (None)."""
    from narra_dagster.resources import LocalMediaStore

    store = (s3_resources["media_store"] if backend == "s3"
             else LocalMediaStore(root=str(tmp_path / "media")))
    key = "00112233445566ff"
    assert store.tombstone(key) is None and store.version(key) is None
    store.write_tombstone(key, {"deleted_at": "2026-12-07T10:00:00+00:00",
                                "deleted_at_s": 1796637600.0, "version": 1})
    assert store.tombstone(key)["version"] == 1
    assert store.take_tombstone(key)["deleted_at_s"] == 1796637600.0
    assert store.tombstone(key) is None and store.take_tombstone(key) is None
    assert store.version(key) == {"version": 2, "since": 1796637600.0}
    store.forget_version(key)
    assert store.version(key) is None
