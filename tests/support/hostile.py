"""A hostile corpus: the files a platform people drop files into will be given, made here from
real parts (espeak-ng speech, scikit-image photos, a Debian PDF) and then broken on purpose.

:func:`make_hostile_corpus` writes 42 files of 21 kinds of trouble beside 4 good files, each with
the outcome it must have. ``tests/test_mixed_folder.py`` runs them through ``narra process`` and
the inbox; ``bench/hostile.py`` times each one alone for the per-kind table.

The media duration budget is lowered for this corpus (:data:`ENV`) so that "longer than the
budget" costs a 35-minute file to make instead of a 7-hour one; the mechanism is the same.
"""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tests.support.media import (
    _AUDIO_RATE,
    flate_bomb_pdf,
    make_talking_video,
    speak,
    write_audio,
)

MIME_SPEC = Path("/usr/share/doc/shared-mime-info/shared-mime-info-spec.pdf")
# Budgets in force for the corpus: 30 minutes of media at most (the default is 6 hours).
ENV = {"NARRA_MEDIA_MAX_SECONDS": "1800"}
# What the index may hold for a file: rows of speech or text, none (silence, noise), or either.
ROWS, NO_ROWS, ANY_ROWS = "rows", "no rows", "any"


@dataclass(frozen=True)
class Case:
    """One file of the corpus: its name, the kind of trouble, and the outcome it must have
    (``succeeded`` or the error class of its one classified failure); ``rows`` says what a
    success may leave in the search index."""

    name: str
    trouble: str
    outcome: str
    rows: str = ANY_ROWS


def _png(width: int, height: int, color: tuple[int, int, int]) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, "PNG")
    return buffer.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_declaring(width: int, height: int) -> bytes:
    """A valid PNG signature and IHDR declaring ``width`` x ``height`` RGB, with a tiny IDAT."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr)
            + _chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + _chunk(b"IEND", b""))


def _tiff_declaring(width: int, height: int) -> bytes:
    """A little-endian TIFF whose one IFD declares ``width`` x ``height`` 8-bit grey, with 8 bytes
    of pixel data."""
    entries = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, 8), (259, 3, 1, 1),
               (262, 3, 1, 1), (273, 4, 1, 8 + 2 + 8 * 12 + 4), (277, 3, 1, 1),
               (278, 4, 1, height), (279, 4, 1, 8)]
    ifd = struct.pack("<H", len(entries)) + b"".join(
        struct.pack("<HHII", tag, kind, count, value) for tag, kind, count, value in entries)
    return b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0) + b"\x00" * 8


def _gif_frames(path: Path, frames: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    images = [Image.fromarray((rng.integers(0, 2, (16, 16)) * 255).astype(np.uint8)).convert("P")
              for _ in range(frames)]
    images[0].save(path, save_all=True, append_images=images[1:], duration=20)


def _wav_bytes(audio: np.ndarray, *, data_size: int | None = None, channels: int = 1,
               rate: int = _AUDIO_RATE) -> bytes:
    """A 16-bit PCM WAV of ``audio`` written by hand, so its header can lie: ``data_size`` for
    the data chunk's length, ``channels`` and ``rate`` as declared."""
    pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()
    size = len(pcm) if data_size is None else data_size
    header = (b"RIFF" + struct.pack("<I", (36 + size) & 0xFFFFFFFF) + b"WAVE"
              + b"fmt " + struct.pack("<IHHIIHH", 16, 1, channels, rate,
                                      rate * max(channels, 1) * 2, max(channels, 1) * 2, 16)
              + b"data" + struct.pack("<I", size & 0xFFFFFFFF))
    return header + pcm


def _silence(seconds: float):
    step = _AUDIO_RATE * 10
    left = int(seconds * _AUDIO_RATE)
    while left > 0:
        yield np.zeros(min(step, left), np.float32)
        left -= step


