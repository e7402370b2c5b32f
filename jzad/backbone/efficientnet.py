"""EfficientNet-Lite (Tan & Le; TensorFlow's ``efficientnet/lite``) in flax.nnx, with pure jitted entry points.

The network: a 3x3 stride-2 stem conv, seven stages of MBConv blocks (1x1 expand -> k x k depthwise ->
1x1 project, BatchNorm after each conv, ReLU6 after the first two, identity shortcut when the block keeps
stride 1 and width), a 1x1 head conv to 1280, global average pool and a linear classifier. Lite differs from
EfficientNet-B by ReLU6 instead of swish, no squeeze-excite, and fixed stem (32), head (1280) and
first/last stage depths; width multipliers round channels to multiples of 8 (TF's ``round_filters``),
depth multipliers take the ceiling of the scaled repeats.

Convolutions use TensorFlow "SAME" padding, made explicit per layer from the input size at trace time
(``same_padding``): at stride 2 the extra row and column go on the bottom/right, unlike PyTorch's symmetric
padding, so any input size (not only multiples of 32) gives TF's numbers. BatchNorm is in inference form
(running statistics, eps 1e-3).

Parameters live in a plain nested dict whose names mirror the lukemelas-style checkpoint keys
(``conv_stem``, ``bn0``, ``blocks/i/{expand_conv,bn0,depthwise_conv,bn1,project_conv,bn2}``, ``conv_head``,
``bn1``, ``fc``); ``jzad.backbone.efficientnet_port`` holds the table. The weights expect images scaled as
TF trained them, (x - 127) / 128 on 0..255: ``MEAN`` = 127/255 and ``STD`` = 128/255 for RGB in [0, 1].

Taps (names): "stem", "blocks.i" (0-based, the checkpoint's block index), "head" (after the head conv's
ReLU6, before pooling) and "strideS" for S in 2, 4, 8, 16, 32: the last block whose output has stride S,
which is what timm's ``features_only`` (and so anomalib's timm extractor) returns for this network.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jzad.backbone.nnx_params import (
    COMPUTE_DTYPES, abstract_params_of, check_compute_dtype, compute_precision, merged_module
)
from jzad.backbone.preprocess import resize_and_normalise

MEAN = (127.0 / 255.0,) * 3
STD = (128.0 / 255.0,) * 3
"""Per-channel normalisation the Lite weights were trained with, for RGB in [0, 1]: (x - MEAN) / STD."""

STRIDE_TAPS = ("stride2", "stride4", "stride8", "stride16", "stride32")


class Stage(NamedTuple):
    """One row of the block table, before scaling: repeats, kernel, first-block stride, expansion, channels."""

    repeats: int
    kernel: int
    stride: int
    expand: int
    channels: int


class Block(NamedTuple):
    """One MBConv block after scaling."""

    in_channels: int
    out_channels: int
    expand: int
    kernel: int
    stride: int

    @property
    def mid_channels(self) -> int:
        """Channels of the expanded (depthwise) stage: in_channels * expand."""
        return self.in_channels * self.expand

    @property
    def residual(self) -> bool:
        """Identity shortcut: stride 1 and unchanged width."""
        return self.stride == 1 and self.in_channels == self.out_channels


LITE_STAGES = (
    Stage(1, 3, 1, 1, 16),
    Stage(2, 3, 2, 6, 24),
    Stage(2, 5, 2, 6, 40),
    Stage(3, 3, 2, 6, 80),
    Stage(3, 5, 1, 6, 112),
    Stage(4, 5, 2, 6, 192),
    Stage(1, 3, 1, 6, 320),
)
"""EfficientNet-B0's stages (TF block strings r1_k3_s11_e1_i32_o16 ... r1_k3_s11_e6_i192_o320) without SE."""


def round_filters(channels: int, multiplier: float, divisor: int = 8) -> int:
    """TF's round_filters: channels * multiplier to the nearest multiple of divisor, at least divisor and
    never below 90% of the scaled value."""
    scaled = channels * multiplier
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * scaled:
        rounded += divisor
    return int(rounded)


