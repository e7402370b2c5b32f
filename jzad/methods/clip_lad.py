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
- Memories (``clip_lad_fit``): the k normal images' histograms and their multi-level patch features (the
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
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp

from jzad.backbone.config import CLIPConfig
from jzad.backbone.naclip import naclip_encode
from jzad.kernels.distances import check_precision, dot_nt, l2_normalize
from jzad.kernels.kmeans import assign, kmeans
from jzad.kernels.nearest import nearest_group_distance
from jzad.methods.musc import tokens_to_grid

FINE_LEVELS = ("patch", "region")


@dataclass(frozen=True)
class CLIPLADConfig:
    """Static configuration of CLIP-LAD (hashable, a static jit argument).

    image_size: input side of the backbone (448 for ViT-L/14: 32 x 32 patches). sigma: NACLIP's Gaussian
    width in patches. taps: 1-based blocks whose residual streams the extractor returns, in this order (each
    quarter of the depth below the NACLIP block). cluster_taps: the taps clustered for region proposals
    (the first two stages). structural_taps: the taps forming the patch memory. upsample: feature-map scale
    factor. num_clusters: N_c. kmeans_iterations, seed: the k-means run (k-means++ from ``seed``, then a
    fixed number of Lloyd steps). fine_level: "patch" or "region" fine classification. delta: histogram
    smoothing of Eq. 2. ridge: relative diagonal loading of the fusion covariance. precision: "fp32" or "bf16"
    GEMMs for the distances. query_tile: query patches per tile of the nearest-neighbour search.
    """

    image_size: int = 448
    sigma: float = 5.0
    taps: tuple[int, ...] = (6, 12, 18)
    cluster_taps: tuple[int, ...] = (6, 12)
    structural_taps: tuple[int, ...] = (6, 12, 18)
    upsample: int = 2
    num_clusters: int = 6
    kmeans_iterations: int = 30
    seed: int = 0
    fine_level: str = "patch"
    delta: float = 0.01
    ridge: float = 1e-6
    precision: str = "fp32"
    query_tile: int = 2048

    def __post_init__(self):
        for name in ("image_size", "upsample", "num_clusters", "query_tile"):
            value = getattr(self, name)
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
        if self.fine_level not in FINE_LEVELS:
            raise ValueError(f"fine_level: expected one of {FINE_LEVELS}, got {self.fine_level!r}")
        if not float(self.delta) > 0:
            raise ValueError(f"delta: expected a positive value, got {self.delta!r}")
        if not float(self.ridge) >= 0:
            raise ValueError(f"ridge: expected a value >= 0, got {self.ridge!r}")
        check_precision(self.precision)

    def tap_index(self, tap: int) -> int:
        """Position of block ``tap`` in ``taps`` (and in the features' tap tuple)."""
        return self.taps.index(tap)


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
    the coarse classes that mean foreground."""

    coarse: jax.Array
    is_object: jax.Array
    fine: jax.Array


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
    )


# ----------------------------------------------------------------------------------------------- features


class CLIPLADFeatures(NamedTuple):
    """Backbone output for B images: taps, one (B, 1 + g*g, W) residual stream per ``config.taps`` entry in
    that order; dense (B, 1 + g*g, D) NACLIP embeddings (class token first)."""

    taps: tuple[jax.Array, ...]
    dense: jax.Array


def clip_lad_features(params: dict, images: jax.Array, clip_config: CLIPConfig, config: CLIPLADConfig,
                      dtype: str = "float32") -> CLIPLADFeatures:
    """The backbone pass CLIP-LAD needs: NACLIP on (B, S, S, 3) CLIP-normalised images, S ==
    clip_config.vision.image_size (== config.image_size), with config.taps and config.sigma."""
    if clip_config.vision.image_size != config.image_size:
        raise ValueError(
            f"the CLIP config runs at {clip_config.vision.image_size} but CLIPLADConfig.image_size is "
            f"{config.image_size}; resize the position embeddings with with_image_size() first"
        )
    taps, dense = naclip_encode(params, images, clip_config, config.taps, config.sigma, dtype)
    return CLIPLADFeatures(taps, dense)


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


def _patches(tokens: jax.Array, factor: int) -> jax.Array:
    grid = upsample_grid(tokens_to_grid(tokens), factor)
    b, h, w, c = grid.shape
    return grid.reshape(b, h * w, c)


def _check_features(features: CLIPLADFeatures, config: CLIPLADConfig) -> None:
    if len(features.taps) != len(config.taps):
        raise ValueError(f"features carry {len(features.taps)} taps but config.taps is {config.taps}")
    shapes = {t.shape[:2] for t in features.taps} | {features.dense.shape[:2]}
    if len(shapes) != 1 or features.dense.ndim != 3 or any(t.ndim != 3 for t in features.taps):
        raise ValueError(f"taps and dense must be (B, 1 + g*g, C) with equal B and tokens, got {sorted(shapes)}")


@partial(jax.jit, static_argnames=("config",))
def prepare_features(features: CLIPLADFeatures, config: CLIPLADConfig) -> PreparedFeatures:
    """Drop the class tokens, upsample, normalise (module docstring): CLIPLADFeatures -> PreparedFeatures."""
    _check_features(features, config)
    shallow = [l2_normalize(_patches(features.taps[config.tap_index(t)], config.upsample)) for t in config.cluster_taps]
    cluster = l2_normalize(jnp.concatenate(shallow, axis=-1))
    dense = l2_normalize(_patches(features.dense, config.upsample))
    levels = tuple(
        l2_normalize(_patches(features.taps[config.tap_index(t)], config.upsample)) for t in config.structural_taps
    )
    return PreparedFeatures(cluster, dense, levels)


# ---------------------------------------------------------------------------------------- coarse to fine


@partial(jax.jit, static_argnames=("config",))
def fit_centres(cluster: jax.Array, config: CLIPLADConfig) -> jax.Array:
    """k-means centres (N_c, C) of the k normal images' shallow features (k, P, C)."""
    points = cluster.reshape(-1, cluster.shape[-1])
    result = kmeans(points, config.num_clusters, jax.random.key(config.seed), config.kmeans_iterations,
                    precision=config.precision)
    return result.centres


