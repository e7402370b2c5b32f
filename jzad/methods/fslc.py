"""FSLC: fast zero-shot anomaly scoring with a coreset learned from the test set (Ni, Li, Zhao).

Stages, each a pure jitted function over arrays (names follow the paper, Sec. 3):
- ``fslc_features``: MuSc's LNAMD features per (layer, r); "concat" joins them along channels into one
  feature set (the paper: multi-layer features concatenated, then pooled), "per_layer" keeps one set per
  (layer, r), runs the method on each and averages the scores (MuSc's habit).
- ``fslc_init`` (3.2): k-center greedy over the image embeddings picks S diverse images; k-center greedy over
  their stacked patches Q (S*M, C), in pick order, gives the initial coreset M_0.
- ``fslc_expand`` (3.3): the remaining images, in ascending index order, one after another:
  M_i = M_{i-1} u argmax_{dM in F_i} dist(dM, M_{i-1}). The set of ``expand_per_image`` patches maximising
  dist(dM, M_{i-1}) = min_{f in dM} min_{f' in M_{i-1}} ||f - f'|| is the top-k patches by distance to
  M_{i-1}; within one image every patch is measured against M_{i-1} (not against that image's own picks).
  The paper's recursion M_0, M_1, ..., M_N is sequential, so this is a ``lax.scan`` over images with a
  fixed-capacity coreset buffer filled in order (rows past the current count are masked).
- ``fslc_filter`` (Eqs. 1-4): a_f^j = min_n ||f - f_j^n|| for every coreset point f and every test image j
  (the image f came from included, where it is 0, as in Eq. 1); a_f = SUM (Eq. 3) of the K = max(1,
  floor(X N)) smallest a_f^j; keep the ``n_wanted`` points of lowest a_f, or Otsu's low class of a_f.
- ``fslc_score`` (3.4): s(f) = min_{f' in M} ||f - f'|| per patch; image score S = s(f*) w with f* the top
  patch (first on ties) and w = 1 - exp(s(f*)) / sum_{f in N_b(f*)} exp(s(f)).
  Reading of w: the formula is PatchCore's re-weighting, where the terms are distances from the test patch
  to memory points. So for a coreset point f in N_b(f*), s(f) = ||f* - f||, and N_b(f*) are the b coreset
  points nearest to f* (the nearest, at distance s(f*), included). With d_1 <= ... <= d_b those distances,
  w = 1 - 1 / sum_i exp(d_i - d_1), in [1 - 1/b, 1): near 1 when f* matches one coreset point and the
  other neighbours are far (an isolated match keeps its score), 1 - 1/b when the b neighbours are equally
  close (a dense, common region damps the score). (Read literally as each coreset point's own score, every
  s(f) would be 0 and w = 1 - exp(s(f*)) / b could go negative.) b = 1 gives w = 0, so b >= 2; when fewer
  than b coreset points remain (Otsu), the sum runs over those.

Sharding (``mesh``, 1-D "data" axis; None = one device through the same code): expansion splits each step's
distance work over the coreset buffer's tiles (tile t on device t mod K, then a pmin); filtering splits the
test images; scoring splits the test images. Every device computes each distance inside a GEMM of the same
shape at the same position as one device would, and minima are order-free, so sharded results equal the
unsharded ones bit for bit.

Padded pools (the driver pads a group to a bucket size so groups of nearby sizes share one program, marking
the real images in ``Features.extras[VALID]``): no padding image is picked at init, adds patches in expansion or
enters a_f, and the coreset rows that came from none of them are a prefix whose length each stage returns
(``size``), so the real images' scores are those of the unpadded pool; padding images are scored and dropped.

Distances: the nearest point is found with the GEMM form ||a||^2 + ||b||^2 - 2 a.b (matrix units, tiled,
never more than a tile of the distance matrix), and the distance to that point is then recomputed from the
difference a - b. The GEMM form alone leaves about sqrt(eps) ~ 3e-4 where the true distance is 0 (a coreset
point against its own image in Eq. 1, a coreset patch scored against itself); the recomputation makes those
exactly 0 and every reported distance exact to float32 rounding, at 1/M of the GEMM's cost.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec

from jzad.kernels.distances import check_precision, dot_nt, squared_norms
from jzad.kernels.kcenter import sharded_kcenter_greedy
from jzad.kernels.select import interval_bounds, smallest_k
from jzad.kernels.sharding import AXIS, device_mesh, map_row_shards, num_shards_of
from jzad.methods.base import (
    FeatureRequest,
    Features,
    Method,
    RunContext,
    Scores,
    check_finite,
    option_errors,
    option_fields,
    register,
)
from jzad.features.types import VALID, tokens_to_grid
from jzad.kernels.resize import resize_bilinear
from jzad.methods.musc import backbone_run, grid_features, musc_maps
from jzad.methods.table import method_row

COMBINES = ("concat", "per_layer")


@dataclass(frozen=True)
class FSLCConfig:
    """Static configuration of FSLC (hashable, a static jit argument).

    combine: "concat" (default, the paper: the (layer, r) LNAMD features joined along channels into one
    set; each part is a unit vector, so a row has norm sqrt(L * len(r_list)) and squared distances add up
    over the parts) or "per_layer" (the method runs on each (layer, r) set; patch and image scores are
    averaged). r_list: LNAMD window sizes (the paper pools with one r x r window; 3 by default).
    num_init_images: S, images picked by k-center greedy on the embeddings. init_coreset_size: M_0, patches
    picked by k-center greedy among those S images' patches. expand_per_image: patches each remaining image
    adds. filter_fraction: X, the fraction of images whose lowest a_f^j are summed into a_f (count
    max(1, floor(X N))). n_wanted: final coreset size (int) or "otsu" (Otsu's low class of a_f, computed on
    a histogram of ``otsu_bins`` bins). b: coreset neighbours in the image-score weight (>= 2; PatchCore's 9).
    start_index: first pick of both k-center runs. projection_dim: optional random projection for the
    patch-level k-center (PatchCore's speed-up, drawn from ``seed``); None runs it exactly.
    precision: "fp32" or "bf16" GEMMs for the distances. query_tile, group_tile: tiles of the filter's
    nearest-neighbour kernel (coreset rows x images). point_tile: coreset rows per GEMM tile in expansion
    and scoring. map_size: side of the upsampled maps in ``score_fslc``'s result (None: no maps).

    Defaults: S = 10 and M_0 = 1000 cover the styles of a category (Fig. 3) at 37 x 37 grids; 10 patches per
    image keep the expanded coreset near M_0 + 10 N; X = 0.3 is MuSc's interval; "otsu" needs no size that
    depends on N; b = 9 is PatchCore's.
    """

    combine: str = "concat"
    r_list: tuple[int, ...] = (3,)
    num_init_images: int = 10
    init_coreset_size: int = 1000
    expand_per_image: int = 10
    filter_fraction: float = 0.3
    n_wanted: int | str = "otsu"
    otsu_bins: int = 256
    b: int = 9
    start_index: int = 0
    projection_dim: int | None = None
    seed: int = 0
    precision: str = "fp32"
    query_tile: int = 2048
    group_tile: int = 4
    point_tile: int = 1024
    map_size: int | None = None

    def __post_init__(self):
        if self.combine not in COMBINES:
            raise ValueError(f"combine: expected one of {COMBINES}, got {self.combine!r}")
        if not self.r_list or any(not isinstance(r, int) or r < 1 or r % 2 == 0 for r in self.r_list):
            raise ValueError(f"r_list: expected odd window sizes >= 1, got {self.r_list}")
        for name in ("num_init_images", "init_coreset_size", "expand_per_image", "query_tile", "group_tile",
                     "point_tile"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected an integer >= 1, got {value!r}")
        if not 0.0 < float(self.filter_fraction) <= 1.0:
            raise ValueError(f"filter_fraction: expected X in (0, 1], got {self.filter_fraction!r}")
        if isinstance(self.n_wanted, str):
            if self.n_wanted != "otsu":
                raise ValueError(f"n_wanted: expected a positive integer or 'otsu', got {self.n_wanted!r}")
        elif isinstance(self.n_wanted, bool) or not isinstance(self.n_wanted, int) or self.n_wanted < 1:
            raise ValueError(f"n_wanted: expected a positive integer or 'otsu', got {self.n_wanted!r}")
        if isinstance(self.otsu_bins, bool) or not isinstance(self.otsu_bins, int) or self.otsu_bins < 2:
            raise ValueError(f"otsu_bins: expected an integer >= 2, got {self.otsu_bins!r}")
        if isinstance(self.b, bool) or not isinstance(self.b, int) or self.b < 2:
            raise ValueError(f"b: expected an integer >= 2 (b = 1 makes every weight 0), got {self.b!r}")
        if isinstance(self.start_index, bool) or not isinstance(self.start_index, int) or self.start_index < 0:
            raise ValueError(f"start_index: expected an integer >= 0, got {self.start_index!r}")
        if self.projection_dim is not None and (not isinstance(self.projection_dim, int) or self.projection_dim < 1):
            raise ValueError(f"projection_dim: expected a positive integer or None, got {self.projection_dim!r}")
        check_precision(self.precision)
        if self.map_size is not None and self.map_size < 1:
            raise ValueError(f"map_size: expected a positive image side or None, got {self.map_size}")


class FSLCInit(NamedTuple):
    """``fslc_init`` output: coreset (M0, C); image_indices (S,) in pick order; patch_indices (M0,) into the
    flattened (N * M) patches; size () int32 the rows of the coreset that are real (a prefix; M0 unless the
    set holds padding images and fewer than S real ones)."""

    coreset: jax.Array
    image_indices: jax.Array
    patch_indices: jax.Array
    size: jax.Array


class FSLCExpansion(NamedTuple):
    """``fslc_expand`` output: coreset (M0 + R k, C) = M_0 then each remaining image's k picks in order;
    patch_indices (M0 + R k,) of those rows into the flattened (N * M) patches; order (R,) the remaining
    images in expansion order; size () int32 the real rows, a prefix (with padding images, the rows past it
    are zero and their patch indices -1)."""

    coreset: jax.Array
    patch_indices: jax.Array
    order: jax.Array
    size: jax.Array


class FSLCFilter(NamedTuple):
    """``fslc_filter`` output, coreset rows sorted by ascending a_f.

    coreset (P, C): P = n_wanted, or the whole expanded size K with "otsu" (rows past ``size`` invalid);
    valid (P,) bool; size () int32 the final coreset size |M|; kept (P,) int32 rows of the input coreset;
    scores (K,) float32 a_f of every input coreset row (inf for rows past the real coreset of a padded set).
    """

    coreset: jax.Array
    valid: jax.Array
    size: jax.Array
    kept: jax.Array
    scores: jax.Array


class FSLCScores(NamedTuple):
    """``fslc_score`` output: patch_scores (N, M) s(f); image_scores (N,) s(f*) w; weights (N,) w;
    top_patch (N,) int32 index of f* in each image."""

    patch_scores: jax.Array
    image_scores: jax.Array
    weights: jax.Array
    top_patch: jax.Array


@dataclass(frozen=True)
class FSLCResult:
    """``score_fslc`` output for N images on an h x w grid and F feature sets (1 with "concat").

    patch_scores (N, h, w) and image_scores (N,): averaged over the feature sets. coreset_size (F,) final
    coreset sizes; weights (F, N) the image-score weights w; init_images (S,) the k-center image picks;
    maps (N, map_size, map_size) bilinear (align_corners=True) upsampled patch scores, or None.
    """

    patch_scores: jax.Array
    image_scores: jax.Array
    coreset_size: jax.Array
    weights: jax.Array
    init_images: jax.Array
    maps: jax.Array | None = None


def _mesh(mesh: Mesh | None) -> Mesh:
    if mesh is None:
        return device_mesh(1)
    if not isinstance(mesh, Mesh):
        raise ValueError(f"mesh: expected a jax.sharding.Mesh or None, got {type(mesh).__name__}")
    return mesh


def _check_features(name: str, features: jax.Array) -> tuple[int, int, int]:
    if features.ndim != 3:
        raise ValueError(f"{name}: expected patch features (N, M, C), got shape {features.shape}")
    return features.shape


def _check_coreset(name: str, coreset: jax.Array, channels: int) -> int:
    if coreset.ndim != 2 or coreset.shape[1] != channels or coreset.shape[0] < 1:
        raise ValueError(f"{name}: expected a coreset (K, {channels}) with K >= 1, got shape {coreset.shape}")
    return coreset.shape[0]


def _ceil_div(a, b):
    return (a + b - 1) // b


def _image_mask(valid, n: int) -> jax.Array:
    """The real images of a set of N (a padded group): ``valid`` (N,) bool, or None for all of them."""
    if valid is None:
        return jnp.ones((n,), bool)
    valid = jnp.asarray(valid)
    if valid.shape != (n,):
        raise ValueError(f"valid: expected ({n},) bool marking the real images, got shape {valid.shape}")
    return valid.astype(bool)


def _tile_nearest(queries, query_norms, rows, row_norms, first, limit, precision):
    """Nearest row of one tile by the GEMM form: queries (q, C) vs rows (t, C) at global offset ``first``;
    rows at or past ``limit`` are masked. -> (squared distance (q,), global row index (q,) int32)."""
    sq = query_norms[:, None] + row_norms[None, :] - 2.0 * dot_nt(queries, rows, precision)
    ids = first + jnp.arange(rows.shape[0], dtype=jnp.int32)
    sq = jnp.where((ids < limit)[None, :], sq, jnp.inf)
    local = jnp.argmin(sq, axis=1)
    return jnp.take_along_axis(sq, local[:, None], axis=1)[:, 0], ids[local]


def _keep_nearer(best, candidate):
    """Running (squared distance, index) minimum; ties keep ``best`` (the lower index, tiles ascend)."""
    nearer = candidate[0] < best[0]
    return jnp.where(nearer, candidate[0], best[0]), jnp.where(nearer, candidate[1], best[1])


def _exact_distance(a, b):
    """||a - b|| along the last axis from the difference itself (exact 0 for identical rows)."""
    diff = a.astype(jnp.float32) - b.astype(jnp.float32)
    return jnp.sqrt(jnp.sum(diff * diff, axis=-1))


# --------------------------------------------------------------------------------------------- features


def fslc_features(layer_tokens: tuple[jax.Array, ...], config: FSLCConfig = FSLCConfig()) -> tuple[jax.Array, ...]:
    """L tapped layers of (N, 1 + h*w, C) tokens -> feature sets: one (N, h*w, L*R*C) with "concat"
    ((layer, r) parts in layer-major order), else L*R sets of (N, h*w, C)."""
    if not layer_tokens:
        raise ValueError("layer_tokens: expected at least one tapped layer (N, 1 + h*w, C)")
    return fslc_sets(tuple(tokens_to_grid(t) for t in layer_tokens), config)


def fslc_sets(grids: tuple[jax.Array, ...], config: FSLCConfig = FSLCConfig()) -> tuple[jax.Array, ...]:
    """L layer grids (N, h, w, C) -> FSLC feature sets, as ``fslc_features``."""
    parts = grid_features(tuple(grids), config.r_list)
    if config.combine == "concat":
        return (parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=-1),)
    return tuple(parts)


# --------------------------------------------------------------------------------------------- init


@partial(jax.jit, static_argnames=("config", "mesh"))
def fslc_init(
    features: jax.Array, image_embeds: jax.Array, config: FSLCConfig = FSLCConfig(), mesh: Mesh | None = None,
    valid: jax.Array | None = None,
) -> FSLCInit:
    """Coreset initialisation (Sec. 3.2): features (N, M, C), image embeddings (N, D) -> FSLCInit.

    k-center greedy (squared Euclidean, from ``start_index``) over the embeddings as given picks S images;
    their patches stacked in pick order form Q (S * M, C); k-center greedy over Q picks M_0 rows.

    ``valid`` (N,) bool marks the real images of a set padded to a fixed size (None: all real; the image at
    ``start_index`` must be real). Only real images are picked: with N' real, S' = min(S, N') of them, then
    the first padding images fill the S slots; Q's rows from those are no candidates, and only the first
    min(M_0, S' M) coreset rows are real (``size``). The real picks are those of the N' real images alone.
    """
    n, m, c = _check_features("features", features)
    if image_embeds.ndim != 2 or image_embeds.shape[0] != n:
        raise ValueError(f"image_embeds: expected ({n}, D) like features, got shape {image_embeds.shape}")
    s, m0 = config.num_init_images, config.init_coreset_size
    if s > n:
        raise ValueError(f"num_init_images: expected at most N = {n} images, got {s}")
    if m0 > s * m:
        raise ValueError(f"init_coreset_size: expected at most S * M = {s * m} patches, got {m0}")
    if config.start_index >= min(n, s * m):
        raise ValueError(
            f"start_index: expected < {min(n, s * m)} (images and candidate patches), got {config.start_index}"
        )
    mesh = _mesh(mesh)
    real = _image_mask(valid, n)
    picked = jnp.minimum(s, jnp.sum(real)).astype(jnp.int32)
    slots = jnp.arange(s, dtype=jnp.int32)
    images = sharded_kcenter_greedy(image_embeds.astype(jnp.float32), s, mesh, config.start_index, valid=real)
    padding = jnp.nonzero(~real, size=n, fill_value=0)[0].astype(jnp.int32)
    images = jnp.where(slots < picked, images, padding[jnp.maximum(slots - picked, 0)])
    q = features.astype(jnp.float32)[images].reshape(s * m, c)
    key = jax.random.key(config.seed) if config.projection_dim is not None else None
    local = sharded_kcenter_greedy(q, m0, mesh, config.start_index, projection_dim=config.projection_dim, key=key,
                                   valid=jnp.repeat(slots < picked, m))
    patch_indices = images[local // m] * m + local % m
    size = jnp.minimum(m0, picked * m).astype(jnp.int32)
    return FSLCInit(q[local], images, patch_indices.astype(jnp.int32), size)


# --------------------------------------------------------------------------------------------- expand


def remaining_images(image_indices: jax.Array, num_images: int) -> jax.Array:
    """(S,) chosen image indices -> (N - S,) int32 the other images in ascending order."""
    chosen = jnp.zeros((num_images,), bool).at[image_indices].set(True)
    return jnp.nonzero(~chosen, size=num_images - image_indices.shape[0])[0].astype(jnp.int32)


def _expand_on_shards(features, order, real, coreset, init_size, *, per_image: int, tile: int, precision: str,
                      shards: int):
    """Per-device expansion scan; every device holds the whole buffer and runs the same picks.

    features (N, M, C), order (R,), real (R,) bool (the step's image is real), coreset (M0, C) and its real
    row count init_size () replicated -> (buffer (K_pad, C), picks (R, k), real rows ()). The buffer's real
    rows are a prefix: a real image appends its picks at the current count; a padding image measures nothing
    and leaves the count (what it writes past the count is overwritten or ignored).
    Device d measures buffer tiles d, d + shards, ... below the current count; a pmin joins them (lowest row
    on ties). The nearest row is found with the GEMM form, its distance then taken from the difference.
    """
    device = jax.lax.axis_index(AXIS).astype(jnp.int32)
    _, m, c = features.shape
    m0 = coreset.shape[0]
    steps = order.shape[0]
    capacity = m0 + steps * per_image
    padded = _ceil_div(capacity, tile) * tile
    buffer = jnp.zeros((padded, c), jnp.float32).at[:m0].set(coreset)
    norms = squared_norms(buffer)

    def step(carry, i):
        buffer, norms, count = carry
        image = features[order[i]]
        image_norms = squared_norms(image)
        local_tiles = jnp.maximum(_ceil_div(_ceil_div(count, tile) - device, shards), 0)
        local_tiles = jnp.where(real[i], local_tiles, 0)

        def one_tile(j, best):
            first = (device + j * shards) * tile
            rows = jax.lax.dynamic_slice_in_dim(buffer, first, tile)
            row_norms = jax.lax.dynamic_slice_in_dim(norms, first, tile)
            return _keep_nearer(best, _tile_nearest(image, image_norms, rows, row_norms, first, count, precision))

        start = (jnp.full((m,), jnp.inf, jnp.float32), jnp.zeros((m,), jnp.int32))
        best_sq, best_row = jax.lax.fori_loop(0, local_tiles, one_tile, start)
        nearest_sq = jax.lax.pmin(best_sq, AXIS)
        nearest_row = jax.lax.pmin(jnp.where(best_sq == nearest_sq, best_row, jnp.iinfo(jnp.int32).max), AXIS)
        distance = _exact_distance(image, buffer[nearest_row])
        _, picks = jax.lax.top_k(distance, per_image)
        added = image[picks]
        buffer = jax.lax.dynamic_update_slice_in_dim(buffer, added, count, axis=0)
        norms = jax.lax.dynamic_update_slice_in_dim(norms, squared_norms(added), count, axis=0)
        return (buffer, norms, count + jnp.where(real[i], per_image, 0)), picks.astype(jnp.int32)

    count = init_size.astype(jnp.int32)
    if steps == 0:
        return buffer, jnp.zeros((0, per_image), jnp.int32), count
    (buffer, _, count), picks = jax.lax.scan(step, (buffer, norms, count), jnp.arange(steps, dtype=jnp.int32))
    return buffer, picks, count


@partial(jax.jit, static_argnames=("config", "mesh"))
def fslc_expand(
    features: jax.Array,
    init_coreset: jax.Array,
    image_indices: jax.Array,
    init_patch_indices: jax.Array | None = None,
    config: FSLCConfig = FSLCConfig(),
    mesh: Mesh | None = None,
    valid: jax.Array | None = None,
    init_size: jax.Array | None = None,
) -> FSLCExpansion:
    """Coreset expansion (Sec. 3.3): features (N, M, C), M_0 (M0, C), the S init images (S,) -> FSLCExpansion.

    The N - S other images in ascending index order each append the k = ``expand_per_image`` patches
    farthest (Euclidean) from the coreset as it stands after the previous images (ties: lower patch index).
    ``init_patch_indices`` (M0,) (from ``fslc_init``) are carried into ``patch_indices``; None marks the
    M_0 rows -1. A set padded to a fixed size: ``valid`` (N,) bool marks its real images (padding images add
    nothing) and ``init_size`` () the real rows of M_0 (``FSLCInit.size``; None: all M0); the real rows of
    the result are then those of the real images alone, as a prefix of length ``size``.
    """
    n, m, c = _check_features("features", features)
    m0 = _check_coreset("init_coreset", init_coreset, c)
    if image_indices.ndim != 1 or not 1 <= image_indices.shape[0] <= n:
        raise ValueError(f"image_indices: expected (S,) with 1 <= S <= {n}, got shape {image_indices.shape}")
    k = config.expand_per_image
    if k > m:
        raise ValueError(f"expand_per_image: expected at most M = {m} patches per image, got {k}")
    mesh = _mesh(mesh)
    if init_patch_indices is None:
        init_patch_indices = jnp.full((m0,), -1, jnp.int32)
    elif init_patch_indices.shape != (m0,):
        raise ValueError(f"init_patch_indices: expected ({m0},) like init_coreset, got {init_patch_indices.shape}")
    init_size = jnp.int32(m0) if init_size is None else jnp.asarray(init_size, jnp.int32)
    order = remaining_images(image_indices, n)
    real = _image_mask(valid, n)[order]
    body = partial(_expand_on_shards, per_image=k, tile=config.point_tile, precision=config.precision,
                   shards=num_shards_of(mesh))
    run = jax.shard_map(body, mesh=mesh, in_specs=(PartitionSpec(),) * 5, out_specs=(PartitionSpec(),) * 3,
                        check_vma=False)
    buffer, picks, size = run(features.astype(jnp.float32), order, real, init_coreset.astype(jnp.float32),
                              init_size)
    capacity = m0 + order.shape[0] * k
    rows = jnp.arange(capacity, dtype=jnp.int32)
    patch_indices = jnp.full((capacity,), -1, jnp.int32).at[:m0].set(
        jnp.where(rows[:m0] < init_size, init_patch_indices.astype(jnp.int32), -1))
    first = init_size + (jnp.cumsum(real, dtype=jnp.int32) - 1) * k
    targets = jnp.where(real[:, None], first[:, None] + jnp.arange(k, dtype=jnp.int32)[None, :], capacity)
    patch_indices = patch_indices.at[targets.reshape(-1)].set((order[:, None] * m + picks).reshape(-1), mode="drop")
    coreset = jnp.where((rows < size)[:, None], buffer[:capacity], 0.0)
    return FSLCExpansion(coreset, patch_indices, order, size)


# --------------------------------------------------------------------------------------------- filter


@partial(jax.jit, static_argnames=("bins",))
def otsu_split(values: jax.Array, bins: int = 256, valid: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """Otsu's method on 1-D values (n,) -> (threshold (), low-class mask (n,) bool).

    Histogram of ``bins`` equal bins over [min, max]; bin index floor((v - min) / (max - min) * bins),
    clamped to bins - 1. For each split t in 1..bins-1 (low class: bins < t) the between-class variance
    w0 w1 (mu0 - mu1)^2 is computed from the bin centres; the first maximum wins; threshold =
    min + t (max - min) / bins. Constant values: everything is low class, threshold = the value.
    ``valid`` (n,) bool: only those values enter the histogram and the low class (a buffer with empty rows,
    as streaming FSLC keeps its coreset); None: all of them.
    """
    if values.ndim != 1 or values.shape[0] < 1:
        raise ValueError(f"values: expected a non-empty 1-D array, got shape {values.shape}")
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 2:
        raise ValueError(f"bins: expected an integer >= 2, got {bins!r}")
    if valid is not None and valid.shape != values.shape:
        raise ValueError(f"valid: expected {values.shape} like values, got {valid.shape}")
    v = values.astype(jnp.float32)
    if valid is None:
        low, high = jnp.min(v), jnp.max(v)
    else:
        low, high = jnp.min(jnp.where(valid, v, jnp.inf)), jnp.max(jnp.where(valid, v, -jnp.inf))
    span = high - low
    spread = span > 0
    safe_span = jnp.where(spread, span, 1.0)
    index = jnp.clip(jnp.floor((v - low) / safe_span * bins), 0, bins - 1).astype(jnp.int32)
    if valid is None:
        counts = jnp.bincount(index, length=bins).astype(jnp.float32)
        total = jnp.float32(v.shape[0])
    else:
        counts = jnp.bincount(index, weights=valid.astype(jnp.float32), length=bins)
        total = jnp.sum(valid.astype(jnp.float32))
    width = safe_span / bins
    offsets = (jnp.arange(bins, dtype=jnp.float32) + 0.5) * width
    w0 = jnp.cumsum(counts)[:-1]
    mass0 = jnp.cumsum(counts * offsets)[:-1]
    w1 = total - w0
    mass1 = jnp.sum(counts * offsets) - mass0
    mu0 = mass0 / jnp.maximum(w0, 1.0)
    mu1 = mass1 / jnp.maximum(w1, 1.0)
    between = (w0 / total) * (w1 / total) * jnp.square(mu0 - mu1)
    split = jnp.argmax(between).astype(jnp.int32) + 1
    threshold = jnp.where(spread, low + split.astype(jnp.float32) * width, high)
    mask = jnp.where(spread, index < split, True)
    return threshold, mask if valid is None else mask & valid


@partial(jax.jit, static_argnames=("bins",))
def otsu_threshold(values: jax.Array, bins: int = 256) -> jax.Array:
    """Otsu's threshold of 1-D values (see ``otsu_split``): values below it (by bin) form the low class."""
    return otsu_split(values, bins)[0]


def _filter_block(images, points, *, group: int, precision: str):
    """Per-device a_f^j: images (B, M, C) with B a multiple of ``group``, coreset tiles (T, qt, C) -> (B, T*qt)."""
    b, m, c = images.shape
    groups = images.reshape(b // group, group * m, c)
    group_norms = squared_norms(groups)

    def one_query_tile(rows):
        row_norms = squared_norms(rows)

        def one_group(carry, tile):
            members, member_norms = tile
            sq = row_norms[:, None] + member_norms[None, :] - 2.0 * dot_nt(rows, members, precision)
            nearest = jnp.argmin(sq.reshape(rows.shape[0], group, m), axis=-1)
            patches = members.reshape(group, m, c)[jnp.arange(group)[None, :], nearest]
            return carry, _exact_distance(rows[:, None, :], patches)

        _, dist = jax.lax.scan(one_group, None, (groups, group_norms))
        return jnp.moveaxis(dist, 0, 1).reshape(rows.shape[0], b)

    per_tile = jax.lax.map(one_query_tile, points)
    return jnp.moveaxis(per_tile, 2, 0).reshape(b, -1)


@partial(jax.jit, static_argnames=("config", "mesh"))
def filter_scores(features: jax.Array, coreset: jax.Array, config: FSLCConfig = FSLCConfig(),
                  mesh: Mesh | None = None, valid: jax.Array | None = None) -> jax.Array:
    """a_f (Eqs. 1-3): coreset (K, C) against features (N, M, C) -> (K,) sums of the max(1, floor(X N))
    smallest nearest-patch distances a_f^j over the images.

    The images are split over the mesh, padded to whole tiles of ``group_tile`` images per device, so every
    nearest patch is found in the same (query_tile, group_tile * M) GEMM tile whatever the device count;
    its distance is then taken from the difference (exactly 0 for the image a point came from).
    ``valid`` (N,) bool: only those images count (a set padded to a fixed size), N being their number.
    """
    n, m, c = _check_features("features", features)
    size = _check_coreset("coreset", coreset, c)
    mesh = _mesh(mesh)
    group = min(config.group_tile, n)
    unit = group * num_shards_of(mesh)
    padded = _ceil_div(n, unit) * unit
    images = jnp.pad(features.astype(jnp.float32), ((0, padded - n), (0, 0), (0, 0)))
    qt = min(config.query_tile, size)
    query_tiles = _ceil_div(size, qt)
    points = jnp.pad(coreset.astype(jnp.float32), ((0, query_tiles * qt - size), (0, 0))).reshape(query_tiles, qt, c)
    body = partial(_filter_block, group=group, precision=config.precision)
    per_image = map_row_shards(lambda rows, first, pts: body(rows, pts), mesh, images, points)
    real = _image_mask(valid, n)
    per_image = jnp.where(real[:, None], per_image[:n, :size], jnp.inf)
    counts = [interval_bounds(images, 0.0, float(config.filter_fraction))[1] for images in range(1, n + 1)]
    count = jnp.asarray(counts, jnp.int32)[jnp.maximum(jnp.sum(real), 1) - 1]
    lowest, _ = smallest_k(per_image.T, counts[-1])
    return jnp.sum(jnp.where(jnp.arange(counts[-1]) < count, lowest, 0.0), axis=-1)


@partial(jax.jit, static_argnames=("config", "mesh"))
def fslc_filter(features: jax.Array, coreset: jax.Array, config: FSLCConfig = FSLCConfig(),
                mesh: Mesh | None = None, valid: jax.Array | None = None,
                coreset_size: jax.Array | None = None) -> FSLCFilter:
    """Coreset filtering (Eqs. 1-4): features (N, M, C), expanded coreset (K, C) -> FSLCFilter.

    Keeps the ``n_wanted`` rows of lowest a_f (ties: lower row), or with "otsu" Otsu's low class of a_f
    (a prefix of the a_f order, since the binning is monotone), in a (K, C) buffer with a valid mask.
    A set padded to a fixed size: ``valid`` (N,) bool marks its real images (a_f is taken over those) and
    ``coreset_size`` () the real coreset rows, a prefix (``FSLCExpansion.size``; None: all K); rows past it
    get a_f = inf and are never kept (with fewer real rows than ``n_wanted``, only those are valid).
    """
    _, _, c = _check_features("features", features)
    size = _check_coreset("coreset", coreset, c)
    real_rows = jnp.arange(size) < (size if coreset_size is None else coreset_size)
    scores = jnp.where(real_rows, filter_scores(features, coreset, config, mesh, valid), jnp.inf)
    if config.n_wanted == "otsu":
        if config.b > size:
            raise ValueError(f"b: expected at most the expanded coreset size {size}, got {config.b}")
        _, low = otsu_split(scores, config.otsu_bins, real_rows)
        kept = jnp.argsort(scores, stable=True).astype(jnp.int32)
        wanted = jnp.sum(low).astype(jnp.int32)
        kept_rows = jnp.arange(size) < wanted
    else:
        if config.n_wanted > size:
            raise ValueError(f"n_wanted: expected at most the expanded coreset size {size}, got {config.n_wanted}")
        if config.b > config.n_wanted:
            raise ValueError(f"b: expected at most n_wanted = {config.n_wanted}, got {config.b}")
        _, kept = smallest_k(scores, config.n_wanted)
        kept = kept.astype(jnp.int32)
        wanted = jnp.minimum(config.n_wanted, jnp.sum(real_rows)).astype(jnp.int32)
        kept_rows = jnp.arange(config.n_wanted) < wanted
    return FSLCFilter(coreset.astype(jnp.float32)[kept], kept_rows, wanted, kept, scores)


# --------------------------------------------------------------------------------------------- score


def _score_images(images, points, point_norms, valid, size, *, b: int, tile: int, precision: str):
    """Per-device scoring of a block of images (B, M, C) against the coreset (P_pad, C) -> (B, M + 2).

    Columns: the M patch scores s(f), then S = s(f*) w, then w. Only tiles below ``size`` are visited. Nearest
    rows are found with the GEMM form; the distances to them (and to f*'s b neighbours) from the difference.
    """
    num_tiles = _ceil_div(size, tile)

    def one_image(image):
        image_norms = squared_norms(image)

        def one_tile(t, best):
            first = t * tile
            rows = jax.lax.dynamic_slice_in_dim(points, first, tile)
            row_norms = jax.lax.dynamic_slice_in_dim(point_norms, first, tile)
            return _keep_nearer(best, _tile_nearest(image, image_norms, rows, row_norms, first, size, precision))

        m = image.shape[0]
        start = (jnp.full((m,), jnp.inf, jnp.float32), jnp.zeros((m,), jnp.int32))
        _, nearest = jax.lax.fori_loop(0, num_tiles, one_tile, start)
        s = _exact_distance(image, points[nearest])
        top = jnp.argmax(s)
        f = image[top]
        sq = jnp.dot(f, f) + point_norms - 2.0 * dot_nt(f[None, :], points, precision)[0]
        _, neighbours = smallest_k(jnp.where(valid, sq, jnp.inf), b)
        d = jnp.where(valid[neighbours], _exact_distance(f[None, :], points[neighbours]), jnp.inf)
        terms = jnp.where(jnp.isfinite(d), jnp.exp(d - jnp.min(d)), 0.0)
        w = 1.0 - 1.0 / jnp.sum(terms)
        return jnp.concatenate([s, jnp.stack([s[top] * w, w])])

    return jax.lax.map(one_image, images)


@partial(jax.jit, static_argnames=("config", "mesh"))
def fslc_score(
    features: jax.Array,
    coreset: jax.Array,
    valid: jax.Array | None = None,
    config: FSLCConfig = FSLCConfig(),
    mesh: Mesh | None = None,
) -> FSLCScores:
    """Scoring (Sec. 3.4): features (N, M, C), final coreset (P, C) with valid rows (P,) -> FSLCScores.

    ``valid`` must mark a prefix (as ``fslc_filter`` returns); None means every row. s(f) is the distance to
    the nearest valid coreset row; S = s(f*) w, w = 1 - 1 / sum_{i <= b} exp(d_i - d_1) over the b valid
    rows nearest to f* (fewer when fewer are valid). Images are split over the mesh.
    """
    n, m, c = _check_features("features", features)
    size = _check_coreset("coreset", coreset, c)
    if valid is None:
        valid = jnp.ones((size,), bool)
    if valid.shape != (size,):
        raise ValueError(f"valid: expected ({size},) like the coreset rows, got shape {valid.shape}")
    b = min(config.b, size)
    tile = min(config.point_tile, size)
    padded = _ceil_div(size, tile) * tile
    points = jnp.pad(coreset.astype(jnp.float32), ((0, padded - size), (0, 0)))
    valid_rows = jnp.pad(valid, (0, padded - size))
    count = jnp.sum(valid).astype(jnp.int32)
    body = partial(_score_images, b=b, tile=tile, precision=config.precision)

    def block(images, first_row, pts, norms, ok, used):
        del first_row
        return body(images, pts, norms, ok, used)

    out = map_row_shards(block, _mesh(mesh), features.astype(jnp.float32), points, squared_norms(points),
                         valid_rows, count)
    patch = out[:, :m]
    return FSLCScores(patch, out[:, m], out[:, m + 1], jnp.argmax(patch, axis=1).astype(jnp.int32))


# --------------------------------------------------------------------------------------------- whole method


# --------------------------------------------------------------------------------------------- method seam


def fit_to_set(config: FSLCConfig, num_images: int, patches: int) -> FSLCConfig:
    """The config shrunk to a small set: at most N init images and S * M init coreset patches (N counts the
    padding rows of a padded pool; ``fslc_init`` shrinks S and M_0 further to the real images)."""
    images = min(config.num_init_images, num_images)
    return dataclasses.replace(
        config, num_init_images=images, init_coreset_size=min(config.init_coreset_size, images * patches)
    )


def fslc_fit(config: FSLCConfig, references: Features | None = None, mesh: Mesh | None = None,
             prepared=None) -> tuple:
    """FSLC is zero-shot: its coreset is learned from the queries themselves, so the state is empty."""
    del config, references, mesh, prepared
    return ()


def fslc_body(config: FSLCConfig, state: tuple, queries: Features, mesh: Mesh | None, run):
    """FSLC over one pool of queries -> (Scores, state), the config fitted to the set size, stages through
    ``run``: "lnamd", then per feature set "init", "expand", "filter", "score"; patch (N, h, w) and image (N,)
    scores averaged over the sets. ``queries.extras[VALID]`` (N,) bool, when present, marks the real images of
    a pool padded to a bucket size (``fslc_pads``): the coreset is learned from those alone, so their scores
    are those of the unpadded pool; padding rows score undefined values."""
    sets = run("lnamd", fslc_sets, tuple(queries.layers), config)
    n, h, w, _ = queries.layers[0].shape
    valid = queries.extras.get(VALID)
    fitted = fit_to_set(config, n, sets[0].shape[1])
    patch = image = None
    for features in sets:
        init = run("init", fslc_init, features, queries.embeds, fitted, mesh, valid)
        expanded = run("expand", fslc_expand, features, init.coreset, init.image_indices,
                       init.patch_indices, fitted, mesh, valid, init.size)
        filtered = run("filter", fslc_filter, features, expanded.coreset, fitted, mesh, valid, expanded.size)
        scored = run("score", fslc_score, features, filtered.coreset, filtered.valid, fitted, mesh)
        patch = scored.patch_scores if patch is None else patch + scored.patch_scores
        image = scored.image_scores if image is None else image + scored.image_scores
    return Scores((patch / len(sets)).reshape(n, h, w), image / len(sets)), state


@partial(jax.jit, static_argnames=("config", "mesh"))
def _score_with_diagnostics(grids: tuple, image_embeds: jax.Array, config: FSLCConfig, mesh) -> dict:
    """``fslc_body`` under one jit, its stage outputs recorded on the way for ``FSLCResult``'s diagnostics."""
    seen: dict = {}

    def recording(stage, fn, *args, **kwargs):
        out = fn(*args, **kwargs)
        seen.setdefault(stage, []).append(out)
        return out

    scores, _ = fslc_body(config, (), Features(grids, image_embeds), mesh, recording)
    return {
        "patch_scores": scores.patch_scores,
        "image_scores": scores.image_scores,
        "coreset_size": jnp.stack([filtered.size for filtered in seen["filter"]]),
        "weights": jnp.stack([scored.weights for scored in seen["score"]]),
        "init_images": seen["init"][-1].image_indices,
    }


def score_fslc(
    layer_tokens: tuple[jax.Array, ...],
    image_embeds: jax.Array,
    config: FSLCConfig = FSLCConfig(),
    mesh: Mesh | None = None,
) -> FSLCResult:
    """FSLC over one set: tapped tokens (L x (N, 1 + h*w, C)) and image embeddings (N, D) -> FSLCResult.

    A thin call into the method's one scoring body (``fslc_body``, as one program). Square patch grids only
    (as ``tokens_to_grid``). Maps are upsampled when ``config.map_size`` is set. Tokens or embeddings holding
    NaN or inf raise ValueError naming the images (by index).
    """
    _mesh(mesh)
    check_finite((tuple(layer_tokens), image_embeds), what="score_fslc: layer_tokens / image_embeds")
    grids = tuple(tokens_to_grid(t) for t in layer_tokens)
    out = _score_with_diagnostics(grids, image_embeds, config, mesh)
    maps = None if config.map_size is None else resize_bilinear(out["patch_scores"], config.map_size,
                                                                align_corners=True)
    return FSLCResult(maps=maps, **out)


def _n_wanted(text: str) -> int | str:
    if text == "otsu":
        return text
    try:
        return int(text)
    except ValueError as err:
        raise ValueError(f"expected a positive integer or 'otsu', got {text!r}") from err


def fslc_pads(config: FSLCConfig) -> bool:
    """A pool may always be padded to a bucket size: every stage takes its coreset and statistics from the
    real images only (``FSLCInit.size``, ``FSLCExpansion.size``, the masked a_f), so padding changes no real
    image's score."""
    del config
    return True


OPTIONS = method_row("fslc").options
"""The command-line options, as written in ``jzad.methods.table``."""


def fslc_configure(values: dict, context: RunContext) -> FSLCConfig:
    """FSLCConfig from option values (dest -> value; missing = default)."""
    del context
    with option_errors("fslc options"):
        return FSLCConfig(**option_fields(OPTIONS, values, common=("precision",)))


METHOD = register(Method(
    name="fslc",
    score_units="L2 distance to the coreset (unit features)",
    summary=method_row("fslc").summary,
    config_type=FSLCConfig,
    pools=True,
    few_shot="never",
    options=OPTIONS,
    request=lambda config: FeatureRequest(embedding=True),
    fit=fslc_fit,
    body=fslc_body,
    configure=fslc_configure,
    maps=musc_maps,
    backbone_run=backbone_run,
    default_backbone="vit-l-14-336",
    demo_backbone="random-vit-b-16",
    stages=("lnamd", "init", "expand", "filter", "score", "upsample"),
    multi_process=True,
    pads=fslc_pads,
))