@dataclass(frozen=True)
class EfficientNetConfig:
    """An EfficientNet-Lite: stage table, width/depth multipliers, fixed stem/head widths, classifier size.

    name: the variant ("efficientnet-lite0"). image_size: the resolution the weights were trained at (the
    network itself takes any size). The first and last stages keep their depth and the stem/head their
    width (the Lite rules); bn_eps is TF's 1e-3.
    """

    name: str
    width_multiplier: float = 1.0
    depth_multiplier: float = 1.0
    image_size: int = 224
    num_classes: int = 1000
    bn_eps: float = 1e-3
    stem_channels: int = 32
    head_channels: int = 1280
    stages: tuple[Stage, ...] = LITE_STAGES

    def __post_init__(self):
        for name in ("image_size", "num_classes", "stem_channels", "head_channels"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"EfficientNetConfig.{name} must be a positive int, got {value!r}")
        for name in ("width_multiplier", "depth_multiplier", "bn_eps"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"EfficientNetConfig.{name} must be a positive number, got {value!r}")
        stages = tuple(Stage(*stage) for stage in self.stages)
        if len(stages) < 2:
            raise ValueError(f"EfficientNetConfig.stages needs at least 2 stages, got {len(stages)}")
        for index, stage in enumerate(stages):
            if any(not isinstance(v, int) or v < 1 for v in stage) or stage.stride not in (1, 2):
                raise ValueError(
                    f"EfficientNetConfig.stages[{index}] must hold positive ints with stride 1 or 2, got {stage}"
                )
        object.__setattr__(self, "stages", stages)

    @property
    def blocks(self) -> tuple[Block, ...]:
        """Every MBConv block in order (the checkpoint's ``_blocks.i``), channels and repeats scaled."""
        blocks = []
        in_channels = self.stem_channels
        last = len(self.stages) - 1
        for index, stage in enumerate(self.stages):
            fixed = index in (0, last)
            repeats = stage.repeats if fixed else int(math.ceil(self.depth_multiplier * stage.repeats))
            out_channels = round_filters(stage.channels, self.width_multiplier)
            for repeat in range(repeats):
                stride = stage.stride if repeat == 0 else 1
                blocks.append(Block(in_channels, out_channels, stage.expand, stage.kernel, stride))
                in_channels = out_channels
        return tuple(blocks)

    @property
    def stride_taps(self) -> dict[str, int]:
        """"strideS" -> index of the last block whose output stride is S (timm features_only locations)."""
        blocks = self.blocks
        taps, stride = {}, 2
        for index, block in enumerate(blocks):
            stride *= block.stride
            if index + 1 == len(blocks) or blocks[index + 1].stride > 1:
                taps[f"stride{stride}"] = index
        return taps

    @property
    def tap_names(self) -> tuple[str, ...]:
        """Every tap name this config accepts."""
        blocks = tuple(f"blocks.{i}" for i in range(len(self.blocks)))
        return ("stem", *blocks, "head", *self.stride_taps)

    def tap_position(self, name: str) -> int:
        """Position of a tap in the layer sequence: 0 stem, i + 1 for blocks.i, len(blocks) + 1 head."""
        count = len(self.blocks)
        if name == "stem":
            return 0
        if name == "head":
            return count + 1
        if name in self.stride_taps:
            return self.stride_taps[name] + 1
        if isinstance(name, str) and name.startswith("blocks.") and name[7:].isdigit():
            index = int(name[7:])
            if index < count:
                return index + 1
        raise ValueError(
            f"unknown tap {name!r} for {self.name}; expected 'stem', 'blocks.0'..'blocks.{count - 1}', 'head' "
            f"or one of {tuple(self.stride_taps)}"
        )

    def tap_stride(self, name: str) -> int:
        """Output stride of a tap (its grid is the input side over it, rounded up): stem 2, head 32."""
        stride = 2
        for block in self.blocks[: self.tap_position(name)]:
            stride *= block.stride
        return stride

    def tap_channels(self, name: str) -> int:
        """Channels C of a tap's (B, h, w, C) output."""
        position = self.tap_position(name)
        if position == 0:
            return self.stem_channels
        if position == len(self.blocks) + 1:
            return self.head_channels
        return self.blocks[position - 1].out_channels

    def replace(self, **changes) -> "EfficientNetConfig":
        """A copy with some fields changed (dataclasses.replace)."""
        return dataclasses.replace(self, **changes)


