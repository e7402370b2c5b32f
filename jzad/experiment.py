"""Experiments as a library: a scorer over categories x draw seeds, with seed statistics, the results file, the
failure policy and the per-category outputs; and a stream of arrivals scored batch by batch.

    scorer = build_scorer(get_method("musc"), {}, shots=0, backbone="random-tiny", demo=True)
    results = ResultsFile(out / "results.json", results_header(scorer, config={}, data="demo"))
    done = run_experiment(scorer, Plan(categories=("synthetic",)), lambda c, s: demo_sources(224, 0, 0, s),
                          results, OutputSpec(out))

``python -m jzad.run`` parses and checks its options, then calls these; benchmarks call them too, so every
number comes from the same code. Errors are in library terms (``BackboneLoadError``, ``MethodConfigError``,
``ValueError``/``OSError`` from the data); the command line translates them into its flags.

results.json (``RESULTS_SCHEMA`` = 1, written only by ``ResultsFile``, atomically, after every category):
``schema_version``, ``status`` (running | complete | failed | interrupted), ``method``, ``method_config``,
``config``, ``backbone``, ``data``, ``environment``, ``processes``, ``categories`` (per category: num_images,
metrics (mean over seeds), metrics_std, seeds, mask_report, notes, subset_sizes, timing_ms_per_image,
compile_s, files), ``failed`` (category, error, error_type), and once scoring ends ``timing``, ``mean`` and
``memory``. A stream's file has ``mode`` "stream", ``stream_config`` and ``stream`` (its latency report).
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from jzad import data as jdata
from jzad.methods import Method, RunContext
from jzad.pipeline import Scorer, peak_memory, run_category
from jzad.progress import RunProgress
from jzad.timing import StageClock

RESULTS_SCHEMA = 1
"""Version of results.json's layout; raised when a key changes meaning or goes away."""
DEMO_CATEGORY = "synthetic"
DEMO_IMAGE_SIZE = 224
DEMO_SHOTS_POOL = 4
DEMO_CALIBRATION = 8
CATEGORY_FAILURES = (ValueError, OSError)
"""Errors that fail one category (recorded in results.json) while the others go on."""


class BackboneLoadError(Exception):
    """The backbone ``name`` cannot be loaded; ``reason`` says why."""

    def __init__(self, name: str, reason: str):
        super().__init__(f"cannot load {name!r}: {reason}")
        self.name, self.reason = name, reason


class MethodConfigError(ValueError):
    """The method's options do not make a valid config (the message names the config field)."""


def _stderr(text: str) -> None:
    print(text, file=sys.stderr)


def write_json_atomic(path: Path, payload: dict) -> None:
    """Write JSON through a temporary file and a rename, so readers never see a half-written file."""
    from jzad.eval import report

    temp = path.with_name(path.name + ".tmp")
    report.write_results_json(temp, payload)
    os.replace(temp, path)


class ResultsFile:
    """results.json of one run, the only writer of its schema: ``payload`` is updated in place and ``save``
    rewrites the file atomically (``path`` None: a process that writes nothing)."""

    def __init__(self, path: Path | None, header: dict):
        self.path = path
        self.payload = {"schema_version": RESULTS_SCHEMA, "status": "running", **header}

    def save(self) -> None:
        if self.path is not None:
            write_json_atomic(self.path, self.payload)

    def finish(self, status: str) -> None:
        self.payload["memory"] = peak_memory()
        self.payload["status"] = status
        self.save()


def jsonable_config(values: dict) -> dict:
    """Option values as JSON (paths as strings)."""
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in values.items()}


def results_header(scorer: Scorer, config: dict, data: str, processes: int = 1) -> dict:
    """The fixed part of a batch run's results.json: method, its config, backbone, data, environment."""
    from jzad.eval import report

    backbone = scorer.backbone
    return {
        "method": scorer.method.name, "method_config": repr(scorer.config), "config": jsonable_config(config),
        "backbone": {"name": backbone.name, "architecture": backbone.architecture, "origin": backbone.origin,
                     "image_size": backbone.image_size, "taps": list(backbone.taps), "dtype": backbone.dtype,
                     **backbone.info},
        "data": data, "environment": report.environment_info(), "processes": processes,
        "categories": [], "failed": [],
    }


