"""What a video shows: keyframes, the text on screen (OCR), labels of what is in the picture,
and, as index rows, when and where each is shown.

These assets join the ``video`` group, so the ``video_pipeline`` job, the upload sensor's runs
and ``narra process`` run them after ``video_source``:

``video_source -> video_keyframes -> video_frame_text -> video_frame_index_rows``
``video_keyframes -> video_frame_labels`` (ImageNet labels of each frame, and their index rows)

An audio-only file has no picture: ``video_keyframes`` keeps no frame (mode ``no_video``) and
the stages after it materialize empty with a note, so the item still ends searchable by what is
said.
"""

import io
import logging
import time

import dagster as dg
import numpy as np

from narra_dagster.core import pools
from narra_dagster.core.errors import BadInputError
from narra_dagster.core.stage import upload_name
from narra_dagster.defs.search.settings import EMBEDDING_MODEL
from narra_dagster.defs.video import keyframes
from narra_dagster.defs.video.assets import video_source
from narra_dagster.defs.video.partitions import video_stage
from narra_dagster.resources.embedder import TextEmbedder
from narra_dagster.resources.media_store import SOURCE, MediaStore
from narra_dagster.resources.ocr import OcrEngine
from narra_dagster.resources.recognizer import ImageClassifier
from narra_dagster.resources.search_index import IndexRow, SearchIndex

KEYFRAMES = "keyframes.json"
FRAME_TEXT = "frame_text.json"
FRAME_LABELS = "frame_labels.json"
# Labels below this probability are kept in frame_labels.json but not indexed (the top one
# always is): ImageNet's 1000 classes spread probability over near synonyms (tabby / tiger cat).
MIN_INDEXED_LABEL = 0.1
# A frame whose top label is below this gets no label row: video frames are often screens,
# slides or text, where an ImageNet guess ("radiator" at 0.10 for a striped blue background,
# measured here) is noise in search results.
MIN_FRAME_LABEL = 0.15
THUMB_SIDE = 320  # pixels, longest side of a thumbnail
FRAME_QUALITY = 90  # WebP quality of the frames kept for OCR and labels (text stays sharp)
THUMB_QUALITY = 75

CHECK_FRAME_ROWS = "frame_rows_match_text"
CHECK_LABEL_ROWS = "label_rows_match_frames"


def frame_name(index: int) -> str:
    """Artifact name of kept frame ``index`` (WebP, at most 1280 px on its longest side)."""
    return f"frame_{index:04d}.webp"


def thumb_name(index: int) -> str:
    """Artifact name of the thumbnail of kept frame ``index`` (WebP, 320 px longest side)."""
    return f"thumb_{index:04d}.webp"


def _webp(image: np.ndarray, *, side: int | None, quality: int) -> bytes:
    from PIL import Image

    picture = Image.fromarray(image)
    if side:
        picture.thumbnail((side, side))
    buffer = io.BytesIO()
    picture.save(buffer, "WEBP", quality=quality, method=4)
    return buffer.getvalue()


def load_frame(media_store: MediaStore, key: str, index: int) -> np.ndarray:
    """A kept frame as uint8 RGB [h, w, 3]. Raises ``FileNotFoundError`` when it is missing."""
    from PIL import Image

    with Image.open(media_store.local_path(key, frame_name(index))) as picture:
        return np.asarray(picture.convert("RGB"))


def picture_note(keyframes_info: dict) -> str:
    """The note a frame stage's metadata carries: why it has nothing, or ``""``."""
    if keyframes_info.get("mode") == "no_video":
        return "audio only: no pictures, so nothing to read or label"
    return ""


def _fmt(seconds: float) -> str:
    return f"{int(seconds // 60)}:{seconds % 60:05.2f}"


