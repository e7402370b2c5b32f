"""PatchCore+ (FastRef on PatchCore: arXiv 2506.21398, Secs. 4-6): PatchCore's features and coreset, then each
query image's prototypes refined by the Sinkhorn-EM of ``jzad.methods.refine`` before it is scored.

- ``fit``: PatchCore's memory bank of the k-shot reference features, the prototypes M (n, 1024) (coreset
  ratio 0.05 by default, the paper's PatchCore+ setting, Sec. 6.1; ``--coreset-ratio``).
- ``score``: per query image, PatchCore's patch features f (m, 1024) (m = 28 x 28 at 224 px); Algorithm 1 on
  (f, M): W0 = f M^T (M M^T + rho I)^-1, then N EM rounds of an entropic OT plan (E-step, Eqs. 4-5) and a
  gradient or closed-form update of W (M-step, Eq. 3 with Eq. 7's squared Euclidean dis and lambda 0.3);
  patch scores s_j = min over the refined prototypes W* M of ||f_j - r||^2 (Eq. 6) or the position-wise
  residual ||f_j - (W* M)_j||^2 (the CVPR version); image score max_j s_j (Sec. 4.3). Every choice the paper
  leaves open (the init's Gram matrix, epsilon, how the plan is scaled inside the loss, the closed M-step) is
  made and documented in ``jzad.methods.refine``; its options are exposed here (--em-update, --em-iterations,
  --lam, --plan-scale, --score).
- Input: the paper's 256 x 256 (Sec. 6.1; m = 32 x 32 = 1024 patches with WideResNet-50-2's layer2 or
  EfficientNet-Lite's stride-8 stage): the image resized (PIL bilinear) to 256 on its shorter side and centre
  cropped to 256, no 256 -> 224 crop (that is the original PatchCore's, kept for ``patchcore``).
- Plan scaling: "row" (the data term per position) by default, the reading under which the paper's lambda
  sweep and T* ablation are not flat (derived in ``jzad.methods.refine``); ``--plan-scale printed`` gives the
  loss as printed, under which the refinement is the W0 projection; ``--lam 0`` is that projection exactly.
- ResNet BatchNorm statistics: the original PatchCore code's load-time update by default, as PatchCore's
  (``--bn-stats``; ``jzad.methods.patchcore``).
- ``maps``: PatchCore's: bilinear to the crop size (align_corners False), Gaussian sigma 4.
- Batching and sharding: the refinement is vmapped over chunks of ``chunk`` query images (``lax.map`` over
  the chunks) and the images are split over the device mesh (``--shards``), so every chunk has the same
  shapes on any shard count and sharded scores equal unsharded ones bit for bit.
- Online PatchCore+ (Table 6, ``--online K``): the refined prototypes of the last K scored images join the
  prototypes of the next (a ring buffer of K x m rows after the coreset, ``refine_online``). Images are then
  scored one after another in arrival order (a ``lax.scan``, on one device); the memory is the method's
  state, carried from batch to batch, so scores depend on the order of the images.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from jzad.kernels.sharding import device_mesh, map_row_shards, pad_rows
from jzad.methods.base import (
    BackboneRun,
    Features,
    ImagePrep,
    RunContext,
    Scores,
    direct,
    option_errors,
    option_fields,
    register,
)
from jzad.methods.patchcore import METHOD as PATCHCORE_METHOD
from jzad.methods.patchcore import (
    DINO_RUNS,
    PATCHCORE_PRESETS,
    PatchCoreConfig,
    backbone_run as patchcore_backbone_run,
    check_ratio,
    fit_patchcore,
    embed_in_chunks,
    on_mesh,
    patchcore_extractor,
    patchcore_maps,
    tapped_layers,
)
from jzad.methods.refine import (
    PATCHCORE_PLUS,
    OnlineMemory,
    RefineConfig,
    online_memory,
    refine_online,
    refined_patch_scores,
)
from jzad.methods.table import method_row


@dataclass(frozen=True)
class PatchCorePlusConfig:
    """Static configuration of PatchCore+ (hashable, a static jit argument).

    patchcore: the features, the coreset (ratio 0.05) and the maps (PatchCoreConfig). refine: the refinement
    (RefineConfig; PATCHCORE_PLUS: squared Euclidean, lambda 0.3). chunk: query images refined together
    per device (one vmapped program, ``lax.map`` over the chunks). online_images: K > 0 runs Online
    PatchCore+ with the refined prototypes of the last K images in the memory (0: off).
    """

    patchcore: PatchCoreConfig = PATCHCORE_PRESETS["few-shot"]
    refine: RefineConfig = PATCHCORE_PLUS
    chunk: int = 4
    online_images: int = 0

    def __post_init__(self):
        if self.refine.distance != "sqeuclidean":
            raise ValueError(f"PatchCore+ refines with the squared Euclidean distance, got {self.refine.distance!r}")
        for name in ("chunk", "online_images"):
            value = getattr(self, name)
            minimum = 1 if name == "chunk" else 0
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"PatchCorePlusConfig.{name} must be an int >= {minimum}, got {value!r}")


class PatchCorePlusState(NamedTuple):
    """The prototypes M (n, dim) (PatchCore's memory bank) and, for Online PatchCore+, the memory that grows
    with the scored images (None otherwise)."""

    bank: jax.Array
    memory: OnlineMemory | None = None


def patchcore_plus_fit(config: PatchCorePlusConfig, references: Features | None, mesh: Mesh | None = None,
                       prepared=None) -> PatchCorePlusState:
    """Prototypes from the reference images (PatchCore's coreset); an empty online memory when online."""
    del prepared
    if references is None:
        raise ValueError("references: PatchCore+ needs normal reference images (K >= 1), got none")
    layer2, layer3 = tapped_layers(references)
    bank = fit_patchcore(layer2, layer3, config.patchcore, config.patchcore.seed, mesh)
    if not config.online_images:
        return PatchCorePlusState(bank)
    patches = layer2.shape[1] * layer2.shape[2]
    return PatchCorePlusState(bank, online_memory(bank, config.online_images * patches))


def _refine_chunks(rows: jax.Array, bank: jax.Array, config: PatchCorePlusConfig, mesh: Mesh | None,
                   features_of, patches: int) -> jax.Array:
    """Refined patch scores (N, m) of N images given as flat rows (N, L): features_of maps a chunk of rows
    (chunk, L) to features (chunk, m, dim). Images are split over mesh; each device runs its share in chunks
    of ``config.chunk`` images (``lax.map``; one vmapped refinement per chunk), so every program has the same
    shapes on any shard count. Optimization barriers keep the prototypes and each chunk's features apart from
    the surrounding arithmetic (constant folding of a closed-over state, fusion with the embedding), so the
    staged and fused programs compute the refinement alike."""
    chunk, refine = config.chunk, config.refine

    def block(images, first_row, prototypes):
        del first_row
        prototypes = jax.lax.optimization_barrier(prototypes)
        count = images.shape[0]
        total = -(-count // chunk) * chunk
        chunks = pad_rows(images, total).reshape(total // chunk, chunk, images.shape[1])

        def one_chunk(chunk_rows):
            features = jax.lax.optimization_barrier(features_of(chunk_rows))
            return jax.vmap(lambda f: refined_patch_scores(f, prototypes, refine))(features)

        return jax.lax.map(one_chunk, chunks).reshape(total, patches)[:count]

    mesh = device_mesh(1) if mesh is None else mesh
    rows, bank = on_mesh(mesh, rows, bank)
    return map_row_shards(block, mesh, rows, bank)


def refine_images(features: jax.Array, bank: jax.Array, config: PatchCorePlusConfig,
                  mesh: Mesh | None = None) -> jax.Array:
    """Refined patch scores of every query: features (N, m, dim), prototypes (n, dim) -> (N, m).

    Split over mesh by image and refined in chunks of ``config.chunk`` images, so results do not depend on
    the shard count. Works under jit.
    """
    n, m, dim = features.shape
    return _refine_chunks(features.reshape(n, m * dim), bank, config, mesh,
                          lambda rows: rows.reshape(rows.shape[0], m, dim), m)


def _check_memory(state: PatchCorePlusState) -> None:
    if state.memory is None:
        raise ValueError("Online PatchCore+ needs the online memory that patchcore_plus_fit builds with online_images")


@partial(jax.jit, static_argnames=("config",))
def _online_stage(features, memory: OnlineMemory, config: PatchCorePlusConfig, arrived=None):
    """Online PatchCore+ in arrival order (one device): (N, m, dim) -> (N, m), (N,), the memory advanced by
    the rows ``arrived`` marks (None: all)."""
    scores, memory = refine_online(features, jax.lax.optimization_barrier(memory), config.refine, arrived)
    return scores, jnp.max(scores, axis=1), memory


@partial(jax.jit, static_argnames=("config", "mesh"))
def _refine_stage(features, bank, config: PatchCorePlusConfig, mesh):
    scores = refine_images(features, bank, config, mesh)
    return scores, jnp.max(scores, axis=1)


def patchcore_plus_body(config: PatchCorePlusConfig, state: PatchCorePlusState, queries: Features,
                        mesh: Mesh | None, run, arrived=None):
    """PatchCore+ over a batch of queries -> (Scores, state), stages through ``run``: "embed" (patch
    features), "refine" (Sinkhorn-EM per image and the scores against the refined prototypes). Patch scores
    (N, h, w), image scores (N,) their max; online, the memory advanced by the rows ``arrived`` marks (None:
    all)."""
    layer2, layer3 = tapped_layers(queries)
    n, h, w, _ = layer2.shape
    features = run("embed", embed_in_chunks, layer2, layer3, config.patchcore.dim, config.patchcore.image_chunk)
    if config.online_images:
        _check_memory(state)
        patch, image, memory = run("refine", _online_stage, features, state.memory, config=config, arrived=arrived)
        return Scores(patch.reshape(n, h, w), image), state._replace(memory=memory)
    patch, image = run("refine", _refine_stage, features, state.bank, config=config, mesh=mesh)
    return Scores(patch.reshape(n, h, w), image), state


@partial(jax.jit, static_argnames=("config", "mesh"))
def patchcore_plus_stream_score(config: PatchCorePlusConfig, state: PatchCorePlusState, queries: Features,
                                arrived: jax.Array, mesh: Mesh | None = None):
    """``patchcore_plus_body`` for a stream's batch, whose rows with ``arrived`` False are padding ->
    (Scores, state, banked (N,) bool). Online, only the real rows' refined prototypes enter the memory (banked);
    otherwise the state is the fitted one and nothing is banked."""
    scores, advanced = patchcore_plus_body(config, state, queries, mesh, direct, arrived)
    if not config.online_images:
        return scores, state, jnp.zeros(arrived.shape, bool)
    return scores, advanced, arrived


def patchcore_plus_maps(config: PatchCorePlusConfig, patch_scores: jax.Array, size) -> jax.Array:
    """Anomaly maps at the crop size, as PatchCore's (bilinear, then Gaussian sigma)."""
    return patchcore_maps(patch_scores, size, config.patchcore.sigma)


IMAGE_SIZE = 256
"""The paper's PatchCore+ input side (Sec. 6.1): 32 x 32 = 1024 patches at stride 8."""


def backbone_run(architecture: str | None) -> BackboneRun:
    """PatchCore's taps for the architecture, at the paper's 256 x 256 input for the CNN backbones (stride-8
    grids, as the paper's WideResNet-50-2); a DINO / DINOv2 ViT keeps PatchCore's preset (224: the paper has no
    ViT setting, and 256 is not a multiple of its patch 14)."""
    run = patchcore_backbone_run(architecture)
    if (architecture or "") in DINO_RUNS:
        return run
    return dataclasses.replace(run, image_size=IMAGE_SIZE)


def patchcore_plus_prep(config, image_size: int) -> ImagePrep:
    """Resize of the shorter side to the input side (PIL bilinear) and a centre crop of it: the whole image,
    no 256 -> 224 crop."""
    del config
    return ImagePrep("resize_crop", resize_to=image_size)


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError(f"expected an integer >= 0, got {text!r}")
    return value


OPTIONS = method_row("patchcore_plus").options
"""The command-line options, as written in ``jzad.methods.table``."""

_REFINE_FIELDS = {"em_update": "em_update", "em_iterations": "iterations", "lam": "lam",
                  "plan_scale": "plan_scale", "score": "score"}


def patchcore_plus_configure(values: dict, context: RunContext) -> PatchCorePlusConfig:
    """PatchCorePlusConfig from option values (dest -> value; missing = default) for a run."""
    patchcore = {"map_size": context.image_size}
    refine = {field: values[dest] for dest, field in _REFINE_FIELDS.items() if values.get(dest) is not None}
    with option_errors("patchcore_plus options"):
        if values.get("coreset_ratio") is not None:
            patchcore["coreset_ratio"] = check_ratio(values["coreset_ratio"])
        if values.get("precision") is not None:
            patchcore["precision"] = refine["precision"] = values["precision"]
        if values.get("bn_stats") is not None:
            patchcore["bn_stats"] = values["bn_stats"]
        return PatchCorePlusConfig(
            patchcore=dataclasses.replace(PATCHCORE_PRESETS["few-shot"], **patchcore),
            refine=dataclasses.replace(PATCHCORE_PLUS, **refine),
            online_images=option_fields(OPTIONS, values).get("online_images", 0),
        )


METHOD = register(dataclasses.replace(
    PATCHCORE_METHOD,
    name="patchcore_plus",
    score_units="squared L2 distance to the refined prototypes",
    summary=method_row("patchcore_plus").summary,
    config_type=PatchCorePlusConfig,
    options=OPTIONS,
    fit=patchcore_plus_fit,
    body=patchcore_plus_body,
    configure=patchcore_plus_configure,
    maps=patchcore_plus_maps,
    backbone_run=backbone_run,
    prep=patchcore_plus_prep,
    stages=("embed", "refine", "upsample"),
    pads=lambda config: not config.online_images,
    extractor=lambda config, backbone: patchcore_extractor(config.patchcore, backbone),
))
"""PatchCore's registration (its backbones, few-shot references, one image at a time) with the refinement's
config, stages and scoring."""
