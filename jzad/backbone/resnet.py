"""ResNet / Wide ResNet (torchvision layout) in flax.nnx, with a pure jitted ``encode_resnet`` over a params tree.

The modules mirror torchvision's ``ResNet`` with ``Bottleneck`` blocks (v1.5: the stride sits on the 3x3
conv) so the port is a one-to-one name table (``jzad.backbone.resnet_port``): ``conv1 -> conv1``,
``layer2.0.downsample.0 -> layer2/0/downsample/0`` and so on. Stem: conv 7x7/2 + BN + ReLU + max pool 3x3/2;
stage s (1..4) has ``layers[s-1]`` blocks of ``planes = base_width * 2**(s-1)``, inner width
``int(planes * width_per_group / 64) * groups`` and ``4 * planes`` outputs. WideResNet-50-2 is layers
(3, 4, 6, 3) with width_per_group 128 (inner widths twice ResNet-50's).

Every padding is explicit and symmetric, as PyTorch pads (XLA's 'SAME' pads stride-2 convs on one side only
and gives different numbers); the max pool pads with -inf. BatchNorm runs in inference mode (running
statistics, eps 1e-5); ``constant_image_bn_update`` applies, once, the train-mode statistics pass the original
PatchCore code makes at load time (see its docstring). Params live in a plain nested dict; the jitted function rebuilds the module from a
cached graph definition at trace time, so it is pure and retraces only when a static argument or a shape
changes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jzad.backbone.nnx_params import (
    COMPUTE_DTYPES, abstract_params_of, check_compute_dtype, compute_precision, merged_module
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

STAGES = ("layer1", "layer2", "layer3", "layer4")
"""Tap names: the output of each stage's last block, after its final ReLU (strides 4, 8, 16, 32)."""

@dataclass(frozen=True)
class ResNetConfig:
    """A Bottleneck ResNet: blocks per stage, grouped-conv widths, stem width and an optional classifier.

    layers: blocks in each of the 4 stages. width_per_group: torchvision's ``width_per_group`` (64 for
    ResNet-50, 128 for WideResNet-50-2). groups: 3x3 conv groups (ResNeXt). base_width: stem output channels
    and stage 1's planes (64 in torchvision). num_classes: size of ``fc`` (None: no classifier; its tensors
    are then ignored by the port). eps: BatchNorm epsilon.
    """

    layers: tuple[int, int, int, int] = (3, 4, 6, 3)
    width_per_group: int = 64
    groups: int = 1
    base_width: int = 64
    num_classes: int | None = None
    eps: float = 1e-5

    def __post_init__(self):
        layers = tuple(self.layers) if isinstance(self.layers, (list, tuple)) else self.layers
        if not isinstance(layers, tuple) or len(layers) != 4 or any(
            not isinstance(n, int) or isinstance(n, bool) or n < 1 for n in layers
        ):
            raise ValueError(f"ResNetConfig.layers must be 4 positive ints, got {self.layers!r}")
        object.__setattr__(self, "layers", layers)
        for name in ("width_per_group", "groups", "base_width"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"ResNetConfig.{name} must be a positive int, got {value!r}")
        if self.num_classes is not None and (not isinstance(self.num_classes, int) or self.num_classes < 1):
            raise ValueError(f"ResNetConfig.num_classes must be None or a positive int, got {self.num_classes!r}")
        if not self.eps > 0:
            raise ValueError(f"ResNetConfig.eps must be > 0, got {self.eps!r}")
        for stage in range(4):
            if self.inner_width(stage) < self.groups:
                raise ValueError(f"ResNetConfig: stage {stage + 1} inner width {self.inner_width(stage)} < groups")

    def planes(self, stage: int) -> int:
        """Bottleneck planes of stage (0-based): base_width * 2**stage."""
        return self.base_width * 2**stage

    def inner_width(self, stage: int) -> int:
        """Channels of the 1x1 and 3x3 convs inside a block of stage (0-based), as torchvision computes it."""
        return int(self.planes(stage) * (self.width_per_group / 64.0)) * self.groups

    def out_channels(self, stage: int) -> int:
        """Channels a block of stage (0-based) outputs: 4 * planes."""
        return 4 * self.planes(stage)

    def replace(self, **changes) -> "ResNetConfig":
        return dataclasses.replace(self, **changes)