@video_stage(kinds={"pyav", "webp"}, deps=[video_source])
def video_keyframes(key: str, *, media_store: MediaStore,
                    log: logging.Logger) -> dg.MaterializeResult:
    """The frames worth looking at: keyframes (decoded alone, cheaply) or one frame per second,
    kept only where the picture changed (a new scene, a caption appearing); at most 120. An
    audio-only file has none, and says so.

    Sample the frames that show something new (:func:`narra_dagster.defs.video.keyframes.sample_frames`)
    and store each as ``frame_NNNN.webp`` (for OCR and labels) and ``thumb_NNNN.webp``, with
    ``keyframes.json``: ``{"mode", "width", "height", "frames": [{"index", "time_s", "keyframe",
    "change", "frame", "thumb", "frame_width", "frame_height"}]}`` (times in seconds, sizes in
    pixels; ``width``/``height`` are the video's own).

    Raises:
        BadInputError: ``corrupt_media`` when FFmpeg fails while decoding frames.
    """
    import av

    try:
        sampling = keyframes.sample_frames(media_store.local_path(key, SOURCE))
    except av.error.FFmpegError as exc:
        raise BadInputError(f"the video's frames cannot be decoded (FFmpeg: {exc})",
                            code="corrupt_media") from exc
    started = time.perf_counter()
    entries = []
    for i, frame in enumerate(sampling.frames):
        media_store.write_bytes(key, frame_name(i), _webp(frame.image, side=None, quality=FRAME_QUALITY))
        media_store.write_bytes(key, thumb_name(i), _webp(frame.image, side=THUMB_SIDE, quality=THUMB_QUALITY))
        entries.append({"index": i, "time_s": frame.time_s, "keyframe": frame.keyframe,
                        "change": frame.change, "frame": frame_name(i), "thumb": thumb_name(i),
                        "frame_width": int(frame.image.shape[1]),
                        "frame_height": int(frame.image.shape[0])})
    encode_s = time.perf_counter() - started
    media_store.write_json(key, KEYFRAMES, {
        "mode": sampling.mode, "width": sampling.width, "height": sampling.height,
        "duration_s": sampling.duration_s, "interval_s": sampling.interval_s,
        "keyframes_in_video": sampling.keyframes, "candidates": sampling.candidates,
        "frames": entries})
    rows = ["| # | at | change | keyframe | thumbnail |", "|---|---|---|---|---|"]
    rows += [f"| {e['index']} | {_fmt(e['time_s'])} | {e['change']:.3f} | {e['keyframe']} | "
             f"`{e['thumb']}` |" for e in entries[:20]]
    if not entries:
        rows.append("| | | | | (no video stream) |" if sampling.mode == "no_video" else "| | | | | (none) |")
    n = max(len(entries), 1)
    log.info(f"{key}: {len(entries)} frames kept of {sampling.candidates} candidates "
             f"({sampling.mode}) in {sampling.decode_s:.2f} s")
    return dg.MaterializeResult(metadata={
        "mode": sampling.mode,
        "note": picture_note({"mode": sampling.mode}),
        "frames": dg.MetadataValue.int(len(entries)),
        "candidates": dg.MetadataValue.int(sampling.candidates),
        "keyframes_in_video": dg.MetadataValue.int(sampling.keyframes),
        "interval_s": dg.MetadataValue.float(float(sampling.interval_s)),
        "decode_s": dg.MetadataValue.float(round(sampling.decode_s, 4)),
        "decode_s_per_frame": dg.MetadataValue.float(round(sampling.decode_s / n, 5)),
        "thumbnail_s": dg.MetadataValue.float(round(encode_s, 4)),
        "preview": dg.MetadataValue.md("\n".join(rows)),
        "path": dg.MetadataValue.path(media_store.uri(key, KEYFRAMES)),
    })


