"""Pairwise distances as matrix products.

||a - b||^2 = ||a||^2 + ||b||^2 - 2 a.b: one GEMM plus two norm vectors, so the heavy work runs on the
matrix units. ``precision`` picks the GEMM arithmetic: "fp32" (exact float32, ``Precision.HIGHEST`` so GPUs do
not silently use TF32) or "bf16" (bfloat16 inputs, float32 accumulation).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

PRECISIONS = ("fp32", "bf16")


def check_precision(precision: str) -> None:
    """Raise a clear error for an unknown precision name."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")


def rounding_floor(channels: int, precision: str = "fp32") -> float:
    """Relative rounding error of a squared distance formed as ||a||^2 + ||b||^2 - 2 a.b over ``channels``.

    A result at or below ``rounding_floor * (||a||^2 + ||b||^2)`` cannot be told from 0. For two identical rows
    the three float32 sums round differently and leave a few sqrt(C) units in the last place (measured on CPU:
    up to 2.6e-6 for unit rows of C = 1024, where the floor is 2 * 7.6e-6), which the square root of a distance
    amplifies (2.6e-6 -> 1.6e-3). The floor is 4 sqrt(C) 2^-24 (the sqrt(C) growth of blocked and pairwise
    summation, with a margin of 4) for both precisions. bf16 GEMMs round their inputs to 8 bits while the norms
    are of the unrounded rows, which leaves up to about 2^-8 relative (measured on CPU: 6.8e-4 for unit rows of
    C = 1024); zeroing that much (distances up to 0.088 between unit rows) would erase real near-matches, so bf16
    keeps that noise: exactly equal scores for identical images are an fp32 guarantee.
    """
    check_precision(precision)
    return 4.0 * math.sqrt(max(channels, 1)) * 2.0**-24


def zero_below_rounding(squared: jax.Array, scale: jax.Array, channels: int, precision: str = "fp32") -> jax.Array:
    """Squared distances from the GEMM form with the values at or below their rounding error set to exactly 0:
    ``squared`` (...), ``scale`` (broadcastable) = ||a||^2 + ||b||^2 (or an upper bound of it) -> (...)."""
    return jnp.where(squared <= rounding_floor(channels, precision) * scale, 0.0, squared)


def dot_nt(a: jax.Array, b: jax.Array, precision: str = "fp32") -> jax.Array:
    """a @ b.T in float32: (n, c), (m, c) -> (n, m)."""
    check_precision(precision)
    if precision == "bf16":
        return jnp.matmul(
            a.astype(jnp.bfloat16), b.astype(jnp.bfloat16).T, preferred_element_type=jnp.float32
        )
    return jnp.matmul(
        a.astype(jnp.float32), b.astype(jnp.float32).T, precision=jax.lax.Precision.HIGHEST
    )


def squared_norms(x: jax.Array) -> jax.Array:
    """Row-wise squared L2 norms in float32: (..., c) -> (...)."""
    x = x.astype(jnp.float32)
    return jnp.sum(x * x, axis=-1)


def pairwise_sq_euclidean(a: jax.Array, b: jax.Array, precision: str = "fp32") -> jax.Array:
    """Squared Euclidean distances (n, c), (m, c) -> (n, m), clamped at zero against rounding."""
    d = squared_norms(a)[:, None] + squared_norms(b)[None, :] - 2.0 * dot_nt(a, b, precision)
    return jnp.maximum(d, 0.0)


def pairwise_euclidean(a: jax.Array, b: jax.Array, precision: str = "fp32") -> jax.Array:
    """Euclidean distances (n, c), (m, c) -> (n, m)."""
    return jnp.sqrt(pairwise_sq_euclidean(a, b, precision))


def l2_normalize(x: jax.Array, axis: int = -1, eps: float = 1e-12) -> jax.Array:
    """Scale vectors to unit L2 norm along ``axis`` (zero vectors stay zero), like torch F.normalize."""
    norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=axis, keepdims=True))
    return x / jnp.maximum(norm, eps)


def pairwise_cosine_distance(a: jax.Array, b: jax.Array, precision: str = "fp32") -> jax.Array:
    """Cosine distance 1 - cos(a, b): (n, c), (m, c) -> (n, m), in [0, 2]."""
    return 1.0 - dot_nt(l2_normalize(a), l2_normalize(b), precision)