RESNET_CONFIGS = {
    "wide-resnet50-2": ResNetConfig(layers=(3, 4, 6, 3), width_per_group=128),
    "resnet50": ResNetConfig(layers=(3, 4, 6, 3), width_per_group=64),
    "tiny": ResNetConfig(layers=(1, 2, 1, 1), width_per_group=16, base_width=8),
}
"""Named configs; "tiny" (layer2 64 channels, layer3 128) is for tests and demos."""


RESNET_ARCHITECTURES = {
    "wide-resnet50-2": RESNET_CONFIGS["wide-resnet50-2"],
    "resnet50": RESNET_CONFIGS["resnet50"],
    "tiny-resnet": RESNET_CONFIGS["tiny"],
}
"""Architecture names as users write them (``random-<name>``, catalogue entries); "tiny-resnet" is "tiny"
under a name that cannot be confused with the tiny CLIP."""


def resnet_architecture_name(config: ResNetConfig) -> str | None:
    """The name in RESNET_ARCHITECTURES of config's shapes (classifier and eps ignored), or None."""
    shape = config.replace(num_classes=None, eps=1e-5)
    for name, known in RESNET_ARCHITECTURES.items():
        if known == shape:
            return name
    return None


def resnet_config_to_dict(config: ResNetConfig) -> dict:
    """Plain dict of config (for manifest.json)."""
    return {**dataclasses.asdict(config), "layers": list(config.layers)}


def resnet_config_from_dict(data: dict) -> ResNetConfig:
    """Inverse of ``resnet_config_to_dict``; unknown or missing fields raise ValueError."""
    try:
        return ResNetConfig(**{**data, "layers": tuple(data["layers"])})
    except (KeyError, TypeError) as err:
        raise ValueError(f"not a valid ResNetConfig dict ({err}): {data!r}") from err


def get_resnet_config(name: str | ResNetConfig) -> ResNetConfig:
    """A ResNetConfig by name ("wide-resnet50-2", "wide_resnet50_2", "resnet50", "tiny", "tiny-resnet") or as
    given."""
    if isinstance(name, ResNetConfig):
        return name
    key = str(name).strip().lower().replace("_", "-")
    if key in RESNET_ARCHITECTURES:
        return RESNET_ARCHITECTURES[key]
    if key not in RESNET_CONFIGS:
        known = sorted(set(RESNET_CONFIGS) | set(RESNET_ARCHITECTURES))
        raise ValueError(f"unknown ResNet config {name!r}; known: {known}")
    return RESNET_CONFIGS[key]


class _ShapeOnly:
    """Stands in for nnx.Rngs: modules are shape templates (zeros/ones initialisers ignore the key); values
    come from ``init_resnet`` or a port."""

    def params(self):
        return None


_RNGS = _ShapeOnly()
_ZEROS = nnx.initializers.zeros


