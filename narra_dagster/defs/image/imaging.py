"""Image helpers for the image chain: validation, decoding, EXIF, thumbnails, perceptual hashes
and the coarse catalog categories. Pillow does the decoding (HEIC through pillow-heif), imagehash
the perceptual hashes; nothing here loads a model.
"""

from __future__ import annotations

import datetime as dt
import io
import struct
import warnings
import zlib
from pathlib import Path
from typing import Any

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from narra_dagster.core import limits
from narra_dagster.core.errors import BadInputError

try:  # HEIC/HEIF from phones; pillow-heif is a dependency, but keep Pillow usable without it.
    import pillow_heif

    pillow_heif.register_heif_opener()
    HEIF_AVAILABLE = True
except ImportError:  # pragma: no cover - the package is installed with narra
    HEIF_AVAILABLE = False

# Pillow's format names of what the chain accepts (pillow-heif reports HEIC files as "HEIF").
ALLOWED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "GIF", "TIFF", "BMP", "HEIF"})
# The byte and frame limits are budgets (narra_dagster.core.limits: NARRA_IMAGE_MAX_BYTES, 100 MiB
# by default, far above any camera JPEG or phone HEIC; NARRA_IMAGE_MAX_FRAMES, 2,000).
# The pixel limit is Pillow's own ``Image.MAX_IMAGE_PIXELS`` (89,478,485 by default, about
# 9,459 x 9,459), read at call time so a deployment can raise it; past it Pillow warns, past
# twice it refuses, and both are a ``decompression_bomb`` here.

THUMBNAIL_SIZES = {"small": 128, "medium": 512}  # longest side, pixels
THUMBNAIL_QUALITY = 80  # WebP quality

_EXIF_DATE = "%Y:%m:%d %H:%M:%S"

EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".webp", ".tif", ".tiff", ".bmp", ".heic", ".heif",
              ".avif")
# ISO-BMFF brands of still images; every other ``ftyp`` brand is an audio or video container.
_STILL_BRANDS = (b"heic", b"heix", b"mif1", b"msf1", b"avif")


def recognise(head: bytes) -> bool:
    """True when a file's first bytes are an image: JPEG, PNG, GIF, BMP, TIFF (both byte
    orders), WebP, or HEIC/HEIF/AVIF (ISO-BMFF with a still-image brand), by magic number."""
    if head[4:8] == b"ftyp":
        return head[8:12] in _STILL_BRANDS
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return True
    return head.startswith((b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM",
                            b"II*\x00", b"MM\x00*"))


def _bomb(size: tuple[int, int] | None, limit: int | None) -> BadInputError:
    declared = f"{size[0]:,} x {size[1]:,} pixels, which is" if size else "more pixels than"
    return BadInputError(
        f"the image declares {declared} over the {limit:,} pixel limit (a decompression bomb "
        "or an image too large to process)", code="decompression_bomb")


def _open(path: Path) -> Image.Image:
    """Open lazily, with Pillow's decompression-bomb warning raised as an error."""
    try:
        image = Image.open(path)
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise _bomb(None, Image.MAX_IMAGE_PIXELS) from exc
    except UnidentifiedImageError as exc:
        raise BadInputError("the file is not an image Pillow can read", code="not_image") from exc
    except (OSError, SyntaxError, ValueError, struct.error, EOFError, zlib.error) as exc:
        raise BadInputError(f"the image header is damaged: {exc}", code="corrupt_image") from exc
    limit = Image.MAX_IMAGE_PIXELS
    if limit and image.width * image.height > limit:  # formats whose plugins skip the check
        image.close()
        raise _bomb(image.size, limit)
    return image


