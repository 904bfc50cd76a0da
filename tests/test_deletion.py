"""Deletion is a compensation that completes (issue 21): each finding of the adversary's test as a
regression test, with real parts (a real Dagster instance and runs, the real sensors, the real
LanceDB index and models, real pictures).

- an upload that meets a deletion of the same bytes waits for it and becomes a new version,
  never "already here" for bytes being removed; upload and delete raced many times leave a
  consistent item;
- a deletion right after an upload withdraws its pending run request: the run request sensor
  never brings the item back;
- a deletion while a stage runs leaves nothing of the item, and the run ends ``deleted``;
- the inbox's ``.processed`` copy and the other images' references to the item go;
- a re-upload after a deletion is a new version whose state comes from its own runs only.
"""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import dagster as dg
import skimage.data
from PIL import Image

from narra_dagster.app.details import item_details
from narra_dagster.app.lifecycle import delete_items
from narra_dagster.app.processing import ProcessResult, execute_item, process_files
from narra_dagster.app.status import partition_status
from narra_dagster.app.uploads import accept_upload, waiting_request
from narra_dagster.core.runs import run_failure
from narra_dagster.defs.intake.inbox_sensor import upload_sensor
from narra_dagster.defs.intake.requests import pending_request, run_request_sensor
from narra_dagster.resources import LanceSearchIndex
from narra_dagster.resources.inbox import LocalInbox

RACE_ROUNDS = 25
RACE_BUDGET_S = 40.0


def _picture(path: Path, name: str = "coffee") -> Path:
    Image.fromarray(getattr(skimage.data, name)()).save(path)
    return path


def _received(source: Path, folder: Path) -> Path:
    """A copy of ``source`` as the API's receive_file leaves it (the caller removes it)."""
    folder.mkdir(parents=True, exist_ok=True)
    copy = folder / f"{time.monotonic_ns()}.part"
    shutil.copyfile(source, copy)
    return copy


def _catalog_row(image_index, key: str) -> dict:
    (row,) = [r for r in image_index.catalog() if r["media_id"] == key]
    return row


def _state(instance, defs, key: str) -> dict:
    (item,) = [i for i in partition_status(instance, defs) if i["media_id"] == key]
    return item


def _assert_consistent(instance, defs, home: Path, key: str) -> str:
    """The item is wholly live or wholly deleted; return which."""
    store = defs.resources["media_store"]
    live = instance.has_dynamic_partition("images", key)
    stone = store.tombstones().get(key)
    if live:
        assert stone is None, "a live item with a tombstone"
        assert store.exists(key, "source") and store.exists(key, "manifest.json")
        return "live"
    assert stone is not None, "an item neither live nor deleted"
    assert not (home / "media" / key).exists(), sorted((home / "media" / key).iterdir())
    assert pending_request(key) is None, "a deleted item's run request survived"
    assert [i["state"] for i in partition_status(instance, defs)
            if i["media_id"] == key] == ["deleted"]
    return "deleted"


def test_an_upload_that_meets_a_deletion_waits_for_it_and_becomes_a_new_version(
        defs, instance, home, tmp_path, monkeypatch):
    """Finding: an upload racing a DELETE of the same bytes got 200 (already here) and was
    then deleted. Here the deletion is held midway (inside its index deletes) while the upload
    arrives: the upload waits for it, then becomes the item's new version."""
    picture = _picture(tmp_path / "coffee.jpg")
    res = defs.resources
    first = accept_upload(_received(picture, tmp_path / "up"), "coffee.jpg", instance, res)
    key = first.upload.partition_key
    assert first.new

    inside, release = threading.Event(), threading.Event()
    original = LanceSearchIndex.delete_item

    def slow_delete(self, media_id):
        inside.set()
        release.wait(10)
        return original(self, media_id)

    monkeypatch.setattr(LanceSearchIndex, "delete_item", slow_delete)
    deleted: list = []
    deleter = threading.Thread(target=lambda: deleted.extend(delete_items([key], instance, defs)))
    deleter.start()
    assert inside.wait(10)
    answers: list = []
    uploader = threading.Thread(target=lambda: answers.append(
        accept_upload(_received(picture, tmp_path / "up"), "again.jpg", instance, res)))
    uploader.start()
    uploader.join(0.5)
    assert uploader.is_alive(), f"the upload answered during the deletion: {answers}"
    release.set()
    deleter.join(20)
    uploader.join(20)
    assert [d.status for d in deleted] == ["deleted"]
    (again,) = answers
    assert again.new and again.run_requested and again.upload.restored_after
    assert _assert_consistent(instance, defs, home, key) == "live"
    assert pending_request(key)["reason"].startswith("restored-")
    item = _state(instance, defs, key)
    assert item["state"] == "registered" and item.get("version") == 2