def _conv(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> nnx.Conv:
    pad = (kernel - 1) // 2
    return nnx.Conv(
        cin,
        cout,
        kernel_size=(kernel, kernel),
        strides=(stride, stride),
        padding=((pad, pad), (pad, pad)),
        feature_group_count=groups,
        use_bias=False,
        kernel_init=_ZEROS,
        rngs=_RNGS,
    )


def _bn(features: int, eps: float) -> nnx.BatchNorm:
    return nnx.BatchNorm(features, use_running_average=True, epsilon=eps, rngs=_RNGS)


class Bottleneck(nnx.Module):
    """1x1 -> 3x3 (stride, groups) -> 1x1 (x4), each with BN; + shortcut (1x1 conv + BN when shapes change)."""

    def __init__(self, cin: int, width: int, cout: int, stride: int, groups: int, eps: float):
        self.conv1 = _conv(cin, width, 1)
        self.bn1 = _bn(width, eps)
        self.conv2 = _conv(width, width, 3, stride, groups)
        self.bn2 = _bn(width, eps)
        self.conv3 = _conv(width, cout, 1)
        self.bn3 = _bn(cout, eps)
        if stride != 1 or cin != cout:
            self.downsample = nnx.List([_conv(cin, cout, 1, stride), _bn(cout, eps)])
        else:
            self.downsample = nnx.data(None)

    def __call__(self, x: jax.Array) -> jax.Array:
        y = jax.nn.relu(self.bn1(self.conv1(x)))
        y = jax.nn.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        shortcut = x if self.downsample is None else self.downsample[1](self.downsample[0](x))
        return jax.nn.relu(y + shortcut)


def max_pool_3x3_s2(x: jax.Array) -> jax.Array:
    """PyTorch's MaxPool2d(3, stride 2, padding 1) on NHWC: -inf padding, one pixel on every side."""
    return jax.lax.reduce_window(
        x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1), ((0, 0), (1, 1), (1, 1), (0, 0))
    )


class ResNet(nnx.Module):
    """torchvision's ResNet (Bottleneck): conv1, bn1, max pool, layer1..layer4, optional fc."""

    def __init__(self, config: ResNetConfig):
        eps = config.eps
        self.conv1 = _conv(3, config.base_width, 7, 2)
        self.bn1 = _bn(config.base_width, eps)
        cin = config.base_width
        for stage, blocks in enumerate(config.layers):
            width, cout = config.inner_width(stage), config.out_channels(stage)
            stride = 1 if stage == 0 else 2
            stack = []
            for index in range(blocks):
                stack.append(Bottleneck(cin, width, cout, stride if index == 0 else 1, config.groups, eps))
                cin = cout
            setattr(self, STAGES[stage], nnx.List(stack))
        if config.num_classes is None:
            self.fc = nnx.data(None)
        else:
            self.fc = nnx.Linear(cin, config.num_classes, kernel_init=_ZEROS, rngs=_RNGS)

    def __call__(self, images: jax.Array, taps: tuple[str, ...]) -> tuple[jax.Array, ...]:
        """images (B, H, W, 3) -> the tapped maps (B, h, w, C) in taps order; stops after the deepest tap."""
        x = max_pool_3x3_s2(jax.nn.relu(self.bn1(self.conv1(images))))
        outputs = {}
        last = max((STAGES.index(t) for t in taps if t in STAGES), default=len(STAGES) - 1)
        if "logits" in taps:
            last = len(STAGES) - 1
        for stage in range(last + 1):
            for block in getattr(self, STAGES[stage]):
                x = block(x)
            outputs[STAGES[stage]] = x
        if "logits" in taps:
            outputs["logits"] = self.fc(jnp.mean(x, axis=(1, 2)))
        return tuple(outputs[t] for t in taps)


def abstract_resnet_params(config: ResNetConfig) -> dict:
    """The params tree of config with jax.ShapeDtypeStruct leaves (float32), without allocating."""
    return abstract_params_of(ResNet, config)


def init_resnet(config: ResNetConfig | str, seed: int = 0) -> dict:
    """Random float32 params of config with the real shapes (a nested dict like the port returns).

    Convs: He normal over fan-out (torchvision's init); BatchNorm: scale U(0.5, 1), bias and running mean
    N(0, 0.1^2), running var U(0.5, 1.5), so tests exercise every BN term; fc: N(0, 0.01^2), zero bias.
    Drawn with NumPy on the host.
    """
    config = get_resnet_config(config)
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = getattr(path[-1], "key", path[-1])
        parent = getattr(path[-2], "key", path[-2]) if len(path) > 1 else ""
        shape = leaf.shape
        if name == "kernel" and len(shape) == 4:
            fan_out = shape[0] * shape[1] * shape[3]
            return rng.standard_normal(shape, dtype=np.float32) * np.float32(np.sqrt(2.0 / fan_out))
        if parent == "fc":
            if name == "kernel":
                return rng.standard_normal(shape, dtype=np.float32) * np.float32(0.01)
            return np.zeros(shape, np.float32)
        if name == "scale":
            return rng.uniform(0.5, 1.0, shape).astype(np.float32)
        if name == "var":
            return rng.uniform(0.5, 1.5, shape).astype(np.float32)
        return (rng.standard_normal(shape) * 0.1).astype(np.float32)

    return jax.device_put(jax.tree_util.tree_map_with_path(draw, abstract_resnet_params(config)))


