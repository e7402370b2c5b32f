"""Experiments as a library: a scorer over categories x draw seeds, with seed statistics, the results file, the
failure policy and the per-category outputs; and a stream of arrivals scored batch by batch.

    scorer = build_scorer(get_method("musc"), {}, shots=0, backbone="random-tiny", demo=True)
    results = ResultsFile(out / "results.json", results_header(scorer, config={}, data="demo"))
    done = run_experiment(scorer, Plan(categories=("synthetic",)), lambda c, s: demo_sources(224, 0, 0, s),
                          results, OutputSpec(out))

``python -m jzad.run`` parses and checks its options, then calls these; benchmarks call them too, so every
number comes from the same code. Errors are in library terms (``BackboneLoadError``, ``MethodConfigError``,
``ValueError``/``OSError`` from the data); the command line translates them into its flags.

results.json (``RESULTS_SCHEMA`` = 2, written only by ``ResultsFile``, atomically, after every category):
``schema_version``, ``status`` (running | complete | failed | interrupted), ``method``, ``method_config`` (an
object: ``type`` and the config's fields; schema 1 held its repr string), ``config``, ``backbone``, ``data``,
``environment``, ``processes``, ``categories`` (per category: num_images, metrics (mean over seeds; precision and
recall at the threshold when labelled), metrics_std, seeds (per draw seed: metrics, the reference images drawn,
its threshold), threshold (value, source, lo, hi, quantile, describe: the first seed's, what --threshold-from
reads), protocol (MTD's split of the normals, else None), mask_report, notes, subset_sizes, timing_ms_per_image,
compile_s, files), ``failed`` (category, error, error_type), and once scoring ends ``timing``, ``mean`` and
``memory``. A stream's file has ``mode`` "stream", ``stream_config``, ``threshold`` and ``stream`` (its latency
report).
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, NamedTuple

import numpy as np

from jzad import data as jdata
from jzad.methods import Method, RunContext
from jzad.pipeline import Scorer, peak_memory, run_category
from jzad.progress import RunProgress
from jzad.timing import StageClock

RESULTS_SCHEMA = 2
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


def config_object(config) -> dict:
    """A frozen method config as a JSON object: {"type": class name, field: value, ...}; a field value that has
    no JSON form is kept as its repr (a string), so the file never fails on a config."""
    import dataclasses

    from jzad.eval.report import to_jsonable

    out = {"type": type(config).__name__}
    for item in dataclasses.fields(config):
        value = getattr(config, item.name)
        try:
            out[item.name] = to_jsonable(value, item.name)
        except TypeError:
            out[item.name] = repr(value)
    return out


def results_header(scorer: Scorer, config: dict, data: str, processes: int = 1) -> dict:
    """The fixed part of a batch run's results.json: method, its config, backbone, data, environment."""
    from jzad.eval import report

    backbone = scorer.backbone
    return {
        "method": scorer.method.name, "method_config": config_object(scorer.config),
        "config": jsonable_config(config),
        "backbone": {"name": backbone.name, "architecture": backbone.architecture, "origin": backbone.origin,
                     "image_size": backbone.image_size, "taps": list(backbone.taps), "dtype": backbone.dtype,
                     **backbone.info},
        "data": data, "environment": report.environment_info(), "processes": processes,
        "categories": [], "failed": [],
    }


def method_backbone(method: Method, backbone: str | None = None, *, weights: Path | None = None,
                    image_size: int | None = None, taps=None, activation=None, precision: str = "fp32",
                    seed: int = 0, demo: bool = False):
    """The backbone a run of ``method`` uses: the ``weights`` file, else the ``backbone`` name, else the
    method's demo (``demo``) or default backbone, at the method's preset for its architecture (explicit
    ``image_size``/``taps``/``activation`` win). Raises ``BackboneLoadError``."""
    from jzad.backbone.port import MissingDependencyError
    from jzad.features import backbone_architecture, load_backbone

    dtype = "bfloat16" if precision == "bf16" else "float32"
    name = weights or backbone or (method.demo_backbone if demo else method.default_backbone)
    arch = None if weights is not None else backbone_architecture(name)
    run = method.backbone_run(arch)
    if demo and image_size is None and run.image_size is None:
        image_size = DEMO_IMAGE_SIZE
    try:
        return load_backbone(name, run, image_size, taps, activation, dtype, seed, with_text=method.needs_text)
    except (ValueError, FileNotFoundError, ConnectionError, MissingDependencyError) as err:
        raise BackboneLoadError(str(name), str(err)) from err


