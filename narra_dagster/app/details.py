"""What an item's stages found, read back from the media store for its page; its thumbnail;
its PDF pages as pictures.

Everything here reads artifacts the assets wrote (names in each kind's ``assets.py``); a stage
that has not run yet simply contributes nothing. The one thing computed on demand is a PDF
page's picture (:func:`page_image`): PDFium renders it once, at most 2,000 pixels wide, after
the same inflation check the ``document_pages`` stage makes, and it is kept beside the item.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from narra_dagster.resources.media_store import SOURCE, MediaStore

DERIVATIVE = re.compile(r"(frame|thumb)_\d{4}\.webp|thumb_(small|medium)\.webp|page_\d{4}_w\d{2,4}\.webp")
"""Names of the stored pictures ``GET /api/v1/media/{id}/files/{name}`` serves."""

MAX_SEGMENTS = 5000
MAX_PAGE_TEXT = 3000  # characters of each page's text in the details


def _read(store: MediaStore, key: str, name: str) -> Any:
    try:
        return store.read_json(key, name) if store.exists(key, name) else None
    except (OSError, ValueError):
        return None


def _files(key: str, name: str) -> str:
    from narra_dagster.app.api import API_PREFIX

    return f"{API_PREFIX}/media/{key}/files/{name}"


def item_details(store: MediaStore, key: str, kind: str) -> dict[str, Any]:
    """The item's findings as JSON-ready lists, each present once its stage has run.

    video (and audio): ``duration_s`` (seconds), ``has_video``, ``video_width``/``video_height``
    (pixels: frame boxes are in these), ``language``, ``transcript`` (segments
    ``{start_s, end_s, text}``), ``keyframes`` (``{index, time_s, thumb, frame}`` with URLs,
    ``labels``, ``text`` read on the frame), ``summary`` (``{locator: seconds, text}``),
    ``keywords``; image: ``width``/``height`` (pixels), ``labels`` (``{name, score}``), ``ocr``
    (``{text, confidence, box: [x0, y0, x1, y1] pixels}``), ``near_duplicates``
    (``{media_id, ...}``), ``thumbnail``; document: ``pages`` (count), ``page_text``
    (``{page, method, text}``, text cut at 3,000 characters), ``summary`` (``{locator: page,
    text}``), ``keywords``.
    """
    out: dict[str, Any] = {}
    if kind == "video":
        probe = _read(store, key, "probe.json") or {}
        out["duration_s"] = probe.get("duration_s")
        out["has_video"] = bool(probe.get("video")) if probe else None  # None: not probed yet
        transcript = _read(store, key, "transcript.json")
        if transcript:
            out["language"] = transcript.get("language")
            out["transcript"] = [{"start_s": s["start_s"], "end_s": s["end_s"], "text": s["text"]}
                                 for s in transcript.get("segments", [])[:MAX_SEGMENTS]]
        keyframes = _read(store, key, "keyframes.json") or {}
        out["video_width"], out["video_height"] = keyframes.get("width"), keyframes.get("height")
        texts = {f["index"]: f.get("lines", []) for f in _read(store, key, "frame_text.json") or []}
        labels = {f["index"]: f.get("labels", []) for f in _read(store, key, "frame_labels.json") or []}
        out["keyframes"] = [{
            "index": f["index"], "time_s": f["time_s"], "thumb": _files(key, f["thumb"]),
            "frame": _files(key, f["frame"]), "width": f.get("frame_width"),
            "height": f.get("frame_height"),
            "labels": [{"name": n.split(",")[0], "score": s} for n, s in labels.get(f["index"], [])[:3]],
            "text": [line["text"] for line in texts.get(f["index"], [])]}
            for f in keyframes.get("frames", [])]
        _summary(out, _read(store, key, "enrichment.json"))
    elif kind == "image":
        meta = _read(store, key, "metadata.json") or {}
        out["width"], out["height"] = meta.get("width"), meta.get("height")
        labels = _read(store, key, "labels.json") or {}
        out["labels"] = [{"name": label.get("name"), "score": label.get("score")}
                         for label in labels.get("labels", [])]
        out["ocr"] = (_read(store, key, "ocr.json") or {}).get("lines", [])
        similarity = _read(store, key, "similarity.json") or {}
        out["near_duplicates"] = similarity.get("neighbours", [])
        out["duplicate_of"] = similarity.get("duplicate_of")
        if store.exists(key, "thumb_medium.webp"):
            out["thumbnail"] = _files(key, "thumb_medium.webp")
    elif kind == "document":
        info = _read(store, key, "pdf_info.json") or {}
        out["pages"] = info.get("pages")
        out["page_text"] = [{"page": p["page"], "method": p.get("method"),
                             "text": (p.get("text") or "")[:MAX_PAGE_TEXT]}
                            for p in _read(store, key, "pages.json") or []]
        _summary(out, _read(store, key, "summary.json"))
    return out


def _summary(out: dict[str, Any], found: dict | None) -> None:
    if found:
        out["summary"] = [{"locator": s.get("locator"), "text": s.get("text")}
                          for s in found.get("summary", [])]
        out["keywords"] = [k.get("phrase") for k in found.get("keywords", [])]


def thumbnail(store: MediaStore, key: str, kind: str) -> Path | None:
    """The item's small picture: an image's ``thumb_medium.webp``, a video's first keyframe
    thumbnail, a PDF's first page 320 pixels wide (rendered once); None when there is none (an
    audio file, a stage not run yet, a PDF PDFium cannot draw)."""
    if kind == "image":
        name = "thumb_medium.webp"
    elif kind == "video":
        frames = (_read(store, key, "keyframes.json") or {}).get("frames") or []
        name = frames[0]["thumb"] if frames else ""
    elif kind == "document":
        try:
            return page_image(store, key, 1, 320)
        except Exception:  # noqa: BLE001 - no thumbnail is an answer, not an error
            return None
    else:
        return None
    return store.local_path(key, name) if name and store.exists(key, name) else None


def page_image(store: MediaStore, key: str, page: int, width: int = 1000) -> Path:
    """Page ``page`` (1-based) of the stored PDF as WebP, ``width`` pixels wide (64-2000),
    rendered by PDFium once and kept as ``page_<page>_w<width>.webp``.

    Raises:
        ValueError: when the PDF has no such page, or ``width`` is out of range.
        BadInputError: when the page would inflate past the limits (``decompression_bomb``) or
            the file cannot be opened.
    """
    import io

    import pypdf
    from PIL import Image

    from narra_dagster.defs.document import pdf

    if not 64 <= width <= 2000:
        raise ValueError(f"width {width} is out of 64-2000 pixels")
    name = f"page_{page:04d}_w{width}.webp"
    if store.exists(key, name):
        return store.local_path(key, name)
    source = store.local_path(key, SOURCE)
    reader = pypdf.PdfReader(source)
    if reader.is_encrypted:
        reader.decrypt("")
    if not 1 <= page <= len(reader.pages):
        raise ValueError(f"the PDF has {len(reader.pages)} pages, not a page {page}")
    pdf.check_render_bounds(reader.pages[page - 1], page)
    box = reader.pages[page - 1].mediabox
    points_wide = float(box.width) or 612.0
    pixels = pdf.render_page(source, page - 1, dpi=max(18, round(width * 72 / points_wide)),
                             password="" if reader.is_encrypted else None)
    image = Image.fromarray(pixels)
    if image.width > width:
        image = image.resize((width, round(image.height * width / image.width)))
    buffer = io.BytesIO()
    image.save(buffer, "WEBP", quality=80)
    store.write_bytes(key, name, buffer.getvalue())
    return store.local_path(key, name)
