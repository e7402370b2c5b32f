"""Tiled nearest-neighbour distances from query vectors to groups of reference vectors.

For queries (q, c) and R reference groups (R, m, c) the result (q, R) holds, for each query, the distance to
the nearest member of each group. The work is split into tiles of ``query_tile`` queries x ``group_tile``
groups; each tile is one GEMM of (query_tile, c) x (c, group_tile * m) whose min over m is taken inside the
loop, so peak memory is about query_tile * group_tile * m floats whatever q and R are. Sizes that do not
divide the tiles are padded and the padding is sliced off.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from jax.sharding import Mesh

from jzad.kernels.distances import check_precision, dot_nt, squared_norms
from jzad.kernels.sharding import map_row_shards


def _pad_axis(x: jax.Array, axis: int, multiple: int) -> jax.Array:
    pad = (-x.shape[axis]) % multiple
    if pad == 0:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, pad)
    return jnp.pad(x, widths)


def tile_counts(size: int, tile: int) -> tuple[int, int]:
    """(effective tile, number of tiles) covering ``size`` items; the tile shrinks to ``size`` when larger."""
    if tile < 1:
        raise ValueError(f"tile sizes must be >= 1, got {tile}")
    tile = min(tile, size)
    return tile, -(-size // tile)


@partial(jax.jit, static_argnames=("query_tile", "group_tile", "precision", "squared"))
def nearest_group_distance(
    queries: jax.Array,
    refs: jax.Array,
    *,
    query_tile: int = 1024,
    group_tile: int = 8,
    precision: str = "fp32",
    squared: bool = False,
) -> jax.Array:
    """Distance from each query to the nearest member of each reference group.

    queries (q, c), refs (R, m, c) -> (q, R) float32; Euclidean, or squared Euclidean when ``squared``.
    Memory is bounded by the tile sizes (see the module docstring); the min is fused into the tile loop.
    """
    check_precision(precision)
    if queries.ndim != 2 or refs.ndim != 3 or queries.shape[1] != refs.shape[2]:
        raise ValueError(
            f"expected queries (q, c) and refs (R, m, c) with equal c, got {queries.shape} and {refs.shape}"
        )
    q, _ = queries.shape
    num_groups, m, c = refs.shape
    qt, num_q_tiles = tile_counts(q, query_tile)
    gt, num_g_tiles = tile_counts(num_groups, group_tile)

    query_tiles = _pad_axis(queries, 0, qt).reshape(num_q_tiles, qt, c)
    group_tiles = _pad_axis(refs, 0, gt).reshape(num_g_tiles, gt * m, c)
    group_norms = squared_norms(group_tiles)

    def one_query_tile(query_tile_rows: jax.Array) -> jax.Array:
        query_norms = squared_norms(query_tile_rows)

        def one_group_tile(carry, tile):
            members, member_norms = tile
            cross = dot_nt(query_tile_rows, members, precision)
            sq = query_norms[:, None] + member_norms[None, :] - 2.0 * cross
            return carry, jnp.min(sq.reshape(qt, gt, m), axis=-1)

        _, mins = jax.lax.scan(one_group_tile, None, (group_tiles, group_norms))
        return jnp.moveaxis(mins, 0, 1).reshape(qt, num_g_tiles * gt)

    mins = jax.lax.map(one_query_tile, query_tiles).reshape(num_q_tiles * qt, num_g_tiles * gt)
    mins = jnp.maximum(mins[:q, :num_groups], 0.0)
    return mins if squared else jnp.sqrt(mins)


@partial(jax.jit, static_argnames=("mesh", "query_tile", "group_tile", "precision", "squared"))
def sharded_nearest_group_distance(
    queries: jax.Array,
    refs: jax.Array,
    mesh: Mesh,
    *,
    query_tile: int = 1024,
    group_tile: int = 8,
    precision: str = "fp32",
    squared: bool = False,
) -> jax.Array:
    """``nearest_group_distance`` with the queries split over the devices of ``mesh``; refs replicated.

    queries (q, c), refs (R, m, c) -> (q, R). q need not divide by the shard count (rows are padded).
    """

    def block(query_rows, first_row, ref_groups):
        del first_row
        return nearest_group_distance(
            query_rows,
            ref_groups,
            query_tile=query_tile,
            group_tile=group_tile,
            precision=precision,
            squared=squared,
        )

    return map_row_shards(block, mesh, queries, refs)
