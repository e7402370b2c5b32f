"""MuSc timing harness: JAX (jzad) against the PyTorch reference, stage by stage, in one run.

    python -m benchmarks.musc_timing --backbone vit-b-16@224 --n 50 --precision fp32 --repeats 3 \\
        --scaling 25,50,100 --max-seconds 300

Per-image breakdown by stage for both implementations (MuSc paper Tables 6/13: feature extraction, LNAMD,
MSM, upsample, RsCIN), on random weights of the backbone's real shapes and random images:
- JAX: the shared driver users run (``jzad.pipeline.run_category``: decode, extract, LNAMD, MSM, maps,
  RsCIN over the category) on random uint8 images, the method's body stage by stage (``Scorer(profile=
  "stages")``, the command line's ``--profile stages``) on its ``StageClock`` (device-synchronised, compile
  seconds apart): one warm-up run, then ``--repeats`` timed runs; the median is reported. Unless --no-fused,
  the same driver runs again as the command line runs it by default (``profile="fused"``: the body as one
  jitted program, timed as "score"), stored under jax.fused. No stage function is called here directly.
- Reference (``benchmarks.reference_torch``): transformers CLIP with the same weights, then the per-image
  ``torch.cdist`` MuSc of the original code (cdist's default mm mode unless --cdist-mode says otherwise);
  ``torch.cuda.synchronize`` around every stage on CUDA; a warm-up on a few images; median of repeats.
- Parity: max abs difference of the taps, embeddings, patch scores, maps and image scores (JAX vs reference).
- FSLC at the same N on the same features (unless --no-fslc; needs ``jzad.methods.fslc``): stages
  features (LNAMD, taps concatenated), init, expand, filter, score, upsample for both implementations,
  Otsu filtering, parity, roofline; the MuSc-vs-FSLC comparison of the FSLC paper's Table 4.
- Scaling (--scaling): time and peak memory of the scoring stages (LNAMD, MSM, upsample, RsCIN) against N
  for both, on random tokens of the backbone's shape (extraction is per image and does not grow with N);
  the JAX side runs the driver's scoring of a pool (``score_features``: the pool padded as the driver pads it,
  ``Scorer.score``, ``maps_at``, ``finalize``).
  The reference stops at the first N where it runs out of memory (torch.cuda.OutOfMemoryError /
  MemoryError, recorded); either implementation stops growing N when the last measured run, extrapolated
  quadratically to the next N, would exceed --max-seconds. The table says which and why.
- Roofline: FLOPs and bytes of every stage from the shapes (``benchmarks.roofline``), measured device
  ceilings (large fp32/bf16 matmuls, a streaming copy), time over floor.
- Memory: ``memory_analysis()`` of the programs the driver runs (compiled apart, not run: the extraction of a
  batch, each stage program of the method's body through ``harness.StagePrograms``, the fused "score" program,
  the maps of a chunk and RsCIN), keyed by stage under jax.program_memory; measured peak device
  memory per implementation (GPU: torch.cuda.max_memory_allocated, XLA peak_bytes_in_use; CPU: peak RSS growth
  via /proc VmHWM after malloc_trim). The 1-minute load average is sampled during the run and stored with the device.

Output: markdown tables on stdout and ``<out>/musc_<platform>_<backbone>_N<n>.json`` (device, versions,
shapes, every number, date). ``benchmarks/report.py`` turns the JSON files into the README section.
--shards K splits MSM over K devices as ``--shards`` of ``python -m jzad.run`` does; on CPU it needs
XLA_FLAGS=--xla_force_host_platform_device_count=K set before Python starts.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import harness, report, roofline  # noqa: E402
from benchmarks.harness import pipeline_run, stage_summary  # noqa: E402
from jzad.backbone import CLIP_MEAN, CLIP_STD, ImageEncoder, init_random_encoder  # noqa: E402
from jzad.backbone.config import CLIPConfig, architecture_name, default_taps, get_architecture  # noqa: E402
from jzad.data import ArrayImages  # noqa: E402
from jzad.features import Features, normalize_pixels  # noqa: E402
from jzad.features.clip import clip_backbone  # noqa: E402
from jzad.kernels import device_mesh  # noqa: E402
from jzad.methods import get_method  # noqa: E402
from jzad.methods.musc import MuScConfig, resolve_schedule, rscin  # noqa: E402
from jzad.pipeline import (  # noqa: E402
    MAP_CHUNK,
    Scorer,
    bucket_size,
    extract_source,
    finalize,
    maps_at,
    with_valid,
)
from jzad.timing import StageClock  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
MUSC_STAGES = ("extract", "lnamd", "msm", "upsample", "rscin")
FUSED_STAGES = ("extract", "score", "upsample", "rscin")
SCORING_STAGES = ("lnamd", "msm", "upsample", "rscin")
PRECISIONS = {"fp32": "float32", "bf16": "bfloat16"}
DEFAULT_CDIST_MODE = "use_mm_for_euclid_dist_if_necessary"
REFERENCE_WARMUP_IMAGES = 4


# --------------------------------------------------------------------------------------------- backbone


@dataclass(frozen=True)
class BackboneSpec:
    """A backbone shape to time: ``label`` as given ("vit-b-16@224"), the vision-only CLIPConfig at the run's
    image size (random weights of these shapes are used), the 1-based tapped blocks."""

    label: str
    arch: str
    config: CLIPConfig
    taps: tuple[int, ...]

    @property
    def image_size(self) -> int:
        return self.config.vision.image_size

    @property
    def grid(self) -> int:
        return self.config.vision.grid_size

    @property
    def slug(self) -> str:
        """File-name form of the label: lower case, "@" and "/" as "-"."""
        return self.label.lower().replace("@", "-").replace("/", "-")

    def vit_shape(self) -> roofline.VitShape:
        v = self.config.vision
        return roofline.VitShape(v.width, v.layers, v.mlp_dim, v.patch_size, v.image_size, self.config.embed_dim)


def parse_backbone(spec: str, activation: str | None = None) -> BackboneSpec:
    """"<architecture>[@<image size>]" -> BackboneSpec ("vit-b-16@224", "vit-l-14@518", "tiny@32").

    The architecture is any name ``jzad.backbone.config.get_architecture`` knows; the size defaults to the
    architecture's own and must be a multiple of the patch size. The MLP activation defaults to the
    architecture's, except at a resized input, where MuSc runs exact GELU (DESIGN); ``activation`` overrides.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"--backbone: expected '<architecture>@<image size>', got {spec!r}")
    name, _, size_text = spec.strip().partition("@")
    arch = get_architecture(name)
    native = arch.vision.image_size
    try:
        size = int(size_text) if size_text else native
    except ValueError as err:
        raise ValueError(f"--backbone {spec!r}: the image size after '@' must be an integer") from err
    patch = arch.vision.patch_size
    if size < patch or size % patch:
        raise ValueError(f"--backbone {spec!r}: image size {size} must be a positive multiple of patch size {patch}")
    act = activation or (arch.activation if size == native else "gelu")
    vision = type(arch.vision)(**{**arch.vision.__dict__, "image_size": size})
    config = CLIPConfig(vision=vision, text=None, embed_dim=arch.embed_dim, activation=act,
                        layer_norm_eps=arch.layer_norm_eps)
    return BackboneSpec(spec.strip(), name, config, default_taps(config))