def build_scorer(method: Method, values: dict, shots: int, *, backbone: str | None = None,
                 weights: Path | None = None, image_size: int | None = None, taps=None, activation=None,
                 precision: str = "fp32", seed: int = 0, shards: int | None = 1, batch_size: int = 8,
                 demo: bool = False, dataset: str = "mvtec") -> Scorer:
    """The backbone (``weights`` file, ``backbone`` name, else the method's demo/default backbone) at the
    method's preset, and the method's config from ``values`` (option dest -> value). Raises
    ``BackboneLoadError`` or ``MethodConfigError``."""
    from jzad.backbone.port import MissingDependencyError
    from jzad.features import backbone_architecture, load_backbone
    from jzad.kernels import device_mesh

    dtype = "bfloat16" if precision == "bf16" else "float32"
    name = weights or backbone or (method.demo_backbone if demo else method.default_backbone)
    arch = None if weights is not None else backbone_architecture(name)
    run = method.backbone_run(arch)
    if demo and image_size is None and run.image_size is None:
        image_size = DEMO_IMAGE_SIZE
    try:
        loaded = load_backbone(name, run, image_size, taps, activation, dtype, seed, with_text=method.needs_text)
    except (ValueError, FileNotFoundError, ConnectionError, MissingDependencyError) as err:
        raise BackboneLoadError(str(name), str(err)) from err
    context = RunContext(dataset="synthetic" if demo else dataset, image_size=loaded.image_size, shots=shots,
                         taps=loaded.taps)
    try:
        config = method.configure(values, context)
        if method.extractor is not None:
            method.extractor(config, loaded)  # checks the backbone against the config before any image is read
    except ValueError as err:
        raise MethodConfigError(str(err)) from err
    return Scorer(method, config, loaded, device_mesh(shards), batch_size)


def demo_sources(size: int, seed: int, shots: int, draw_seed: int, calibration: str | None = None):
    """The built-in synthetic set (16 normal + 12 defective images, exact masks), ``shots`` normal references
    drawn (``reference_draw``) from a pool of max(shots, 4) synthetic normal images, and 8 more normal images
    when the method calibrates."""
    images, masks, labels, types = jdata.make_synthetic_set(16, 12, size=size, seed=seed)
    names = [f"{t}_{i:03d}" for i, t in enumerate(types)]
    source = jdata.ArrayImages(images, names, labels, types, masks)
    references = held_out = None
    if shots:
        pool, _, _, _ = jdata.make_synthetic_set(max(shots, DEMO_SHOTS_POOL), 0, size=size, seed=seed + 1)
        picked = jdata.reference_draw(len(pool), shots, draw_seed)
        references = jdata.ArrayImages(pool[picked], [f"reference_{i:03d}" for i in picked],
                                       np.zeros(shots, np.int64), ("good",) * shots)
    if calibration is not None:
        normal, _, _, _ = jdata.make_synthetic_set(DEMO_CALIBRATION, 0, size=size, seed=seed + 2)
        held_out = jdata.ArrayImages(normal, [f"{calibration}_{i:03d}" for i in range(DEMO_CALIBRATION)],
                                     np.zeros(DEMO_CALIBRATION, np.int64), ("good",) * DEMO_CALIBRATION)
    return jdata.CategorySources(source, references, held_out, DEMO_CATEGORY, "")


def seed_statistics(metrics: list[dict]) -> tuple[dict, dict]:
    """Mean and (population) std over seeds of every metric (nan stays nan)."""
    mean, std = {}, {}
    for name in metrics[0]:
        values = np.asarray([m[name] for m in metrics], np.float64)
        finite = np.isfinite(values).all()
        mean[name] = float(values.mean()) if finite else float("nan")
        std[name] = float(values.std()) if finite else float("nan")
    return mean, std


def timing_rows(clock: StageClock, num_images: int, method: Method) -> list[dict]:
    """Per-image steady-state ms and compile seconds per stage, in pipeline order, with a total row."""
    order = ["fit", "extract", *method.stages, method.finalize_stage, "upsample"]
    stages = [s for s in dict.fromkeys(order) if s in clock.run_seconds]
    stages += [s for s in clock.run_seconds if s not in stages]
    per_image = clock.per_image_ms(num_images)
    rows = [{"stage": s, "ms_per_image": per_image[s], "compile_s": clock.compile_seconds.get(s, 0.0)}
            for s in stages]
    rows.append({"stage": "total", "ms_per_image": sum(per_image.values()),
                 "compile_s": sum(clock.compile_seconds.values())})
    return rows


@dataclass(frozen=True)
class OutputSpec:
    """What a run writes per category under ``folder`` (None: nothing, e.g. a process other than 0)."""

    folder: Path | None
    heatmaps: bool = True
    heatmap_size: int = 256
    save_maps: bool = False
    maps_at_image_size: bool = False


