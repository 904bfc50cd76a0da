"""Domain events: the sensor turns real runs' event logs into ordered, idempotent events."""

import json
import uuid

import dagster as dg
import pytest

from tests.support.chains import video_assets
from narra_dagster.definitions import build_defs
from narra_dagster.resources.events import JsonlEventSink, RedisStreamEventSink, event_id
from tests.support.chains import chain_for_kind
from narra_dagster.app.processing import process_files
from narra_dagster.defs.events.sensor import domain_events_sensor

from .services import REDIS_URL, require_redis

STAGES = [a.key.to_user_string() for a in video_assets]


def _tick(instance, sink, cursor=None):
    with dg.build_sensor_context(instance=instance, cursor=cursor,
                                 resources={"event_sink": sink}) as ctx:
        domain_events_sensor(ctx)
        return ctx.cursor


@pytest.fixture
def processed(home, resources, speech_video, tmp_path):
    """A good video and a truncated one processed through the video_pipeline job."""
    good = speech_video[0]
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(good.read_bytes()[:40_000])
    defs = build_defs({k: v for k, v in resources.items()})
    with dg.instance_for_test() as instance:
        # One run per item, as the upload sensor launches them.
        results = {r.source_name: r for r in process_files([good, truncated], instance, defs,
                                                           batch=False)}
        assert results["speech.mp4"].status == "succeeded"
        assert results["truncated.mp4"].status == "failed"
        yield instance, results


def test_good_and_bad_files_give_ordered_events_once(processed, home):
    instance, results = processed
    sink = JsonlEventSink()
    assert sink.path == str(home / "events" / "events.jsonl")
    cursor = _tick(instance, sink)
    events = sink.read()

    good = results["speech.mp4"]
    mine = [e for e in events if e["media_id"] == good.partition_key]
    types = [e["type"] for e in mine]
    assert types[0] == "analysis.started" and types[-1] == "analysis.completed"
    # one completed event per stage of the video group (the transcript chain, frames,
    # enrichment), the transcript chain's stages in their dependency order
    chain = [k.to_user_string() for k in chain_for_kind(build_defs(), "video")]
    assert sorted(types[1:-1]) == sorted(f"{s}.completed" for s in chain)
    assert [t for t in types if t.removesuffix(".completed") in STAGES] == [
        f"{s}.completed" for s in STAGES]
    assert all(e["run_id"] == good.run_id and e["kind"] == "video"
               and e["source_name"] == "speech.mp4" for e in mine)
    assert [e["occurred_at"] for e in mine] == sorted(e["occurred_at"] for e in mine)
    transcript = next(e for e in mine if e["type"] == "video_transcript.completed")
    assert transcript["stage"] == "video_transcript" and transcript["metadata"]["segments"] > 0
    assert mine[0]["id"] == event_id(good.run_id, None, "analysis.started")

    bad = results["truncated.mp4"]
    theirs = [e for e in events if e["media_id"] == bad.partition_key]
    assert [e["type"] for e in theirs] == [
        "analysis.started", "video_source.failed", "analysis.failed"]
    assert theirs[1]["error_class"] == theirs[2]["error_class"] == "corrupt_media"
    assert theirs[2]["error"].startswith("[corrupt_media] video_source:")
    assert len(events) == len(mine) + len(theirs)
    assert len({e["id"] for e in events}) == len(events)

    # Redelivery is harmless: a tick from the start again, or from the cursor, adds nothing.
    before = (home / "events" / "events.jsonl").read_text()
    _tick(instance, sink)
    _tick(instance, sink, cursor)
    assert (home / "events" / "events.jsonl").read_text() == before
    assert json.loads(cursor)["updated_after"] > 0


def test_a_batch_run_gives_each_item_its_own_events(home, resources, speech_video, tmp_path):
    """`narra process` with several files runs them in one batch run; clients still get, per
    item, started, one completed per stage and completed, or the failed stage and
    analysis.failed with the classified error."""
    good = speech_video[0]
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(good.read_bytes()[:40_000])
    defs = build_defs(dict(resources))
    with dg.instance_for_test() as instance:
        results = {r.source_name: r for r in process_files([good, truncated], instance, defs)}
        assert results["speech.mp4"].run_id == results["truncated.mp4"].run_id  # one batch run
        sink = JsonlEventSink()
        cursor = _tick(instance, sink)
        events = sink.read()
        mine = [e for e in events if e["media_id"] == results["speech.mp4"].partition_key]
        types = [e["type"] for e in mine]
        chain = [k.to_user_string() for k in chain_for_kind(build_defs(), "video")]
        assert types[0] == "analysis.started" and types[-1] == "analysis.completed"
        assert sorted(types[1:-1]) == sorted(f"{s}.completed" for s in chain)
        theirs = [e for e in events if e["media_id"] == results["truncated.mp4"].partition_key]
        assert [e["type"] for e in theirs] == [
            "analysis.started", "video_source.failed", "analysis.failed"]
        assert theirs[-1]["error_class"] == "corrupt_media"
        assert len({e["id"] for e in events}) == len(events) == len(mine) + len(theirs)
        before = (home / "events" / "events.jsonl").read_text()
        _tick(instance, sink)
        _tick(instance, sink, cursor)
        assert (home / "events" / "events.jsonl").read_text() == before


def test_redis_stream_sink_publishes_each_event_once(processed):
    client = require_redis()
    instance, results = processed
    stream = f"narra:test-events:{uuid.uuid4().hex[:8]}"
    sink = RedisStreamEventSink(url=REDIS_URL, stream=stream, dedupe_seconds=600)
    try:
        cursor = _tick(instance, sink)
        _tick(instance, sink)  # the whole log again: every id is already in the stream
        _tick(instance, sink, cursor)
        events = sink.read()
        stages = len(chain_for_kind(build_defs(), "video"))
        assert client.xlen(stream) == len(events) == 2 + stages + 3
        good = [e for e in events if e["media_id"] == results["speech.mp4"].partition_key]
        assert [e["type"] for e in good][0] == "analysis.started"
        assert [e["type"] for e in good][-1] == "analysis.completed"
        entry = client.xrange(stream, count=1)[0][1]
        assert entry[b"type"] == b"analysis.started" and len(entry[b"id"]) == 32
    finally:
        client.delete(stream, *client.keys(f"{stream}:seen:*"))