CONFIGS: dict[str, EfficientNetConfig] = {
    "efficientnet-lite0": EfficientNetConfig("efficientnet-lite0", 1.0, 1.0, 224),
    "efficientnet-lite1": EfficientNetConfig("efficientnet-lite1", 1.0, 1.1, 240),
    "efficientnet-lite2": EfficientNetConfig("efficientnet-lite2", 1.1, 1.2, 260),
    "efficientnet-tiny": EfficientNetConfig(
        "efficientnet-tiny",
        image_size=64,
        num_classes=10,
        stem_channels=8,
        head_channels=48,
        stages=(
            Stage(1, 3, 1, 1, 8),
            Stage(2, 3, 2, 3, 16),
            Stage(1, 5, 2, 3, 16),
            Stage(2, 3, 2, 2, 24),
            Stage(1, 5, 1, 2, 32),
            Stage(2, 5, 2, 2, 40),
            Stage(1, 3, 1, 2, 40),
        ),
    ),
}
"""Named configs: TF's efficientnet_lite_params (width, depth, resolution) for lite0 (1.0, 1.0, 224), lite1
(1.0, 1.1, 240), lite2 (1.1, 1.2, 260), and a tiny one (every block kind, 5x5 kernels, shortcuts, all five
strides) for tests and demos."""


def variant_name(config: EfficientNetConfig) -> str | None:
    """The named variant config is ("efficientnet-lite0"), or None for custom shapes."""
    for name, known in CONFIGS.items():
        if known == config:
            return name
    return None


def check_taps(taps, config: EfficientNetConfig) -> tuple[str, ...]:
    """Taps as names: names pass through (checked), 1-based block numbers (5 -> "blocks.4", the output of the
    5th MBConv block, as the CLI's ``--taps`` gives them) are converted; ValueError names the bad tap."""
    count = len(config.blocks)
    named = []
    for tap in (taps,) if isinstance(taps, (str, int)) else taps:
        if isinstance(tap, int) and not isinstance(tap, bool):
            if not 1 <= tap <= count:
                raise ValueError(f"taps: {config.name} has MBConv blocks 1..{count}, got {tap}")
            tap = f"blocks.{tap - 1}"
        config.tap_position(tap)
        named.append(tap)
    if not named:
        raise ValueError(f"taps: expected at least one tap of {config.name}")
    return tuple(named)


def config_to_dict(config: EfficientNetConfig) -> dict:
    """Plain dict of config (for manifest.json): stages as lists of [repeats, kernel, stride, expand, channels]."""
    return {**dataclasses.asdict(config), "stages": [list(stage) for stage in config.stages]}


def config_from_dict(data: dict) -> EfficientNetConfig:
    """Inverse of ``config_to_dict``; unknown, missing or malformed fields raise ValueError."""
    try:
        return EfficientNetConfig(**{**data, "stages": tuple(Stage(*stage) for stage in data["stages"])})
    except (KeyError, TypeError) as err:
        raise ValueError(f"not a valid EfficientNetConfig dict ({err}): {data!r}") from err


