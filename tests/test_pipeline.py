"""The video chain on a real Dagster instance with real models, media and LanceDB."""

import dagster as dg
import numpy as np

from narra_dagster.defs.video import assets as video_assets_module
from narra_dagster.definitions import build_defs
from narra_dagster.app.processing import process_files
from narra_dagster.resources import FasterWhisperTranscriber

from .conftest import check_outcomes as _checks
from .conftest import ingest_and_materialize
from .conftest import materialization_metadata as _metadata


def test_speech_video_is_transcribed_indexed_and_found(speech_video, resources, instance, embedder):
    path, timeline = speech_video
    key, result = ingest_and_materialize(path, resources, instance)
    assert result.success
    assert _checks(result) == {"transcript_confidence": True, "embeddings_shape_and_norm": True,
                               "index_rows_match_chunks": True}
    source = _metadata(result, "video_source")
    assert source["video_codec"] == "h264" and source["audio_codec"] == "aac"
    assert source["resolution"] == "320x240" and source["source_name"] == "speech.mp4"
    transcript = _metadata(result, "video_transcript")
    assert transcript["model"] == "faster-whisper tiny.en int8"
    assert 0 < transcript["real_time_factor"] < 1.0 and transcript["segments"] >= 4
    chunks = _metadata(result, "video_chunks")["chunks"]
    assert _metadata(result, "video_index_rows")["rows"] == chunks == resources["search_index"].count(key)

    spoken = timeline[2]  # "Please remember to water the garden every morning."
    query = "water the garden"
    hits = resources["search_index"].search(query, embedder.embed([query])[0], limit=3)
    assert hits[0].media_id == key and "garden" in hits[0].text
    assert abs(hits[0].start_s - spoken.start_s) < 2.0, (hits[0], spoken)


def test_same_bytes_twice_is_one_partition_with_the_same_rows(speech_video, resources, instance, tmp_path):
    path, _ = speech_video
    copy = tmp_path / "another name.mp4"
    copy.write_bytes(path.read_bytes())
    key1, first = ingest_and_materialize(path, resources, instance)
    rows = resources["search_index"].count()
    key2, second = ingest_and_materialize(copy, resources, instance)
    assert first.success and second.success and key1 == key2
    assert instance.get_dynamic_partitions("videos") == [key1]
    assert resources["search_index"].count() == rows == resources["search_index"].count(key1)


def test_silent_clip_succeeds_with_an_empty_transcript(silent_clip, resources, instance):
    key, result = ingest_and_materialize(silent_clip, resources, instance)
    assert result.success
    assert _metadata(result, "video_source")["audio_codec"] == "none"
    assert _metadata(result, "video_audio")["has_audio"] is False
    transcript = _metadata(result, "video_transcript")
    assert transcript["segments"] == 0 and "no audio track" in transcript["note"]
    assert _metadata(result, "video_index_rows")["rows"] == 0
    assert all(_checks(result).values())
    store = resources["media_store"]
    assert np.load(store.local_path(key, video_assets_module.EMBEDDINGS)).shape == (0, 384)


def test_bad_files_fail_alone_classified_and_never_retried(speech_video, home, tmp_path,
                                                           transcriber, embedder):
    good, _ = speech_video
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(good.read_bytes()[:40_000])
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    text = tmp_path / "letter.mp4"
    text.write_text("Dear team, this is not a video.\n" * 20)
    test_defs = build_defs({"transcriber": transcriber, "embedder": embedder})
    with dg.instance_for_test() as instance:
        results = process_files([truncated, empty, good, text], instance, test_defs)
        by_name = {r.source_name: r for r in results}
        assert by_name["speech.mp4"].status == "succeeded"
        # An empty file is refused before it becomes a partition (every empty file is the
        # same content), so it has no run to look at.
        assert (by_name["empty.mp4"].status, by_name["empty.mp4"].error_class,
                by_name["empty.mp4"].partition_key) == ("failed", "empty_file", None)
        expected = {"truncated.mp4": "corrupt_media", "letter.mp4": "not_media"}
        for name, error_class in expected.items():
            result = by_name[name]
            assert result.status == "failed" and result.error_class == error_class, result
            assert result.error.startswith(f"[{error_class}] video_source:")
            # classified bad input is not retried: exactly one attempt at the step
            starts = instance.all_logs(result.run_id, of_type=dg.DagsterEventType.STEP_START)
            assert len(starts) == 1
        keys = {r.partition_key for r in results} - {None}
        assert len(keys) == 3 and set(instance.get_dynamic_partitions("videos")) == keys
        index = test_defs.resources["search_index"]
        assert index.count() == index.count(by_name["speech.mp4"].partition_key) > 0


class _FlakyTranscriber(FasterWhisperTranscriber):
    """The real transcriber, made to fail its first call as a crashed runtime would (the one
    failure here that cannot be produced for real on demand)."""


    def transcribe(self, audio):
        type(self)._failures = getattr(type(self), "_failures", 0) + 1
        if type(self)._failures == 1:
            raise RuntimeError("CTranslate2 worker crashed")
        return super().transcribe(audio)


def test_transient_errors_are_retried_with_backoff(speech_video, resources, instance):
    path, _ = speech_video
    resources = dict(resources, transcriber=_FlakyTranscriber())
    key, result = ingest_and_materialize(path, resources, instance)
    assert result.success
    events = instance.all_logs(result.run_id)
    kinds = [e.dagster_event.event_type for e in events
             if e.dagster_event and e.step_key == "video_transcript"]
    assert dg.DagsterEventType.STEP_UP_FOR_RETRY in kinds
    assert kinds.count(dg.DagsterEventType.STEP_START) + kinds.count(dg.DagsterEventType.STEP_RESTARTED) == 2
    assert _metadata(result, "video_transcript")["segments"] >= 4


class _BrokenTranscriber(FasterWhisperTranscriber):
    """The real transcriber with a deterministic fault: every call fails the same way."""

    def transcribe(self, audio):
        raise ValueError("audio of shape (0, 2) is not mono")


def test_a_deterministic_error_is_reported_once_with_its_cause(speech_video, resources, instance):
    """Not "Exceeded max_retries": a ValueError would fail every retry the same way, so the step
    fails at once, classified by the exception's class, with its message as the root cause."""
    from narra_dagster.core.runs import run_failure

    path, _ = speech_video
    resources = dict(resources, transcriber=_BrokenTranscriber())
    key, result = ingest_and_materialize(path, resources, instance)
    assert not result.success
    message, error_class = run_failure(instance, result.run_id)
    assert error_class == "ValueError"
    assert message == "[ValueError] video_transcript: audio of shape (0, 2) is not mono"
    assert not [e for e in instance.all_logs(result.run_id)
                if e.dagster_event and e.dagster_event.event_type == dg.DagsterEventType.STEP_UP_FOR_RETRY]
