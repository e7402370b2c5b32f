"""Plain PyTorch EfficientNet-Lite with the lukemelas / EfficientNet-Lite-PyTorch state-dict names; the parity
oracle for ``jzad.backbone.efficientnet``.

Written from TensorFlow's reference (tensorflow/tpu ``efficientnet/lite``): the network is described by TF's
block strings (``r2_k3_s22_e6_i16_o24``: repeats, kernel, stride, expansion, in/out filters), scaled with
TF's ``round_filters`` (multiple of 8, never below 90% of the scaled width) and ``round_repeats`` (ceil).
The Lite rules: ReLU6 everywhere, no squeeze-excite, stem (32) and head (1280) not width-scaled, and the
first and last stages not depth-scaled. Convolutions use TF "SAME" padding computed from the input size
on every call (``tf_same_pad``): total = max((ceil(n / s) - 1) s + k - n, 0), the smaller half before, the
larger after (bottom/right). BatchNorm runs in eval mode with eps 1e-3.

Module names match the checkpoint keys exactly (``_conv_stem``, ``_bn0``, ``_blocks.N._expand_conv`` ...,
``_conv_head``, ``_bn1``, ``_fc``), so the packaged ``efficientnet-lite0-*.pth`` loads with strict=True.
``forward_layers`` returns every layer output by name: "stem", "blocks.N", "head", "logits", plus the
timm ``features_only`` taps "strideS" (the last block before the stride changes).
"""

from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F
from torch import nn

LITE_BLOCK_STRINGS = (
    "r1_k3_s11_e1_i32_o16",
    "r2_k3_s22_e6_i16_o24",
    "r2_k5_s22_e6_i24_o40",
    "r3_k3_s22_e6_i40_o80",
    "r3_k5_s11_e6_i80_o112",
    "r4_k5_s22_e6_i112_o192",
    "r1_k3_s11_e6_i192_o320",
)
"""EfficientNet-B0's stages without the ``se0.25`` suffix: the Lite family's base network."""

LITE_PARAMS = {
    "efficientnet-lite0": (1.0, 1.0, 224),
    "efficientnet-lite1": (1.0, 1.1, 240),
    "efficientnet-lite2": (1.1, 1.2, 260),
}
"""name -> (width coefficient, depth coefficient, resolution), from TF's ``efficientnet_lite_params``."""

BN_EPS = 1e-3


def decode_block_string(text: str) -> dict:
    """TF block string -> {"repeats", "kernel", "stride", "expand", "in", "out"}."""
    fields = {}
    for part in text.split("_"):
        match = re.fullmatch(r"([a-z]+)(\d+)", part)
        if match is None:
            raise ValueError(f"bad block string part {part!r} in {text!r}")
        fields[match.group(1)] = match.group(2)
    stride = fields["s"]
    if len(stride) != 2 or stride[0] != stride[1]:
        raise ValueError(f"only square strides are supported, got s{stride} in {text!r}")
    return dict(
        repeats=int(fields["r"]), kernel=int(fields["k"]), stride=int(stride[0]),
        expand=int(fields["e"]), inp=int(fields["i"]), out=int(fields["o"]),
    )


def round_filters(filters: int, width: float, divisor: int = 8) -> int:
    """TF's round_filters: scale, round to the nearest multiple of divisor, never below 90% of the scaled value."""
    scaled = filters * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * scaled:
        rounded += divisor
    return int(rounded)