def get_config(name: str | EfficientNetConfig) -> EfficientNetConfig:
    """The named config ("efficientnet-lite0", "efficientnet_lite0" and "lite0" all work); configs pass through."""
    if isinstance(name, EfficientNetConfig):
        return name
    if not isinstance(name, str):
        raise ValueError(f"config must be a name or an EfficientNetConfig, got {type(name).__name__}")
    key = name.lower().replace("_", "-")
    key = key if key.startswith("efficientnet-") else f"efficientnet-{key}"
    if key not in CONFIGS:
        raise ValueError(f"unknown EfficientNet variant {name!r}; known: {', '.join(CONFIGS)}")
    return CONFIGS[key]


# ------------------------------------------------------------------------------------------------ modules


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF "SAME" (before, after) padding along an axis of length size: the output has ceil(size / stride)
    positions, total = max((out - 1) * stride + kernel - size, 0), and the odd pixel goes after."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def depthwise_conv(x: jax.Array, kernel: jax.Array, stride: int, padding) -> jax.Array:
    """Depthwise k x k convolution as k * k shifted, strided multiply-adds.

    x (B, H, W, C), kernel (k, k, 1, C), padding ((top, bottom), (left, right)) zeros -> (B, h, w, C). The same
    numbers as ``conv_general_dilated`` with ``feature_group_count=C`` (summed in another order), 5-25x faster
    on XLA's CPU backend, whose grouped convolution is not vectorised over channels.
    """
    x = jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0)))
    size = kernel.shape[0]
    height = (x.shape[1] - size) // stride + 1
    width = (x.shape[2] - size) // stride + 1
    out = None
    for i in range(size):
        for j in range(size):
            window = x[:, i : i + (height - 1) * stride + 1 : stride, j : j + (width - 1) * stride + 1 : stride, :]
            term = window * kernel[i, j, 0]
            out = term if out is None else out + term
    return out


