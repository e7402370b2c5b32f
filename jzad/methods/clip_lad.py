"""CLIP-LAD: few-shot logical anomaly detection by coarse-to-fine CLIP segmentation (paper 003, Secs. 3-4).

Features (from ``jzad.backbone.naclip.naclip_encode`` on OpenCLIP ViT-L/14 at 448, 32 x 32 patches): the
residual streams of earlier blocks (``config.taps``, each quarter of the depth: 6, 12, 18) and the NACLIP
block's dense embeddings (every token in the text space). Every map drops its class token and is upsampled
x2 (bilinear, half-pixel centres: PyTorch's align_corners=False), so one image is a P = 64 x 64 grid.

Stages, each a pure jitted function (names from the paper):
- ``fit_centres`` (foreground extraction): k-means with N_c clusters over the k normal images' shallow
  features: the ``cluster_taps`` maps (6 and 12), each L2-normalised per patch, concatenated, normalised
  again. ``assign_regions``: each patch's nearest centre is its region (test images reuse the normal centres).
- ``region_embeddings`` (Eq. 1): per image and region, the mean of the dense features of its patches.
- ``foreground``: a region is foreground when its embedding's nearest coarse prompt (cosine) is an object
  prompt, not a background one.
- ``part_labels`` (fine-grained alignment): each foreground patch takes its nearest fine prompt (the
  category's part names); background patches get -1. ``fine_level="region"`` classifies the region
  embedding instead and gives its class to the region's foreground patches (the paper does this for the
  juice bottle). The labels form the part masks (64 x 64 with the defaults).
- ``class_histograms``: per image, the share of the foreground in each fine class (background excluded).
- Memories (``clip_lad_method_fit``): the k normal images' histograms and their multi-level patch features (the
  ``structural_taps`` maps, L2-normalised per patch).
- ``logical_scores`` (Eq. 2): s_log = min over memory histograms h of sum_c |(h_test,c + delta) / (h_c + delta) - 1|.
- ``structural_maps`` / ``structural_scores`` (Eq. 3): per patch, the Euclidean distance to its nearest memory
  patch, averaged over the levels; s_str = the max over patches.
- ``fit_fusion`` / ``fused_scores`` (Eq. 4): mean mu and covariance Sigma of (s_log, s_str) over validation
  normal images; s = sqrt((x - mu)^T Sigma^-1 (x - mu)) through a Cholesky solve.

The printed formulas have three slips, implemented here as intended:
- Eq. 2 prints ||h_test / h||_1, which is smallest for an empty test histogram and never 0 for a match; the
  intended ratio is compared with 1: sum_c |h_test,c / h_c - 1|. delta (small, default 0.01) joins both
  numerator and denominator, so bins equal in both histograms give exactly 0 (also when both are 0) and a
  part missing from the memory but present in the test image gives a large h_test,c / delta.
- Eq. 3 prints a max over the memory; a nearest-neighbour score is a min over the memory (then a max over
  the test patches, as the text says).
- Eq. 4 prints Sigma where a Mahalanobis distance needs Sigma^-1.
Sigma is the sample covariance (ddof 1) plus ``ridge`` times its mean variance on the diagonal, so two
validation scores that do not vary still give a finite distance.

Text enters as arrays (``CLIPLADPrompts``): unit text embeddings of the coarse and fine classes, each the
normalised mean of its normalised template embeddings (``ensemble_text``). ``LOCO_PROMPTS`` holds the class
names and N_c per MVTec LOCO category; ``prompt_texts`` expands them with the templates.

The registered method "clip_lad" (bottom of this file) runs these functions through the method seam:
``prepare`` embeds the category's prompts with the backbone's text tower, the extractor is the NACLIP pass,
``fit`` resolves N_c and the fine level for the category and keeps the memories, ``calibrate`` fits Eq. 4 on
validation/good, and scoring runs ``STAGES`` (``clip_lad_body``, the one scoring implementation) in
fixed-size image chunks split over the device mesh. Its image score is the fused s (s_log and s_str are kept
beside it); its patch scores the structural map (logical anomalies are scored per image, not localised).

The per-category constants are arrays of the fitted state, not static config: N_c is a count of active
k-means slots among ``slot_count(N_c)`` (8 for every LOCO category), the fine level a traced flag (both
levels computed, one selected), the prompt tables padded to ``slot_count`` rows with validity masks (a
padded histogram bin is 0 in every histogram, so it adds exactly 0 to s_log). Categories of one run thus
share one compiled scoring program; the padded computation equals the unpadded one.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import partial
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec

from jzad.backbone import CLIP_MEAN, CLIP_STD
from jzad.backbone.config import CLIPConfig, default_taps, get_architecture
from jzad.backbone.naclip import naclip_encode
from jzad.features.backbone import normalize_pixels
from jzad.kernels.distances import check_precision, dot_nt, l2_normalize
from jzad.kernels.kmeans import assign, kmeans
from jzad.kernels.multihost import to_host
from jzad.kernels.nearest import nearest_group_distance
from jzad.kernels.sharding import AXIS, device_mesh, num_shards_of, pad_rows, replicated
from jzad.methods.base import (
    BackboneRun,
    FeatureRequest,
    Features,
    Method,
    RunContext,
    Scores,
    direct,
    option_errors,
    option_fields,
    register,
)
from jzad.features.types import VALID, tokens_to_grid
from jzad.methods.table import method_row

FINE_LEVELS = ("patch", "region")


@dataclass(frozen=True)
class CLIPLADConfig:
    """Static configuration of CLIP-LAD (hashable, a static jit argument).

    image_size: input side of the backbone (448 for ViT-L/14: 32 x 32 patches). sigma: NACLIP's Gaussian
    width in patches. taps: 1-based blocks whose residual streams the extractor returns, in this order (each
    quarter of the depth below the NACLIP block). cluster_taps: the taps clustered for region proposals
    (the first two stages). structural_taps: the taps forming the patch memory. upsample: feature-map scale
    factor. num_clusters: N_c. kmeans_iterations, seed: the k-means run (k-means++ from ``seed``, then a
    fixed number of Lloyd steps). fine_level: "patch" or "region" fine classification. num_clusters and
    fine_level None: the category's values (``for_category``). These four and ridge are read at fit time
    only: the fitted state carries N_c and the fine level as arrays (``CLIPLADState``), so categories share
    one scoring program, whose stages see the config through ``scoring_key``.
    delta: histogram smoothing of Eq. 2. ridge: relative diagonal loading of the fusion covariance.
    precision: "fp32" or "bf16" GEMMs for the distances. query_tile: query patches per tile of the
    nearest-neighbour search. image_chunk: images per fixed-shape chunk of the method seam's stages (each
    device's share of a batch is scored in chunks of this many images).
    """

    image_size: int = 448
    sigma: float = 5.0
    taps: tuple[int, ...] = (6, 12, 18)
    cluster_taps: tuple[int, ...] = (6, 12)
    structural_taps: tuple[int, ...] = (6, 12, 18)
    upsample: int = 2
    num_clusters: int | None = 6
    kmeans_iterations: int = 30
    seed: int = 0
    fine_level: str | None = "patch"
    delta: float = 0.01
    ridge: float = 1e-6
    precision: str = "fp32"
    query_tile: int = 2048
    image_chunk: int = 2

    def __post_init__(self):
        for name in ("image_size", "upsample", "num_clusters", "query_tile", "image_chunk"):
            value = getattr(self, name)
            if name == "num_clusters" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected an integer >= 1, got {value!r}")
        if isinstance(self.kmeans_iterations, bool) or not isinstance(self.kmeans_iterations, int) \
                or self.kmeans_iterations < 0:
            raise ValueError(f"kmeans_iterations: expected an integer >= 0, got {self.kmeans_iterations!r}")
        taps = tuple(self.taps)
        if not taps or len(set(taps)) != len(taps) or any(not isinstance(t, int) or t < 1 for t in taps):
            raise ValueError(f"taps: expected distinct 1-based block indices, got {self.taps!r}")
        for name in ("cluster_taps", "structural_taps"):
            chosen = tuple(getattr(self, name))
            if not chosen or len(set(chosen)) != len(chosen) or any(t not in taps for t in chosen):
                raise ValueError(f"{name}: expected distinct members of taps {taps}, got {chosen!r}")
            object.__setattr__(self, name, chosen)
        object.__setattr__(self, "taps", taps)
        if not float(self.sigma) > 0:
            raise ValueError(f"sigma: expected a positive width, got {self.sigma!r}")
        if self.fine_level is not None and self.fine_level not in FINE_LEVELS:
            raise ValueError(f"fine_level: expected one of {FINE_LEVELS}, got {self.fine_level!r}")
        if not float(self.delta) > 0:
            raise ValueError(f"delta: expected a positive value, got {self.delta!r}")
        if not float(self.ridge) >= 0:
            raise ValueError(f"ridge: expected a value >= 0, got {self.ridge!r}")
        check_precision(self.precision)

    def for_category(self, prompts: "CategoryPrompts") -> "CLIPLADConfig":
        """This config with num_clusters and fine_level taken from a category's row where they are None."""
        return dataclasses.replace(
            self,
            num_clusters=prompts.num_clusters if self.num_clusters is None else self.num_clusters,
            fine_level=prompts.fine_level if self.fine_level is None else self.fine_level,
        )

    def tap_index(self, tap: int) -> int:
        """Position of block ``tap`` in ``taps`` (and in the features' tap tuple)."""
        return self.taps.index(tap)


