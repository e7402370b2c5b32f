"""k-means: k-means++ seeding and a fixed number of Lloyd iterations, whole loops inside jit.

k-means++ (Arthur & Vassilvitskii, 2007): the first centre is drawn with probability proportional to the
point weights, each next one with probability proportional to weight * D^2, D the distance to the nearest
centre chosen so far. Draws are inverse-CDF lookups of k uniforms from ``jax.random.uniform(key, (k,))``,
so a reference can replay them exactly (``kmeans_plusplus_uniforms``). Lloyd: assign every point to its
nearest centre, move each centre to the (weighted) mean of its points; a centre that loses all its points
stays where it was. The iteration count is fixed (no tolerance test), so the result is a pure function of
(points, weights, k, iterations, key) and the loop compiles to one ``fori_loop``.

``active`` (a traced count <= k, default k): only the first ``active`` centre slots are used; the others stay
zero and no point is assigned to them, so problems with different numbers of clusters share one compiled
program of k slots. The result on the active slots is the run with k = active: the uniforms of a (k,) draw
begin with those of an (active,) draw (JAX's partitionable threefry, the default), and a masked slot never
wins an argmin nor moves.

Squared distances are ||x||^2 - 2 x.c + ||c||^2 with the GEMM at HIGHEST precision (no TF32 on GPUs); ties
go to the lowest centre index (argmin).

Why not ott-jax's ``ott.tools.k_means`` (a dependency; read in 0.6.0): its seeding is the greedy k-means++
variant (2 + floor(log k) candidates per step, the one with the lowest potential kept; the first centre
uniform, point weights ignored while seeding), it restarts ``n_init`` times (10) and keeps the lowest inertia,
its Lloyd loop stops when the assignment repeats or the centre shift falls under ``tol`` (a fixed count needs
min_iterations = max_iterations), and an emptied centre jumps to one of the farthest points. Here zero-weight
padding points must never be drawn as centres, a fit is one run of a fixed, known cost (one compiled loop)
and its draws replay exactly in a NumPy reference: so the kernel keeps its own few lines.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jzad.kernels.distances import pairwise_sq_euclidean


class KMeansResult(NamedTuple):
    """centres (k, c) float32; labels (n,) int32 nearest centre of each point after the last update;
    inertia () float32 = sum of weight * squared distance to that centre."""

    centres: jax.Array
    labels: jax.Array
    inertia: jax.Array


def _slot_mask(k: int, active) -> jax.Array:
    """(k,) bool: the centre slots in use (all of them when active is None)."""
    return jnp.arange(k) < (k if active is None else active)


def _check_points(points, k: int, weights) -> None:
    if points.ndim != 2:
        raise ValueError(f"points must be (n, c), got shape {points.shape}")
    n = points.shape[0]
    if not isinstance(k, int) or not 1 <= k <= n:
        raise ValueError(f"k must be an integer in [1, {n}] for {n} points, got {k!r}")
    if weights is not None and weights.shape != (n,):
        raise ValueError(f"weights must be (n,) = ({n},), got shape {weights.shape}")


def kmeans_plusplus_uniforms(key: jax.Array, k: int) -> jax.Array:
    """The (k,) uniforms in [0, 1) that ``kmeans_plusplus`` draws from ``key`` (draw j picks centre j)."""
    return jax.random.uniform(key, (k,), jnp.float32)


def _pick(cumulative: jax.Array, u: jax.Array) -> jax.Array:
    """Inverse CDF: first index whose cumulative mass exceeds u * total (never a zero-mass point)."""
    return jnp.searchsorted(cumulative, u * cumulative[-1], side="right").astype(jnp.int32)


@partial(jax.jit, static_argnames=("k",))
def _plusplus(points, weights, key, active, *, k):
    x = points.astype(jnp.float32)
    n = x.shape[0]
    norms = jnp.sum(x * x, axis=-1)
    uniforms = kmeans_plusplus_uniforms(key, k)
    first = jnp.minimum(_pick(jnp.cumsum(weights), uniforms[0]), n - 1)
    centres = jnp.zeros((k, x.shape[1]), jnp.float32).at[0].set(x[first])
    chosen = jnp.zeros((k,), jnp.int32).at[0].set(first)

    def distances_to(centre):
        cross = jnp.matmul(x, centre, precision=jax.lax.Precision.HIGHEST)
        return jnp.maximum(norms - 2.0 * cross + jnp.dot(centre, centre, precision=jax.lax.Precision.HIGHEST), 0.0)

    def step(j, carry):
        centres, chosen, nearest = carry
        mass = jnp.cumsum(weights * nearest)
        # All remaining mass zero (fewer distinct points than k): fall back to the weights alone.
        mass = jnp.where(mass[-1] > 0, mass, jnp.cumsum(weights))
        index = jnp.minimum(_pick(mass, uniforms[j]), n - 1)
        used = j < active
        centres = centres.at[j].set(jnp.where(used, x[index], 0.0))
        chosen = chosen.at[j].set(jnp.where(used, index, 0))
        return centres, chosen, jnp.minimum(nearest, distances_to(x[index]))

    centres, chosen, _ = jax.lax.fori_loop(1, k, step, (centres, chosen, distances_to(x[first])))
    return centres, chosen


def kmeans_plusplus(points: jax.Array, k: int, key: jax.Array, weights: jax.Array | None = None,
                    active: jax.Array | int | None = None):
    """k-means++ seeding: points (n, c) -> (centres (k, c) float32, indices (k,) int32 of the chosen points).

    weights (n,) >= 0 scale each point's probability (0 = padding, never chosen while another point has mass);
    None = all ones. active: centre slots in use (module docstring; the others are zero rows, index 0).
    Deterministic given key.
    """
    _check_points(points, k, weights)
    w = jnp.ones((points.shape[0],), jnp.float32) if weights is None else weights.astype(jnp.float32)
    return _plusplus(points, w, key, jnp.asarray(k if active is None else active, jnp.int32), k=k)


def assign(points: jax.Array, centres: jax.Array, precision: str = "fp32",
           active: jax.Array | int | None = None) -> tuple[jax.Array, jax.Array]:
    """Nearest centre of each point: (n, c), (k, c) -> (labels (n,) int32, squared distances (n,) float32).
    active: only the first ``active`` centres compete (None: all)."""
    d = pairwise_sq_euclidean(points, centres, precision)
    if active is not None:
        d = jnp.where(_slot_mask(centres.shape[0], active)[None, :], d, jnp.inf)
    labels = jnp.argmin(d, axis=1).astype(jnp.int32)
    return labels, jnp.take_along_axis(d, labels[:, None], axis=1)[:, 0]


@partial(jax.jit, static_argnames=("iterations", "precision"))
def _lloyd(points, weights, init, active, *, iterations, precision):
    x = points.astype(jnp.float32)
    k = init.shape[0]

    def update(_, centres):
        labels, _ = assign(x, centres, precision, active)
        onehot = jax.nn.one_hot(labels, k, dtype=jnp.float32) * weights[:, None]
        mass = jnp.sum(onehot, axis=0)
        sums = jnp.matmul(onehot.T, x, precision=jax.lax.Precision.HIGHEST)
        return jnp.where(mass[:, None] > 0, sums / jnp.maximum(mass, 1e-30)[:, None], centres)

    centres = jax.lax.fori_loop(0, iterations, update, init.astype(jnp.float32))
    labels, sq = assign(x, centres, precision, active)
    return KMeansResult(centres, labels, jnp.sum(weights * sq))


def lloyd(
    points: jax.Array,
    init: jax.Array,
    iterations: int,
    weights: jax.Array | None = None,
    precision: str = "fp32",
    active: jax.Array | int | None = None,
) -> KMeansResult:
    """``iterations`` Lloyd steps from init centres (k, c) on points (n, c); see the module docstring (active:
    the centre slots in use)."""
    _check_points(points, init.shape[0], weights)
    if init.ndim != 2 or init.shape[1] != points.shape[1]:
        raise ValueError(f"init must be (k, {points.shape[1]}), got shape {init.shape}")
    if not isinstance(iterations, int) or iterations < 0:
        raise ValueError(f"iterations must be a non-negative int, got {iterations!r}")
    w = jnp.ones((points.shape[0],), jnp.float32) if weights is None else weights.astype(jnp.float32)
    slots = jnp.asarray(init.shape[0] if active is None else active, jnp.int32)
    return _lloyd(points, w, init, slots, iterations=iterations, precision=precision)


def kmeans(
    points: jax.Array,
    k: int,
    key: jax.Array,
    iterations: int = 30,
    weights: jax.Array | None = None,
    precision: str = "fp32",
    active: jax.Array | int | None = None,
) -> KMeansResult:
    """k-means++ seeding from key, then ``iterations`` Lloyd steps: points (n, c) -> KMeansResult. active: the
    first ``active`` of the k centre slots are used (module docstring); None: all k."""
    init, _ = kmeans_plusplus(points, k, key, weights, active)
    return lloyd(points, init, iterations, weights, precision, active)
