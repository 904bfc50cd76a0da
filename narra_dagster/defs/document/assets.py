"""The PDF chain: source -> pages -> chunks -> embeddings -> index rows, and a summary.

Each asset is partitioned by the ``documents`` dynamic partitions (one partition per uploaded
PDF, keyed by a prefix of its SHA-256); each stage is one stage function made an asset by
``@document_stage``. Bad input raises :class:`BadInputError`, which the stage turns into a
non-retryable, classified ``dagster.Failure``; model and index steps retry transient errors with
exponential backoff and jitter.
"""

import logging
import time

import dagster as dg
import numpy as np

from narra_dagster.core import limits, pools
from narra_dagster.core.embeddings import embed_chunks, embeddings_check_spec
from narra_dagster.core.stage import upload_name
from narra_dagster.core.summarize import split_sentences, summarize, summary_markdown
from narra_dagster.defs.document import pdf
from narra_dagster.defs.document.partitions import document_stage
from narra_dagster.defs.search.settings import EMBEDDING_MODEL
from narra_dagster.resources.embedder import TextEmbedder
from narra_dagster.resources.media_store import SOURCE, MediaStore
from narra_dagster.resources.ocr import OcrEngine
from narra_dagster.resources.search_index import IndexRow, SearchIndex

PDF_INFO = "pdf_info.json"
PAGES = "pages.json"
CHUNKS = "chunks.json"
EMBEDDINGS = "embeddings.npy"
SUMMARY = "summary.json"
SUMMARY_MD = "summary.md"

CHECK_TEXT_FOUND = "document_text_found"
CHECK_INDEX_ROWS = "index_rows_match_chunks"



def _cell(text: str, limit: int = 90) -> str:
    text = text.replace("|", "/").replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 1] + "…"


@document_stage(kinds={"pypdf", "pdf"})
def document_source(key: str, *, media_store: MediaStore,
                    log: logging.Logger) -> dg.MaterializeResult:
    """The uploaded PDF, validated: a real PDF (header and a pypdf parse), within the size and
    page limits, not locked by a password. A damaged cross-reference table that pypdf can rebuild
    is repaired (``repaired`` says so); one it cannot read fails here as ``corrupt_pdf``. What
    was found is recorded in ``pdf_info.json``.

    Raises:
        BadInputError: the codes of :func:`~narra_dagster.defs.document.pdf.open_pdf`.
    """
    _, info = pdf.open_pdf(media_store.local_path(key, SOURCE))
    source_name = upload_name(media_store, key)
    record = {**info.__dict__, "source_name": source_name}
    media_store.write_json(key, PDF_INFO, record)
    if info.repaired:
        log.warning(f"{key}: damaged cross-reference table, repaired by pypdf's non-strict "
                    f"reader: {info.repair_notes[0]}")
    log.info(f"{key}: PDF {info.pdf_version}, {info.pages} pages, {info.size_bytes} bytes, "
             f"validated in {info.seconds:.3f} s")
    return dg.MaterializeResult(metadata={
        "source_name": source_name or "",
        "pages": dg.MetadataValue.int(info.pages),
        "size_bytes": dg.MetadataValue.int(info.size_bytes),
        "pdf_version": info.pdf_version,
        "encrypted": info.encrypted,
        "repaired": info.repaired,
        "repair_notes": dg.MetadataValue.json(info.repair_notes),
        "title": info.metadata.get("title", ""),
        "author": info.metadata.get("author", ""),
        "validation_s": dg.MetadataValue.float(round(info.seconds, 4)),
        "validation_s_per_page": dg.MetadataValue.float(round(info.seconds / info.pages, 5)),
        "path": dg.MetadataValue.path(media_store.uri(key, SOURCE)),
    })


