"""NACLIP: CLIP's last vision block rebuilt for dense, text-aligned patch features (Hajimiri et al., 2024).

NACLIP ("Pay attention to your neighbours") changes only the final block of the vision transformer:
- attention logits are key-key, k_i . k_j / sqrt(d), instead of query-key;
- an additive Gaussian neighbourhood term omega_ij = exp(-||p_i - p_j||^2 / (2 sigma^2)) over the patch grid
  positions p (sigma in patches, 5 by default) joins the logits before the softmax; the class token's row and
  column get 0;
- the block returns the attention output alone: no residual connection, no MLP;
- ln_post and proj then run on every token, so each patch has an embedding in the text space.
The earlier blocks are CLIP's own. This follows the public NACLIP code (``attn_strategy="naclip"``,
``arch="reduced"``), where omega is not scaled by 1/sqrt(d).

``naclip_encode`` is a pure jitted function over the same params tree as ``jzad.backbone.clip`` (only
``params["visual"]`` is read); it also returns the residual-stream taps of earlier blocks from the same pass,
which CLIP-LAD clusters and compares (``jzad.methods.clip_lad``).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from jzad.backbone.clip import check_vision_images, vision_tower
from jzad.backbone.config import CLIPConfig
from jzad.backbone.nnx_params import COMPUTE_DTYPES, check_compute_dtype, compute_precision

DEFAULT_SIGMA = 5.0


def neighbourhood_bias(grid: int, sigma: float) -> np.ndarray:
    """omega (1 + g*g, 1 + g*g) float32: exp(-squared patch distance / (2 sigma^2)), 0 on the CLS row/column.

    Patches are numbered row-major on the g x g grid, after the class token.
    """
    if not sigma > 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    rows, cols = np.divmod(np.arange(grid * grid), grid)
    sq = (rows[:, None] - rows[None, :]) ** 2 + (cols[:, None] - cols[None, :]) ** 2
    omega = np.zeros((grid * grid + 1, grid * grid + 1), np.float32)
    omega[1:, 1:] = np.exp(-sq / (2.0 * float(sigma) ** 2))
    return omega


def naclip_attention(block, x: jax.Array, omega: jax.Array) -> jax.Array:
    """NACLIP's attention on the last block's ln_1 input x (B, T, W): softmax(k k^T / sqrt(d) + omega) v, out_proj.

    block: a ``jzad.backbone.clip.ResidualBlock`` (its ln_1 and attention weights are used; its MLP is not).
    """
    attn = block.attn
    batch, tokens, width = x.shape
    head_dim = width // attn.heads
    h = block.ln_1(x)
    qkv = attn.qkv(h).reshape(batch, tokens, 3, attn.heads, head_dim).transpose(2, 0, 3, 1, 4)
    k, v = qkv[1], qkv[2]  # (B, heads, T, head_dim)
    logits = jnp.einsum("bhqd,bhkd->bhqk", k * head_dim**-0.5, k, preferred_element_type=jnp.float32)
    weights = jax.nn.softmax(logits + omega, axis=-1).astype(v.dtype)
    out = jnp.einsum("bhqk,bhkd->bqhd", weights, v).reshape(batch, tokens, width)
    return attn.out(out)


@partial(jax.jit, static_argnames=("config", "taps", "sigma", "dtype"))
def _naclip(visual_params, images, *, config, taps, sigma, dtype):
    compute = COMPUTE_DTYPES[dtype]
    layers = config.vision.layers
    omega = jnp.asarray(neighbourhood_bias(config.vision.grid_size, sigma))
    with compute_precision(dtype):
        model = vision_tower(visual_params, config, dtype)
        wanted = tuple(sorted(set(taps) | {layers - 1}))
        streams, _ = model(images.astype(compute), wanted, False)
        by_block = dict(zip(wanted, streams))
        x = naclip_attention(model.blocks[layers - 1], by_block[layers - 1], omega.astype(compute))
        dense = model.ln_post(x)
        if model.proj is not None:
            dense = dense @ model.proj[...].astype(dense.dtype)
    return tuple(by_block[t].astype(jnp.float32) for t in taps), dense.astype(jnp.float32)


def naclip_encode(
    params: dict,
    images: jax.Array,
    config: CLIPConfig,
    taps=(),
    sigma: float = DEFAULT_SIGMA,
    dtype: str = "float32",
) -> tuple[tuple[jax.Array, ...], jax.Array]:
    """Residual-stream taps of earlier blocks and NACLIP's dense embeddings, in one pass.

    params: the CLIP params tree (``params["visual"]`` is read). images: (B, S, S, 3) float32 NHWC,
    CLIP-normalised, S == config.vision.image_size. taps: 1-based block indices in [1, layers - 1] (the last
    block is NACLIP's, so its plain residual stream does not exist). sigma: Gaussian width in patches.
    dtype: "float32" (highest matmul precision) or "bfloat16".
    Returns (tuple of (B, 1 + g*g, W) residual streams in taps order, dense (B, 1 + g*g, D) = ln_post(x) @ proj
    of every token of the NACLIP block's output (D = W without a projection), CLS first), all float32.
    """
    vision = config.vision
    layers = vision.layers
    if layers < 2:
        raise ValueError(f"NACLIP replaces the last block and needs at least 2 layers, config has {layers}")
    try:
        taps = tuple(int(t) for t in taps)
    except TypeError as err:
        raise ValueError(f"taps must be a sequence of 1-based block indices, got {taps!r}") from err
    if any(t < 1 or t > layers - 1 for t in taps) or len(set(taps)) != len(taps):
        raise ValueError(f"taps must be distinct 1-based block indices in [1, {layers - 1}], got {taps}")
    dtype = check_compute_dtype(dtype)
    sigma = float(sigma)
    if not sigma > 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    images = check_vision_images(images, vision)
    return _naclip(params["visual"], images, config=config, taps=taps, sigma=sigma, dtype=dtype)