def method_scorer(method: Method, values: dict, backbone, *, shots: int = 0, dataset: str = "mvtec",
                  mesh=None, batch_size: int = 8, profile: str = "fused") -> Scorer:
    """``method`` configured from ``values`` (option dest -> value) for ``backbone`` and a run with ``shots``
    references on ``dataset`` ("synthetic" for the demo), bound to the backbone and ``mesh``. Raises
    ``MethodConfigError`` (which names the config field)."""
    context = RunContext(dataset=dataset, image_size=backbone.image_size, shots=shots, taps=backbone.taps)
    try:
        config = method.configure(values, context)
        if method.extractor is not None:
            method.extractor(config, backbone)  # checks the backbone against the config before any image is read
    except ValueError as err:
        raise MethodConfigError(str(err)) from err
    return Scorer(method, config, backbone, mesh, batch_size, profile=profile)


def build_scorer(method: Method, values: dict, shots: int, *, backbone: str | None = None,
                 weights: Path | None = None, image_size: int | None = None, taps=None, activation=None,
                 precision: str = "fp32", seed: int = 0, shards: int | None = 1, batch_size: int = 8,
                 demo: bool = False, dataset: str = "mvtec") -> Scorer:
    """``method_backbone`` then ``method_scorer`` over a mesh of ``shards`` devices: what a command-line run
    scores with."""
    from jzad.kernels import device_mesh

    loaded = method_backbone(method, backbone, weights=weights, image_size=image_size, taps=taps,
                             activation=activation, precision=precision, seed=seed, demo=demo)
    return method_scorer(method, values, loaded, shots=shots, dataset="synthetic" if demo else dataset,
                         mesh=device_mesh(shards), batch_size=batch_size)


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
                           seed: int | None = None, pictures: bool = True, maps_folder: str | None = None,
                           threshold=None) -> list[str]:
    """Scores CSV (``scores_<category>.csv``, or ``scores_<category>_seed<S>.csv`` when several seeds run; with a
    ``threshold`` the ``anomalous`` and ``normalised_score`` columns), and for the first seed the map TIFFs and
    overlays under ``maps/`` and ``heatmaps/`` laid out as ``<category folder>/test/<type>/<id>``
    (``jzad.eval.outputs.evaluation_names``; maps_folder: the category folder, default the category) and the
    summary figure; returns what it wrote."""
    from jzad.eval import report, verdict
    from jzad.eval.heatmaps import value_range
    from jzad.eval.outputs import (HeatmapStyle, evaluation_names, map_at_size, save_captioned_overlays,
                                   save_map_tiffs, save_summary)

    start = time.perf_counter()
    out, cat = spec.folder, result.category
    flagged = normalised = None
    if threshold is not None:
        flagged = verdict.anomalous(result.image_scores, threshold)
        normalised = verdict.normalised_scores(result.image_scores, threshold)
    csv_name = f"scores_{cat}.csv" if seed is None else f"scores_{cat}_seed{seed}.csv"
    written = [str(report.write_scores_csv(out / csv_name, result.names, result.labels,
                                           result.image_scores, result.defect_types, flagged, normalised))]
    if not pictures:
        clock.add("write", time.perf_counter() - start)
        return written
    laid_out = evaluation_names(result.names, maps_folder or cat)
    if spec.save_maps:
        sizes = result.original_sizes if spec.maps_at_image_size else None
        save_map_tiffs(out / "maps", laid_out, result.maps, sizes)
        written.append(str(out / "maps" / (maps_folder or cat)))
    if spec.heatmaps:
        written.append(str(save_summary(out / f"summary_{cat}.png", cat, result.image_scores, result.labels)))
        scale = value_range(result.maps)
        style = HeatmapStyle(scorer.method.score_units, scorer.method.distance_scores,
                             scorer.backbone.random_weights)
        size = spec.heatmap_size
        if not isinstance(source, OverlayPanels) or source.size != size:
            source = OverlayPanels(source, size)
        for indices, images in _overlay_images(source, scorer):
            maps = np.stack([map_at_size(result.maps[i], (size, size)) for i in indices])
            masks = None if result.masks is None else np.stack(
                [map_at_size(result.masks[i], (size, size)) > 0.5 for i in indices])
            save_captioned_overlays(out / "heatmaps", [laid_out[i] for i in indices], images, maps, masks,
                                    result.image_scores[indices], None if result.labels is None else
                                    result.labels[indices], [result.defect_types[i] for i in indices], scale,
                                    style, None if normalised is None else normalised[indices],
                                    None if flagged is None else flagged[indices])
        written.append(str(out / "heatmaps" / (maps_folder or cat)))
    clock.add("write", time.perf_counter() - start)
    return written