def torch_clip_model(params: dict, config: CLIPConfig, device):
    """transformers ``CLIPVisionModelWithProjection`` holding the same weights as the Flax params tree."""
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from jzad.backbone.port import flax_to_openai, openai_to_hf

    v = config.vision
    hf_config = CLIPVisionConfig(
        hidden_size=v.width, intermediate_size=v.mlp_dim, num_hidden_layers=v.layers, num_attention_heads=v.heads,
        image_size=v.image_size, patch_size=v.patch_size, projection_dim=config.embed_dim,
        hidden_act=config.activation, layer_norm_eps=config.layer_norm_eps,
    )
    model = CLIPVisionModelWithProjection(hf_config)
    state = openai_to_hf(flax_to_openai(params, config))
    model.load_state_dict({k: torch.tensor(v) for k, v in state.items()}, strict=True)
    return model.eval().to(device)


# --------------------------------------------------------------------------------------------- JAX side


def _batches(n: int, batch: int) -> list[tuple[int, int]]:
    return [(start, min(start + batch, n)) for start in range(0, n, batch)]


def random_images(n: int, size: int, seed: int) -> np.ndarray:
    """N random uint8 RGB images (N, S, S, 3), what a source hands to the backbone."""
    return np.random.default_rng(seed).integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)


def reference_pixels(images: np.ndarray) -> np.ndarray:
    """uint8 (N, S, S, 3) -> float32 (N, 3, S, S): the CLIP-normalised pixels the JAX forward computes inside
    its jitted program, for the PyTorch reference."""
    pixels = np.asarray(normalize_pixels(jnp.asarray(images), CLIP_MEAN, CLIP_STD))
    return np.ascontiguousarray(pixels.transpose(0, 3, 1, 2))


def image_source(images: np.ndarray) -> ArrayImages:
    """An in-memory source of uint8 images at the model size, as the pipeline reads any data set."""
    return ArrayImages(images, [f"image_{i:05d}" for i in range(len(images))])


def musc_scorer(spec: BackboneSpec, params: dict, musc: MuScConfig, mesh, batch: int, dtype: str = "float32",
                attention: str = "einsum", profile: str = "stages") -> Scorer:
    """The pipeline's Scorer for MuSc over a CLIP Backbone holding ``params`` (random weights of the spec's
    shapes), at compute dtype and attention implementation: what ``python -m jzad.run`` builds from a checkpoint
    (``profile`` "fused" is the command line's default, "stages" its ``--profile stages``)."""
    config = spec.config.replace(attention=attention)
    encoder = ImageEncoder(config, params, spec.taps, dtype, origin=f"random:{spec.arch}")
    backbone = clip_backbone(encoder, f"random-{spec.arch}", architecture_name(config))
    return Scorer(get_method("musc"), musc, backbone, mesh, batch, profile=profile)


def driver_pool_size(scorer: Scorer, n: int) -> int:
    """The rows the driver scores a pool of N images in: ``bucket_size(N)`` when the method pads
    (``Method.pads_to_buckets``), else N."""
    return bucket_size(n) if scorer.method.pads_to_buckets(scorer.config) else n


def pooled_as_the_driver(scorer: Scorer, features: Features) -> Features:
    """A pool's features as the driver scores them: when the method pads, padded with zero rows to
    ``driver_pool_size`` and the real rows marked (``with_valid``), as ``score_source`` does."""
    n = features.num_images
    rows = driver_pool_size(scorer, n)
    if rows == n:
        return features
    padded = jax.tree.map(lambda a: jnp.pad(a, [(0, rows - n)] + [(0, 0)] * (a.ndim - 1)), features)
    return with_valid(padded, n, rows)


