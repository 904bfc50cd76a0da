"""What an item's stages found, read back from the media store for its page; its thumbnail;
its PDF pages as pictures.

Everything here reads artifacts the assets wrote (names in each kind's ``assets.py``); a stage
that has not run yet simply contributes nothing. The one thing computed on demand is a PDF
page's picture (:func:`page_image`): PDFium renders it at one of :data:`PAGE_WIDTHS`, after the
same inflation check the ``document_pages`` stage makes, and keeps it in a size-capped cache
(:data:`PAGE_CACHE_MB`, least recently used evicted first) under ``$NARRA_HOME/cache/pages``.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any

from narra_dagster import settings
from narra_dagster.resources.media_store import SOURCE, MediaStore

DERIVATIVE = re.compile(r"(frame|thumb)_\d{4}\.webp|thumb_(small|medium)\.webp|page_\d{4}_w\d{2,4}\.webp")
"""Names of the stored pictures ``GET /api/v1/media/{id}/files/{name}`` serves."""

MAX_SEGMENTS = 5000
MAX_PAGE_TEXT = 3000  # characters of each page's text in the details

PAGE_WIDTHS = (320, 800, 1600)
"""The widths (pixels) PDF pages are rendered at: 320 for thumbnails, 800 for the page view,
1600 for a zoomed page or a high-density screen. Any other width asked for is served at the
nearest of these (a tie goes to the wider; the web app's 1000 gets 800), so a client cannot
make the server render and keep one picture per width it names."""
PAGE_CACHE_MB = 256.0
"""Default size cap of the page-render cache, every item's renders together (MiB; at 800
pixels a text page is 30-120 KB, so some thousands of pages); ``$NARRA_PAGE_CACHE_MB``."""
_TMP_AGE_S = 3600.0  # a render's temporary file this old belongs to a writer that died


class NoSuchPage(ValueError):
    """The PDF has no page of that number."""


def page_width(requested: int) -> int:
    """The width of :data:`PAGE_WIDTHS` nearest to ``requested`` (pixels); a tie goes to the
    wider (560 -> 800)."""
    return min(PAGE_WIDTHS, key=lambda w: (abs(w - requested), -w))


def page_cache_dir() -> Path:
    """Where page renders are kept: ``$NARRA_HOME/cache/pages/<media_id>/``."""
    return settings.narra_home() / "cache" / "pages"


def page_cache_bytes() -> int:
    """The page-render cache's cap in bytes: ``$NARRA_PAGE_CACHE_MB`` (MiB, may be
    fractional) or :data:`PAGE_CACHE_MB`.

    Raises:
        ValueError: when the variable is not a positive number.
    """
    return int(settings.positive_number("NARRA_PAGE_CACHE_MB", PAGE_CACHE_MB, "MiB") * 1024 * 1024)


def forget_pages(key: str) -> int:
    """Remove every cached page render of item ``key`` (its deletion); return how many files
    went. An id that is not a partition key removes nothing."""
    from narra_dagster.core.media import is_partition_key

    folder = page_cache_dir() / key
    if not is_partition_key(key) or not folder.is_dir():
        return 0
    removed = 0
    for path in folder.iterdir():
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed += 1
    with contextlib.suppress(OSError):
        folder.rmdir()
    return removed


def _evict(root: Path, cap: int, keep: Path) -> int:
    """Remove the least recently used renders (oldest modification time: a hit touches its
    file) until the cache holds at most ``cap`` bytes; ``keep`` (the render just made) stays
    even alone over the cap. Return how many files went."""
    found, total, now = [], 0, time.time()
    for folder in os.scandir(root):
        if not folder.is_dir(follow_symlinks=False):
            continue
        for entry in os.scandir(folder.path):
            try:
                stat = entry.stat(follow_symlinks=False)
            except FileNotFoundError:  # evicted by another process meanwhile
                continue
            if entry.name.endswith(".tmp"):
                if now - stat.st_mtime > _TMP_AGE_S:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)
                continue
            found.append((stat.st_mtime, stat.st_size, entry.path))
            total += stat.st_size
    removed = 0
    for _, size, path in sorted(found):
        if total <= cap:
            break
        if path == str(keep):
            continue
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
            removed += 1
        total -= size
    return removed


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


def page_image(store: MediaStore, key: str, page: int, width: int = 800) -> Path:
    """Page ``page`` (1-based) of item ``key``'s stored PDF as WebP, at the width of
    :data:`PAGE_WIDTHS` nearest to ``width`` (:func:`page_width`; pixels), rendered by PDFium
    on first use and kept in the page cache (:func:`page_cache_dir`) as
    ``page_<page>_w<width>.webp``. The cache holds at most :func:`page_cache_bytes` for all
    items together: a new render evicts the least recently served ones. A total cap, not one
    per item, because the disk a cache may take is the machine's budget, and a per-item cap
    would still grow with the number of documents; per item the fixed widths already bound it
    to three pictures a page. The cache is outside the media store: it is a local, disposable
    copy (the store has no per-file removal, and an S3 store would pay a request for each).

    Returns:
        The render's path; it stays for a while (a hit makes it the most recently used).

    Raises:
        NoSuchPage: when the PDF has no such page.
        ValueError: when ``width`` is out of 64-2000 pixels or ``key`` is not a partition key;
            from :func:`page_cache_bytes`.
        FileNotFoundError: when the item's stored PDF is missing.
        BadInputError: when the page would inflate past the limits (``decompression_bomb``) or
            the file cannot be read as a PDF (``corrupt_pdf``).
    """
    import io
    import math

    import pypdf
    import pypdfium2
    from PIL import Image

    from narra_dagster.core.errors import BadInputError
    from narra_dagster.core.media import is_partition_key
    from narra_dagster.defs.document import pdf

    if not 64 <= width <= 2000:
        raise ValueError(f"width {width} is out of 64-2000 pixels")
    if not is_partition_key(key):
        raise ValueError(f"{key!r} is not a media id")
    width = page_width(width)
    cap = page_cache_bytes()
    root = page_cache_dir()
    path = root / key / f"page_{page:04d}_w{width}.webp"
    try:
        os.utime(path)  # a hit: now the most recently used
        return path
    except FileNotFoundError:
        pass
    source = store.local_path(key, SOURCE)
    try:
        reader = pypdf.PdfReader(source)
        if reader.is_encrypted:
            reader.decrypt("")
        if not 1 <= page <= len(reader.pages):
            raise NoSuchPage(f"the PDF has {len(reader.pages)} pages, not a page {page}")
        pdf.check_render_bounds(reader.pages[page - 1], page)
        box = reader.pages[page - 1].mediabox
        points_wide = float(box.width) or 612.0
        pixels = pdf.render_page(source, page - 1, dpi=max(18, math.ceil(width * 72 / points_wide)),
                                 password="" if reader.is_encrypted else None)
    except (pypdf.errors.PyPdfError, pypdfium2.PdfiumError) as exc:
        raise BadInputError(f"page {page} cannot be drawn: {type(exc).__name__}: {exc}",
                            code="corrupt_pdf") from None
    image = Image.fromarray(pixels)
    # exactly the width named (PDFium's pixels follow a whole dpi), but never enlarged past a
    # few pixels: a page render_page shrank to its pixel limit stays within it
    if image.width > width or width - image.width <= width // 50:
        image = image.resize((width, round(image.height * width / image.width)))
    buffer = io.BytesIO()
    image.save(buffer, "WEBP", quality=80)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(buffer.getvalue())
        os.replace(tmp, path)  # atomic: a reader never sees half a picture
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    _evict(root, cap, keep=path)
    return path