def assign_regions(cluster: jax.Array, centres: jax.Array, precision: str = "fp32") -> jax.Array:
    """Region (nearest centre) of every patch: (B, P, C), (N_c, C) -> (B, P) int32."""
    b, p, c = cluster.shape
    labels, _ = assign(cluster.reshape(b * p, c), centres, precision)
    return labels.reshape(b, p)


def region_embeddings(dense: jax.Array, regions: jax.Array, num_regions: int) -> tuple[jax.Array, jax.Array]:
    """Eq. 1 per image: (B, P, D), (B, P) -> (means (B, N_c, D), patch counts (B, N_c)); empty regions give 0."""
    onehot = jax.nn.one_hot(regions, num_regions, dtype=jnp.float32)  # (B, P, N_c)
    counts = jnp.sum(onehot, axis=1)
    sums = jnp.einsum("bpr,bpd->brd", onehot, dense.astype(jnp.float32), precision=jax.lax.Precision.HIGHEST)
    return sums / jnp.maximum(counts, 1.0)[..., None], counts


def _nearest_class(x: jax.Array, text: jax.Array) -> jax.Array:
    """Index of the most similar (cosine) text class (T, D) of each row of x (..., D) -> (...)."""
    flat = l2_normalize(x.reshape(-1, x.shape[-1]))
    return jnp.argmax(dot_nt(flat, l2_normalize(text)), axis=-1).reshape(x.shape[:-1]).astype(jnp.int32)


def foreground(region_emb: jax.Array, counts: jax.Array, regions: jax.Array, prompts: CLIPLADPrompts) -> jax.Array:
    """Foreground patches (B, P) bool: the patch's region is non-empty and its nearest coarse class is an
    object class. region_emb (B, N_c, D), counts (B, N_c), regions (B, P)."""
    region_is_object = prompts.is_object[_nearest_class(region_emb, prompts.coarse)] & (counts > 0)
    return jnp.take_along_axis(region_is_object, regions, axis=1)


def part_labels(
    dense: jax.Array,
    fg: jax.Array,
    prompts: CLIPLADPrompts,
    regions: jax.Array | None = None,
    region_emb: jax.Array | None = None,
    fine_level: str = "patch",
) -> jax.Array:
    """Fine class of every foreground patch, -1 elsewhere: (B, P) int32.

    fine_level "patch": each patch's dense feature (B, P, D) against the fine classes; "region": each region
    embedding (B, N_c, D) against them, given to its patches (regions (B, P) and region_emb needed).
    """
    if fine_level == "patch":
        classes = _nearest_class(dense, prompts.fine)
    elif fine_level == "region":
        if regions is None or region_emb is None:
            raise ValueError("fine_level='region' needs regions and region_emb")
        classes = jnp.take_along_axis(_nearest_class(region_emb, prompts.fine), regions, axis=1)
    else:
        raise ValueError(f"fine_level: expected one of {FINE_LEVELS}, got {fine_level!r}")
    return jnp.where(fg, classes, -1)


def class_histograms(labels: jax.Array, num_classes: int) -> jax.Array:
    """Share of the foreground in each class: (B, P) labels (-1 = background) -> (B, num_classes); rows of an
    image without foreground are all 0."""
    onehot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)  # -1 -> all zeros
    counts = jnp.sum(onehot, axis=1)
    return counts / jnp.maximum(jnp.sum(counts, axis=1, keepdims=True), 1.0)


class Segmentation(NamedTuple):
    """regions (B, P) int32 cluster ids; foreground (B, P) bool; labels (B, P) int32 fine class or -1;
    histograms (B, Tf)."""

    regions: jax.Array
    foreground: jax.Array
    labels: jax.Array
    histograms: jax.Array