def score_features(scorer: Scorer, features: Features, clock: StageClock) -> dict:
    """The driver's scoring of one pool on given features (what ``run_category`` runs after extraction): the pool
    padded as the driver pads it, the scorer's ``score`` (fused or the method's ``staged`` body), the maps
    (``jzad.pipeline.maps_at``) and the set-level ``finalize`` (RsCIN) -> host arrays patch_scores (N, h, w),
    image_scores_raw (N,), image_scores (N,), maps (N, S, S)."""
    n = features.num_images
    state = scorer.method.fit(scorer.config, None, scorer.mesh, None)
    pool = pooled_as_the_driver(scorer, features)
    scores, _ = scorer.score(state, pool, clock)
    host = jax.tree.map(lambda a: np.asarray(a)[:n], scores)
    rows = pool.num_images if pool is not features else None
    maps = maps_at(scorer.method, scorer.config, host.patch_scores, scorer.backbone.image_size, clock, rows)
    outputs = {"patch_scores": host.patch_scores, "image_scores_raw": host.image_scores, "keep": host.keep}
    return {"patch_scores": host.patch_scores, "image_scores_raw": host.image_scores, "maps": maps,
            "image_scores": finalize(scorer, outputs, clock)}


def driver_program_memory(scorer: Scorer, features: Features) -> dict:
    """``memory_analysis`` of the programs the driver runs on a pool of ``features`` (unpadded, as extracted):
    the extraction of one batch (``Scorer.extract_fn``), every stage program of the method's body
    (``StagePrograms``: what ``--profile stages`` runs), the fused scoring program ("score", what the command line
    runs), the maps of one chunk and ``finalize`` (RsCIN). Compiled, not run."""
    method, config, mesh = scorer.method, scorer.config, scorer.mesh
    size, batch = scorer.backbone.image_size, scorer.batch_size
    images = jax.ShapeDtypeStruct((batch, size, size, 3), jnp.uint8)
    out = {f"extract_b{batch}": harness.compile_program(scorer.extract_fn, images)["memory"]}
    state = method.fit(config, None, mesh, None)
    pool = pooled_as_the_driver(scorer, features)
    out.update(harness.StagePrograms().of_body(method, config, state, pool, mesh).memory)
    out["score"] = harness.compile_program(lambda s, q: method.score(config, s, q, mesh), state, pool)["memory"]
    scores = jax.eval_shape(lambda s, q: method.score(config, s, q, mesh)[0], state, pool)
    chunk = min(MAP_CHUNK, pool.num_images)
    patch = jax.ShapeDtypeStruct((chunk,) + scores.patch_scores.shape[1:], jnp.float32)
    out["upsample"] = harness.compile_program(lambda p: method.maps(config, p, (size, size)), patch)["memory"]
    n = features.num_images
    final = jax.tree.map(lambda a: jax.ShapeDtypeStruct((n,) + a.shape[1:], a.dtype), scores)
    out[method.finalize_stage] = harness.compile_program(lambda s: method.finalize(config, s), final)["memory"]
    return out


def time_jax_musc(spec: BackboneSpec, params: dict, images: np.ndarray, musc: MuScConfig, mesh, batch: int,
                  dtype: str, repeats: int, fused: bool, platform_name: str) -> dict:
    """JAX MuSc end to end through the shared driver on N uint8 images (N, S, S, 3): a warm-up run, then
    ``repeats`` timed runs of ``run_category`` stage by stage (``profile="stages"``) and, when ``fused``, as the
    command line runs it (``profile="fused"``); the features of the set (``extract_source``) for parity.

    Returns {"summary", "outputs" (last staged run), "grids"/"embeds", "memory", "programs", "fused"}.
    """
    n = images.shape[0]
    scorer = musc_scorer(spec, params, musc, mesh, batch, dtype)
    source = image_source(images)
    timed_runs = pipeline_run(scorer, source, repeats, platform_name)
    out = {"summary": stage_summary(timed_runs, MUSC_STAGES, n), "outputs": _category_outputs(timed_runs["result"]),
           "memory": timed_runs["memory"], "backbone": scorer.backbone, "scorer": scorer}
    features, _ = extract_source(scorer, source, np.arange(n), StageClock())
    out["grids"], out["embeds"] = features.layers, features.embeds
    out["programs"] = driver_program_memory(scorer, features)
    if fused:
        out["fused"] = time_fused(dataclasses.replace(scorer, profile="fused"), source, repeats, platform_name)
    return out


def _category_outputs(result) -> dict:
    n = len(result.names)
    return {"patch_scores": result.patch_scores.reshape(n, -1), "maps": result.maps,
            "image_scores_raw": result.image_scores_raw, "image_scores": result.image_scores}


def time_fused(scorer: Scorer, source, repeats: int, platform_name: str) -> dict:
    """MuSc through the driver as the command line runs it (``profile="fused"``: LNAMD, MSM and the max of the
    upsampled maps as one jitted program, timed as "score"), then the maps and RsCIN: a warm-up run, then
    ``repeats`` timed runs. ``per_image_ms`` / ``compile_s`` are those of the scoring after extraction
    (score + upsample + rscin), to set beside the same stages timed one by one."""
    n = len(source)
    timed_runs = pipeline_run(scorer, source, repeats, platform_name)
    summary = stage_summary(timed_runs, FUSED_STAGES, n)
    scoring = [sum(run.get(s, 0.0) for s in FUSED_STAGES[1:]) for run in timed_runs["runs"]]
    median = statistics.median(scoring)
    return {"summary": summary, "median_s": median, "runs_s": scoring, "per_image_ms": 1e3 * median / n,
            "compile_s": sum(timed_runs["compile_s"].get(s, 0.0) for s in FUSED_STAGES[1:]),
            "memory": timed_runs["memory"], "outputs": _category_outputs(timed_runs["result"])}


# --------------------------------------------------------------------------------------------- reference side


def _reference_module():
    from benchmarks import reference_torch

    return reference_torch


def reference_extract(model, images, batch: int, taps: tuple[int, ...]):
    """Taps (list of (N, 1 + M, C)) and embeddings (N, D) of a transformers CLIP over images (N, 3, S, S)."""
    import torch

    ref = _reference_module()
    outs = [ref.clip_forward_reference(model, images[s:e], taps) for s, e in _batches(images.shape[0], batch)]
    layers = [torch.cat([o[0][i] for o in outs]) for i in range(len(taps))]
    return layers, torch.cat([o[1] for o in outs])


