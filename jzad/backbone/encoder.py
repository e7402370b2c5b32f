"""``ImageEncoder``: a vision-only CLIP at a fixed run size, taps and dtype (params on device).

Calling the encoder runs one jitted function whose static arguments are the (hashable) config, taps and dtype,
so repeated calls with the same batch shape never retrace. Loading one by name or path lives in
``jzad.features`` (it needs ``jzad.weights``, a layer above this one).
"""

from __future__ import annotations

from dataclasses import dataclass

import jax

from jzad.backbone.clip import check_taps, encode_image, init_clip
from jzad.backbone.config import CLIPConfig, get_architecture
from jzad.backbone.nnx_params import check_compute_dtype


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
        object.__setattr__(self, "dtype", check_compute_dtype(self.dtype))
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
