"""Video frames: keyframe sampling with PyAV, OCR of on-screen text, index rows with the frame's
time; a word drawn onto a video is found by `narra search` at the second it appears."""

import json
import subprocess
from fractions import Fraction
from pathlib import Path

import dagster as dg
import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from narra_dagster.defs.video import keyframes
from narra_dagster.defs.video.frames import (
    frame_label_text,
    frame_text_rows,
    video_frame_index_rows,
    video_frame_labels,
    video_frame_text,
    video_keyframes,
)
from narra_dagster.defs.video.assets import video_source
from narra_dagster.defs.intake.uploads import store_upload
from narra_dagster.resources import LanceSearchIndex, LocalMediaStore

from .conftest import REPO, subprocess_env

BOLD = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf")  # fonts-dejavu-core
WORD = "LIGHTHOUSE"
APPEARS_S = 3.0



def _write_h264(out, frames, fps: int, size: tuple[int, int], options: dict | None = None):
    """Encode RGB uint8 frames ([height, width, 3], ``size`` = (width, height) pixels) at ``fps``
    as an H.264 MP4 without audio; returns ``out``."""
    import av

    with av.open(str(out), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        if options:
            stream.options = options
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return out

def make_text_video(out: Path, *, word: str = WORD, appears_s: float = APPEARS_S,
                    duration_s: float = 6.0, fps: int = 10, x264_params: str | None = None) -> Path:
    """An H.264 MP4 (640x360, no audio) of a striped blue background on which ``word`` is drawn
    in white DejaVu Sans Bold, 56 px, from ``appears_s`` to the end."""

    size = (640, 360)
    font = ImageFont.truetype(str(BOLD), 56)
    background = Image.new("RGB", size, (30, 60, 90))
    draw = ImageDraw.Draw(background)
    for x in range(0, size[0], 40):
        draw.line([(x, 0), (x, size[1])], fill=(40, 80, 110), width=2)
    captioned = background.copy()
    ImageDraw.Draw(captioned).text((60, 150), word, fill=(255, 255, 255), font=font)
    plain, text = np.asarray(background), np.asarray(captioned)
    frames = (text if i / fps >= appears_s else plain for i in range(int(duration_s * fps)))
    return _write_h264(out, frames, fps, size,
                       {"crf": "28", **({"x264-params": x264_params} if x264_params else {})})


@pytest.fixture(scope="module")
def text_video(tmp_path_factory) -> Path:
    return make_text_video(tmp_path_factory.mktemp("frames") / "caption.mp4")


def test_keyframe_only_decoding_finds_the_scene_change(tmp_path):
    # x264 puts a keyframe at the scene cut and one every second here: keyframe-only decoding.
    dense = make_text_video(tmp_path / "dense.mp4", x264_params="keyint=10")
    sampling = keyframes.sample_frames(dense)
    assert sampling.mode == "keyframes" and sampling.keyframes >= 6
    assert [f.time_s for f in sampling.frames] == [0.0, APPEARS_S]
    assert all(f.keyframe for f in sampling.frames) and sampling.frames[1].change > 0.02


def test_sparse_keyframes_fall_back_to_one_frame_per_second(tmp_path):
    # One keyframe for the whole video (no scene-cut keyframes): the interval mode decodes all.
    sparse = make_text_video(tmp_path / "sparse.mp4", x264_params="scenecut=0:keyint=300")
    sampling = keyframes.sample_frames(sparse)
    assert sampling.mode == "interval" and sampling.keyframes == 1 and sampling.candidates == 6
    assert [f.time_s for f in sampling.frames] == [0.0, APPEARS_S]
    assert sampling.frames[1].keyframe is False
    bounded = keyframes.sample_frames(sparse, max_frames=2, min_change=0.0)
    assert len(bounded.frames) == 2 and bounded.interval_s == 3.0


def test_audio_only_file_has_no_frames(tmp_path):
    import av

    path = tmp_path / "tone.m4a"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=16000, layout="mono")
        for i in range(10):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp",
                                               layout="mono")
            frame.sample_rate, frame.pts = 16000, i * 1024
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    sampling = keyframes.sample_frames(path)
    assert sampling.mode == "no_video" and sampling.frames == []


def test_a_line_still_on_screen_is_indexed_once():
    frames = [{"time_s": 0.0, "lines": []},
              {"time_s": 3.0, "lines": [{"text": "HELLO", "box": [1, 2, 3, 4], "confidence": 0.9}]},
              {"time_s": 4.0, "lines": [{"text": "hello", "box": [1, 2, 3, 4], "confidence": 0.9}]},
              {"time_s": 5.0, "lines": []},
              {"time_s": 6.0, "lines": [{"text": "HELLO", "box": [1, 2, 3, 4], "confidence": 0.9}]}]
    assert [r["time_s"] for r in frame_text_rows(frames)] == [3.0, 6.0]