@video_stage(kinds={"rapidocr"}, deps=[video_keyframes], retry=True)
def video_frame_text(key: str, *, media_store: MediaStore, ocr: OcrEngine,
                     log: logging.Logger) -> dg.MaterializeResult:
    """Text shown on screen: RapidOCR on every kept frame, lines with confidences and boxes and
    the frame's time; ``frame_text.json``: ``[{"index", "time_s", "ocr_s", "lines":
    [{"text", "confidence", "box"}]}]``, boxes ``[x0, y0, x1, y1]`` in pixels of the video's
    own frame size."""
    info = media_store.read_json(key, KEYFRAMES)
    out, seconds = [], []
    for entry in info["frames"]:
        image = load_frame(media_store, key, entry["index"])
        started = time.perf_counter()
        lines = ocr.read(image)
        seconds.append(time.perf_counter() - started)
        scale = info["width"] / entry["frame_width"] if entry["frame_width"] else 1.0
        out.append({"index": entry["index"], "time_s": entry["time_s"],
                    "ocr_s": round(seconds[-1], 4),
                    "lines": [{"text": line.text, "confidence": line.confidence,
                               "box": [round(v * scale, 1) for v in line.box]} for line in lines]})
    media_store.write_json(key, FRAME_TEXT, out)
    count = sum(len(f["lines"]) for f in out)
    rows = ["| at | text |", "|---|---|"]
    rows += [f"| {_fmt(f['time_s'])} | {' / '.join(l['text'] for l in f['lines']).replace('|', '/')} |"
             for f in out if f["lines"]][:20]
    if not count:
        rows.append("| | (no text on screen) |")
    log.info(f"{key}: {count} lines of text on {len(out)} frames in {sum(seconds):.2f} s")
    return dg.MaterializeResult(metadata={
        "note": picture_note(info),
        "frames": dg.MetadataValue.int(len(out)),
        "frames_with_text": dg.MetadataValue.int(sum(1 for f in out if f["lines"])),
        "lines": dg.MetadataValue.int(count),
        "ocr_s": dg.MetadataValue.float(round(sum(seconds, 0.0), 3)),
        "ocr_s_per_frame": dg.MetadataValue.float(round(float(np.mean(seconds)), 4) if seconds else 0.0),
        "preview": dg.MetadataValue.md("\n".join(rows)),
        "path": dg.MetadataValue.path(media_store.uri(key, FRAME_TEXT)),
    })


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def frame_text_rows(frames: list[dict]) -> list[dict]:
    """The OCR lines to index: each line once per appearance. A line also read on the previous
    kept frame is still on screen, so only its first frame (where it appears) gives a row.

    Returns:
        ``[{"text", "time_s", "box", "confidence"}]`` in time order.
    """
    rows, previous = [], set()
    for frame in frames:
        current = {_norm(line["text"]) for line in frame["lines"]}
        for line in frame["lines"]:
            if _norm(line["text"]) not in previous:
                rows.append({"text": line["text"], "time_s": frame["time_s"], "box": line["box"],
                             "confidence": line["confidence"]})
        previous = current
    return rows


@video_stage(
    kinds={"lancedb"},
    deps=[video_frame_text, EMBEDDING_MODEL],
    retry=True,
    pool=pools.SEARCH_INDEX,
    check_specs=[dg.AssetCheckSpec(CHECK_FRAME_ROWS, asset="video_frame_index_rows",
                                   description="One index row per line of on-screen text.")],
)
def video_frame_index_rows(key: str, *, media_store: MediaStore, embedder: TextEmbedder,
                           search_index: SearchIndex, log: logging.Logger) -> dg.MaterializeResult:
    """On-screen text in the search index, so a search for a word shown in the video finds the
    second it is shown: the video's on-screen-text rows are replaced, one per line of text where it first
    appears, ``start_s == end_s ==`` the frame's time (seconds) and ``box`` its place (pixels)."""
    note = picture_note(media_store.read_json(key, KEYFRAMES))
    lines = frame_text_rows(media_store.read_json(key, FRAME_TEXT))
    started = time.perf_counter()
    vectors = embedder.embed([line["text"] for line in lines]) if lines else []
    embed_s = time.perf_counter() - started
    source_name = upload_name(media_store, key)
    rows = [IndexRow(media_id=key, kind="video", origin="video_frame_index_rows",
                     source_name=source_name, chunk_index=i, start_s=line["time_s"],
                     end_s=line["time_s"], box=tuple(line["box"]), text=line["text"],
                     vector=v.tolist())
            for i, (line, v) in enumerate(zip(lines, vectors))]
    started = time.perf_counter()
    count = search_index.upsert_partition(key, "video", rows, origin="video_frame_index_rows")
    upsert_s = time.perf_counter() - started
    log.info(f"{key}: {count} on-screen text rows")
    return dg.MaterializeResult(
        metadata={
            "rows": dg.MetadataValue.int(count),
            "note": note,
            "model": embedder.model_name,
            "embedding_s": dg.MetadataValue.float(round(embed_s, 4)),
            "upsert_s": dg.MetadataValue.float(round(upsert_s, 4)),
        },
        check_results=[dg.AssetCheckResult(
            check_name=CHECK_FRAME_ROWS, passed=count == len(lines),
            metadata={"rows": count, "lines": len(lines)})],
    )


