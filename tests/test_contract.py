"""The contract every media kind of the registry passes, with real files and real models.

Parametrised over ``registry.KINDS``: a kind added to the registry without cases here fails
``test_every_kind_has_contract_cases``, and a stage added to a kind is covered by every test
below without anyone listing it. For each kind (audio included, as a path of the video kind):

- a good real file materializes every asset of its group and is searchable by its content;
- at least three bad files each fail as one partition with a specific error class, the same
  class alone and in a batch run, never retried;
- processing the same bytes again changes no row count;
- a batch run and per-item runs leave the same materializations, metadata keys and checks.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import numpy as np
import pypdf
import pytest

from narra_dagster import registry
from narra_dagster.app.processing import process_files
from narra_dagster.app.queries import search_text
from narra_dagster.definitions import build_defs
from narra_dagster.resources import LanceImageIndex, LanceSearchIndex, LocalMediaStore
from tests.support.media import (
    AUDIO_CONTAINERS,
    flate_bomb_pdf,
    make_talking_video,
    speak,
    write_audio,
)

MIME_SPEC = Path("/usr/share/doc/shared-mime-info/shared-mime-info-spec.pdf")

SENTENCE = "A fresh cup of coffee is waiting on the kitchen table."


@dataclass
class Good:
    """A good file: what to search for, and where the hit must point (seconds or page)."""

    path: Path
    query: str
    at_s: float | None = None
    page: int | None = None


@dataclass
class KindCases:
    good: Callable[[Path], list[Good]]
    bad: Callable[[Path], dict[str, tuple[Path, str]]]  # name -> (file, error class)


def _speech_video(folder: Path) -> list[Good]:
    path = folder / "talk.mp4"
    timeline = make_talking_video(path, [SENTENCE], ["coffee"])
    return [Good(path, "cup of coffee on the kitchen table", at_s=timeline[0].start_s)]


def _audio_files(folder: Path) -> list[Good]:
    audio, timeline = speak([SENTENCE])
    return [Good(write_audio(audio, folder / f"speech.{ext}", ext), "cup of coffee",
                 at_s=timeline[0].start_s) for ext in AUDIO_CONTAINERS]


def _bad_videos(folder: Path) -> dict[str, tuple[Path, str]]:
    (folder / "empty.mp4").write_bytes(b"")
    (folder / "notes.mp3").write_text("these are notes, not a recording\n" * 20)
    audio, _ = speak(["Half of this file is missing."])
    whole = write_audio(audio, folder / "whole.m4a", "m4a").read_bytes()
    (folder / "cut.m4a").write_bytes(whole[: len(whole) // 3])
    return {"empty": (folder / "empty.mp4", "empty_file"),
            "text named .mp3": (folder / "notes.mp3", "not_media"),
            "truncated m4a": (folder / "cut.m4a", "corrupt_media")}


def _photo(folder: Path) -> list[Good]:
    import skimage.data
    from PIL import Image

    path = folder / "cat.jpg"
    Image.fromarray(skimage.data.chelsea()).save(path, quality=92)
    return [Good(path, "tabby cat")]


def _bad_images(folder: Path) -> dict[str, tuple[Path, str]]:
    import struct
    import zlib

    import skimage.data
    from PIL import Image

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    (folder / "bomb.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                                      + chunk(b"IDAT", zlib.compress(b"\x00" * 1024))
                                      + chunk(b"IEND", b""))
    buffer = io.BytesIO()
    Image.fromarray(skimage.data.rocket()).save(buffer, "JPEG", quality=90)
    (folder / "cut.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) * 2 // 3])
    Image.fromarray(skimage.data.astronaut()).save(folder / "astronaut.pdf", "PNG")
    return {"decompression bomb": (folder / "bomb.png", "decompression_bomb"),
            "truncated jpeg": (folder / "cut.jpg", "corrupt_image"),
            "png named .pdf": (folder / "astronaut.pdf", "type_mismatch")}


def _pdf(folder: Path) -> list[Good]:
    writer = pypdf.PdfWriter()
    for page in pypdf.PdfReader(MIME_SPEC).pages[:3]:
        writer.add_page(page)
    path = folder / "spec.pdf"
    writer.write(path)
    text = pypdf.PdfReader(path).pages[1].extract_text()
    words = [w for w in re.findall(r"[A-Za-z]{4,}", text)][10:16]
    return [Good(path, " ".join(words), page=2)]


def _bad_pdfs(folder: Path) -> dict[str, tuple[Path, str]]:
    (folder / "notes.pdf").write_text("not a PDF at all\n" * 10)
    writer = pypdf.PdfWriter()
    writer.add_page(pypdf.PdfReader(MIME_SPEC).pages[0])
    buffer = io.BytesIO()
    writer.write(buffer)
    data = buffer.getvalue()
    cut = len(data) // 3
    (folder / "broken.pdf").write_bytes(
        data[:cut] + b"\nxref\n0 9\ngarbage 0000 q\ntrailer\n<< /Size 9 /Root 1 0 R >>\n"
        + b"startxref\n%d\n%%%%EOF\n" % (cut + 1))
    locked = pypdf.PdfWriter()
    locked.add_page(pypdf.PdfReader(MIME_SPEC).pages[0])
    locked.encrypt(user_password="secret", algorithm="AES-256")
    locked.write(folder / "locked.pdf")
    (folder / "spec.png").write_bytes(data)
    return {"text named .pdf": (folder / "notes.pdf", "not_pdf"),
            "garbled xref": (folder / "broken.pdf", "corrupt_pdf"),
            "password": (folder / "locked.pdf", "encrypted_pdf"),
            "pdf named .png": (folder / "spec.png", "type_mismatch"),
            "flate bomb": (flate_bomb_pdf(folder / "bomb.pdf"), "decompression_bomb")}


# Contract cases per registry kind. "video" has two variants: a talking video and the same
# speech in every audio-only container the platform accepts.
CASES: dict[str, dict[str, KindCases]] = {
    "video": {"video": KindCases(_speech_video, _bad_videos),
              "audio": KindCases(_audio_files, _bad_videos)},
    "image": {"image": KindCases(_photo, _bad_images)},
    "document": {"document": KindCases(_pdf, _bad_pdfs)},
}
VARIANTS = [(kind, variant) for kind, variants in CASES.items() for variant in variants]


def test_every_kind_has_contract_cases():
    assert set(CASES) == set(registry.names()), "a kind in the registry has no contract cases"


@pytest.fixture
def all_resources(home, transcriber, embedder, ocr, image_classifier) -> dict:
    return {
        "media_store": LocalMediaStore(root=str(home / "media")),
        "transcriber": transcriber, "embedder": embedder, "ocr": ocr,
        "image_classifier": image_classifier,
        "search_index": LanceSearchIndex(uri=str(home / "index")),
        "image_index": LanceImageIndex(uri=str(home / "index")),
    }


def _materialized(instance: dg.DagsterInstance, key: str, kind: str) -> dict[str, dict]:
    """Asset name -> {"metadata": sorted keys} of the partition's latest materializations."""
    out = {}
    for stage in registry.get(kind).stages:
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=stage.key, asset_partitions=[key]), limit=1).records
        if records:
            out[stage.name] = sorted(records[0].asset_materialization.metadata)
    return out


