"""k-center greedy coreset selection (PatchCore's coreset), whole loop inside jit.

Starting from one point, repeatedly add the point farthest from everything selected so far (its distance to
the nearest selected point is largest). PatchCore's original sampler (``ApproximateGreedyCoresetSampler``)
starts differently: each point's initial distance is its mean Euclidean distance to a few random
``start_points``, which are not themselves kept; pass them to use that scheme. Distances are squared Euclidean, ||x||^2 - 2 x.center + ||center||^2,
one matrix-vector product per step (10x faster on CPU than the elementwise form inside the loop); each row's
value depends only on that row, so the sharded and unsharded selections are identical (tested on 1, 3 and 8
devices). Ties pick the lowest index. Selected points are masked out, so the
result never repeats an index even when the data holds duplicates.

An optional Gaussian random projection to ``projection_dim`` dimensions speeds up wide features, as PatchCore
does; it is deterministic given ``key``.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec

from jzad.kernels.sharding import AXIS, device_mesh, num_shards_of, pad_rows, padded_size

_SELECTED = -1.0


def random_projection(x: jax.Array, projection_dim: int, key: jax.Array) -> jax.Array:
    """Project (n, c) -> (n, projection_dim) with a Gaussian matrix scaled by 1/sqrt(projection_dim)."""
    if projection_dim < 1:
        raise ValueError(f"projection_dim must be >= 1, got {projection_dim}")
    matrix = jax.random.normal(key, (x.shape[-1], projection_dim), jnp.float32)
    return jnp.matmul(
        x.astype(jnp.float32), matrix, precision=jax.lax.Precision.HIGHEST
    ) / jnp.sqrt(jnp.float32(projection_dim))


def _check_k(k: int, n: int) -> None:
    if not isinstance(k, int) or not 1 <= k <= n:
        raise ValueError(f"k must be an integer in [1, {n}] for {n} points, got {k!r}")


def _greedy_on_shards(
    points: jax.Array, valid: jax.Array, k: int, start_index: jax.Array, block: int, anchors: jax.Array | None
):
    """Per-device body: points (b, d) block, valid (b,) -> selected global indices (k,) (same on all).

    Padding rows (valid False) hold -inf and selected rows -1, so neither is picked while a real point is left.
    With anchors (s, d) (replicated) the initial distance is the squared mean Euclidean distance to them and
    the first pick is the farthest point; otherwise the first pick is start_index.
    """
    first_row = jax.lax.axis_index(AXIS).astype(jnp.int32) * block
    local_ids = jnp.arange(block, dtype=jnp.int32)

    def vector_at(global_index):
        local = global_index - first_row
        mine = (local >= 0) & (local < block)
        row = points[jnp.clip(local, 0, block - 1)]
        return jax.lax.psum(jnp.where(mine, row, 0.0), AXIS)

    norms = jnp.sum(jnp.square(points), axis=-1)

    def distances_to(center):
        cross = jnp.matmul(points, center, precision=jax.lax.Precision.HIGHEST)
        return jnp.maximum(norms - 2.0 * cross + jnp.sum(center * center), 0.0)

    def mark_selected(min_dist, global_index):
        return jnp.where(local_ids + first_row == global_index, _SELECTED, min_dist)

    selected = jnp.zeros((k,), jnp.int32)
    if anchors is None:
        start_index = start_index.astype(jnp.int32)
        min_dist = jnp.where(valid, distances_to(vector_at(start_index)), -jnp.inf)
        min_dist = mark_selected(min_dist, start_index)
        selected = selected.at[0].set(start_index)
        first = 1
    else:
        distances = [jnp.sqrt(distances_to(anchors[j])) for j in range(anchors.shape[0])]
        mean_distance = sum(distances) / anchors.shape[0]
        min_dist = jnp.where(valid, jnp.square(mean_distance), -jnp.inf)
        first = 0

    def step(i, state):
        min_dist, selected = state
        local_best = jnp.argmax(min_dist).astype(jnp.int32)
        best_values = jax.lax.all_gather(min_dist[local_best], AXIS)
        best_indices = jax.lax.all_gather(local_best + first_row, AXIS)
        chosen = best_indices[jnp.argmax(best_values)]
        min_dist = jnp.minimum(min_dist, distances_to(vector_at(chosen)))
        min_dist = mark_selected(min_dist, chosen)
        return min_dist, selected.at[i].set(chosen)

    _, selected = jax.lax.fori_loop(first, k, step, (min_dist, selected))
    return selected


@partial(jax.jit, static_argnames=("k", "mesh", "projection_dim"))
def sharded_kcenter_greedy(
    x: jax.Array,
    k: int,
    mesh: Mesh,
    start_index: int | jax.Array = 0,
    *,
    projection_dim: int | None = None,
    key: jax.Array | None = None,
    start_points: jax.Array | None = None,
    valid: jax.Array | None = None,
) -> jax.Array:
    """k-center greedy over the rows of x (n, c) split across ``mesh``: -> (k,) int32 indices in pick order.

    ``start_index`` is the first pick (traced, so changing it does not recompile). With ``projection_dim``
    the distances are computed on a random projection drawn from ``key``. ``start_points`` (s,) int
    switches to PatchCore's start (see the module docstring); start_index must then stay 0. ``valid`` (n,)
    bool: only those rows are candidates (rows of a set padded to a fixed size); the picks among them are those
    of the valid rows alone, and picks past their count repeat earlier ones.
    """
    n = x.shape[0]
    _check_k(k, n)
    points = x.astype(jnp.float32)
    if projection_dim is not None:
        if key is None:
            raise ValueError("projection_dim needs a PRNG key (key=jax.random.key(seed))")
        points = random_projection(points, projection_dim, key)
    anchors = None
    if start_points is not None:
        if isinstance(start_index, int) and start_index != 0:
            raise ValueError("pass either start_index or start_points, not both")
        start_points = jnp.asarray(start_points)
        if start_points.ndim != 1 or start_points.shape[0] < 1 or not jnp.issubdtype(start_points.dtype, jnp.integer):
            raise ValueError(f"start_points must be a non-empty (s,) integer array, got {start_points.shape}")
        anchors = points[jnp.clip(start_points, 0, n - 1)]
    total = padded_size(n, mesh)
    block = total // num_shards_of(mesh)
    if valid is not None and valid.shape != (n,):
        raise ValueError(f"valid: expected ({n},) like the rows of x, got shape {valid.shape}")
    in_set = jnp.arange(total) < n
    valid = in_set if valid is None else in_set & pad_rows(valid.astype(bool), total)
    body = partial(_greedy_on_shards, k=k, block=block)
    run = jax.shard_map(
        lambda p, v, s, a: body(p, v, start_index=s, anchors=a),
        mesh=mesh,
        in_specs=(PartitionSpec(AXIS), PartitionSpec(AXIS), PartitionSpec(), PartitionSpec()),
        out_specs=PartitionSpec(),
        check_vma=False,
    )
    start = jnp.clip(jnp.asarray(start_index, jnp.int32), 0, n - 1)
    return run(pad_rows(points, total), valid, start, anchors)


def kcenter_greedy(
    x: jax.Array,
    k: int,
    start_index: int | jax.Array = 0,
    *,
    projection_dim: int | None = None,
    key: jax.Array | None = None,
    start_points: jax.Array | None = None,
) -> jax.Array:
    """k-center greedy on one device: the one-shard mesh through the same code as the sharded kernel."""
    return sharded_kcenter_greedy(
        x, k, device_mesh(1), start_index, projection_dim=projection_dim, key=key, start_points=start_points
    )