def extract_pages(path, reader, *, ocr: OcrEngine, password: str | None,
                  log: logging.Logger) -> list[dict]:
    """Text of every page: pypdf's text layer, or OCR of a pypdfium2 rendering when the page has
    none (fewer than :data:`~narra_dagster.defs.document.pdf.MIN_TEXT_CHARS` letters or digits). Running
    headers and footers (:func:`~narra_dagster.defs.document.pdf.running_lines`) are dropped from text pages.

    Returns:
        One dict per page: ``page`` (1-based), ``method`` (``text`` | ``ocr`` | ``skipped``),
        ``text`` (cleaned, one line), ``chars``, ``seconds`` (extraction, plus ``render_s`` and
        ``ocr_s`` for OCR'd pages), ``ocr_lines`` (OCR'd pages: text, confidence, box in
        pixels at :data:`~narra_dagster.defs.document.pdf.OCR_DPI`), and ``error`` when pypdf or PDFium failed
        on that page (the page is then OCR'd, or left empty).
    """
    raws: list[str] = []
    errors: dict[int, str] = {}
    timings: list[float] = []
    for index, page in enumerate(reader.pages):
        started = time.perf_counter()
        try:
            raws.append(page.extract_text() or "")
        except Exception as exc:  # noqa: BLE001 - a damaged content stream: fall back to OCR
            raws.append("")
            errors[index] = f"pypdf: {type(exc).__name__}: {exc}"
        timings.append(time.perf_counter() - started)
    running = pdf.running_lines([r for r in raws if pdf.has_text_layer(r)])
    pages, ocr_done = [], 0
    max_ocr_pages = limits.current().pdf_max_ocr_pages
    for index, raw in enumerate(raws):
        started = time.perf_counter()
        entry: dict = {"page": index + 1, "text_s": round(timings[index], 4)}
        if index in errors:
            entry["error"] = errors[index]
        text = pdf.clean_text(pdf.strip_running(raw, running))
        if pdf.has_text_layer(raw):
            entry.update(method="text", text=text)
        elif ocr_done >= max_ocr_pages:
            entry.update(method="skipped", text=text)
        else:
            ocr_done += 1
            # Before PDFium renders the page (it inflates without a limit), make sure what it
            # would draw is bounded; raises decompression_bomb otherwise.
            pdf.check_render_bounds(reader.pages[index], index + 1)
            try:
                t0 = time.perf_counter()
                image = pdf.render_page(path, index, password=password)
                t1 = time.perf_counter()
                lines = ocr.read(image)
                t2 = time.perf_counter()
                entry.update(method="ocr", text=pdf.clean_text("\n".join(l.text for l in lines)),
                             render_s=round(t1 - t0, 4), ocr_s=round(t2 - t1, 4),
                             ocr_lines=[l.model_dump(exclude={"polygon"}) for l in lines])
            except Exception as exc:  # noqa: BLE001 - PDFium cannot render a page pypdf opened
                entry.update(method="ocr", text=text)
                entry["error"] = f"render/OCR: {type(exc).__name__}: {exc}"
                log.warning(f"page {index + 1}: {entry['error']}")
        entry["chars"] = len(entry["text"])
        entry["seconds"] = round(timings[index] + time.perf_counter() - started, 4)
        pages.append(entry)
    return pages


@document_stage(
    kinds={"pypdf", "pdfium", "rapidocr"},
    deps=[document_source],
    retry=True,
    check_specs=[dg.AssetCheckSpec(CHECK_TEXT_FOUND, asset="document_pages",
                                   description="Some text was found (warns when none).")],
)
def document_pages(key: str, *, media_store: MediaStore, ocr: OcrEngine,
                         log: logging.Logger) -> dg.MaterializeResult:
    """The text of every page: pypdf's text layer, or for a page without one (a scan), OCR of
    the page rendered at 150 dpi by pypdfium2. Metadata gives per-page method, characters and
    seconds.

    Extract every page's text into ``pages.json`` (see :func:`extract_pages`)."""
    path = media_store.local_path(key, SOURCE)
    reader, info = pdf.open_pdf(path)
    started = time.perf_counter()
    pages = extract_pages(path, reader, ocr=ocr, password="" if info.encrypted else None, log=log)
    elapsed = time.perf_counter() - started
    media_store.write_json(key, PAGES, pages)
    by_method = {m: [p for p in pages if p["method"] == m] for m in ("text", "ocr", "skipped")}
    chars = sum(p["chars"] for p in pages)

    def mean(values):
        return round(float(np.mean(values)), 4) if values else 0.0

    rows = ["| page | method | chars | s | text |", "|---|---|---|---|---|"]
    rows += [f"| {p['page']} | {p['method']} | {p['chars']} | {p['seconds']:.3f} | {_cell(p['text'])} |"
             for p in pages[:20]]
    if len(pages) > 20:
        rows.append(f"| | | | | … {len(pages) - 20} more pages |")
    log.info(f"{key}: {len(pages)} pages ({len(by_method['text'])} text, {len(by_method['ocr'])} "
             f"OCR), {chars} characters in {elapsed:.2f} s")
    return dg.MaterializeResult(
        metadata={
            "pages": dg.MetadataValue.int(len(pages)),
            "text_pages": dg.MetadataValue.int(len(by_method["text"])),
            "ocr_pages": dg.MetadataValue.int(len(by_method["ocr"])),
            "skipped_pages": dg.MetadataValue.int(len(by_method["skipped"])),
            "pages_with_errors": dg.MetadataValue.int(sum(1 for p in pages if "error" in p)),
            "chars": dg.MetadataValue.int(chars),
            "extraction_s": dg.MetadataValue.float(round(elapsed, 3)),
            "text_s_per_page": dg.MetadataValue.float(mean([p["seconds"] for p in by_method["text"]])),
            "render_s_per_ocr_page": dg.MetadataValue.float(mean([p.get("render_s", 0) for p in by_method["ocr"]])),
            "ocr_s_per_ocr_page": dg.MetadataValue.float(mean([p.get("ocr_s", 0) for p in by_method["ocr"]])),
            "ocr_dpi": dg.MetadataValue.int(pdf.OCR_DPI),
            "preview": dg.MetadataValue.md("\n".join(rows)),
            "path": dg.MetadataValue.path(media_store.uri(key, PAGES)),
        },
        check_results=[dg.AssetCheckResult(
            check_name=CHECK_TEXT_FOUND, passed=chars > 0, severity=dg.AssetCheckSeverity.WARN,
            metadata={"chars": chars, "pages": len(pages)})],
    )