def scoring_key(config: CLIPLADConfig) -> CLIPLADConfig:
    """``config`` with the fields only fitting reads (N_c, fine level, k-means run, ridge) reset: the compile key
    of the scoring stages, equal for every category of a run."""
    return dataclasses.replace(config, num_clusters=None, fine_level=None, kmeans_iterations=0, seed=0, ridge=0.0)


SLOT_BUCKET = 8
"""Cluster slots and prompt rows are padded to a multiple of this (masks mark the real ones), so the LOCO
categories (N_c <= 8, at most 6 coarse and 7 fine classes) all run one compiled program."""


def slot_count(count: int) -> int:
    """Padded size of ``count`` clusters or prompt classes: the next multiple of ``SLOT_BUCKET``."""
    return -(-count // SLOT_BUCKET) * SLOT_BUCKET


# ------------------------------------------------------------------------------------------------ prompts


@dataclass(frozen=True)
class CategoryPrompts:
    """Class names of one category: coarse background and object classes, fine part classes (the histogram
    bins), N_c and the fine level."""

    background: tuple[str, ...]
    objects: tuple[str, ...]
    parts: tuple[str, ...]
    num_clusters: int
    fine_level: str = "patch"


PROMPT_TEMPLATES = (
    "a photo of a {}.",
    "a photo of the {}.",
    "a close-up photo of a {}.",
    "a bright photo of a {}.",
    "a dark photo of a {}.",
    "a cropped photo of the {}.",
    "a photo of a {} on a production line.",
    "an industrial inspection photo of a {}.",
)
"""Templates for the text ensemble. The paper ensembles the ImageNet templates of Radford et al. (2021); the
prompt encoder may pass those instead to ``prompt_texts``."""

_BACKGROUND = ("background", "plain background", "table surface")

LOCO_PROMPTS: dict[str, CategoryPrompts] = {
    "breakfast_box": CategoryPrompts(
        _BACKGROUND, ("breakfast box", "food"),
        ("tangerine", "nectarine", "granola", "banana chips", "almonds", "white plastic tray"), 8,
    ),
    "juice_bottle": CategoryPrompts(
        _BACKGROUND, ("juice bottle", "glass bottle"),
        ("juice", "label with a fruit", "label with text", "empty glass"), 8, "region",
    ),
    "pushpins": CategoryPrompts(
        _BACKGROUND, ("box of pushpins", "pushpin"), ("pushpin", "plastic compartment wall"), 4,
    ),
    "screw_bag": CategoryPrompts(
        _BACKGROUND, ("bag of screws", "screw", "nut"), ("screw", "nut", "washer", "plastic bag"), 6,
    ),
    "splicing_connectors": CategoryPrompts(
        _BACKGROUND, ("splicing connector", "cable"),
        ("splicing connector", "yellow cable", "blue cable", "red cable"), 6,
    ),
}
"""Per MVTec LOCO category (the juice_bottle and splicing_connectors sub-types share their category's row):
class names written for this port and N_c read as plausible values; the paper gives the part names by
example only ("splicing connector", "red/yellow/blue cable") and N_c per category in a figure whose values
are not in its text. Tune N_c per category as the paper's Fig. 4 does."""

GENERIC_PROMPTS = CategoryPrompts(
    _BACKGROUND, ("object", "product"),
    ("red part", "orange part", "yellow part", "green part", "blue part", "white part", "black part"), 6,
)
"""The row for a category outside ``LOCO_PROMPTS`` (the built-in demo, a user's own LOCO-like set, the
synthetic LOCO tree of the tests): parts named by colour, so the part histogram counts colours."""


def category_prompts(category: str) -> CategoryPrompts:
    """The ``LOCO_PROMPTS`` row of a LOCO category or of one of its sub-types ("juice_bottle-banana": the
    name before the first "-"), else ``GENERIC_PROMPTS``."""
    base = category.split("-", 1)[0]
    return LOCO_PROMPTS.get(category, LOCO_PROMPTS.get(base, GENERIC_PROMPTS))


def prompt_texts(names: Sequence[str], templates: Sequence[str] = PROMPT_TEMPLATES) -> list[list[str]]:
    """(classes, templates) prompt strings: templates[j].format(names[i])."""
    return [[t.format(name) for t in templates] for name in names]


def ensemble_text(embeddings: jax.Array) -> jax.Array:
    """(classes, templates, D) text embeddings -> (classes, D): normalise, mean over templates, normalise."""
    if embeddings.ndim != 3:
        raise ValueError(f"embeddings: expected (classes, templates, D), got shape {embeddings.shape}")
    return l2_normalize(jnp.mean(l2_normalize(embeddings.astype(jnp.float32)), axis=1))


class CLIPLADPrompts(NamedTuple):
    """Text side: coarse (Tc, D) and fine (Tf, D) class embeddings (unit rows); is_object (Tc,) bool, True for
    the coarse classes that mean foreground; coarse_valid (Tc,) and fine_valid (Tf,) bool: the real classes
    (rows past them are padding, ``pad_prompts``, never the nearest class)."""

    coarse: jax.Array
    is_object: jax.Array
    fine: jax.Array
    coarse_valid: jax.Array
    fine_valid: jax.Array


def make_prompts(background: jax.Array, objects: jax.Array, fine: jax.Array) -> CLIPLADPrompts:
    """CLIPLADPrompts from class embeddings (Tb, D) background, (To, D) object and (Tf, D) part classes."""
    if background.ndim != 2 or objects.ndim != 2 or fine.ndim != 2:
        raise ValueError("background, objects and fine must be (classes, D) arrays")
    if not background.shape[1] == objects.shape[1] == fine.shape[1]:
        raise ValueError(
            f"text embeddings disagree on D: {background.shape[1]}, {objects.shape[1]}, {fine.shape[1]}"
        )
    is_object = jnp.concatenate([jnp.zeros(background.shape[0], bool), jnp.ones(objects.shape[0], bool)])
    return CLIPLADPrompts(
        l2_normalize(jnp.concatenate([background, objects]).astype(jnp.float32)),
        is_object,
        l2_normalize(fine.astype(jnp.float32)),
        jnp.ones(is_object.shape[0], bool),
        jnp.ones(fine.shape[0], bool),
    )


def pad_prompts(prompts: CLIPLADPrompts, coarse_rows: int, fine_rows: int) -> CLIPLADPrompts:
    """Prompts padded with zero rows (masked invalid, not objects) to (coarse_rows, D) and (fine_rows, D)."""
    def pad(a, rows):
        if rows < a.shape[0]:
            raise ValueError(f"pad_prompts: {a.shape[0]} classes do not fit in {rows} rows")
        if rows == a.shape[0]:
            return a
        return jnp.pad(jnp.asarray(a), [(0, rows - a.shape[0])] + [(0, 0)] * (a.ndim - 1))

    return CLIPLADPrompts(pad(prompts.coarse, coarse_rows), pad(prompts.is_object, coarse_rows),
                          pad(prompts.fine, fine_rows), pad(prompts.coarse_valid, coarse_rows),
                          pad(prompts.fine_valid, fine_rows))


# ----------------------------------------------------------------------------------------------- features


class PreparedFeatures(NamedTuple):
    """Per-patch features on the upsampled grid (P = (upsample * g) ** 2): cluster (B, P, C) unit shallow
    features, dense (B, P, D) unit text-space features, levels: per structural tap (B, P, W) unit."""

    cluster: jax.Array
    dense: jax.Array
    levels: tuple[jax.Array, ...]


def upsample_grid(grid: jax.Array, factor: int) -> jax.Array:
    """(B, h, w, C) -> (B, factor h, factor w, C), bilinear with half-pixel centres (PyTorch align_corners=False)."""
    if factor == 1:
        return grid
    b, h, w, c = grid.shape
    return jax.image.resize(grid.astype(jnp.float32), (b, factor * h, factor * w, c), "bilinear")


def _patches(grid: jax.Array, factor: int) -> jax.Array:
    grid = upsample_grid(grid, factor)
    b, h, w, c = grid.shape
    return grid.reshape(b, h * w, c)


@partial(jax.jit, static_argnames=("config",))
def prepare_grids(taps: tuple[jax.Array, ...], dense: jax.Array, config: CLIPLADConfig) -> PreparedFeatures:
    """Upsample and normalise patch grids (module docstring): taps, one (B, g, g, W) grid per ``config.taps``
    entry, and the dense (B, g, g, D) grid (class tokens dropped) -> PreparedFeatures."""
    if len(taps) != len(config.taps):
        raise ValueError(f"features carry {len(taps)} taps but config.taps is {config.taps}")
    shallow = [l2_normalize(_patches(taps[config.tap_index(t)], config.upsample)) for t in config.cluster_taps]
    cluster = l2_normalize(jnp.concatenate(shallow, axis=-1))
    levels = tuple(l2_normalize(_patches(taps[config.tap_index(t)], config.upsample)) for t in config.structural_taps)
    return PreparedFeatures(cluster, l2_normalize(_patches(dense, config.upsample)), levels)


# ---------------------------------------------------------------------------------------- coarse to fine


@partial(jax.jit, static_argnames=("slots", "iterations", "seed", "precision"))
def fit_centres(cluster: jax.Array, num_clusters: jax.Array, *, slots: int, iterations: int, seed: int = 0,
                precision: str = "fp32") -> jax.Array:
    """k-means centres (slots, C) of the k normal images' shallow features (k, P, C): the first num_clusters
    (N_c, traced) rows are the centres of k-means with N_c clusters, the rest zero (``kmeans``' active slots),
    so every N_c <= slots runs one program."""
    points = cluster.reshape(-1, cluster.shape[-1])
    result = kmeans(points, slots, jax.random.key(seed), iterations, precision=precision, active=num_clusters)
    return result.centres


def assign_regions(cluster: jax.Array, centres: jax.Array, num_clusters: jax.Array | int | None = None,
                   precision: str = "fp32") -> jax.Array:
    """Region (nearest of the first num_clusters centres; None: all) of every patch: (B, P, C), (S, C) -> (B, P)
    int32."""
    b, p, c = cluster.shape
    labels, _ = assign(cluster.reshape(b * p, c), centres, precision, num_clusters)
    return labels.reshape(b, p)


def region_embeddings(dense: jax.Array, regions: jax.Array, num_regions: int) -> tuple[jax.Array, jax.Array]:
    """Eq. 1 per image: (B, P, D), (B, P) -> (means (B, N_c, D), patch counts (B, N_c)); empty regions give 0."""
    onehot = jax.nn.one_hot(regions, num_regions, dtype=jnp.float32)  # (B, P, N_c)
    counts = jnp.sum(onehot, axis=1)
    sums = jnp.einsum("bpr,bpd->brd", onehot, dense.astype(jnp.float32), precision=jax.lax.Precision.HIGHEST)
    return sums / jnp.maximum(counts, 1.0)[..., None], counts


def _nearest_class(x: jax.Array, text: jax.Array, valid: jax.Array) -> jax.Array:
    """Index of the most similar (cosine) valid text class (T, D) (valid (T,) bool) of each row of x (..., D)
    -> (...)."""
    flat = l2_normalize(x.reshape(-1, x.shape[-1]))
    similarity = jnp.where(valid[None, :], dot_nt(flat, l2_normalize(text)), -jnp.inf)
    return jnp.argmax(similarity, axis=-1).reshape(x.shape[:-1]).astype(jnp.int32)


def foreground(region_emb: jax.Array, counts: jax.Array, regions: jax.Array, prompts: CLIPLADPrompts) -> jax.Array:
    """Foreground patches (B, P) bool: the patch's region is non-empty and its nearest coarse class is an
    object class. region_emb (B, S, D), counts (B, S), regions (B, P)."""
    nearest = _nearest_class(region_emb, prompts.coarse, prompts.coarse_valid)
    region_is_object = prompts.is_object[nearest] & (counts > 0)
    return jnp.take_along_axis(region_is_object, regions, axis=1)


def part_labels(dense: jax.Array, fg: jax.Array, prompts: CLIPLADPrompts, regions: jax.Array,
                region_emb: jax.Array, region_level: jax.Array | bool) -> jax.Array:
    """Fine class of every foreground patch, -1 elsewhere: (B, P) int32.

    region_level False (fine level "patch"): each patch's dense feature (B, P, D) against the fine classes;
    True ("region"): each region embedding (B, S, D) against them, given to its patches (regions (B, P)).
    A traced flag: both are computed and one is selected, so both levels run one program.
    """
    by_patch = _nearest_class(dense, prompts.fine, prompts.fine_valid)
    by_region = jnp.take_along_axis(_nearest_class(region_emb, prompts.fine, prompts.fine_valid), regions, axis=1)
    return jnp.where(fg, jnp.where(region_level, by_region, by_patch), -1)


def class_histograms(labels: jax.Array, num_classes: int) -> jax.Array:
    """Share of the foreground in each class: (B, P) labels (-1 = background) -> (B, num_classes); rows of an
    image without foreground are all 0."""
    onehot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)  # -1 -> all zeros
    counts = jnp.sum(onehot, axis=1)
    return counts / jnp.maximum(jnp.sum(counts, axis=1, keepdims=True), 1.0)


