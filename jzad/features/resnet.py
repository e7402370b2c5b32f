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
from jzad.features.loading import FamilyLoader
from jzad.features.types import BackboneRequest, Features
from jzad.weights import OpenedCheckpoint
from jzad.weights.families import RESNET_STRIDE

DEFAULT_SIZE = 224
DEFAULT_TAPS = ("layer2", "layer3")
STRIDES = {"layer1": 4, "layer2": 8, "layer3": 16, "layer4": 32}
"""Output stride of each stage (its grid is the input side divided by it)."""


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


def _random_config(arch: str):
    if arch not in RESNET_ARCHITECTURES:
        raise ValueError(f"unknown ResNet architecture {arch!r}; known: {', '.join(RESNET_ARCHITECTURES)}")
    return RESNET_ARCHITECTURES[arch]


def _build(request: BackboneRequest, weights: OpenedCheckpoint) -> Backbone:
    """The Backbone at the resolved size (a multiple of the network's stride) and taps (stage names)."""
    size = request.input_side(weights, DEFAULT_SIZE, RESNET_STRIDE,
                              f"a ResNet input side must be a positive multiple of {RESNET_STRIDE}")
    taps = stage_taps(request.resolve("taps", weights, DEFAULT_TAPS), weights.config)
    return resnet_backbone(jax.device_put(weights.params), weights.config, request.text, weights.origin, size, taps,
                           request.dtype)


RESNET_LOADER = FamilyLoader("resnet", "a ResNet", _random_config, init_resnet, _build, dtypes=COMPUTE_DTYPES)
"""How ``jzad.features.load_backbone`` loads a ResNet (see the module docstring): explicit arguments override
the settings recorded at port time, which override the method's preset, then 224 px with taps layer2 and
layer3."""


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
