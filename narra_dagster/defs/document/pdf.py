"""Reading PDFs: validation with pypdf, text per page, rendering with pypdfium2, page-aware chunks.

pypdf (BSD) parses the file and extracts each page's text layer; pypdfium2 (Apache-2.0/BSD,
Google's PDFium) renders pages that have no text layer, for OCR. Every problem with the user's
file becomes a :class:`BadInputError` with a code and a sentence a person understands:

- ``empty_file``, ``too_large`` (bytes), ``too_many_pages``;
- ``not_pdf``: no ``%PDF-`` header in the first 1024 bytes (where PDF readers look for it);
- ``encrypted_pdf``: encrypted and not openable with the empty user password;
- ``corrupt_pdf``: pypdf cannot read it even with its non-strict reader.

How a damaged cross-reference table is handled (measured with pypdf 7.1): the file is parsed
first with ``strict=True``. If that fails, the non-strict reader is tried; it rebuilds the
cross-reference table by scanning the body for ``N 0 obj`` markers. A wrong ``startxref`` offset,
or xref entries pointing at wrong offsets, are repaired this way (the result says
``repaired=True`` with the strict error and pypdf's own warnings). An xref section whose syntax is
garbage (``xref`` followed by junk) or a file cut off before its trailer cannot be read by pypdf
at all, and ends as ``corrupt_pdf``.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from narra_dagster.core import limits
from narra_dagster.core.errors import BadInputError
from narra_dagster.core.summarize import split_sentences

# Size, page, OCR, stream and render limits are budgets (narra_dagster.core.limits):
# NARRA_PDF_MAX_BYTES (256 MiB: far beyond a long report, short of an accidental disk image),
# NARRA_PDF_MAX_PAGES (2,000), NARRA_PDF_MAX_OCR_PAGES, NARRA_PDF_MAX_STREAM_BYTES and
# NARRA_PDF_MAX_RENDER_PIXELS, described where they are used below.
# PDF readers accept the "%PDF-" header anywhere in the first 1024 bytes (Adobe's implementation
# note 13 to ISO 32000-1, section 7.5.2); some generators put junk before it.
HEADER_WINDOW = 1024
# A page with fewer letters or digits than this in its text layer is treated as having none
# (a scanned page may carry only a page number or an empty invisible layer).
MIN_TEXT_CHARS = 16
# 150 dpi: body text (10-12 pt) becomes 21-25 px tall, which PP-OCRv4 reads with its spaces;
# measured here, 100-120 dpi ran words together ("Invoiceforgardentools") and 200 dpi was slower
# without reading more.
OCR_DPI = 150
# OCR costs seconds per page on 2 cores; past NARRA_PDF_MAX_OCR_PAGES (300) textless pages,
# further ones are skipped (and counted in the metadata) so one scanned book cannot hold a worker
# for an hour.
# MiniLM reads 256 tokens; 80 English words are about 110 tokens, and a short chunk keeps a
# hit's page and text specific.
MAX_CHUNK_WORDS = 80
EXTENSIONS = (".pdf",)
# MAX_STREAM: what pypdf inflates at most per stream: NARRA_PDF_MAX_STREAM_BYTES, set as pypdf's
# ``ZLIB_MAX_OUTPUT_LENGTH`` (whose own default, 75 MB in pypdf 7, is ours too); past it pypdf
# raises LimitReachedError, which the pages stage reports as ``decompression_bomb``.
# A page is rendered for OCR at OCR_DPI unless that gives more pixels than
# NARRA_PDF_MAX_RENDER_PIXELS (40 million; an A4 page at 150 dpi is 2.2 million); a page
# declaring a huge MediaBox is rendered smaller instead, so the bitmap stays under 4 bytes x 40
# million = 160 MB.
# Pillow's own default limit for one image (``Image.MAX_IMAGE_PIXELS``), applied to the images a
# page declares before PDFium decodes them.
MAX_IMAGE_PIXELS = 89_478_485


def recognise(head: bytes) -> bool:
    """True when a file's first bytes start with the PDF header ``%PDF-``."""
    return head.startswith(b"%PDF-")


@dataclass
class PdfInfo:
    """What validation found: ``pages`` (count), ``size_bytes``, ``pdf_version`` (from the header),
    ``encrypted`` (opened with the empty password), ``repaired`` (pypdf's strict reader failed
    and the non-strict one rebuilt the cross-reference table), ``repair_notes`` (the strict error
    and pypdf's warnings), document ``metadata`` (title, author...), ``seconds``."""

    pages: int
    size_bytes: int
    pdf_version: str
    encrypted: bool
    repaired: bool
    repair_notes: list[str] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _open_reader(path: Path, strict: bool):
    import pypdf

    reader = pypdf.PdfReader(str(path), strict=strict)
    encrypted = reader.is_encrypted
    if encrypted and not reader.decrypt(""):
        raise BadInputError(
            "the PDF is encrypted with a password; upload a copy without a password (or one that "
            "opens without a password)", code="encrypted_pdf")
    return reader, encrypted, len(reader.pages)