# ------------------------------------------------------------------------------------------------- scores


def logical_scores(histograms: jax.Array, memory: jax.Array, delta: float) -> jax.Array:
    """Eq. 2 as intended: min over memory rows m of sum_c |(h_c + delta) / (m_c + delta) - 1|.

    histograms (B, Tf), memory (k, Tf) -> (B,)."""
    ratio = (histograms[:, None, :] + delta) / (memory[None, :, :] + delta)
    return jnp.min(jnp.sum(jnp.abs(ratio - 1.0), axis=-1), axis=1)


def structural_maps(
    levels: tuple[jax.Array, ...], memory: tuple[jax.Array, ...], precision: str = "fp32", query_tile: int = 2048
) -> jax.Array:
    """Per patch, the Euclidean distance to the nearest memory patch, averaged over levels.

    levels: per level (B, P, W_l) query features; memory: per level (k, M, W_l) memory features, one group of
    M patches per normal image -> (B, P). The search is tiled (query_tile queries x one image's patches)."""
    if len(levels) != len(memory) or not levels:
        raise ValueError(f"levels and memory must pair up, got {len(levels)} and {len(memory)}")
    total = 0.0
    for queries, bank in zip(levels, memory):
        b, p, c = queries.shape
        d = nearest_group_distance(queries.reshape(b * p, c), bank, query_tile=query_tile,
                                   group_tile=1, precision=precision)
        total = total + jnp.min(d, axis=1).reshape(b, p)
    return total / len(levels)