def reference_pass(model, images, batch: int, taps, musc: MuScConfig, cdist_mode: str, device: str):
    """One timed pass of the reference (extraction + musc_reference) -> (result dict, {stage: seconds})."""
    ref = _reference_module()
    timer = ref.StageTimer()
    with timer.stage("extract", device):
        layers, embeds = reference_extract(model, images, batch, taps)
    result = ref.musc_reference(layers, embeds, musc.r_list, musc.interval, musc.windows, musc.map_size,
                                cdist_mode, None, timer)
    result["taps"], result["embeds"] = layers, embeds
    return result, {stage: timer.seconds[stage] for stage in MUSC_STAGES}


def time_reference_musc(model, pixels: np.ndarray, spec: BackboneSpec, musc: MuScConfig, batch: int,
                        cdist_mode: str, repeats: int, device: str) -> dict:
    """Reference MuSc end to end on normalised pixels (N, 3, S, S) (``reference_pixels``): warm-up on a few
    images, then ``repeats`` timed passes over all N."""
    import torch

    n = pixels.shape[0]
    images = torch.from_numpy(pixels).to(device)
    warm = min(n, REFERENCE_WARMUP_IMAGES)
    with torch.no_grad():
        reference_pass(model, images[:warm], batch, spec.taps, musc, cdist_mode, device)
        runs, memory = [], None
        for index in range(repeats):
            meter = harness.PeakMemory("torch", device)
            with meter:
                result, seconds = reference_pass(model, images, batch, spec.taps, musc, cdist_mode, device)
            if index == 0:
                memory = meter.as_dict()
            runs.append(seconds)
    return {"summary": harness.summarize_runs(runs, n, None), "outputs": result, "memory": memory}


# --------------------------------------------------------------------------------------------- breakdown


def float64_rscin(scores, embeds, windows: tuple[int, ...]) -> np.ndarray:
    """RsCIN in float64 NumPy, the arbiter of both sides' float32 RsCIN: min-max normalised scores, cosine
    similarities, per window each row's k largest (self included, ties to the lower index) normalised to sum 1
    and applied to the scores, mean over the windows."""
    s = np.asarray(scores, np.float64)
    span = s.max() - s.min()
    s = (s - s.min()) / span if span > 0 else np.zeros_like(s)
    f = np.asarray(embeds, np.float64)
    f = f / np.linalg.norm(f, axis=1, keepdims=True)
    similarity = f @ f.T
    order = np.argsort(-similarity, axis=1, kind="stable")
    smoothed = []
    for k in windows:
        top = order[:, :min(k, len(s))]
        kept = np.take_along_axis(similarity, top, axis=1)
        smoothed.append(np.sum(kept / kept.sum(axis=1, keepdims=True) * s[top], axis=1))
    return np.mean(smoothed, axis=0)


def parity_report(jax_run: dict, ref_run: dict, windows: tuple[int, ...]) -> dict:
    """Max abs differences JAX - reference of the taps' patch tokens, embeddings, patch scores, maps, raw and
    final image scores. RsCIN picks each image's nearest images by embedding similarity, and on random weights
    and images those similarities near-tie (gaps of 1e-8): a float32 rounding can reorder them. So both sides'
    RsCIN are also set against float64 NumPy on the same inputs (the reference's raw scores and embeddings)."""
    ours, theirs = jax_run["outputs"], ref_run["outputs"]
    grids = [np.asarray(g).reshape(g.shape[0], -1, g.shape[-1]) for g in jax_run["grids"]]
    parity = {
        "taps_max_abs": max(harness.max_abs(a, harness.to_numpy(b)[:, 1:]) for a, b in zip(grids, theirs["taps"])),
        "taps_max_magnitude": max(float(np.max(np.abs(harness.to_numpy(b)[:, 1:]))) for b in theirs["taps"]),
        "embeds_max_abs": harness.max_abs(jax_run["embeds"], harness.to_numpy(theirs["embeds"])),
        "patch_scores_max_abs": harness.max_abs(ours["patch_scores"], harness.to_numpy(theirs["patch_scores"])),
        "maps_max_abs": harness.max_abs(ours["maps"], harness.to_numpy(theirs["maps"])),
        "image_scores_raw_max_abs": harness.max_abs(ours["image_scores_raw"], harness.to_numpy(theirs["image_scores_raw"])),
        "image_scores_max_abs": harness.max_abs(ours["image_scores"], harness.to_numpy(theirs["image_scores"])),
    }
    raw, ref_embeds = harness.to_numpy(theirs["image_scores_raw"]), harness.to_numpy(theirs["embeds"])
    exact = float64_rscin(raw, ref_embeds, windows)
    parity["rscin_jzad_vs_float64_max_abs"] = harness.max_abs(rscin(jnp.asarray(raw), jnp.asarray(ref_embeds),
                                                                    windows), exact)
    parity["rscin_reference_vs_float64_max_abs"] = harness.max_abs(harness.to_numpy(theirs["image_scores"]), exact)
    if "fused" in jax_run:
        fused = jax_run["fused"]["outputs"]
        parity["fused_patch_scores_max_abs"] = harness.max_abs(fused["patch_scores"], harness.to_numpy(theirs["patch_scores"]))
        parity["fused_image_scores_max_abs"] = harness.max_abs(fused["image_scores"], harness.to_numpy(theirs["image_scores"]))
    return parity


def _strip(run: dict) -> dict:
    out = {"summary": run["summary"], "memory": run["memory"]}
    if "programs" in run:
        out["program_memory"] = run["programs"]
    if "fused" in run:
        out["fused"] = {k: v for k, v in run["fused"].items() if k != "outputs"}
    return out


# --------------------------------------------------------------------------------------------- scaling


