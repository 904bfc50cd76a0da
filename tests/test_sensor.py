"""The upload sensor, evaluated with build_sensor_context on a real (temporary) instance."""

import json
import os
import time
from pathlib import Path

import dagster as dg
import pytest

from narra_dagster import PIPELINE_VERSION
from narra_dagster.core.batch import MAX_BATCH_ITEMS
from narra_dagster.resources import LocalMediaStore
from narra_dagster.defs.intake.inbox_sensor import upload_sensor
from narra_dagster.resources.inbox import LocalInbox

MP4_HEAD = b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2"


@pytest.fixture
def inbox(tmp_path):
    return LocalInbox(path=str(tmp_path / "inbox"), stable_seconds=0.0, max_per_tick=50)


@pytest.fixture
def store(tmp_path):
    return LocalMediaStore(root=str(tmp_path / "media"))


def _tick(instance, inbox, store, cursor=None):
    """Evaluate one tick and apply what the daemon would commit: partitions and cursor."""
    context = dg.build_sensor_context(instance=instance, cursor=cursor,
                                      resources={"inbox": inbox, "media_store": store})
    result = upload_sensor(context)
    for request in result.dynamic_partitions_requests or []:
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    return result


def requested_keys(request: dg.RunRequest) -> list[str]:
    """The partition keys a run request asks for: its partition, or a batch run's keys."""
    if request.partition_key:
        return [request.partition_key]
    ops = (request.run_config or {}).get("ops", {})
    return [k for op in ops.values() for k in op.get("config", {}).get("partition_keys", [])]


def _keys(result) -> list[str]:
    """Every partition key the tick's run requests ask for, batch runs included."""
    return [k for r in result.run_requests for k in requested_keys(r)]


