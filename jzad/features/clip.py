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
from jzad.features.types import BackboneRun, Features, first_given
from jzad.weights import open_checkpoint

RANDOM_PREFIX = "random-"


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
    encode_prompts = None
    if text is not None:
        text_params, text_config, tokenizer = text

        def encode_prompts(prompts):
            # encode_text runs the causal text tower only up to the longest prompt's end-of-text token.
            return encode_text({"text": text_params}, list(prompts), text_config, dtype, tokenizer)

    return Backbone("clip", name, architecture, encoder.origin, encoder.image_size, vision.patch_size, taps, dtype,
                    encoder.params, forward, info, encode_prompts, config)


def load_clip_backbone(
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
    """A CLIP Backbone: "random-<architecture>" (random weights of the real shapes, drawn from seed), a ported
    name, a catalogue name, a checkpoint file/folder or a Hugging Face id (see ``jzad.weights``).

    with_text keeps the text tower: ``Backbone.encode_prompts(list of str) -> (P, D)`` embeds prompts with the
    checkpoint's tokenizer, or the CLIP BPE shipped with jzad when it has none."""
    text = str(name)
    text_parts = None
    if text.startswith(RANDOM_PREFIX):
        arch = text[len(RANDOM_PREFIX):]
        full = get_architecture(arch)
        native = full.replace(text=None)
        params, recorded, origin = None, None, f"random:{arch}:{seed}"
        arch_name = architecture_name(native)
        if with_text:
            text_parts = (jax.device_put(init_clip(full, seed)["text"]), full, None)
    else:
        opened = open_checkpoint(name, weights_dir_override=weights_dir)
        native = opened.config.replace(text=None)
        params, recorded, origin = {"visual": opened.params["visual"]}, opened, opened.origin
        arch_name = architecture_name(native)
        if with_text:
            if opened.config.text is None:
                raise ValueError(f"{text}: this checkpoint has no text tower, and the method embeds text prompts")
            tokenizer = None
            if opened.tokenizer_dir is not None:
                tokenizer = load_tokenizer(opened.tokenizer_dir, vocab_size=opened.config.text.vocab_size)
            text_parts = (jax.device_put(opened.params["text"]), opened.config, tokenizer)
    preset = run
    size = first_given(image_size, recorded.image_size if recorded else None, preset.image_size,
                    native.vision.image_size)
    check_image_size(size, native.vision.patch_size, "image_size" if image_size is not None else "image size",
                     native.vision.image_size)
    if taps is not None:
        try:
            check_taps(taps, native.vision.layers)
        except ValueError as err:
            raise ValueError(f"taps: {err}") from err
    act = first_given(activation, recorded.activation if recorded else None, preset.activation, native.activation)
    if act not in ACTIVATIONS:
        raise ValueError(f"activation: expected one of {ACTIVATIONS}, got {act!r}")
    chosen_taps = first_given(taps, recorded.taps if recorded else None, preset.taps, None)
    config = native.replace(activation=act)
    if params is None:
        config = config.replace(vision=type(config.vision)(**{**config.vision.__dict__, "image_size": int(size)}))
        params = init_clip(config, seed)
    else:
        params, config = with_image_size(params, config, int(size))
    encoder = ImageEncoder(config, jax.device_put(params), chosen_taps, dtype, origin=origin)
    return clip_backbone(encoder, text, arch_name, text_parts)


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