def run_guarded(fn, *args):
    """(fn(*args), None), or (None, "ExceptionName: message") when fn runs out of memory.

    Only out-of-memory errors are caught (torch.cuda.OutOfMemoryError, MemoryError); anything else raises.
    """
    import torch

    try:
        return fn(*args), None
    except (torch.cuda.OutOfMemoryError, MemoryError) as err:
        return None, f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}".strip()


def _to_torch(x, device: str):
    """A torch view of a JAX array (DLPack, no copy) when both live on the same device, else a copy."""
    import torch

    where = next(iter(x.devices())).platform
    if (device == "cpu" and where == "cpu") or (device.startswith("cuda") and where == "gpu"):
        return torch.from_dlpack(x)
    return torch.from_numpy(np.array(x)).to(device)


def _scaling_tokens(spec: BackboneSpec, n: int, seed: int):
    """Random normal tokens L x (N, 1 + M, C) and embeddings (N, D), generated on device by one program."""
    shapes = tuple((n, spec.grid**2 + 1, spec.config.vision.width) for _ in spec.taps)

    def generate(key):
        keys = jax.random.split(key, len(shapes) + 1)
        tokens = tuple(jax.random.normal(k, s, jnp.float32) for k, s in zip(keys[:-1], shapes))
        return tokens, jax.random.normal(keys[-1], (n, spec.config.embed_dim), jnp.float32)

    return jax.block_until_ready(jax.jit(generate)(jax.random.key(seed + n)))


def next_allowed(seconds: float, n: int, next_n: int, max_seconds: float | None) -> str | None:
    """None when the next N fits the budget, else the reason (quadratic extrapolation of the last run)."""
    if max_seconds is None:
        return None
    predicted = seconds * (next_n / n) ** 2
    if predicted <= max_seconds:
        return None
    return (f"time budget: N={n} took {seconds:.1f} s, N={next_n} predicted {predicted:.0f} s "
            f"> --max-seconds {max_seconds:g}")


def jax_scaling_entry(scorer: Scorer, tokens: tuple, embeds, repeats: int, platform_name: str) -> dict:
    """The driver's scoring stages (``score_features``) on L x (N, 1 + M, C) tokens: a warm-up pass, then
    ``repeats`` timed passes -> {"status", "summary", "memory", "msm_program_memory" (the MSM program of the
    method's body, ``StagePrograms``), "schedule", "pool_rows" (N padded as the driver pads)}."""
    n, count, c = tokens[0].shape
    side = int(round((count - 1) ** 0.5))
    features = Features(tuple(t[:, 1:].reshape(n, side, side, c) for t in tokens), embeds)
    warm = StageClock()
    score_features(scorer, features, warm)
    runs, memory = [], None
    for rep in range(repeats):
        clock = StageClock()
        meter = harness.PeakMemory("jax", platform_name)
        with meter:
            score_features(scorer, features, clock)
        memory = meter.as_dict() if rep == 0 else memory
        runs.append({s: clock.run_seconds.get(s, 0.0) for s in SCORING_STAGES})
    compile_s = {s: warm.compile_seconds.get(s, 0.0) for s in SCORING_STAGES}
    method, config = scorer.method, scorer.config
    programs = harness.StagePrograms().of_body(method, config, method.fit(config, None, scorer.mesh, None),
                                               pooled_as_the_driver(scorer, features), scorer.mesh)
    rows = driver_pool_size(scorer, n)
    return {"status": "ok", "summary": harness.summarize_runs(runs, n, compile_s), "memory": memory,
            "msm_program_memory": programs.memory["msm"], "schedule": resolve_schedule(config, rows, count - 1),
            "pool_rows": rows}


def run_scaling(scorer: Scorer, spec: BackboneSpec, sizes: tuple[int, ...], repeats: int, max_seconds: float | None,
                seed: int, torch_device: str, cdist_mode: str, platform_name: str,
                reference: bool = True) -> list[dict]:
    """Scoring time and peak memory against N for JAX (the pipeline's stages, ``score_features``) and the
    reference (unless ``reference`` is False); one row per N (see module doc)."""
    import torch

    ref = _reference_module()
    musc = scorer.config
    stopped = {"jax": None, "reference": None if reference else "not asked for"}
    rows = []
    for index, n in enumerate(sizes):
        row = {"n": n}
        tokens, embeds = _scaling_tokens(spec, n, seed)
        if stopped["jax"] is None:
            row["jax"] = jax_scaling_entry(scorer, tokens, embeds, repeats, platform_name)
        else:
            row["jax"] = {"status": "skipped", "reason": stopped["jax"]}
        if stopped["reference"] is None:
            layers = [_to_torch(t, torch_device) for t in tokens]
            emb = _to_torch(embeds, torch_device)

            def reference_runs():
                with torch.no_grad():
                    warm = min(n, REFERENCE_WARMUP_IMAGES)
                    ref.musc_reference([t[:warm] for t in layers], emb[:warm], musc.r_list, musc.interval,
                                       musc.windows, musc.map_size, cdist_mode)
                    runs, memory = [], None
                    for rep in range(repeats):
                        timer = ref.StageTimer()
                        meter = harness.PeakMemory("torch", torch_device)
                        with meter:
                            ref.musc_reference(layers, emb, musc.r_list, musc.interval, musc.windows,
                                               musc.map_size, cdist_mode, None, timer)
                        memory = meter.as_dict() if rep == 0 else memory
                        runs.append({stage: timer.seconds[stage] for stage in SCORING_STAGES})
                    return runs, memory

            outcome, error = run_guarded(reference_runs)
            if error is not None:
                row["reference"] = {"status": "out of memory", "error": error}
                stopped["reference"] = f"out of memory at N={n}"
            else:
                runs, memory = outcome
                row["reference"] = {"status": "ok", "summary": harness.summarize_runs(runs, n, None), "memory": memory}
            del layers, emb
            if torch_device.startswith("cuda"):
                torch.cuda.empty_cache()
        else:
            row["reference"] = {"status": "skipped", "reason": stopped["reference"]}
        if index + 1 < len(sizes):
            for impl in ("jax", "reference"):
                if stopped[impl] is None and row[impl]["status"] == "ok":
                    stopped[impl] = next_allowed(row[impl]["summary"]["total_median_s"], n, sizes[index + 1],
                                                  max_seconds)
        del tokens, embeds
        rows.append(row)
    return rows


