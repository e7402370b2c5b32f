"""Command line: score image sets with a registered training-free method; report metrics, timings and maps.

    python -m jzad.run                                   # built-in demo: synthetic set, random-weight backbone
    python -m jzad.run --method musc --data DIR --dataset mvtec --category all --backbone vit-l-14-336 --shards 8

Every method runs through the same driver (``jzad.pipeline.run_category``): decode -> extract -> method stages ->
maps -> metrics, category by category and subset by subset. Each method declares its own options; an option that
does not apply to the chosen method is an error naming it, and every option is checked before any image is
decoded. Outputs under --out (written as each category finishes): results.json (atomic; its "status" says
running, complete, failed or interrupted), scores_<category>.csv, summary_<category>.png and
heatmaps/<category>/<image path>.png (unless --no-heatmaps), maps/<category>/<image path>.tiff (--save-maps).
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
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from jzad import data as jdata
from jzad.methods import Method, OptionError, RunContext, get_method, get_streaming, method_names, streaming_names
from jzad.pipeline import METRIC_COLUMNS, SPLITS, Scorer, peak_memory, run_category
from jzad.progress import RunProgress
from jzad.timing import StageClock

DEMO_CATEGORY = "synthetic"
DEMO_IMAGE_SIZE = 224
DEMO_SHOTS_POOL = 4
DEMO_CALIBRATION = 8
DEMO_SHOTS = 2
"""Reference images of the demo for a method that needs them, when --shots is not given."""
DISTRIBUTED_ENV = {"coordinator": "JZAD_COORDINATOR", "num_processes": "JZAD_NUM_PROCESSES",
                   "process_id": "JZAD_PROCESS_ID"}
OUTPUT_NAMES = ("results.json", "results.json.tmp", "heatmaps", "maps")
OUTPUT_PREFIXES = ("scores_", "summary_")
RESTRICTED = {
    "--subsets": lambda m: m.pools,
    "--subset-split": lambda m: m.pools,
    "--shots": lambda m: m.few_shot != "never",
    "--seeds": lambda m: m.few_shot != "never",
}


class UserError(Exception):
    """A problem with the command line or the inputs: printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors in two lines (the message, then where the options are listed) instead of the
    whole usage block."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n(`{self.prog} --help` lists every option)\n")


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from err


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from err
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from err
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def _argparse_type(parse):
    def convert(text):
        try:
            return parse(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from err

    convert.__name__ = getattr(parse, "__name__", "value")
    return convert


def _method_options() -> dict[str, tuple]:
    """flag -> (Option, names of the methods that declare it), over every registered method."""
    table: dict[str, tuple] = {}
    for name in method_names():
        for option in get_method(name).options:
            first, owners = table.get(option.flag, (option, []))
            if first.dest != option.dest:
                raise ValueError(f"option {option.flag} is declared with two destinations")
            table[option.flag] = (first, owners + [name])
    return table


def _stream_options() -> dict[str, tuple]:
    """flag -> (Option, names of the methods whose streaming declares it)."""
    table: dict[str, tuple] = {}
    for name in streaming_names():
        for option in get_streaming(name).options:
            first, owners = table.get(option.flag, (option, []))
            if first.dest != option.dest:
                raise ValueError(f"stream option {option.flag} is declared with two destinations")
            table[option.flag] = (first, owners + [name])
    return table


def build_parser() -> argparse.ArgumentParser:
    """The argument parser: common options, then each method's own (documented in --help)."""
    p = _Parser(
        prog="python -m jzad.run",
        description="Training-free anomaly detection: score a test set, print metrics and per-stage timings. "
        "Writes under --out: results.json, scores_<category>.csv, summary_<category>.png and "
        "heatmaps/<category>/<image path>.png (unless --no-heatmaps), maps/<category>/<image path>.tiff "
        "(with --save-maps). Without --data it runs the built-in demo (a synthetic industrial set with planted "
        "defects and a random-weight backbone: no downloads, no weights).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--method", choices=method_names(), default="musc",
                   help="; ".join(get_method(n).summary for n in method_names()))
    p.add_argument("--data", type=Path, default=None, help="dataset root; omitted = built-in synthetic demo")
    p.add_argument("--dataset", choices=jdata.CLI_DATASETS, default="mvtec", help="layout of --data")
    p.add_argument("--category", default="all", help="category name, or 'all' for every category")
    p.add_argument("--loco-subtypes", default=argparse.SUPPRESS, metavar="rule|off|FILE",
                   help="--dataset loco: score juice_bottle and splicing_connectors per sub-type, found by the "
                   "colour rule (rule, the default), from a list file of '<category>/<path> <sub-type>' lines "
                   "(FILE), or whole (off)")
    p.add_argument("--infer-labels", action="store_true",
                   help="--dataset folder: images under good/ok/normal folders are normal, others anomalous")
    p.add_argument("--allow-missing-masks", action="store_true",
                   help="score a category whose anomalous images lack ground-truth masks (no pixel metrics for it; "
                   "MPDD re-split: images without a mask count as normal) instead of stopping with an error")
    p.add_argument("--backbone", default=None,
                   help="ported or catalogue name (`python -m jzad.weights list`), or random-<architecture> for "
                   "random weights of the real shape; default: the method's demo backbone without --data, its "
                   "default backbone with --data")
    p.add_argument("--weights", type=Path, default=None, help="a checkpoint file or folder to load directly")
    p.add_argument("--image-size", type=_int, default=None,
                   help="model input side, a positive multiple of the backbone's patch size (checked when the "
                   "backbone is known: the error names the nearest valid sizes); default: the method's preset")
    p.add_argument("--taps", type=_argparse_type(_int_list), default=None,
                   help="1-based ViT blocks to tap, e.g. 6,12,18,24; default: the method's preset")
    p.add_argument("--activation", choices=("gelu", "quick_gelu"), default=None,
                   help="ViT MLP activation; default: the method's preset, else the checkpoint's")
    p.add_argument("--shards", type=_positive_int, default=None,
                   help="devices to split the scoring over (default: 1, or every device of every process in a "
                   "multi-process run)")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="matmul precision")
    p.add_argument("--batch-size", type=_positive_int, default=8, help="images per backbone forward")
    p.add_argument("--subsets", type=_positive_int, default=argparse.SUPPRESS,
                   help="(pooling methods: musc, fslc) MuSc's divide_num: subsets scored apart (default 1)")
    p.add_argument("--subset-split", choices=SPLITS, default=argparse.SUPPRESS,
                   help="(pooling methods) 'official': MuSc's reader exactly (default); 'balanced': sizes "
                   "differ by at most one")
    p.add_argument("--shots", type=_non_negative_int, default=argparse.SUPPRESS,
                   help="(few-shot methods) normal reference images from the train split (default 0)")
    p.add_argument("--aupro", choices=("mvtec", "musc"), default="mvtec", help="AUPRO convention")
    p.add_argument("--out", type=Path, default=None, help="output folder; default runs/<date-time>")
    p.add_argument("--overwrite", action="store_true",
                   help="reuse a non-empty --out after deleting jzad's own outputs in it")
    p.add_argument("--save-maps", action="store_true",
                   help="write every anomaly map as a float32 TIFF at the metric resolution")
    p.add_argument("--maps-at-image-size", action="store_true",
                   help="with --save-maps: resize each map to its image's original size")
    p.add_argument("--no-heatmaps", action="store_true", help="skip the overlay PNGs and summary figures")
    p.add_argument("--heatmap-size", type=_positive_int, default=256, help="side of the overlay panels")
    p.add_argument("--seed", type=int, default=0,
                   help="seed for random weights, the demo set and the few-shot reference draw")
    p.add_argument("--seeds", type=_argparse_type(_int_list), default=argparse.SUPPRESS,
                   help="(few-shot runs) repeat the reference draw with each seed, e.g. 0,1,2,3,4, and report the "
                   "mean and std of every metric")
    p.add_argument("--quiet", action="store_true", help="no live progress display")
    p.add_argument("--coordinator", default=None, metavar="HOST:PORT",
                   help="multi-process run: process 0's address for JAX's distributed runtime (env "
                   "JZAD_COORDINATOR), or 'auto' to let JAX detect the cluster (SLURM, Open MPI, TPU pods)")
    p.add_argument("--num-processes", type=_positive_int, default=None,
                   help="multi-process run: how many processes take part (env JZAD_NUM_PROCESSES)")
    p.add_argument("--process-id", type=_non_negative_int, default=None,
                   help="multi-process run: this process's rank, 0..P-1; process 0 writes the outputs (env "
                   "JZAD_PROCESS_ID)")
    p.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    for flag, (option, owners) in _method_options().items():
        p.add_argument(flag, dest=option.dest, type=_argparse_type(option.parse), choices=option.choices,
                       metavar=option.metavar, default=argparse.SUPPRESS,
                       help=f"({', '.join(owners)}) {option.help}")
    p.add_argument("--stream", action="store_true",
                   help="score images as they arrive: --data is a folder (oldest modification time first), a file "
                   "listing image paths, or - (paths on standard input); each batch's scores are appended to "
                   "scores_stream.csv (and maps/stream/ with --save-maps) as soon as they are computed")
    p.add_argument("--stream-batch", type=_positive_int, default=argparse.SUPPRESS,
                   help="(--stream) arrivals scored together (default 1)")
    p.add_argument("--stream-state", type=Path, default=argparse.SUPPRESS,
                   help="(--stream) folder for checkpoints of the stream state (orbax); when it holds one, the "
                   "stream resumes from it: a folder or list is replayed and its scored images skipped, standard "
                   "input continues with the lines that arrive")
    p.add_argument("--checkpoint-every", type=_positive_int, default=argparse.SUPPRESS,
                   help="(--stream-state) batches between checkpoints (default 1)")
    p.add_argument("--stream-references", type=Path, default=argparse.SUPPRESS, metavar="FOLDER_OR_LIST",
                   help="(--stream; few-shot methods) the normal reference images the stream is scored against, "
                   "fitted once: a folder or a file listing image paths (every image in it is a reference); "
                   "WinCLIP's prompts name --class-name, else --category, else --data's folder name")
    for flag, (option, owners) in _stream_options().items():
        p.add_argument(flag, dest=option.dest, type=_argparse_type(option.parse), choices=option.choices,
                       metavar=option.metavar, default=argparse.SUPPRESS,
                       help=f"(--stream; {', '.join(owners)}) {option.help}")
    return p