def test_word_on_a_frame_is_found_by_narra_search_at_its_second(text_video, home, embedder, ocr,
                                                                 instance):
    resources = {"media_store": LocalMediaStore(root=str(home / "media")), "embedder": embedder,
                 "search_index": LanceSearchIndex(uri=str(home / "index")), "ocr": ocr}
    key = store_upload(text_video, resources["media_store"]).partition_key
    instance.add_dynamic_partitions("videos", [key])
    text_assets = [video_keyframes, video_frame_text, video_frame_index_rows]
    result = dg.materialize([video_source, *text_assets], partition_key=key,
                            resources=resources, instance=instance)
    assert result.success
    checks = [e.event_specific_data for e in result.all_events
              if e.event_type_value == "ASSET_CHECK_EVALUATION"]
    assert [(c.check_name, c.passed) for c in checks] == [("frame_rows_match_text", True)]
    store = resources["media_store"]
    kept = store.read_json(key, "keyframes.json")
    assert [f["time_s"] for f in kept["frames"]] == [0.0, APPEARS_S]
    with Image.open(store.local_path(key, kept["frames"][1]["thumb"])) as thumb:
        assert thumb.format == "WEBP" and max(thumb.size) == 320
    text = store.read_json(key, "frame_text.json")
    assert text[0]["lines"] == [] and [l["text"] for l in text[1]["lines"]] == [WORD]

    found = subprocess.run(["narra", "search", WORD.lower(), "--json"], env=subprocess_env(home),
                           capture_output=True, text=True, timeout=300, cwd=REPO)
    assert found.returncode == 0, found.stderr
    hit = json.loads(found.stdout)[0]
    assert (hit["media_id"], hit["kind"], hit["source_name"]) == (key, "video", "caption.mp4")
    assert APPEARS_S <= hit["start_s"] == hit["end_s"] < APPEARS_S + 1.0
    x0, y0, x1, y1 = hit["box"]
    assert 40 <= x0 < x1 <= 640 and 130 <= y0 < y1 <= 240  # the word is drawn at (60, 150)
    assert hit["page"] is None and WORD in hit["text"]


def make_slide_show(out: Path, photos: list[str], seconds_each: float = 2.0, fps: int = 4) -> Path:
    """A silent H.264 MP4 (320x240) showing scikit-image photos one after another."""
    from skimage import data

    slides = []
    for name in photos:
        picture = Image.fromarray(getattr(data, name)()).convert("RGB")
        picture.thumbnail((320, 240))
        canvas = Image.new("RGB", (320, 240), (16, 16, 16))
        canvas.paste(picture, ((320 - picture.width) // 2, (240 - picture.height) // 2))
        slides.append(np.asarray(canvas))
    per = int(seconds_each * fps)
    return _write_h264(out, (slides[i // per] for i in range(per * len(slides))), fps, (320, 240))


def test_frame_label_text_keeps_the_top_label_and_likely_ones():
    labels = [("tabby, tabby cat", 0.4), ("Egyptian cat", 0.3), ("lynx", 0.05)]
    assert frame_label_text(labels) == "tabby, tabby cat; Egyptian cat"
    assert frame_label_text([("espresso", 0.05)]) == "espresso"


def test_labels_on_frames_are_searchable_at_their_second(tmp_path, home, embedder,
                                                         image_classifier, instance):
    video = make_slide_show(tmp_path / "photos.mp4", ["chelsea", "coffee"])
    resources = {"media_store": LocalMediaStore(root=str(home / "media")), "embedder": embedder,
                 "search_index": LanceSearchIndex(uri=str(home / "index")),
                 "image_classifier": image_classifier}
    key = store_upload(video, resources["media_store"]).partition_key
    instance.add_dynamic_partitions("videos", [key])
    result = dg.materialize([video_source, video_keyframes, video_frame_labels], partition_key=key,
                            resources=resources, instance=instance)
    assert result.success
    labels = resources["media_store"].read_json(key, "frame_labels.json")
    assert [f["time_s"] for f in labels] == [0.0, 2.0]
    assert "cat" in labels[0]["labels"][0][0] and labels[0]["labels"][0][1] >= 0.15
    assert labels[1]["labels"][0][0].split(",")[0] in ("espresso", "cup", "coffee mug")
    index = resources["search_index"]
    assert index.count(key) == 2
    for query, second in (("cat", 0.0), ("espresso", 2.0)):
        hit = index.search(query, embedder.embed([query])[0], limit=10)[0]
        assert (hit.media_id, hit.origin, hit.start_s, hit.end_s) == (
            key, "video_frame_labels", second, second), (query, hit)
        assert hit.box == [0.0, 0.0, 320.0, 240.0]
