"""Content identity and file-type sniffing for uploads.

A partition key is the first 16 hex digits (64 bits) of the file's SHA-256, so the same bytes
always map to the same partition whatever the file is called. At 64 bits, a collision between two
different files is expected only after about 4 billion uploads (the birthday bound, 2**32).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Literal

MediaKind = Literal["video", "image", "document"]

KEY_LENGTH = 16
KEY_PATTERN = re.compile(r"^[0-9a-f]{16}$")
_CHUNK = 1 << 20

# Extension fallback, used only when the bytes say nothing we recognize (an empty file, a text
# file renamed .mp4): the item then enters its kind's chain and fails validation with a clear
# error, instead of disappearing into the rejected folder.
_EXTENSION_KINDS: dict[str, MediaKind] = {
    **dict.fromkeys(
        [".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".flv",
         ".wav", ".mp3", ".m4a", ".flac", ".ogg", ".opus"],
        "video",
    ),
    **dict.fromkeys(
        [".jpg", ".jpeg", ".png", ".gif", ".webp", ".tif", ".tiff", ".bmp", ".heic"], "image"
    ),
    ".pdf": "document",
}


def file_sha256(path: Path) -> str:
    """Return the hex SHA-256 of a file's bytes, read in 1 MiB blocks.

    Raises:
        OSError: when the file cannot be read.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def partition_key_for(path: Path) -> str:
    """Return the partition key of a file: the first 16 hex digits of its SHA-256."""
    return file_sha256(path)[:KEY_LENGTH]


def is_partition_key(value: str) -> bool:
    """True when ``value`` has the shape of a partition key (16 lowercase hex digits)."""
    return bool(KEY_PATTERN.match(value))


def sniff_kind(head: bytes) -> MediaKind | None:
    """Guess the media kind from a file's first bytes (at least 16 are needed, 64 are plenty).

    Recognizes ISO-BMFF (MP4, MOV, M4A, HEIC), Matroska/WebM, AVI, WAV, MPEG-TS, MPEG-PS, FLV,
    Ogg, FLAC, MP3, JPEG, PNG, GIF, WebP, TIFF, BMP and PDF from their magic numbers.

    Returns:
        ``"video"`` (any audio/video container), ``"image"``, ``"document"`` or ``None``.
    """
    if len(head) < 4:
        return None
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        return "image" if brand in (b"heic", b"heix", b"mif1", b"msf1", b"avif") else "video"
    if head.startswith(b"%PDF-"):
        return "document"
    if head.startswith((b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM",
                        b"II*\x00", b"MM\x00*")):
        return "image"
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "image"
    if head.startswith(b"RIFF") and head[8:12] in (b"AVI ", b"WAVE"):
        return "video"
    if head.startswith((b"\x1a\x45\xdf\xa3", b"OggS", b"fLaC", b"FLV", b"ID3", b"\x00\x00\x01\xba")):
        return "video"
    if head[0] == 0x47 and len(head) > 188 and head[188] == 0x47:
        return "video"
    if head[0] == 0xFF and (head[1] & 0xE0) == 0xE0:  # MPEG audio frame sync
        return "video"
    return None


def kind_for_extension(name: str) -> MediaKind | None:
    """The kind a file name's extension claims (``"clip.MP4"`` -> ``"video"``), or ``None``."""
    return _EXTENSION_KINDS.get(Path(name).suffix.lower())


def kind_for_file(path: Path) -> MediaKind | None:
    """Return the media kind of a file: from its bytes, else from its extension, else ``None``.

    Raises:
        OSError: when the file cannot be read.
    """
    with open(path, "rb") as fh:
        head = fh.read(512)
    return sniff_kind(head) or _EXTENSION_KINDS.get(path.suffix.lower())