def open_pdf(path: Path, *, max_bytes: int | None = None, max_pages: int | None = None):
    """Validate a PDF and return a pypdf reader on it with what validation found.

    Args:
        path: the file.
        max_bytes: size limit in bytes (default ``NARRA_PDF_MAX_BYTES``).
        max_pages: page limit (default ``NARRA_PDF_MAX_PAGES``).

    Returns:
        ``(reader, PdfInfo)``; the reader is decrypted when the file was encrypted with the empty
        user password.

    Raises:
        BadInputError: ``empty_file``, ``too_large``, ``not_pdf``, ``encrypted_pdf``,
            ``corrupt_pdf`` or ``too_many_pages``, as described in the module docstring.
        OSError: when the file cannot be read.
    """
    import pypdf.filters

    budget = limits.current()
    pypdf.filters.ZLIB_MAX_OUTPUT_LENGTH = budget.pdf_max_stream_bytes  # see MAX_STREAM above
    max_bytes = budget.pdf_max_bytes if max_bytes is None else max_bytes
    max_pages = budget.pdf_max_pages if max_pages is None else max_pages
    started = time.perf_counter()
    size = path.stat().st_size
    if size == 0:
        raise BadInputError("the file is empty (0 bytes)", code="empty_file")
    if size > max_bytes:
        raise BadInputError(f"the PDF is {size} bytes, over the {max_bytes}-byte limit",
                            code="too_large")
    with open(path, "rb") as fh:
        head = fh.read(HEADER_WINDOW)
    at = head.find(b"%PDF-")
    if at < 0:
        raise BadInputError("not a PDF: no '%PDF-' header in its first 1024 bytes", code="not_pdf")
    version = head[at + 5: at + 8].decode("ascii", "replace")

    repaired, notes = False, []
    try:
        reader, encrypted, pages = _open_reader(path, strict=True)
    except BadInputError:
        raise
    except Exception as strict_exc:  # noqa: BLE001 - pypdf raises many types on damaged files
        # Let pypdf's non-strict reader try to rebuild the cross-reference table; keep its
        # warnings (it logs what it repaired) for the metadata.
        collect = _Collect()
        pypdf_log = logging.getLogger("pypdf")
        pypdf_log.addHandler(collect)
        try:
            reader, encrypted, pages = _open_reader(path, strict=False)
        except BadInputError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise BadInputError(
                "the PDF is damaged beyond repair: pypdf cannot read it even after trying to "
                f"rebuild its cross-reference table ({type(exc).__name__}: {exc})",
                code="corrupt_pdf") from exc
        finally:
            pypdf_log.removeHandler(collect)
        repaired = True
        notes = [f"strict reader: {type(strict_exc).__name__}: {strict_exc}"]
        notes += list(dict.fromkeys(collect.messages))[:10]
    if pages == 0:
        raise BadInputError("the PDF has no pages", code="corrupt_pdf")
    if pages > max_pages:
        raise BadInputError(f"the PDF has {pages} pages, over the {max_pages}-page limit",
                            code="too_many_pages")
    meta = {}
    try:
        for k, v in (reader.metadata or {}).items():
            if isinstance(v, str) and v.strip():
                meta[str(k).lstrip("/").lower()] = v.strip()[:200]
    except Exception:  # noqa: BLE001 - a broken Info dictionary is not worth failing for
        pass
    info = PdfInfo(pages=pages, size_bytes=size, pdf_version=version, encrypted=encrypted,
                   repaired=repaired, repair_notes=notes, metadata=meta,
                   seconds=time.perf_counter() - started)
    return reader, info


_HYPHEN_BREAK = re.compile(r"(\w)-\n(?=[a-z])")
_SPACES = re.compile(r"[ \t\u00a0]+")
_LEADERS = re.compile(r"(?:\.\s?){4,}")  # ". . . . ." leaders of a table of contents
_NEWLINES = re.compile(r"\s*\n\s*")


def clean_text(text: str) -> str:
    """Normalize a page's extracted text into one line of prose.

    Joins words hyphenated across a line break when the next line starts lowercase
    ("manip-\\nulation" -> "manipulation"; a compound broken at its own hyphen loses the hyphen,
    an accepted cost), then folds every run of whitespace into one space.
    """
    text = _HYPHEN_BREAK.sub(r"\1", text.replace("\r\n", "\n").replace("\r", "\n"))
    text = _LEADERS.sub(" … ", _NEWLINES.sub(" ", text))
    return _SPACES.sub(" ", text).strip()


_DIGITS = re.compile(r"\d+")


def _edge_lines(raw: str) -> list[str]:
    lines = [line.strip() for line in raw.strip().splitlines() if line.strip()]
    return [lines[0], lines[-1]] if len(lines) > 1 else lines


def running_lines(raw_pages: list[str]) -> set[str]:
    """Running headers and footers: a first or last line of a page that recurs, digits aside
    ("Chapter 4: Function reference 17"), on at least 3 pages and 30% of the pages.

    Returns:
        The recurring lines with their digits replaced by ``#``.
    """
    counts: dict[str, int] = {}
    for raw in raw_pages:
        for line in set(_DIGITS.sub("#", line) for line in _edge_lines(raw)):
            counts[line] = counts.get(line, 0) + 1
    need = max(3, 0.3 * len(raw_pages))
    return {line for line, n in counts.items() if n >= need}


