"""Optical character recognition: text lines with boxes and confidences.

The default engine is RapidOCR on onnxruntime with the PP-OCRv4 detection, direction and
recognition models shipped inside the ``rapidocr-onnxruntime`` wheel (PaddleOCR's models, Apache
2.0): nothing is downloaded. Engines load once per process and are shared by every resource
instance with the same settings.
"""

from __future__ import annotations

import functools
import threading
import unicodedata
from abc import ABC, abstractmethod

import dagster as dg
import numpy as np
from pydantic import BaseModel, Field, PrivateAttr


class OcrLine(BaseModel):
    """One line of text found in a picture.

    ``box`` is the axis-aligned ``[x0, y0, x1, y1]`` around ``polygon`` (the detector's four
    corners, clockwise from top-left), both in pixels of the picture given; ``confidence`` is the
    recognizer's score in [0, 1].
    """

    text: str
    confidence: float
    box: tuple[float, float, float, float]
    polygon: list[tuple[float, float]]


class OcrEngine(dg.ConfigurableResource, ABC):
    """Interface of an OCR engine."""

    @abstractmethod
    def read(self, image: np.ndarray) -> list[OcrLine]:
        """Read the text in a picture.

        Args:
            image: uint8 RGB [height, width, 3] (or grayscale [height, width]), pixels.

        Returns:
            Lines in reading order (top to bottom, then left to right); empty when there is none.

        Raises:
            ValueError: when ``image`` is not a 2-d or 3-d uint8 array.
        """


@functools.lru_cache(maxsize=4)
def _load_rapidocr(threads: int):
    from rapidocr_onnxruntime import RapidOCR

    return RapidOCR(intra_op_num_threads=threads, inter_op_num_threads=1)


_lock = threading.Lock()


class RapidOcrEngine(OcrEngine):
    """RapidOCR (PP-OCRv4 ONNX models from the ``rapidocr-onnxruntime`` wheel) on onnxruntime."""

    threads: int = Field(default=2, description="onnxruntime intra-op threads (2 cores here).")
    min_confidence: float = Field(default=0.5, description="Lines scored below this are dropped.")

    _engine = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self._load()

    def _load(self):
        if self._engine is None:
            with _lock:
                self._engine = _load_rapidocr(self.threads)
        return self._engine

    def read(self, image: np.ndarray) -> list[OcrLine]:
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim not in (2, 3):
            raise ValueError("image must be a uint8 array [height, width] or [height, width, 3]")
        if image.ndim == 3 and image.shape[2] == 3:
            image = np.ascontiguousarray(image[:, :, ::-1])  # RapidOCR expects OpenCV's BGR
        result, _ = self._load()(image)
        lines = []
        for polygon, text, score in result or []:
            text = unicodedata.normalize("NFKC", text).strip()
            if not text or float(score) < self.min_confidence:
                continue
            xs = [float(p[0]) for p in polygon]
            ys = [float(p[1]) for p in polygon]
            lines.append(OcrLine(text=text, confidence=round(float(score), 4),
                                 box=(min(xs), min(ys), max(xs), max(ys)),
                                 polygon=[(float(x), float(y)) for x, y in polygon]))
        return reading_order(lines)


def reading_order(lines: list[OcrLine]) -> list[OcrLine]:
    """Sort lines top to bottom, then left to right within a row.

    Two lines share a row when the second's vertical centre lies inside the first's box height,
    so words of one row that the detector boxed separately, a few pixels apart vertically, keep
    their left-to-right order.
    """
    rows: list[list[OcrLine]] = []
    for line in sorted(lines, key=lambda item: (item.box[1] + item.box[3]) / 2):
        centre = (line.box[1] + line.box[3]) / 2
        if rows and rows[-1][0].box[1] <= centre <= rows[-1][0].box[3]:
            rows[-1].append(line)
        else:
            rows.append([line])
    return [line for row in rows for line in sorted(row, key=lambda item: item.box[0])]
