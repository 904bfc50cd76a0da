"""Pure helpers: partition keys, type sniffing, the media store's safety, chunking."""

import os
import time

import pytest

from narra_dagster.defs.video.chunking import chunk_segments
from narra_dagster.core.errors import BadInputError
from narra_dagster.defs.intake.uploads import classify_upload, store_upload
from narra_dagster import registry
from narra_dagster.core.media import partition_key_for
from narra_dagster.resources import LocalMediaStore
from narra_dagster.resources.speech import Segment, Word


def test_partition_key_depends_on_bytes_not_name(tmp_path):
    a, b, c = tmp_path / "a.mp4", tmp_path / "renamed.mov", tmp_path / "other.mp4"
    a.write_bytes(b"same bytes")
    b.write_bytes(b"same bytes")
    c.write_bytes(b"other bytes")
    assert partition_key_for(a) == partition_key_for(b) != partition_key_for(c)
    assert len(partition_key_for(a)) == 16 and int(partition_key_for(a), 16) >= 0


@pytest.mark.parametrize(
    "head, kind",
    [
        (b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00", "video"),
        (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00", "image"),
        (b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81", "video"),
        (b"RIFF\x00\x00\x00\x00WAVEfmt ", "video"),
        (b"\xff\xd8\xff\xe0\x00\x10JFIF", "image"),
        (b"\x89PNG\r\n\x1a\n\x00\x00", "image"),
        (b"%PDF-1.7\n%\xe2\xe3", "document"),
        (b"hello, this is text", None),
        (b"", None),
    ],
)
def test_sniff_kind_from_magic_bytes(head, kind):
    assert getattr(registry.kind_for_bytes(head), "name", None) == kind


def test_extension_is_only_a_fallback(tmp_path, silent_clip):
    text_as_mp4 = tmp_path / "notes.mp4"
    text_as_mp4.write_text("just some text")
    video_as_txt = tmp_path / "clip.txt"
    video_as_txt.write_bytes(silent_clip.read_bytes())
    assert registry.kind_for_file(text_as_mp4).name == "video"  # enters the chain, fails validation there
    assert registry.kind_for_file(video_as_txt).name == "video"  # the bytes win over the name
    unknown = tmp_path / "notes.txt"
    unknown.write_text("text")
    with pytest.raises(BadInputError) as info:
        classify_upload(unknown)
    assert info.value.code == "unsupported_type"


def test_store_never_builds_paths_from_user_input(tmp_path):
    store = LocalMediaStore(root=str(tmp_path / "media"))
    for key, name in [("../../etc", "passwd"), ("0123456789abcdef", "../x"),
                      ("0123456789ABCDEF", "source"), ("0123456789abcdef", "a/b")]:
        with pytest.raises(ValueError):
            store.write_bytes(key, name, b"x")
    hostile = tmp_path / "..\n$(rm -rf ~) ünïcode.mp4"
    hostile.write_bytes(b"\x00\x00\x00\x18ftypisom" + b"x" * 32)
    upload = store_upload(hostile, store)
    assert upload.source_name == hostile.name
    stored = sorted(p.relative_to(tmp_path / "media").as_posix()
                    for p in (tmp_path / "media").rglob("*"))
    assert stored == [upload.partition_key, f"{upload.partition_key}/manifest.json",
                      f"{upload.partition_key}/source"]


def test_atomic_writer_leaves_nothing_on_failure(tmp_path):
    store = LocalMediaStore(root=str(tmp_path))
    key = "0123456789abcdef"
    store.write_bytes(key, "chunks.json", b"old")
    with pytest.raises(RuntimeError):
        with store.writer(key, "chunks.json") as tmp:
            tmp.write_bytes(b"half-writ")
            raise RuntimeError("crash mid-write")
    assert store.read_bytes(key, "chunks.json") == b"old"
    assert [p.name for p in (tmp_path / key).iterdir()] == ["chunks.json"]


def test_a_writer_killed_mid_write_leaves_a_temp_file_that_the_next_write_removes(tmp_path):
    store = LocalMediaStore(root=str(tmp_path))
    key = "0123456789abcdef"
    folder = tmp_path / key
    folder.mkdir()
    # What a SIGKILLed writer leaves: its temp file, its cleanup never run. A fresh one may be a
    # live concurrent write, so only old ones go.
    orphan = folder / ".audio.wav.k1ll3d.tmp"
    orphan.write_bytes(b"half")
    os.utime(orphan, (time.time() - 2 * 3600,) * 2)
    fresh = folder / ".audio.wav.l1ve.tmp"
    fresh.write_bytes(b"in progress")
    other = folder / ".chunks.json.x.tmp"
    other.write_bytes(b"another artifact's")
    os.utime(other, (time.time() - 2 * 3600,) * 2)
    store.write_bytes(key, "audio.wav", b"RIFF")
    assert sorted(p.name for p in folder.iterdir()) == [".audio.wav.l1ve.tmp", ".chunks.json.x.tmp",
                                                         "audio.wav"]


def _segment(start, end, text):
    words = text.split()
    step = (end - start) / len(words)
    return Segment(start_s=start, end_s=end, text=text, confidence=0.9, avg_logprob=-0.1,
                   words=[Word(start_s=start + i * step, end_s=start + (i + 1) * step, word=w,
                               probability=0.9) for i, w in enumerate(words)])


def test_chunks_follow_segment_boundaries_and_limits():
    segments = [_segment(i * 4.0, i * 4.0 + 3.5, f"sentence number {i} has six words") for i in range(10)]
    chunks = chunk_segments(segments, max_seconds=15.0, max_words=40)
    assert [c.chunk_index for c in chunks] == list(range(len(chunks)))
    assert all(c.end_s - c.start_s <= 15.0 for c in chunks)
    assert {c.start_s for c in chunks} <= {s.start_s for s in segments}
    assert " ".join(c.text for c in chunks) == " ".join(s.text for s in segments)
    assert sum(len(c.words) for c in chunks) == 60
    long = _segment(0.0, 29.0, " ".join(["word"] * 80))
    assert len(chunk_segments([long])) == 1
    assert chunk_segments([]) == []


def test_a_name_that_claims_another_kind_is_a_type_mismatch():
    from narra_dagster.core.stage import check_declared_kind

    check_declared_kind({"kind": "image", "declared_kind": "image", "source_name": "a.png"})
    check_declared_kind({"kind": "video", "declared_kind": None, "source_name": "clip"})
    check_declared_kind({"kind": "video"})  # manifests from before declared_kind
    with pytest.raises(BadInputError) as info:
        check_declared_kind({"kind": "image", "declared_kind": "document", "source_name": "x.pdf"})
    assert info.value.code == "type_mismatch" and "x.pdf" in str(info.value)


@pytest.mark.parametrize("word, kind", [("video", "video"), ("audio", "video"), ("MP3", "video"),
                                        ("photo", "image"), ("images", "image"), ("jpg", "image"),
                                        ("pdf", "document"), ("Documents", "document")])
def test_kinds_answer_to_the_words_people_use(word, kind):
    assert registry.get(word).name == kind


def test_an_unknown_kind_names_the_known_ones():
    with pytest.raises(registry.UnknownKindError, match="video, image, document"):
        registry.get("spreadsheet")