def structural_scores(maps: jax.Array) -> jax.Array:
    """Eq. 3: the max of each (B, P) structural map -> (B,)."""
    return jnp.max(maps, axis=1)


class Fusion(NamedTuple):
    """mean (2,) of (s_log, s_str) on validation images; cholesky (2, 2) lower factor of their covariance."""

    mean: jax.Array
    cholesky: jax.Array


def fit_fusion(scores: jax.Array, ridge: float = 1e-6, valid: jax.Array | None = None) -> Fusion:
    """Eq. 4's mu and Sigma from (V, 2) validation scores (V >= 2 real rows): sample covariance (ddof 1) plus
    ridge * mean variance (+ 1e-12) on the diagonal, Cholesky-factored. ``valid`` (V,) bool: the real rows of a
    set padded to a bucket size (the others carry no weight), so every validation count of a bucket shares one
    program."""
    if scores.ndim != 2 or scores.shape[1] != 2 or scores.shape[0] < 2:
        raise ValueError(f"scores: expected (V, 2) with V >= 2 validation images, got shape {scores.shape}")
    if valid is None:
        valid = np.ones(scores.shape[0], bool)
    elif np.ndim(valid) != 1 or np.shape(valid)[0] != scores.shape[0]:
        raise ValueError(f"valid: expected ({scores.shape[0]},) bool, got shape {np.shape(valid)}")
    return _fit_fusion(scores.astype(jnp.float32), jnp.asarray(valid, bool), ridge)


