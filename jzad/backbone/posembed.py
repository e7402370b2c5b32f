"""Position-embedding resizing, PyTorch-compatible: bicubic, a = -0.75, align_corners=False, CLS kept.

``torch.nn.functional.interpolate(mode="bicubic", align_corners=False)`` is separable: each output index o
reads input rows floor(s) - 1 .. floor(s) + 2 (clamped to the border) at s = (o + 0.5) * in / out - 0.5 with
Keys' cubic convolution weights (a = -0.75), and no antialiasing when shrinking. We build that as an
(out, in) matrix per axis, so a resize is two small matmuls. ``jax.image.resize(method="cubic")`` uses
a = -0.5 and differs.
"""

from __future__ import annotations

import numbers

import numpy as np
import jax
import jax.numpy as jnp

from jzad.backbone.config import CLIPConfig

CUBIC_A = -0.75


def _cubic_weights(t: np.ndarray, a: float = CUBIC_A) -> np.ndarray:
    """Weights (..., 4) of the taps at offsets -1, 0, 1, 2 for fractional positions t in [0, 1)."""

    def near(x):
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    return np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=-1)


def bicubic_matrix(in_size: int, out_size: int, scale: float | None = None) -> np.ndarray:
    """(out_size, in_size) float32 matrix M with M @ v = PyTorch's 1-D bicubic resize of v (align_corners=False).

    ``scale``: the input step per output step, in_size / out_size unless given (PyTorch uses 1 / scale_factor
    when it is called with a scale factor). Source positions and weights are computed in float32, as PyTorch's
    kernel does, so the two agree to float32 rounding of the sums.
    """
    if in_size < 1 or out_size < 1:
        raise ValueError(f"sizes must be positive, got in_size={in_size}, out_size={out_size}")
    f32 = np.float32
    scale = f32(in_size) / f32(out_size) if scale is None else f32(scale)
    source = scale * (np.arange(out_size, dtype=f32) + f32(0.5)) - f32(0.5)
    floor = np.floor(source)
    weights = _cubic_weights(np.clip(source - floor, f32(0), f32(1)), f32(CUBIC_A))
    matrix = np.zeros((out_size, in_size), dtype=f32)
    rows = np.arange(out_size)
    for offset in range(4):
        index = np.clip(floor.astype(np.int64) - 1 + offset, 0, in_size - 1)
        np.add.at(matrix, (rows, index), weights[:, offset].astype(f32))
    return matrix


def resize_grid(grid: jax.Array, out_h: int, out_w: int) -> jax.Array:
    """Bicubic resize of a (h, w, C) map to (out_h, out_w, C), as PyTorch does it (float32 result)."""
    if grid.ndim != 3:
        raise ValueError(f"grid must be (h, w, C), got shape {tuple(grid.shape)}")
    rows = jnp.asarray(bicubic_matrix(grid.shape[0], out_h), dtype=jnp.float32)
    cols = jnp.asarray(bicubic_matrix(grid.shape[1], out_w), dtype=jnp.float32)
    return jnp.einsum(
        "oh,hwc,pw->opc", rows, jnp.asarray(grid, jnp.float32), cols, precision=jax.lax.Precision.HIGHEST
    )


def resize_position_embedding(pos: jax.Array, grid_size: int) -> jax.Array:
    """(1 + g*g, C) position embeddings -> (1 + grid_size**2, C): patch part resized, CLS row kept."""
    tokens = pos.shape[0] - 1
    side = int(round(tokens**0.5))
    if pos.ndim != 2 or side * side != tokens:
        raise ValueError(f"position embeddings must be (1 + g*g, C), got shape {tuple(pos.shape)}")
    if side == grid_size:
        return jnp.asarray(pos)
    patches = resize_grid(jnp.asarray(pos[1:]).reshape(side, side, -1), grid_size, grid_size)
    return jnp.concatenate([jnp.asarray(pos[:1], jnp.float32), patches.reshape(grid_size * grid_size, -1)], axis=0)


def with_image_size(params: dict, config: CLIPConfig, image_size: int) -> tuple[dict, CLIPConfig]:
    """Params and config for inputs of image_size x image_size (done once at load, not per call).

    The vision position embeddings are resized from the current grid to image_size // patch_size;
    everything else is shared with the input params. Returns (params, config) with
    config.vision.image_size = image_size.
    """
    if not isinstance(image_size, numbers.Integral) or image_size < config.vision.patch_size:
        raise ValueError(
            f"image_size must be an int >= patch_size={config.vision.patch_size}, got {image_size!r}"
        )
    image_size = int(image_size)
    vision = config.vision
    new_config = config.replace(vision=type(vision)(**{**vision.__dict__, "image_size": image_size}))
    visual = dict(params["visual"])
    pos = visual["positional_embedding"]
    if pos.shape[0] != vision.num_tokens:
        raise ValueError(
            f"params['visual']['positional_embedding'] has {pos.shape[0]} rows but the config's "
            f"{vision.image_size}px / patch {vision.patch_size} layout needs {vision.num_tokens}"
        )
    visual["positional_embedding"] = resize_position_embedding(pos, new_config.vision.grid_size)
    return {**params, "visual": visual}, new_config
