"""One prepared benchmark run on whatever accelerator JAX sees, inside a time budget (issue 16).

    python -m benchmarks.gpu_suite [--budget 480] [--out DIR] [--only PARTS] [--skip PARTS]
    bash benchmarks/gpu_suite.sh ...            # on the lent GPU machine: installs the .whl/ wheels first

The run is a list of parts (``PARTS``), in order of priority. Before a part starts it estimates its seconds
(roofline floors from the measured device ceilings times ``--slowdown``, plus ``--compile-allowance`` per new
program) and skips itself, recorded with the reason, when the estimate exceeds the budget left. A part that
raises is recorded as failed (error and traceback tail) and the run goes on. The results JSON and the markdown
table are rewritten after every part, so a run killed from outside keeps every part that finished.

Parts (random weights of the real shapes, random uint8 images; every JAX timing runs the shared driver
``jzad.pipeline`` on its ``StageClock``: device-synchronised, compile seconds apart; the per-stage parts run
``--profile stages``, the same body as the fused program):
- device: device, versions, measured ceilings (large fp32 / bf16 matmuls in JAX and PyTorch, a streaming copy).
- musc_bf16, musc_fp32: MuSc at N (``run_category``: extract, LNAMD, MSM, upsample, RsCIN per image), a warm-up
  run then ``--repeats`` timed runs; MSM (and every stage) over its roofline floor; peak device memory
  (XLA ``peak_bytes_in_use``: a process-lifetime peak, so bf16 runs first and fp32's peak is the larger one).
- musc_reference: the PyTorch reference (``benchmarks/reference_torch.py``: transformers CLIP, per-image
  ``torch.cdist`` as the original MuSc code) on the same device and images; score parity against both JAX runs.
- musc_fused: MuSc at N (fp32), the fused scoring program users run against the same body stage by stage
  (``--profile stages``), each from a cold jit cache: wall, compile seconds, XLA programs compiled.
- sharded_extract: MuSc at N with extraction and scoring sharded over every local device against one device
  (skipped on one device).
- attention: the pipeline's extraction with ``jax.nn.dot_product_attention(implementation="cudnn")`` against the
  plain einsum attention (bf16; cuDNN's kernel takes no fp32), and "xla" against einsum in fp32; parity of taps.
- musc_scaling: MuSc at the smaller N of ``--scaling`` for both precisions and the reference.
- fslc: FSLC at N through the pipeline, against the reference FSLC on the reference's features.
- patchcore_plus, winclip, clip_lad: each method registered in ``jzad.methods`` run through the pipeline on its
  random-weight backbone with ``--method-shots`` normal references; skipped, with the reason, when not registered.

Output: ``<out>/gpu_suite.json`` and ``<out>/gpu_suite.md`` (default ``benchmarks/results/gpu_<device>_<date>/``).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import musc_timing as mt  # noqa: E402
from benchmarks import harness, roofline  # noqa: E402
from benchmarks.harness import jsonable  # noqa: E402
from benchmarks.report import fmt  # noqa: E402
from jzad.data import ArrayImages  # noqa: E402
from jzad.experiment import method_backbone, method_scorer  # noqa: E402
from jzad.kernels import device_mesh  # noqa: E402
from jzad.methods import get_method, method_names  # noqa: E402
from jzad.methods.musc import MuScConfig, resolve_schedule  # noqa: E402
from jzad.pipeline import Scorer, extract_source  # noqa: E402
from jzad.timing import StageClock  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
JSON_NAME, TABLE_NAME = "gpu_suite.json", "gpu_suite.md"
PRECISIONS = {"fp32": "float32", "bf16": "bfloat16"}
FSLC_STAGES = ("extract", "lnamd", "init", "expand", "filter", "score", "upsample")
ATTENTION_VARIANTS = (("einsum", "bfloat16"), ("cudnn", "bfloat16"), ("einsum", "float32"), ("xla", "float32"))
FALLBACK_CEILINGS = {"matmul_fp32_flop_s": 1e12, "matmul_bf16_flop_s": 1e12, "copy_bytes_s": 1e10}
ERROR_LINES = 12
PREDICTION_MARGIN = 1.25


# --------------------------------------------------------------------------------------------- parts, budget


class PartSkipped(Exception):
    """Raised by a part that stops short (its full run would overrun the budget, say); recorded as skipped with
    the message and ``details`` (what it measured before stopping)."""

    def __init__(self, reason: str, details: dict | None = None):
        super().__init__(reason)
        self.details = details or {}


@dataclass(frozen=True)
class Part:
    """One measurement of the suite.

    run(suite) -> dict of results (merged into the part's JSON entry). estimate(suite) -> the seconds it
    expects to take, checked against the budget left before it starts. method: the registered method it needs
    (skipped when that method is not registered).
    """

    name: str
    summary: str
    run: Callable
    estimate: Callable
    method: str | None = None


def device_memory() -> dict:
    """The device allocator's counters now (bytes in use, process-lifetime peak, limit) where the backend reports
    them, and the host's peak RSS (MiB)."""
    stats = jax.devices()[0].memory_stats() or {}
    out = {key: int(stats[key]) for key in ("bytes_in_use", "peak_bytes_in_use", "bytes_limit") if key in stats}
    out["host_peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return out


def _error_entry(err: BaseException) -> dict:
    return {"error": f"{type(err).__name__}: {err}".strip(),
            "traceback": traceback.format_exc().splitlines()[-ERROR_LINES:]}


class Suite:
    """One run: the options, the budget clock, shared inputs built on first use, and the results payload.

    clock: monotonic seconds (tests pass a fake one); the budget counts from the Suite's creation. The results
    JSON and table are written to ``out_dir`` after every part (``write``).
    """

    def __init__(self, args: argparse.Namespace, out_dir: Path, command: str, clock: Callable = time.monotonic):
        self.args = args
        self.out_dir = Path(out_dir)
        self.clock = clock
        self.started = clock()
        self.deadline = self.started + args.budget
        self.ceilings: dict | None = None
        self.shared: dict = {}
        self._cache: dict = {}
        spec = self.spec
        self.payload = {
            "kind": "gpu_suite",
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "command": command,
            "note": args.note,
            "budget_s": args.budget,
            "device": device_info(self.torch_device),
            "versions": versions(),
            "commit": harness.commit(),
            "config": {
                "backbone": spec.label, "architecture": spec.arch, "activation": spec.config.activation,
                "image_size": spec.image_size, "grid": spec.grid, "width": spec.config.vision.width,
                "layers": spec.config.vision.layers, "taps": list(spec.taps), "embed_dim": spec.config.embed_dim,
                "n": args.n, "scaling": list(args.scaling), "batch": args.batch, "repeats": args.repeats,
                "attention_images": args.attention_images, "method_images": args.method_images,
                "method_shots": args.method_shots, "method_backbone": args.method_backbone,
                "cdist_mode": args.cdist_mode, "seed": args.seed, "slowdown": args.slowdown,
                "compile_allowance_s": args.compile_allowance,
                "weights": "random (init_random_encoder), real shapes", "images": "random uint8 (N, S, S, 3)",
            },
            "parts": {},
        }

    # ------------------------------------------------------------------ shared inputs, built on first use

    def cached(self, key, build: Callable):
        """The value stored under key, built by build() the first time."""
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]

    @property
    def spec(self) -> mt.BackboneSpec:
        """The backbone shape of the MuSc parts."""
        return self.cached("spec", lambda: mt.parse_backbone(self.args.backbone))

    @property
    def platform(self) -> str:
        """JAX's platform name ("gpu", "cpu", "tpu")."""
        return jax.devices()[0].platform

    @property
    def torch_device(self) -> str:
        """Where the PyTorch reference runs: the GPU when JAX runs on one, else the CPU."""
        return self.cached("torch_device", harness.default_torch_device)

    @property
    def mesh(self):
        """One device (the suite times a single accelerator)."""
        return self.cached("mesh", lambda: device_mesh(1))

    @property
    def params(self) -> dict:
        """Random weights of the spec's shapes, {"visual": ...}, on the device."""
        spec = self.spec
        return self.cached("params", lambda: mt.init_random_encoder(spec.config, taps=spec.taps,
                                                                    seed=self.args.seed).params)

    @property
    def images(self) -> np.ndarray:
        """uint8 (max N, S, S, 3): every part takes the first n."""
        count = max((self.args.n, *self.args.scaling))
        return self.cached("images", lambda: mt.random_images(count, self.spec.image_size, self.args.seed))

    def musc_config(self, precision: str) -> MuScConfig:
        """MuSc's published settings at the run's image size (maps and image scores at S x S)."""
        return MuScConfig(precision=precision, map_size=self.spec.image_size)

    def scorer(self, precision: str, attention: str = "einsum") -> Scorer:
        """The pipeline's MuSc Scorer at a precision ("fp32" / "bf16": backbone dtype and MSM GEMMs)."""
        return self.cached(("scorer", precision, attention), lambda: mt.musc_scorer(
            self.spec, self.params, self.musc_config(precision), self.mesh, self.args.batch, PRECISIONS[precision],
            attention))

    def torch_model(self):
        """The transformers CLIP of the reference, holding the same weights."""
        return self.cached("torch_model", lambda: mt.torch_clip_model(self.params, self.spec.config,
                                                                      self.torch_device))

    # ------------------------------------------------------------------ budget, bookkeeping

    def remaining(self) -> float:
        """Seconds of the budget left."""
        return self.deadline - self.clock()

    def fits(self, estimate: float) -> str | None:
        """None when ``estimate`` seconds fit the budget left, else the reason to skip."""
        left = self.remaining()
        if estimate <= left:
            return None
        return f"budget: estimated {estimate:.1f} s, {max(left, 0.0):.1f} s left"

    def skip_reason(self, part: Part) -> str | None:
        """Why a part does not run before its estimate is even asked (not selected; method not registered)."""
        if self.args.only and part.name not in self.args.only and part.name != "ceilings":
            return "not selected (--only)"
        if part.name in self.args.skip:
            return "not selected (--skip)"
        if part.method is not None and part.method not in method_names():
            return f"method {part.method!r} is not registered (registered: {', '.join(method_names())})"
        return None

    def run_part(self, part: Part) -> dict:
        """Run one part within the budget (or skip it, with the reason), record it, rewrite the outputs."""
        start = self.clock()
        entry: dict = {"about": part.summary}
        reason = self.skip_reason(part)
        if reason is None:
            try:
                entry["estimate_s"] = float(part.estimate(self))
                reason = self.fits(entry["estimate_s"])
            except Exception as err:
                reason = f"no estimate: {type(err).__name__}: {err}"
        if reason is not None:
            entry.update(status="skipped", reason=reason)
        else:
            try:
                entry.update(part.run(self))
                entry["status"] = "ok"
            except PartSkipped as err:
                entry.update(err.details)
                entry.update(status="skipped", reason=str(err))
            except Exception as err:
                entry.update(status="failed", **_error_entry(err))
        entry["wall_s"] = self.clock() - start
        entry["device_memory"] = device_memory()
        self.payload["parts"][part.name] = entry
        self.payload["elapsed_s"] = self.clock() - self.started
        self.write()
        note = entry.get("reason") or entry.get("error") or ""
        print(f"[gpu_suite] {part.name}: {entry['status']} in {entry['wall_s']:.1f} s"
              + (f" ({note})" if note else "") + f"; {max(self.remaining(), 0.0):.0f} s of the budget left",
              flush=True)
        return entry

    def run(self, parts) -> dict:
        """Every part in order; returns the payload."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.write()
        for part in parts:
            self.run_part(part)
        return self.payload

    def write(self) -> None:
        """Rewrite the results JSON and the markdown table (atomically, so a killed run leaves whole files)."""
        payload = jsonable(self.payload)
        harness.write_json(self.out_dir / JSON_NAME, payload)
        try:
            table = render(payload)
        except Exception as err:
            table = f"# jzad benchmark suite\n\nThe table could not be rendered ({type(err).__name__}: {err}); " \
                    f"the numbers are in {JSON_NAME}.\n"
        harness.write_text(self.out_dir / TABLE_NAME, table)


# --------------------------------------------------------------------------------------------- metadata


def versions() -> dict:
    """Library versions (and CUDA / cuDNN as torch sees them, on a GPU)."""
    out = harness.versions("torch", "transformers", "ott-jax")
    import torch

    if torch.cuda.is_available():
        out["torch_cuda"] = torch.version.cuda
        out["torch_cudnn"] = torch.backends.cudnn.version()
    return out


def device_info(torch_device: str) -> dict:
    """The device as the results name it (``musc_timing``'s fields) plus the allocator's limit and torch's TF32
    switches (the reference runs fp32 matmuls with TF32 off, torch's default)."""
    import torch

    info = {**harness.device_info(shards=1), **harness.torch_device_info(torch_device)}
    info["memory_limit_bytes"] = device_memory().get("bytes_limit")
    info["torch_matmul_allow_tf32"] = bool(torch.backends.cuda.matmul.allow_tf32)
    info["torch_cudnn_allow_tf32"] = bool(torch.backends.cudnn.allow_tf32)
    return info


def default_out(kind: str) -> Path:
    """benchmarks/results/gpu_<device>_<date>: the device kind as a file name ("nvidia-h100-80gb-hbm3")."""
    slug = "".join(ch if ch.isalnum() else "-" for ch in kind.lower()).strip("-")
    while "--" in slug:
        slug = slug.replace("--", "-")
    return RESULTS / f"gpu_{slug}_{time.strftime('%Y%m%d')}"


# --------------------------------------------------------------------------------------------- roofline helpers


def _ceilings(suite: Suite) -> dict:
    return suite.ceilings or FALLBACK_CEILINGS


def musc_costs(suite: Suite, n: int, precision: str, ordered: bool = False) -> dict:
    """Roofline costs of MuSc's stages over N images (``roofline.musc_stage_costs``); ``ordered``: MSM counted as
    the per-image reference computes it (every image against every other, twice the symmetric count)."""
    spec, musc = suite.spec, suite.musc_config(precision)
    shape = roofline.MuscShape(n, spec.grid**2, spec.config.vision.width, len(spec.taps), musc.r_list,
                               spec.config.embed_dim, spec.image_size, spec.image_size, musc.windows)
    costs = roofline.musc_stage_costs(shape, spec.vit_shape(), min(suite.args.batch, n),
                                      spec.config.vision.heads, precision)
    if ordered:
        costs["msm"] = {**costs["msm"], "flops": costs["msm"]["flops_ordered"]}
    return costs


def musc_floor_s(suite: Suite, n: int, precision: str, ordered: bool = False, stages=None) -> float:
    """Sum of the stage floors (seconds) of MuSc over N images under the measured (or fallback) ceilings."""
    floors = roofline.stage_floors(musc_costs(suite, n, precision, ordered), _ceilings(suite))
    return sum(value for stage, value in floors.items() if stages is None or stage in stages)


def roofline_rows(suite: Suite, costs: dict, summary: dict) -> dict | None:
    """Per stage: FLOPs, bytes, floor, measured median and measured / floor (None before the ceilings part)."""
    if suite.ceilings is None:
        return None
    floors = roofline.stage_floors(costs, suite.ceilings)
    rows = {}
    for stage, cost in costs.items():
        if stage not in summary["stages"]:
            continue
        measured = summary["stages"][stage]["median_s"]
        rows[stage] = {"flops": cost["flops"], "bytes": cost["bytes"], "rate": cost["rate"],
                       "floor_s": floors[stage], "measured_s": measured, "over_floor": measured / floors[stage]}
    return rows


def rank_correlation(a, b) -> float | None:
    """Spearman's rank correlation of two score vectors (None under 2 values)."""
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    if a.size < 2:
        return None
    ranks_a, ranks_b = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ranks_a, ranks_b)[0, 1])


def score_parity(ours: dict, theirs: dict) -> dict:
    """Max abs differences of patch scores, maps, raw and final image scores, the largest reference patch score
    (the scale) and the rank correlation of the final image scores."""
    out = {f"{key}_max_abs": harness.max_abs(ours[key], theirs[key])
           for key in ("patch_scores", "maps", "image_scores_raw", "image_scores")}
    out["patch_scores_max_magnitude"] = float(np.max(np.abs(theirs["patch_scores"])))
    out["image_scores_rank_correlation"] = rank_correlation(ours["image_scores"], theirs["image_scores"])
    return out


# --------------------------------------------------------------------------------------------- parts


def ceilings_run(suite: Suite) -> dict:
    """Measured device ceilings (``roofline.measure_ceilings``); every later estimate and floor uses them, so
    this part runs whatever --only says. Should PyTorch's matmul fail, the JAX ceilings alone are kept."""
    args = suite.args
    size = args.ceiling_size or (2048 if suite.platform == "cpu" else 8192)
    out = {}
    try:
        suite.ceilings = roofline.measure_ceilings(size, args.copy_mib, 5, suite.torch_device)
    except Exception as err:
        out["torch_error"] = _error_entry(err)
        suite.ceilings = roofline.measure_ceilings(size, args.copy_mib, 5, None)
    return {"ceilings": suite.ceilings, **out}


def ceilings_estimate(suite: Suite) -> float:
    return suite.args.compile_allowance


def musc_run(precision: str) -> Callable:
    """The MuSc part at one precision: ``run_category`` at N, warm-up then ``--repeats`` timed runs."""

    def run(suite: Suite) -> dict:
        args, spec, n = suite.args, suite.spec, suite.args.n
        scorer = suite.scorer(precision)
        timed = mt.pipeline_run(scorer, mt.image_source(suite.images[:n]), args.repeats, suite.platform)
        result = timed["result"]
        suite.shared[f"musc_{precision}"] = {
            "patch_scores": result.patch_scores.reshape(n, -1), "maps": result.maps,
            "image_scores_raw": result.image_scores_raw, "image_scores": result.image_scores}
        summary = mt.stage_summary(timed, mt.MUSC_STAGES, n)
        return {"n": n, "precision": precision, "dtype": PRECISIONS[precision], "repeats": args.repeats,
                "schedule": resolve_schedule(scorer.config, n, spec.grid**2), "summary": summary,
                "memory": timed["memory"], "roofline": roofline_rows(suite, musc_costs(suite, n, precision), summary)}

    return run


def musc_estimate(precision: str) -> Callable:
    def estimate(suite: Suite) -> float:
        work = musc_floor_s(suite, suite.args.n, precision)
        return (1 + suite.args.repeats) * suite.args.slowdown * work + 2 * suite.args.compile_allowance

    return estimate


def reference_run(suite: Suite) -> dict:
    """The PyTorch reference at N (fp32, per-image cdist) and the parity of both JAX runs' scores against it."""
    import torch

    args, spec, n = suite.args, suite.spec, suite.args.n
    model = suite.torch_model()
    ref = mt.time_reference_musc(model, mt.reference_pixels(suite.images[:n]), spec, suite.musc_config("fp32"),
                                 args.batch, args.cdist_mode, args.repeats, suite.torch_device)
    outputs = ref["outputs"]
    suite.shared["reference_features"] = (outputs["taps"], outputs["embeds"])
    theirs = {key: harness.to_numpy(outputs[key]) for key in ("patch_scores", "maps", "image_scores_raw", "image_scores")}
    parity = {precision: score_parity(suite.shared[f"musc_{precision}"], theirs)
              for precision in PRECISIONS if f"musc_{precision}" in suite.shared}
    del theirs, outputs["maps"]
    if suite.torch_device.startswith("cuda"):
        torch.cuda.empty_cache()
    return {"n": n, "precision": "fp32", "cdist_mode": args.cdist_mode, "repeats": args.repeats,
            "warmup_images": mt.REFERENCE_WARMUP_IMAGES, "summary": ref["summary"], "memory": ref["memory"],
            "parity": parity,
            "roofline": roofline_rows(suite, musc_costs(suite, n, "fp32", ordered=True), ref["summary"])}


def reference_estimate(suite: Suite) -> float:
    work = musc_floor_s(suite, suite.args.n, "fp32", ordered=True)
    return suite.args.repeats * suite.args.slowdown * work + suite.args.compile_allowance


def _attention_variant_estimate(suite: Suite, n: int, dtype: str) -> float:
    precision = "bf16" if dtype == "bfloat16" else "fp32"
    return 2 * suite.args.slowdown * musc_floor_s(suite, n, precision, stages=("extract",))


def attention_run(suite: Suite) -> dict:
    """The pipeline's extraction (``extract_source``) over the same images with each attention implementation:
    a warm-up pass (compiles), a timed pass; taps and embeddings against einsum at the same dtype."""
    n = min(suite.args.attention_images, suite.args.n)
    source = mt.image_source(suite.images[:n])
    indices = np.arange(n)
    baselines, rows = {}, []
    for attention, dtype in ATTENTION_VARIANTS:
        row = {"attention": attention, "dtype": dtype, "images": n}
        rows.append(row)
        if attention == "cudnn" and suite.platform != "gpu":
            row.update(status="skipped", reason=f"cuDNN attention needs a CUDA GPU (JAX platform {suite.platform})")
            continue
        reason = suite.fits(_attention_variant_estimate(suite, n, dtype)
                            + (0.0 if attention == "einsum" else suite.args.compile_allowance))
        if reason is not None:
            row.update(status="skipped", reason=reason)
            continue
        try:
            scorer = suite.scorer("bf16" if dtype == "bfloat16" else "fp32", attention)
            warm = StageClock()
            extract_source(scorer, source, indices, warm)
            clock = StageClock()
            features, _ = extract_source(scorer, source, indices, clock)
            row.update(status="ok", per_image_ms=1e3 * clock.run_seconds["extract"] / n,
                       compile_s=warm.compile_seconds.get("extract", 0.0))
            if attention == "einsum":
                baselines[dtype] = features
            elif dtype in baselines:
                base = baselines[dtype]
                row["taps_max_abs"] = max(float(jax.numpy.max(jax.numpy.abs(a - b)))
                                          for a, b in zip(features.layers, base.layers))
                row["taps_max_magnitude"] = max(float(jax.numpy.max(jax.numpy.abs(b))) for b in base.layers)
                row["embeds_max_abs"] = float(jax.numpy.max(jax.numpy.abs(features.embeds - base.embeds)))
                row["speedup_vs_einsum"] = next(r["per_image_ms"] for r in rows
                                                if r["attention"] == "einsum" and r["dtype"] == dtype
                                                and r.get("status") == "ok") / row["per_image_ms"]
            del features
        except Exception as err:
            row.update(status="failed", **_error_entry(err))
    return {"variants": rows}


def attention_estimate(suite: Suite) -> float:
    n = min(suite.args.attention_images, suite.args.n)
    return min(_attention_variant_estimate(suite, n, dtype) for _, dtype in ATTENTION_VARIANTS)


def scaling_run(suite: Suite) -> dict:
    """MuSc at each N of --scaling: the pipeline at both precisions (one timed run; compile seconds apart) and
    the reference; each entry checks the budget left before it starts."""
    args, spec = suite.args, suite.spec
    rows = []
    for n in args.scaling:
        row = {"n": n}
        rows.append(row)
        for precision in ("bf16", "fp32"):
            key = f"jax_{precision}"
            reason = suite.fits(args.slowdown * musc_floor_s(suite, n, precision) + args.compile_allowance)
            if reason is not None:
                row[key] = {"status": "skipped", "reason": reason}
                continue
            try:
                timed = mt.pipeline_run(suite.scorer(precision), mt.image_source(suite.images[:n]), 1,
                                        suite.platform, warmup=False)
                row[key] = {"status": "ok", "summary": mt.stage_summary(timed, mt.MUSC_STAGES, n),
                            "memory": timed["memory"], "schedule": resolve_schedule(suite.musc_config(precision), n,
                                                                                    spec.grid**2)}
            except Exception as err:
                row[key] = {"status": "failed", **_error_entry(err)}
        reason = suite.fits(args.slowdown * musc_floor_s(suite, n, "fp32", ordered=True))
        if reason is not None:
            row["reference"] = {"status": "skipped", "reason": reason}
            continue
        try:
            ref = mt.time_reference_musc(suite.torch_model(), mt.reference_pixels(suite.images[:n]), spec,
                                         suite.musc_config("fp32"), args.batch, args.cdist_mode, 1, suite.torch_device)
            row["reference"] = {"status": "ok", "summary": ref["summary"], "memory": ref["memory"]}
        except Exception as err:
            row["reference"] = {"status": "failed", **_error_entry(err)}
    return {"rows": rows, "warmup": "none: compile seconds are subtracted by the StageClock; the N-image parts "
                                    "compiled the extraction"}


def scaling_estimate(suite: Suite) -> float:
    if not suite.args.scaling:
        return 0.0
    n = min(suite.args.scaling)
    return suite.args.slowdown * musc_floor_s(suite, n, "bf16") + suite.args.compile_allowance


def _fslc_sizes(suite: Suite):
    args = suite.args
    return mt.fslc_sizes(args.n, suite.spec.grid**2, args.fslc_init_images, args.fslc_coreset, args.fslc_per_image)


def _fslc_floor_s(suite: Suite) -> float:
    spec, sizes, n = suite.spec, _fslc_sizes(suite), suite.args.n
    m, c = spec.grid**2, spec.config.vision.width
    costs = roofline.fslc_stage_costs(n, m, len(spec.taps) * c, spec.config.embed_dim, sizes.init_images,
                                      sizes.init_coreset, sizes.per_image, sizes.init_coreset)
    floors = roofline.stage_floors(costs, _ceilings(suite))
    return sum(floors.values()) + musc_floor_s(suite, n, "fp32", stages=("extract",))


def fslc_run(suite: Suite) -> dict:
    """FSLC at N through the pipeline (fp32, the reference's sizes), then the reference FSLC on the reference's
    features (from the musc_reference part) with parity of the scores."""
    args, spec, n = suite.args, suite.spec, suite.args.n
    sizes = _fslc_sizes(suite)
    config = mt.fslc_config(sizes, "fp32", spec.image_size)
    scorer = Scorer(get_method("fslc"), config, suite.scorer("fp32").backbone, suite.mesh, args.batch,
                    profile="stages")
    timed = mt.pipeline_run(scorer, mt.image_source(suite.images[:n]), args.repeats, suite.platform)
    result = timed["result"]
    out = {"n": n, "sizes": dict(sizes.__dict__), "repeats": args.repeats,
           "summary": mt.stage_summary(timed, FSLC_STAGES, n), "memory": timed["memory"]}
    features = suite.shared.get("reference_features")
    if features is None:
        out["reference"] = {"status": "skipped", "reason": "needs the features of the musc_reference part"}
        return out
    reason = suite.fits(args.slowdown * _fslc_floor_s(suite))
    if reason is not None:
        out["reference"] = {"status": "skipped", "reason": reason}
        return out
    ref = mt.time_reference_fslc(features[0], features[1], sizes, spec.image_size, args.cdist_mode, 1,
                                 suite.torch_device)
    theirs = ref["outputs"]
    out["reference"] = {"status": "ok", "summary": ref["summary"], "parity": {
        "patch_scores_max_abs": harness.max_abs(result.patch_scores.reshape(n, -1), harness.to_numpy(theirs["patch_scores"])),
        "image_scores_max_abs": harness.max_abs(result.image_scores, harness.to_numpy(theirs["image_scores"])),
        "maps_max_abs": harness.max_abs(result.maps, harness.to_numpy(theirs["maps"])),
        "image_scores_rank_correlation": rank_correlation(result.image_scores, harness.to_numpy(theirs["image_scores"])),
        "coreset_size_reference": int(theirs["coreset"].shape[0])}}
    return out


def fslc_estimate(suite: Suite) -> float:
    return (1 + suite.args.repeats) * suite.args.slowdown * _fslc_floor_s(suite) + 2 * suite.args.compile_allowance


@dataclass(frozen=True)
class MethodRun:
    """A registered method's part: its registry name, the category it is told it scores (prompt-based methods
    read the object's name from it) and the data set layout its presets follow."""

    method: str
    category: str = "bottle"
    dataset: str = "mvtec"


def method_run(spec: MethodRun) -> Callable:
    """A registered method through the pipeline on its random-weight backbone (--method-backbone demo: its
    real-shape demo backbone; tiny: its test backbone), --method-shots normal references when it takes them and
    held-out normals when it calibrates. A pilot on a few images compiles and predicts the full run's time
    (linear in N, quadratic for a pooling method); the full run is skipped when the prediction (with a 25%
    margin) exceeds the budget left."""

    def run(suite: Suite) -> dict:
        args = suite.args
        method = get_method(spec.method)
        shots = args.method_shots if method.few_shot != "never" else 0
        name = method.tiny_backbone if args.method_backbone == "tiny" else method.demo_backbone
        backbone = method_backbone(method, name, seed=args.seed)
        scorer = method_scorer(method, {"precision": "fp32"}, backbone, shots=shots, dataset=spec.dataset,
                               mesh=suite.mesh, batch_size=args.batch, profile="stages")
        size, n = backbone.image_size, args.method_images
        images = mt.random_images(n + shots + args.method_calibration, size, args.seed + 1)
        references = calibration = None
        if shots:
            references = ArrayImages(images[n:n + shots], [f"reference_{i}" for i in range(shots)],
                                     np.zeros(shots, np.int64), ("good",) * shots)
        if method.calibrate is not None:
            count = args.method_calibration
            calibration = ArrayImages(images[n + shots:], [f"calibration_{i}" for i in range(count)],
                                      np.zeros(count, np.int64), ("good",) * count)
        out = {"method": spec.method, "backbone": backbone.describe(), "image_size": size, "n": n, "shots": shots,
               "category": spec.category, "dataset": spec.dataset}
        stages = tuple(dict.fromkeys(("prepare", "fit", "calibrate", "extract", *method.stages,
                                      method.finalize_stage, "upsample")))
        pilot_n = min(n, args.method_pilot)
        pilot = mt.pipeline_run(scorer, mt.image_source(images[:pilot_n]), 1, suite.platform, warmup=False,
                                references=references, calibration=calibration, category=spec.category)
        pilot_s = sum(pilot["runs"][0].values())
        predicted = pilot_s * ((n / pilot_n) ** 2 if method.pools else n / pilot_n)
        out["pilot"] = {"n": pilot_n, "seconds": pilot_s, "compile_s": sum(pilot["compile_s"].values()),
                        "predicted_s": predicted}
        reason = suite.fits(PREDICTION_MARGIN * predicted)
        if reason is not None:
            raise PartSkipped(f"{reason} (from a {pilot_n}-image pilot: {pilot_s:.2f} s)", out)
        timed = mt.pipeline_run(scorer, mt.image_source(images[:n]), args.repeats, suite.platform, warmup=False,
                                references=references, calibration=calibration, category=spec.category)
        present = tuple(s for s in stages if any(s in run for run in timed["runs"]))
        out.update(summary=mt.stage_summary(timed, present, n), memory=timed["memory"])
        return out

    return run


def method_estimate(suite: Suite) -> float:
    return 2 * suite.args.compile_allowance


METHOD_RUNS = (MethodRun("patchcore_plus"), MethodRun("winclip"), MethodRun("clip_lad", "breakfast_box", "loco"))

def fused_run(suite: Suite) -> dict:
    """MuSc at N (fp32) through ``run_category``, the fused program (what users run) against the same body stage
    by stage, each from a cold in-memory jit cache: wall, compile seconds and XLA programs compiled."""
    import dataclasses

    from benchmarks.fused_timing import timed_run

    source = mt.image_source(suite.images[:suite.args.n])
    out = {}
    for profile in ("fused", "stages"):
        scorer = dataclasses.replace(suite.scorer("fp32"), profile=profile)
        timed = timed_run(scorer, source, 1)
        out[profile] = {k: timed[k] for k in ("wall_s", "xla_programs", "backend_compile_s", "run_s_by_stage")}
        out[profile]["image_scores_head"] = timed["image_scores_head"]
    out["wall_ratio_stages_over_fused"] = out["stages"]["wall_s"] / max(out["fused"]["wall_s"], 1e-9)
    return {"n": suite.args.n, **out}


def fused_estimate(suite: Suite) -> float:
    return 2 * (suite.args.slowdown * musc_floor_s(suite, suite.args.n, "fp32") + 2 * suite.args.compile_allowance)


def sharded_extract_run(suite: Suite) -> dict:
    """MuSc at N (fp32) with extraction and scoring sharded over every local device against one device: wall
    time of each and the largest score difference. Skipped on a single device."""
    import dataclasses

    from benchmarks.fused_timing import timed_run

    devices = len(jax.devices())
    if devices < 2:
        raise PartSkipped(f"one device ({jax.devices()[0].device_kind}): nothing to shard over")
    source = mt.image_source(suite.images[:suite.args.n])
    one = timed_run(dataclasses.replace(suite.scorer("fp32"), profile="fused"), source, 1)
    batch = -(-suite.args.batch // devices) * devices
    sharded = dataclasses.replace(suite.scorer("fp32"), mesh=device_mesh(devices), batch_size=batch)
    many = timed_run(sharded, source, 1)
    return {"n": suite.args.n, "devices": devices, "one_device_wall_s": one["wall_s"],
            "sharded_wall_s": many["wall_s"], "image_scores_head": [one["image_scores_head"],
                                                                   many["image_scores_head"]]}


def sharded_extract_estimate(suite: Suite) -> float:
    return fused_estimate(suite)


PARTS = (
    Part("ceilings", "device ceilings: fp32 / bf16 matmul (JAX, PyTorch), streaming copy", ceilings_run,
         ceilings_estimate),
    Part("musc_bf16", "MuSc at N through jzad.pipeline, bf16 backbone and MSM", musc_run("bf16"),
         musc_estimate("bf16")),
    Part("musc_fp32", "MuSc at N through jzad.pipeline, fp32 (HIGHEST) backbone and MSM", musc_run("fp32"),
         musc_estimate("fp32")),
    Part("musc_reference", "PyTorch reference MuSc at N (fp32, per-image cdist); score parity", reference_run,
         reference_estimate),
    Part("musc_fused", "MuSc at N: the fused program against the same body stage by stage (wall, compiles)",
         fused_run, fused_estimate),
    Part("sharded_extract", "MuSc at N with extraction sharded over every local device against one device",
         sharded_extract_run, sharded_extract_estimate),
    Part("attention", "extraction: cuDNN / XLA dot_product_attention against the einsum attention", attention_run,
         attention_estimate),
    Part("musc_scaling", "MuSc at the --scaling N: both precisions and the reference", scaling_run,
         scaling_estimate),
    Part("fslc", "FSLC at N through jzad.pipeline; the reference FSLC on the reference features", fslc_run,
         fslc_estimate, method="fslc"),
    *(Part(m.method, f"{m.method} through jzad.pipeline on its random-weight backbone", method_run(m),
           method_estimate, method=m.method) for m in METHOD_RUNS),
)
"""The suite, in order of priority. A new part is a run and an estimate function and one line here."""


# --------------------------------------------------------------------------------------------- table


STAGE_NAMES = {"extract": "extract", "lnamd": "LNAMD", "msm": "MSM", "upsample": "upsample", "rscin": "RsCIN",
               "init": "init", "expand": "expand", "filter": "filter", "score": "score"}


def _mib(value) -> str:
    return "n/a" if value is None else fmt(value / 2**20)


def _ok(entry) -> bool:
    return isinstance(entry, dict) and entry.get("status") == "ok"


def _stage_cells(summary: dict, stages) -> list[str]:
    return [fmt(summary["stages"][s]["per_image_ms"]) if s in summary["stages"] else "-" for s in stages]


def _compile(summary: dict) -> str:
    values = [s.get("compile_s") for s in summary["stages"].values()]
    return "n/a" if any(v is None for v in values) else fmt(sum(values))


def _note(entry: dict) -> str:
    text = entry.get("reason") or entry.get("error") or ""
    return text.replace("|", "/").replace("\n", " ")[:160]


def _parts_table(parts: dict) -> list[str]:
    lines = ["| part | status | seconds | estimate (s) | note |", "|---|---|---|---|---|"]
    for name, entry in parts.items():
        lines.append(f"| {name} | {entry['status']} | {fmt(entry.get('wall_s'))} | {fmt(entry.get('estimate_s'))} "
                     f"| {_note(entry)} |")
    return lines


def _musc_section(payload: dict) -> list[str]:
    parts, config = payload["parts"], payload["config"]
    stages = mt.MUSC_STAGES
    runs = [("jzad (JAX) bf16", parts.get("musc_bf16")), ("jzad (JAX) fp32", parts.get("musc_fp32")),
            ("PyTorch reference fp32", parts.get("musc_reference"))]
    runs = [(label, entry) for label, entry in runs if _ok(entry)]
    if not runs:
        return []
    out = [f"## MuSc, {config['backbone']} ({config['activation']}), N = {config['n']}: ms per image by stage", "",
           "| implementation | " + " | ".join(STAGE_NAMES[s] for s in stages)
           + " | total | compile (s) | peak memory (MiB) | MSM / floor |",
           "|---" * (len(stages) + 5) + "|"]
    for label, entry in runs:
        summary, roof = entry["summary"], entry.get("roofline") or {}
        over = roof.get("msm", {}).get("over_floor")
        out.append(f"| {label} | " + " | ".join(_stage_cells(summary, stages))
                   + f" | {fmt(summary['total_per_image_ms'])} | {_compile(summary)} "
                   f"| {_mib(entry['memory']['peak_bytes'])} | {fmt(over) + 'x' if over is not None else 'n/a'} |")
    reference = parts.get("musc_reference")
    for precision in ("bf16", "fp32"):
        ours = parts.get(f"musc_{precision}")
        if _ok(ours) and _ok(reference):
            a, b = ours["summary"], reference["summary"]
            cells = [fmt(b["stages"][s]["median_s"] / a["stages"][s]["median_s"]) + "x" for s in stages]
            out.append(f"| speed-up {precision} (reference / JAX) | " + " | ".join(cells)
                       + f" | {fmt(b['total_median_s'] / a['total_median_s'])}x | | | |")
    out += ["", "MSM / floor: the MSM stage over its roofline floor (symmetric FLOPs for JAX, the ordered per-image "
                "count for the reference, at the matching matmul ceiling). Peak memory: "
            + "; ".join(f"{label}: {entry['memory']['method']}" for label, entry in runs) + "."]
    if _ok(reference) and reference.get("parity"):
        lines = []
        for precision, parity in reference["parity"].items():
            lines.append(f"{precision}: patch scores {fmt(parity['patch_scores_max_abs'])} (largest "
                         f"{fmt(parity['patch_scores_max_magnitude'])}), image scores "
                         f"{fmt(parity['image_scores_max_abs'])} (before RsCIN "
                         f"{fmt(parity['image_scores_raw_max_abs'])}), "
                         f"maps {fmt(parity['maps_max_abs'])}, image-score rank correlation "
                         f"{fmt(parity['image_scores_rank_correlation'])}")
        out += ["", "Parity against the reference (max abs difference, each on its own features): "
                + "; ".join(lines) + "."]
    return out + [""]


def _attention_section(entry: dict) -> list[str]:
    out = ["## Feature extraction by attention implementation", "",
           "| attention | dtype | images | ms/image | compile (s) | speed-up vs einsum | taps max abs vs einsum "
           "(largest) | status |", "|---|---|---|---|---|---|---|---|"]
    for row in entry["variants"]:
        taps = (f"{fmt(row['taps_max_abs'])} ({fmt(row['taps_max_magnitude'])})" if "taps_max_abs" in row else "-")
        speed = fmt(row["speedup_vs_einsum"]) + "x" if "speedup_vs_einsum" in row else "-"
        status = row["status"] if row["status"] == "ok" else f"{row['status']}: {_note(row)}"
        out.append(f"| {row['attention']} | {row['dtype']} | {row['images']} | {fmt(row.get('per_image_ms'))} "
                   f"| {fmt(row.get('compile_s'))} | {speed} | {taps} | {status} |")
    return out + [""]


def _scaling_section(entry: dict) -> list[str]:
    out = ["## MuSc scaling with N (ms per image; compile apart)", "",
           "| N | JAX bf16 | JAX bf16 MSM | JAX fp32 | JAX fp32 MSM | reference | reference MSM | speed-up fp32 "
           "| note |", "|---|---|---|---|---|---|---|---|---|"]
    for row in entry["rows"]:
        cells, notes = [str(row["n"])], []
        for key in ("jax_bf16", "jax_fp32", "reference"):
            item = row.get(key, {"status": "skipped", "reason": "not reached"})
            if _ok(item):
                summary = item["summary"]
                cells += [fmt(summary["total_per_image_ms"]), fmt(summary["stages"]["msm"]["per_image_ms"])]
            else:
                cells += ["-", "-"]
                notes.append(f"{key}: {item['status']} ({_note(item)})")
        both = _ok(row.get("jax_fp32")) and _ok(row.get("reference"))
        speed = (fmt(row["reference"]["summary"]["total_median_s"] / row["jax_fp32"]["summary"]["total_median_s"])
                 + "x") if both else "-"
        out.append("| " + " | ".join(cells) + f" | {speed} | {'; '.join(notes)} |")
    return out + [""]


def _fslc_section(entry: dict) -> list[str]:
    stages = FSLC_STAGES
    out = [f"## FSLC, N = {entry['n']} (S = {entry['sizes']['init_images']}, M0 = {entry['sizes']['init_coreset']}, "
           f"{entry['sizes']['per_image']} patches per image, Otsu): ms per image", "",
           "| implementation | " + " | ".join(STAGE_NAMES[s] for s in stages) + " | total |",
           "|---" * (len(stages) + 2) + "|",
           "| jzad (JAX) fp32 | " + " | ".join(_stage_cells(entry["summary"], stages))
           + f" | {fmt(entry['summary']['total_per_image_ms'])} |"]
    reference = entry.get("reference", {})
    if _ok(reference):
        summary = reference["summary"]
        names = {"lnamd": "features"}
        cells = [fmt(summary["stages"][names.get(s, s)]["per_image_ms"]) if names.get(s, s) in summary["stages"]
                 else "(musc_reference)" for s in stages]
        out.append("| PyTorch reference | " + " | ".join(cells) + f" | {fmt(summary['total_per_image_ms'])} |")
        parity = reference["parity"]
        out += ["", f"FSLC parity (each on its own features): patch scores {fmt(parity['patch_scores_max_abs'])}, "
                f"image scores {fmt(parity['image_scores_max_abs'])}, rank correlation "
                f"{fmt(parity['image_scores_rank_correlation'])}."]
    else:
        out += ["", f"Reference FSLC: {reference.get('status', 'n/a')} ({_note(reference)})."]
    return out + [""]


def _methods_section(parts: dict) -> list[str]:
    rows = [(m.method, parts[m.method]) for m in METHOD_RUNS if m.method in parts]
    if not rows:
        return []
    out = ["## Other methods through jzad.pipeline (ms per image by stage)", "",
           "| method | backbone | N | shots | stages | total | status |", "|---|---|---|---|---|---|---|"]
    for name, entry in rows:
        summary = entry.get("summary")
        stages = ", ".join(f"{s} {fmt(v['per_image_ms'])}" for s, v in summary["stages"].items()) if summary else "-"
        total = fmt(summary["total_per_image_ms"]) if summary else "-"
        status = entry["status"] if entry["status"] == "ok" else f"{entry['status']}: {_note(entry)}"
        out.append(f"| {name} | {entry.get('backbone', '-')} | {entry.get('n', '-')} | {entry.get('shots', '-')} "
                   f"| {stages} | {total} | {status} |")
    return out + [""]


def render(payload: dict) -> str:
    """The markdown tables of a (JSON-ready) results payload: parts, MuSc by stage with speed-ups, parity,
    attention implementations, scaling, FSLC and the other methods."""
    device, versions_, config = payload["device"], payload["versions"], payload["config"]
    name = device.get("torch_device_name") or device["kind"]
    out = [f"# jzad benchmark suite on {name} ({device['platform']})", "",
           f"{payload['date']}; jax {versions_['jax']}, flax {versions_['flax']}, torch {versions_['torch']}, "
           f"transformers {versions_['transformers']}, python {versions_['python']}"
           + (f", commit {payload['commit']}" if payload.get("commit") else "")
           + f". Budget {fmt(payload['budget_s'])} s, used {fmt(payload.get('elapsed_s', 0.0))} s. "
           f"{config['backbone']}, random weights of the real shapes, random uint8 images; N = {config['n']}, "
           f"batch {config['batch']}, {config['repeats']} timed run(s) after a warm-up, device synchronised before "
           "every clock read, compile time apart." + (f" Note: {payload['note']}" if payload.get("note") else ""),
           "", "## Parts", "", *_parts_table(payload["parts"]), ""]
    parts = payload["parts"]
    out += _musc_section(payload)
    if _ok(parts.get("attention")):
        out += _attention_section(parts["attention"])
    if _ok(parts.get("musc_scaling")):
        out += _scaling_section(parts["musc_scaling"])
    if _ok(parts.get("fslc")):
        out += _fslc_section(parts["fslc"])
    out += _methods_section(parts)
    ceilings = parts.get("ceilings", {}).get("ceilings")
    if ceilings:
        out += [f"Measured ceilings: fp32 matmul {fmt(ceilings['matmul_fp32_flop_s'] / 1e12)} TFLOP/s, bf16 matmul "
                f"{fmt(ceilings['matmul_bf16_flop_s'] / 1e12)} TFLOP/s, copy {fmt(ceilings['copy_bytes_s'] / 1e9)} "
                "GB/s.", ""]
    return "\n".join(out)


# --------------------------------------------------------------------------------------------- command line


def _names(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    known = tuple(p.name for p in PARTS)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown part(s) {', '.join(unknown)}; parts: {', '.join(known)}")
    return names


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from err
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_suite", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=_positive_float, default=480.0,
                        help="seconds for the whole run; a part whose estimate exceeds what is left is skipped")
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default benchmarks/results/gpu_<device>_<date>)")
    parser.add_argument("--only", type=_names, default=(), help="comma-separated parts to run (default: all)")
    parser.add_argument("--skip", type=_names, default=(), help="comma-separated parts to skip")
    parser.add_argument("--backbone", default="vit-l-14-336@518",
                        help="<architecture>@<image size> of the MuSc / FSLC parts (musc_timing's form)")
    parser.add_argument("--n", type=harness.positive_int, default=200, help="images of the MuSc and FSLC parts (>= 2)")
    parser.add_argument("--scaling", type=harness.image_counts, default=(50, 100), help="image counts of the scaling part")
    parser.add_argument("--batch", type=harness.positive_int, default=8, help="images per backbone forward")
    parser.add_argument("--repeats", type=harness.positive_int, default=1, help="timed runs after the warm-up")
    parser.add_argument("--attention-images", type=harness.positive_int, default=32,
                        help="images of the attention part")
    parser.add_argument("--cdist-mode", default=mt.DEFAULT_CDIST_MODE, help="torch.cdist compute_mode of the reference")
    parser.add_argument("--fslc-init-images", type=harness.positive_int, default=10, help="FSLC S (capped at N - 1)")
    parser.add_argument("--fslc-coreset", type=harness.positive_int, default=1000, help="FSLC M0 (capped at S * M)")
    parser.add_argument("--fslc-per-image", type=harness.positive_int, default=10, help="FSLC patches per image")
    parser.add_argument("--method-images", type=harness.positive_int, default=200, help="images of the method parts")
    parser.add_argument("--method-shots", type=harness.positive_int, default=4,
                        help="normal reference images of the few-shot method parts")
    parser.add_argument("--method-calibration", type=harness.positive_int, default=4,
                        help="held-out normal images of methods that calibrate")
    parser.add_argument("--method-pilot", type=harness.positive_int, default=16,
                        help="images of the pilot run that predicts a method part's time")
    parser.add_argument("--method-backbone", choices=("demo", "tiny"), default="demo",
                        help="demo: each method's random-weight backbone of the real shape; tiny: its test backbone")
    parser.add_argument("--slowdown", type=_positive_float, default=2.0,
                        help="estimates: expected time over the roofline floor")
    parser.add_argument("--compile-allowance", type=_positive_float, default=30.0,
                        help="estimates: seconds allowed per newly compiled program set")
    parser.add_argument("--ceiling-size", type=harness.positive_int, default=None,
                        help="matmul side of the ceilings (default 2048 on CPU, 8192 otherwise)")
    parser.add_argument("--copy-mib", type=harness.positive_int, default=256, help="MiB streamed for the copy bandwidth")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--note", default="", help="free text stored with the results")
    return parser


def main(argv=None, clock: Callable = time.monotonic, parts=PARTS) -> dict:
    """Run the suite (see the module doc); returns the payload, with "out" the folder written."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.n < 2:
        parser.error(f"--n: MuSc needs at least 2 images, got {args.n}")
    out_dir = args.out or default_out(jax.devices()[0].device_kind)
    command = "python -m benchmarks.gpu_suite " + " ".join(sys.argv[1:] if argv is None else argv)
    suite = Suite(args, out_dir, command, clock)
    print(f"[gpu_suite] {jax.devices()[0].device_kind} ({suite.platform}), budget {args.budget:.0f} s, "
          f"writing {out_dir}", flush=True)
    payload = suite.run(parts)
    print(render(jsonable(payload)))
    print(f"wrote {out_dir / JSON_NAME} and {out_dir / TABLE_NAME}")
    payload["out"] = str(out_dir)
    return payload


if __name__ == "__main__":
    main()
