"""MuSc: zero-shot anomaly scoring of unlabeled images by mutual scoring (Li et al., ICLR 2024).

Stages, each a pure function over arrays that works under jit (names follow the paper):
- ``lnamd``: local neighbourhood aggregation with multiple degrees. Joint layer norm of each image's
  (h, w, C) token map (no affine, eps 1e-5), r x r average pooling (stride 1, zero padding counted in the
  mean), L2 normalisation of every patch vector.
- ``mutual_scores`` (MSM): every patch p of image i against every other image j, d_j(p) = min_q ||z_ip - z_jq||;
  the patch score is the mean of the k smallest d_j(p) over j != i, k = max(1, floor(0.3 (N - 1))). The k >= 1
  guard is our deviation for tiny sets (N < 5), where the paper's k would be 0. Distances come from the GEMM
  form ||a||^2 + ||b||^2 - 2 a.b; a squared distance within its rounding error (``rounding_floor``: for unit
  LNAMD features of C = 1024, d^2 <= 1.5e-5, d <= 3.9e-3; with bf16 GEMMs d <= 0.088, what bfloat16 inputs
  cannot resolve) is exactly 0, so identical patches score exactly 0 and a set of identical images scores 0
  everywhere (its metrics are those of all-tied scores: AUROC 0.5), instead of the float noise the square root
  would otherwise turn into hot spots (deviation: the reference's cdist keeps that noise).
- ``rscin``: re-scoring with the constrained image-level neighbourhood: min-max normalised image scores
  smoothed over each image's k most similar images (by CLIP image embedding), averaged over the windows.
- ``musc_body``: the whole method over the tapped layers of one set (``score_musc``: its public call on
  tokens); layers and r values are scored
  separately and their maps averaged (no Gaussian smoothing), image score = max of the map.

Memory: MSM runs over blocks of query images against the pool through the tiled nearest-neighbour kernel,
so it needs about block * M * N floats besides the features, for any N. With a mesh the query images are
split over devices; the pool is replicated. The same code runs one shard.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec

from jzad.kernels.distances import check_precision, dot_nt, l2_normalize, squared_norms, zero_below_rounding
from jzad.kernels.nearest import nearest_group_distance
from jzad.kernels.select import interval_bounds, interval_table, mean_of_ranks
from jzad.kernels.resize import resize_bilinear
from jzad.kernels.sharding import device_mesh, map_row_shards
from jzad.methods.base import (
    BackboneRun,
    FeatureRequest,
    Features,
    Method,
    OptionError,
    RunContext,
    Scores,
    check_finite,
    option_errors,
    register,
)
from jzad.features.types import VALID, tokens_to_grid
from jzad.methods.table import method_row

LAYER_NORM_EPS = 1e-5
MODES = ("zero_shot", "few_shot", "plus")
SCHEDULES = ("auto", "rows", "pairs")
TARGET_BLOCK_ROWS = 1024


@dataclass(frozen=True)
class MuScConfig:
    """Static configuration of MuSc (hashable, so it can be a static jit argument).

    r_list: aggregation degrees (odd window sizes) of LNAMD. interval: the fractional rank interval of the
    other images' distances averaged by MSM (paper: lowest 30%). windows: RsCIN neighbourhood sizes
    (MVTec AD / BTAD [1, 2, 3]; VisA [1, 8, 9]; empty: RsCIN off). mode: "zero_shot" (test images only), "few_shot" (normal
    reference images added to the scoring pool) or "plus" (MuSc+: each patch scored by its nearest
    reference patch only). image_block: query images per MSM step (memory ~ image_block * M * N floats);
    None picks enough images for about ``TARGET_BLOCK_ROWS`` query rows per GEMM (1 image at M = 1369).
    query_tile, group_tile: tiles of the nearest-neighbour kernel. precision: "fp32" or "bf16" GEMMs.
    map_size: side of the upsampled maps (the input image size) whose max is the image score, as in the
    reference; None takes the max over the patch grid.
    schedule: MSM work order. "rows": each block of query images against the whole pool (memory
    ~ image_block * M * N floats, any N). "pairs" (zero_shot only): one distance block between image tiles a
    and b serves both directions (row minima score a against b, column minima b against a), half the FLOPs,
    but holds an (N, M, N) buffer per device. "auto": "pairs" when that buffer fits ``pair_buffer_bytes``
    and the mode is zero_shot, else "rows". pair_tile: images per tile of the "pairs" schedule
    (None: as for image_block, so small grids do not pay a loop step per image pair).
    """

    r_list: tuple[int, ...] = (1, 3, 5)
    interval: tuple[float, float] = (0.0, 0.3)
    windows: tuple[int, ...] = (1, 2, 3)
    mode: str = "zero_shot"
    image_block: int | None = None
    query_tile: int = 2048
    group_tile: int = 8
    precision: str = "fp32"
    map_size: int | None = None
    schedule: str = "auto"
    pair_tile: int | None = None
    pair_buffer_bytes: int = 2 << 30

    def __post_init__(self):
        if not self.r_list or any(r < 1 or r % 2 == 0 for r in self.r_list):
            raise ValueError(f"r_list: expected odd window sizes >= 1, got {self.r_list}")
        lo, hi = self.interval
        if not 0.0 <= lo < hi <= 1.0:
            raise ValueError(f"interval: expected 0 <= lo < hi <= 1, got {self.interval}")
        if any(not isinstance(k, int) or k < 1 for k in self.windows):
            raise ValueError(f"windows: expected sizes >= 1 (an empty tuple turns RsCIN off), got {self.windows}")
        if self.mode not in MODES:
            raise ValueError(f"mode: expected one of {MODES}, got {self.mode!r}")
        if self.image_block is not None and self.image_block < 1:
            raise ValueError(f"image_block: expected >= 1, got {self.image_block}")
        check_precision(self.precision)
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule: expected one of {SCHEDULES}, got {self.schedule!r}")
        if self.pair_tile is not None and self.pair_tile < 1:
            raise ValueError(f"pair_tile: expected >= 1, got {self.pair_tile}")
        if self.map_size is not None and self.map_size < 1:
            raise ValueError(f"map_size: expected a positive image side or None, got {self.map_size}")


@dataclass(frozen=True)
class MuScResult:
    """Outputs of ``score_musc`` for N images on an h x w patch grid.

    patch_scores (N, h, w): mean MSM score over layers and degrees. image_scores_raw (N,): max of the map
    upsampled to ``map_size``. image_scores (N,): after RsCIN (the raw scores when RsCIN is off).
    """

    patch_scores: jax.Array
    image_scores_raw: jax.Array
    image_scores: jax.Array


def joint_layer_norm(grid: jax.Array, eps: float = LAYER_NORM_EPS) -> jax.Array:
    """Normalise each image's whole (h, w, C) map to zero mean, unit variance (biased), no affine."""
    x = grid.astype(jnp.float32)
    mean = jnp.mean(x, axis=(1, 2, 3), keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=(1, 2, 3), keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + eps)