def frame_label_text(labels: list[tuple[str, float]]) -> str:
    """The searchable text of a frame's labels: the top label and any other at or above
    :data:`MIN_INDEXED_LABEL`, each with all its ImageNet synonyms ("tabby, tabby cat; Egyptian
    cat")."""
    kept = [name for i, (name, p) in enumerate(labels) if i == 0 or p >= MIN_INDEXED_LABEL]
    return "; ".join(kept)


@video_stage(
    kinds={"onnx", "lancedb"},
    deps=[video_keyframes, EMBEDDING_MODEL],
    retry=True,
    pool=pools.SEARCH_INDEX,
    check_specs=[dg.AssetCheckSpec(CHECK_LABEL_ROWS, asset="video_frame_labels",
                                   description="One index row per frame with a confident label.")],
)
def video_frame_labels(key: str, *, media_store: MediaStore, image_classifier: ImageClassifier,
                       embedder: TextEmbedder, search_index: SearchIndex,
                       log: logging.Logger) -> dg.MaterializeResult:
    """What each kept frame shows, so a search for "cat" finds the second a cat is on screen.
    Classify every kept frame (top-5 ImageNet labels, ``frame_labels.json``: ``[{"index",
    "time_s", "labels": [[name, probability]]}]``) and replace the video's label rows in the
    index: one row per frame whose top label reaches :data:`MIN_FRAME_LABEL`, at its time
    (``start_s == end_s``, seconds), ``box`` the whole frame in pixels of the video."""
    info = media_store.read_json(key, KEYFRAMES)
    frames = info["frames"]
    images = [load_frame(media_store, key, f["index"]) for f in frames]
    started = time.perf_counter()
    recognitions = image_classifier.recognize(images) if images else []
    classify_s = time.perf_counter() - started
    out = [{"index": f["index"], "time_s": f["time_s"], "labels": [list(l) for l in r.labels]}
           for f, r in zip(frames, recognitions)]
    media_store.write_json(key, FRAME_LABELS, out)
    confident = [(f, frame_label_text(r.labels)) for f, r in zip(frames, recognitions)
                 if r.labels and r.labels[0][1] >= MIN_FRAME_LABEL]
    vectors = embedder.embed([text for _, text in confident]) if confident else []
    box = (0.0, 0.0, float(info["width"]), float(info["height"]))
    source_name = upload_name(media_store, key)
    rows = [IndexRow(media_id=key, kind="video", origin="video_frame_labels",
                     source_name=source_name, chunk_index=i, start_s=f["time_s"],
                     end_s=f["time_s"], box=box, text=text, vector=v.tolist())
            for i, ((f, text), v) in enumerate(zip(confident, vectors))]
    count = search_index.upsert_partition(key, "video", rows, origin="video_frame_labels")
    table = ["| at | labels |", "|---|---|"]
    table += [f"| {_fmt(o['time_s'])} | " + ", ".join(f"{n.split(',')[0]} {p:.2f}" for n, p in o["labels"][:3])
              + " |" for o in out[:20]]
    log.info(f"{key}: labelled {len(out)} frames in {classify_s:.2f} s")
    return dg.MaterializeResult(
        metadata={
            "model": image_classifier.model_name,
            "note": picture_note(info),
            "frames": dg.MetadataValue.int(len(out)),
            "rows": dg.MetadataValue.int(count),
            "min_top_probability": dg.MetadataValue.float(MIN_FRAME_LABEL),
            "classify_s": dg.MetadataValue.float(round(classify_s, 4)),
            "classify_s_per_frame": dg.MetadataValue.float(round(classify_s / max(len(out), 1), 5)),
            "preview": dg.MetadataValue.md("\n".join(table)),
            "path": dg.MetadataValue.path(media_store.uri(key, FRAME_LABELS)),
        },
        check_results=[dg.AssetCheckResult(
            check_name=CHECK_LABEL_ROWS, passed=count == len(confident),
            metadata={"rows": count, "frames": len(frames), "confident_frames": len(confident),
                      "min_top_probability": MIN_FRAME_LABEL})],
    )