def test_upload_and_delete_raced_many_times_never_lose_an_upload(defs, instance, home, tmp_path):
    """The same race without a pause, many times: whichever wins, the outcome is consistent,
    and an upload answered "already here" (not new) is one the deletion came after; an upload
    that came after the deletion is a new item, never lost."""
    picture = _picture(tmp_path / "coffee.jpg")
    res = defs.resources
    key = accept_upload(_received(picture, tmp_path / "up"), "coffee.jpg", instance,
                        res).upload.partition_key
    started, outcomes = time.monotonic(), []
    for round_ in range(RACE_ROUNDS):
        if time.monotonic() - started > RACE_BUDGET_S:
            break
        if not instance.has_dynamic_partition("images", key):
            assert accept_upload(_received(picture, tmp_path / "up"), "coffee.jpg", instance,
                                 res).new
        barrier, results = threading.Barrier(2), {}

        def upload():
            received = _received(picture, tmp_path / "up")
            barrier.wait()
            if round_ % 2:  # vary who comes first: the deletion looks the item up first
                time.sleep(0.01 * (round_ % 7))
            results["upload"] = accept_upload(received, f"r{round_}.jpg", instance, res)

        def delete():
            barrier.wait()
            if not round_ % 2:
                time.sleep(0.002 * (round_ % 7))
            results["delete"] = delete_items([key], instance, defs)[0]

        threads = [threading.Thread(target=upload), threading.Thread(target=delete)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert results["delete"].status == "deleted", results["delete"]
        state = _assert_consistent(instance, defs, home, key)
        # upload first: "already here", then deleted; deletion first: a new version, live
        assert (state == "live") == results["upload"].new, (round_, state, results)
        if state == "live":
            assert pending_request(key) is not None
        outcomes.append(state)
    assert len(outcomes) >= 10, "the race ran too few rounds in its time budget"
    assert {"live", "deleted"} <= set(outcomes), f"only one order was exercised: {outcomes}"


def _tick(sensor, instance, cursor=None, **resources):
    """One evaluation of a real sensor, applied as the daemon applies it: its partitions added;
    returns (result, run requests)."""
    context = dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources or None)
    result = sensor(context)
    for add in result.dynamic_partitions_requests:
        instance.add_dynamic_partitions(add.partitions_def_name, list(add.partition_keys))
    return result, list(result.run_requests or [])


def test_a_deletion_right_after_an_upload_never_comes_back(defs, instance, home, tmp_path):
    """Finding: deleting an item seconds after its upload brought it back as `failed
    [missing_source]`, listed twice: its run request survived and the sensor re-added the
    partition."""
    picture = _picture(tmp_path / "coffee.jpg")
    accepted = accept_upload(_received(picture, tmp_path / "up"), "coffee.jpg", instance,
                             defs.resources)
    key = accepted.upload.partition_key
    assert pending_request(key) is not None
    (done,) = delete_items([key], instance, defs)
    assert done.status == "deleted"
    cursor = None
    for _ in range(3):
        result, runs = _tick(run_request_sensor, instance, cursor)
        cursor = result.cursor
        assert not runs and not result.dynamic_partitions_requests
    assert not instance.has_dynamic_partition("images", key)
    assert [i["state"] for i in partition_status(instance, defs) if i["media_id"] == key] == \
        ["deleted"]
    assert _assert_consistent(instance, defs, home, key) == "deleted"


def test_a_request_for_an_item_deleted_after_it_ran_is_dropped(defs, instance, home, tmp_path):
    """A run request written for an item that ran and was deleted (a batch run asking a
    deleted item to run alone) is dropped by the sensor, not turned into a partition again."""
    from narra_dagster.defs.intake.requests import request_run

    (done,) = process_files([_picture(tmp_path / "coffee.jpg")], instance, defs)
    key = done.partition_key
    assert delete_items([key], instance, defs)[0].status == "deleted"
    request_run(key, "image", "coffee.jpg", reason="alone-after-12345678")
    result, runs = _tick(run_request_sensor, instance)
    assert not runs and not result.dynamic_partitions_requests
    assert pending_request(key) is None
    assert _assert_consistent(instance, defs, home, key) == "deleted"


def test_deleting_while_a_stage_runs_leaves_nothing_and_the_run_ends_deleted(
        defs, instance, home, tmp_path, monkeypatch):
    """Finding: a deletion during a stage left that stage's artifact on disk and the run failed
    with an unclassified error. Here the OCR stage of a real run is held until the item is
    deleted: it then writes its artifact, finds the tombstone, removes what it wrote and fails
    `deleted`; the run's other stages refuse to start."""
    ocr = defs.resources["ocr"]
    inside, release = threading.Event(), threading.Event()
    original = type(ocr).read

    def slow_read(self, picture):
        inside.set()
        release.wait(30)
        return original(self, picture)

    monkeypatch.setattr(type(ocr), "read", slow_read)
    picture = _picture(tmp_path / "coffee.jpg")
    results: list = []
    runner = threading.Thread(target=lambda: results.extend(
        process_files([picture], instance, defs)))
    runner.start()
    assert inside.wait(60), "the OCR stage never started"
    key = next(iter(instance.get_dynamic_partitions("images")))
    (done,) = delete_items([key], instance, defs)
    assert done.status == "deleted"
    release.set()
    runner.join(120)
    (result,) = results
    assert (result.status, result.error_class) == ("failed", "deleted"), result
    assert run_failure(instance, result.run_id)[1] == "deleted"
    assert not (home / "media" / key).exists(), sorted((home / "media" / key).rglob("*"))
    assert defs.resources["search_index"].count(key) == 0
    assert defs.resources["image_index"].image(key) is None
    assert _assert_consistent(instance, defs, home, key) == "deleted"