def average_pool(grid: jax.Array, r: int) -> jax.Array:
    """r x r mean over (N, h, w, C), stride 1, zero padding r // 2 counted in the mean (count_include_pad)."""
    if r == 1:
        return grid
    pad = r // 2
    summed = jax.lax.reduce_window(
        grid, 0.0, jax.lax.add, (1, r, r, 1), (1, 1, 1, 1), ((0, 0), (pad, pad), (pad, pad), (0, 0))
    )
    return summed / float(r * r)


@partial(jax.jit, static_argnames=("r",))
def lnamd(grid: jax.Array, r: int) -> jax.Array:
    """LNAMD of one layer: (N, h, w, C) patch tokens -> (N, h*w, C) aggregated, L2-normalised features."""
    if grid.ndim != 4:
        raise ValueError(f"lnamd: expected tokens (N, h, w, C), got shape {grid.shape}")
    if r < 1 or r % 2 == 0:
        raise ValueError(f"lnamd: r must be an odd window size >= 1, got {r}")
    pooled = average_pool(joint_layer_norm(grid), r)
    n, h, w, c = pooled.shape
    return l2_normalize(pooled.reshape(n, h * w, c))


def _msm_block_fn(config: MuScConfig, num_test: int, exclude_self: bool, start, stop):
    """Per-device MSM body: a block of query images against the replicated pool -> (b, M) scores.

    ``start``/``stop`` are the static rank bounds, or None when they travel as the traced operand ``bounds``
    (2,) int32 with a pool mask ``pool_valid`` (P,) bool (empty pool slots count as +inf, ranked last).
    """

    def block_fn(query_images, first_row, pool, pool_valid=None, bounds=None):
        rows, m, c = query_images.shape
        b = min(images_per_step(config.image_block, m), rows)
        steps = -(-rows // b)
        padded = jnp.pad(query_images, ((0, steps * b - rows), (0, 0), (0, 0)))
        pool_ids = jnp.arange(pool.shape[0])
        pool_scale = jnp.max(squared_norms(pool))
        lo, hi = (start, stop) if bounds is None else (0 if config.interval[0] == 0 else bounds[0], bounds[1])

        def one_step(step):
            images = jax.lax.dynamic_slice_in_dim(padded, step * b, b).reshape(b * m, c)
            squared = nearest_group_distance(
                images,
                pool,
                query_tile=config.query_tile,
                group_tile=config.group_tile,
                precision=config.precision,
                squared=True,
            )
            scale = squared_norms(images)[:, None] + pool_scale
            dist = jnp.sqrt(zero_below_rounding(squared, scale, c, config.precision)).reshape(b, m, -1)
            if exclude_self:
                image_ids = first_row + step * b + jnp.arange(b)
                is_self = (image_ids[:, None] == pool_ids[None, :]) & (pool_ids[None, :] < num_test)
                dist = jnp.where(is_self[:, None, :], jnp.inf, dist)
            if pool_valid is not None:
                dist = jnp.where(pool_valid[None, None, :], dist, jnp.inf)
            return mean_of_ranks(dist, lo, hi)

        scores = jax.lax.map(one_step, jnp.arange(steps))
        return scores.reshape(steps * b, m)[:rows]

    return block_fn


def images_per_step(requested: int | None, patches: int) -> int:
    """Images per MSM step: ``requested``, or enough for about TARGET_BLOCK_ROWS patch rows when None."""
    if requested is not None:
        return requested
    return max(1, TARGET_BLOCK_ROWS // patches)


def resolve_schedule(config: MuScConfig, num_images: int, patches: int) -> str:
    """The MSM schedule ``config.schedule`` means for N images of M patches ("rows" or "pairs")."""
    if config.schedule == "pairs" and config.mode != "zero_shot":
        raise ValueError(f"schedule 'pairs' supports mode 'zero_shot' only, got mode {config.mode!r}")
    if config.schedule != "auto":
        return config.schedule
    tile = images_per_step(config.pair_tile, patches)
    padded = -(-num_images // tile) * tile
    fits = padded * patches * padded * 4 <= config.pair_buffer_bytes
    return "pairs" if config.mode == "zero_shot" and fits else "rows"


def _pair_list(num_tiles: int, num_shards: int) -> jax.Array:
    """Tile pairs (a <= b) dealt round-robin to shards: (shards, pairs per shard, 2) int32.

    The list is padded by repeating pair (0, 0), whose second evaluation writes the same values again.
    """
    pairs = [(a, b) for a in range(num_tiles) for b in range(a, num_tiles)]
    per_shard = -(-len(pairs) // num_shards)
    pairs += [(0, 0)] * (per_shard * num_shards - len(pairs))
    table = jnp.asarray(pairs, jnp.int32).reshape(per_shard, num_shards, 2)
    return jnp.swapaxes(table, 0, 1)


def _pairs_mutual_scores(features: jax.Array, config: MuScConfig, mesh: Mesh, start, stop,
                         valid: jax.Array | None = None) -> jax.Array:
    """Zero-shot MSM with the symmetric schedule: (N, M, C) -> (N, M); see ``MuScConfig.schedule``. ``valid``
    (N,) bool masks padding images out of the pool (the rank bounds then travel as traced values)."""
    n, m, c = features.shape
    t = min(images_per_step(config.pair_tile, m), n)
    tiles = -(-n // t)
    padded = tiles * t
    tile_rows = jnp.pad(features, ((0, padded - n), (0, 0), (0, 0))).reshape(tiles, t * m, c)
    tile_norms = jnp.sum(jnp.square(tile_rows), axis=-1)
    shards = int(mesh.shape["data"])
    pairs = _pair_list(tiles, shards)

    def per_device(device_pairs, rows, norms):
        def one_pair(buffer, pair):
            a, b = pair[0], pair[1]
            cross = dot_nt(rows[a], rows[b], config.precision)
            sq = norms[a][:, None] + norms[b][None, :] - 2.0 * cross
            blocks = sq.reshape(t, m, t, m)
            a_vs_b = jnp.min(blocks, axis=3)
            b_vs_a = jnp.transpose(jnp.min(blocks, axis=1), (1, 2, 0))
            buffer = jax.lax.dynamic_update_slice(buffer, a_vs_b, (a * t, 0, b * t))
            return jax.lax.dynamic_update_slice(buffer, b_vs_a, (b * t, 0, a * t)), None

        empty = jnp.full((padded, m, padded), jnp.inf, jnp.float32)
        filled, _ = jax.lax.scan(one_pair, empty, device_pairs[0])
        return jax.lax.pmin(filled, "data")

    run = jax.shard_map(
        per_device,
        mesh=mesh,
        in_specs=(PartitionSpec("data"), PartitionSpec(), PartitionSpec()),
        out_specs=PartitionSpec(),
        check_vma=False,
    )
    squared = jnp.maximum(run(pairs, tile_rows, tile_norms)[:n, :, :n], 0.0)
    norms = squared_norms(features)
    squared = zero_below_rounding(squared, norms[:, :, None] + jnp.max(norms), c, config.precision)
    ids = jnp.arange(n)
    squared = jnp.where((ids[:, None] == ids[None, :])[:, None, :], jnp.inf, squared)
    if valid is not None:
        squared = jnp.where(valid[None, None, :], squared, jnp.inf)
    distances = jnp.sqrt(squared)
    return mean_of_ranks(distances, start, stop)


def mutual_scores(
    features: jax.Array,
    config: MuScConfig = MuScConfig(),
    mesh: Mesh | None = None,
    references: jax.Array | None = None,
    valid: jax.Array | None = None,
) -> jax.Array:
    """MSM patch scores of one (layer, r): features (N, M, C) -> (N, M); see ``_mutual_scores``.

    Only the fields MSM reads enter the compile key (``msm_key``), so changing RsCIN windows, r values or the
    map size never recompiles MSM. ``valid`` (N,) bool (zero_shot, plus): the rows that are real images; the
    others are padding (a set padded to a bucket size, so sets of nearby sizes share one program): they are
    left out of every pool and their own scores are undefined.
    """
    return _mutual_scores(features, msm_key(config), mesh, references, valid)


def msm_key(config: MuScConfig) -> MuScConfig:
    """``config`` with the fields MSM does not read reset to their defaults (the MSM compile key)."""
    return dataclasses.replace(config, r_list=(1,), windows=(), map_size=None)


@partial(jax.jit, static_argnames=("config", "mesh"))
def _mutual_scores(
    features: jax.Array,
    config: MuScConfig,
    mesh: Mesh | None,
    references: jax.Array | None,
    valid: jax.Array | None = None,
) -> jax.Array:
    """MSM patch scores of one (layer, r): features (N, M, C) -> (N, M).

    zero_shot: pool = the N test images, each image excluded against itself, k from N - 1 others.
    few_shot: pool = test images + references (R, M, C); k from N - 1 + R others.
    plus: pool = references only; the score is the nearest reference patch distance (k = 1).
    ``mesh`` splits the query images over devices (None = one device, same code path).
    """
    if features.ndim != 3:
        raise ValueError(f"mutual_scores: expected features (N, M, C), got shape {features.shape}")
    num_test = features.shape[0]
    mode = config.mode
    if mode in ("few_shot", "plus"):
        if references is None or references.ndim != 3 or references.shape[1:] != features.shape[1:]:
            got = None if references is None else references.shape
            raise ValueError(
                f"mutual_scores: mode {mode!r} needs references (R, M, C) matching features "
                f"{features.shape[1:]}, got {got}"
            )
    elif references is not None:
        raise ValueError("mutual_scores: references are only used by modes 'few_shot' and 'plus'")
    if valid is not None and mode == "few_shot":
        raise ValueError("mutual_scores: padding rows (valid) are supported in modes 'zero_shot' and 'plus' only")
    if mode == "plus":
        pool, exclude_self, start, stop = references, False, 0, 1
        valid = None
    else:
        pool = features if mode == "zero_shot" else jnp.concatenate([features, references], axis=0)
        others = pool.shape[0] - 1
        if others < 1:
            raise ValueError(f"mutual_scores: needs at least 2 images in the pool, got {pool.shape[0]}")
        exclude_self = True
        start, stop = interval_bounds(others, *config.interval)
    mesh = device_mesh(1) if mesh is None else mesh
    bounds = None
    if valid is not None:
        table = jnp.asarray(interval_table(pool.shape[0] - 1, *config.interval))
        bounds = table[jnp.maximum(jnp.sum(valid.astype(jnp.int32)) - 1, 0)]
        start = 0 if config.interval[0] == 0 else bounds[0]
        stop = bounds[1]
    if resolve_schedule(config, num_test, features.shape[1]) == "pairs":
        return _pairs_mutual_scores(features.astype(jnp.float32), config, mesh, start, stop, valid)
    pool = pool.astype(jnp.float32)
    if valid is None:
        block_fn = _msm_block_fn(config, num_test, exclude_self, start, stop)
        return map_row_shards(block_fn, mesh, features.astype(jnp.float32), pool)
    block_fn = _msm_block_fn(config, num_test, exclude_self, None, None)
    return map_row_shards(block_fn, mesh, features.astype(jnp.float32), pool, valid, bounds)


@partial(jax.jit, static_argnames=("num_queries", "config", "mesh"))
def masked_mutual_scores(
    pool: jax.Array,
    pool_valid: jax.Array,
    num_queries: int,
    config: MuScConfig = MuScConfig(),
    mesh: Mesh | None = None,
) -> jax.Array:
    """Zero-shot MSM over a pool with empty slots: pool (P, M, C), pool_valid (P,) bool -> (num_queries, M).

    Pool rows 0..num_queries-1 are the queries; each is scored against every other valid row, with k of the
    interval from the real number of others n = sum(pool_valid) - 1 (a traced count: one program serves a
    bank at any fill). With every row valid this is ``mutual_scores`` on the pool's first rows (the "rows"
    schedule), bit for bit when the interval starts at 0. Rows of invalid queries are undefined; with no
    valid other image (n = 0) every score is +inf.
    """
    if pool.ndim != 3 or pool_valid.shape != pool.shape[:1]:
        raise ValueError(f"masked_mutual_scores: expected pool (P, M, C) and pool_valid (P,), got {pool.shape} "
                         f"and {pool_valid.shape}")
    if not 1 <= num_queries <= pool.shape[0]:
        raise ValueError(f"num_queries: expected 1..{pool.shape[0]} (the pool rows), got {num_queries}")
    if config.mode != "zero_shot":
        raise ValueError(f"masked_mutual_scores: mode 'zero_shot' only (the bank is the pool), got {config.mode!r}")
    table = jnp.asarray(interval_table(pool.shape[0] - 1, *config.interval))
    others = jnp.maximum(jnp.sum(pool_valid.astype(jnp.int32)) - 1, 0)
    bounds = table[others]
    block_fn = _msm_block_fn(config, num_queries, True, None, None)
    mesh = device_mesh(1) if mesh is None else mesh
    pool = pool.astype(jnp.float32)
    return map_row_shards(block_fn, mesh, pool[:num_queries], pool, pool_valid, bounds)


RSCIN_BLOCK = 256


@partial(jax.jit, static_argnames=("windows", "block"))
def rscin(image_scores: jax.Array, image_embeds: jax.Array, windows: tuple[int, ...] = (1, 2, 3),
          block: int = RSCIN_BLOCK) -> jax.Array:
    """RsCIN re-scoring: (N,) scores and (N, D) image embeddings -> (N,) re-scored.

    s = min-max normalised scores (all zeros when the scores are constant); W = F F^T over L2-normalised
    embeddings; per window k keep each row's k largest entries (self included), divide by their sum, and
    smooth s with them; the result is the mean over the windows. A window larger than N is clamped to N.
    W is computed ``block`` rows at a time, keeping only each row's largest entries, so memory is
    block * N floats, not N^2 (a category of 10,000 images would otherwise need a 400 MB matrix).
    """
    if image_scores.ndim != 1 or image_embeds.ndim != 2 or image_embeds.shape[0] != image_scores.shape[0]:
        raise ValueError(
            f"rscin: expected scores (N,) and embeddings (N, D), got {image_scores.shape} and {image_embeds.shape}"
        )
    s = image_scores.astype(jnp.float32)
    span = jnp.max(s) - jnp.min(s)
    s = jnp.where(span > 0, (s - jnp.min(s)) / jnp.where(span > 0, span, 1.0), 0.0)
    f = l2_normalize(image_embeds.astype(jnp.float32))
    n = s.shape[0]
    widest = min(max(windows), n)
    rows = min(block, n)
    steps = -(-n // rows)
    padded = jnp.pad(f, ((0, steps * rows - n), (0, 0))).reshape(steps, rows, -1)

    def neighbours(part):
        return jax.lax.top_k(jnp.matmul(part, f.T, precision=jax.lax.Precision.HIGHEST), widest)

    values, indices = jax.lax.map(neighbours, padded)
    values = values.reshape(steps * rows, widest)[:n]
    indices = indices.reshape(steps * rows, widest)[:n]
    smoothed = []
    for k in windows:
        top = values[:, :min(k, n)]
        weights = top / jnp.sum(top, axis=-1, keepdims=True)
        smoothed.append(jnp.sum(weights * s[indices[:, :min(k, n)]], axis=-1))
    return jnp.mean(jnp.stack(smoothed), axis=0)


@partial(jax.jit, static_argnames=("size",))
def max_of_upsampled(patch_scores: jax.Array, size: int | None) -> jax.Array:
    """(N, h, w) -> (N,) max of each map after ``upsample`` to ``size`` (patch-grid max when None)."""
    if size is None:
        return jnp.max(patch_scores, axis=(1, 2))
    return jax.lax.map(lambda one: jnp.max(resize_bilinear(one[None], size, align_corners=True)), patch_scores)


def grid_features(grids: tuple[jax.Array, ...], r_list: tuple[int, ...]) -> list[jax.Array]:
    """LNAMD features for every (layer, r) of (N, h, w, C) grids: list of (N, h*w, C), layers outer, degrees
    inner."""
    return [lnamd(grid, r) for grid in grids for r in r_list]


# --------------------------------------------------------------------------------------------- method seam


class MuScState(NamedTuple):
    """Fitted MuSc state: the reference images' layer grids (R, h, w, C) per tap (few_shot / plus), else ()."""

    references: tuple = ()


def _keep(queries: Features) -> dict:
    return {} if queries.embeds is None else {"embeds": queries.embeds}


def musc_fit(config: MuScConfig, references: Features | None = None, mesh: Mesh | None = None,
             prepared=None) -> MuScState:
    """MuSc takes nothing from references in zero-shot mode; few_shot / plus keep their layer grids."""
    del mesh, prepared
    if config.mode == "zero_shot":
        return MuScState()
    if references is None:
        raise ValueError(f"references: MuSc mode {config.mode!r} needs normal reference images (R >= 1), got none")
    return MuScState(tuple(references.layers))


def musc_body(config: MuScConfig, state: MuScState, queries: Features, mesh: Mesh | None, run):
    """MuSc over one pool of queries -> (Scores, state), each stage called through ``run`` ("lnamd", "msm",
    "upsample"; see ``jzad.methods.base``). Patch scores (N, h, w): the mean MSM map over layers x degrees.
    Image scores are the max of the maps upsampled to ``config.map_size``, before RsCIN (``musc_finalize``
    re-scores over the whole category). ``queries.extras[VALID]`` (N,) bool, when present, marks the real
    images of a pool padded to a bucket size (``musc_pads``); padding rows score undefined values."""
    n, h, w, _ = queries.layers[0].shape
    valid = queries.extras.get(VALID)
    total = None
    for index, grid in enumerate(queries.layers):
        for r in config.r_list:
            feats = run("lnamd", lnamd, grid, r)
            refs = run("lnamd", lnamd, state.references[index], r) if state.references else None
            scores = run("msm", mutual_scores, feats, config, mesh, refs, valid)
            total = scores if total is None else total + scores
            del feats, refs
    patch = (total / (len(queries.layers) * len(config.r_list))).reshape(n, h, w)
    raw = run("upsample", max_of_upsampled, patch, config.map_size)
    return Scores(patch, raw, _keep(queries)), state


def musc_score(config: MuScConfig, state: MuScState, queries: Features, mesh: Mesh | None = None):
    """``musc_body`` as one jitted program (the registered method's ``score``) -> (Scores, state)."""
    return METHOD.score(config, state, queries, mesh)


def score_musc(
    layer_tokens: tuple[jax.Array, ...],
    image_embeds: jax.Array | None,
    config: MuScConfig = MuScConfig(),
    mesh: Mesh | None = None,
    reference_tokens: tuple[jax.Array, ...] | None = None,
) -> MuScResult:
    """MuSc over one set: tapped tokens (L x (N, 1 + h*w, C)) and image embeddings (N, D) -> MuScResult.

    A thin call into the method's one scoring program (``musc_score``) and RsCIN (``musc_finalize``). The image
    score is the max of the map upsampled to ``config.map_size``. ``image_embeds`` None skips RsCIN. Tokens or
    embeddings holding NaN or inf raise ValueError naming the images (by index), since one such image would
    turn every score of the pool into NaN. Works inside a user's own ``jax.jit``.
    """
    if mesh is not None and not isinstance(mesh, Mesh):
        raise ValueError(f"mesh: expected a jax.sharding.Mesh or None, got {type(mesh).__name__}")
    if not layer_tokens:
        raise ValueError("score_musc: expected at least one tapped layer")
    if reference_tokens is not None and len(reference_tokens) != len(layer_tokens):
        raise ValueError(
            f"reference_tokens: expected {len(layer_tokens)} layers like layer_tokens, got {len(reference_tokens)}"
        )
    check_finite((tuple(layer_tokens), image_embeds), what="score_musc: layer_tokens / image_embeds")
    if reference_tokens is not None:
        check_finite(tuple(reference_tokens), what="score_musc: reference_tokens")
    queries = Features(tuple(tokens_to_grid(t) for t in layer_tokens), image_embeds)
    state = MuScState(() if reference_tokens is None else tuple(tokens_to_grid(t) for t in reference_tokens))
    scores, _ = musc_score(config, state, queries, mesh)
    final = scores if image_embeds is None else musc_finalize(config, scores)
    return MuScResult(patch_scores=scores.patch_scores, image_scores_raw=scores.image_scores,
                      image_scores=final.image_scores)


def musc_finalize(config: MuScConfig, scores: Scores) -> Scores:
    """RsCIN over a whole category (after every subset is scored): image scores re-scored with the image
    embeddings; unchanged when RsCIN is off (no windows) or no embeddings were kept."""
    if not config.windows or "embeds" not in scores.keep:
        return scores
    return scores._replace(image_scores=rscin(scores.image_scores, scores.keep["embeds"], config.windows))


def musc_maps(config: MuScConfig, patch_scores: jax.Array, size) -> jax.Array:
    """Anomaly maps at image resolution: bilinear, align_corners=True, as the reference (no smoothing)."""
    del config
    return resize_bilinear(patch_scores, size, align_corners=True)


BACKBONE_PRESETS = {
    "ViT-L-14-336": BackboneRun(image_size=518, activation="gelu", taps=(6, 12, 18, 24)),
    "efficientnet-lite0": BackboneRun(image_size=224, taps=("stride8", "stride16"), align=True),
    "efficientnet-lite1": BackboneRun(image_size=240, taps=("stride8", "stride16"), align=True),
    "efficientnet-lite2": BackboneRun(image_size=256, taps=("stride8", "stride16"), align=True),
    **{f"dinov2-vit{size}14{reg}": BackboneRun(image_size=518, taps=taps)
       for size, taps in (("s", (3, 6, 9, 12)), ("b", (3, 6, 9, 12)), ("l", (6, 12, 18, 24)),
                          ("g", (10, 20, 30, 40)))
       for reg in ("", "-reg")},
}
"""MuSc's published configuration: OpenAI ViT-L/14-336 run at 518 px (37x37 patches) with exact GELU, taps
6/12/18/24. EfficientNet-Lite (a CNN; MuSc's paper uses ViTs only): the stride-8 and stride-16 stages at the
native size (lite2's 260 rounded down to a multiple of 16), the stride-16 map upsampled to the stride-8 grid by
the backbone (bilinear, align_corners False, the resize MuSc's code applies to a layer on a coarser grid; its code
resizes after the layer norm and r x r unfold, so there the norm's statistics and the window's footprint are the
coarse grid's), then LNAMD over both. Other backbones run at their native size and
activation, tapped at each quarter of the depth, every tap on one grid (``DEFAULT_RUN``). DINOv2: the official
MuSc's default 518 px and its blocks (0-based 2,5,8,11 for S/B and 5,11,17,23 for L, here 1-based), each through
the final LayerNorm (the backbone does it); ViT-G (not in the official code) at each quarter of its 40 blocks.
DINO v1 ViT-B/16 runs at its native 224 px, taps 3, 6, 9, 12 (``DEFAULT_RUN``)."""

DEFAULT_RUN = BackboneRun(align=True)
"""MuSc scores every layer on one grid: CNN taps are aligned to the finest tap's grid (ViT taps share one)."""

DATASET_WINDOWS = {"visa": (1, 8, 9)}
DEFAULT_WINDOWS = (1, 2, 3)


def backbone_run(architecture: str | None) -> BackboneRun:
    """MuSc's run settings for a backbone architecture name (FSLC shares them)."""
    return BACKBONE_PRESETS.get(architecture or "", DEFAULT_RUN)


OPTIONS = method_row("musc").options
"""The command-line options, as written in ``jzad.methods.table``."""


def musc_configure(values: dict, context: RunContext) -> MuScConfig:
    """MuScConfig from option values (dest -> value; missing = default) for a run; checks the mode against the shots."""
    mode = values.get("mode") or "zero_shot"
    if mode != "zero_shot" and context.shots < 1:
        raise OptionError(f"mode {mode}: needs shots=R >= 1 normal reference images")
    if mode == "zero_shot" and context.shots > 0:
        raise OptionError("shots: applies to mode=few_shot or plus; zero_shot MuSc uses no reference images")
    windows = values.get("windows")
    if windows is None:
        windows = DATASET_WINDOWS.get(context.dataset, DEFAULT_WINDOWS)
    fields = {k: values[k] for k in ("r_list", "interval", "schedule", "precision") if values.get(k) is not None}
    with option_errors("musc options"):
        return MuScConfig(mode=mode, windows=tuple(k for k in windows if k > 0), map_size=context.image_size,
                          **fields)


def musc_pads(config: MuScConfig) -> bool:
    """Whether a pool may be padded to a bucket size (masked MSM): zero_shot and plus (queries scored against
    the references only); few_shot pools queries with references, where padding is not masked."""
    return config.mode in ("zero_shot", "plus")


METHOD = register(Method(
    name="musc",
    score_units="mean L2 distance to the other images (unit features)",
    summary=method_row("musc").summary,
    config_type=MuScConfig,
    pools=True,
    few_shot="optional",
    options=OPTIONS,
    request=lambda config: FeatureRequest(embedding=bool(config.windows)),
    fit=musc_fit,
    body=musc_body,
    configure=musc_configure,
    maps=musc_maps,
    backbone_run=backbone_run,
    default_backbone="vit-l-14-336",
    demo_backbone="random-vit-b-16",
    stages=("lnamd", "msm", "upsample", "rscin"),
    finalize=musc_finalize,
    finalize_stage="rscin",
    multi_process=True,
    pads=musc_pads,
))