def validate_image(path: Path) -> dict[str, Any]:
    """Check that a file is a whole image of an accepted format and size.

    Steps: byte-size limit (``NARRA_IMAGE_MAX_BYTES``); ``Image.open`` with Pillow's
    ``MAX_IMAGE_PIXELS`` enforced (its DecompressionBombWarning turned into an error); the format
    allow-list (:data:`ALLOWED_FORMATS`); ``verify()`` (structure and checksums); a full ``load()``
    of the first frame on a fresh handle (truncated data); frames counted up to
    ``NARRA_IMAGE_MAX_FRAMES`` (an animation of 100,000 frames is refused, not walked through);
    EXIF orientation applied to report the upright size.

    Returns:
        ``{"format", "mode", "width", "height" (pixels, upright), "stored_width",
        "stored_height" (as encoded), "frames", "exif_orientation", "size_bytes"}``.

    Raises:
        BadInputError: ``empty_file``, ``too_large`` (bytes or frames), ``not_image``,
            ``unsupported_format``, ``decompression_bomb``, ``corrupt_image``.
    """
    budget = limits.current()
    size = path.stat().st_size
    if size == 0:
        raise BadInputError("the file is empty", code="empty_file")
    if size > budget.image_max_bytes:
        raise BadInputError(f"the image is {size} bytes, over the {budget.image_max_bytes}-byte "
                            "limit (NARRA_IMAGE_MAX_BYTES)", code="too_large")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        image = _open(path)
        with image:
            fmt = image.format or "unknown"
            if fmt not in ALLOWED_FORMATS:
                raise BadInputError(
                    f"{fmt} images are not accepted (accepted: {', '.join(sorted(ALLOWED_FORMATS))})",
                    code="unsupported_format")
            try:
                image.verify()
            except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
                raise _bomb(image.size, Image.MAX_IMAGE_PIXELS) from exc
            except Exception as exc:  # noqa: BLE001 - Pillow plugins raise many types here
                raise BadInputError(f"the image data is damaged: {exc}", code="corrupt_image") from exc
        image = _open(path)  # verify() leaves the handle unusable; load from a fresh one
        with image:
            try:
                image.load()
            except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
                raise _bomb(image.size, Image.MAX_IMAGE_PIXELS) from exc
            except Exception as exc:  # noqa: BLE001
                raise BadInputError(f"the image data is damaged or truncated: {exc}",
                                    code="corrupt_image") from exc
            frames = count_frames(image, budget.image_max_frames)
            orientation = int(image.getexif().get(ExifTags.Base.Orientation, 1) or 1)
            width, height = image.size
            upright = (height, width) if orientation in (5, 6, 7, 8) else (width, height)
            return {
                "format": fmt, "mode": image.mode, "width": upright[0], "height": upright[1],
                "stored_width": width, "stored_height": height,
                "frames": frames,
                "exif_orientation": orientation, "size_bytes": size,
            }


def count_frames(image: Image.Image, max_frames: int) -> int:
    """Frames of a (possibly animated) image, counted by seeking one at a time, then back to
    the first. Pillow's ``n_frames`` walks every frame whatever their number; this stops past
    ``max_frames``.

    Raises:
        BadInputError: ``too_large`` past ``max_frames``; ``corrupt_image`` when a frame cannot
            be reached.
    """
    if not getattr(image, "is_animated", False):
        return 1
    count = 1
    try:
        while True:
            try:
                image.seek(count)
            except EOFError:
                break
            count += 1
            if count > max_frames:
                raise BadInputError(
                    f"the image has more than {max_frames} frames (NARRA_IMAGE_MAX_FRAMES)",
                    code="too_large")
        image.seek(0)
    except BadInputError:
        raise
    except Exception as exc:  # noqa: BLE001 - Pillow plugins raise many types here
        raise BadInputError(f"frame {count + 1} of the image is damaged: {exc}",
                            code="corrupt_image") from exc
    return count


def load_rgb(path: Path) -> Image.Image:
    """Decode an already validated image to upright 8-bit RGB (first frame; EXIF orientation
    applied; transparency composited on white; 16-bit and float pixels scaled to 8 bits).

    Raises:
        BadInputError: as :func:`validate_image` when the file does not decode.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        image = _open(path)
        try:
            image.load()
        except Exception as exc:  # noqa: BLE001
            raise BadInputError(f"the image data is damaged or truncated: {exc}",
                                code="corrupt_image") from exc
    image = ImageOps.exif_transpose(image) or image
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        pixels = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") else max(float(pixels.max()), 1.0)
        image = Image.fromarray(np.clip(pixels / top * 255.0, 0, 255).astype(np.uint8), "L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(canvas, rgba)
    return image.convert("RGB")


def _ratio(value: Any) -> float:
    if isinstance(value, tuple) and len(value) == 2:
        return float(value[0]) / float(value[1]) if value[1] else 0.0
    return float(value)


def _dms(value: Any, ref: Any) -> float | None:
    """EXIF degrees/minutes/seconds rationals + N/S/E/W reference -> signed decimal degrees."""
    try:
        deg, minutes, seconds = (_ratio(v) for v in value)
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    decimal = deg + minutes / 60.0 + seconds / 3600.0
    ref = ref.decode() if isinstance(ref, bytes) else str(ref or "")
    return round(-decimal if ref.strip().upper() in ("S", "W") else decimal, 7)


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    value = str(value).replace("\x00", "").strip()
    return value or None


def _capture_time(raw: str | None, offset: str | None) -> str | None:
    if not raw:
        return None
    try:
        when = dt.datetime.strptime(raw.strip()[:19], _EXIF_DATE)
    except ValueError:
        return None
    iso = when.isoformat()
    if offset and len(offset) == 6 and offset[0] in "+-":
        iso += offset
    return iso


def read_exif(path: Path) -> dict[str, Any]:
    """Camera, lens, capture time and GPS position from a picture's EXIF, where present.

    Returns:
        ``{"camera_make", "camera_model", "lens", "captured_at" (ISO 8601, local time of the
        camera plus its offset when recorded), "gps": {"latitude", "longitude" (decimal degrees,
        south and west negative), "altitude_m"} or None, "software"}``; absent fields are None.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with _open(path) as image:
            exif = image.getexif()
    base = ExifTags.Base
    sub = exif.get_ifd(ExifTags.IFD.Exif) if exif else {}
    gps_ifd = exif.get_ifd(ExifTags.IFD.GPSInfo) if exif else {}
    lens = _text(sub.get(base.LensModel))
    lens_make = _text(sub.get(base.LensMake))
    if lens and lens_make and not lens.startswith(lens_make):
        lens = f"{lens_make} {lens}"
    gps = None
    if gps_ifd:
        lat = _dms(gps_ifd.get(ExifTags.GPS.GPSLatitude), gps_ifd.get(ExifTags.GPS.GPSLatitudeRef))
        lon = _dms(gps_ifd.get(ExifTags.GPS.GPSLongitude), gps_ifd.get(ExifTags.GPS.GPSLongitudeRef))
        if lat is not None and lon is not None:
            altitude = gps_ifd.get(ExifTags.GPS.GPSAltitude)
            gps = {"latitude": lat, "longitude": lon,
                   "altitude_m": round(_ratio(altitude), 2) if altitude is not None else None}
    raw_time = _text(sub.get(base.DateTimeOriginal)) or _text(exif.get(base.DateTime))
    return {
        "camera_make": _text(exif.get(base.Make)),
        "camera_model": _text(exif.get(base.Model)),
        "lens": lens or lens_make,
        "captured_at": _capture_time(raw_time, _text(sub.get(base.OffsetTimeOriginal))),
        "gps": gps,
        "software": _text(exif.get(base.Software)),
    }