def _int_list(text: str) -> tuple[int, ...]:
    values = tuple(int(v) for v in text.split(",") if v.strip())
    if not values:
        raise ValueError(f"expected comma-separated integers, got {text!r}")
    return values


def check_options(args: argparse.Namespace, method: Method) -> dict:
    """Reject options that do not apply to the method; return the method's option values (dest -> value)."""
    given = vars(args)
    for flag, (option, owners) in _method_options().items():
        if option.dest in given and method.name not in owners:
            raise OptionError(f"{flag} does not apply to --method {method.name} (it is an option of "
                              f"{', '.join(owners)})")
    for flag, allowed in RESTRICTED.items():
        dest = flag.lstrip("-").replace("-", "_")
        if dest in given and not allowed(method):
            raise OptionError(f"{flag} does not apply to --method {method.name}")
    stream_only = ("--stream-batch", "--stream-state", "--checkpoint-every", "--stream-references",
                   *_stream_options())
    for flag in stream_only:
        if flag.lstrip("-").replace("-", "_") in given and not args.stream:
            raise OptionError(f"{flag} applies to --stream only")
    for flag, (option, owners) in _stream_options().items():
        if option.dest in given and method.name not in owners:
            raise OptionError(f"{flag} does not apply to --method {method.name} (a stream option of "
                              f"{', '.join(owners)})")
    if args.stream:
        streaming = get_streaming(method.name)
        for flag in ("--subsets", "--subset-split", "--shots", "--seeds"):
            if flag.lstrip("-").replace("-", "_") in given:
                hint = " (a stream's references are every image of --stream-references)" if flag in (
                    "--shots", "--seeds") and streaming.references else ""
                raise OptionError(f"{flag} does not apply to --stream{hint}")
        if not streaming.references and "stream_references" in given:
            raise OptionError(f"--stream-references does not apply to --method {method.name} (it scores the "
                              "stream against its own arrivals)")
        if streaming.references and method.few_shot == "required" and "stream_references" not in given:
            raise OptionError(f"--method {method.name} streams against normal reference images: give "
                              "--stream-references FOLDER_OR_LIST")
        if args.data is None:
            raise OptionError("--stream needs --data: a folder of images, a file listing image paths, or -")
        if "checkpoint_every" in given and "stream_state" not in given:
            raise OptionError("--checkpoint-every needs --stream-state")
    if args.maps_at_image_size and not args.save_maps:
        raise OptionError("--maps-at-image-size needs --save-maps")
    if args.infer_labels and args.dataset != "folder":
        raise OptionError("--infer-labels applies to --dataset folder only")
    if "loco_subtypes" in given:
        if args.dataset != "loco":
            raise OptionError("--loco-subtypes applies to --dataset loco only")
        jdata.check_subtypes(args.loco_subtypes)
    if args.allow_missing_masks and (args.data is None or args.dataset == "folder"):
        raise OptionError("--allow-missing-masks applies to --data with a dataset layout that has masks")
    values = {o.dest: given[o.dest] for o in method.options if o.dest in given}
    values["precision"] = args.precision
    return values