# --------------------------------------------------------------------------------------------- FSLC


FSLC_STAGES = ("features", "init", "expand", "filter", "score", "upsample")


def fslc_available() -> bool:
    """Whether ``jzad.methods.fslc`` is installed in this tree (the FSLC comparison needs it)."""
    import importlib.util

    return importlib.util.find_spec("jzad.methods.fslc") is not None


@dataclass(frozen=True)
class FslcSizes:
    """FSLC sizes shared by both implementations: S init images, M0 init coreset, k patches per expanded
    image, X filter fraction, b neighbours, LNAMD window r (features = the taps' LNAMD concatenated)."""

    init_images: int
    init_coreset: int
    per_image: int
    filter_fraction: float = 0.3
    b: int = 9
    r: int = 3


def fslc_sizes(n: int, m: int, init_images: int, init_coreset: int, per_image: int) -> FslcSizes:
    """The requested sizes, capped to what N images of M patches allow (S <= N - 1, M0 <= S M, k <= M)."""
    s = min(init_images, n - 1)
    return FslcSizes(s, min(init_coreset, s * m), min(per_image, m))


def fslc_config(sizes: FslcSizes, precision: str, map_size: int):
    from jzad.methods.fslc import FSLCConfig

    return FSLCConfig(combine="concat", r_list=(sizes.r,), num_init_images=sizes.init_images,
                      init_coreset_size=sizes.init_coreset, expand_per_image=sizes.per_image,
                      filter_fraction=sizes.filter_fraction, n_wanted="otsu", b=sizes.b, precision=precision,
                      map_size=map_size)


def time_jax_fslc(backbone, grids: tuple, embeds, sizes: FslcSizes, precision: str, mesh, repeats: int) -> dict:
    """JAX FSLC on the JAX features through the driver's scoring (``score_features`` with the registered fslc
    method stage by stage; its "lnamd" stage reported as "features"): a warm-up pass on a ``RecordingClock``,
    whose recorded stage outputs give the diagnostics (init images, expanded and filtered coreset sizes), then
    ``repeats`` timed passes; the memory of the body's stage programs (``StagePrograms``)."""
    config = fslc_config(sizes, precision, backbone.image_size)
    scorer = Scorer(get_method("fslc"), config, backbone, mesh, profile="stages")
    features = Features(tuple(grids), embeds)
    n = features.num_images
    names = {stage: "lnamd" if stage == "features" else stage for stage in FSLC_STAGES}
    warm = harness.RecordingClock()
    score_features(scorer, features, warm)
    runs = []
    for _ in range(repeats):
        clock = StageClock()
        outputs = score_features(scorer, features, clock)
        runs.append({stage: clock.run_seconds.get(name, 0.0) for stage, name in names.items()})
    compile_s = {stage: warm.compile_seconds.get(name, 0.0) for stage, name in names.items()}
    (init,), (expanded,), (filtered,) = (warm.outputs[stage] for stage in ("init", "expand", "filter"))
    outputs = {"patch_scores": outputs["patch_scores"].reshape(n, -1), "image_scores": outputs["image_scores"],
               "maps": outputs["maps"], "coreset_size": int(filtered.size),
               "expanded_size": int(expanded.size), "expanded_rows": int(expanded.coreset.shape[0]),
               "init_images": np.asarray(init.image_indices)}
    method = scorer.method
    programs = harness.StagePrograms().of_body(method, config, method.fit(config, None, mesh, None), features, mesh)
    return {"summary": harness.summarize_runs(runs, n, compile_s), "outputs": outputs,
            "program_memory": {stage: programs.memory[name] for stage, name in names.items()
                               if name in programs.memory}}


def reference_fslc_pass(layers: list, embeds, sizes: FslcSizes, map_size: int, cdist_mode: str, device: str):
    """One timed pass of the reference FSLC (features, then fslc_reference) -> (result, {stage: seconds})."""
    ref = _reference_module()
    timer = ref.StageTimer()
    with timer.stage("features", device):
        features = ref.fslc_features(layers, sizes.r)
    result = ref.fslc_reference(embeds, features, sizes.init_images, sizes.init_coreset, sizes.per_image,
                                sizes.filter_fraction, "otsu", sizes.b, map_size, 0, 256, cdist_mode, timer)
    return result, {stage: timer.seconds[stage] for stage in FSLC_STAGES}


def time_reference_fslc(layers: list, embeds, sizes: FslcSizes, map_size: int, cdist_mode: str, repeats: int,
                        device: str) -> dict:
    """Reference FSLC on the reference features: one untimed warm-up pass, then ``repeats`` timed passes."""
    import torch

    with torch.no_grad():
        reference_fslc_pass(layers, embeds, sizes, map_size, cdist_mode, device)
        runs = []
        for _ in range(repeats):
            result, seconds = reference_fslc_pass(layers, embeds, sizes, map_size, cdist_mode, device)
            runs.append(seconds)
    return {"summary": harness.summarize_runs(runs, embeds.shape[0], None), "outputs": result}