def thumbnail_webp(image: Image.Image, max_side: int) -> tuple[bytes, tuple[int, int]]:
    """A WebP thumbnail whose longest side is ``max_side`` pixels (never enlarged), aspect kept,
    Lanczos-resampled, quality :data:`THUMBNAIL_QUALITY`. Returns ``(bytes, (width, height))``."""
    thumb = image.copy()
    thumb.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    thumb.save(buffer, "WEBP", quality=THUMBNAIL_QUALITY, method=4)
    return buffer.getvalue(), thumb.size


def perceptual_hashes(image: Image.Image) -> dict[str, str]:
    """64-bit pHash (DCT) and dHash (gradient) of a picture, as 16 hex digits each (imagehash)."""
    import imagehash

    return {"phash": str(imagehash.phash(image)), "dhash": str(imagehash.dhash(image))}


def hamming(a: str, b: str) -> int:
    """Bits that differ between two hex hashes of equal length."""
    return int(bin(int(a, 16) ^ int(b, 16)).count("1"))


# Coarse categories of the catalog, by ImageNet-1k class index (the standard ILSVRC 2012 order,
# as in narra_dagster/data/imagenet_classes.txt): 0-397 are animals (fish, birds, reptiles,
# amphibians, invertebrates, mammals), 924-969 food and drink, 970-980 landscapes (geological
# formations), 981-983 people, 984-998 plants and fungi; vehicles and craft are scattered among
# the objects, so they are listed. Everything else is an "object".
CATEGORY_RANGES: list[tuple[range, str]] = [
    (range(0, 398), "animal"),
    (range(924, 970), "food"),
    (range(970, 981), "landscape"),
    (range(981, 984), "person"),
    (range(984, 999), "plant"),
]
VEHICLE_CLASSES = frozenset({
    403, 404, 405, 407, 408, 436, 444, 466, 468, 472, 484, 510, 511, 554, 555, 561, 565, 569, 573,
    575, 576, 586, 595, 603, 609, 612, 625, 627, 628, 654, 656, 657, 661, 665, 670, 671, 675, 705,
    717, 724, 734, 744, 751, 757, 779, 780, 803, 812, 814, 817, 820, 829, 833, 847, 864, 867, 870,
    871, 874, 880, 895, 908, 913, 914,
})


# Every category an image can be filed under (category_for_class's answers).
CATEGORIES = ("animal", "food", "landscape", "person", "plant", "vehicle", "object", "other")


def category_for_class(index: int | None) -> str:
    """Coarse category of an ImageNet-1k class index; ``"other"`` for None (a label that is
    not an ImageNet class, e.g. from a user's own classifier)."""
    if index is None or not 0 <= index < 1000:
        return "other"
    if index in VEHICLE_CLASSES:
        return "vehicle"
    for span, name in CATEGORY_RANGES:
        if index in span:
            return name
    return "object"