def _checks(instance: dg.DagsterInstance, run_id: str, key: str) -> dict[str, bool]:
    """Check name -> passed, of the check evaluations a run recorded for partition ``key``."""
    out = {}
    for record in instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION):
        evaluation = record.dagster_event.event_specific_data
        if getattr(evaluation, "partition", None) in (None, key):
            out[evaluation.check_name] = evaluation.passed
    return out


def _retries(instance: dg.DagsterInstance, run_id: str) -> int:
    return len(instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_UP_FOR_RETRY))


@pytest.mark.parametrize("kind, variant", VARIANTS)
def test_good_files_materialize_every_stage_and_are_found(kind, variant, all_resources, home,
                                                           tmp_path, embedder):
    goods = CASES[kind][variant].good(tmp_path)
    defs = build_defs(all_resources)
    with dg.instance_for_test() as instance:
        results = process_files([g.path for g in goods], instance, defs, batch=False)
        stages = {stage.name for stage in registry.get(kind).stages}
        for good, result in zip(goods, results):
            assert result.status == "succeeded", (good.path.name, result.error)
            assert result.kind == kind
            assert set(_materialized(instance, result.partition_key, kind)) == stages
            hits = search_text(good.query, embedder=embedder,
                               search_index=all_resources["search_index"], limit=20)
            mine = [h for h in hits if h.media_id == result.partition_key]
            assert mine, (good.path.name, [(h.source_name, h.text) for h in hits[:5]])
            if good.at_s is not None:
                assert abs(mine[0].start_s - good.at_s) < 2.5, (good.path.name, mine[0])
            if good.page is not None:
                assert mine[0].page == good.page, (good.path.name, mine[0])
        # The same bytes again: no new partition, no new rows.
        index = all_resources["search_index"]
        rows = {r.partition_key: index.count(r.partition_key) for r in results}
        again = process_files([g.path for g in goods], instance, defs, force=True, batch=False)
        assert all(r.status == "succeeded" for r in again)
        assert {r.partition_key: index.count(r.partition_key) for r in again} == rows
        name = registry.get(kind).partitions.name
        assert sorted(instance.get_dynamic_partitions(name)) == sorted(rows)