@jax.jit
def _fit_fusion(x: jax.Array, valid: jax.Array, ridge) -> Fusion:
    weight = valid.astype(jnp.float32)[:, None]
    count = jnp.sum(weight)
    mean = jnp.sum(x * weight, axis=0) / count
    centred = (x - mean) * weight
    cov = jnp.matmul(centred.T, centred, precision=jax.lax.Precision.HIGHEST) / (count - 1)
    cov = cov + (ridge * jnp.trace(cov) / 2.0 + 1e-12) * jnp.eye(2, dtype=jnp.float32)
    return Fusion(mean, jnp.linalg.cholesky(cov))


def fused_scores(scores: jax.Array, fusion: Fusion) -> jax.Array:
    """Eq. 4 as intended: sqrt((x - mu)^T Sigma^-1 (x - mu)) = ||L^-1 (x - mu)|| for (B, 2) scores -> (B,)."""
    z = jax.scipy.linalg.solve_triangular(fusion.cholesky, (scores - fusion.mean).T, lower=True)
    return jnp.sqrt(jnp.sum(z * z, axis=0))


# ---------------------------------------------------------------------------------------------- the method


class CLIPLADState(NamedTuple):
    """The fitted state of a category, all arrays (so categories of one shape bucket share the scoring program).

    centres (S, C): k-means centres in S = ``slot_count(N_c)`` slots, the first num_clusters () int32 (N_c) in
    use; region_level () bool: fine classes per region (True) or per patch; histograms (k, Tf) memory over the
    padded fine classes; patch_memory per structural tap (k, P, W); prompts padded to ``slot_count`` rows;
    fusion (None until ``calibrate``)."""

    centres: jax.Array
    num_clusters: jax.Array
    region_level: jax.Array
    histograms: jax.Array
    patch_memory: tuple[jax.Array, ...]
    prompts: CLIPLADPrompts
    fusion: Fusion | None = None


# ------------------------------------------------------------------------------------------ method seam
# The registered method ("clip_lad"): the backbone pass is NACLIP (``clip_lad_extractor``), the prompts are
# embedded once per category (``clip_lad_prepare``), fit keeps the memories of the k references, calibrate
# fits Eq. 4 on validation/good, and scoring runs the stages below on fixed-size chunks of images split over
# the device mesh by image, so every array has the same shape on any shard count and sharded scores equal
# unsharded ones bit for bit.

DENSE = "dense"
"""The ``Features.extras`` key of the NACLIP dense grid (B, g, g, D)."""

STAGES = ("features", "assign", "match", "histogram", "memory", "fusion")
"""Stages of the seam, in order: upsample + normalise the grids; nearest k-means centre per patch (clustering
assignment); region embeddings against coarse prompts, patches against fine prompts (prompt matching); part
histogram and s_log; patch-memory distances and s_str; Mahalanobis fusion."""


@partial(jax.jit, static_argnames=("clip_config", "taps", "sigma", "dtype"))
def _naclip_features(params, images, *, clip_config, taps, sigma, dtype) -> Features:
    pixels = normalize_pixels(images, CLIP_MEAN, CLIP_STD)
    streams, dense = naclip_encode(params, pixels, clip_config, taps, sigma, dtype)
    return Features(tuple(tokens_to_grid(t) for t in streams), None, {DENSE: tokens_to_grid(dense)})


