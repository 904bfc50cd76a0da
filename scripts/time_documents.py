"""Per-page and per-frame times of the PDF and video-frame stages, on real inputs.

Calls the same functions the assets call (narra_dagster.defs.document.pdf, narra_dagster.defs.video.keyframes, the OCR
and embedder resources), in one process, models loaded once before timing. Prints one table;
``--json PATH`` also writes the figures.

    python scripts/time_documents.py [--repeat 3] [--json out.json]

Inputs: the PDFs shipped by Debian's shared-mime-info (17 pages) and libtasn1-doc (36 pages),
a textless page drawn by Pillow (A4 at 150 dpi, 11 pt DejaVu Serif) saved as a PDF, and a 6 s
640x360 H.264 video with a word drawn on it from 3 s (made here with PyAV). Figures are medians
over the repeats; on a shared machine they move with the load.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import numpy as np

from narra_dagster.core.summarize import split_sentences
from narra_dagster.defs.document import pdf
from narra_dagster.defs.video import keyframes
from narra_dagster.resources import OnnxTextEmbedder, RapidOcrEngine

DEBIAN_PDFS = [Path("/usr/share/doc/shared-mime-info/shared-mime-info-spec.pdf"),
               Path("/usr/share/doc/libtasn1-doc/libtasn1.pdf")]
FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSerif.ttf"
BOLD = "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf"


def scanned_pdf(path: Path) -> Path:
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.truetype(FONT, 23)
    image = Image.new("RGB", (1240, 1754), "white")
    draw = ImageDraw.Draw(image)
    for i in range(30):
        draw.text((120, 160 + 44 * i), f"Line {i + 1}: the lighthouse keeper counts seagulls "
                  "every morning before dawn.", fill="black", font=font)
    image.save(path, "PDF", resolution=150)
    return path


def text_video(path: Path) -> Path:
    import av
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.truetype(BOLD, 56)
    plain = Image.new("RGB", (640, 360), (30, 60, 90))
    captioned = plain.copy()
    ImageDraw.Draw(captioned).text((60, 150), "LIGHTHOUSE", fill="white", font=font)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 640, 360, "yuv420p"
        for i in range(60):
            frame = av.VideoFrame.from_ndarray(np.asarray(captioned if i >= 30 else plain), format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, 10)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def time_pdf(path: Path, embedder, ocr) -> dict:
    reader, info = pdf.open_pdf(path)
    text_s, chunks_per_page = [], []
    for page in reader.pages:
        started = time.perf_counter()
        text = pdf.clean_text(page.extract_text() or "")
        text_s.append(time.perf_counter() - started)
        chunks_per_page.append(pdf.chunk_page(text))
    chunks = [c for page in chunks_per_page for c in page]
    started = time.perf_counter()
    embedder.embed(chunks)
    embed_s = time.perf_counter() - started
    out = {"pages": info.pages, "validation_s_per_page": info.seconds / info.pages,
           "text_s_per_page": statistics.mean(text_s), "embedding_s_per_page": embed_s / info.pages,
           "chunks": len(chunks)}
    if not any(pdf.has_text_layer(c) for c in chunks):  # a scan: time render + OCR per page
        render_s, ocr_s = [], []
        for index in range(info.pages):
            started = time.perf_counter()
            image = pdf.render_page(path, index)
            render_s.append(time.perf_counter() - started)
            started = time.perf_counter()
            lines = ocr.read(image)
            ocr_s.append(time.perf_counter() - started)
        text = " ".join(line.text for line in lines)
        started = time.perf_counter()
        embedder.embed(pdf.chunk_page(text))
        out.update(render_s_per_page=statistics.mean(render_s), ocr_s_per_page=statistics.mean(ocr_s),
                   embedding_s_per_page=time.perf_counter() - started, ocr_lines=len(lines),
                   sentences=len(split_sentences(text)))
    return out


def time_frames(path: Path, ocr) -> dict:
    sampling = keyframes.sample_frames(path)
    n = max(len(sampling.frames), 1)
    started = time.perf_counter()
    for frame in sampling.frames:
        ocr.read(frame.image)
    return {"frames": len(sampling.frames), "mode": sampling.mode,
            "keyframe_s_per_frame": sampling.decode_s / n,
            "ocr_s_per_frame": (time.perf_counter() - started) / n}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    embedder, ocr = OnnxTextEmbedder(), RapidOcrEngine()
    embedder._ensure_loaded()
    ocr._load()
    with tempfile.TemporaryDirectory() as tmp:
        inputs = [p for p in DEBIAN_PDFS if p.exists()] + [scanned_pdf(Path(tmp) / "scan.pdf")]
        video = text_video(Path(tmp) / "caption.mp4")
        ocr.read(np.full((64, 64, 3), 255, np.uint8))  # warm-up
        runs: dict[str, list[dict]] = {}
        for _ in range(args.repeat):
            for path in inputs:
                runs.setdefault(path.name, []).append(time_pdf(path, embedder, ocr))
            runs.setdefault("caption.mp4 (frames)", []).append(time_frames(video, ocr))
    # How loaded the machine was: about 508 short sentences/s through the default embedder
    # (CTranslate2 int8) on an idle machine here, 2026-11-21; the ONNX file ran 377.
    started = time.perf_counter()
    embedder.embed(["A fresh cup of coffee is waiting on the kitchen table."] * 256)
    calibration = 256 / (time.perf_counter() - started)
    figures = {name: {k: (statistics.median(r[k] for r in rs) if isinstance(rs[0][k], float) else rs[0][k])
                      for k in rs[0]} for name, rs in runs.items()}
    for name, values in figures.items():
        cells = ", ".join(f"{k}={v * 1000:.1f} ms" if k.endswith("_s_per_page") or k.endswith("_s_per_frame")
                          else f"{k}={v}" for k, v in values.items())
        print(f"{name}: {cells}")
    print(f"calibration: {calibration:.0f} short sentences/s through the embedder "
          "(about 508 on an idle 2-core machine here)")
    if args.json:
        args.json.write_text(json.dumps({**figures, "calibration_sentences_per_s": calibration},
                                        indent=1))


if __name__ == "__main__":
    main()