def tf_same_pad(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """(before, after) padding of TF "SAME" along one axis of length size."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class SameConv2d(nn.Conv2d):
    """nn.Conv2d (no bias) that pads its input the TF "SAME" way for the input's own size."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1):
        super().__init__(cin, cout, kernel, stride=stride, padding=0, groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, s = self.kernel_size[0], self.stride[0]
        top, bottom = tf_same_pad(x.shape[2], k, s)
        left, right = tf_same_pad(x.shape[3], k, s)
        return super().forward(F.pad(x, (left, right, top, bottom)))


class MBConvBlock(nn.Module):
    """Inverted residual: [1x1 expand, BN, ReLU6] -> k x k depthwise, BN, ReLU6 -> 1x1 project, BN (+ input)."""

    def __init__(self, cin: int, cout: int, expand: int, kernel: int, stride: int, eps: float):
        super().__init__()
        mid = cin * expand
        self.expand = expand
        if expand != 1:
            self._expand_conv = SameConv2d(cin, mid, 1)
            self._bn0 = nn.BatchNorm2d(mid, eps=eps)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride, groups=mid)
        self._bn1 = nn.BatchNorm2d(mid, eps=eps)
        self._project_conv = SameConv2d(mid, cout, 1)
        self._bn2 = nn.BatchNorm2d(cout, eps=eps)
        self.residual = stride == 1 and cin == cout

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        x = inputs
        if self.expand != 1:
            x = F.relu6(self._bn0(self._expand_conv(x)))
        x = F.relu6(self._bn1(self._depthwise_conv(x)))
        x = self._bn2(self._project_conv(x))
        return x + inputs if self.residual else x


class EfficientNetLiteReference(nn.Module):
    """EfficientNet-Lite built from TF block strings and TF's scaling rules (see the module docstring)."""

    def __init__(
        self,
        block_strings=LITE_BLOCK_STRINGS,
        width: float = 1.0,
        depth: float = 1.0,
        stem: int = 32,
        head: int = 1280,
        num_classes: int = 1000,
        eps: float = BN_EPS,
    ):
        super().__init__()
        stages = [decode_block_string(s) for s in block_strings]
        self._conv_stem = SameConv2d(3, stem, 3, 2)
        self._bn0 = nn.BatchNorm2d(stem, eps=eps)
        blocks, strides = [], []
        cin = stem
        for index, stage in enumerate(stages):
            fixed = index in (0, len(stages) - 1)
            repeats = stage["repeats"] if fixed else int(math.ceil(depth * stage["repeats"]))
            cout = round_filters(stage["out"], width)
            for r in range(repeats):
                stride = stage["stride"] if r == 0 else 1
                blocks.append(MBConvBlock(cin, cout, stage["expand"], stage["kernel"], stride, eps))
                strides.append(stride)
                cin = cout
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(cin, head, 1)
        self._bn1 = nn.BatchNorm2d(head, eps=eps)
        self._fc = nn.Linear(head, num_classes)
        self.stride_taps = self._stride_taps(strides)

    @staticmethod
    def _stride_taps(strides: list[int]) -> dict[str, int]:
        """timm features_only locations: "strideS" -> the last block whose output stride is S."""
        taps, total = {}, 2
        for index, stride in enumerate(strides):
            total *= stride
            following = strides[index + 1] if index + 1 < len(strides) else 2
            if following > 1:
                taps[f"stride{total}"] = index
        return taps

    @classmethod
    def lite(cls, name: str, num_classes: int = 1000) -> "EfficientNetLiteReference":
        """One of LITE_PARAMS by name."""
        width, depth, _ = LITE_PARAMS[name]
        return cls(LITE_BLOCK_STRINGS, width, depth, num_classes=num_classes)

    def forward_layers(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """images (B, 3, H, W) normalised -> {"stem", "blocks.N", "strideS", "head": (B, C, h, w); "logits"}."""
        out = {}
        x = F.relu6(self._bn0(self._conv_stem(images)))
        out["stem"] = x
        for index, block in enumerate(self._blocks):
            x = block(x)
            out[f"blocks.{index}"] = x
        for name, index in self.stride_taps.items():
            out[name] = out[f"blocks.{index}"]
        x = F.relu6(self._bn1(self._conv_head(x)))
        out["head"] = x
        out["logits"] = self._fc(x.mean(dim=(2, 3)))
        return out

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W) normalised -> logits (B, num_classes)."""
        return self.forward_layers(images)["logits"]
