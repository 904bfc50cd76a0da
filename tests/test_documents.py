"""The PDF chain on a real Dagster instance, real PDFs from Debian packages, real OCR, MiniLM
and LanceDB; bad PDFs made here with pypdf."""

import io
import re
from pathlib import Path

import dagster as dg
import pypdf
import pytest
from PIL import Image, ImageDraw, ImageFont

from narra_dagster.core import limits
from narra_dagster.defs.document import pdf
from tests.support.chains import document_assets
from narra_dagster.core.errors import BadInputError
from narra_dagster.defs.intake.uploads import store_upload
from narra_dagster.core.runs import run_failure
from narra_dagster.resources import LanceSearchIndex, LocalMediaStore
from narra_dagster.core.summarize import candidate_phrases

from .conftest import check_outcomes as _checks
from .conftest import materialization_metadata as _metadata

MIME_SPEC = Path("/usr/share/doc/shared-mime-info/shared-mime-info-spec.pdf")  # shared-mime-info
TASN1 = Path("/usr/share/doc/libtasn1-doc/libtasn1.pdf")  # libtasn1-doc
FONT = Path("/usr/share/fonts/truetype/dejavu/DejaVuSerif.ttf")  # fonts-dejavu-core

needs_debian_pdfs = pytest.mark.skipif(
    not (MIME_SPEC.exists() and TASN1.exists()),
    reason="apt-get install shared-mime-info libtasn1-doc (.ci/run does)")

SCANNED_LINES = ["The lighthouse keeper counts seagulls every morning before dawn.",
                 "Invoices for the garden tools arrive on Thursday."]


@pytest.fixture
def doc_resources(home, embedder, ocr) -> dict:
    return {"media_store": LocalMediaStore(root=str(home / "media")), "embedder": embedder,
            "search_index": LanceSearchIndex(uri=str(home / "index")), "ocr": ocr}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, embedder, ocr):
    """The two Debian PDFs processed once for the module: (resources, instance, {path: (key,
    result)})."""
    root = tmp_path_factory.mktemp("corpus")
    resources = {"media_store": LocalMediaStore(root=str(root / "media")), "embedder": embedder,
                 "search_index": LanceSearchIndex(uri=str(root / "index")), "ocr": ocr}
    with dg.instance_for_test() as instance:
        done = {path: materialize_pdf(path, resources, instance) for path in (MIME_SPEC, TASN1)}
        yield resources, instance, done


def materialize_pdf(path: Path, resources: dict, instance, name: str | None = None):
    """Store a file, add its ``documents`` partition, materialize the PDF chain."""
    upload = store_upload(path, resources["media_store"], source_name=name)
    if not instance.has_dynamic_partition("documents", upload.partition_key):
        instance.add_dynamic_partitions("documents", [upload.partition_key])
    result = dg.materialize(document_assets, partition_key=upload.partition_key,
                            resources=resources, instance=instance, raise_on_error=False)
    return upload.partition_key, result


def scanned_page_pdf(path: Path) -> Path:
    """A one-page PDF holding only a picture of text (no text layer): A4 at 150 dpi, 11 pt
    DejaVu Serif (23 px) drawn by Pillow, saved as a PDF by Pillow."""
    font = ImageFont.truetype(str(FONT), 23)
    image = Image.new("RGB", (1240, 1754), "white")
    draw = ImageDraw.Draw(image)
    for i, line in enumerate(SCANNED_LINES):
        draw.text((120, 200 + 40 * i), line, fill="black", font=font)
    image.save(path, "PDF", resolution=150)
    return path


def two_page_pdf(tmp_path: Path) -> Path:
    """Page 1: the first page of the MIME spec (a text layer); page 2: a scanned page."""
    writer = pypdf.PdfWriter()
    writer.add_page(pypdf.PdfReader(MIME_SPEC).pages[0])
    writer.append(str(scanned_page_pdf(tmp_path / "scan.pdf")))
    out = tmp_path / "mixed.pdf"
    writer.write(out)
    return out