def category_threshold(scorer: Scorer, plan: "Plan", category: str, found, result):
    """The verdict threshold of one category run (``jzad.eval.verdict``): ``plan.threshold``, else the one
    ``plan.threshold_from`` saved for the category, else the quantile of the references' leave-one-out scores
    (``jzad.reference_scores``), else the labels' F1 optimum; None when none exists (no labels, no references)."""
    from jzad.eval import verdict
    from jzad.reference_scores import ReferencesTooFew, leave_one_out_scores

    if plan.threshold is None and plan.threshold_from is not None:
        return verdict.threshold_from_results(plan.threshold_from, scorer.method.name, category)
    loo = None
    if plan.threshold is None:
        try:
            loo = leave_one_out_scores(scorer, found.references, category, found.calibration)
        except ReferencesTooFew as err:
            result.notes.append(str(err))
    return verdict.choose_threshold(result.image_scores, result.labels, loo, plan.threshold)


class OverlayPanels:
    """A source that keeps each image's overlay panel (uint8 (size, size, 3)) as the driver decodes it, so the
    heat maps need no second decode (``panels``: index -> panel; a panel is 3 * size^2 bytes per image, the
    order of the map each image keeps anyway). Everything else is the wrapped source's."""

    def __init__(self, source, size: int):
        self._source, self.size, self.panels = source, size, {}

    def __getattr__(self, name):
        return getattr(self._source, name)

    def __len__(self) -> int:
        return len(self._source)

    def decode(self, indices, prep, size: int):
        decoded = self._source.decode(indices, prep, size)
        self.panels.update(self.make_panels(indices, decoded.images))
        return decoded

    def make_panels(self, indices, images) -> dict:
        """index -> the overlay panel of each decoded model input."""
        from PIL import Image

        from jzad.data.decode import resize_rgb

        return {int(i): resize_rgb(Image.fromarray(_as_uint8(image)), self.size) for i, image in zip(indices, images)}


def _overlay_images(source, scorer: Scorer):
    """(indices, uint8 (n, size, size, 3) panels) in batches of 16: the panels ``OverlayPanels`` kept, decoding
    only images it did not see."""
    from jzad.data.sources import prefetch_batches

    missing = [i for i in range(len(source)) if i not in source.panels]
    if missing:
        for indices, decoded in prefetch_batches(source._source, missing, scorer.prep, scorer.backbone.image_size, 16):
            source.panels.update(source.make_panels(indices, decoded.images))
    order = np.arange(len(source))
    for start in range(0, len(order), 16):
        indices = order[start:start + 16]
        yield indices, np.stack([source.panels[int(i)] for i in indices])