@document_stage(kinds={"python"}, deps=[document_pages])
def document_chunks(key: str, *, media_store: MediaStore,
                          log: logging.Logger) -> dg.MaterializeResult:
    """The pages cut into search chunks of whole sentences (at most 80 words); every chunk
    carries its page number and never spans two pages.

    Cut each page's text into chunks of whole sentences (at most
    :data:`~narra_dagster.defs.document.pdf.MAX_CHUNK_WORDS` words), every chunk with its 1-based page;
    a chunk never spans two pages. Written to ``chunks.json``."""
    pages = media_store.read_json(key, PAGES)
    chunks = []
    for page in pages:
        for text in pdf.chunk_page(page["text"]):
            chunks.append({"chunk_index": len(chunks), "page": page["page"], "text": text,
                           "method": page["method"]})
    media_store.write_json(key, CHUNKS, chunks)
    words = [len(c["text"].split()) for c in chunks]
    rows = ["| page | words | text |", "|---|---|---|"]
    rows += [f"| {c['page']} | {n} | {_cell(c['text'])} |" for c, n in zip(chunks[:12], words)]
    log.info(f"{key}: {len(chunks)} chunks from {len(pages)} pages")
    return dg.MaterializeResult(metadata={
        "chunks": dg.MetadataValue.int(len(chunks)),
        "pages_with_chunks": dg.MetadataValue.int(len({c["page"] for c in chunks})),
        "mean_chunk_words": dg.MetadataValue.float(round(float(np.mean(words)), 1) if words else 0.0),
        "preview": dg.MetadataValue.md("\n".join(rows)),
        "path": dg.MetadataValue.path(media_store.uri(key, CHUNKS)),
    })


@document_stage(
    kinds={"ctranslate2"},
    deps=[document_chunks, EMBEDDING_MODEL],
    retry=True,
    check_specs=[embeddings_check_spec("document_chunk_embeddings")],
)
def document_chunk_embeddings(key: str, *, media_store: MediaStore, embedder: TextEmbedder,
                              log: logging.Logger) -> dg.MaterializeResult:
    """One MiniLM embedding per chunk: float32 [chunks, 384], L2-normalized, stored as
    ``embeddings.npy``; the ``embeddings_shape_and_norm`` check verifies shape, dtype and norm."""
    chunks = media_store.read_json(key, CHUNKS)
    result, elapsed = embed_chunks(key, [c["text"] for c in chunks], EMBEDDINGS,
                                   media_store=media_store, embedder=embedder)
    pages = len({c["page"] for c in chunks}) or 1
    log.info(f"{key}: embedded {len(chunks)} chunks in {elapsed:.3f} s")
    return dg.MaterializeResult(
        metadata={**result.metadata,
                  "embedding_s_per_page": dg.MetadataValue.float(round(elapsed / pages, 5))},
        check_results=result.check_results)


