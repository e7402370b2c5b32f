"""``adaptive_avg_pool1d`` over the last axis, equal to PyTorch's.

PyTorch's bin i of an L -> n pool averages [floor(i L / n), ceil((i + 1) L / n)): bins may overlap by one
element when n does not divide L (4608 -> 1024 gives 5-element bins starting every 4.5). The bins are
gathered as (n, widest bin) index windows with a 0/1 mask, so the cost is about n * widest reads per row;
when n divides L it is a plain reshape and mean.
"""

from __future__ import annotations

from functools import lru_cache, partial

import jax
import jax.numpy as jnp
import numpy as np


def adaptive_bins(length: int, out: int) -> tuple[np.ndarray, np.ndarray]:
    """(starts, ends) int arrays of PyTorch's adaptive pooling bins for length -> out."""
    index = np.arange(out, dtype=np.int64)
    starts = (index * length) // out
    ends = -((-(index + 1) * length) // out)
    return starts, ends


@lru_cache(maxsize=64)
def _windows(length: int, out: int) -> tuple[np.ndarray, np.ndarray]:
    starts, ends = adaptive_bins(length, out)
    widest = int((ends - starts).max())
    offsets = np.arange(widest)
    inside = offsets[None, :] < (ends - starts)[:, None]
    index = np.where(inside, starts[:, None] + offsets[None, :], starts[:, None]).astype(np.int32)
    weights = (inside / (ends - starts)[:, None]).astype(np.float32)
    return index, weights


@partial(jax.jit, static_argnames=("out",))
def _pool(x: jax.Array, out: int) -> jax.Array:
    length = x.shape[-1]
    x = x.astype(jnp.float32)
    if length % out == 0:
        return jnp.mean(x.reshape(*x.shape[:-1], out, length // out), axis=-1)
    index, weights = _windows(length, out)
    return jnp.sum(x[..., index] * weights, axis=-1)


def adaptive_avg_pool1d(x: jax.Array, out: int) -> jax.Array:
    """(..., L) -> (..., out) float32 means over PyTorch's adaptive bins (``F.adaptive_avg_pool1d``)."""
    if isinstance(out, bool) or not isinstance(out, (int, np.integer)) or out < 1:
        raise ValueError(f"out must be a positive int, got {out!r}")
    if getattr(x, "ndim", 0) < 1 or x.shape[-1] < 1:
        raise ValueError(f"x must have a non-empty last axis, got shape {np.shape(x)}")
    return _pool(x, out=int(out))