def make_hostile_corpus(folder: Path) -> list[Case]:
    """Write the corpus into ``folder`` (created) and return its cases, one per file.

    Takes about 30 s here (speech synthesis, 55 minutes of encoded silence, a 3,000-frame GIF).
    """
    import pypdf
    import skimage.data
    from PIL import Image

    folder.mkdir(parents=True)
    cases: list[Case] = []

    def add(name: str, trouble: str, outcome: str, rows: str = ANY_ROWS,
            data: bytes | None = None) -> Path:
        path = folder / name
        if data is not None:
            path.write_bytes(data)
        cases.append(Case(name, trouble, outcome, rows))
        return path

    # Good files: they succeed whatever is beside them.
    talk = folder / "talk.mp4"
    make_talking_video(talk, ["The lighthouse keeper waves from the rocks."], ["rocket"])
    add("talk.mp4", "good", "succeeded", ROWS)
    speech, _ = speak(["Please remember to water the garden every morning."])
    write_audio(speech, folder / "memo.wav", "wav")
    add("memo.wav", "good", "succeeded", ROWS)
    jpeg = io.BytesIO()
    Image.fromarray(skimage.data.chelsea()).save(jpeg, "JPEG", quality=90)
    add("cat.jpg", "good", "succeeded", data=jpeg.getvalue())
    writer = pypdf.PdfWriter()
    for page in pypdf.PdfReader(MIME_SPEC).pages[:2]:
        writer.add_page(page)
    writer.write(folder / "spec.pdf")
    add("spec.pdf", "good", "succeeded", ROWS)

    # The same bytes under another name: the same item, not a second one.
    add("cat copy.jpg", "same bytes, another name", "succeeded", data=jpeg.getvalue())

    # Empty files under three media names: refused before they become partitions.
    for name in ("empty.jpg", "empty.pdf", "empty.mp4"):
        add(name, "empty file", "empty_file", data=b"")

    # PDFs
    flate_bomb_pdf(folder / "bomb.pdf", inflated_mib=128)
    add("bomb.pdf", "FlateDecode bomb", "decompression_bomb")
    flate_bomb_pdf(folder / "bomb-1gib.pdf", inflated_mib=1024)
    add("bomb-1gib.pdf", "FlateDecode bomb", "decompression_bomb")
    locked = pypdf.PdfWriter(clone_from=folder / "spec.pdf")
    locked.encrypt("secret", algorithm="AES-128")
    locked.write(folder / "locked.pdf")
    add("locked.pdf", "encrypted PDF", "encrypted_pdf")
    spec = (folder / "spec.pdf").read_bytes()
    add("spec-cut-30.pdf", "truncated PDF", "corrupt_pdf", data=spec[: len(spec) * 3 // 10])
    add("spec-cut-70.pdf", "truncated PDF", "corrupt_pdf", data=spec[: len(spec) * 7 // 10])

    # Speech that is not there
    write_audio(_silence(20 * 60), folder / "silence-20min.m4a", "m4a")
    add("silence-20min.m4a", "long silence", "succeeded", NO_ROWS)
    rng = np.random.default_rng(1)
    add("noise.wav", "noise", "succeeded", NO_ROWS,
        data=_wav_bytes((0.1 * rng.standard_normal(30 * _AUDIO_RATE)).astype(np.float32)))
    write_audio(_silence(35 * 60), folder / "silence-35min.opus", "opus")
    add("silence-35min.opus", "longer than the budget", "too_large")

    # Lying headers
    add("liar-length.wav", "lying WAV header", "succeeded", ROWS,
        data=_wav_bytes(speech, data_size=0xFFFFFF00))
    add("liar-channels.wav", "lying WAV header", "corrupt_media",
        data=_wav_bytes(speech, channels=0))
    add("bare-ftyp.mp4", "bare ftyp box", "corrupt_media",
        data=struct.pack(">I", 24) + b"ftypisom" + struct.pack(">I", 512) + b"isomiso2")

    # Truncated media at several points
    video = talk.read_bytes()
    for percent in (10, 50, 90):
        add(f"talk-cut-{percent}.mp4", "truncated video", "corrupt_media",
            data=video[: len(video) * percent // 100])
    write_audio(speech, folder / "memo.mp3", "mp3")
    mp3 = (folder / "memo.mp3").read_bytes()
    (folder / "memo.mp3").unlink()
    add("memo-cut-60.mp3", "truncated audio (a stream: what is there is used)", "succeeded",
        data=mp3[: len(mp3) * 6 // 10])

    # Polyglots
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("hello.txt", "hello")
    add("cat-and-zip.jpg", "polyglot", "succeeded", data=jpeg.getvalue() + archive.getvalue())
    add("pdf-then-png.pdf", "polyglot", "corrupt_pdf",
        data=b"%PDF-1.7\n" + _png(32, 32, (200, 30, 30)))

    # Images
    _gif_frames(folder / "frames.gif", 3000)
    add("frames.gif", "huge GIF frame count", "too_large")
    png = bytearray(_png(64, 64, (10, 120, 200)))
    idat = png.index(b"IDAT")
    png[idat + 8] ^= 0xFF  # a byte of the compressed data: the chunk's CRC no longer matches
    add("bad-crc.png", "PNG corruption", "corrupt_image", data=bytes(png))
    add("pixel-bomb.png", "PNG pixel bomb", "decompression_bomb",
        data=_png_declaring(40_000, 40_000))
    add("pixel-bomb.tif", "TIFF pixel bomb", "decompression_bomb",
        data=_tiff_declaring(50_000, 50_000))
    add("header-only.jpg", "JPEG corruption", "corrupt_image", data=jpeg.getvalue()[:400])
    add("cut.jpg", "JPEG corruption", "corrupt_image",
        data=jpeg.getvalue()[: len(jpeg.getvalue()) // 2])

    # Not media at all, under media names
    add("archive.jpg", "zip under a media name", "not_image", data=archive.getvalue())
    add("letter.mp4", "text under a media name", "not_media", data=b"Dear Sir,\n" * 50)
    add("notes.pdf", "text under a media name", "not_pdf", data=b"a text file, not a PDF\n" * 9)
    add("readme.txt", "not media, no media name", "unsupported_type", data=b"nothing here\n")

    # Names that claim another kind than the bytes
    add("astronaut.mp4", "misnamed", "type_mismatch", data=_png(48, 48, (250, 200, 0)))
    add("speech.pdf", "misnamed", "type_mismatch", data=_wav_bytes(speech[: _AUDIO_RATE]))

    # Names the file system allows (contents: small distinct images, which succeed)
    names = ["-rf --help.png", "quote \"it\" 'n' say.png", "new\nline.png",
             "\u202egnp.right-to-left.png", "bell\x07tab\t.png", "x" * 251 + ".png"]
    for i, name in enumerate(names):
        add(name, "hostile file name", "succeeded", data=_png(40 + i, 40, (i * 40, 90, 150)))
    return cases
