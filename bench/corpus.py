"""The benchmark's corpus, built from real sources (MODELS.md) and cached in the work folder.

- short videos: espeak-ng speech (tests.support.media) over scikit-image photos, one or two
  sentences each (about 4-8 s);
- one long video: a dozen sentences repeated until the speech lasts ``long_s`` seconds (5 min by
  default), at 1 frame/s and 160x120 pixels so the file stays small (about 2 MB);
- photos: scikit-image's bundled photos with variations (scale, crop, rotation, brightness,
  JPEG quality / PNG), each a distinct file;
- PDFs: the two Debian documentation PDFs (shared-mime-info, libtasn1) when installed.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

SENTENCES = [
    "A fresh cup of coffee is waiting on the kitchen table.",
    "A rocket launches from the coast with a bright trail of fire.",
    "The orange cat sleeps all afternoon in the warm sun.",
    "An astronaut floats high above the blue planet.",
    "Please remember to water the garden every morning.",
    "The quick brown fox jumps over the lazy dog.",
    "Old coins are sorted into small boxes by their year.",
    "A horse runs across the wide green field at dawn.",
    "The moon rises slowly over the quiet harbour.",
    "Bricks and gravel are stacked beside the new wall.",
    "The train leaves the station at half past nine.",
    "Fresh bread smells wonderful early in the morning.",
]
PHOTOS = ["astronaut", "coffee", "chelsea", "rocket", "camera", "coins", "horse", "moon",
          "page", "text", "brick", "grass", "gravel", "colorwheel", "logo", "cat"]
VIDEO_PHOTOS = ["coffee", "rocket", "chelsea", "astronaut"]
PDFS = [Path("/usr/share/doc/shared-mime-info/shared-mime-info-spec.pdf"),
        Path("/usr/share/doc/libtasn1-doc/libtasn1.pdf")]


def short_videos(folder: Path, count: int) -> list[Path]:
    from tests.support.media import make_talking_video

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"clip{i:03d}.mp4"
        if not path.exists():
            sentences = [SENTENCES[i % len(SENTENCES)]]
            if i % 3 == 2:  # some clips say two things
                sentences.append(SENTENCES[(i * 5 + 1) % len(SENTENCES)])
            photos = [VIDEO_PHOTOS[(i + k) % len(VIDEO_PHOTOS)] for k in range(len(sentences))]
            tmp = path.with_suffix(".tmp.mp4")
            make_talking_video(tmp, sentences, photos)
            tmp.rename(path)
        paths.append(path)
    return paths


def long_video(folder: Path, seconds: float) -> Path:
    from tests.support.media import _AUDIO_RATE, make_talking_video, synthesize_speech

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"long_{int(seconds)}s.mp4"
    if path.exists():
        return path
    gap = 0.7
    lengths = {s: len(synthesize_speech(s)) / _AUDIO_RATE + gap for s in SENTENCES}
    sentences, total = [], 0.5
    while total < seconds:
        sentence = SENTENCES[len(sentences) % len(SENTENCES)]
        sentences.append(sentence)
        total += lengths[sentence]
    photos = [VIDEO_PHOTOS[i % len(VIDEO_PHOTOS)] for i in range(len(sentences))]
    tmp = path.with_suffix(".tmp.mp4")
    make_talking_video(tmp, sentences, photos, size=(160, 120), fps=1, gap_s=gap)
    path.with_suffix(".txt").write_text(" ".join(sentences))
    tmp.rename(path)
    return path


def photos(folder: Path, count: int) -> list[Path]:
    import numpy as np
    from PIL import Image, ImageEnhance
    from skimage import data

    folder.mkdir(parents=True, exist_ok=True)
    bases = []
    for name in PHOTOS:
        try:
            bases.append((name, Image.fromarray(getattr(data, name)()).convert("RGB")))
        except Exception:  # noqa: BLE001 - a photo that would need a download is skipped
            continue
    paths = []
    for i in range(count):
        name, base = bases[i % len(bases)]
        variant = i // len(bases)
        suffix = ".png" if variant % 4 == 3 else ".jpg"
        path = folder / f"{name}_{variant:02d}{suffix}"
        if not path.exists():
            rng = np.random.default_rng(i)
            image = base.copy()
            image.thumbnail((int(640 - 40 * (variant % 5)),) * 2)
            if variant:
                w, h = image.size
                dx, dy = int(rng.integers(0, w // 10 + 1)), int(rng.integers(0, h // 10 + 1))
                image = image.crop((dx, dy, w - dx // 2, h - dy // 2))
                image = image.rotate(float(rng.uniform(-4, 4)), expand=False)
                image = ImageEnhance.Brightness(image).enhance(float(rng.uniform(0.85, 1.15)))
            if suffix == ".jpg":
                image.save(path, quality=int(70 + 5 * (variant % 6)))
            else:
                image.save(path)
        paths.append(path)
    return paths


def pdfs(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for pdf in PDFS:
        if pdf.exists():
            target = folder / pdf.name
            if not target.exists():
                shutil.copyfile(pdf, target)
            out.append(target)
    return out


def duration_s(path: Path) -> float:
    from narra_dagster.defs.video import avio

    return float(avio.probe(path)["duration_s"])


def build(work: Path, *, videos: int, photo_count: int, long_s: float) -> dict:
    """Build (or reuse) the corpus under ``work/corpus``; return paths and durations."""
    root = work / "corpus"
    corpus = {
        "short_videos": [str(p) for p in short_videos(root / "videos", videos)],
        "long_video": str(long_video(root / "long", long_s)) if long_s else None,
        "photos": [str(p) for p in photos(root / "photos", photo_count)],
        "pdfs": [str(p) for p in pdfs(root / "pdfs")],
    }
    corpus["short_video_seconds"] = round(sum(duration_s(Path(p)) for p in corpus["short_videos"]), 2)
    corpus["long_video_seconds"] = round(duration_s(Path(corpus["long_video"])), 2) if long_s else 0.0
    corpus["long_video_bytes"] = Path(corpus["long_video"]).stat().st_size if long_s else 0
    (root / "corpus.json").write_text(json.dumps(corpus, indent=1))
    return corpus
