"""Selection along an axis: smallest/largest k with indices, and the interval average.

The interval average is MuSc's aggregation: the mean of the values whose rank (ascending) lies in
[floor(lo * n), floor(hi * n)), with at least one value kept. MuSc's "lowest 30%" of n = N - 1 other images is
interval (0.0, 0.3), i.e. k = max(1, floor(0.3 * n)) smallest values.
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np


def _last_axis(x: jax.Array, axis: int) -> jax.Array:
    return jnp.moveaxis(x, axis, -1)


@partial(jax.jit, static_argnames=("k", "axis"))
def largest_k(x: jax.Array, k: int, axis: int = -1) -> tuple[jax.Array, jax.Array]:
    """The k largest values along ``axis`` in descending order, with their indices.

    Output shapes replace the size of ``axis`` by k (axis moved to the end). Ties keep the lower index first.
    """
    n = x.shape[axis]
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}] for an axis of size {n}, got {k}")
    return jax.lax.top_k(_last_axis(x, axis), k)


@partial(jax.jit, static_argnames=("k", "axis"))
def smallest_k(x: jax.Array, k: int, axis: int = -1) -> tuple[jax.Array, jax.Array]:
    """The k smallest values along ``axis`` in ascending order, with their indices (axis moved to the end)."""
    values, indices = largest_k(-x, k, axis)
    return -values, indices


def interval_bounds(n: int, lo: float, hi: float) -> tuple[int, int]:
    """Rank bounds [start, stop) for the fractional interval [lo, hi) of n sorted values.

    start = floor(lo * n), stop = floor(hi * n), raised to start + 1 when that would keep nothing.
    """
    if n < 1:
        raise ValueError(f"interval needs at least one value, got an axis of size {n}")
    if not 0.0 <= lo < hi <= 1.0:
        raise ValueError(f"interval must satisfy 0 <= lo < hi <= 1, got ({lo}, {hi})")
    start = min(math.floor(lo * n), n - 1)
    stop = min(max(math.floor(hi * n), start + 1), n)
    return start, stop


def _order_keys(x: jax.Array) -> jax.Array:
    """int32 keys with the order of the float32 values (IEEE bits, negatives flipped)."""
    bits = jax.lax.bitcast_convert_type(x.astype(jnp.float32), jnp.int32)
    return jnp.where(bits < 0, bits ^ jnp.int32(0x7FFFFFFF), bits)


def _from_order_keys(keys: jax.Array) -> jax.Array:
    bits = jnp.where(keys < 0, keys ^ jnp.int32(0x7FFFFFFF), keys)
    return jax.lax.bitcast_convert_type(bits, jnp.float32)


@partial(jax.jit, static_argnames=("k",))
def kth_smallest(x: jax.Array, k: int) -> jax.Array:
    """The k-th smallest value (1-based) along the last axis: (..., n) -> (...), exact.

    Bisection over the 32-bit order keys of float32 (32 counting passes, no sort): on CPU about twice as
    fast as top_k for MuSc's k = 0.3 n, and it parallelises over rows on accelerators.
    """
    n = x.shape[-1]
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}], got {k}")
    return _kth_smallest(x, k)


def _kth_smallest(x: jax.Array, k) -> jax.Array:
    """``kth_smallest`` without the static check: k a Python int or an int32 array (traced) in [1, n]."""
    keys = _order_keys(x)
    lo = jnp.min(keys, axis=-1)
    hi = jnp.max(keys, axis=-1)

    def halve(_, bounds):
        lo, hi = bounds
        mid = (lo >> 1) + (hi >> 1) + (lo & hi & 1)
        enough = jnp.sum(keys <= mid[..., None], axis=-1) >= k
        return jnp.where(enough, lo, mid + 1), jnp.where(enough, mid, hi)

    lo, _ = jax.lax.fori_loop(0, 32, halve, (lo, hi))
    return _from_order_keys(lo)


@partial(jax.jit, static_argnames=("k",))
def sum_smallest(x: jax.Array, k: int) -> jax.Array:
    """Sum of the k smallest values along the last axis, (..., n) -> (...), via ``kth_smallest``.

    Values below the k-th smallest t are summed and the remaining count is filled with t, so ties are
    exact. +inf entries count as the largest values.
    """
    n = x.shape[-1]
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}], got {k}")
    return _sum_smallest(x, k)


def _sum_smallest(x: jax.Array, k) -> jax.Array:
    """``sum_smallest`` without the static check: k a Python int or an int32 array (traced) in [1, n]."""
    t = _kth_smallest(x, k)
    below = x < t[..., None]
    count = jnp.sum(below, axis=-1)
    return jnp.sum(jnp.where(below, x, 0.0), axis=-1) + (k - count).astype(x.dtype) * t


def mean_of_ranks(x: jax.Array, start, stop) -> jax.Array:
    """Mean of the values ranked [start, stop) (ascending, 0-based) along the last axis: (..., n) -> (...).

    Static bounds (Python ints): start == 0 uses the exact ``sum_smallest`` (no sort); otherwise the ``stop``
    smallest are selected and the first ``start`` dropped. Traced bounds (int32 arrays, e.g. an interval of a
    count that depends on masked entries, so one program serves every count): the difference of two exact
    k-smallest sums; the caller keeps 0 <= start < stop <= n (a Python 0 start skips the second sum, and
    then the result equals the static path's bit for bit). +inf entries rank last.
    """
    if isinstance(start, int) and isinstance(stop, int):
        if start == 0:
            return sum_smallest(x.astype(jnp.float32), stop) / stop
        values, _ = smallest_k(x, stop)
        return jnp.mean(values[..., start:stop], axis=-1)
    x = x.astype(jnp.float32)
    upper = _sum_smallest(x, stop)
    if isinstance(start, int) and start == 0:
        return upper / stop
    lower = jnp.where(start > 0, _sum_smallest(x, jnp.maximum(start, 1)), 0.0)
    return (upper - lower) / (stop - start)


def interval_table(max_n: int, lo: float, hi: float) -> np.ndarray:
    """``interval_bounds`` of every count n = 0..max_n as an int32 (max_n + 1, 2) table, to index with a
    traced count (row 0, no values, holds (0, 1)); the bounds are the static function's, bit for bit."""
    rows = [(0, 1)] + [interval_bounds(n, lo, hi) for n in range(1, max_n + 1)]
    return np.asarray(rows, np.int32)


@partial(jax.jit, static_argnames=("lo", "hi", "axis"))
def interval_mean(x: jax.Array, lo: float = 0.0, hi: float = 0.3, axis: int = -1) -> jax.Array:
    """Mean of the values ranked in [lo, hi) along ``axis`` (see ``interval_bounds`` for the count rule).

    (..., n, ...) -> (...) with ``axis`` removed. +inf entries sort last, so masking a value with +inf removes
    it as long as the interval does not reach it.
    """
    start, stop = interval_bounds(x.shape[axis], lo, hi)
    return mean_of_ranks(_last_axis(x, axis), start, stop)
