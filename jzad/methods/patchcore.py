"""PatchCore (Roth et al., CVPR 2022) as its original code computes it, in pure jitted functions.

Stages (amazon-science/patchcore-inspection, WideResNet-50-2 taps layer2 / layer3 of 224 x 224 crops):
- ``patchcore_embed``: each layer unfolded 3x3 (stride 1, zero padding 1); each patch's flattened (C, 3, 3)
  vector reduced to ``dim`` by PyTorch's adaptive_avg_pool1d; layer3 upsampled bilinearly (align_corners
  False) to layer2's grid; the two stacked and pooled again to ``dim``. Both operations are linear and act
  on different axes, so layer3 is pooled on its own grid and upsampled afterwards (1/9 of the work), and the
  pool of an unfold has a closed form when ``dim`` is C (bins = one channel's 9 entries: a 3x3 box mean) or
  2C (bin 2c = entries 0-4 of channel c, bin 2c+1 = entries 4-8): zero-padded shifted sums, no unfolded
  tensor. WideResNet-50-2 at dim 1024 is both cases (layer2 C = 512, layer3 C = 1024), so feature j < 512
  is (3x3 box sum + centre) / 10 of layer2 channel j and feature 512 + j is the upsampled mean of layer3
  channels 2j, 2j+1 over their 3x3 windows. Other sizes unfold explicitly and pool.
- ``memory_bank``: greedy coreset (``ApproximateGreedyCoresetSampler``): features projected to 128 dims by a
  random bias-free linear map (uniform +-1/sqrt(C), torch.nn.Linear's init; skipped when C is already 128),
  every point's initial distance = its mean Euclidean distance to 10 random start points (not kept), then
  k = int(R * ratio) farthest-point picks (``jzad.kernels.kcenter``). ratio 1 keeps every patch.
- ``nearest_scores``: squared L2 distance of each patch to its nearest bank entry (faiss IndexFlatL2 in the
  original; always 1 neighbour: its ``anomaly_scorer_num_nn`` never reaches the patch scores). The nearest
  entry is found in the GEMM form ||a||^2 + ||b||^2 - 2 a.b, as faiss does, after centring queries and bank
  on the bank's mean (distances do not change, but the large common offset of non-negative post-ReLU
  features leaves the norms: 8x smaller squared norms than around the bank's first row on hazelnut), and its
  distance is then measured directly as ||a - b||^2 (``refine_winner`` of ``jzad.kernels.nearest``), so the
  scores carry float32 rounding of the distance itself, not of the features' norms (on the random
  WideResNet's hazelnut features at 4 shots: 1.7e-4 -> 1e-7 of the largest score against float64).
- ``image_scores``: max of the patch scores (before upsampling and blur); optionally the paper's
  b-nearest reweighting as anomalib computes it.
- ``patchcore_maps``: bilinear upsample to the crop size (align_corners False), then scipy's Gaussian
  (sigma 4, 33 taps, 'reflect'), axis 0 then axis 1 with a float32 intermediate.

Method seam (registered as "patchcore"; ``jzad.methods.base``): ``patchcore_fit`` builds the memory bank of
the reference images' features (``PatchCoreState``), ``patchcore_body`` is the one scoring body (stages
"embed", "nearest"), run fused or timed stage by stage by the seam; maps as above. The run preset
is the original's: a ResNet family backbone (WideResNet-50-2 by default) at 224 x 224 crops of 256 (PIL
bilinear, ``patchcore_prep``), taps layer2 and layer3, and by default the original's load-time BatchNorm
update (``--bn-stats original``): the original code's backbone is in train mode when ``PatchCore.load`` runs one
forward of ``torch.ones(1, 3, S, S)`` to read the feature dimensions, so every BatchNorm it passes moves its
running statistics 10 % (momentum 0.1) towards those of a constant image before any real image is embedded.
The published PatchCore numbers come from that code, and with the update jzad's scores equal the original's
(benchmarks/patchcore_original_parity.py); ``--bn-stats checkpoint`` keeps the stored statistics (the clean
eval-mode network). The update is applied once per loaded backbone to a copy of its params
(``patchcore_extractor``), so other methods sharing the ResNet are unaffected. ``--coreset-ratio`` defaults to 0.05 for runs with at
most 16 reference images (PatchCore+'s few-shot setting) and 0.1 (the paper's full-shot setting) above;
``--reweight-b`` turns on the b-nearest reweighting.

Sharding (``mesh``: 1-D "data" axis, None = one device): scoring splits query images over devices and runs
each device's share in fixed-size chunks of images (one image per distance GEMM tile), so every array has
the same shape on any shard count and sharded results equal unsharded ones bit for bit. The coreset splits
candidate rows (see ``jzad.kernels.kcenter``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from jzad.backbone.efficientnet import CONFIGS as EFFICIENTNET_CONFIGS
from jzad.kernels.blur import gaussian_blur
from jzad.kernels.distances import check_precision, pairwise_sq_euclidean
from jzad.kernels.kcenter import sharded_kcenter_greedy
from jzad.kernels.nearest import nearest_group_distance
from jzad.kernels.pool import adaptive_avg_pool1d
from jzad.kernels.resize import bilinear_matrix, resize_bilinear
from jzad.kernels.sharding import device_mesh, map_row_shards, pad_rows, replicated
from jzad.methods.base import (
    BackboneRun,
    FeatureRequest,
    Features,
    ImagePrep,
    Method,
    RunContext,
    Scores,
    option_errors,
    option_fields,
    register,
)
from jzad.methods.table import method_row

HIGHEST = jax.lax.Precision.HIGHEST
BN_STATS = ("original", "checkpoint")


def check_ratio(ratio) -> float:
    """A coreset ratio in (0, 1] or a clear error."""
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio <= 1:
        raise ValueError(f"coreset ratio must be a number in (0, 1], got {ratio!r}")
    return float(ratio)


@dataclass(frozen=True)
class PatchCoreConfig:
    """Static configuration of PatchCore (hashable, a static jit argument).

    dim: embedding size (pretrain and target dimension, 1024). coreset_ratio: share of the reference
    patches kept in the memory bank (paper 0.1 full-shot; PatchCore+ 0.05 few-shot; 1 keeps all).
    projection_dim: random projection for the coreset distances (None: exact). num_starts: random start
    points of the approximate greedy coreset. num_neighbors: b of the paper's image-score reweighting
    (None: plain max, the original code; anomalib uses 9). map_size: side of the anomaly maps (the crop,
    224). sigma: Gaussian smoothing of the maps. precision: "fp32" or "bf16" distance GEMMs. bank_tile:
    bank rows per GEMM tile in scoring (peak memory ~ patches per image x bank_tile floats per device).
    image_chunk: query images embedded together in ``patchcore_body`` (the batch is padded to a multiple of
    it). seed: the coreset's random draws (projection, start points) in ``patchcore_fit``.
    bn_stats: the ResNet family's BatchNorm running statistics during extraction: "original" (default; the
    original code's load-time train-mode pass of a constant image, ``jzad.features.resnet.
    with_load_time_bn_update``) or "checkpoint" (the statistics as stored: the clean eval-mode network).
    Only the extractor reads it, so it is left out of the config's hash and equality (compare=False) and
    never enters the compile key of a scoring program; other backbone families ignore it.
    """

    dim: int = 1024
    coreset_ratio: float = 0.1
    projection_dim: int | None = 128
    num_starts: int = 10
    num_neighbors: int | None = None
    map_size: int = 224
    sigma: float = 4.0
    precision: str = "fp32"
    bank_tile: int = 4096
    image_chunk: int = 4
    seed: int = 0
    bn_stats: str = field(default="original", compare=False)

    def __post_init__(self):
        if self.bn_stats not in BN_STATS:
            raise ValueError(f"PatchCoreConfig.bn_stats must be one of {BN_STATS}, got {self.bn_stats!r}")
        for name in ("dim", "num_starts", "map_size", "bank_tile", "image_chunk"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"PatchCoreConfig.{name} must be a positive int, got {value!r}")
        check_ratio(self.coreset_ratio)
        if self.projection_dim is not None and (not isinstance(self.projection_dim, int) or self.projection_dim < 1):
            raise ValueError(f"PatchCoreConfig.projection_dim must be None or a positive int, got {self.projection_dim!r}")
        if self.num_neighbors is not None and (not isinstance(self.num_neighbors, int) or self.num_neighbors < 1):
            raise ValueError(f"PatchCoreConfig.num_neighbors must be None or a positive int, got {self.num_neighbors!r}")
        if not self.sigma > 0:
            raise ValueError(f"PatchCoreConfig.sigma must be > 0, got {self.sigma!r}")
        check_precision(self.precision)


PATCHCORE_PRESETS = {
    "full-shot": PatchCoreConfig(coreset_ratio=0.1),
    "few-shot": PatchCoreConfig(coreset_ratio=0.05),
}
"""The paper's full-shot setting and PatchCore+'s few-shot coreset ratio."""


# ------------------------------------------------------------------------------------------ embedding


def _shifted(x: jax.Array) -> list[jax.Array]:
    """The 9 zero-padded 3x3 neighbours of (N, h, w, C), in unfold order (row-major kernel offsets)."""
    h, w = x.shape[1], x.shape[2]
    padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    return [padded[:, i : i + h, j : j + w, :] for i in range(3) for j in range(3)]


def pooled_unfold(x: jax.Array, dim: int) -> jax.Array:
    """adaptive_avg_pool1d(unfold_3x3(x) flattened as (C, 3, 3), dim) per location: (N, h, w, C) -> (N, h, w, dim).

    Closed forms for dim == C (3x3 box mean) and dim == 2C (means of entries 0-4 and 4-8 per channel);
    otherwise the explicit unfold is pooled.
    """
    channels = x.shape[-1]
    shifts = _shifted(x.astype(jnp.float32))
    if dim == channels:
        return sum(shifts) / 9.0
    if dim == 2 * channels:
        first = sum(shifts[:5]) / 5.0
        second = sum(shifts[4:]) / 5.0
        return jnp.stack([first, second], axis=-1).reshape(*x.shape[:-1], dim)
    unfolded = jnp.stack(shifts, axis=-1).reshape(*x.shape[:-1], 9 * channels)
    return adaptive_avg_pool1d(unfolded, dim)


def _upsample_nhwc(x: jax.Array, height: int, width: int) -> jax.Array:
    """PyTorch bilinear (align_corners False) resize of (N, h, w, C) to (N, height, width, C)."""
    rows = jnp.asarray(bilinear_matrix(x.shape[1], height))
    cols = jnp.asarray(bilinear_matrix(x.shape[2], width))
    x = jnp.einsum("pw,nhwc->nhpc", cols, x, precision=HIGHEST)
    return jnp.einsum("oh,nhpc->nopc", rows, x, precision=HIGHEST)


@partial(jax.jit, static_argnames=("dim",))
def _embed(layer2: jax.Array, layer3: jax.Array, dim: int) -> jax.Array:
    n, h, w, _ = layer2.shape
    first = pooled_unfold(layer2, dim)
    second = _upsample_nhwc(pooled_unfold(layer3, dim), h, w)
    stacked = jnp.concatenate([first, second], axis=-1)
    return adaptive_avg_pool1d(stacked, dim).reshape(n, h * w, dim)


def patchcore_embed(layer2: jax.Array, layer3: jax.Array, dim: int = 1024) -> jax.Array:
    """PatchCore patch features: layer2 (N, h, w, C2), layer3 (N, h3, w3, C3) -> (N, h * w, dim) float32.

    Patches are row-major over layer2's grid (28 x 28 for WideResNet-50-2 at 224 -> (N, 784, 1024)).
    layer3's grid may be any size (h/2 x w/2 in a ResNet); it is resized to layer2's.
    """
    for name, value in (("layer2", layer2), ("layer3", layer3)):
        if getattr(value, "ndim", 0) != 4:
            raise ValueError(f"{name} must be (N, h, w, C) NHWC, got shape {np.shape(value)}")
    if layer2.shape[0] != layer3.shape[0]:
        raise ValueError(f"layer2 and layer3 must hold the same images, got N={layer2.shape[0]} and {layer3.shape[0]}")
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
        raise ValueError(f"dim must be a positive int, got {dim!r}")
    return _embed(layer2, layer3, dim=int(dim))


# ------------------------------------------------------------------------------------------ memory bank


def coreset_size(rows: int, ratio: float) -> int:
    """Picks of the original sampler: int(rows * ratio) (rows when ratio is 1), at least 1."""
    ratio = check_ratio(ratio)
    k = rows if ratio == 1 else int(rows * ratio)
    if k < 1:
        raise ValueError(f"coreset ratio {ratio} of {rows} patches keeps none; give more patches or a larger ratio")
    return k


def coreset_draws(
    key: jax.Array, rows: int, channels: int, projection_dim: int | None = 128, num_starts: int = 10
) -> tuple[jax.Array | None, jax.Array]:
    """The sampler's random draws: projection (channels, projection_dim) or None, start points (s,) int32.

    The projection is uniform in +-1/sqrt(channels) (torch.nn.Linear's default init, no bias); None when
    projection_dim is None or equals channels (the original then skips it). s = min(num_starts, rows)
    distinct start rows.
    """
    projection_key, start_key = jax.random.split(key)
    projection = None
    if projection_dim is not None and projection_dim != channels:
        bound = 1.0 / np.sqrt(channels)
        projection = jax.random.uniform(
            projection_key, (channels, projection_dim), jnp.float32, minval=-bound, maxval=bound
        )
    starts = jax.random.choice(start_key, rows, (min(num_starts, rows),), replace=False).astype(jnp.int32)
    return projection, starts


def coreset_select(
    features: jax.Array,
    k: int,
    projection: jax.Array | None,
    start_points: jax.Array,
    mesh: Mesh | None = None,
) -> jax.Array:
    """Approximate greedy coreset: (R, C) -> (k,) int32 row indices in pick order.

    Distances are measured on features @ projection (or the features when projection is None); the first
    pick is the row farthest, on average, from start_points.
    """
    points = features.astype(jnp.float32)
    if projection is not None:
        points = jnp.matmul(points, projection, precision=HIGHEST)
    mesh = device_mesh(1) if mesh is None else mesh
    points, start_points = on_mesh(mesh, points, start_points)
    return sharded_kcenter_greedy(points, k, mesh, start_points=start_points)


def on_mesh(mesh: Mesh, *arrays):
    """Replicate operands onto mesh's devices (arrays committed to another device would clash)."""
    return tuple(jax.device_put(jnp.asarray(a), replicated(mesh)) for a in arrays)


def _as_key(seed) -> jax.Array:
    if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
        return jax.random.key(int(seed))
    if isinstance(seed, jax.Array) and jnp.issubdtype(seed.dtype, jax.dtypes.prng_key):
        return seed
    if isinstance(seed, jax.Array) and seed.ndim == 0 and jnp.issubdtype(seed.dtype, jnp.integer):
        return jax.random.key(seed)
    if isinstance(seed, jax.Array) and seed.shape == (2,) and seed.dtype == jnp.uint32:
        return jax.random.wrap_key_data(seed)
    raise ValueError(f"seed must be an int or a PRNG key (jax.random.key / PRNGKey), got {seed!r}")


def memory_bank(
    features: jax.Array,
    ratio: float,
    projection_dim: int | None = 128,
    num_starts: int = 10,
    seed=0,
    mesh: Mesh | None = None,
) -> jax.Array:
    """PatchCore's memory bank: reference patch features (R, C) -> (K, C), K = int(R * ratio).

    Greedy coreset on a random projection from num_starts random start points, all drawn from seed (an
    int or a PRNG key); ratio 1 returns the features unchanged. Works under jit (ratio static).
    """
    if getattr(features, "ndim", 0) != 2:
        raise ValueError(f"features must be (R, C) reference patches, got shape {np.shape(features)}")
    if isinstance(num_starts, bool) or not isinstance(num_starts, int) or num_starts < 1:
        raise ValueError(f"num_starts must be a positive int, got {num_starts!r}")
    rows, channels = features.shape
    k = coreset_size(rows, ratio)
    if check_ratio(ratio) == 1:
        return jnp.asarray(features, jnp.float32)
    projection, starts = coreset_draws(_as_key(seed), rows, channels, projection_dim, num_starts)
    picks = coreset_select(features, k, projection, starts, mesh)
    return jnp.asarray(features, jnp.float32)[picks]


# ------------------------------------------------------------------------------------------ scoring


def _bank_groups(bank: jax.Array, tile: int) -> jax.Array:
    """(K, C) -> (G, tile, C); the last group is padded with copies of row 0 (a min is unchanged by them)."""
    rows = bank.shape[0]
    tile = min(tile, rows)
    groups = -(-rows // tile)
    pad = groups * tile - rows
    if pad:
        bank = jnp.concatenate([bank, jnp.broadcast_to(bank[:1], (pad, bank.shape[1]))], axis=0)
    return bank.reshape(groups, tile, bank.shape[1])


def _nearest_block(shifted: jax.Array, groups: jax.Array, precision: str) -> jax.Array:
    """(b, M, C) queries and (G, tile, C) bank groups, both centred on the bank's mean -> (b, M).

    One image (M rows) per GEMM tile, so the arithmetic of a row never depends on the batch it came in.
    """
    images, patches, channels = shifted.shape
    mins = nearest_group_distance(
        shifted.reshape(-1, channels), groups, query_tile=patches, group_tile=1, precision=precision, squared=True,
        refine_winner=True,
    )
    return jnp.min(mins, axis=-1).reshape(images, patches)


@partial(jax.jit, static_argnames=("mesh", "precision", "bank_tile"))
def _nearest(features, bank, *, mesh, precision, bank_tile):
    bank = bank.astype(jnp.float32)
    origin = jnp.mean(bank, axis=0)
    groups = _bank_groups(bank - origin, bank_tile)

    def block(images, first_row, bank_groups):
        del first_row
        return _nearest_block(images - origin, bank_groups, precision)

    return map_row_shards(block, mesh, features.astype(jnp.float32), groups)


def nearest_scores(
    features: jax.Array,
    bank: jax.Array,
    mesh: Mesh | None = None,
    precision: str = "fp32",
    bank_tile: int = 4096,
) -> jax.Array:
    """Squared L2 distance of every patch to its nearest bank entry: (N, M, C), (K, C) -> (N, M) float32.

    Tiled (one image x bank_tile rows per GEMM, min fused) and split over mesh by image.
    """
    if getattr(features, "ndim", 0) != 3 or getattr(bank, "ndim", 0) != 2 or features.shape[-1] != bank.shape[-1]:
        raise ValueError(
            f"expected features (N, M, C) and bank (K, C) with equal C, got {np.shape(features)} and {np.shape(bank)}"
        )
    check_precision(precision)
    if isinstance(bank_tile, bool) or not isinstance(bank_tile, int) or bank_tile < 1:
        raise ValueError(f"bank_tile must be a positive int, got {bank_tile!r}")
    mesh = device_mesh(1) if mesh is None else mesh
    features, bank = on_mesh(mesh, features, bank)
    return _nearest(features, bank, mesh=mesh, precision=precision, bank_tile=bank_tile)


def reweighted_scores(patch: jax.Array, features: jax.Array, bank: jax.Array, b: int) -> jax.Array:
    """The paper's image score s = w s*, as anomalib computes it: (N, M) patch scores -> (N,).

    s* is the largest patch score (first on ties), f* its feature, m* its nearest bank entry and N_b(m*) the
    b bank entries nearest to m* (m* first); w = 1 - softmax(||f* - N_b(m*)||)_0 with Euclidean distances.
    s* is this module's patch score (the original's squared distance; anomalib's scores are Euclidean).
    """
    n = patch.shape[0]
    star = jnp.argmax(patch, axis=-1)
    score = patch[jnp.arange(n), star]
    f_star = features[jnp.arange(n), star].astype(jnp.float32)
    bank = bank.astype(jnp.float32)
    m_star = bank[jnp.argmin(pairwise_sq_euclidean(f_star, bank), axis=-1)]
    _, support = jax.lax.top_k(-pairwise_sq_euclidean(m_star, bank), min(b, bank.shape[0]))
    diff = f_star[:, None, :] - bank[support]
    distances = jnp.sqrt(jnp.sum(diff * diff, axis=-1))
    weights = 1.0 - jax.nn.softmax(distances, axis=-1)[:, 0]
    return weights * score


def image_scores(
    patch: jax.Array, features: jax.Array | None = None, bank: jax.Array | None = None, b: int | None = None
) -> jax.Array:
    """Image scores from patch scores (N, h, w) (or (N, M)) -> (N,).

    b None or 1: the max (the original code). b >= 2: anomalib's reweighting, which needs the patch
    features (N, h*w, C) and the bank (K, C).
    """
    if getattr(patch, "ndim", 0) not in (2, 3):
        raise ValueError(f"patch scores must be (N, h, w) or (N, M), got shape {np.shape(patch)}")
    flat = patch.reshape(patch.shape[0], -1)
    if b is None or b == 1:
        return jnp.max(flat, axis=-1)
    if isinstance(b, bool) or not isinstance(b, int) or b < 1:
        raise ValueError(f"b must be None or a positive int, got {b!r}")
    if features is None or bank is None:
        raise ValueError("reweighting (b >= 2) needs the patch features and the memory bank")
    if features.ndim != 3 or features.shape[:2] != flat.shape or bank.ndim != 2 or bank.shape[1] != features.shape[2]:
        raise ValueError(
            f"features must be (N, M, C) = ({flat.shape[0]}, {flat.shape[1]}, C) and bank (K, C), got "
            f"{np.shape(features)} and {np.shape(bank)}"
        )
    return reweighted_scores(flat, features, bank, b)


def patchcore_maps(patch: jax.Array, size=224, sigma: float = 4.0) -> jax.Array:
    """Anomaly maps: patch scores (N, h, w) -> bilinear to size (align_corners False), Gaussian sigma -> (N, S, S)."""
    if getattr(patch, "ndim", 0) != 3:
        raise ValueError(f"patch scores must be (N, h, w), got shape {np.shape(patch)}")
    return gaussian_blur(resize_bilinear(patch, size), sigma=sigma)


# ------------------------------------------------------------------------------------------ whole method


class PatchCoreScores(NamedTuple):
    """score_patchcore's result: image (N,), patch (N, h, w) squared distances, maps (N, S, S) or None."""

    image: jax.Array
    patch: jax.Array
    maps: jax.Array


def fit_patchcore(
    layer2: jax.Array, layer3: jax.Array, config: PatchCoreConfig = PatchCoreConfig(), seed=0,
    mesh: Mesh | None = None,
) -> jax.Array:
    """Reference images' taps (R, h, w, C2), (R, h3, w3, C3) -> memory bank (K, dim)."""
    features = patchcore_embed(layer2, layer3, config.dim)
    return memory_bank(
        features.reshape(-1, config.dim), config.coreset_ratio, config.projection_dim, config.num_starts,
        seed, mesh,
    )


@partial(jax.jit, static_argnames=("dim", "chunk"))
def embed_in_chunks(layer2: jax.Array, layer3: jax.Array, dim: int, chunk: int) -> jax.Array:
    """``patchcore_embed`` over chunks of ``chunk`` images (``lax.map``), so the 3x3 unfolds of only one chunk
    are alive at a time: (N, h, w, C2), (N, h3, w3, C3) -> (N, h * w, dim)."""
    n = layer2.shape[0]
    total = -(-n // chunk) * chunk

    def chunks(x):
        return pad_rows(x, total).reshape((total // chunk, chunk) + x.shape[1:])

    out = jax.lax.map(lambda parts: _embed(parts[0], parts[1], dim=dim), (chunks(layer2), chunks(layer3)))
    return out.reshape((total,) + out.shape[2:])[:n]


def score_patchcore(
    layer2: jax.Array,
    layer3: jax.Array,
    bank: jax.Array,
    config: PatchCoreConfig = PatchCoreConfig(),
    mesh: Mesh | None = None,
    with_maps: bool = True,
) -> PatchCoreScores:
    """Query taps (N, h, w, C2), (N, h3, w3, C3) and a bank (K, dim) -> PatchCoreScores: a thin call into the
    method's one scoring program (``patchcore_body``), then the maps (None when with_maps is False). Images are
    split over mesh; every image's arithmetic has the same shapes on any shard count. Works under jit.
    """
    features_dim = config.dim
    if getattr(bank, "ndim", 0) != 2 or bank.shape[1] != features_dim:
        raise ValueError(f"bank must be (K, {features_dim}), got shape {np.shape(bank)}")
    for name, value in (("layer2", layer2), ("layer3", layer3)):
        if getattr(value, "ndim", 0) != 4:
            raise ValueError(f"{name} must be (N, h, w, C) NHWC, got shape {np.shape(value)}")
    if layer2.shape[0] != layer3.shape[0]:
        raise ValueError(f"layer2 and layer3 must hold the same images, got N={layer2.shape[0]} and {layer3.shape[0]}")
    scores, _ = METHOD.score(config, PatchCoreState(bank), Features((layer2, layer3)), mesh)
    maps = patchcore_maps(scores.patch_scores, config.map_size, config.sigma) if with_maps else None
    return PatchCoreScores(scores.image_scores, scores.patch_scores, maps)


# ------------------------------------------------------------------------------------------ method seam


class PatchCoreState(NamedTuple):
    """What ``fit`` learns from the reference images: the memory bank (K, dim)."""

    bank: jax.Array


FEW_SHOT_MAX = 16
"""Runs with at most this many reference images use the few-shot coreset ratio (0.05, PatchCore+'s setting);
more use the paper's full-shot 0.1."""

RUN = BackboneRun(image_size=224, taps=("layer2", "layer3"))
"""The original code's run: 224 x 224 crops, taps layer2 and layer3 (any ResNet of the family)."""

RESIZE_RATIO = 256 / 224
"""Resize(256) before CenterCrop(224): other crop sizes keep the ratio."""


EFFICIENTNET_RUNS = {name: BackboneRun(taps=("stride8", "stride16")) for name in EFFICIENTNET_CONFIGS}
"""EfficientNet-Lite: the stride-8 and stride-16 stages in the roles of layer2 and layer3 (the stages anomalib's
timm extractor returns for this network), each on its own grid (PatchCore's aggregation upsamples the deeper
one after its 3x3 unfold), at the network's native size (lite0: 224, the original code's crop), with the
original code's default embedding size (1024)."""


DINO_RUNS = {
    **{f"dinov2-vit{size}14{reg}": BackboneRun(image_size=224, taps=taps)
       for size, taps in (("s", (6, 9)), ("b", (6, 9)), ("l", (12, 18)), ("g", (20, 30))) for reg in ("", "-reg")},
    "dino-vits16": BackboneRun(image_size=224, taps=(6, 9)),
    "dino-vitb16": BackboneRun(image_size=224, taps=(6, 9)),
}
"""DINO / DINOv2 ViTs as a patch feature: the blocks at one half and three quarters of the depth (through the final
LayerNorm) in the roles of layer2 and layer3 (mid-level features, as PatchCore argues; both on one grid, so
its aggregation's upsample is the identity), at the original code's 224 px crop (16 x 16 patches for /14)."""


def backbone_run(architecture: str | None) -> BackboneRun:
    """PatchCore's run settings: the original code's for every ResNet (and unknown architectures), the
    EfficientNet-Lite stages for those networks, two middle blocks of a DINO / DINOv2 ViT."""
    return {**EFFICIENTNET_RUNS, **DINO_RUNS}.get(architecture or "", RUN)


def patchcore_prep(config, image_size: int) -> ImagePrep:
    """torchvision Resize(round(S * 256 / 224)) of the shorter side (PIL bilinear) + CenterCrop(S)."""
    del config
    return ImagePrep("resize_crop", resize_to=int(round(image_size * RESIZE_RATIO)))


def tapped_layers(features: Features) -> tuple[jax.Array, jax.Array]:
    """The two taps PatchCore embeds (layer2, layer3) from a backbone's Features; a clear error otherwise."""
    if len(features.layers) < 2:
        raise ValueError(f"PatchCore needs two tapped layers (layer2, layer3), got {len(features.layers)}")
    return features.layers[0], features.layers[1]


def patchcore_fit(config: PatchCoreConfig, references: Features | None, mesh: Mesh | None = None,
                  prepared=None) -> PatchCoreState:
    """Memory bank of the reference images' patch features (embed + greedy coreset, seed ``config.seed``)."""
    del prepared
    if references is None:
        raise ValueError("references: PatchCore needs normal reference images (K >= 1), got none")
    layer2, layer3 = tapped_layers(references)
    return PatchCoreState(fit_patchcore(layer2, layer3, config, config.seed, mesh))


def patchcore_body(config: PatchCoreConfig, state: PatchCoreState, queries: Features, mesh: Mesh | None, run):
    """PatchCore over a batch of queries -> (Scores, state), stages through ``run``: "embed" (patch features,
    ``config.image_chunk`` images at a time), "nearest" (squared distances to the bank, image scores their max
    or the b-nearest reweighting). Patch scores (N, h, w)."""
    layer2, layer3 = tapped_layers(queries)
    n, h, w, _ = layer2.shape
    features = run("embed", embed_in_chunks, layer2, layer3, config.dim, config.image_chunk)
    image, patch = run("nearest", _nearest_and_image, features, state.bank, config, mesh)
    return Scores(patch.reshape(n, h, w), image), state


def _nearest_and_image(features, bank, config: PatchCoreConfig, mesh):
    patch = nearest_scores(features, bank, mesh, config.precision, config.bank_tile)
    return image_scores(patch, features, bank, config.num_neighbors), patch


def patchcore_method_maps(config: PatchCoreConfig, patch_scores: jax.Array, size) -> jax.Array:
    """Anomaly maps at the crop size: bilinear (align_corners False), then Gaussian sigma (33 taps, reflect)."""
    return patchcore_maps(patch_scores, size, config.sigma)


def patchcore_extractor(config: PatchCoreConfig, backbone):
    """images uint8 (B, S, S, 3) -> Features: the backbone's taps, from a ResNet with the original code's
    load-time BatchNorm update when ``config.bn_stats`` is "original" (computed once per loaded backbone)."""
    if config.bn_stats == "original" and backbone.family == "resnet":
        from jzad.features.resnet import with_load_time_bn_update

        backbone = with_load_time_bn_update(backbone)
    return lambda images: backbone(images, FeatureRequest())


OPTIONS = method_row("patchcore").options
"""The command-line options, as written in ``jzad.methods.table``."""


def default_ratio(shots: int) -> float:
    """The coreset ratio for a run with ``shots`` reference images (see FEW_SHOT_MAX)."""
    preset = "few-shot" if shots <= FEW_SHOT_MAX else "full-shot"
    return PATCHCORE_PRESETS[preset].coreset_ratio


def patchcore_configure(values: dict, context: RunContext) -> PatchCoreConfig:
    """PatchCoreConfig from option values (dest -> value; missing = default) for a run."""
    fields = {"coreset_ratio": default_ratio(context.shots), "map_size": context.image_size}
    fields.update(option_fields(OPTIONS, values, common=("precision", "bn_stats")))
    with option_errors("patchcore options"):
        return PatchCoreConfig(**fields)


METHOD = register(Method(
    name="patchcore",
    score_units="squared L2 distance to the memory bank",
    distance_scores=True,
    summary=method_row("patchcore").summary,
    config_type=PatchCoreConfig,
    pools=False,
    few_shot="required",
    options=OPTIONS,
    request=lambda config: FeatureRequest(),
    fit=patchcore_fit,
    body=patchcore_body,
    configure=patchcore_configure,
    maps=patchcore_method_maps,
    backbone_run=backbone_run,
    default_backbone="wide-resnet50-2",
    demo_backbone="random-wide-resnet50-2",
    tiny_backbone="random-tiny-resnet",
    prep=patchcore_prep,
    stages=("embed", "nearest", "upsample"),
    multi_process=True,
    extractor=patchcore_extractor,
))
