"""Gaussian blur of 2-D maps equal to ``scipy.ndimage.gaussian_filter(map, sigma, mode="reflect")``.

scipy correlates axis 0 then axis 1 with a normalised 1-D Gaussian of radius int(truncate * sigma + 0.5)
(33 taps for sigma 4), its 'reflect' border repeating the edge sample (d c b a | a b c d | d c b a). Each axis
pass is linear, so it is one (H, H) matrix holding the taps with the border folded in; the blur is
B_h @ map @ B_w^T as two float32 HIGHEST-precision matmuls with a float32 intermediate, like scipy on a
float32 map. Maps smaller than the radius reflect repeatedly, as scipy does.
"""

from __future__ import annotations

from functools import lru_cache, partial

import jax
import jax.numpy as jnp
import numpy as np


def gaussian_taps(sigma: float, truncate: float = 4.0) -> np.ndarray:
    """scipy's normalised 1-D Gaussian weights (2 r + 1,), r = int(truncate * sigma + 0.5), float64."""
    radius = int(truncate * sigma + 0.5)
    offsets = np.arange(-radius, radius + 1, dtype=np.float64)
    weights = np.exp(-0.5 / (sigma * sigma) * offsets * offsets)
    return weights / weights.sum()


def _reflect(index: np.ndarray, size: int) -> np.ndarray:
    """Half-sample symmetric index folding (scipy 'reflect'), any distance outside [0, size)."""
    index = np.mod(index, 2 * size)
    return np.where(index >= size, 2 * size - 1 - index, index)


@lru_cache(maxsize=64)
def blur_matrix(size: int, sigma: float, truncate: float = 4.0) -> np.ndarray:
    """(size, size) float32 matrix of one scipy 'reflect' Gaussian pass: out = B @ column."""
    taps = gaussian_taps(sigma, truncate)
    radius = len(taps) // 2
    matrix = np.zeros((size, size), np.float64)
    rows = np.arange(size)
    for offset, weight in zip(range(-radius, radius + 1), taps):
        np.add.at(matrix, (rows, _reflect(rows + offset, size)), weight)
    matrix = matrix.astype(np.float32)
    matrix.flags.writeable = False
    return matrix


@partial(jax.jit, static_argnames=("sigma", "truncate"))
def _blur(maps: jax.Array, sigma: float, truncate: float) -> jax.Array:
    rows = jnp.asarray(blur_matrix(maps.shape[-2], sigma, truncate))
    cols = jnp.asarray(blur_matrix(maps.shape[-1], sigma, truncate))
    highest = jax.lax.Precision.HIGHEST
    along_rows = jnp.einsum("ih,nhw->niw", rows, maps.astype(jnp.float32), precision=highest)
    return jnp.einsum("niw,jw->nij", along_rows, cols, precision=highest)


def gaussian_blur(maps: jax.Array, sigma: float = 4.0, truncate: float = 4.0) -> jax.Array:
    """Blur each map of (N, H, W) -> (N, H, W) float32, axis 0 then axis 1, scipy 'reflect' border."""
    if getattr(maps, "ndim", 0) != 3:
        raise ValueError(f"maps must be (N, H, W), got shape {np.shape(maps)}")
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma!r}")
    if not truncate > 0:
        raise ValueError(f"truncate must be > 0, got {truncate!r}")
    return _blur(maps, sigma=float(sigma), truncate=float(truncate))