def _drop(inbox, name, data: bytes, age_s: float = 10.0):
    path = os.path.join(inbox.path, name)
    os.makedirs(inbox.path, exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(data)
    past = time.time() - age_s
    os.utime(path, (past, past))
    return path


def test_new_files_become_partitions_and_runs_with_idempotent_run_keys(instance, inbox, store, silent_clip):
    _drop(inbox, "clip.mp4", silent_clip.read_bytes())
    _drop(inbox, "same bytes, other name.mov", silent_clip.read_bytes())
    _drop(inbox, "other.mp4", MP4_HEAD + b"other")
    result = _tick(instance, inbox, store)
    keys = _keys(result)
    assert len(keys) == 2 == len(set(keys))  # the duplicate bytes are one item
    [batch] = result.run_requests  # the new items of one kind: one batch run
    assert batch.job_name == "video_batch" and batch.partition_key is None
    assert batch.run_key.startswith("video:batch:") and batch.run_key.endswith(f":v{PIPELINE_VERSION}")
    assert all(batch.tags[f"narra/item-{k}"] == "1" for k in keys)
    [add] = result.dynamic_partitions_requests
    assert add.partitions_def_name == "videos" and sorted(add.partition_keys) == sorted(keys)
    for key in keys:
        assert store.exists(key, "source") and store.manifest(key)["kind"] == "video"
    cursor = json.loads(result.cursor)
    assert sorted(cursor["registered"]) == sorted(os.listdir(inbox.path))

    # Next tick: the registered files move to processed, nothing is requested again.
    second = _tick(instance, inbox, store, result.cursor)
    assert second.run_requests == [] and second.skip_reason is not None
    assert os.listdir(inbox.path) == [".processed"]
    processed = sorted(p.name for p in (inbox.processed_dir).rglob("*") if p.is_file())
    assert processed == sorted(["clip.mp4", "same bytes, other name.mov", "other.mp4"])

    # A file replaced under the same name between two ticks is not filed under the old key.
    _drop(inbox, "report.mp4", MP4_HEAD + b"first version")
    replaced = _tick(instance, inbox, store, second.cursor)
    _drop(inbox, "report.mp4", MP4_HEAD + b"second version, longer", age_s=5.0)
    after = _tick(instance, inbox, store, replaced.cursor)
    [alone] = after.run_requests  # one new item: a per-item run
    assert alone.run_key == f"video:{alone.partition_key}:v{PIPELINE_VERSION}"
    assert alone.job_name == "video_pipeline"
    assert after.run_requests[0].partition_key != replaced.run_requests[0].partition_key
    assert not (inbox.processed_dir / replaced.run_requests[0].partition_key).exists()
    second = _tick(instance, inbox, store, after.cursor)

    # The same bytes uploaded again later: same partition, no second run.
    _drop(inbox, "clip again.mp4", silent_clip.read_bytes())
    third = _tick(instance, inbox, store, second.cursor)
    assert third.run_requests == []
    assert "1 already known" in json.loads(third.cursor)["last_tick"]


def test_partial_hidden_and_unstable_files_are_left_alone(instance, tmp_path, store):
    inbox = LocalInbox(path=str(tmp_path / "inbox"), stable_seconds=30.0)
    for name in ["video.mp4.part", "upload.tmp", ".hidden.mp4", "x.crdownload"]:
        _drop(inbox, name, MP4_HEAD + name.encode())
    _drop(inbox, "still-writing.mp4", MP4_HEAD + b"growing", age_s=0.0)
    _drop(inbox, "done.mp4", MP4_HEAD + b"done", age_s=60.0)
    result = _tick(instance, inbox, store)
    assert len(result.run_requests) == 1
    assert list(json.loads(result.cursor)["registered"]) == ["done.mp4"]
    assert "1 still being written" in json.loads(result.cursor)["last_tick"]
    _tick(instance, inbox, store, result.cursor)
    left = sorted(os.listdir(inbox.path))
    assert left == sorted([".hidden.mp4", ".processed", "still-writing.mp4", "upload.tmp",
                           "video.mp4.part", "x.crdownload"])


def test_unknown_types_are_rejected_with_a_reason(instance, inbox, store):
    _drop(inbox, "notes.txt", b"plain text, not media")
    result = _tick(instance, inbox, store)
    assert result.run_requests == [] and result.dynamic_partitions_requests == []
    assert not os.path.exists(os.path.join(inbox.path, "notes.txt"))
    assert (inbox.rejected_dir / "notes.txt").read_bytes() == b"plain text, not media"
    reason = (inbox.rejected_dir / "notes.txt.reason.txt").read_text()
    assert reason.startswith("[unsupported_type]")


def test_a_burst_of_200_files_is_capped_per_tick_and_each_taken_once(instance, inbox, store):
    for i in range(200):
        _drop(inbox, f"clip-{i:03d}.mp4", MP4_HEAD + str(i).encode(), age_s=100.0 - i * 0.1)
    cursor, seen, ticks = None, [], 0
    while True:
        result = _tick(instance, inbox, store, cursor)
        ticks += 1
        if ticks == 1:  # oldest first: the first tick takes the 50 oldest files
            assert sorted(json.loads(result.cursor)["registered"]) == [
                f"clip-{i:03d}.mp4" for i in range(50)]
        assert len(result.run_requests) <= 1 and len(_keys(result)) <= MAX_BATCH_ITEMS
        seen += _keys(result)
        cursor = result.cursor
        if not result.run_requests:
            break
    assert ticks == 5  # 4 full ticks of 50 (a batch run each), and one that only moves the last files
    assert len(seen) == len(set(seen)) == 200
    assert len(instance.get_dynamic_partitions("videos")) == 200
    assert os.listdir(inbox.path) == [".processed"]
    assert json.loads(cursor)["registered"] == {}


def test_sensor_is_on_by_default_and_targets_each_kinds_jobs():
    assert upload_sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert sorted(j.name for j in upload_sensor.jobs) == [
        "document_batch", "document_pipeline", "image_batch", "image_pipeline", "video_batch",
        "video_pipeline"]


def test_hostile_file_names_are_metadata_only(instance, inbox, store, tmp_path):
    names = ["evil\n..\\..\\$(rm -rf ~).mp4", "; DROP TABLE chunks; --.mp4", "ünï cødé ✓.mp4", "-rf.mp4"]
    for i, name in enumerate(names):
        _drop(inbox, name, MP4_HEAD + bytes([i]))
    result = _tick(instance, inbox, store)
    assert len(_keys(result)) == 4
    _tick(instance, inbox, store, result.cursor)
    # Sources are stored under their keys only; originals are kept, byte for byte, by key.
    for key in _keys(result):
        assert sorted(p.name for p in (tmp_path / "media" / key).iterdir()) == ["manifest.json", "source"]
        assert store.manifest(key)["source_name"] in names
        [kept] = list((inbox.processed_dir / key).iterdir())
        assert kept.name in names and kept.read_bytes() == store.read_bytes(key, "source")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["inbox", "media"]


def test_a_file_that_failed_only_for_its_name_runs_again_under_a_fitting_name(
        tmp_path, instance, inbox, store):
    """PNG bytes uploaded as camera.mp4 fail as a type mismatch; the same bytes uploaded again
    as camera.png are the same item, recorded under both names, and run once more."""
    import io

    import skimage.data
    from PIL import Image

    from narra_dagster.core.errors import BadInputError
    from narra_dagster.core.stage import check_declared_kind

    buffer = io.BytesIO()
    Image.fromarray(skimage.data.camera()).save(buffer, "PNG")
    png = buffer.getvalue()
    folder = Path(inbox.path)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "camera.mp4").write_bytes(png)

    first = _tick(instance, inbox, store)
    [request] = first.run_requests
    key = request.partition_key
    assert request.job_name == "image_pipeline"
    with pytest.raises(BadInputError, match="camera.mp4") as info:  # the run's first stage
        check_declared_kind(store.manifest(key))
    # worded with the kinds' nouns, which the manifest carries from intake
    assert "which says a video or audio file, but its bytes are an image" in str(info.value)

    (folder / "camera.png").write_bytes(png)
    second = _tick(instance, inbox, store, first.cursor)
    [again] = second.run_requests
    assert again.partition_key == key and ":renamed:" in again.run_key
    assert not second.dynamic_partitions_requests  # the same item, no new partition
    assert [n["name"] for n in store.manifest(key)["names"]] == ["camera.mp4", "camera.png"]
    check_declared_kind(store.manifest(key))  # passes now

    (folder / "camera-copy.png").write_bytes(png)
    assert not _tick(instance, inbox, store, second.cursor).run_requests  # fits already


