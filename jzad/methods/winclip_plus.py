"""WinCLIP+ (FastRef, seed paper 002 Sec. 5.2, Eqs. 8-9): WinCLIP whose few-shot patch memory is refined per
query image by the FastRef EM (``jzad.methods.refine``), in pure jitted functions.

Readings (the paper gives Eqs. 8-9 and the settings of Sec. 6.1, no code):
- Features: WinCLIP's as anomalib computes them (``jzad.methods.winclip``): image and window embeddings,
  and the ln_post'ed, unprojected patch tokens (896-d on ViT-B-16-plus-240).
- Which features feed the refinement: the paper does not say. The prototypes M are the patch-level few-shot
  memory (every reference patch token, the memory WinCLIP's patch term matches against), reduced to a
  coreset of ``coreset_ratio`` (alpha = 0.5 MVTec, 0.3 VisA, 0.2 MPDD; 0.5 for other layouts) by PatchCore's
  approximate greedy coreset (``jzad.methods.patchcore.memory_bank``) on the L2-normalised tokens: for
  unit vectors the Euclidean distance the coreset spreads is sqrt(2 - 2 cos), a monotone function of the
  cosine distance the refinement uses. Each query's patch tokens f (g*g, W) are refined against M with
  the cosine distance (1 - cos) / 2 and lambda = 0.1 (``refine.WINCLIP_PLUS``); s_j of Eq. 8 is the
  refined patch score. The plan enters the M-step loss per position ("row", the default; ``--plan-scale``),
  the reading under which lambda = 0.1 is an O(1) weight and the paper's T* ablation is not flat (derived in
  ``jzad.methods.refine``); "printed" and ``--lam 0`` give the W0 projection. ``refine_memories="all"`` also refines the window memories (each scale's window
  embeddings against a coreset of the reference windows at the same ratio), measured in
  benchmarks/winclip_timing.py.
- Maps and Eq. 9: s replaces the patch term of WinCLIP's few-shot map, so the few-shot map is the mean of
  s and the harmonic-aggregated window association maps (refined or not); as in WinCLIP the anomaly map
  is (zero-shot map + few-shot map) / 2 and the image score s* = (s0 + max_j few-shot map) / 2 with s0 the
  zero-shot image score (Eq. 9). Without windows this is Eq. 9 literally; with them, WinCLIP+ reduces to
  WinCLIP exactly when the refinement returns the memory unchanged.
- Output maps: bilinear from the grid to the image side (align_corners False), then a Gaussian of sigma 4
  (scipy's 33 taps, reflect border), as PatchCore+ (the paper states sigma 4 for both).

Staged: "zero_shot" (WinCLIP's zero-shot scores), "few_shot" (the unrefined window associations), "refine"
(the EM per query, its scores and the fusion). Queries are split over the device mesh in fixed chunks of
images (``winclip.map_image_chunks``), the refinement vmapped over each chunk, so sharded scores equal
unsharded ones bit for bit.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jzad.kernels.blur import gaussian_blur
from jzad.kernels.distances import l2_normalize
from jzad.kernels.resize import resize_bilinear
from jzad.methods import winclip as wc
from jzad.methods.base import Features, RunContext, Scores, option_errors, register
from jzad.methods.patchcore import check_ratio, memory_bank
from jzad.methods.refine import WINCLIP_PLUS, RefineConfig, refined_patch_scores
from jzad.methods.table import method_row

REFINE_MEMORIES = ("patches", "all")
DATASET_RATIOS = {"mvtec": 0.5, "visa": 0.3, "mpdd": 0.2}
DEFAULT_RATIO = 0.5


@dataclass(frozen=True)
class WinCLIPPlusConfig:
    """WinCLIP+ settings (hashable: static under jit).

    winclip: the WinCLIP settings (scales, temperature, map size, dtype, precision, class name, image chunk).
    refine: the EM (cosine distance, lambda 0.1 by default). coreset_ratio: alpha, the share of the reference
    patches kept as prototypes. projection_dim, num_starts, seed: the greedy coreset's random projection, its
    start points and their draw. refine_memories: "patches" (the paper's reading) or "all" (windows too).
    sigma: Gaussian smoothing of the output maps.
    """

    winclip: wc.WinCLIPConfig = field(default_factory=wc.WinCLIPConfig)
    refine: RefineConfig = WINCLIP_PLUS
    coreset_ratio: float = DEFAULT_RATIO
    projection_dim: int | None = 128
    num_starts: int = 10
    seed: int = 0
    refine_memories: str = "patches"
    sigma: float = 4.0

    def __post_init__(self):
        if not isinstance(self.winclip, wc.WinCLIPConfig):
            raise ValueError(f"WinCLIPPlusConfig.winclip must be a WinCLIPConfig, got {type(self.winclip).__name__}")
        if not isinstance(self.refine, RefineConfig) or self.refine.distance != "cosine":
            raise ValueError(f"WinCLIPPlusConfig.refine must be a RefineConfig with the cosine distance, got "
                             f"{self.refine!r}")
        check_ratio(self.coreset_ratio)
        if self.refine_memories not in REFINE_MEMORIES:
            raise ValueError(f"WinCLIPPlusConfig.refine_memories must be one of {REFINE_MEMORIES}, got "
                             f"{self.refine_memories!r}")
        if not self.sigma > 0:
            raise ValueError(f"WinCLIPPlusConfig.sigma must be > 0, got {self.sigma!r}")


class WinCLIPPlusState(NamedTuple):
    """Fitted WinCLIP+: text (2, D) class embeddings; prototypes (n, W) the patch coreset (unit rows);
    windows: per scale, the window memory (R*n_s, D) (refine_memories "patches") or its coreset ("all")."""

    text: jax.Array
    prototypes: jax.Array
    windows: tuple


def winclip_plus_fit(config: WinCLIPPlusConfig, references: Features | None = None, mesh: Mesh | None = None,
                     prepared=None) -> WinCLIPPlusState:
    """Text embeddings (prepared) and the prototypes of R reference images: the coreset of their unit patch
    tokens and, per scale, their window embeddings (a coreset of them with refine_memories "all")."""
    if references is None:
        raise ValueError("references: WinCLIP+ refines a few-shot memory of normal reference images (K >= 1), got "
                         "none")
    if prepared is None:
        raise ValueError("WinCLIP+ needs the text embeddings from winclip_prepare (the method's prepare step)")
    memory = wc.winclip_memory(wc.winclip_view(references))
    key = jax.random.key(config.seed)
    keys = jax.random.split(key, 1 + len(memory.windows))

    def coreset(rows, draw):
        return memory_bank(l2_normalize(rows.astype(jnp.float32)), config.coreset_ratio, config.projection_dim,
                           config.num_starts, draw, mesh)

    windows = tuple(memory.windows)
    if config.refine_memories == "all":
        windows = tuple(coreset(w, k) for w, k in zip(windows, keys[1:]))
    state = WinCLIPPlusState(jnp.asarray(prepared, jnp.float32), coreset(memory.patches, keys[0]), windows)
    if mesh is None:
        return jax.device_put(state, jax.devices()[0])
    return jax.device_put(state, NamedSharding(mesh, PartitionSpec()))


def _refined(rows: jax.Array, prototypes: jax.Array, refine: RefineConfig) -> jax.Array:
    """Eq. 8 scores of each image's rows against its refined prototypes: (B, m, C), (n, C) -> (B, m)."""
    return jax.vmap(lambda f: refined_patch_scores(f, prototypes, refine))(rows)


def _window_maps(config: WinCLIPPlusConfig, part: wc.WinCLIPFeatures, windows: tuple, refined: bool) -> list:
    """Per scale, the harmonic aggregation of each window's few-shot score (B, g, g): the association to
    the window memory, or (refined) the refined score against the window coreset."""
    grid = wc.grid_of(part.patches.shape[1])
    maps = []
    for scale, embeds, memory in zip(config.winclip.scales, part.windows, windows, strict=True):
        if refined:
            scores = _refined(embeds, memory, config.refine)
        else:
            scores = wc.visual_association(embeds, memory, config.winclip.precision)
        maps.append(wc.harmonic_aggregation(scores, wc.make_windows(grid, scale), grid))
    return maps


def _zero_shot_chunk(config: WinCLIPPlusConfig, part, text):
    return wc.zero_shot_scores(part, text, config.winclip)


def _windows_chunk(config: WinCLIPPlusConfig, part, windows):
    return jnp.stack(_window_maps(config, part, windows, False), axis=1)


def plus_few_shot_map(config: WinCLIPPlusConfig, features: wc.WinCLIPFeatures, prototypes: jax.Array, windows: tuple,
                      window_maps: jax.Array | None = None) -> jax.Array:
    """WinCLIP+'s few-shot map s (B, g, g): the mean of the refined patch scores (Eq. 8) and, per scale, the
    harmonic-aggregated window scores (associations to the window memory, or refined with refine_memories
    "all"). window_maps (B, k, g, g): the unrefined window maps when already computed."""
    batch = features.patches.shape[0]
    grid = wc.grid_of(features.patches.shape[1])
    patch = _refined(features.patches, prototypes, config.refine).reshape(batch, grid, grid)
    if window_maps is None:
        window_maps = jnp.stack(_window_maps(config, features, windows, config.refine_memories == "all"), axis=1)
    return (patch + jnp.sum(window_maps, axis=1)) / (1 + window_maps.shape[1])


def _refine_chunk(config: WinCLIPPlusConfig, part, prototypes, windows, zero, window_maps):
    """The few-shot map and its fusion with the zero-shot (image, map) for one chunk."""
    return wc.fuse_scores(zero, plus_few_shot_map(config, part, prototypes, windows, window_maps))


def _chunks(config: WinCLIPPlusConfig, fn, mesh, tree, *shared):
    return wc.map_image_chunks(fn, config, mesh, config.winclip.image_chunk, tree, *shared)


def winclip_plus_body(config: WinCLIPPlusConfig, state: WinCLIPPlusState, queries: Features, mesh, run):
    """WinCLIP+ on query features -> (Scores(grid maps (N, g, g), image scores (N,)), state), stages through
    ``run``: "zero_shot", "few_shot" (window associations, when the refined memories are the patches),
    "refine" (the EM per query, its scores and the fusion)."""
    features = wc.winclip_view(queries)
    zero = run("zero_shot", _chunks, config, _zero_shot_chunk, mesh, features, state.text)
    window_maps = None
    if config.refine_memories == "patches":
        window_maps = run("few_shot", _chunks, config, _windows_chunk, mesh, features, state.windows)
    image, maps = run("refine", _chunks, config, _refine_stage_chunk, mesh, (features, zero, window_maps),
                      state.prototypes, state.windows)
    return Scores(maps, image), state


def _refine_stage_chunk(config: WinCLIPPlusConfig, rows, prototypes, windows):
    part, zero, window_maps = rows
    return _refine_chunk(config, part, prototypes, windows, zero, window_maps)


def winclip_plus_maps(config: WinCLIPPlusConfig, patch_scores: jax.Array, size) -> jax.Array:
    """Anomaly maps: bilinear from the grid to the image side (align_corners False), then Gaussian sigma."""
    return gaussian_blur(resize_bilinear(patch_scores, size), sigma=config.sigma)


def winclip_plus_prepare(config: WinCLIPPlusConfig, backbone, category: str) -> jax.Array:
    """WinCLIP's class text embeddings (2, D) of the category's prompts."""
    return wc.winclip_prepare(config.winclip, backbone, category)


def winclip_plus_extractor(config: WinCLIPPlusConfig, backbone):
    """WinCLIP's extractor: images -> Features with the patch tokens, image and window embeddings."""
    return wc.winclip_extractor(config.winclip, backbone)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(f"expected a positive integer, got {text!r}")
    return value


def _ratio(text: str) -> float:
    return check_ratio(float(text))


def _non_negative(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise ValueError(f"expected a number >= 0, got {text!r}")
    return value


OPTIONS = method_row("winclip_plus").options
"""The command-line options, as written in ``jzad.methods.table``."""


def winclip_plus_configure(values: dict, context: RunContext) -> WinCLIPPlusConfig:
    """WinCLIPPlusConfig for a run: WinCLIP's settings, alpha by --dataset unless --coreset-ratio, the EM's
    lambda / rounds / M-step from the options."""
    winclip = wc.winclip_configure(values, context)
    changes = {name: values[dest] for name, dest in (("lam", "lam"), ("iterations", "em_iterations"),
                                                     ("em_update", "em_update"), ("plan_scale", "plan_scale"))
               if values.get(dest) is not None}
    with option_errors("winclip_plus options"):
        refine = RefineConfig(**{**WINCLIP_PLUS.__dict__, "precision": winclip.precision, **changes})
        ratio = values.get("coreset_ratio") or DATASET_RATIOS.get(context.dataset, DEFAULT_RATIO)
        return WinCLIPPlusConfig(winclip=winclip, refine=refine, coreset_ratio=ratio,
                                 refine_memories=values.get("refine_memories") or "patches")


METHOD = register(dataclasses.replace(
    wc.METHOD,
    name="winclip_plus",
    summary=method_row("winclip_plus").summary,
    config_type=WinCLIPPlusConfig,
    few_shot="required",
    options=OPTIONS,
    fit=winclip_plus_fit,
    body=winclip_plus_body,
    configure=winclip_plus_configure,
    maps=winclip_plus_maps,
    stages=("zero_shot", "few_shot", "refine"),
    prepare=winclip_plus_prepare,
    extractor=winclip_plus_extractor,
))
"""WinCLIP's registration (its CLIP backbones, text prompts, image preparation) with the refinement's config,
stages and scoring; references are required."""