def test_delete_removes_the_inbox_processed_copy(defs, instance, home):
    """Finding: the original stayed in `inbox/.processed/<id>/` after the item was deleted."""
    inbox = defs.resources["inbox"]
    store = defs.resources["media_store"]
    assert hasattr(LocalInbox, "remove_processed"), "LocalInbox.remove_processed is missing"
    Path(inbox.path).mkdir(parents=True)
    _picture(Path(inbox.path) / "cat.jpg", "chelsea")
    sensor_resources = {"inbox": inbox, "media_store": store}
    result, runs = _tick(upload_sensor, instance, **sensor_resources)  # the real upload sensor
    (key,) = instance.get_dynamic_partitions("images")
    assert [r.partition_key for r in runs] == [key]
    _tick(upload_sensor, instance, result.cursor, **sensor_resources)  # moved to .processed
    assert (Path(inbox.path) / ".processed" / key / "cat.jpg").exists()

    (done,) = delete_items([key], instance, defs)
    assert done.status == "deleted", done
    assert not (Path(inbox.path) / ".processed" / key).exists()
    assert _assert_consistent(instance, defs, home, key) == "deleted"


def test_delete_takes_the_item_out_of_the_other_images(defs, instance, home, tmp_path):
    """Finding: other images kept the deleted item in `near_duplicates` (and the catalog's
    `duplicate_of`)."""
    store = defs.resources["media_store"]
    image_index = defs.resources["image_index"]
    # a cat, then a near duplicate of it uploaded after it (smaller, re-encoded)
    cat = _picture(tmp_path / "cat.jpg", "chelsea")
    copy = tmp_path / "cat-small.jpg"
    Image.fromarray(skimage.data.chelsea()).resize((300, 200)).save(copy, quality=70)
    (first,) = process_files([cat], instance, defs)
    (dup,) = process_files([copy], instance, defs)
    assert first.status == dup.status == "succeeded", (first, dup)
    key = first.partition_key
    found = item_details(store, dup.partition_key, "image")
    assert found["duplicate_of"] == key and key in [n["media_id"] for n in found["near_duplicates"]]
    assert _catalog_row(image_index, dup.partition_key)["duplicate_of"] == key

    (done,) = delete_items([key], instance, defs)
    assert done.status == "deleted", done
    found = item_details(store, dup.partition_key, "image")
    assert found["duplicate_of"] is None
    assert key not in [n["media_id"] for n in found["near_duplicates"]]
    assert _catalog_row(image_index, dup.partition_key)["duplicate_of"] is None
    assert store.read_json(dup.partition_key, "catalog.json")["duplicate_of"] is None
    assert image_index.referencing(key) == []
    assert _state(instance, defs, dup.partition_key)["state"] == "searchable"
    assert _assert_consistent(instance, defs, home, key) == "deleted"


def test_a_reupload_after_delete_is_a_new_version_with_its_own_state(
        defs, instance, home, tmp_path):
    """Finding: after delete and re-upload the item read `searchable` with every stage green
    (the deleted run's materializations) while search found nothing."""
    picture = _picture(tmp_path / "coffee.jpg")
    (done,) = process_files([picture], instance, defs)
    key = done.partition_key
    assert _state(instance, defs, key)["state"] == "searchable"
    assert delete_items([key], instance, defs)[0].status == "deleted"

    back = accept_upload(_received(picture, tmp_path / "up"), "coffee.jpg", instance,
                         defs.resources)
    assert back.new and back.upload.restored_after
    item = _state(instance, defs, key)
    assert item["state"] == "registered" and item["last_run"] is None, item
    assert not any(item["assets"].values()), item["assets"]
    assert item.get("version") == 2
    assert waiting_request(key, instance) is not None  # the API shows it queued
    assert defs.resources["search_index"].count(key) == 0

    execute_item(ProcessResult(path="", source_name="coffee.jpg", partition_key=key,
                               kind="image"), instance, defs)
    item = _state(instance, defs, key)
    assert item["state"] == "searchable" and all(item["assets"].values())
    assert defs.resources["search_index"].count(key) > 0