def small_pdf_bytes() -> bytes:
    """Two pages of the MIME spec rewritten by pypdf: a classic xref table, 80 KB."""
    writer = pypdf.PdfWriter()
    for page in pypdf.PdfReader(MIME_SPEC).pages[:2]:
        writer.add_page(page)
    buffer = io.BytesIO()
    writer.write(buffer)
    return buffer.getvalue()


def wrong_startxref(data: bytes) -> bytes:
    """The same file with its ``startxref`` pointing nowhere (the table itself intact)."""
    m = list(re.finditer(rb"startxref\s+(\d+)", data))[-1]
    return data[: m.start(1)] + b"999" + data[m.end(1):]


def unreadable_xref(data: bytes) -> bytes:
    """A broken cross-reference table pypdf cannot rebuild: the body cut off after a third
    (the page tree and fonts gone) and an xref section of junk pointing at the cut."""
    cut = len(data) // 3
    return (data[:cut] + b"\nxref\n0 9\ngarbage 0000 q\ntrailer\n<< /Size 9 /Root 1 0 R >>\n"
            + b"startxref\n%d\n%%%%EOF\n" % (cut + 1))


# --- plain functions ----------------------------------------------------------------------

def test_chunks_are_whole_sentences_within_a_page():
    text = " ".join(f"Sentence number {i} has exactly seven words." for i in range(30))
    chunks = pdf.chunk_page(text, max_words=20)
    assert all(len(c.split()) <= 20 for c in chunks)
    assert all(c.startswith("Sentence") and c.endswith(".") for c in chunks)
    assert " ".join(chunks) == text
    long = " ".join(["word"] * 170)
    assert [len(c.split()) for c in pdf.chunk_page(long, max_words=80)] == [80, 80, 10]


def test_clean_text_joins_hyphenated_words_and_folds_whitespace():
    assert pdf.clean_text("manip-\nulation of  DER\ncode") == "manipulation of DER code"
    assert pdf.clean_text("Shared MIME-\nInfo") == "Shared MIME- Info"


def test_keyword_candidates_are_runs_between_stop_words():
    counts = candidate_phrases("The search index is rebuilt. A search index of the media store.")
    assert counts["search index"] == 2 and counts["media store"] == 1 and "the" not in counts


@needs_debian_pdfs
def test_pypdf_repairs_a_wrong_xref_offset_and_rejects_a_garbled_one(tmp_path):
    data = small_pdf_bytes()
    repaired = tmp_path / "offset.pdf"
    repaired.write_bytes(wrong_startxref(data))
    reader, info = pdf.open_pdf(repaired)
    assert info.repaired and info.pages == 2 and "xref" in info.repair_notes[0].lower()
    assert "Shared MIME-info Database" in reader.pages[0].extract_text()

    broken = tmp_path / "broken.pdf"
    broken.write_bytes(unreadable_xref(data))
    with pytest.raises(BadInputError) as caught:
        pdf.open_pdf(broken)
    assert caught.value.code == "corrupt_pdf"

    plain = tmp_path / "plain.pdf"
    plain.write_bytes(data)
    assert not pdf.open_pdf(plain)[1].repaired


def test_document_pipeline_job_holds_the_pdf_chain(home):
    from narra_dagster.definitions import build_defs
    from tests.support.chains import chain_for_kind

    defs = build_defs()
    job = defs.resolve_job_def("document_pipeline")
    assert job.partitions_def.name == "documents"
    assert [k.to_user_string() for k in chain_for_kind(defs, "document")][:2] == [
        "document_source", "document_pages"]
    assert {k.to_user_string() for k in chain_for_kind(defs, "document")} == {
        a.key.to_user_string() for a in document_assets}
    graph = defs.resolve_asset_graph()
    assert all(graph.get(a.key).code_version == "1" for a in document_assets)
    assert graph.get(dg.AssetKey("document_index_rows")).pools == {"search_index"}


# --- the chain ---------------------------------------------------------------------------