def check_resnet_taps(taps, config: ResNetConfig) -> tuple[str, ...]:
    """Taps as a tuple of distinct names from STAGES (+ "logits" when config has a classifier)."""
    if isinstance(taps, str):
        taps = (taps,)
    allowed = STAGES + (("logits",) if config.num_classes is not None else ())
    try:
        taps = tuple(taps)
    except TypeError as err:
        raise ValueError(f"taps must be a sequence of names from {allowed}, got {taps!r}") from err
    if not taps or any(t not in allowed for t in taps):
        raise ValueError(f"taps must be names from {allowed}, got {taps!r}")
    if len(set(taps)) != len(taps):
        raise ValueError(f"taps must not repeat, got {taps!r}")
    return taps


@partial(jax.jit, static_argnames=("config", "taps", "dtype"))
def _encode(params, images, *, config, taps, dtype):
    with compute_precision(dtype):
        model = merged_module(params, dtype, ResNet, config)
        outputs = model(images.astype(COMPUTE_DTYPES[dtype]), taps)
    return tuple(o.astype(jnp.float32) for o in outputs)


def encode_resnet(
    params: dict,
    images: jax.Array,
    config: ResNetConfig | str,
    taps=("layer2", "layer3"),
    dtype: str = "float32",
) -> tuple[jax.Array, ...]:
    """Tapped feature maps of ImageNet-normalised images.

    images: (B, H, W, 3) float32 NHWC, already normalised with IMAGENET_MEAN / IMAGENET_STD (any H, W).
    taps: stage names ("layer1".."layer4", "logits" with a classifier); each map is the stage's last
    block output after its ReLU, (B, h, w, C) with h = H / stride rounded as PyTorch does (224 -> layer2
    28 x 28, layer3 14 x 14). dtype: "float32" (HIGHEST matmul/conv precision) or "bfloat16" (params cast
    inside). Outputs are float32; work stops after the deepest tap.
    """
    config = get_resnet_config(config)
    taps = check_resnet_taps(taps, config)
    dtype = check_compute_dtype(dtype)
    if not hasattr(images, "ndim"):
        images = np.asarray(images, dtype=np.float32)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be (B, H, W, 3) NHWC, got shape {tuple(images.shape)}")
    if not jnp.issubdtype(images.dtype, jnp.floating):
        raise ValueError(f"images must be float (ImageNet-normalised), got dtype {images.dtype}")
    return _encode(params, images, config=config, taps=taps, dtype=dtype)


# ------------------------------------------------------------------------------ load-time BatchNorm update

BN_MOMENTUM = 0.1
"""PyTorch's BatchNorm momentum: running = (1 - momentum) * running + momentum * batch statistic."""


def _conv_nhwc(x: jax.Array, kernel: jax.Array, stride: int, groups: int = 1) -> jax.Array:
    pad = (kernel.shape[0] - 1) // 2
    return jax.lax.conv_general_dilated(x, kernel, (stride, stride), ((pad, pad), (pad, pad)),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups,
                                        precision=jax.lax.Precision.HIGHEST)