def write_category_outputs(spec: OutputSpec, result, scorer: Scorer, source, clock: StageClock,
                           seed: int | None = None, pictures: bool = True, maps_folder: str | None = None) -> list[str]:
    """Scores CSV (``scores_<category>.csv``, or ``scores_<category>_seed<S>.csv`` when several seeds run),
    and for the first seed the map TIFFs (under maps/<maps_folder>, default the category), overlays and the
    summary figure; returns what it wrote."""
    from jzad.data.sources import prefetch_batches
    from jzad.eval import report
    from jzad.eval.heatmaps import value_range
    from jzad.eval.outputs import save_captioned_overlays, save_map_tiffs, save_summary

    start = time.perf_counter()
    out, cat = spec.folder, result.category
    csv_name = f"scores_{cat}.csv" if seed is None else f"scores_{cat}_seed{seed}.csv"
    written = [str(report.write_scores_csv(out / csv_name, result.names, result.labels,
                                           result.image_scores, result.defect_types))]
    if not pictures:
        clock.add("write", time.perf_counter() - start)
        return written
    if spec.save_maps:
        sizes = result.original_sizes if spec.maps_at_image_size else None
        folder = out / "maps" / (maps_folder or cat)
        save_map_tiffs(folder, result.names, result.maps, sizes)
        written.append(str(folder))
    if spec.heatmaps:
        written.append(str(save_summary(out / f"summary_{cat}.png", cat, result.image_scores, result.labels)))
        scale = value_range(result.maps)
        size = spec.heatmap_size
        for indices, decoded in prefetch_batches(source, np.arange(len(source)), scorer.prep,
                                                 scorer.backbone.image_size, 16):
            images = np.stack([_resize(_as_uint8(i), size) for i in decoded.images])
            maps = np.stack([_resize(result.maps[i], size) for i in indices])
            masks = None if result.masks is None else np.stack(
                [_resize(result.masks[i].astype(np.float32), size) > 0.5 for i in indices])
            save_captioned_overlays(out / "heatmaps" / cat, [result.names[i] for i in indices], images, maps, masks,
                                    result.image_scores[indices], None if result.labels is None else
                                    result.labels[indices], [result.defect_types[i] for i in indices], scale)
        written.append(str(out / "heatmaps" / cat))
    clock.add("write", time.perf_counter() - start)
    return written


def _as_uint8(image: np.ndarray) -> np.ndarray:
    """A decoded model input as uint8 for overlays (float32 [0, 255] inputs are rounded and clipped)."""
    return image if image.dtype == np.uint8 else np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _resize(array: np.ndarray, size: int) -> np.ndarray:
    """Resize a uint8 RGB image (bicubic) or a float32 map (bilinear) to (size, size) with PIL."""
    from PIL import Image

    if array.shape[0] == size and array.shape[1] == size:
        return array
    if array.dtype == np.uint8:
        return np.asarray(Image.fromarray(array).resize((size, size), Image.Resampling.BICUBIC))
    image = Image.fromarray(array.astype(np.float32), mode="F")
    return np.asarray(image.resize((size, size), Image.Resampling.BILINEAR))


@dataclass(frozen=True)
class Plan:
    """What an experiment scores: categories x draw seeds (``shots`` references each), subsets, the AUPRO
    convention, and the failure policy (``raise_errors``: a failed category raises instead of being recorded;
    ``stop_at_first_failure``: the other categories are skipped, as a multi-process run must)."""

    categories: tuple[str, ...]
    seeds: tuple[int, ...] = (0,)
    shots: int = 0
    subsets: int = 1
    split: str = "official"
    aupro: str = "mvtec"
    raise_errors: bool = False
    stop_at_first_failure: bool = False


@dataclass
class Experiment:
    """What ``run_experiment`` produced: per-category mean rows (and std rows when several seeds ran), the
    merged stage clock and the number of images it timed."""

    rows: list[dict] = field(default_factory=list)
    std_rows: list[dict] = field(default_factory=list)
    clock: StageClock = field(default_factory=StageClock)
    images: int = 0


def _score_seeds(scorer: Scorer, plan: Plan, category: str, sources: Callable, outputs: OutputSpec,
                 extra_metrics, clock: StageClock, progress, log: Callable) -> list[tuple[int, Any, list]]:
    """One category at every draw seed: (seed, CategoryResult, files written) per seed."""
    runs = []
    for index, seed in enumerate(plan.seeds):
        found = sources(category, seed)
        source = found.source
        label = category if len(plan.seeds) == 1 else f"{category} (seed {seed})"
        log(f"{label}: {len(source)} images" + (f", {plan.shots} references" if plan.shots else "")
            + (f", {len(found.calibration)} calibration images" if found.calibration else ""))
        result = run_category(scorer, source, category, found.references, plan.subsets, plan.split,
                              aupro_convention=plan.aupro, clock=clock, progress=progress,
                              calibration=found.calibration)
        if extra_metrics is not None:
            result.metrics.update(extra_metrics.compute(result, source))
        if index == 0 and result.mask_report is not None:
            log(result.mask_report["summary"])
            if result.mask_report.get("warning"):
                log(f"warning: {result.mask_report['warning']}")
        for note in result.notes:
            log(f"warning: {label}: {note}")
        written = []
        if outputs.folder is not None:
            written = write_category_outputs(outputs, result, scorer, source, clock,
                                             seed if len(plan.seeds) > 1 else None, index == 0, found.maps_folder)
        runs.append((seed, result, written))
    return runs


