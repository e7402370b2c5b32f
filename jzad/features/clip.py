"""The CLIP backbone for the methods: load by name or path, apply a method's run preset, extract features.

Run settings are resolved in this order: explicit arguments (the CLI's --image-size, --taps, --activation),
settings recorded when the checkpoint was ported, the method's preset for the architecture (``BackboneRun``),
then the checkpoint's native size, its activation and taps at each quarter of the depth.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import jax

from jzad.backbone import (
    CLIP_MEAN,
    CLIP_STD,
    ImageEncoder,
    architecture_name,
    clip_tokenizer,
    get_architecture,
    init_clip,
    load_tokenizer,
    with_image_size,
)
from jzad.backbone.clip import _encode_image, check_taps, encode_text
from jzad.backbone.config import ACTIVATIONS, CLIPConfig
from jzad.features.backbone import Backbone, normalize_pixels
from jzad.features.loading import FamilyLoader
from jzad.features.types import BackboneRequest, Features
from jzad.weights import OpenedCheckpoint, open_checkpoint


def check_image_size(image_size, patch_size: int, what: str = "image_size", native: int | None = None) -> int:
    """A positive multiple of the patch size, else ValueError naming the nearest valid sizes (and the
    backbone's ``native`` size when given)."""
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        example = f"e.g. {native} (the backbone's native size)" if native else f"e.g. {16 * patch_size}"
        raise ValueError(f"{what}: expected a positive multiple of the patch size {patch_size}, {example}; got "
                         f"{image_size!r}")
    if image_size % patch_size:
        low = max(patch_size, image_size // patch_size * patch_size)
        raise ValueError(
            f"{what} {image_size}: not a multiple of the patch size {patch_size} (border pixels would be dropped); "
            f"use {low} or {low + patch_size}"
        )
    return image_size


@partial(jax.jit, static_argnames=("config", "taps", "dtype", "embedding"))
def _clip_features(visual_params, images, embedding, *, config, taps, dtype):
    pixels = normalize_pixels(images, CLIP_MEAN, CLIP_STD)
    outputs, embeds = _encode_image(visual_params, pixels, config=config, taps=taps, dtype=dtype,
                                    with_embedding=embedding)
    grid = config.vision.grid_size
    layers = tuple(t[:, 1:, :].reshape(t.shape[0], grid, grid, t.shape[-1]) for t in outputs)
    return Features(layers, embeds)


def clip_backbone(encoder: ImageEncoder, name: str, architecture: str | None, text=None) -> Backbone:
    """A ``Backbone`` over an ImageEncoder (vision tower at its run size, taps and dtype); ``text`` optionally
    (text params, CLIPConfig with its text tower, tokenizer) for methods that embed prompts."""
    config, taps, dtype = encoder.config, encoder.taps, encoder.dtype

    def forward(params, images, embedding):
        return _clip_features(params["visual"], images, embedding, config=config, taps=taps, dtype=dtype)

    vision = config.vision
    info = {"family": "clip", "activation": config.activation, "width": vision.width, "layers": vision.layers,
            "patch_size": vision.patch_size, "grid": vision.grid_size, "embed_dim": encoder.embed_dim}
    encode_prompts = None if text is None else _prompt_encoder(*text, dtype)
    return Backbone("clip", name, architecture, encoder.origin, encoder.image_size, vision.patch_size, taps, dtype,
                    encoder.params, forward, info, encode_prompts, config)


def _prompt_encoder(text_params, text_config: CLIPConfig, tokenizer, dtype: str):
    """list of str -> (P, D) prompt embeddings by the text tower (run only up to the longest prompt's
    end-of-text token: ``encode_text``)."""

    def encode_prompts(prompts):
        return encode_text({"text": text_params}, list(prompts), text_config, dtype, tokenizer)

    return encode_prompts


def _text_tower(request: BackboneRequest, weights: OpenedCheckpoint) -> tuple:
    """(text params, the CLIPConfig with its text tower, tokenizer or None) for ``clip_backbone``: drawn from the
    request's seed for random weights, else the checkpoint's with its own tokenizer when it ships one."""
    config = weights.config
    if config.text is None:
        what = "architecture" if weights.params is None else "checkpoint"
        raise ValueError(f"{request.text}: this {what} has no text tower, and the method embeds text prompts")
    if weights.params is None:
        return jax.device_put(init_clip(config, request.seed)["text"]), config, None
    tokenizer = None
    if weights.tokenizer_dir is not None:
        tokenizer = load_tokenizer(weights.tokenizer_dir, vocab_size=config.text.vocab_size)
    return jax.device_put(weights.params["text"]), config, tokenizer


def _build(request: BackboneRequest, weights: OpenedCheckpoint) -> Backbone:
    """The vision tower at the resolved size, activation and taps (module docstring), plus the text tower when
    the request asks for it. Random weights are drawn here, at the run size."""
    native = weights.config.replace(text=None)
    text = _text_tower(request, weights) if request.with_text else None
    vision = native.vision
    size = request.resolve("image_size", weights, vision.image_size)
    check_image_size(size, vision.patch_size, request.size_word, vision.image_size)
    if request.taps is not None:
        try:
            check_taps(request.taps, vision.layers)
        except ValueError as err:
            raise ValueError(f"taps: {err}") from err
    activation = request.resolve("activation", weights, native.activation)
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation: expected one of {ACTIVATIONS}, got {activation!r}")
    config = native.replace(activation=activation)
    if weights.params is None:
        config = config.replace(vision=type(vision)(**{**vision.__dict__, "image_size": int(size)}))
        params = init_clip(config, request.seed)
    else:
        params, config = with_image_size({"visual": weights.params["visual"]}, config, int(size))
    encoder = ImageEncoder(config, jax.device_put(params), request.resolve("taps", weights, None), request.dtype,
                           origin=weights.origin)
    return clip_backbone(encoder, request.text, architecture_name(native), text)


CLIP_LOADER = FamilyLoader("clip", "a CLIP model", get_architecture, None, _build, text_tower=True,
                           activation_refusal=None)
"""How ``jzad.features.load_backbone`` loads a CLIP: "random-<architecture>" (random weights of the real shapes,
drawn from seed), a ported name, a catalogue name, a checkpoint file/folder or a Hugging Face id (see
``jzad.weights``). With ``with_text`` it keeps the text tower: ``Backbone.encode_prompts(list of str) -> (P, D)``
embeds prompts with the checkpoint's tokenizer, or the CLIP BPE shipped with jzad when it has none."""


def load_clip(
    name_or_path: str | Path,
    image_size: int | None = None,
    activation: str | None = None,
    arch=None,
    weights_dir: str | Path | None = None,
) -> tuple[dict, CLIPConfig, object]:
    """Full CLIP (both towers) by name or path -> (params, config, tokenizer or None).

    image_size / activation default to the settings recorded at port time, else the native ones; the position
    embeddings are resized once. The tokenizer is loaded from the checkpoint folder's files when it has them;
    otherwise a text tower with CLIP's 49,408-token vocabulary (OpenAI / OpenCLIP .pt files) gets the standard
    CLIP BPE shipped with jzad (``clip_tokenizer()``), and any other gets None.
    """
    opened = open_checkpoint(name_or_path, arch=arch, weights_dir_override=weights_dir)
    act = activation or opened.activation or opened.config.activation
    if act not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {act!r}")
    config = opened.config.replace(activation=act)
    params, config = with_image_size(opened.params, config, image_size or opened.image_size or config.vision.image_size)
    tokenizer = None
    if config.text is not None and opened.tokenizer_dir is not None:
        tokenizer = load_tokenizer(opened.tokenizer_dir, vocab_size=config.text.vocab_size)
    elif config.text is not None and config.text.vocab_size == clip_tokenizer().vocab_size:
        tokenizer = clip_tokenizer()
    return jax.device_put(params), config, tokenizer


def load_image_encoder(
    name_or_path: str | Path,
    image_size: int | None = None,
    taps=None,
    activation: str | None = None,
    dtype: str = "float32",
    arch=None,
    weights_dir: str | Path | None = None,
    with_embedding: bool = True,
) -> ImageEncoder:
    """An ImageEncoder (vision tower) from a catalogue name, ported name/folder, checkpoint or HF id.

    None arguments take the settings recorded at port time, else the checkpoint's native size, its activation
    and taps at each quarter of the depth.
    """
    opened = open_checkpoint(name_or_path, arch=arch, weights_dir_override=weights_dir)
    act = activation or opened.activation or opened.config.activation
    if act not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {act!r}")
    config = opened.config.replace(activation=act, text=None)
    params, config = with_image_size({"visual": opened.params["visual"]}, config,
                                     image_size or opened.image_size or config.vision.image_size)
    taps = opened.taps if taps is None else taps
    return ImageEncoder(config, jax.device_put(params), taps, dtype, with_embedding, origin=opened.origin)