def clip_lad_extractor(config: CLIPLADConfig, backbone):
    """uint8 (B, S, S, 3) images -> Features: the residual-stream grids of ``config.taps`` as layers and the
    NACLIP dense grid in extras[DENSE], from one pass of the backbone's CLIP vision tower."""
    if backbone.family != "clip" or not isinstance(backbone.config, CLIPConfig):
        raise ValueError(f"clip_lad runs NACLIP on a CLIP vision tower; {backbone.name} is a {backbone.family} "
                         "backbone")
    layers = backbone.config.vision.layers
    if any(t >= layers for t in config.taps):
        raise ValueError(
            f"taps {','.join(map(str, config.taps))}: NACLIP replaces the last block ({layers}) of {backbone.name}; "
            f"tap blocks 1..{layers - 1}, e.g. {','.join(map(str, default_taps(layers)[:-1]))}"
        )
    if backbone.image_size != config.image_size:
        raise ValueError(f"the backbone runs at {backbone.image_size} px, the clip_lad config at {config.image_size}")
    clip_config, dtype = backbone.config, backbone.dtype

    def extract(images) -> Features:
        return _naclip_features(backbone.params, jnp.asarray(images), clip_config=clip_config, taps=config.taps,
                                sigma=float(config.sigma), dtype=dtype)

    return extract


class CategoryText(NamedTuple):
    """What ``prepare`` computes once per category: the prompt embeddings and the category's table row."""

    prompts: CLIPLADPrompts
    row: CategoryPrompts


def encode_category(encode, row: CategoryPrompts, templates: Sequence[str] = PROMPT_TEMPLATES) -> CLIPLADPrompts:
    """CLIPLADPrompts of a table row: encode(list of str) -> (P, D) text embeddings of every (class, template)
    prompt, ensembled per class (``ensemble_text``). The coarse and fine class lists are padded to
    ``slot_count`` rows (padding classes repeat the list's last name, then are zeroed and masked), so every
    category encodes the same number of prompts and yields tables of one shape."""
    coarse = [*row.background, *row.objects]
    coarse_rows, fine_rows = slot_count(len(coarse)), slot_count(len(row.parts))
    names = [*coarse, *coarse[-1:] * (coarse_rows - len(coarse)), *row.parts,
             *row.parts[-1:] * (fine_rows - len(row.parts))]
    texts = [t for per_class in prompt_texts(names, templates) for t in per_class]
    counts = np.array([len(row.background), len(coarse), len(row.parts)], np.int32)
    return _prompt_tables(jnp.asarray(encode(texts)), counts, coarse_rows=coarse_rows, templates=len(templates))


@partial(jax.jit, static_argnames=("coarse_rows", "templates"))
def _prompt_tables(embeddings: jax.Array, counts: jax.Array, *, coarse_rows: int, templates: int) -> CLIPLADPrompts:
    """(classes * templates, D) embeddings, the first coarse_rows classes coarse, the rest fine; counts (3,):
    background classes, real coarse classes, real fine classes -> padded CLIPLADPrompts."""
    classes = ensemble_text(embeddings.reshape(-1, templates, embeddings.shape[-1]))
    coarse_index, fine_index = jnp.arange(coarse_rows), jnp.arange(classes.shape[0] - coarse_rows)
    coarse_valid, fine_valid = coarse_index < counts[1], fine_index < counts[2]
    return CLIPLADPrompts(l2_normalize(classes[:coarse_rows]) * coarse_valid[:, None],
                          (coarse_index >= counts[0]) & coarse_valid,
                          l2_normalize(classes[coarse_rows:]) * fine_valid[:, None], coarse_valid, fine_valid)


def clip_lad_prepare(config: CLIPLADConfig, backbone, category: str) -> CategoryText:
    """The category's prompt embeddings (``category_prompts`` row, ``PROMPT_TEMPLATES``) from the backbone's
    text tower."""
    del config
    if backbone.encode_prompts is None:
        raise ValueError(f"clip_lad embeds text prompts: {backbone.name} was loaded without its text tower")
    row = category_prompts(category)
    return CategoryText(encode_category(backbone.encode_prompts, row), row)