def _as_uint8(image: np.ndarray) -> np.ndarray:
    """A decoded model input as uint8 for overlays (float32 [0, 255] inputs are rounded and clipped)."""
    return image if image.dtype == np.uint8 else np.clip(np.rint(image), 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class Plan:
    """What an experiment scores: categories x draw seeds (``shots`` references each), subsets, the AUPRO
    convention, and the failure policy (``raise_errors``: a failed category raises instead of being recorded;
    ``stop_at_first_failure``: the other categories are skipped, as a multi-process run must). The verdict
    threshold of each category (``category_threshold``): ``threshold`` (a raw score) when given, else the one
    saved for the category in ``threshold_from`` (an earlier results.json), else from the references or labels."""

    categories: tuple[str, ...]
    seeds: tuple[int, ...] = (0,)
    shots: int = 0
    subsets: int = 1
    split: str = "official"
    aupro: str = "mvtec"
    raise_errors: bool = False
    stop_at_first_failure: bool = False
    threshold: float | None = None
    threshold_from: Path | None = None


@dataclass
class Experiment:
    """What ``run_experiment`` produced: per-category mean rows (and std rows when several seeds ran), the
    merged stage clock and the number of images it timed."""

    rows: list[dict] = field(default_factory=list)
    std_rows: list[dict] = field(default_factory=list)
    clock: StageClock = field(default_factory=StageClock)
    images: int = 0


class SeedRun(NamedTuple):
    """One category at one draw seed: its result, the files written, the verdict threshold (None: none), the
    reference images drawn, the dataset's split protocol (MTD; None elsewhere) and the sub-type report of its
    sources (LOCO sub-types; None elsewhere)."""

    seed: int
    result: Any
    written: list
    threshold: Any
    references: list
    protocol: dict | None
    subtypes: dict | None = None


def _score_seeds(scorer: Scorer, plan: Plan, category: str, sources: Callable, outputs: OutputSpec,
                 extra_metrics, clock: StageClock, progress, log: Callable) -> list[SeedRun]:
    """One category at every draw seed: a ``SeedRun`` per seed."""
    runs = []
    for index, seed in enumerate(plan.seeds):
        found = sources(category, seed)
        source = found.source
        if index == 0 and outputs.folder is not None and outputs.heatmaps:
            source = OverlayPanels(source, outputs.heatmap_size)
        label = category if len(plan.seeds) == 1 else f"{category} (seed {seed})"
        log(f"{label}: {found.summary or f'{len(source)} images'}"
            + (f"; references (seed {seed}): {', '.join(found.references.names)}" if found.references else "")
            + (f"; {len(found.calibration)} calibration images" if found.calibration else ""))
        result = run_category(scorer, source, category, found.references, plan.subsets, plan.split,
                              aupro_convention=plan.aupro, clock=clock, progress=progress,
                              calibration=found.calibration)
        if extra_metrics is not None:
            result.metrics.update(extra_metrics.compute(result, source))
        threshold = category_threshold(scorer, plan, category, found, result)
        if threshold is not None:
            log(f"{label}: threshold {threshold.describe()}")
            if result.labels is not None:
                from jzad.eval import verdict

                at = verdict.at_threshold(result.image_scores, result.labels, threshold)
                result.metrics.update(precision=at["precision"], recall=at["recall"])
        if index == 0 and result.mask_report is not None:
            log(result.mask_report["summary"])
            if result.mask_report.get("warning"):
                log(f"warning: {result.mask_report['warning']}")
        for note in result.notes:
            log(f"warning: {label}: {note}")
        written = []
        if outputs.folder is not None:
            written = write_category_outputs(outputs, result, scorer, source, clock,
                                             seed if len(plan.seeds) > 1 else None, index == 0, found.maps_folder,
                                             threshold)
        references = list(found.references.names) if found.references is not None else []
        runs.append(SeedRun(seed, result, written, threshold, references, found.protocol, found.subtypes))
    return runs


def category_entry(category: str, runs: list, shots: int, clock: StageClock) -> tuple[dict, dict, dict]:
    """(results.json entry, mean metrics, std metrics) of one category's runs over seeds."""
    count = len(runs[0].result.names)
    mean, std = seed_statistics([run.result.metrics for run in runs])
    first = runs[0]
    entry = {
        "category": category, "num_images": count, "metrics": mean,
        "metrics_std": std if len(runs) > 1 else None,
        "seeds": [{"seed": run.seed, "metrics": run.result.metrics, "references": run.references,
                   "threshold": None if run.threshold is None else run.threshold.to_json()}
                  for run in runs] if shots else None,
        "threshold": None if first.threshold is None else {**first.threshold.to_json(),
                                                             "describe": first.threshold.describe()},
        "protocol": first.protocol,
        "mask_report": first.result.mask_report, "notes": list(first.result.notes),
        "subtypes": first.subtypes,
        "subset_sizes": [len(g) for g in first.result.groups],
        "timing_ms_per_image": clock.per_image_ms(count * len(runs)),
        "compile_s": dict(clock.compile_seconds), "files": [f for run in runs for f in run.written],
    }
    return entry, mean, std


def run_experiment(scorer: Scorer, plan: Plan, sources: Callable, results: ResultsFile, outputs: OutputSpec,
                   extra_metrics=None, show_progress: bool = True, log: Callable[[str], None] = _stderr,
                   describe_error: Callable[[str], str] = str) -> Experiment:
    """Score every category of ``plan`` at every draw seed (``sources(category, seed)`` -> CategorySources),
    recording each in ``results`` as it finishes; a category that fails with a data error is recorded under
    "failed" (its message through ``describe_error``) and the others go on (see ``Plan`` for the policy). Ctrl-C saves status "interrupted" and
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
                    message = describe_error(str(err))
                    payload["failed"].append({"category": category, "error": message,
                                              "error_type": type(err).__name__})
                    if len(plan.categories) > 1:
                        log(f"{category}: FAILED: {message}")
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
                          announce: Callable[[int | None], None] | None = None, outputs_options: dict | None = None):
    """Score ``source`` (arrivals) with ``streamer``, resuming from ``state_dir`` when ``done`` says it holds a
    checkpoint of that many images; appends to scores_stream.csv under ``out`` and records the latency report
    in ``results``. ``announce(images already scored)`` runs once the state is restored, before any scoring.
    ``outputs_options``: more ``StreamOutputs`` settings (threshold, output_name, heatmaps, echo). Returns
    (StreamSummary, the scores CSV path)."""
    from jzad.stream import StreamOutputs, restore_state, run_stream

    state = None
    if done is not None:
        state, done = restore_state(state_dir, streamer.init(), streamer.signature())
    stream_outputs = StreamOutputs(out, save_maps, maps_at_image_size, keep=done or 0, **(outputs_options or {}))
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
