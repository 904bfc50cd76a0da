"""An item's lifecycle: `retry` runs a failed item again, `delete` removes it completely."""

import json
import subprocess

import dagster as dg
import skimage.data
from PIL import Image

from narra_dagster.app.lifecycle import DELETED, delete_items, retry_items
from narra_dagster.app.processing import process_files, register
from narra_dagster.app.status import partition_status

from .conftest import REPO, subprocess_env


def test_delete_leaves_nothing_of_the_item_and_is_idempotent(defs, home, tmp_path):
    Image.fromarray(skimage.data.chelsea()).save(tmp_path / "cat.jpg")
    Image.fromarray(skimage.data.coffee()).save(tmp_path / "coffee.jpg")
    res = defs.resources
    with dg.instance_for_test() as instance:
        cat, coffee = process_files([tmp_path / "cat.jpg", tmp_path / "coffee.jpg"], instance,
                                    defs, batch=False)
        key = cat.partition_key
        assert cat.status == coffee.status == "succeeded"
        assert res["search_index"].count(key) > 0 and res["image_index"].image(key) is not None

        (done,) = delete_items([key[:8]], instance, defs)  # a unique prefix is enough
        assert (done.media_id, done.status, done.kind) == (key, "deleted", "image")
        assert res["search_index"].count(key) == 0
        assert res["image_index"].image(key) is None
        assert key not in {row["media_id"] for row in res["image_index"].catalog()}
        assert not (home / "media" / key).exists()
        assert not instance.has_dynamic_partition("images", key)
        events = [e for e in res["event_sink"].read() if e["type"] == DELETED]
        assert [(e["media_id"], e["kind"]) for e in events] == [(key, "image")]
        # the other item is untouched
        assert res["search_index"].count(coffee.partition_key) > 0
        assert res["image_index"].image(coffee.partition_key) is not None

        states = {i["media_id"]: i for i in partition_status(instance, defs)}
        assert states[key]["state"] == "deleted" and states[key]["names"] == ["cat.jpg"]
        assert states[coffee.partition_key]["state"] == "searchable"

        (again,) = delete_items([key], instance, defs)
        assert again.status == "skipped"
        (unknown,) = delete_items(["0123456789abcdef"], instance, defs)
        assert unknown.status == "unknown"
        assert len([e for e in res["event_sink"].read() if e["type"] == DELETED]) == 1

        # The same bytes uploaded again are a new item, and status shows it live again.
        (back,) = process_files([tmp_path / "cat.jpg"], instance, defs)
        assert back.partition_key == key and back.status == "succeeded" and back.restored
        assert res["search_index"].count(key) > 0 and res["image_index"].image(key) is not None
        assert {i["media_id"]: i["state"] for i in partition_status(instance, defs)}[key] == \
            "searchable"


def test_retry_runs_only_failed_items_again(defs, tmp_path):
    png = tmp_path / "camera.mp4"
    Image.fromarray(skimage.data.camera()).save(png, "PNG")
    Image.fromarray(skimage.data.coffee()).save(tmp_path / "coffee.jpg")
    with dg.instance_for_test() as instance:
        bad, good = process_files([png, tmp_path / "coffee.jpg"], instance, defs, batch=False)
        assert (bad.status, bad.error_class) == ("failed", "type_mismatch")

        (still,) = retry_items([bad.partition_key], instance, defs)
        assert (still.status, still.error_class) == ("failed", "type_mismatch")  # deterministic
        (skipped,) = retry_items([good.partition_key], instance, defs)
        assert skipped.status == "skipped"

        # The same bytes registered under a fitting name (no run), then retried: it succeeds.
        fitting = tmp_path / "named" / "camera.png"
        fitting.parent.mkdir()
        fitting.write_bytes(png.read_bytes())
        assert register(fitting, instance, defs.resources["media_store"]).status == "registered"
        (fixed,) = retry_items([bad.partition_key], instance, defs)
        assert fixed.status == "succeeded", fixed.detail
        states = {i["media_id"]: i["state"] for i in partition_status(instance, defs)}
        assert states[bad.partition_key] == "searchable"
        (unknown,) = retry_items(["fedcba9876543210"], instance, defs)
        assert unknown.status == "unknown"


def test_narra_delete_and_retry_from_the_command_line(home, tmp_path):
    env = subprocess_env(home)
    (tmp_path / "notes.pdf").write_text("not a PDF at all\n")
    done = subprocess.run(["narra", "process", "--json", str(tmp_path / "notes.pdf")], env=env,
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    (item,) = json.loads(done.stdout)
    key = item["partition_key"]
    retried = subprocess.run(["narra", "retry", "--json", key], env=env, cwd=REPO,
                             capture_output=True, text=True, timeout=300)
    assert retried.returncode == 1 and json.loads(retried.stdout)[0]["error_class"] == "not_pdf"
    deleted = subprocess.run(["narra", "delete", key], env=env, cwd=REPO, capture_output=True,
                             text=True, timeout=300)
    assert deleted.returncode == 0 and "deleted" in deleted.stdout, deleted.stderr[-2000:]
    unknown = subprocess.run(["narra", "delete", "0123456789abcdef"], env=env, cwd=REPO,
                             capture_output=True, text=True, timeout=300)
    assert unknown.returncode == 1 and "no item" in unknown.stdout
    status = subprocess.run(["narra", "status", "--json", key], env=env, cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert [i["state"] for i in json.loads(status.stdout)] == ["deleted"]


def test_a_stage_past_its_time_limit_fails_as_timeout_once_and_retry_finishes_it(
        defs, tmp_path, monkeypatch):
    """NARRA_STAGE_TIME_LIMIT_S stops a stage that runs too long: the item fails, classified
    `timeout`, with the limit in the message, and is not retried; with a sensible limit,
    `retry` finishes it."""
    Image.fromarray(skimage.data.coffee()).save(tmp_path / "coffee.jpg")
    monkeypatch.setenv("NARRA_STAGE_TIME_LIMIT_S", "0.001")
    with dg.instance_for_test() as instance:
        (result,) = process_files([tmp_path / "coffee.jpg"], instance, defs)
        assert result.status == "failed" and result.error_class == "timeout", result
        assert "time limit of 0.001 s" in result.error
        run = instance.get_run_by_id(result.run_id)
        assert not instance.all_logs(run.run_id, of_type=dg.DagsterEventType.STEP_UP_FOR_RETRY)
        monkeypatch.setenv("NARRA_STAGE_TIME_LIMIT_S", "600")
        (again,) = retry_items([result.partition_key], instance, defs)
        assert again.status == "succeeded", again
