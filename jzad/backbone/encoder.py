"""The image encoder the method pipelines use: a vision-only CLIP at a fixed run size, taps and dtype.

``load_image_encoder`` finds weights by name or path (see ``jzad.weights.open_checkpoint``), resizes the
position embeddings once to the run size and keeps only the vision tower on device. Calling the encoder
runs one jitted function whose static arguments are the (hashable) config, taps and dtype, so repeated
calls with the same batch shape never retrace.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jzad.backbone.clip import _check_dtype, check_taps, encode_image, init_clip
from jzad.backbone.config import ACTIVATIONS, CLIPConfig, get_architecture
from jzad.backbone.posembed import with_image_size


@dataclass(frozen=True, eq=False)
class ImageEncoder:
    """Vision-only CLIP at config.vision.image_size with fixed taps and compute dtype.

    config: CLIPConfig with text=None at the run size and activation. params: {"visual": ...} (float32,
    on device). taps: 1-based blocks whose residual stream is returned. dtype: "float32" or "bfloat16".
    with_embedding: False stops the forward after the deepest tap and returns None for the embeddings.
    origin: where the weights came from (for reports).
    """

    config: CLIPConfig
    params: dict
    taps: tuple[int, ...]
    dtype: str = "float32"
    with_embedding: bool = True
    origin: str = ""

    def __post_init__(self):
        object.__setattr__(self, "taps", check_taps(self.taps, self.config.vision.layers))
        object.__setattr__(self, "dtype", _check_dtype(self.dtype))
        pos = self.params["visual"]["positional_embedding"]
        if pos.shape[0] != self.config.vision.num_tokens:
            raise ValueError(
                f"positional_embedding has {pos.shape[0]} rows, config needs {self.config.vision.num_tokens}"
            )

    @property
    def image_size(self) -> int:
        """Input side S: images are (B, S, S, 3)."""
        return self.config.vision.image_size

    @property
    def grid_size(self) -> int:
        """Patch grid side g: each tap is (B, 1 + g*g, C)."""
        return self.config.vision.grid_size

    @property
    def width(self) -> int:
        """Token channels C of the taps."""
        return self.config.vision.width

    @property
    def embed_dim(self) -> int:
        """Image embedding size D (the vision width when the checkpoint has no projection)."""
        return self.config.embed_dim if self.config.embed_dim is not None else self.config.vision.width

    def __call__(self, images) -> tuple[tuple[jax.Array, ...], jax.Array]:
        """images (B, S, S, 3) float32 NHWC, CLIP-normalised -> (taps: tuple of (B, 1 + g*g, C), embeds (B, D)).

        Taps are the residual stream after each requested block (CLS first, no ln_post); embeds are
        ln_post(CLS) @ proj, not normalised. Outputs are float32 whatever the compute dtype.
        """
        return encode_image(self.params, images, self.config, self.taps, self.dtype, self.with_embedding)

    def encode_batches(self, images, batch_size: int) -> tuple[tuple[jax.Array, ...], jax.Array]:
        """Like ``__call__`` over (N, S, S, 3) images in batches of batch_size (the last one padded, so only
        one shape is ever compiled); returns (taps: tuple of (N, 1 + g*g, C), embeds (N, D))."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        count = len(images)
        if count == 0:
            raise ValueError("encode_batches needs at least one image")
        tap_parts, embed_parts = [], []
        for start in range(0, count, batch_size):
            batch = np.asarray(images[start : start + batch_size], dtype=np.float32)
            real = batch.shape[0]
            if real < batch_size:
                batch = np.concatenate([batch, np.zeros((batch_size - real, *batch.shape[1:]), np.float32)])
            taps, embeds = self(batch)
            tap_parts.append(tuple(t[:real] for t in taps))
            embed_parts.append(None if embeds is None else embeds[:real])
        taps = tuple(jnp.concatenate([part[i] for part in tap_parts]) for i in range(len(self.taps)))
        return taps, (None if embed_parts[0] is None else jnp.concatenate(embed_parts))


def _vision_only(params: dict, config: CLIPConfig) -> tuple[dict, CLIPConfig]:
    return {"visual": params["visual"]}, config.replace(text=None)


def load_clip(
    name_or_path: str | Path,
    image_size: int | None = None,
    activation: str | None = None,
    arch=None,
    weights_dir: str | Path | None = None,
):
    """Full CLIP (both towers) by name or path -> (params, config, tokenizer or None).

    image_size / activation default to the checkpoint's run defaults (manifest or native); the position
    embeddings are resized once. The tokenizer is loaded from the checkpoint folder's files when it has
    them; otherwise a text tower with CLIP's 49,408-token vocabulary (OpenAI / OpenCLIP .pt files) gets
    the standard CLIP BPE shipped with jzad (``clip_tokenizer()``), and any other gets None.
    """
    from jzad.backbone.tokenizer import clip_tokenizer, load_tokenizer
    from jzad.weights import open_checkpoint

    opened = open_checkpoint(name_or_path, arch=arch, weights_dir_override=weights_dir)
    activation = activation or opened.activation
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    config = opened.config.replace(activation=activation)
    params, config = with_image_size(opened.params, config, image_size or opened.image_size)
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
    """An ImageEncoder from a catalogue name, ported name/folder, checkpoint file/folder or HF id.

    None arguments take the checkpoint's run defaults (for vit-l-14-336: 518 px, "gelu", taps 6/12/18/24;
    for a raw file: native size, its activation, each quarter of the depth).
    """
    from jzad.weights import open_checkpoint

    opened = open_checkpoint(name_or_path, arch=arch, weights_dir_override=weights_dir)
    activation = activation or opened.activation
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    params, config = _vision_only(opened.params, opened.config.replace(activation=activation))
    params, config = with_image_size(params, config, image_size or opened.image_size)
    taps = opened.taps if taps is None else taps
    return ImageEncoder(config, jax.device_put(params), taps, dtype, with_embedding, origin=opened.origin)


def init_random_encoder(
    arch: str | CLIPConfig = "tiny",
    image_size: int | None = None,
    taps=None,
    seed: int = 0,
    activation: str | None = None,
    dtype: str = "float32",
) -> ImageEncoder:
    """An ImageEncoder with random weights of a named architecture's real shapes (demos, benchmarks, tests).

    image_size defaults to the architecture's native size, taps to each quarter of the depth.
    """
    config = get_architecture(arch).replace(text=None)
    if activation is not None:
        config = config.replace(activation=activation)
    if image_size is not None:
        config = config.replace(vision=type(config.vision)(**{**config.vision.__dict__, "image_size": int(image_size)}))
    params = init_clip(config, seed)
    origin = f"random:{arch if isinstance(arch, str) else 'config'}:{seed}"
    return ImageEncoder(config, params, taps, dtype, origin=origin)