@partial(jax.jit, static_argnames=("config",))
def segment(
    prepared: PreparedFeatures, centres: jax.Array, prompts: CLIPLADPrompts, config: CLIPLADConfig
) -> Segmentation:
    """The coarse-to-fine segmentation of B images with fixed centres (the normal images' k-means)."""
    regions = assign_regions(prepared.cluster, centres, config.precision)
    emb, counts = region_embeddings(prepared.dense, regions, config.num_clusters)
    fg = foreground(emb, counts, regions, prompts)
    labels = part_labels(prepared.dense, fg, prompts, regions, emb, config.fine_level)
    return Segmentation(regions, fg, labels, class_histograms(labels, prompts.fine.shape[0]))


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


def fit_fusion(scores: jax.Array, ridge: float = 1e-6) -> Fusion:
    """Eq. 4's mu and Sigma from (V, 2) validation scores (V >= 2): sample covariance (ddof 1) plus
    ridge * mean variance (+ 1e-12) on the diagonal, Cholesky-factored."""
    if scores.ndim != 2 or scores.shape[1] != 2 or scores.shape[0] < 2:
        raise ValueError(f"scores: expected (V, 2) with V >= 2 validation images, got shape {scores.shape}")
    x = scores.astype(jnp.float32)
    mean = jnp.mean(x, axis=0)
    centred = x - mean
    cov = jnp.matmul(centred.T, centred, precision=jax.lax.Precision.HIGHEST) / (x.shape[0] - 1)
    cov = cov + (ridge * jnp.trace(cov) / 2.0 + 1e-12) * jnp.eye(2, dtype=jnp.float32)
    return Fusion(mean, jnp.linalg.cholesky(cov))


def fused_scores(scores: jax.Array, fusion: Fusion) -> jax.Array:
    """Eq. 4 as intended: sqrt((x - mu)^T Sigma^-1 (x - mu)) = ||L^-1 (x - mu)|| for (B, 2) scores -> (B,)."""
    z = jax.scipy.linalg.solve_triangular(fusion.cholesky, (scores - fusion.mean).T, lower=True)
    return jnp.sqrt(jnp.sum(z * z, axis=0))


# ---------------------------------------------------------------------------------------------- the method


class CLIPLADState(NamedTuple):
    """What fitting keeps: centres (N_c, C); histograms (k, Tf) memory; patch_memory per structural tap
    (k, P, W); prompts; fusion (None until ``clip_lad_fit_fusion``)."""

    centres: jax.Array
    histograms: jax.Array
    patch_memory: tuple[jax.Array, ...]
    prompts: CLIPLADPrompts
    fusion: Fusion | None = None


class CLIPLADScores(NamedTuple):
    """logical (B,), structural (B,), fused (B,) (None without fusion), structural_map (B, H, W) and part
    masks labels (B, H, W) int32 (-1 background) on the upsampled grid, histograms (B, Tf)."""

    logical: jax.Array
    structural: jax.Array
    fused: jax.Array | None
    structural_map: jax.Array
    labels: jax.Array
    histograms: jax.Array


@partial(jax.jit, static_argnames=("config",))
def clip_lad_fit(normal: CLIPLADFeatures, prompts: CLIPLADPrompts, config: CLIPLADConfig) -> CLIPLADState:
    """Fit on the k normal images' features: centres, histogram memory, patch memory."""
    prepared = prepare_features(normal, config)
    centres = fit_centres(prepared.cluster, config)
    seg = segment(prepared, centres, prompts, config)
    return CLIPLADState(centres, seg.histograms, prepared.levels, prompts)


def _raw_scores(state: CLIPLADState, features: CLIPLADFeatures, config: CLIPLADConfig):
    prepared = prepare_features(features, config)
    seg = segment(prepared, state.centres, state.prompts, config)
    maps = structural_maps(prepared.levels, state.patch_memory, config.precision, config.query_tile)
    return seg, maps, logical_scores(seg.histograms, state.histograms, config.delta), structural_scores(maps)


@partial(jax.jit, static_argnames=("config",))
def clip_lad_fit_fusion(state: CLIPLADState, validation: CLIPLADFeatures, config: CLIPLADConfig) -> CLIPLADState:
    """Add Eq. 4's fusion, estimated on validation normal images' features (V >= 2)."""
    _, _, logical, structural = _raw_scores(state, validation, config)
    return state._replace(fusion=fit_fusion(jnp.stack([logical, structural], axis=1), config.ridge))


@partial(jax.jit, static_argnames=("config",))
def clip_lad_score(state: CLIPLADState, features: CLIPLADFeatures, config: CLIPLADConfig) -> CLIPLADScores:
    """Score B query images against a fitted state."""
    seg, maps, logical, structural = _raw_scores(state, features, config)
    fused = None
    if state.fusion is not None:
        fused = fused_scores(jnp.stack([logical, structural], axis=1), state.fusion)
    b, p = maps.shape
    side = int(round(p**0.5))
    return CLIPLADScores(
        logical, structural, fused, maps.reshape(b, side, side), seg.labels.reshape(b, side, side), seg.histograms
    )