def fslc_comparison(jax_run: dict, ref_run: dict, spec: BackboneSpec, sizes: FslcSizes, precision: str,
                    mesh, cdist_mode: str, repeats: int, device: str) -> dict:
    """FSLC for both implementations on the MuSc run's features (same N), parity and roofline."""
    n = jax_run["embeds"].shape[0]
    ours = time_jax_fslc(jax_run["backbone"], jax_run["grids"], jax_run["embeds"], sizes, precision, mesh, repeats)
    theirs = time_reference_fslc(ref_run["outputs"]["taps"], ref_run["outputs"]["embeds"], sizes, spec.image_size,
                                 cdist_mode, repeats, device)
    a, b = ours["outputs"], theirs["outputs"]
    parity = {
        "patch_scores_max_abs": harness.max_abs(a["patch_scores"], harness.to_numpy(b["patch_scores"])),
        "image_scores_max_abs": harness.max_abs(a["image_scores"], harness.to_numpy(b["image_scores"])),
        "maps_max_abs": harness.max_abs(a["maps"], harness.to_numpy(b["maps"])),
        "coreset_size_jax": a["coreset_size"],
        "coreset_size_reference": int(b["coreset"].shape[0]),
        "init_images_equal": bool(np.array_equal(a["init_images"], harness.to_numpy(b["init_images"]))),
    }
    m = spec.grid**2
    channels = len(spec.taps) * spec.config.vision.width
    costs = {"features": {"flops": len(spec.taps) * roofline.lnamd_flops(n, m, spec.config.vision.width, sizes.r),
                          "bytes": len(spec.taps) * roofline.lnamd_bytes(n, m, spec.config.vision.width),
                          "rate": "fp32"},
             **roofline.fslc_stage_costs(n, m, channels, spec.config.embed_dim, sizes.init_images,
                                         sizes.init_coreset, sizes.per_image, a["coreset_size"]),
             "upsample": {"flops": roofline.upsample_flops(n, spec.image_size, spec.image_size),
                          "bytes": roofline.upsample_bytes(n, m, spec.image_size, spec.image_size), "rate": "fp32"}}
    return {"status": "ok", "stages": list(FSLC_STAGES), "sizes": sizes.__dict__,
            "expanded_size": a["expanded_size"], "jax": {k: v for k, v in ours.items() if k != "outputs"},
            "reference": {"summary": theirs["summary"]}, "parity": parity, "costs": costs}


# --------------------------------------------------------------------------------------------- metadata


