"""Measure the distances behind the image chain's duplicate thresholds.

    python scripts/measure_duplicates.py

For every scikit-image picture that loads offline, compares the original with altered copies
(cropped per side, resized, re-saved as JPEG) by the classifier features' cosine distance and by
the pHash / dHash Hamming distances (imagehash), and compares every pair of different pictures
the same way. The thresholds in narra_dagster/defs/image/similarity.py (NEAR_DUPLICATE_*,
EXACT_DUPLICATE_*) come from this output: a near-duplicate threshold must sit above the altered
copies' distances and below the different pictures'. Uses the ONNX classifier under
$NARRA_HOME (exported on first use).
"""

import io
import warnings

import numpy as np
import skimage.data
from PIL import Image

from narra_dagster.defs.image.imaging import hamming, perceptual_hashes
from narra_dagster.resources import OnnxImageClassifier

NAMES = ["astronaut", "brick", "camera", "cell", "chelsea", "clock", "coffee", "coins", "colorwheel",
         "grass", "gravel", "hubble_deep_field", "immunohistochemistry", "logo", "moon", "page",
         "retina", "rocket", "text"]
VARIANTS = {  # name: (crop per side, scale, JPEG quality)
    "crop 5% + half size + q60": (0.05, 0.5, 60),
    "crop 10% + 0.3 size + q40 (beyond 'light')": (0.10, 0.3, 40),
    "crop 15% only (q90)": (0.15, 1.0, 90),
    "re-saved q95": (0.0, 1.0, 95),
}


def load(name: str) -> Image.Image | None:
    try:
        array = np.asarray(getattr(skimage.data, name)())
    except Exception:  # noqa: BLE001 - some pictures need a download; skip them
        return None
    if array.dtype != np.uint8:
        array = (255 * (array - array.min()) / (np.ptp(array) or 1)).astype(np.uint8)
    return Image.fromarray(array).convert("RGB")


def altered(picture: Image.Image, crop: float, scale: float, quality: int) -> Image.Image:
    w, h = picture.size
    out = picture.crop((int(w * crop), int(h * crop), int(w * (1 - crop)), int(h * (1 - crop))))
    out = out.resize((max(1, int(out.width * scale)), max(1, int(out.height * scale))),
                     Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    out.save(buffer, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def main() -> None:
    warnings.simplefilter("ignore")
    pictures = {n: p for n in NAMES if (p := load(n)) is not None}
    classifier = OnnxImageClassifier()

    def features(images):
        return np.array([r.features for r in classifier.recognize([np.asarray(i) for i in images])])

    names = list(pictures)
    base = features(pictures.values())
    hashes = [perceptual_hashes(p) for p in pictures.values()]
    print(f"{len(names)} pictures: {', '.join(names)}")
    for label, (crop, scale, quality) in VARIANTS.items():
        copies = [altered(p, crop, scale, quality) for p in pictures.values()]
        cos = 1 - (base * features(copies)).sum(axis=1)
        copy_hashes = [perceptual_hashes(c) for c in copies]
        ph = [hamming(a["phash"], b["phash"]) for a, b in zip(hashes, copy_hashes)]
        dh = [hamming(a["dhash"], b["dhash"]) for a, b in zip(hashes, copy_hashes)]
        worst = names[int(np.argmax(cos))]
        print(f"{label}: cosine max {cos.max():.3f} ({worst}) mean {cos.mean():.3f}; "
              f"pHash max {max(ph)} mean {np.mean(ph):.1f}; dHash max {max(dh)}")
    dist = 1 - base @ base.T
    pairs = [(dist[i, j], hamming(hashes[i]["phash"], hashes[j]["phash"]),
              hamming(hashes[i]["dhash"], hashes[j]["dhash"]), names[i], names[j])
             for i in range(len(names)) for j in range(i + 1, len(names))]
    closest = min(pairs)
    print(f"different pictures ({len(pairs)} pairs): cosine min {closest[0]:.3f} "
          f"({closest[3]} / {closest[4]}); pHash min {min(p[1] for p in pairs)}; "
          f"dHash min {min(p[2] for p in pairs)}")


if __name__ == "__main__":
    main()