@document_stage(
    kinds={"lancedb"},
    deps=[document_chunk_embeddings],
    retry=True,
    pool=pools.SEARCH_INDEX,
    check_specs=[dg.AssetCheckSpec(CHECK_INDEX_ROWS, asset="document_index_rows",
                                   description="The index holds exactly one row per chunk.")],
)
def document_index_rows(key: str, *, media_store: MediaStore, search_index: SearchIndex,
                              log: logging.Logger) -> dg.MaterializeResult:
    """The document's rows in the search index, one per chunk with its page number, replaced
    as a whole each time (stale rows of this document go in the same commit).

    Replace the document's rows in the search index: one per chunk, with its ``page``.

    Raises:
        RuntimeError: when the chunks and embeddings artifacts disagree in length (re-materialize
            the embeddings)."""
    chunks = media_store.read_json(key, CHUNKS)
    vectors = np.load(media_store.local_path(key, EMBEDDINGS))
    if len(vectors) != len(chunks):
        raise RuntimeError(f"{len(chunks)} chunks but {len(vectors)} embeddings: re-materialize "
                           "document_chunk_embeddings")
    source_name = upload_name(media_store, key)
    rows = [IndexRow(media_id=key, kind="document", origin="document_index_rows",
                     source_name=source_name, chunk_index=c["chunk_index"], page=c["page"],
                     text=c["text"], vector=v.tolist())
            for c, v in zip(chunks, vectors)]
    started = time.perf_counter()
    count = search_index.upsert_partition(key, "document", rows, origin="document_index_rows")
    elapsed = time.perf_counter() - started
    log.info(f"{key}: {count} index rows in {elapsed:.3f} s")
    return dg.MaterializeResult(
        metadata={
            "rows": dg.MetadataValue.int(count),
            "index_rows_total": dg.MetadataValue.int(search_index.count()),
            "upsert_s": dg.MetadataValue.float(round(elapsed, 4)),
        },
        check_results=[dg.AssetCheckResult(
            check_name=CHECK_INDEX_ROWS, passed=count == len(chunks),
            metadata={"rows": count, "chunks": len(chunks)})],
    )


@document_stage(
    kinds={"onnx"}, deps=[document_pages, EMBEDDING_MODEL],
                 retry=True
)
def document_summary(key: str, *, media_store: MediaStore, embedder: TextEmbedder,
                           log: logging.Logger) -> dg.MaterializeResult:
    """An extractive summary: the five sentences closest to the document's overall meaning
    (centroid of MiniLM sentence embeddings), chosen without repeats (MMR), in reading order with
    their pages; plus keywords. No language model, nothing leaves the machine.

    An extractive summary (sentences ranked by similarity to the document's embedding
    centroid, diversified by MMR; see :mod:`narra_dagster.core.summarize`) and keywords, with the
    page of each sentence; ``summary.json`` and ``summary.md``."""
    pages = media_store.read_json(key, PAGES)
    sentences = [(p["page"], s) for p in pages for s in split_sentences(p["text"])]
    started = time.perf_counter()
    result = summarize(sentences, embedder.embed)
    elapsed = time.perf_counter() - started
    title = upload_name(media_store, key) or key
    markdown = summary_markdown(
        title, [(f"p. {s['locator']}", s["text"]) for s in result["summary"]],
        [(k["phrase"], k["relevance"]) for k in result["keywords"]])
    media_store.write_json(key, SUMMARY, {**result, "method": "centroid + MMR over MiniLM "
                                          "sentence embeddings; keywords: RAKE candidates ranked "
                                          "KeyBERT-style", "model": embedder.model_name})
    media_store.write_bytes(key, SUMMARY_MD, markdown.encode())
    log.info(f"{key}: summary of {len(result['summary'])} sentences from {result['sentences']} "
             f"in {elapsed:.2f} s")
    return dg.MaterializeResult(metadata={
        "summary": dg.MetadataValue.md(markdown),
        "sentences_considered": dg.MetadataValue.int(result["sentences"]),
        "keywords": ", ".join(k["phrase"] for k in result["keywords"]),
        "model": embedder.model_name,
        "summary_s": dg.MetadataValue.float(round(elapsed, 3)),
        "path": dg.MetadataValue.path(media_store.uri(key, SUMMARY)),
    })