def test_bytes_of_a_deleted_item_dropped_again_run_under_a_new_run_key(tmp_path, instance,
                                                                       inbox, store):
    """After `narra delete`, the same bytes are a new item; the sensor's first run key for them
    was used already, so the new run's key names the deletion it follows."""
    _drop(inbox, "clip.mp4", MP4_HEAD + b"first upload")
    first = _tick(instance, inbox, store)
    [request] = first.run_requests
    key = request.partition_key
    store.delete_item(key)
    instance.delete_dynamic_partition("videos", key)
    store.write_tombstone(key, {"media_id": key, "kind": "video", "names": ["clip.mp4"],
                                "deleted_at": "2026-11-30T18:00:00+00:00"})
    _drop(inbox, "clip again.mp4", MP4_HEAD + b"first upload")
    second = _tick(instance, inbox, store, first.cursor)
    [again] = second.run_requests
    assert again.partition_key == key and again.run_key != request.run_key
    assert "restored-2026-11-30T18:00:00" in again.run_key
    assert store.tombstones() == {}  # the item is back


def test_every_tick_completes_whatever_the_inbox_holds(instance, inbox, store, tmp_path):
    """Names of 255 bytes, control and right-to-left characters, bytes that are not UTF-8; a
    symlink out of the inbox, a FIFO and a folder: every tick completes, every regular file ends
    registered or rejected with a reason file, and nothing else is opened."""
    root = Path(inbox.path)
    root.mkdir(parents=True, exist_ok=True)
    long_text = "x" * 251 + ".txt"  # 255 bytes: no room for a prefix or ".reason.txt"
    long_video = "v" * 251 + ".mp4"
    odd = ["tab\there\x07bell.mp4", "\u202eexe.mp4", "--help.mp4", "quote'\"`.mp4"]
    _drop(inbox, long_text, b"plain text, not media")
    _drop(inbox, long_video, MP4_HEAD + b"long name")
    for i, name in enumerate(odd):
        _drop(inbox, name, MP4_HEAD + bytes([40 + i]))
    raw = os.fsencode(str(root)) + b"/caf\xe9.mp4"  # Latin-1 bytes: not UTF-8
    with open(raw, "wb") as fh:
        fh.write(MP4_HEAD + b"latin-1 name")
    past = time.time() - 10
    os.utime(raw, (past, past))
    secret = tmp_path / "secret.mp4"
    secret.write_bytes(MP4_HEAD + b"outside the inbox")
    os.symlink(secret, root / "link.mp4")
    os.mkfifo(root / "pipe.mp4")
    (root / "folder.mp4").mkdir()

    first = _tick(instance, inbox, store)
    assert len(_keys(first)) == 2 + len(odd)  # the long video, the odd names, the Latin-1
    second = _tick(instance, inbox, store, first.cursor)
    assert not second.run_requests
    reasons = list(inbox.rejected_dir.glob("*.reason.txt"))
    assert len(reasons) == 1 and "[unsupported_type]" in reasons[0].read_text()
    assert "x" * 200 in reasons[0].read_text()  # the reason file names the file
    names = {store.manifest(key)["source_name"] for key in _keys(first)}
    assert long_video in names and "\u202eexe.mp4" in names
    # the symlink, the FIFO and the folder are left where they are, unread
    assert (root / "link.mp4").is_symlink() and (root / "pipe.mp4").exists()
    assert (root / "folder.mp4").is_dir()
    assert not any(store.read_bytes(key, "source").endswith(b"outside the inbox")
                   for key in _keys(first))