def _by_image(fn, mesh: Mesh, chunk: int, rows, *shared):
    """fn(rows chunk, *shared) -> pytree of (chunk, ...) arrays, over fixed chunks of ``chunk`` images: rows (a
    pytree of (n, ...) arrays) split over the mesh by image, each device's share padded to whole chunks and
    mapped chunk by chunk; ``shared`` operands replicated. Returns the outputs of the n real images."""
    n = jax.tree.leaves(rows)[0].shape[0]
    shards = num_shards_of(mesh)
    share = -(-n // shards)  # images per device
    per_device = -(-share // chunk) * chunk  # in whole chunks
    padded = jax.tree.map(lambda a: pad_rows(a, per_device * shards), rows)

    def per_device_fn(block, *operands):
        chunks = jax.tree.map(lambda a: a.reshape((per_device // chunk, chunk) + a.shape[1:]), block)
        out = jax.lax.map(lambda c: fn(c, *operands), chunks)
        return jax.tree.map(lambda a: a.reshape((per_device,) + a.shape[2:]), out)

    mapped = jax.shard_map(per_device_fn, mesh=mesh, in_specs=(PartitionSpec(AXIS),) + (PartitionSpec(),) * len(shared),
                           out_specs=PartitionSpec(AXIS), check_vma=False)
    return jax.tree.map(lambda a: a[:n], mapped(padded, *shared))


@partial(jax.jit, static_argnames=("config", "mesh"))
def features_stage(layers: tuple, dense: jax.Array, config: CLIPLADConfig, mesh: Mesh) -> PreparedFeatures:
    """``prepare_grids`` per chunk of images: layers per tap (B, g, g, W), dense (B, g, g, D)."""
    return _by_image(lambda rows: prepare_grids(rows[0], rows[1], config), mesh, config.image_chunk, (layers, dense))


@partial(jax.jit, static_argnames=("config", "mesh"))
def assign_stage(cluster: jax.Array, centres: jax.Array, num_clusters: jax.Array, config: CLIPLADConfig,
                 mesh: Mesh) -> jax.Array:
    """Clustering assignment: the region (nearest of the first num_clusters centres) of every patch, (B, P, C),
    (S, C) -> (B, P)."""
    return _by_image(lambda c, cen, used: assign_regions(c, cen, used, config.precision), mesh, config.image_chunk,
                     cluster, centres, num_clusters)


@partial(jax.jit, static_argnames=("config", "mesh", "slots"))
def match_stage(dense: jax.Array, regions: jax.Array, prompts: CLIPLADPrompts, region_level: jax.Array,
                config: CLIPLADConfig, mesh: Mesh, slots: int) -> jax.Array:
    """Prompt matching: region embeddings (over the S = slots cluster slots) vs coarse prompts (foreground),
    patches (or regions, region_level () bool) vs fine prompts -> part labels (B, P) int32, -1 on the
    background."""

    def fn(rows, text, by_region):
        dense_rows, region_rows = rows
        emb, counts = region_embeddings(dense_rows, region_rows, slots)
        fg = foreground(emb, counts, region_rows, text)
        return part_labels(dense_rows, fg, text, region_rows, emb, by_region)

    return _by_image(fn, mesh, config.image_chunk, (dense, regions), prompts, region_level)


@partial(jax.jit, static_argnames=("config", "mesh", "num_classes"))
def histogram_stage(labels: jax.Array, memory: jax.Array | None, config: CLIPLADConfig, mesh: Mesh,
                    num_classes: int) -> tuple[jax.Array, jax.Array | None]:
    """Part histograms (B, Tf) of the labels (B, P) and, given the memory histograms (k, Tf), s_log (B,)."""

    def fn(rows, *bank):
        hist = class_histograms(rows, num_classes)
        return (hist, logical_scores(hist, bank[0], config.delta)) if bank else (hist, None)

    return _by_image(fn, mesh, config.image_chunk, labels, *(() if memory is None else (memory,)))


@partial(jax.jit, static_argnames=("config", "mesh"))
def memory_stage(levels: tuple, memory: tuple, config: CLIPLADConfig, mesh: Mesh) -> tuple[jax.Array, jax.Array]:
    """Patch memory: the structural map (B, P) and s_str (B,) of the query levels against the k references'."""

    def fn(rows, bank):
        maps = structural_maps(rows, bank, config.precision, config.query_tile)
        return maps, structural_scores(maps)

    return _by_image(fn, mesh, config.image_chunk, levels, memory)


@partial(jax.jit, static_argnames=("config", "mesh"))
def fusion_stage(logical: jax.Array, structural: jax.Array, fusion: Fusion, config: CLIPLADConfig,
                 mesh: Mesh) -> jax.Array:
    """Eq. 4 per image: (B,), (B,) -> (B,) Mahalanobis distances."""
    return _by_image(lambda rows, f: fused_scores(jnp.stack(rows, axis=1), f), mesh, config.image_chunk,
                     (logical, structural), fusion)


def _on_mesh(mesh: Mesh, tree):
    return jax.device_put(tree, replicated(mesh))


def _stages(config: CLIPLADConfig, fitted: CLIPLADState, queries: Features, mesh: Mesh, run) -> tuple:
    """Run the stages up to fusion on queries -> (maps (B, P), s_log (B,), s_str (B,)); run(stage, fn, ...)
    calls each stage (timed by a StageClock in ``staged``); config: the ``scoring_key``."""
    if DENSE not in queries.extras:
        raise ValueError("clip_lad features need the NACLIP dense grid (use the method's extractor)")
    layers, dense, fitted = _on_mesh(mesh, (tuple(queries.layers), queries.extras[DENSE], fitted))
    prepared = run("features", features_stage, layers, dense, config, mesh)
    regions = run("assign", assign_stage, prepared.cluster, fitted.centres, fitted.num_clusters, config, mesh)
    labels = run("match", match_stage, prepared.dense, regions, fitted.prompts, fitted.region_level, config, mesh,
                 fitted.centres.shape[0])
    _, logical = run("histogram", histogram_stage, labels, fitted.histograms, config, mesh,
                     fitted.prompts.fine.shape[0])
    maps, structural = run("memory", memory_stage, prepared.levels, fitted.patch_memory, config, mesh)
    return maps, logical, structural


def clip_lad_body(config: CLIPLADConfig, state: CLIPLADState, queries: Features, mesh, run):
    """CLIP-LAD on query features -> (Scores(structural maps (B, 2g, 2g), fused image scores (B,), keep
    {"logical": s_log (B,), "structural": s_str (B,)}), state), every stage (``STAGES``) through ``run``. The
    category's constants (N_c, fine level, prompts) are arrays of the state, so one program serves every
    category of a run."""
    if state.fusion is None:
        raise ValueError("clip_lad: the state has no fusion; calibrate it on validation images first")
    cfg = scoring_key(config)
    mesh = device_mesh(1) if mesh is None else mesh
    maps, logical, structural = _stages(cfg, state, queries, mesh, run)
    fused = run("fusion", fusion_stage, logical, structural, _on_mesh(mesh, state.fusion), cfg, mesh)
    side = queries.layers[0].shape[1] * cfg.upsample
    return Scores(maps.reshape(-1, side, side), fused, {"logical": logical, "structural": structural}), state


def clip_lad_method_fit(config: CLIPLADConfig, references: Features | None = None, mesh: Mesh | None = None,
                        prepared: CategoryText | None = None) -> CLIPLADState:
    """The category's N_c and fine level (``for_category``) as arrays, k-means centres of the k references (on
    one device, so the centres do not depend on the mesh) in ``slot_count(N_c)`` slots, prompts padded to
    ``slot_count`` rows, the references' part histograms and patch memory; fusion comes with calibrate."""
    if references is None:
        raise ValueError("references: clip_lad needs normal reference images (k >= 1), got none")
    if prepared is None:
        raise ValueError("clip_lad fits with its category's prompt embeddings (the method's prepare step)")
    resolved = config.for_category(prepared.row)
    cfg = scoring_key(config)
    mesh = device_mesh(1) if mesh is None else mesh
    num_clusters = np.int32(resolved.num_clusters)
    region_level = np.bool_(resolved.fine_level == "region")
    layers, dense = _on_mesh(mesh, (tuple(references.layers), references.extras[DENSE]))
    features = features_stage(layers, dense, cfg, mesh)
    cluster = jax.device_put(to_host(features.cluster), jax.local_devices()[0])
    centres = np.asarray(fit_centres(cluster, num_clusters, slots=slot_count(resolved.num_clusters),
                                     iterations=resolved.kmeans_iterations, seed=resolved.seed,
                                     precision=resolved.precision))
    text = prepared.prompts
    text = jax.tree.map(np.asarray, pad_prompts(text, slot_count(text.coarse.shape[0]), slot_count(text.fine.shape[0])))
    prompts = _on_mesh(mesh, text)
    regions = assign_stage(features.cluster, _on_mesh(mesh, centres), num_clusters, cfg, mesh)
    labels = match_stage(features.dense, regions, prompts, region_level, cfg, mesh, centres.shape[0])
    histograms, _ = histogram_stage(labels, None, cfg, mesh, prompts.fine.shape[0])
    return CLIPLADState(centres, num_clusters, region_level, histograms, features.levels, text)


def clip_lad_calibrate(config: CLIPLADConfig, state: CLIPLADState, features: Features,
                       mesh: Mesh | None = None) -> CLIPLADState:
    """Eq. 4's mu and Sigma from the (s_log, s_str) of validation normal images (V >= 2); a set padded to a
    bucket size (``Features.extras[VALID]``) is fitted on its real rows only."""
    mesh = device_mesh(1) if mesh is None else mesh
    _, logical, structural = _stages(scoring_key(config), state, features, mesh, direct)
    scores = jax.device_put(to_host(jnp.stack([logical, structural], axis=1)), jax.local_devices()[0])
    valid = features.extras.get(VALID)
    real = scores.shape[0] if valid is None else int(np.sum(valid))
    if real < 2:
        raise ValueError(f"calibration: clip_lad needs V >= 2 validation images, got {real}")
    fusion = jax.tree.map(np.asarray, fit_fusion(scores, config.ridge, None if valid is None else np.asarray(valid)))
    return state._replace(fusion=fusion)


@partial(jax.jit, static_argnames=("config", "size"))
def clip_lad_maps(config: CLIPLADConfig, patch_scores: jax.Array, size) -> jax.Array:
    """Structural maps (N, h, w) -> (N, H, W) at image resolution: bilinear, half-pixel centres."""
    del config
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    return jax.image.resize(patch_scores.astype(jnp.float32), (patch_scores.shape[0], h, w), "bilinear")


BACKBONE_PRESETS = {"ViT-L-14": BackboneRun(image_size=448, activation="gelu", taps=(6, 12, 18))}
"""The paper's backbone: OpenCLIP ViT-L/14 (DataComp-1B, GELU) at 448 px (32 x 32 patches), tapped at the first
three quarters of its depth (the fourth block is NACLIP's)."""


def backbone_run(architecture: str | None) -> BackboneRun:
    """CLIP-LAD's run settings for a backbone architecture: the preset above, else the native size and the
    quarter-depth taps below the last block (which NACLIP replaces). Architectures that are not CLIPs (DINOv2,
    ResNet, EfficientNet) get no preset: loading them with the text tower CLIP-LAD needs fails with a clear error."""
    if architecture in BACKBONE_PRESETS:
        return BACKBONE_PRESETS[architecture]
    try:
        config = get_architecture(architecture) if architecture is not None else None
    except ValueError:
        config = None
    if config is None:
        return BackboneRun()
    return BackboneRun(taps=default_taps(config)[:-1])


OPTIONS = method_row("clip_lad").options
"""The command-line options, as written in ``jzad.methods.table``."""


def clip_lad_configure(values: dict, context: RunContext) -> CLIPLADConfig:
    """CLIPLADConfig for a run: the backbone's taps (the first two clustered, all in the patch memory), its
    input side, option values; N_c and the fine level default to each category's (None until fit)."""
    fields = option_fields(OPTIONS, values, common=("precision",))
    fields.setdefault("num_clusters", None)
    fields.setdefault("fine_level", None)
    if context.taps is not None:
        taps = tuple(int(t) for t in context.taps)
        fields.update(taps=taps, cluster_taps=taps[:2], structural_taps=taps)
    with option_errors("clip_lad options"):
        return CLIPLADConfig(image_size=context.image_size, **fields)


METHOD = register(Method(
    name="clip_lad",
    summary=method_row("clip_lad").summary,
    config_type=CLIPLADConfig,
    pools=False,
    few_shot="required",
    options=OPTIONS,
    request=lambda config: FeatureRequest(),
    fit=clip_lad_method_fit,
    body=clip_lad_body,
    configure=clip_lad_configure,
    maps=clip_lad_maps,
    backbone_run=backbone_run,
    default_backbone="vit-l-14-datacomp",
    demo_backbone="random-vit-b-16",
    tiny_backbone="random-tiny-text",
    stages=STAGES,
    prepare=clip_lad_prepare,
    extractor=clip_lad_extractor,
    calibrate=clip_lad_calibrate,
    calibration="validation",
    needs_text=True,
    multi_process=True,
))
