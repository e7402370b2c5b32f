"""Bilinear resizes equal to PyTorch's ``F.interpolate(mode="bilinear", antialias=False)``, as matmuls.

A bilinear resize is separable and linear, so each axis is one small (out, in) matrix of interpolation
weights applied with a float32 matmul at HIGHEST precision: out = R_h @ x @ R_w^T. The weights follow
PyTorch's CPU kernel exactly, computed in float32 like it does:
- align_corners=False: source = (i + 0.5) * in / out - 0.5, clamped at 0;
- align_corners=True: source = i * (in - 1) / (out - 1) (0 for a single output);
then i0 = floor(source), i1 = min(i0 + 1, in - 1), weights (1 - l, l) with l = source - i0. Equal sizes
give the identity. Up- and downsampling use the same rule (no antialiasing, as PyTorch's default).

Layout: ``resize_bilinear`` works on (..., H, W) (maps, or channels-first stacks); channels-last tensors
use ``bilinear_matrix`` directly in an einsum (see ``jzad.methods.patchcore``).
"""

from __future__ import annotations

from functools import lru_cache, partial

import jax
import jax.numpy as jnp
import numpy as np


def _check_size(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


@lru_cache(maxsize=256)
def _bilinear_matrix(in_size: int, out_size: int, align_corners: bool) -> np.ndarray:
    matrix = np.zeros((out_size, in_size), np.float32)
    if in_size == out_size:
        np.fill_diagonal(matrix, 1.0)
        return matrix
    dst = np.arange(out_size, dtype=np.float32)
    if align_corners:
        scale = np.float32((in_size - 1) / (out_size - 1)) if out_size > 1 else np.float32(0.0)
        src = scale * dst
    else:
        scale = np.float32(in_size) / np.float32(out_size)
        src = np.maximum(scale * (dst + np.float32(0.5)) - np.float32(0.5), np.float32(0.0))
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    i1 = np.minimum(i0 + 1, in_size - 1)
    lam = np.clip(src - i0.astype(np.float32), 0.0, 1.0).astype(np.float32)
    rows = np.arange(out_size)
    np.add.at(matrix, (rows, i0), np.float32(1.0) - lam)
    np.add.at(matrix, (rows, i1), lam)
    return matrix


def bilinear_matrix(in_size: int, out_size: int, align_corners: bool = False) -> np.ndarray:
    """(out_size, in_size) float32 interpolation weights of PyTorch's bilinear resize along one axis."""
    in_size = _check_size(in_size, "in_size")
    out_size = _check_size(out_size, "out_size")
    matrix = _bilinear_matrix(in_size, out_size, bool(align_corners))
    matrix.flags.writeable = False
    return matrix


def _pair(size) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        size = (size, size)
    try:
        height, width = size
    except (TypeError, ValueError) as err:
        raise ValueError(f"size must be an int or an (height, width) pair, got {size!r}") from err
    return _check_size(height, "size[0]"), _check_size(width, "size[1]")


@partial(jax.jit, static_argnames=("size", "align_corners"))
def _resize(x: jax.Array, size: tuple[int, int], align_corners: bool) -> jax.Array:
    rows = jnp.asarray(bilinear_matrix(x.shape[-2], size[0], align_corners))
    cols = jnp.asarray(bilinear_matrix(x.shape[-1], size[1], align_corners))
    highest = jax.lax.Precision.HIGHEST
    x = jnp.einsum("...hw,pw->...hp", x.astype(jnp.float32), cols, precision=highest)
    return jnp.einsum("oh,...hp->...op", rows, x, precision=highest)


def resize_bilinear(x: jax.Array, size, align_corners: bool = False) -> jax.Array:
    """Bilinear resize of the last two axes: (..., H, W) -> (..., size_h, size_w) float32.

    ``size`` is an int (square) or (height, width). Equal to torch ``F.interpolate(x, size,
    mode="bilinear", align_corners=align_corners)`` on (N, C, H, W) inputs, up or down.
    """
    if getattr(x, "ndim", 0) < 2:
        raise ValueError(f"x must have at least 2 axes (..., H, W), got shape {np.shape(x)}")
    return _resize(x, size=_pair(size), align_corners=bool(align_corners))
