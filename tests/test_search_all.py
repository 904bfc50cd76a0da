"""One search across all media: `narra process` a PDF and a video, then one `narra search` finds
the PDF with its page and the video with its second."""

import json
import subprocess

from .conftest import REPO, subprocess_env
from .test_documents import needs_debian_pdfs, two_page_pdf
from .test_frames import APPEARS_S, make_text_video


def _run(args, env):
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=600, cwd=REPO)


@needs_debian_pdfs
def test_one_query_finds_a_pdf_page_and_a_video_second(home, tmp_path):
    env = subprocess_env(home)
    pdf = two_page_pdf(tmp_path)  # page 2 is a scan: "The lighthouse keeper counts seagulls..."
    video = make_text_video(tmp_path / "caption.mp4")  # "LIGHTHOUSE" on screen from 3.0 s
    done = _run(["narra", "process", str(pdf), str(video), "--json"], env)
    assert done.returncode == 0, done.stderr[-3000:]
    results = {r["source_name"]: r for r in json.loads(done.stdout)}
    assert {r["status"] for r in results.values()} == {"succeeded"}
    assert results["mixed.pdf"]["kind"] == "document" and results["caption.mp4"]["kind"] == "video"
    # the whole kind's job ran: the PDF chain and the video chain with its frame assets
    assert {"document_pages", "document_summary"} <= results["mixed.pdf"]["steps"].keys()
    assert {"video_keyframes", "video_frame_text", "video_frame_index_rows",
            "video_enrichment"} <= results["caption.mp4"]["steps"].keys()

    found = _run(["narra", "search", "lighthouse", "--json"], env)
    assert found.returncode == 0, found.stderr
    hits = json.loads(found.stdout)
    for hit in hits:
        assert {"kind", "media_id", "source_name", "start_s", "end_s", "page", "box",
                "text"} <= hit.keys()
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    by_kind = {}
    for hit in hits:
        by_kind.setdefault(hit["kind"], hit)
    document, video = by_kind["document"], by_kind["video"]
    assert (document["media_id"], document["source_name"], document["page"]) == (
        results["mixed.pdf"]["partition_key"], "mixed.pdf", 2)
    assert document["start_s"] is None and "lighthouse" in document["text"].lower()
    assert (video["media_id"], video["source_name"]) == (results["caption.mp4"]["partition_key"],
                                                         "caption.mp4")
    assert APPEARS_S <= video["start_s"] == video["end_s"] < APPEARS_S + 1
    assert video["page"] is None and len(video["box"]) == 4

    table = _run(["narra", "search", "lighthouse"], env)
    assert table.returncode == 0, table.stderr
    assert "p. 2" in table.stdout and "0:03.0 box" in table.stdout
    assert "document" in table.stdout and "video" in table.stdout
