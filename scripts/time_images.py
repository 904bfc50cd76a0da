"""Per-image times of the image chain on the scikit-image photos.

    PYTHONPATH=. python scripts/time_images.py [--repeats 3] [--json]

In a temporary NARRA_HOME (nothing under ~/.narra is touched), each photo (chelsea, coffee,
rocket, astronaut, saved as JPEG quality 92) is timed stage by stage with the same functions the
assets call, models already loaded (median of the repeats, seconds): validation (Pillow
verify + full load), decode (upright RGB), recognition (EfficientNet-Lite0, one forward pass,
which also yields the embedding features), OCR (RapidOCR), embedding (pHash + dHash; the
features come from recognition), thumbnails. Then the whole chain runs once per photo through
`narra process`'s code (`operations.process_files` on a Dagster instance in the same folder) and
its wall time and per-step times are reported. The machine is shared: treat figures as noisy.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

PHOTOS = ["chelsea", "coffee", "rocket", "astronaut"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "narra"
        os.environ["NARRA_HOME"] = str(home)
        os.environ["DAGSTER_HOME"] = str(home / "dagster")

        import numpy as np
        import skimage.data
        from PIL import Image

        from narra_dagster import settings
from narra_dagster.defs.image import imaging
        from narra_dagster.resources import OnnxImageClassifier, RapidOcrEngine

        started = time.perf_counter()
        classifier = OnnxImageClassifier()
        classifier._ensure_loaded()  # exports the ONNX file into the temporary NARRA_HOME
        load = {"classifier_export_and_load_s": time.perf_counter() - started}
        started = time.perf_counter()
        ocr = RapidOcrEngine()
        ocr._load()
        load["ocr_load_s"] = time.perf_counter() - started

        files = []
        for name in PHOTOS:
            path = Path(tmp) / f"{name}.jpg"
            Image.fromarray(getattr(skimage.data, name)()).save(path, "JPEG", quality=92)
            files.append(path)

        stages: dict[str, dict[str, float]] = {}
        for path in files:
            laps: dict[str, list[float]] = {}

            def lap(stage, fn):
                s = time.perf_counter()
                value = fn()
                laps.setdefault(stage, []).append(time.perf_counter() - s)
                return value

            for _ in range(args.repeats):
                lap("validation_s", lambda: imaging.validate_image(path))
                picture = lap("decode_s", lambda: imaging.load_rgb(path))
                pixels = np.asarray(picture)
                lap("recognition_s", lambda: classifier.recognize([pixels]))
                lap("ocr_s", lambda: ocr.read(pixels))
                lap("embedding_hashes_s", lambda: imaging.perceptual_hashes(picture))
                lap("thumbnails_s", lambda: [imaging.thumbnail_webp(picture, s)
                                             for s in imaging.THUMBNAIL_SIZES.values()])
            size = "x".join(map(str, picture.size))
            stages[f"{path.name} ({size})"] = {k: round(statistics.median(v), 4) for k, v in laps.items()}

        import dagster as dg

        from narra_dagster.definitions import build_defs
        from narra_dagster.app.processing import process_files

        settings.ensure_dagster_home()
        defs = build_defs({"image_classifier": classifier, "ocr": ocr})
        chain = {}
        with dg.DagsterInstance.get() as instance:
            for result in process_files(files, instance, defs):
                chain[result.source_name] = {"status": result.status, "wall_s": result.seconds,
                                             "steps_s": result.steps}
        report = {"model_load": {k: round(v, 3) for k, v in load.items()},
                  "stages_median_s": stages, "chain": chain, "repeats": args.repeats,
                  "cpus": os.cpu_count()}
        if args.json:
            print(json.dumps(report, indent=1))
            return
        print(f"model load: {report['model_load']}")
        cols = list(next(iter(stages.values())))
        print("| photo | " + " | ".join(cols) + " | chain wall_s |")
        print("|---" * (len(cols) + 2) + "|")
        for (name, row), (_, run) in zip(stages.items(), chain.items()):
            print(f"| {name} | " + " | ".join(f"{row[c]:.3f}" for c in cols) + f" | {run['wall_s']:.2f} |")
        for name, run in chain.items():
            print(f"{name}: {run['status']}, steps {json.dumps(run['steps_s'])}")


if __name__ == "__main__":
    sys.exit(main())