def strip_running(raw: str, running: set[str]) -> str:
    """Drop a page's first and last line when they are running headers or footers."""
    lines = raw.strip().splitlines()
    edges = {0, len(lines) - 1} if len(lines) > 1 else set()
    return "\n".join(line for i, line in enumerate(lines)
                     if not (i in edges and _DIGITS.sub("#", line.strip()) in running))


def has_text_layer(text: str) -> bool:
    """True when a page's text has at least :data:`MIN_TEXT_CHARS` letters or digits."""
    return sum(ch.isalnum() for ch in text) >= MIN_TEXT_CHARS


def check_render_bounds(page, number: int) -> None:
    """Refuse a page whose drawing would inflate past the limits before PDFium renders it:
    its content streams past ``NARRA_PDF_MAX_STREAM_BYTES`` decoded (pypdf stops there), or an image
    declaring more than :data:`MAX_IMAGE_PIXELS` pixels. PDFium itself has no such limit:
    measured here, one page whose 1 MB content stream inflates to 1 GiB took it to 2.4 GB.

    Args:
        page: a ``pypdf.PageObject``.
        number: its 1-based page number, for the message.

    Raises:
        BadInputError: ``decompression_bomb``.
    """
    import pypdf.filters
    from pypdf.errors import LimitReachedError

    max_stream = limits.current().pdf_max_stream_bytes
    pypdf.filters.ZLIB_MAX_OUTPUT_LENGTH = max_stream
    try:
        contents = page.get_contents()
        if contents is not None:
            contents.get_data()
    except LimitReachedError as exc:
        raise BadInputError(
            f"page {number}'s content inflates past {max_stream / 10**6:g} MB: a "
            f"decompression bomb, or a badly damaged file (pypdf: {exc})",
            code="decompression_bomb") from exc
    except Exception:  # noqa: BLE001 - damaged content is PDFium's to try; only size matters here
        pass
    try:
        xobjects = page.get("/Resources", {}).get_object().get("/XObject", {}).get_object()
        images = [x.get_object() for x in xobjects.values()]
    except Exception:  # noqa: BLE001 - no readable resources: nothing declared to check
        images = []
    for image in images:
        if image.get("/Subtype") != "/Image":
            continue
        pixels = int(image.get("/Width", 0)) * int(image.get("/Height", 0))
        if pixels > MAX_IMAGE_PIXELS:
            raise BadInputError(
                f"page {number} holds an image that declares {pixels:,} pixels, over the "
                f"{MAX_IMAGE_PIXELS:,} limit: a decompression bomb", code="decompression_bomb")


def render_page(path: Path, index: int, *, dpi: int = OCR_DPI, password: str | None = None) -> np.ndarray:
    """Render one page with pypdfium2.

    Args:
        path: the PDF.
        index: 0-based page index.
        dpi: resolution; the page's size in points (1/72 in) times dpi/72 gives pixels, reduced
            so that the bitmap has at most ``NARRA_PDF_MAX_RENDER_PIXELS`` pixels.
        password: for encrypted files ("" opens a file with an empty user password).

    Returns:
        uint8 RGB [height, width, 3], white background.

    Raises:
        pypdfium2.PdfiumError: when PDFium cannot load the file or the page.
    """
    import pypdfium2 as pdfium

    max_pixels = limits.current().pdf_max_render_pixels
    document = pdfium.PdfDocument(str(path), password=password)
    try:
        page = document[index]
        try:
            width_pt, height_pt = page.get_size()
            scale = dpi / 72
            pixels = width_pt * height_pt * scale * scale
            if pixels > max_pixels:
                scale *= 0.999 * (max_pixels / pixels) ** 0.5  # PDFium rounds sizes up
            bitmap = page.render(scale=scale, fill_color=(255, 255, 255, 255))
            return np.asarray(bitmap.to_pil().convert("RGB"))
        finally:
            page.close()
    finally:
        document.close()


def chunk_page(text: str, *, max_words: int = MAX_CHUNK_WORDS) -> list[str]:
    """Cut one page's cleaned text into chunks of whole sentences, at most ``max_words`` words.

    A sentence longer than ``max_words`` is cut into pieces of ``max_words`` words. Chunks never
    span pages because the caller chunks one page at a time.
    """
    chunks: list[str] = []
    current: list[str] = []
    count = 0
    for sentence in split_sentences(text):
        words = sentence.split()
        while len(words) > max_words:
            if current:
                chunks.append(" ".join(current))
                current, count = [], 0
            chunks.append(" ".join(words[:max_words]))
            words = words[max_words:]
        if current and count + len(words) > max_words:
            chunks.append(" ".join(current))
            current, count = [], 0
        if words:
            current.append(" ".join(words))
            count += len(words)
    if current:
        chunks.append(" ".join(current))
    return chunks