class SameConv(nnx.Module):
    """k x k convolution without bias, TF "SAME" padding computed from the input's (static) height and width.

    kernel: (k, k, in / groups, out) HWIO; groups = channels makes it depthwise.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int = 1, groups: int = 1):
        self.kernel = nnx.Param(jnp.zeros((kernel, kernel, in_channels // groups, out_channels)))
        self.stride = stride
        self.groups = groups

    def __call__(self, x: jax.Array) -> jax.Array:
        """x (B, H, W, C_in) -> (B, ceil(H / s), ceil(W / s), C_out)."""
        kernel = self.kernel[...]
        size = kernel.shape[0]
        padding = tuple(same_padding(n, size, self.stride) for n in x.shape[1:3])
        if self.groups > 1 and self.groups == x.shape[-1] == kernel.shape[-1]:
            return depthwise_conv(x, kernel.astype(x.dtype), self.stride, padding)
        return jax.lax.conv_general_dilated(
            x,
            kernel.astype(x.dtype),
            window_strides=(self.stride, self.stride),
            padding=padding,
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            feature_group_count=self.groups,
        )


class BatchNorm(nnx.Module):
    """Inference-mode BatchNorm over the last axis: (x - mean) / sqrt(var + eps) * scale + bias."""

    def __init__(self, channels: int, eps: float):
        self.scale = nnx.Param(jnp.ones((channels,)))
        self.bias = nnx.Param(jnp.zeros((channels,)))
        self.mean = nnx.BatchStat(jnp.zeros((channels,)))
        self.var = nnx.BatchStat(jnp.ones((channels,)))
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        inv = jax.lax.rsqrt(self.var[...] + self.eps) * self.scale[...]
        return (x - self.mean[...].astype(x.dtype)) * inv.astype(x.dtype) + self.bias[...].astype(x.dtype)


class MBConv(nnx.Module):
    """Mobile inverted bottleneck without squeeze-excite: [expand 1x1, BN, ReLU6] -> depthwise k x k, BN,
    ReLU6 -> project 1x1, BN, (+ input when stride 1 and widths match)."""

    def __init__(self, block: Block, eps: float):
        mid = block.mid_channels
        if block.expand != 1:
            self.expand_conv = SameConv(block.in_channels, mid, 1)
            self.bn0 = BatchNorm(mid, eps)
        else:
            self.expand_conv = nnx.data(None)
            self.bn0 = nnx.data(None)
        self.depthwise_conv = SameConv(mid, mid, block.kernel, block.stride, groups=mid)
        self.bn1 = BatchNorm(mid, eps)
        self.project_conv = SameConv(mid, block.out_channels, 1)
        self.bn2 = BatchNorm(block.out_channels, eps)
        self.residual = block.residual

    def __call__(self, inputs: jax.Array) -> jax.Array:
        x = inputs
        if self.expand_conv is not None:
            x = jax.nn.relu6(self.bn0(self.expand_conv(x)))
        x = jax.nn.relu6(self.bn1(self.depthwise_conv(x)))
        x = self.bn2(self.project_conv(x))
        return x + inputs if self.residual else x


class Dense(nnx.Module):
    """Linear classifier: x @ kernel + bias, kernel (in, out)."""

    def __init__(self, in_features: int, out_features: int):
        self.kernel = nnx.Param(jnp.zeros((in_features, out_features)))
        self.bias = nnx.Param(jnp.zeros((out_features,)))

    def __call__(self, x: jax.Array) -> jax.Array:
        return x @ self.kernel[...].astype(x.dtype) + self.bias[...].astype(x.dtype)


class EfficientNet(nnx.Module):
    """The whole network: stem, blocks, head conv and classifier (names as in the checkpoint, minus '_')."""

    def __init__(self, config: EfficientNetConfig):
        eps = config.bn_eps
        blocks = config.blocks
        self.conv_stem = SameConv(3, config.stem_channels, 3, stride=2)
        self.bn0 = BatchNorm(config.stem_channels, eps)
        self.blocks = nnx.List([MBConv(block, eps) for block in blocks])
        self.conv_head = SameConv(blocks[-1].out_channels, config.head_channels, 1)
        self.bn1 = BatchNorm(config.head_channels, eps)
        self.fc = Dense(config.head_channels, config.num_classes)

    def __call__(self, images: jax.Array, positions: tuple[int, ...], with_logits: bool):
        """images (B, H, W, 3) -> (outputs at the layer positions (B, h, w, C), logits (B, K) or None).

        Runs only as deep as the deepest requested position unless logits are asked for.
        """
        head = len(self.blocks) + 1
        last = head if with_logits else max(positions, default=0)
        wanted = set(positions)
        outputs = {}
        x = jax.nn.relu6(self.bn0(self.conv_stem(images)))
        if 0 in wanted:
            outputs[0] = x
        for index in range(min(last, head - 1)):
            x = self.blocks[index](x)
            if index + 1 in wanted:
                outputs[index + 1] = x
        logits = None
        if last == head:
            x = jax.nn.relu6(self.bn1(self.conv_head(x)))
            outputs[head] = x
            if with_logits:
                logits = self.fc(jnp.mean(x, axis=(1, 2)))
        return tuple(outputs[p] for p in positions), logits


# ------------------------------------------------------------------------------------------- pure entry points


def abstract_params(config: EfficientNetConfig) -> dict:
    """The params tree of config as jax.ShapeDtypeStruct leaves (float32), without allocating."""
    return abstract_params_of(EfficientNet, config)


def init_efficientnet(config: EfficientNetConfig | str, seed: int = 0) -> dict:
    """Random float32 params of config (nested dict), drawn with NumPy on the host.

    Convs: He-normal on fan-in (depthwise: k * k); classifier: uniform +-1/sqrt(fan_in). BatchNorm gets
    non-trivial values (scale in [0.5, 1.5], bias and running mean ~ N(0, 0.1^2), running var in
    [0.5, 2]) so parity tests exercise every term of the inference-mode formula.
    """
    config = get_config(config)
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        keys = tuple(getattr(k, "key", k) for k in path)
        name, shape = keys[-1], leaf.shape
        if name == "kernel" and len(shape) == 4:
            fan_in = shape[0] * shape[1] * shape[2]
            return rng.standard_normal(shape, dtype=np.float32) * np.float32(math.sqrt(2.0 / fan_in))
        if keys[-2] == "fc":
            bound = 1.0 / math.sqrt(abstract["fc"]["kernel"].shape[0])
            return rng.uniform(-bound, bound, shape).astype(np.float32)
        if name == "scale":
            return rng.uniform(0.5, 1.5, shape).astype(np.float32)
        if name == "var":
            return rng.uniform(0.5, 2.0, shape).astype(np.float32)
        return (0.1 * rng.standard_normal(shape)).astype(np.float32)

    abstract = abstract_params(config)
    return jax.device_put(jax.tree_util.tree_map_with_path(draw, abstract))


def _check_images(images):
    if not hasattr(images, "ndim"):
        images = np.asarray(images, dtype=np.float32)
    if images.ndim != 4 or images.shape[-1] != 3 or min(images.shape[:3]) < 1:
        raise ValueError(f"images must be (B, H, W, 3) NHWC with B, H, W >= 1, got {tuple(images.shape)}")
    return images


@partial(jax.jit, static_argnames=("config", "positions", "dtype", "with_logits"))
def _forward(params, images, *, config, positions, dtype, with_logits):
    with compute_precision(dtype):
        model = merged_module(params, dtype, EfficientNet, config)
        outputs, logits = model(images.astype(COMPUTE_DTYPES[dtype]), positions, with_logits)
    outputs = tuple(o.astype(jnp.float32) for o in outputs)
    return outputs, None if logits is None else logits.astype(jnp.float32)


def encode_efficientnet(
    params: dict,
    images: jax.Array,
    config: EfficientNetConfig,
    taps: Sequence[str] = ("stride8", "stride16"),
    dtype: str = "float32",
) -> tuple[jax.Array, ...]:
    """Feature maps of normalised images at the named taps, stopping after the deepest one.

    params: the tree from ``init_efficientnet`` or the port. images: (B, H, W, 3) float32 NHWC, normalised
    with MEAN/STD; any H, W (each new shape compiles once). taps: names from ``config.tap_names``
    ("stride8": (B, ceil(H/8), ceil(W/8), C8), "stride16", "blocks.i", "stem", "head", ...). dtype: compute
    dtype "float32" (highest precision) or "bfloat16"; params stay float32 and are cast inside.
    Returns a tuple of float32 (B, h, w, C) maps in taps order.
    """
    if isinstance(taps, str) or not isinstance(taps, Sequence) or not taps:
        raise ValueError(f"taps must be a non-empty sequence of tap names, got {taps!r}")
    positions = tuple(config.tap_position(name) for name in taps)
    images = _check_images(images)
    outputs, _ = _forward(params, images, config=config, positions=positions, dtype=check_compute_dtype(dtype),
                          with_logits=False)
    return outputs


def classify(params: dict, images: jax.Array, config: EfficientNetConfig, dtype: str = "float32") -> jax.Array:
    """ImageNet logits (B, num_classes) float32 of normalised (B, H, W, 3) images: the full network, global
    average pool over the head features, then the classifier."""
    images = _check_images(images)
    dtype = check_compute_dtype(dtype)
    _, logits = _forward(params, images, config=config, positions=(), dtype=dtype, with_logits=True)
    return logits


def preprocess_efficientnet(images: Sequence, size: int) -> np.ndarray:
    """PIL images or uint8 (H, W[, C]) arrays -> (N, size, size, 3) float32 normalised with MEAN/STD.

    The whole image is resized to (size, size) with PIL's bicubic filter (aspect not kept, no centre crop:
    what jzad's pipelines feed a backbone), scaled to [0, 1] and normalised as the Lite weights expect.
    """
    return resize_and_normalise(images, size, MEAN, STD, "preprocess_efficientnet")
