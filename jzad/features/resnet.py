"""The ResNet family of backbones (torchvision layout: WideResNet-50-2, ResNet-50, a tiny test network) for the
methods: load by name or path at a method's run preset; ImageNet normalisation inside the jitted forward; the
tapped stages as ``Features.layers``.

Names: "random-wide-resnet50-2", "random-resnet50", "random-tiny-resnet" (random weights of the real shapes,
drawn from seed), a ported name ("wide-resnet50-2" after ``python -m jzad.weights port FILE --name
wide-resnet50-2``), a ported folder, or a torchvision / timm state dict file (ported in memory). Taps are stage
names ("layer1".."layer4"; 1-based stage numbers, as the CLI's ``--taps 2,3`` gives them, mean the same).
Run settings resolve as CLIP's do: explicit arguments, the settings recorded at port time, the method's preset,
then 224 px with taps layer2 and layer3 (PatchCore's).
"""

from __future__ import annotations

import dataclasses
import weakref
from functools import partial
from pathlib import Path

import jax

from jzad.backbone.resnet import (
    COMPUTE_DTYPES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    RESNET_ARCHITECTURES,
    STAGES,
    check_resnet_taps,
    constant_image_bn_update,
    encode_resnet,
    init_resnet,
    resnet_architecture_name,
)
from jzad.features.backbone import Backbone, normalize_pixels
from jzad.features.types import BackboneRun, Features, first_given
from jzad.weights import open_checkpoint
from jzad.weights.families import RESNET_STRIDE

RANDOM_PREFIX = "random-"
DEFAULT_SIZE = 224
DEFAULT_TAPS = ("layer2", "layer3")
STRIDES = {"layer1": 4, "layer2": 8, "layer3": 16, "layer4": 32}
"""Output stride of each stage (its grid is the input side divided by it)."""


def knows_architecture(name: str) -> bool:
    """Whether ``random-<name>`` names a ResNet of this family."""
    return name in RESNET_ARCHITECTURES


def stage_taps(taps, config) -> tuple[str, ...]:
    """Taps as stage names: names pass through, 1-based stage numbers (2 -> "layer2") are converted."""
    if taps is None:
        return None
    named = []
    for tap in (taps,) if isinstance(taps, (str, int)) else taps:
        if isinstance(tap, int) and not isinstance(tap, bool):
            if not 1 <= tap <= len(STAGES):
                raise ValueError(f"taps: ResNet stages are 1..{len(STAGES)} ({', '.join(STAGES)}), got {tap}")
            tap = STAGES[tap - 1]
        named.append(tap)
    return check_resnet_taps(tuple(named), config)


@partial(jax.jit, static_argnames=("config", "taps", "dtype"))
def _resnet_features(params, images, *, config, taps, dtype):
    pixels = normalize_pixels(images, IMAGENET_MEAN, IMAGENET_STD)
    return Features(tuple(encode_resnet(params, pixels, config, taps, dtype)))


def resnet_backbone(params, config, name: str, origin: str, image_size: int, taps, dtype: str) -> Backbone:
    """A ``Backbone`` over ResNet params: uint8 (B, S, S, 3) -> Features(layers = the taps' (B, S/stride,
    S/stride, C) maps); it has no image embedding and no text tower."""

    def forward(params, images, embedding):
        if embedding:
            raise ValueError(f"{name}: a ResNet backbone has no image embedding")
        return _resnet_features(params, images, config=config, taps=taps, dtype=dtype)

    grids = {t: image_size // STRIDES[t] for t in taps}
    channels = {t: config.out_channels(STAGES.index(t)) for t in taps}
    info = {"family": "resnet", "blocks": list(config.layers), "width_per_group": config.width_per_group,
            "grid": grids, "channels": channels}
    patch = max(STRIDES[t] for t in taps)
    return Backbone("resnet", name, resnet_architecture_name(config), origin, image_size, patch, taps, dtype,
                    params, forward, info, None, config)


def load_resnet_backbone(
    name: str | Path,
    run: BackboneRun = BackboneRun(),
    image_size: int | None = None,
    taps=None,
    activation: str | None = None,
    dtype: str = "float32",
    seed: int = 0,
    weights_dir: str | Path | None = None,
    with_text: bool = False,
) -> Backbone:
    """A ResNet Backbone by name or path (see the module docstring); explicit arguments override the settings
    recorded at port time, which override the method's preset ``run``."""
    text = str(name)
    if with_text:
        raise ValueError(f"{text}: a ResNet has no text tower, and the method embeds text prompts")
    if activation is not None:
        raise ValueError(f"activation {activation}: applies to ViT backbones, and {text} is a ResNet")
    if dtype not in COMPUTE_DTYPES:
        raise ValueError(f"dtype must be one of {tuple(COMPUTE_DTYPES)}, got {dtype!r}")
    recorded_size = recorded_taps = None
    if text.startswith(RANDOM_PREFIX):
        arch = text[len(RANDOM_PREFIX):]
        if not knows_architecture(arch):
            raise ValueError(f"unknown ResNet architecture {arch!r}; known: {', '.join(RESNET_ARCHITECTURES)}")
        config = RESNET_ARCHITECTURES[arch]
        params, origin = init_resnet(config, seed), f"random:{arch}:{seed}"
    else:
        opened = open_checkpoint(name, weights_dir_override=weights_dir)
        if opened.family != "resnet":
            raise ValueError(f"{text} is a {opened.family} checkpoint, not a ResNet")
        config, params, origin = opened.config, jax.device_put(opened.params), opened.origin
        recorded_size, recorded_taps = opened.image_size, opened.taps
    size = first_given(image_size, recorded_size, run.image_size, DEFAULT_SIZE)
    if isinstance(size, bool) or not isinstance(size, int) or size < RESNET_STRIDE or size % RESNET_STRIDE:
        what = "image_size" if image_size is not None else "image size"
        raise ValueError(f"{what} {size!r}: a ResNet input side must be a positive multiple of {RESNET_STRIDE}")
    chosen = stage_taps(first_given(taps, recorded_taps, run.taps, DEFAULT_TAPS), config)
    return resnet_backbone(params, config, text, origin, size, chosen, dtype)


_BN_UPDATED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def with_load_time_bn_update(backbone: Backbone) -> Backbone:
    """The ResNet ``backbone`` as the original PatchCore code runs it: its BatchNorm running statistics after
    the load-time train-mode pass of a constant image at the backbone's input side
    (``jzad.backbone.resnet.constant_image_bn_update``; the stem and the stages up to the deepest tap, as the
    original's forward stops there). A new Backbone with new params, computed once per loaded backbone
    (cached by identity for as long as it lives) and never written into it, so other methods using the same
    ResNet keep the checkpoint's statistics."""
    if backbone.family != "resnet":
        raise ValueError(f"{backbone.name}: the load-time BatchNorm update applies to ResNet backbones, "
                         f"got a {backbone.family} backbone")
    updated = _BN_UPDATED.get(backbone)
    if updated is None:
        stages = [t for t in backbone.taps if t in STRIDES]
        through = "layer4" if "logits" in backbone.taps or not stages else max(stages, key=STRIDES.get)
        with jax.ensure_compile_time_eval():  # concrete even when first asked for inside a traced extractor
            params = constant_image_bn_update(backbone.params, backbone.config, backbone.image_size, through)
        if any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(params)):
            raise ValueError(f"{backbone.name}: the BatchNorm update needs concrete params, got traced ones")
        updated = dataclasses.replace(backbone, params=params,
                                      origin=f"{backbone.origin} + load-time BatchNorm update (constant image)")
        _BN_UPDATED[backbone] = updated
    return updated