def _bn_train(x: jax.Array, bn: dict, eps: float, momentum: float) -> tuple[jax.Array, dict]:
    """PyTorch BatchNorm2d in train mode: normalise by the batch's mean and biased variance over (N, H, W);
    move the running mean towards the batch mean and the running variance towards the unbiased batch
    variance (n / (n - 1) times the biased one, n = N H W) by ``momentum``."""
    count = x.shape[0] * x.shape[1] * x.shape[2]
    mean = jnp.mean(x, axis=(0, 1, 2))
    var = jnp.mean(jnp.square(x - mean), axis=(0, 1, 2))
    y = (x - mean) * jax.lax.rsqrt(var + eps) * bn["scale"] + bn["bias"]
    unbiased = var * (count / max(count - 1, 1))
    updated = {**bn, "mean": (1.0 - momentum) * bn["mean"] + momentum * mean,
               "var": (1.0 - momentum) * bn["var"] + momentum * unbiased}
    return y, updated


def _block_train(x: jax.Array, block: dict, stride: int, config: ResNetConfig, momentum: float):
    eps, out = config.eps, dict(block)
    y, out["bn1"] = _bn_train(_conv_nhwc(x, block["conv1"]["kernel"], 1), block["bn1"], eps, momentum)
    y, out["bn2"] = _bn_train(_conv_nhwc(jax.nn.relu(y), block["conv2"]["kernel"], stride, config.groups),
                              block["bn2"], eps, momentum)
    y, out["bn3"] = _bn_train(_conv_nhwc(jax.nn.relu(y), block["conv3"]["kernel"], 1), block["bn3"], eps, momentum)
    shortcut = x
    if block.get("downsample") is not None:
        down = block["downsample"]
        shortcut, bn = _bn_train(_conv_nhwc(x, down[0]["kernel"], stride), down[1], eps, momentum)
        out["downsample"] = {**down, 1: bn}
    return jax.nn.relu(y + shortcut), out


@partial(jax.jit, static_argnames=("config", "image_size", "through", "momentum", "value"))
def _constant_image_bn_update(params, *, config, image_size, through, momentum, value):
    x = jnp.full((1, image_size, image_size, 3), value, jnp.float32)
    out = dict(params)
    y, out["bn1"] = _bn_train(_conv_nhwc(x, params["conv1"]["kernel"], 2), params["bn1"], config.eps, momentum)
    x = max_pool_3x3_s2(jax.nn.relu(y))
    for stage in range(STAGES.index(through) + 1):
        name = STAGES[stage]
        blocks = dict(params[name])
        for index in sorted(blocks):
            stride = 2 if stage > 0 and index == 0 else 1
            x, blocks[index] = _block_train(x, params[name][index], stride, config, momentum)
        out[name] = blocks
    return out


def constant_image_bn_update(params: dict, config: ResNetConfig | str, image_size: int, through: str = "layer3",
                             momentum: float = BN_MOMENTUM, value: float = 1.0) -> dict:
    """Params after the original PatchCore code's load-time BatchNorm update (a new tree; params unchanged).

    amazon-science/patchcore-inspection gets its backbone in train mode (torchvision's default, pretrained
    weights included) and ``NetworkFeatureAggregator.feature_dimensions``, called from ``PatchCore.load``,
    runs one forward of ``torch.ones(1, 3, S, S)`` (S the run's input side; fed to the network as is, no
    ImageNet normalisation) in that mode, stopping after the deepest extracted stage. Every BatchNorm it
    passes (the stem's and those of layer1 .. ``through``) thereby moves its running mean and variance
    ``momentum`` (0.1) of the way to the batch statistics of that constant image before any real image is
    embedded; later stages keep theirs. This function is that one pass: a train-mode forward of a
    (1, S, S, 3) image of ``value``, each BatchNorm normalising by its batch statistics and updating its
    running ones as PyTorch does (unbiased variance). Jitted; the checkpoint's params are not modified.
    """
    config = get_resnet_config(config)
    if through not in STAGES:
        raise ValueError(f"through must be one of {STAGES}, got {through!r}")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 32:
        raise ValueError(f"image_size must be an int >= 32 (the input side), got {image_size!r}")
    if not 0.0 < float(momentum) <= 1.0:
        raise ValueError(f"momentum must be in (0, 1], got {momentum!r}")
    return _constant_image_bn_update(params, config=config, image_size=image_size, through=through,
                                     momentum=float(momentum), value=float(value))