@pytest.mark.parametrize("kind, variant", [(k, v) for k, v in VARIANTS if v != "audio"])
def test_bad_files_fail_alone_and_in_a_batch_with_the_same_class(kind, variant, all_resources,
                                                                 home, tmp_path):
    bad = CASES[kind][variant].bad(tmp_path)
    assert len(bad) >= 3
    defs = build_defs(all_resources)
    with dg.instance_for_test() as instance:
        index_rows = all_resources["search_index"].count()
        alone = {}
        for name, (path, expected) in bad.items():
            (result,) = process_files([path], instance, defs, batch=False)
            assert result.status == "failed", (name, result)
            assert result.error_class == expected, (name, result.error)
            if result.run_id:  # refused at intake (an empty file) starts no run
                assert _retries(instance, result.run_id) == 0, name
            alone[name] = result.error_class
        assert all_resources["search_index"].count() == index_rows
    with dg.instance_for_test() as instance:
        results = process_files([p for p, _ in bad.values()], instance, defs, batch=True)
        by_path = {r.path: r for r in results}
        for name, (path, _) in bad.items():
            result = by_path[str(path)]
            assert (result.status, result.error_class) == ("failed", alone[name]), (name, result)


@pytest.mark.parametrize("kind, variant", [(k, v) for k, v in VARIANTS if v != "audio"])
def test_batch_and_per_item_runs_leave_the_same_record(kind, variant, all_resources, home,
                                                      tmp_path):
    goods = CASES[kind][variant].good(tmp_path)
    defs = build_defs(all_resources)
    records = []
    for batch in (False, True):
        with dg.instance_for_test() as instance:
            (result,) = process_files([goods[0].path], instance, defs, batch=batch, force=True)
            assert result.status == "succeeded", (batch, result.error)
            records.append((_materialized(instance, result.partition_key, kind),
                            _checks(instance, result.run_id, result.partition_key)))
    assert records[0] == records[1]
    assert records[0][0], "nothing was materialized"


@pytest.mark.daemon
def test_every_audio_container_through_narra_process_and_search(home, tmp_path):
    """`narra process` exits 0 on a WAV, an MP3, a FLAC, an Ogg/Opus and an M4A, and `narra
    search` finds each at the second the words are said."""
    import json
    import subprocess

    from .conftest import subprocess_env

    goods = _audio_files(tmp_path)
    env = subprocess_env(home)
    done = subprocess.run(["narra", "process", *[str(g.path) for g in goods]], env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    found = subprocess.run(["narra", "search", "--json", "--limit", "20", "cup of coffee"],
                           env=env, capture_output=True, text=True, timeout=300)
    assert found.returncode == 0, found.stderr[-3000:]
    hits = json.loads(found.stdout)
    for good in goods:
        mine = [h for h in hits if h["source_name"] == good.path.name]
        assert mine, (good.path.name, hits[:3])
        assert abs(mine[0]["start_s"] - good.at_s) < 2.5, (good.path.name, mine[0])
        assert mine[0]["kind"] == "video"
    assert np.isfinite([h["score"] for h in hits]).all()
