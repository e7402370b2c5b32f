"""Command line: score image sets with a registered training-free method; report metrics, timings and maps.

    python -m jzad.run                                   # built-in demo: synthetic set, random-weight backbone
    python -m jzad.run --method musc --data DIR --dataset mvtec --category all --backbone vit-l-14-336 --shards 8

Every method runs through the same driver (``jzad.pipeline.run_category``): decode -> extract -> method stages ->
maps -> metrics, category by category and subset by subset. Each method declares its own options; an option that
does not apply to the chosen method is an error naming it, and every option is checked before any image is
decoded. Outputs under --out (written as each category finishes): results.json (atomic; its "status" says
running, complete, failed or interrupted), scores_<category>.csv (with the verdict columns when a threshold exists),
summary_<category>.png and heatmaps/<category>/test/<type>/<id>.png (unless --no-heatmaps),
maps/<category>/test/<type>/<id>.tiff (--save-maps).
User errors print one line (two when several categories fail) and exit with status 2; a traceback only with
--debug. A run in which some categories fail keeps the others' outputs, lists each failure in results.json
("failed") and exits with status 1; Ctrl-C leaves results.json with status "interrupted" and the finished
categories (exit status 130).

Several processes (machines) score one run together through JAX's distributed runtime: start the same command
once per process with --coordinator HOST:PORT --num-processes P --process-id I (or the JZAD_COORDINATOR,
JZAD_NUM_PROCESSES, JZAD_PROCESS_ID environment variables; --coordinator auto lets JAX detect a SLURM, Open MPI
or TPU-pod cluster). Each process extracts its share of every group of images, the method's kernels run over one
mesh of every process's devices, and process 0 writes every output.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from jzad import data as jdata
from jzad.cli import (UserError, build_parser, check_options, check_out, default_backbone, distributed_settings,
                      in_flag_terms, load_scorer, profile_settings, start_distributed)
from jzad.methods import OptionError, get_method

if TYPE_CHECKING:
    from jzad.experiment import Experiment
    from jzad.methods import Method

DEMO_SHOTS = 2
"""Reference images of the demo for a method that needs them, when --shots is not given."""
__all__ = ["UserError", "build_parser", "check_options", "distributed_settings", "main"]


def check_categories(args) -> list[str]:
    """The categories --category names in --data (every one for 'all'; LOCO: a category with sub-types names
    its sub-type categories); an unknown name is an error listing the categories found (--dataset folder: any
    sub-folder, checked when it is read)."""
    subtypes = getattr(args, "loco_subtypes", "rule")
    try:
        found = jdata.dataset_categories(args.dataset, args.data, "all", subtypes)
    except (ValueError, OSError) as err:
        raise UserError(_one_level_too_deep(args, subtypes) or str(err)) from err
    if args.category == "all":
        return found
    if args.dataset == "folder":
        return [args.category]
    base = (lambda c: c.split("-", 1)[0]) if args.dataset == "loco" else (lambda c: c)
    named = [c for c in found if args.category in (c, base(c))]
    if not named:
        raise UserError(f"--category: {args.data} has no {args.dataset} category {args.category!r}; it has "
                        f"{', '.join(found)} (or use --category all)")
    return named


def _one_level_too_deep(args, subtypes: str) -> str | None:
    """The message for --data pointing at a category folder instead of the dataset root (its parent lists it
    as a category), or None when that is not what went wrong."""
    parent = args.data.absolute().parent
    try:
        found = jdata.dataset_categories(args.dataset, parent, "all", subtypes)
    except (ValueError, OSError):
        return None
    name = args.data.absolute().name
    if name not in found and not any(c.split("-", 1)[0] == name for c in found):
        return None
    return (f"--data: {args.data} is the {args.dataset} category folder {name!r} itself, not the dataset root; "
            f"pass --data {parent} --category {name}")


def display_category(args, category: str) -> str:
    """The name outputs use for a category: --dataset folder's "." (images directly in --data) is named after
    the folder, so files are scores_<folder>.csv and figures carry its name."""
    if category == "." and args.data is not None:
        return args.data.absolute().name or "images"
    return category


def preflight(args, method: Method, categories: list, shots: int, seeds: list) -> dict:
    """Every check of the data that can fail before scoring, run before anything is written: each category's
    sources at the first draw seed (its images, enough normal references for --shots, calibration images) and
    the thresholds of --threshold-from. Returns category -> CategorySources (reused for the first seed)."""
    from jzad.eval import verdict

    found = {}
    for category in categories:
        try:
            found[category] = jdata.category_sources(
                args.dataset, args.data, category, shots, seeds[0], method.calibration,
                subtypes=getattr(args, "loco_subtypes", "rule"), infer_labels=args.infer_labels,
                allow_missing_masks=args.allow_missing_masks)
            if args.threshold_from is not None:
                verdict.threshold_from_results(args.threshold_from, method.name, display_category(args, category))
        except (ValueError, OSError) as err:
            message = in_flag_terms(str(err))
            raise UserError(f"{category}: {message}" if len(categories) > 1 else message) from err
    return found


def data_sources(args, category: str, shots: int, draw_seed: int, calibration: str | None = None):
    """One category of --data as sources (``jzad.data.category_sources``): the test images, ``shots`` normal
    train images drawn by ``reference_draw`` (labelled-normal only: re-split MPDD trains hold defects too) and,
    for methods that calibrate, their held-out normal images."""
    return jdata.category_sources(args.dataset, args.data, category, shots, draw_seed, calibration,
                                  subtypes=getattr(args, "loco_subtypes", "rule"), infer_labels=args.infer_labels,
                                  allow_missing_masks=args.allow_missing_masks)


def check_run(args: argparse.Namespace, method: Method, processes: int, devices: list) -> tuple[dict, int, list]:
    """Every check of a run's options that needs no data: returns the method's option values, the shots and
    the draw seeds (and fills in --shards)."""
    values = check_options(args, method)
    if processes > 1 and not method.multi_process:
        raise OptionError(f"--method {method.name} does not support multi-process scoring ({processes} processes); "
                          "run it in one process")
    if args.shards is None:
        args.shards = len(devices) if processes > 1 else 1
    shots = getattr(args, "shots", DEMO_SHOTS if args.data is None and method.few_shot == "required" else 0)
    if method.few_shot == "required" and shots < 1 and not args.stream:
        raise OptionError(f"--method {method.name} needs --shots K >= 1 normal reference images")
    if args.shards > len(devices):
        raise OptionError(f"--shards: expected 1..{len(devices)} (devices here: {devices[0].platform} x "
                          f"{len(devices)}); on CPU set XLA_FLAGS=--xla_force_host_platform_device_count=N")
    if args.shards % processes:
        raise OptionError(f"--shards: expected a multiple of the {processes} processes (each gives the same number "
                          f"of devices), got {args.shards}")
    seeds = list(getattr(args, "seeds", (args.seed,)))
    if len(seeds) > 1 and shots < 1:
        raise OptionError("--seeds repeats the few-shot reference draw: it needs --shots K >= 1")
    return values, shots, seeds


def run(args: argparse.Namespace) -> int:
    """Validate everything, then score category by category (``experiment.run_experiment``); returns the exit
    status.

    In a multi-process run every process scores (its share of the images, the kernels over the global mesh)
    and only process 0 touches --out; the first category that fails ends the category loop, so no process
    waits on a peer that moved on to the next category.
    """
    import jax

    from jzad import experiment
    from jzad.eval.datasets import dataset_metrics
    from jzad.experiment import DEMO_CATEGORY, OutputSpec, Plan, ResultsFile
    from jzad.kernels.multihost import agree, is_writer
    from jzad.pipeline import METRIC_COLUMNS
    from jzad.stream_cli import run_stream_cli

    method = get_method(args.method)
    processes, writer = jax.process_count(), is_writer()
    values, shots, seeds = check_run(args, method, processes, jax.devices())
    if args.stream:
        return run_stream_cli(args, method, values)
    demo = args.data is None
    if not demo and not args.data.is_dir():
        raise UserError(f"--data: {args.data} is not a directory")
    read_names = [DEMO_CATEGORY] if demo else check_categories(args)
    extra_metrics = None if demo else dataset_metrics(args.dataset)
    backbone_note = default_backbone(args, method)
    first_sources = {} if demo else preflight(args, method, read_names, shots, seeds)
    categories = [display_category(args, c) for c in read_names]
    read_name = dict(zip(categories, read_names))
    out = args.out or Path("runs") / time.strftime("%Y%m%d-%H%M%S")
    problem = None
    if writer:
        try:
            check_out(out, args.overwrite)
        except UserError as err:
            problem = err
    if not agree(problem is None):
        raise problem or UserError("--out: process 0 cannot use it (see its error)")
    scorer = load_scorer(args, method, values, shots)
    backbone = scorer.backbone
    subsets = getattr(args, "subsets", 1)
    data_text = (f"built-in synthetic demo ({backbone.image_size} px, 16 normal + 12 with planted defects, "
                 f"seed {args.seed})" if demo else f"{args.dataset} at {args.data}")
    mode = getattr(scorer.config, "mode", "few_shot" if shots else "zero_shot")
    print(f"method: {method.name} | mode: {mode} | shots: {shots} | subsets: {subsets if method.pools else '-'} | "
          f"categories: {len(categories)} | data: {data_text}")
    spread = f" over {processes} processes" if processes > 1 else ""
    print(f"backbone: {backbone.describe()} | device: {jax.devices()[0].device_kind} x {args.shards} shard(s)"
          f"{spread} | precision: {args.precision}")
    if backbone_note:
        print(f"backbone: {backbone_note}")

    results = ResultsFile(out / "results.json" if writer else None,
                          experiment.results_header(scorer, vars(args), data_text, processes))
    plan = Plan(tuple(categories), tuple(seeds), shots, subsets, getattr(args, "subset_split", "official"),
                args.aupro, raise_errors=args.debug, stop_at_first_failure=processes > 1, threshold=args.threshold,
                threshold_from=args.threshold_from)
    outputs = OutputSpec(out if writer else None, not args.no_heatmaps, args.heatmap_size, args.save_maps,
                         args.maps_at_image_size)

    def sources(category: str, seed: int):
        if demo:
            return experiment.demo_sources(backbone.image_size, args.seed, shots, seed, method.calibration)
        found = first_sources.pop(read_name[category], None) if seed == seeds[0] else None
        found = found or data_sources(args, read_name[category], shots, seed, method.calibration)
        return dataclasses.replace(found, maps_folder=display_category(args, found.maps_folder)) if (
            found.maps_folder == ".") else found

    try:
        done = experiment.run_experiment(scorer, plan, sources, results, outputs, extra_metrics,
                                         show_progress=not args.quiet and writer, describe_error=in_flag_terms)
    except KeyboardInterrupt:
        print(f"\ninterrupted: {out / 'results.json'} lists the categories that finished", file=sys.stderr)
        return 130
    columns = METRIC_COLUMNS if extra_metrics is None else extra_metrics.columns
    if any("precision" in row for row in done.rows):
        columns = tuple(columns) + ("precision", "recall")
    print_tables(done, results.payload, method.name, seeds, columns)
    print(f"\nwrote {out}: {', '.join(written_files(results.payload, out))}")
    return exit_status(results.payload["failed"], done.rows, categories, out / "results.json")


def written_files(payload: dict, out: Path) -> list[str]:
    """What a run wrote, relative to --out: results.json, then every file and folder the categories recorded."""
    names = ["results.json"]
    for entry in payload["categories"]:
        for path in entry["files"]:
            rel = Path(path).relative_to(out).as_posix() if Path(path).is_relative_to(out) else str(path)
            rel = rel if Path(rel).suffix else rel.split("/", 1)[0] + "/"
            if rel not in names:
                names.append(rel)
    return names


def print_tables(done: Experiment, payload: dict, method: str, seeds: list, columns) -> None:
    """The metrics table (mean over seeds; std over seeds when several ran) and the timing table."""
    from jzad.eval import report

    if not done.rows:
        return
    print()
    title = f"{method} metrics" + (f" (mean over seeds {seeds})" if len(seeds) > 1 else "")
    print(report.format_table(done.rows, ("category",) + tuple(columns), title=title))
    if done.std_rows:
        print()
        print(report.format_table(done.std_rows, ("category",) + tuple(columns),
                                  title=f"{method} metrics: std over seeds {seeds}", mean_row=False))
    print()
    print(report.format_table(payload["timing"], ("stage", "ms_per_image", "compile_s"),
                              title=f"timing per image over {done.images} images (compile time apart)",
                              mean_row=False))


def exit_status(failed: list, rows: list, categories: list, results_path: Path) -> int:
    """0 when every category finished; 2 (one error line) when none did; 1 when some failed."""
    if not failed:
        return 0
    if not rows:
        first = failed[0]
        where = f"{first['category']}: " if len(categories) > 1 else ""
        more = (f"\n({len(failed)} of {len(categories)} categories failed; {results_path} lists every error)"
                if len(failed) > 1 else "")
        print(f"python -m jzad.run: error: {where}{first['error']}{more}", file=sys.stderr)
        return 2
    print(f"{len(failed)} of {len(categories)} categories failed (the others are complete; {results_path} lists "
          "each error): " + "; ".join(f"{f['category']}: {f['error']}" for f in failed), file=sys.stderr)
    return 1


def run_here(args: argparse.Namespace) -> int:
    """``run`` in this process: process 0 (or the only process) prints and writes as usual; the others say
    what they are and score silently (their errors still reach ``main``)."""
    import jax

    rank, processes = jax.process_index(), jax.process_count()
    try:
        if rank == 0:
            return run(args)
        print(f"process {rank} of {processes}: scoring its share; process 0 writes the outputs", file=sys.stderr)
        with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            return run(args)
    except jax.errors.JaxRuntimeError as err:
        if processes == 1 or args.debug:
            raise
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"process {rank} of {processes}: exchanging data with the other processes failed (did "
                        f"one of them stop? see its output): {first}") from err


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m jzad.run``; returns the process exit status (2: a user error)."""
    args = build_parser().parse_args(argv)
    try:
        _, trace_dir = profile_settings(args.profile)
        from jzad.compile_cache import CompileCacheError, disable_compile_cache, enable_compile_cache

        if args.no_compile_cache:
            disable_compile_cache()
        else:
            try:
                enable_compile_cache()
            except CompileCacheError as err:
                raise UserError(f"{err}, or pass --no-compile-cache") from err
        settings = distributed_settings(args)
        if settings is not None:
            start_distributed(settings)
        if trace_dir is None:
            return run_here(args)
        import jax

        with jax.profiler.trace(str(trace_dir)):
            return run_here(args)
    except (UserError, OptionError, ValueError, FileNotFoundError, NotADirectoryError, PermissionError,
            ConnectionError) as err:
        if args.debug:
            raise
        print(f"python -m jzad.run: error: {in_flag_terms(str(err))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("\ninterrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