@needs_debian_pdfs
def test_debian_pdfs_are_split_indexed_and_found_on_the_right_page(corpus, embedder):
    resources, _, done = corpus
    index = resources["search_index"]
    (spec, spec_result), (tasn1, tasn1_result) = done[MIME_SPEC], done[TASN1]
    for result in (spec_result, tasn1_result):
        assert result.success
        assert all(_checks(result).values()), _checks(result)
    source = _metadata(spec_result, "document_source")
    assert source["pages"] == 17 and source["repaired"] is False and source["encrypted"] is False
    pages = _metadata(spec_result, "document_pages")
    assert pages["text_pages"] == 17 and pages["ocr_pages"] == 0
    rows = _metadata(spec_result, "document_index_rows")["rows"]
    assert rows == _metadata(spec_result, "document_chunks")["chunks"] == index.count(spec) > 17
    chunks = resources["media_store"].read_json(tasn1, "chunks.json")
    assert {c["page"] for c in chunks} <= set(range(1, 37)) and len({c["page"] for c in chunks}) > 30

    cases = [("many applications and filesystems do not support extended attributes", spec, 14),
             ("The NULL constant can be used for the variable initialization", tasn1, 7)]
    for query, key, page in cases:
        # The same best hit at every limit: fusion ranks 50 candidates per side, then cuts
        # (at limit 3, fusing 3 per side once put p. 20 ahead of p. 7).
        for limit in (10, 3, 1):
            hit = index.search(query, embedder.embed([query])[0], limit=limit)[0]
            assert (hit.media_id, hit.kind, hit.page) == (key, "document", page), (query, limit, hit)
            assert hit.start_s is None and hit.box is None
        # At most `limit` hits, one per page; with no relevance floor, exactly `limit`.
        assert 1 <= len(index.search(query, embedder.embed([query])[0], limit=3)) <= 3
        assert len(index.search(query, embedder.embed([query])[0], limit=3, min_relevance=0)) == 3

    summary = _metadata(spec_result, "document_summary")
    assert summary["sentences_considered"] > 50
    bullets = [line for line in summary["summary"].splitlines() if line.startswith("- (p. ")]
    assert len(bullets) == 5
    assert "mime" in summary["keywords"].lower()


@needs_debian_pdfs
def test_ocr_reads_a_page_without_a_text_layer(doc_resources, instance, tmp_path, embedder):
    path = two_page_pdf(tmp_path)
    key, result = materialize_pdf(path, doc_resources, instance)
    assert result.success
    pages = doc_resources["media_store"].read_json(key, "pages.json")
    assert [p["method"] for p in pages] == ["text", "ocr"]
    ocr_text = pages[1]["text"].lower()
    for word in ("lighthouse", "keeper", "seagulls", "morning", "garden", "tools", "thursday"):
        assert word in ocr_text, ocr_text
    assert all(line["confidence"] > 0.8 for line in pages[1]["ocr_lines"])
    query = "lighthouse keeper counts seagulls"
    hit = doc_resources["search_index"].search(query, embedder.embed([query])[0], limit=10)[0]
    assert (hit.media_id, hit.page) == (key, 2) and "seagulls" in hit.text.lower()


@needs_debian_pdfs
def test_bad_pdfs_fail_alone_classified_and_touch_nothing(corpus, tmp_path):
    doc_resources, instance, done = corpus
    index = doc_resources["search_index"]
    rows_before = {key: index.count(key) for key, _ in done.values()}
    total_before = index.count()
    partitions_before = set(instance.get_dynamic_partitions("documents"))

    data = small_pdf_bytes()
    encrypted = tmp_path / "locked.pdf"
    writer = pypdf.PdfWriter(clone_from=io.BytesIO(data))
    writer.encrypt("s3cret", algorithm="AES-256")
    writer.write(encrypted)
    broken = tmp_path / "broken-xref.pdf"
    broken.write_bytes(unreadable_xref(data))
    not_pdf = tmp_path / "notes.pdf"
    not_pdf.write_text("These are plain notes, not a PDF.\n" * 10)

    disguised = tmp_path / "holiday.png"  # a real PDF under an image's name
    disguised.write_bytes(data)

    expected = {encrypted: "encrypted_pdf", broken: "corrupt_pdf", not_pdf: "not_pdf",
                disguised: "type_mismatch"}
    for path, code in expected.items():
        key, result = materialize_pdf(path, doc_resources, instance)
        assert not result.success
        failures = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
        assert [e.step_key for e in failures] == ["document_source"], path
        message, error_class = run_failure(instance, result.run_id)
        assert error_class == code, (path, message)
        assert message.startswith(f"[{code}] document_source:")
        assert not result.get_asset_materialization_events()
        assert index.count(key) == 0
        # never retried: one attempt only
        assert sum(e.event_type_value == "STEP_UP_FOR_RETRY" for e in result.all_events) == 0
    assert index.count() == total_before
    assert {key: index.count(key) for key, _ in done.values()} == rows_before
    added = {store_upload(p, doc_resources["media_store"]).partition_key for p in expected}
    assert set(instance.get_dynamic_partitions("documents")) == partitions_before | added