def category_entry(category: str, runs: list, shots: int, clock: StageClock) -> tuple[dict, dict, dict]:
    """(results.json entry, mean metrics, std metrics) of one category's runs over seeds."""
    count = len(runs[0][1].names)
    mean, std = seed_statistics([r.metrics for _, r, _ in runs])
    result = runs[0][1]
    entry = {
        "category": category, "num_images": count, "metrics": mean,
        "metrics_std": std if len(runs) > 1 else None,
        "seeds": [{"seed": seed, "metrics": r.metrics} for seed, r, _ in runs] if shots else None,
        "mask_report": result.mask_report, "notes": list(result.notes),
        "subset_sizes": [len(g) for g in result.groups],
        "timing_ms_per_image": clock.per_image_ms(count * len(runs)),
        "compile_s": dict(clock.compile_seconds), "files": [f for _, _, w in runs for f in w],
    }
    return entry, mean, std


def run_experiment(scorer: Scorer, plan: Plan, sources: Callable, results: ResultsFile, outputs: OutputSpec,
                   extra_metrics=None, show_progress: bool = True, log: Callable[[str], None] = _stderr) -> Experiment:
    """Score every category of ``plan`` at every draw seed (``sources(category, seed)`` -> CategorySources),
    recording each in ``results`` as it finishes; a category that fails with a data error is recorded under
    "failed" and the others go on (see ``Plan`` for the policy). Ctrl-C saves status "interrupted" and
    re-raises. Ends with status complete or failed, the timing table and the mean over categories."""
    payload, done = results.payload, Experiment()
    results.save()
    try:
        with RunProgress(enabled=show_progress) as progress:
            for category in plan.categories:
                clock = StageClock()
                try:
                    runs = _score_seeds(scorer, plan, category, sources, outputs, extra_metrics, clock, progress, log)
                except CATEGORY_FAILURES as err:
                    if plan.raise_errors:
                        raise
                    payload["failed"].append({"category": category, "error": str(err),
                                              "error_type": type(err).__name__})
                    if len(plan.categories) > 1:
                        log(f"{category}: FAILED: {err}")
                    results.save()
                    if plan.stop_at_first_failure:
                        log("a multi-process run stops at its first failed category")
                        break
                    continue
                done.clock.merge(clock)
                entry, mean, std = category_entry(category, runs, plan.shots, clock)
                done.images += entry["num_images"] * len(runs)
                done.rows.append({"category": category, **mean})
                if len(runs) > 1:
                    done.std_rows.append({"category": category, **std})
                payload["categories"].append(entry)
                payload["memory"] = peak_memory()
                results.save()
    except KeyboardInterrupt:
        payload["status"] = "interrupted"
        results.save()
        raise
    if done.rows:
        payload["timing"] = timing_rows(done.clock, done.images, scorer.method)
        payload["mean"] = {c: float(np.nanmean([r[c] for r in done.rows])) if any(np.isfinite(r[c]) for r in done.rows)
                           else float("nan") for c in done.rows[0] if c != "category"}
    results.finish("failed" if payload["failed"] else "complete")
    return done


def run_stream_experiment(streamer, source, out: Path, results: ResultsFile, *, state_dir: Path | None = None,
                          done: int | None = None, checkpoint_every: int = 100, save_maps: bool = False,
                          maps_at_image_size: bool = False, replay: bool = True,
                          progress: Callable[[int], None] | None = None,
                          announce: Callable[[int | None], None] | None = None):
    """Score ``source`` (arrivals) with ``streamer``, resuming from ``state_dir`` when ``done`` says it holds a
    checkpoint of that many images; appends to scores_stream.csv under ``out`` and records the latency report
    in ``results``. ``announce(images already scored)`` runs once the state is restored, before any scoring.
    Returns (StreamSummary, the scores CSV path)."""
    from jzad.stream import StreamOutputs, restore_state, run_stream

    state = None
    if done is not None:
        state, done = restore_state(state_dir, streamer.init(), streamer.signature())
    stream_outputs = StreamOutputs(out, save_maps, maps_at_image_size, keep=done or 0)
    if announce is not None:
        announce(done)
    results.save()
    try:
        summary, _ = run_stream(streamer, source, stream_outputs, state, done or 0, state_dir, checkpoint_every,
                                progress, replay=replay)
    finally:
        stream_outputs.close()
    results.payload["stream"] = summary.report()
    results.finish("interrupted" if summary.interrupted else "complete")
    return summary, stream_outputs.path