def check_categories(args) -> list[str]:
    """The categories --category names in --data (every one for 'all'; LOCO: a category with sub-types names
    its sub-type categories); an unknown name is an error listing the categories found (--dataset folder: any
    sub-folder, checked when it is read)."""
    subtypes = getattr(args, "loco_subtypes", "rule")
    found = jdata.dataset_categories(args.dataset, args.data, "all", subtypes)
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


def check_out(out: Path, overwrite: bool) -> None:
    """--out must be a writable folder that holds no earlier outputs (unless --overwrite, which removes
    jzad's own outputs and keeps anything else)."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out: {out} exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".jzad-write-check"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise UserError(f"--out: cannot write to {out} ({err.strerror or err})") from err
    ours = [p for p in out.iterdir() if p.name in OUTPUT_NAMES or p.name.startswith(OUTPUT_PREFIXES)]
    others = [p for p in out.iterdir() if p not in ours]
    if not overwrite and (ours or others):
        raise UserError(f"--out: {out} is not empty; pass --overwrite to replace jzad's outputs in it, or choose "
                        "a new folder")
    for path in ours:
        shutil.rmtree(path) if path.is_dir() else path.unlink()


def write_json_atomic(path: Path, payload: dict) -> None:
    """Write JSON through a temporary file and a rename, so readers never see a half-written file."""
    from jzad.eval import report

    temp = path.with_name(path.name + ".tmp")
    report.write_results_json(temp, payload)
    os.replace(temp, path)


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


def data_sources(args, category: str, shots: int, draw_seed: int, calibration: str | None = None):
    """One category of --data as sources (``jzad.data.category_sources``): the test images, ``shots`` normal
    train images drawn by ``reference_draw`` (labelled-normal only: re-split MPDD trains hold defects too) and,
    for methods that calibrate, their held-out normal images."""
    sources = jdata.category_sources(args.dataset, args.data, category, shots, draw_seed, calibration,
                                     subtypes=getattr(args, "loco_subtypes", "rule"), infer_labels=args.infer_labels,
                                     allow_missing_masks=args.allow_missing_masks)
    print(sources.summary, file=sys.stderr)
    return sources


def load_scorer(args, method: Method, values: dict, shots: int):
    """The backbone the options name at the method's preset, and the method's config."""
    from jzad.backbone.port import MissingDependencyError
    from jzad.features import backbone_architecture, load_backbone
    from jzad.kernels import device_mesh

    dtype = "bfloat16" if args.precision == "bf16" else "float32"
    demo = args.data is None
    name = args.weights or args.backbone or (method.demo_backbone if demo else method.default_backbone)
    arch = None if args.weights is not None else backbone_architecture(name)
    run = method.backbone_run(arch)
    image_size = args.image_size
    if demo and image_size is None and run.image_size is None:
        image_size = DEMO_IMAGE_SIZE
    try:
        backbone = load_backbone(name, run, image_size, args.taps, args.activation, dtype, args.seed,
                                 with_text=method.needs_text)
    except (ValueError, FileNotFoundError, ConnectionError, MissingDependencyError) as err:
        raise UserError(_backbone_error(args, method, str(name), err)) from err
    context = RunContext(dataset="synthetic" if demo else args.dataset, image_size=backbone.image_size, shots=shots,
                         taps=backbone.taps)
    try:
        config = method.configure(values, context)
        if method.extractor is not None:
            method.extractor(config, backbone)  # checks the backbone against the config before any image is read
    except ValueError as err:
        raise OptionError(_with_flag(method, str(err))) from err
    return Scorer(method, config, backbone, device_mesh(args.shards), args.batch_size)


def _backbone_error(args, method: Method, name: str, err: Exception) -> str:
    """The one-line message for a backbone that cannot be loaded: an option's own message as it is, else
    which option (or the method's default backbone) named what could not be loaded, and why."""
    text = str(err)
    if text.startswith("--"):
        return text
    if args.weights is not None:
        return f"--weights: cannot load {name!r}: {text}"
    if args.backbone is not None:
        return f"--backbone: cannot load {name!r}: {text}"
    return (f"no --backbone given, and the default backbone of --method {method.name}, {name!r}, cannot be "
            f"loaded: {text}")


def _with_flag(method: Method, text: str) -> str:
    """A config error ("musc options: r_list: ...") with the config field replaced by its command-line flag."""
    for option in method.options:
        if option.field is not None and f"{option.field}:" in text:
            return text.replace(f"{option.field}:", f"{option.flag}:", 1)
    return text


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


def seed_statistics(metrics: list[dict]) -> tuple[dict, dict]:
    """Mean and (population) std over seeds of every metric (nan stays nan)."""
    mean, std = {}, {}
    for name in metrics[0]:
        values = np.asarray([m[name] for m in metrics], np.float64)
        finite = np.isfinite(values).all()
        mean[name] = float(values.mean()) if finite else float("nan")
        std[name] = float(values.std()) if finite else float("nan")
    return mean, std


def write_category_outputs(args, out: Path, result, scorer: Scorer, source, clock: StageClock,
                           seed: int | None = None, pictures: bool = True, maps_folder: str | None = None) -> list[str]:
    """Scores CSV (``scores_<category>.csv``, or ``scores_<category>_seed<S>.csv`` when several seeds run),
    and for the first seed the map TIFFs (under maps/<maps_folder>, default the category), overlays and the
    summary figure; returns what it wrote."""
    from jzad.data.sources import prefetch_batches
    from jzad.eval import report
    from jzad.eval.heatmaps import value_range
    from jzad.eval.outputs import save_captioned_overlays, save_map_tiffs, save_summary

    start = time.perf_counter()
    cat = result.category
    csv_name = f"scores_{cat}.csv" if seed is None else f"scores_{cat}_seed{seed}.csv"
    written = [str(report.write_scores_csv(out / csv_name, result.names, result.labels,
                                           result.image_scores, result.defect_types))]
    if not pictures:
        clock.add("write", time.perf_counter() - start)
        return written
    if args.save_maps:
        sizes = result.original_sizes if args.maps_at_image_size else None
        folder = out / "maps" / (maps_folder or cat)
        save_map_tiffs(folder, result.names, result.maps, sizes)
        written.append(str(folder))
    if not args.no_heatmaps:
        written.append(str(save_summary(out / f"summary_{cat}.png", cat, result.image_scores, result.labels)))
        scale = value_range(result.maps)
        size = args.heatmap_size
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


def distributed_settings(args: argparse.Namespace, environ=os.environ) -> dict | None:
    """The multi-process settings of a run: --coordinator, --num-processes, --process-id, each falling back to
    its JZAD_* environment variable; None when neither names a coordinator (a single-process run)."""
    values = {}
    for dest, variable in DISTRIBUTED_ENV.items():
        value = getattr(args, dest)
        if value is None and environ.get(variable, "").strip():
            text = environ[variable].strip()
            if dest == "coordinator":
                value = text
            else:
                try:
                    value = int(text)
                except ValueError as err:
                    raise OptionError(f"{variable}: expected an integer, got {text!r}") from err
        values[dest] = value
    if values["coordinator"] is None:
        given = [f"--{d.replace('_', '-')}" for d in ("num_processes", "process_id") if values[d] is not None]
        if given:
            raise OptionError(f"{', '.join(given)} need --coordinator HOST:PORT (or 'auto')")
        return None
    from jzad.kernels.multihost import AUTO

    coordinator = values["coordinator"]
    if coordinator != AUTO:
        host, _, port = coordinator.rpartition(":")
        if not host or not port.isdigit():
            raise OptionError(f"--coordinator: expected HOST:PORT or 'auto', got {coordinator!r}")
        if values["num_processes"] is None or values["process_id"] is None:
            raise OptionError("--coordinator HOST:PORT needs --num-processes P and --process-id I (or 'auto')")
    if values["num_processes"] is not None and values["num_processes"] < 1:
        raise OptionError(f"--num-processes: expected >= 1, got {values['num_processes']}")
    if (values["process_id"] is not None and values["num_processes"] is not None
            and not 0 <= values["process_id"] < values["num_processes"]):
        raise OptionError(f"--process-id: expected 0..{values['num_processes'] - 1}, got {values['process_id']}")
    return values


def start_distributed(settings: dict) -> None:
    """Start JAX's distributed runtime (before anything touches a device); a failure is a one-line error."""
    from jzad.kernels.multihost import initialize

    try:
        initialize(settings["coordinator"], settings["num_processes"], settings["process_id"])
    except (RuntimeError, ValueError) as err:
        raise UserError(f"--coordinator {settings['coordinator']}: cannot start the distributed runtime: "
                        f"{str(err).splitlines()[0] if str(err) else type(err).__name__}") from err


def run(args: argparse.Namespace) -> int:
    """Validate everything, then score category by category; returns the exit status.

    In a multi-process run every process scores (its share of the images, the kernels over the global mesh)
    and only process 0 touches --out; the first category that fails ends the category loop, so no process
    waits on a peer that moved on to the next category.
    """
    import jax

    from jzad.eval import report
    from jzad.eval.datasets import dataset_metrics
    from jzad.kernels.multihost import agree, is_writer

    method = get_method(args.method)
    values = check_options(args, method)
    processes = jax.process_count()
    writer = is_writer()
    if processes > 1 and not method.multi_process:
        raise OptionError(f"--method {method.name} does not support multi-process scoring ({processes} processes); "
                          "run it in one process")
    if args.shards is None:
        args.shards = len(jax.devices()) if processes > 1 else 1
    subsets = getattr(args, "subsets", 1)
    split = getattr(args, "subset_split", "official")
    shots = getattr(args, "shots", DEMO_SHOTS if args.data is None and method.few_shot == "required" else 0)
    if method.few_shot == "required" and shots < 1 and not args.stream:
        raise OptionError(f"--method {method.name} needs --shots K >= 1 normal reference images")
    if args.shards > len(jax.devices()):
        raise OptionError(f"--shards: expected 1..{len(jax.devices())} (devices here: {jax.devices()[0].platform} x "
                          f"{len(jax.devices())}); on CPU set XLA_FLAGS=--xla_force_host_platform_device_count=N")
    if args.shards % processes:
        raise OptionError(f"--shards: expected a multiple of the {processes} processes (each gives the same number "
                          f"of devices), got {args.shards}")
    seeds = list(getattr(args, "seeds", (args.seed,)))
    if len(seeds) > 1 and shots < 1:
        raise OptionError("--seeds repeats the few-shot reference draw: it needs --shots K >= 1")
    if args.stream:
        return run_stream_cli(args, method, values)
    demo = args.data is None
    if not demo and not args.data.is_dir():
        raise UserError(f"--data: {args.data} is not a directory")
    categories = [DEMO_CATEGORY] if demo else check_categories(args)
    extra_metrics = None if demo else dataset_metrics(args.dataset)
    columns = METRIC_COLUMNS if extra_metrics is None else extra_metrics.columns
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
    data_text = (f"built-in synthetic demo ({backbone.image_size} px, 16 normal + 12 with planted defects, "
                 f"seed {args.seed})" if demo else f"{args.dataset} at {args.data}")
    mode = getattr(scorer.config, "mode", "few_shot" if shots else "zero_shot")
    print(f"method: {method.name} | mode: {mode} | shots: {shots} | subsets: {subsets if method.pools else '-'} | "
          f"categories: {len(categories)} | data: {data_text}")
    spread = f" over {processes} processes" if processes > 1 else ""
    print(f"backbone: {backbone.describe()} | device: {jax.devices()[0].device_kind} x {args.shards} shard(s)"
          f"{spread} | precision: {args.precision}")

    payload = {
        "status": "running", "method": method.name, "method_config": repr(scorer.config),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "backbone": {"name": backbone.name, "architecture": backbone.architecture, "origin": backbone.origin,
                     "image_size": backbone.image_size, "taps": list(backbone.taps), "dtype": backbone.dtype,
                     **backbone.info},
        "data": data_text, "environment": report.environment_info(), "processes": processes,
        "categories": [], "failed": [],
    }
    results_path = out / "results.json"

    def save_results() -> None:
        if writer:
            write_json_atomic(results_path, payload)

    save_results()
    total_clock, rows, std_rows, total_images = StageClock(), [], [], 0
    try:
        with RunProgress(enabled=not args.quiet and writer) as progress:
            for category in categories:
                clock = StageClock()
                try:
                    runs = []
                    for index, seed in enumerate(seeds):
                        if demo:
                            sources = demo_sources(backbone.image_size, args.seed, shots, seed, method.calibration)
                        else:
                            sources = data_sources(args, category, shots, seed, method.calibration)
                        source = sources.source
                        label = category if len(seeds) == 1 else f"{category} (seed {seed})"
                        print(f"{label}: {len(source)} images" + (f", {shots} references" if shots else "")
                              + (f", {len(sources.calibration)} calibration images" if sources.calibration else ""),
                              file=sys.stderr)
                        result = run_category(scorer, source, category, sources.references, subsets, split,
                                              aupro_convention=args.aupro, clock=clock, progress=progress,
                                              calibration=sources.calibration)
                        if extra_metrics is not None:
                            result.metrics.update(extra_metrics.compute(result, source))
                        if index == 0 and result.mask_report is not None:
                            print(result.mask_report["summary"], file=sys.stderr)
                            if result.mask_report.get("warning"):
                                print(f"warning: {result.mask_report['warning']}", file=sys.stderr)
                        for note in result.notes:
                            print(f"warning: {label}: {note}", file=sys.stderr)
                        written = []
                        if writer:
                            written = write_category_outputs(args, out, result, scorer, source, clock,
                                                             seed if len(seeds) > 1 else None, index == 0,
                                                             sources.maps_folder)
                        runs.append((seed, result, written))
                except (ValueError, OSError, UserError) as err:
                    if args.debug:
                        raise
                    payload["failed"].append({"category": category, "error": str(err),
                                              "error_type": type(err).__name__})
                    if len(categories) > 1:
                        print(f"{category}: FAILED: {err}", file=sys.stderr)
                    save_results()
                    if processes > 1:
                        print("a multi-process run stops at its first failed category", file=sys.stderr)
                        break
                    continue
                total_clock.merge(clock)
                count = len(runs[0][1].names)
                total_images += count * len(runs)
                mean, std = seed_statistics([r.metrics for _, r, _ in runs])
                rows.append({"category": category, **mean})
                if len(runs) > 1:
                    std_rows.append({"category": category, **std})
                result = runs[0][1]
                payload["categories"].append({
                    "category": category, "num_images": count, "metrics": mean,
                    "metrics_std": std if len(runs) > 1 else None,
                    "seeds": [{"seed": seed, "metrics": r.metrics} for seed, r, _ in runs] if shots else None,
                    "mask_report": result.mask_report, "notes": list(result.notes),
                    "subtypes": None if demo else sources.subtypes,
                    "subset_sizes": [len(g) for g in result.groups],
                    "timing_ms_per_image": clock.per_image_ms(count * len(runs)),
                    "compile_s": dict(clock.compile_seconds), "files": [f for _, _, w in runs for f in w],
                })
                payload["memory"] = peak_memory()
                save_results()
    except KeyboardInterrupt:
        payload["status"] = "interrupted"
        save_results()
        print(f"\ninterrupted: {results_path} lists the categories that finished", file=sys.stderr)
        return 130

    if rows:
        print()
        title = f"{method.name} metrics" + (f" (mean over seeds {seeds})" if len(seeds) > 1 else "")
        print(report.format_table(rows, ("category",) + tuple(columns), title=title))
        if std_rows:
            print()
            print(report.format_table(std_rows, ("category",) + tuple(columns),
                                      title=f"{method.name} metrics: std over seeds {seeds}", mean_row=False))
        print()
        timing = timing_rows(total_clock, total_images, method)
        print(report.format_table(timing, ("stage", "ms_per_image", "compile_s"),
                                  title=f"timing per image over {total_images} images (compile time apart)",
                                  mean_row=False))
        payload["timing"] = timing
        payload["mean"] = {c: float(np.nanmean([r[c] for r in rows])) if any(np.isfinite(r[c]) for r in rows)
                           else float("nan") for c in rows[0] if c != "category"}
    payload["memory"] = peak_memory()
    payload["status"] = "failed" if payload["failed"] else "complete"
    save_results()
    files = ["results.json", "scores_<category>.csv"]
    if not args.no_heatmaps:
        files += ["summary_<category>.png", "heatmaps/"]
    if args.save_maps:
        files.append("maps/")
    print(f"\nwrote {out}: {', '.join(files) if rows else 'results.json'}")
    failed = payload["failed"]
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


def run_stream_cli(args: argparse.Namespace, method: Method, values: dict) -> int:
    """--stream: score --data's images in arrival order with the method's streaming functions, appending each
    batch to scores_stream.csv; resume from --stream-state when it holds a checkpoint. Returns the exit status."""
    from jzad.data.arrivals import arrivals
    from jzad.eval import report
    from jzad.stream import StreamOutputs, Streamer, decode_batch, has_checkpoint, restore_state, run_stream

    given = vars(args)
    streaming = get_streaming(method.name)
    if str(args.data) != "-" and not args.data.exists():
        raise UserError(f"--data: {args.data} does not exist (--stream takes a folder, a list file or -)")
    state_dir = Path(args.stream_state).absolute() if "stream_state" in given else None
    done = has_checkpoint(state_dir) if state_dir is not None else None
    out = args.out or Path("runs") / time.strftime("%Y%m%d-%H%M%S")
    if done is not None and args.overwrite:
        raise UserError(f"--stream-state: {state_dir} holds a checkpoint of {done} images; drop --overwrite to "
                        "resume it, or remove the folder to start again")
    if done is None:
        check_out(out, args.overwrite)
    reference_paths = stream_reference_paths(args.stream_references) if "stream_references" in given else []
    try:
        scorer = load_scorer(args, method, values, len(reference_paths))
    except (ValueError, FileNotFoundError, ConnectionError) as err:
        name = args.weights or args.backbone or method.default_backbone
        raise UserError(f"--backbone/--weights: cannot load {str(name)!r}: {err}") from err
    stream_config = streaming.configure({o.dest: given[o.dest] for o in streaming.options if o.dest in given},
                                        scorer.config)
    references, category = None, "stream"
    if streaming.references:
        category = args.category if args.category != "all" else (
            args.data.absolute().name if str(args.data) != "-" else "object")
        if reference_paths:
            references, _ = decode_batch(reference_paths, scorer.prep, scorer.backbone.image_size)
    streamer = Streamer(scorer, stream_config, given.get("stream_batch", 1), references, category)
    source = arrivals(args.data)
    state = None
    if done is not None:
        state, done = restore_state(state_dir, streamer.init(), streamer.signature())
    outputs = StreamOutputs(out, args.save_maps, args.maps_at_image_size, keep=done or 0)
    print(f"method: {method.name} (stream) | batch: {streamer.batch} | {stream_config} | data: {args.data}"
          + (f" | resuming after {done} images" if done else ""))
    print(f"backbone: {scorer.backbone.describe()} | device: {jax_device_kind()}"
          + (f" | references: {len(references)} from {args.stream_references}" if references is not None else "")
          + (f" | category: {category}" if streaming.references else ""))
    payload = {"status": "running", "mode": "stream", "method": method.name, "method_config": repr(scorer.config),
               "stream_config": repr(stream_config),
               "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in given.items()},
               "environment": report.environment_info()}
    results_path = Path(out) / "results.json"
    write_json_atomic(results_path, payload)

    def progress(count: int) -> None:
        if not args.quiet and count % 100 < streamer.batch:
            print(f"{count} images scored", file=sys.stderr)

    try:
        summary, _ = run_stream(streamer, source, outputs, state, done or 0, state_dir,
                                given.get("checkpoint_every", 1), progress, replay=str(args.data) != "-")
    finally:
        outputs.close()
    stats = summary.report()
    payload.update(stream=stats, memory=peak_memory(), status="interrupted" if summary.interrupted else "complete")
    write_json_atomic(results_path, payload)
    print(f"{summary.images} images in {summary.batches} batches: latency median {stats['latency_ms_median']:.1f} "
          f"ms, p95 {stats['latency_ms_p95']:.1f} ms; {stats['images_per_s']:.2f} images/s "
          f"({stats['images_per_s_after_first_batch']:.2f} after the first batch); {summary.warming} warming, "
          f"{summary.banked} banked")
    print(f"wrote {out}: results.json, {outputs.path.name}" + (", maps/" if args.save_maps else ""))
    return 130 if summary.interrupted else 0


def stream_reference_paths(spec: Path) -> list[Path]:
    """--stream-references: the image paths of a folder or list file; a missing or empty source is a user error
    naming it."""
    from jzad.data.arrivals import arrivals

    if not spec.exists():
        raise UserError(f"--stream-references: {spec} does not exist (expected a folder of normal images or a file "
                        "listing their paths)")
    paths = [path for _, path in arrivals(spec)]
    if not paths:
        raise UserError(f"--stream-references: no images in {spec}")
    return paths


def jax_device_kind() -> str:
    """The default device's kind (e.g. "cpu", "NVIDIA H100 80GB HBM3")."""
    import jax

    return jax.devices()[0].device_kind


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m jzad.run``; returns the process exit status (2: a user error)."""
    args = build_parser().parse_args(argv)
    try:
        settings = distributed_settings(args)
        if settings is not None:
            start_distributed(settings)
        return run_here(args)
    except (UserError, OptionError, ValueError, FileNotFoundError, NotADirectoryError, PermissionError,
            ConnectionError) as err:
        if args.debug:
            raise
        print(f"python -m jzad.run: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("\ninterrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