@needs_debian_pdfs
def test_a_wrong_xref_offset_is_repaired_and_said_so(doc_resources, instance, tmp_path):
    path = tmp_path / "offset.pdf"
    path.write_bytes(wrong_startxref(small_pdf_bytes()))
    key, result = materialize_pdf(path, doc_resources, instance)
    assert result.success
    source = _metadata(result, "document_source")
    assert source["repaired"] is True and source["pages"] == 2
    assert any("xref" in note.lower() for note in source["repair_notes"])
    assert doc_resources["search_index"].count(key) > 0


@needs_debian_pdfs
def test_upload_sensor_sends_a_pdf_to_the_document_pipeline(instance, tmp_path):
    import shutil

    from narra_dagster import PIPELINE_VERSION
    from narra_dagster.defs.intake.inbox_sensor import upload_sensor
    from narra_dagster.resources.inbox import LocalInbox

    inbox = LocalInbox(path=str(tmp_path / "inbox"), stable_seconds=0.0)
    store = LocalMediaStore(root=str(tmp_path / "media"))
    (tmp_path / "inbox").mkdir()
    shutil.copyfile(MIME_SPEC, tmp_path / "inbox" / "spec.pdf")
    context = dg.build_sensor_context(instance=instance, resources={"inbox": inbox, "media_store": store})
    result = upload_sensor(context)
    [run] = result.run_requests
    assert run.job_name == "document_pipeline"
    assert run.run_key == f"document:{run.partition_key}:v{PIPELINE_VERSION}"
    [add] = result.dynamic_partitions_requests
    assert (add.partitions_def_name, list(add.partition_keys)) == ("documents", [run.partition_key])


def test_a_pdf_encrypted_with_an_empty_password_is_read_and_ocrd(doc_resources, instance, tmp_path):
    writer = pypdf.PdfWriter(clone_from=scanned_page_pdf(tmp_path / "scan.pdf"))
    writer.encrypt("", owner_password="owner-only", algorithm="AES-128")
    path = tmp_path / "open-but-encrypted.pdf"
    writer.write(path)
    key, result = materialize_pdf(path, doc_resources, instance)
    assert result.success
    assert _metadata(result, "document_source")["encrypted"] is True
    pages = doc_resources["media_store"].read_json(key, "pages.json")
    assert pages[0]["method"] == "ocr" and "seagulls" in pages[0]["text"].lower()


def test_a_page_declaring_a_huge_size_is_rendered_within_the_pixel_budget(tmp_path):
    """A 20000 x 20000 pt page would be 1.7 billion pixels at 150 dpi; it is drawn smaller."""
    writer = pypdf.PdfWriter()
    writer.add_blank_page(width=20_000, height=20_000)
    writer.write(tmp_path / "huge.pdf")
    image = pdf.render_page(tmp_path / "huge.pdf", 0)
    assert image.shape[0] * image.shape[1] <= limits.current().pdf_max_render_pixels
    assert image.shape[0] > 5000  # still as sharp as the budget allows


def test_a_flate_bomb_fails_before_pdfium_inflates_it(doc_resources, instance, tmp_path):
    from tests.support.media import flate_bomb_pdf

    key, result = materialize_pdf(flate_bomb_pdf(tmp_path / "bomb.pdf"), doc_resources, instance)
    assert not result.success
    message, error_class = run_failure(instance, result.run_id)
    assert error_class == "decompression_bomb", message