# --------------------------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.musc_timing", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="vit-l-14@518",
                        help="<architecture>@<image size>: vit-b-16@224, vit-l-14@518, vit-b-16-plus-240@240, tiny@32")
    parser.add_argument("--activation", choices=("quick_gelu", "gelu"), default=None,
                        help="MLP activation (default: the architecture's; exact gelu at a resized input)")
    parser.add_argument("--n", type=harness.positive_int, default=200, help="images in the set (>= 2)")
    parser.add_argument("--precision", choices=tuple(PRECISIONS), default="fp32",
                        help="JAX encoder and MSM matmul precision (the reference always runs fp32)")
    parser.add_argument("--shards", type=harness.positive_int, default=1, help="devices of the 1-D JAX mesh")
    parser.add_argument("--repeats", type=harness.positive_int, default=3, help="timed passes (median reported)")
    parser.add_argument("--batch", type=harness.positive_int, default=8, help="images per feature-extraction batch")
    parser.add_argument("--schedule", choices=("auto", "rows", "pairs"), default="auto", help="JAX MSM schedule")
    parser.add_argument("--cdist-mode", default=DEFAULT_CDIST_MODE,
                        help="torch.cdist compute_mode of the reference (default: cdist's own default, as MuSc)")
    parser.add_argument("--no-fused", action="store_true", help="skip timing the fused one-program JAX scoring")
    parser.add_argument("--no-fslc", action="store_true", help="skip the FSLC comparison at the same N")
    parser.add_argument("--fslc-init-images", type=harness.positive_int, default=10, help="FSLC S (capped at N - 1)")
    parser.add_argument("--fslc-coreset", type=harness.positive_int, default=1000, help="FSLC M0 (capped at S * M)")
    parser.add_argument("--fslc-per-image", type=harness.positive_int, default=10, help="FSLC patches added per image")
    parser.add_argument("--scaling", type=harness.image_counts, default=None, help="image counts of the scaling run, 25,50,100")
    parser.add_argument("--scaling-repeats", type=harness.positive_int, default=1, help="timed passes per scaling N")
    parser.add_argument("--max-seconds", type=float, default=600.0,
                        help="stop growing N once a run (extrapolated to the next N) exceeds this many seconds")
    parser.add_argument("--ceiling-size", type=harness.positive_int, default=None,
                        help="matmul side for the device ceiling (default 2048 on CPU, 8192 otherwise)")
    parser.add_argument("--copy-mib", type=harness.positive_int, default=256, help="MiB streamed for the copy bandwidth")
    parser.add_argument("--torch-device", default=None, help="device of the reference (default: cuda on GPU, else cpu)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--note", default="", help="free text stored with the results (machine load, ...)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="directory of the results JSON")
    return parser


def main(argv=None) -> dict:
    """Run the harness (see the module doc), print the tables, write the JSON; returns the payload."""
    args = build_parser().parse_args(argv)
    if args.n < 2:
        raise ValueError(f"--n: MuSc needs at least 2 images, got {args.n}")
    if args.max_seconds is not None and args.max_seconds <= 0:
        raise ValueError(f"--max-seconds: expected a positive number of seconds, got {args.max_seconds}")
    spec = parse_backbone(args.backbone, args.activation)
    with harness.LoadSampler() as load:
        payload = measure(args, spec, argv)
    payload["device"]["load_average"] = load.summary()
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"musc_{payload['device']['platform']}_{spec.slug}_N{args.n}.json"
    path.write_text(report.dumps(payload))
    print(report.render_run(payload))
    print(f"wrote {path}")
    payload["path"] = str(path)
    return payload


def measure(args: argparse.Namespace, spec: BackboneSpec, argv) -> dict:
    """Every measurement of one harness run -> the results payload (not yet written)."""
    mesh = device_mesh(args.shards)
    platform_name = jax.devices()[0].platform
    torch_device = args.torch_device or harness.default_torch_device()
    import torch

    torch.manual_seed(args.seed)
    m, c, d = spec.grid**2, spec.config.vision.width, spec.config.embed_dim
    musc = MuScConfig(precision=args.precision, map_size=spec.image_size, schedule=args.schedule)
    params = init_random_encoder(spec.config, taps=spec.taps, seed=args.seed).params
    model = torch_clip_model(params, spec.config, torch_device)
    images = random_images(args.n, spec.image_size, args.seed)

    jax_run = time_jax_musc(spec, params, images, musc, mesh, args.batch, PRECISIONS[args.precision],
                            args.repeats, not args.no_fused, platform_name)
    ref_run = time_reference_musc(model, reference_pixels(images), spec, musc, args.batch, args.cdist_mode,
                                  args.repeats, torch_device)
    parity = parity_report(jax_run, ref_run, musc.windows)
    if args.no_fslc:
        fslc = {"status": "not run", "reason": "--no-fslc"}
    elif not fslc_available():
        fslc = {"status": "not run", "reason": "jzad.methods.fslc is not installed"}
    else:
        sizes = fslc_sizes(args.n, m, args.fslc_init_images, args.fslc_coreset, args.fslc_per_image)
        fslc = fslc_comparison(jax_run, ref_run, spec, sizes, args.precision, mesh, args.cdist_mode, args.repeats,
                               torch_device)
    scorer = jax_run["scorer"]
    del model, jax_run["grids"], jax_run["outputs"], ref_run["outputs"]

    scaling = None
    if args.scaling:
        scaling = run_scaling(scorer, spec, args.scaling, args.scaling_repeats, args.max_seconds, args.seed,
                              torch_device, args.cdist_mode, platform_name)

    ceiling_size = args.ceiling_size or (2048 if platform_name == "cpu" else 8192)
    ceilings = roofline.measure_ceilings(ceiling_size, args.copy_mib, 5, torch_device)
    shape = roofline.MuscShape(args.n, m, c, len(spec.taps), musc.r_list, d, spec.image_size, spec.image_size,
                               musc.windows)
    costs = roofline.musc_stage_costs(shape, spec.vit_shape(), min(args.batch, args.n), spec.config.vision.heads,
                                      args.precision)
    floors = roofline.stage_floors(costs, ceilings)
    rows = {}
    for stage, cost in costs.items():
        jax_s = jax_run["summary"]["stages"][stage]["median_s"]
        ref_s = ref_run["summary"]["stages"][stage]["median_s"]
        rows[stage] = {**cost, "floor_s": floors[stage], "jax_s": jax_s, "reference_s": ref_s,
                       "jax_over_floor": jax_s / floors[stage], "reference_over_floor": ref_s / floors[stage]}

    if fslc["status"] == "ok":
        fslc_floors = roofline.stage_floors(fslc["costs"], ceilings)
        fslc["roofline"] = {}
        for stage, cost in fslc["costs"].items():
            jax_s = fslc["jax"]["summary"]["stages"][stage]["median_s"]
            ref_s = fslc["reference"]["summary"]["stages"][stage]["median_s"]
            fslc["roofline"][stage] = {**cost, "floor_s": fslc_floors[stage], "jax_s": jax_s, "reference_s": ref_s,
                                       "jax_over_floor": jax_s / fslc_floors[stage],
                                       "reference_over_floor": ref_s / fslc_floors[stage]}
        del fslc["costs"]

    payload = {
        "kind": "musc_timing",
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "command": "python -m benchmarks.musc_timing " + " ".join(sys.argv[1:] if argv is None else argv),
        "note": args.note,
        "device": {**harness.device_info(shards=args.shards), **harness.torch_device_info(torch_device)},
        "versions": harness.versions("torch", "transformers"),
        "commit": harness.commit(),
        "config": {
            "backbone": spec.label, "architecture": spec.arch, "activation": spec.config.activation,
            "image_size": spec.image_size, "patch_size": spec.config.vision.patch_size, "grid": spec.grid,
            "width": c, "layers": spec.config.vision.layers, "heads": spec.config.vision.heads,
            "mlp_dim": spec.config.vision.mlp_dim, "embed_dim": d, "taps": list(spec.taps), "n": args.n, "m": m,
            "precision": args.precision, "reference_precision": "fp32", "shards": args.shards,
            "repeats": args.repeats, "batch": args.batch, "r_list": list(musc.r_list),
            "interval": list(musc.interval), "windows": list(musc.windows), "map_size": musc.map_size,
            "schedule": args.schedule,
            "schedule_resolved": resolve_schedule(musc, driver_pool_size(scorer, args.n), m),
            "pool_rows": driver_pool_size(scorer, args.n),
            "cdist_mode": args.cdist_mode, "seed": args.seed, "weights": "random (init_random_encoder), real shapes",
            "images": "random uint8 (N, S, S, 3); CLIP-normalised inside the jitted forward, the reference gets the "
                      "same normalised pixels", "reference_warmup_images": REFERENCE_WARMUP_IMAGES,
        },
        "stages": list(MUSC_STAGES),
        "jax": _strip(jax_run),
        "reference": _strip(ref_run),
        "parity": parity,
        "ceilings": ceilings,
        "roofline": rows,
        "scaling": scaling,
        "scaling_config": None if scaling is None else {
            "sizes": list(args.scaling), "repeats": args.scaling_repeats, "max_seconds": args.max_seconds,
            "inputs": "random normal tokens of the backbone's shape; scoring stages only"},
        "fslc": fslc,
    }
    return payload


if __name__ == "__main__":
    main()
