"""The command line's parser and option checks: the common options, each method's own options (declared by
the method, ``jzad.methods.Option``) and its stream options; ``check_options`` rejects, before any work, every
option that does not apply to the chosen method or mode. ``jzad.run`` uses both. The parser is built from the
lazy method table (``jzad.methods.table``) and ``jzad.data.choices``: building it, and ``--help``, import no
method module, jax or numpy."""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from jzad import data as jdata
from jzad.data.choices import CLI_DATASETS, SPLITS
from jzad.methods import OptionError, get_streaming, method_entry, method_names, stream_entry, streaming_names

if TYPE_CHECKING:
    from jzad.methods import Method

DISTRIBUTED_ENV = {"coordinator": "JZAD_COORDINATOR", "num_processes": "JZAD_NUM_PROCESSES",
                   "process_id": "JZAD_PROCESS_ID"}
LIBRARY_FLAGS = {"subsets": "--subsets", "shots": "--shots", "subtypes": "--loco-subtypes",
                 "state_dir": "--stream-state", "threshold_from": "--threshold-from", "method": "--method",
                 "image_size": "--image-size", "taps": "--taps", "activation": "--activation", "mode": "--mode",
                 "allow_missing_masks": "--allow-missing-masks", "dataset": "--dataset"}
"""Argument names the library's errors use (first, or as ``name=VALUE``) -> the flag that sets them."""
RESTRICTED = {
    "--subsets": lambda m: m.pools,
    "--subset-split": lambda m: m.pools,
    "--shots": lambda m: m.few_shot != "never",
    "--seeds": lambda m: m.few_shot != "never",
}


class UserError(Exception):
    """A problem with the command line or the inputs: printed as one line, exit status 2."""


def in_flag_terms(message: str, flags: dict[str, str] | None = None) -> str:
    """A library error worded with the command line's flags: the argument it names first ("subsets: expected
    1..8, got 9" -> "--subsets: expected 1..8, got 9") and any it names as a keyword argument ("use mode=plus"
    -> "use --mode plus"; a switch, "force=True", -> "--force"). ``flags`` adds names (a method's config fields,
    another command's options) to ``LIBRARY_FLAGS``."""
    table = {**LIBRARY_FLAGS, **(flags or {})}
    for name, flag in table.items():
        if message.startswith((f"{name}:", f"{name} ")):
            message = flag + message[len(name):]
            break
    keyword = re.compile(r"(?<![\w.-])(" + "|".join(map(re.escape, table)) + r")=(True\b)?")
    return keyword.sub(lambda found: table[found[1]] + ("" if found[2] else " "), message)


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors in two lines (the message, then where the options are listed) instead of the
    whole usage block."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n(`{self.prog} --help` lists every option)\n")


def number_type(kind, wanted: str, accept=None):
    """An argparse type: ``kind(text)`` (int or float) for which ``accept(value)`` holds (None: any); errors say
    "expected <wanted>, got <text>"."""

    def convert(text: str):
        try:
            value = kind(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}") from err
        if accept is not None and not accept(value):
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}")
        return value

    convert.__name__ = wanted
    return convert


def int_at_least(minimum: int | None, wanted: str):
    """An argparse type: an integer (>= ``minimum`` unless None); errors say "expected <wanted>"."""
    return number_type(int, wanted, None if minimum is None else lambda value: value >= minimum)


_int = int_at_least(None, "an integer")
positive_int = int_at_least(1, "a positive integer")
_non_negative_int = int_at_least(0, "an integer >= 0")


def _argparse_type(parse):
    def convert(text):
        try:
            return parse(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from err

    convert.__name__ = getattr(parse, "__name__", "value")
    return convert


def _option_table(names, declared, what: str) -> dict[str, tuple]:
    """flag -> (Option, names of the methods that declare it) over ``names``, ``declared(name)`` giving each
    one's options; a flag declared with two destinations is an error."""
    table: dict[str, tuple] = {}
    for name in names:
        for option in declared(name).options:
            first, owners = table.get(option.flag, (option, []))
            if first.dest != option.dest:
                raise ValueError(f"{what} {option.flag} is declared with two destinations")
            table[option.flag] = (first, owners + [name])
    return table


def _method_options() -> dict[str, tuple]:
    """flag -> (Option, names of the methods that declare it), over every registered method (from the lazy
    table: no method module is imported)."""
    return _option_table(method_names(), method_entry, "option")


def _stream_options() -> dict[str, tuple]:
    """flag -> (Option, names of the methods whose streaming declares it)."""
    return _option_table(streaming_names(), stream_entry, "stream option")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser: common options, then each method's own (documented in --help)."""
    p = _Parser(
        prog="python -m jzad.run",
        description="Training-free anomaly detection: score a test set, print metrics and per-stage timings. "
        "Writes under --out: results.json, scores_<category>.csv, summary_<category>.png and "
        "heatmaps/<category>/test/<type>/<id>.png (unless --no-heatmaps), maps/<category>/test/<type>/<id>.tiff "
        "(with --save-maps). Without --data it runs the built-in demo (a synthetic industrial set with planted "
        "defects and a random-weight backbone: no downloads, no weights).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--method", choices=method_names(), default="musc",
                   help="; ".join(method_entry(n).summary for n in method_names()))
    p.add_argument("--data", type=Path, default=None, help="dataset root; omitted = built-in synthetic demo")
    p.add_argument("--dataset", choices=CLI_DATASETS, default="mvtec", help="layout of --data")
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
    p.add_argument("--shards", type=positive_int, default=None,
                   help="devices to split the scoring over (default: 1, or every device of every process in a "
                   "multi-process run)")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="matmul precision")
    p.add_argument("--batch-size", type=positive_int, default=8, help="images per backbone forward")
    p.add_argument("--subsets", type=positive_int, default=argparse.SUPPRESS,
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
    p.add_argument("--heatmap-size", type=positive_int, default=256, help="side of the overlay panels")
    p.add_argument("--seed", type=int, default=0,
                   help="seed for random weights, the demo set and the few-shot reference draw")
    p.add_argument("--seeds", type=_argparse_type(_int_list), default=argparse.SUPPRESS,
                   help="(few-shot runs) repeat the reference draw with each seed, e.g. 0,1,2,3,4, and report the "
                   "mean and std of every metric")
    p.add_argument("--quiet", action="store_true",
                   help="no live progress display (and, with --stream, no line per image)")
    p.add_argument("--threshold", type=float, default=None, metavar="SCORE",
                   help="the verdict threshold on the raw image score (an image is anomalous when its score is at "
                   "least this); default: from the references' leave-one-out scores for few-shot methods, else the "
                   "labels' F1 optimum, else no verdict")
    p.add_argument("--threshold-from", type=Path, default=None, metavar="RESULTS",
                   help="reuse the per-category thresholds an earlier run of the same method saved in its "
                   "results.json (and its score range for the normalised score)")
    _add_run_options(p)
    for flag, (option, owners) in _method_options().items():
        p.add_argument(flag, dest=option.dest, type=_argparse_type(option.parse), choices=option.choices,
                       metavar=option.metavar, default=argparse.SUPPRESS,
                       help=f"({', '.join(owners)}) {option.help}")
    _add_stream_options(p)
    return p


def _add_run_options(p: argparse.ArgumentParser) -> None:
    """Options of how a run executes: several processes, profiling, the compilation cache, tracebacks."""
    p.add_argument("--coordinator", default=None, metavar="HOST:PORT",
                   help="multi-process run: process 0's address for JAX's distributed runtime (env "
                   "JZAD_COORDINATOR), or 'auto' to let JAX detect the cluster (SLURM, Open MPI, TPU pods)")
    p.add_argument("--num-processes", type=positive_int, default=None,
                   help="multi-process run: how many processes take part (env JZAD_NUM_PROCESSES)")
    p.add_argument("--process-id", type=_non_negative_int, default=None,
                   help="multi-process run: this process's rank, 0..P-1; process 0 writes the outputs (env "
                   "JZAD_PROCESS_ID)")
    p.add_argument("--profile", nargs="+", default=None, metavar="stages|trace DIR",
                   help="'stages': run each method stage apart and time it (the default runs the method's "
                   "scoring as one compiled program, timed as 'score'); 'trace DIR': write a JAX profiler trace of "
                   "the run (the one program, its operations named by stage) to DIR, for Perfetto or TensorBoard")
    p.add_argument("--no-compile-cache", action="store_true",
                   help="do not use JAX's persistent compilation cache (default: on, in $JZAD_CACHE_DIR/jax or the user "
                   "cache folder's jzad/jax, so repeated runs of the same shapes skip compiling)")
    p.add_argument("--debug", action="store_true", help="show tracebacks of errors")


def _add_stream_options(p: argparse.ArgumentParser) -> None:
    """--stream and the options of a streamed run."""
    p.add_argument("--stream", action="store_true",
                   help="score images as they arrive: --data is a folder (oldest modification time first), a file "
                   "listing image paths, or - (paths on standard input); each batch's scores are appended to "
                   "scores_stream.csv (and maps/stream/ with --save-maps) as soon as they are computed")
    p.add_argument("--heatmaps", action="store_true", default=argparse.SUPPRESS,
                   help="(--stream) write a captioned overlay per image under heatmaps/stream/")
    p.add_argument("--stream-batch", type=positive_int, default=argparse.SUPPRESS,
                   help="(--stream) arrivals scored together (default 1)")
    p.add_argument("--stream-state", type=Path, default=argparse.SUPPRESS,
                   help="(--stream) folder for checkpoints of the stream state (orbax); when it holds one, the "
                   "stream resumes from it: a folder or list is replayed and its scored images skipped, standard "
                   "input continues with the lines that arrive")
    p.add_argument("--checkpoint-every", type=positive_int, default=argparse.SUPPRESS,
                   help="(--stream-state) batches between checkpoints (default 100; one is always written at the "
                   "end of the stream or on Ctrl-C)")
    p.add_argument("--stream-references", type=Path, default=argparse.SUPPRESS, metavar="FOLDER_OR_LIST",
                   help="(--stream; few-shot methods) the normal reference images the stream is scored against, "
                   "fitted once: a folder or a file listing image paths (every image in it is a reference); "
                   "WinCLIP's prompts name --class-name, else --category, else --data's folder name")
    for flag, (option, owners) in _stream_options().items():
        p.add_argument(flag, dest=option.dest, type=_argparse_type(option.parse), choices=option.choices,
                       metavar=option.metavar, default=argparse.SUPPRESS,
                       help=f"(--stream; {', '.join(owners)}) {option.help}")


def _int_list(text: str) -> tuple[int, ...]:
    values = tuple(int(v) for v in text.split(",") if v.strip())
    if not values:
        raise ValueError(f"expected comma-separated integers, got {text!r}")
    return values


def profile_settings(profile: list[str] | None) -> tuple[str, Path | None]:
    """--profile values -> (Scorer profile "fused" or "stages", trace folder or None); a malformed value raises
    OptionError naming the option."""
    if profile is None:
        return "fused", None
    if profile == ["stages"]:
        return "stages", None
    if len(profile) == 2 and profile[0] == "trace":
        return "fused", Path(profile[1])
    raise OptionError(f"--profile: expected 'stages' or 'trace DIR', got {' '.join(profile)!r}")


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
    stream_only = ("--stream-batch", "--stream-state", "--checkpoint-every", "--stream-references", "--heatmaps",
                   *_stream_options())
    for flag in stream_only:
        if flag.lstrip("-").replace("-", "_") in given and not args.stream:
            raise OptionError(f"{flag} applies to --stream only")
    for flag, (option, owners) in _stream_options().items():
        if option.dest in given and method.name not in owners:
            raise OptionError(f"{flag} does not apply to --method {method.name} (a stream option of "
                              f"{', '.join(owners)})")
    if args.stream:
        if method.name not in streaming_names():
            raise OptionError(f"--method {method.name} does not stream; methods that do: "
                              f"{', '.join(sorted(streaming_names()))}")
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
    if args.threshold is not None and args.threshold_from is not None:
        raise OptionError("--threshold and --threshold-from both set the threshold: give one")
    if args.threshold is not None and not math.isfinite(args.threshold):
        raise OptionError(f"--threshold: expected a finite score, got {args.threshold}")
    if args.threshold_from is not None and not args.threshold_from.is_file():
        raise OptionError(f"--threshold-from: {args.threshold_from} is not a file (expected an earlier run's "
                          "results.json)")
    profile_settings(args.profile)
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


OUTPUT_NAMES = ("results.json", "results.json.tmp", "heatmaps", "maps")
OUTPUT_PREFIXES = ("scores_", "summary_")
"""What jzad writes into --out (what --overwrite removes)."""


def default_backbone(args, method: Method) -> str | None:
    """--data without --backbone or --weights: the method's catalogue default when its weights are here, else the
    best usable real backbone (``jzad.weights.availability.choose_backbone``), set into args.backbone. Returns
    the header line saying so, or None."""
    if args.data is None or args.backbone is not None or args.weights is not None:
        return None
    from jzad.weights.availability import choose_backbone

    try:
        choice = choose_backbone(method.default_backbone, method.needs_text)
    except ValueError as err:
        raise UserError(f"no --backbone given: --method {method.name}: {err}") from err
    args.backbone = choice.name
    return choice.note


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


def load_scorer(args, method: Method, values: dict, shots: int):
    """The backbone the options name at the method's preset, and the method's config
    (``experiment.build_scorer``), its errors worded as the options that caused them."""
    from jzad import experiment

    try:
        scorer = experiment.build_scorer(
            method, values, shots, backbone=args.backbone, weights=args.weights, image_size=args.image_size,
            taps=args.taps, activation=args.activation, precision=args.precision, seed=args.seed,
            shards=args.shards, batch_size=args.batch_size, demo=args.data is None, dataset=args.dataset)
        return dataclasses.replace(scorer, profile=profile_settings(args.profile)[0])
    except experiment.BackboneLoadError as err:
        raise UserError(_backbone_error(args, method, err.name, err.reason)) from err
    except experiment.MethodConfigError as err:
        raise OptionError(_with_flag(method, str(err))) from err


def _backbone_error(args, method: Method, name: str, text: str) -> str:
    """The one-line message for a backbone that cannot be loaded: the message of a given option it names first
    (worded as its flag), else which option (or the method's default backbone) named what could not be loaded,
    and why."""
    named = text.split(":")[0].split(" ")[0]
    if named in ("image_size", "taps", "activation") and getattr(args, named) is not None:
        return in_flag_terms(text)
    if args.weights is not None:
        where = f"--weights: cannot load {name!r}"
    elif args.backbone is not None:
        where = f"--backbone: cannot load {name!r}"
    else:
        where = f"no --backbone given, and the default backbone of --method {method.name}, {name!r}, cannot be loaded"
    return in_flag_terms(f"{where}: {text}")


def _with_flag(method: Method, text: str) -> str:
    """A config error ("musc options: r_list: ...", "shots: applies to mode=plus") with the config fields it
    names replaced by their command-line flags."""
    fields = {option.field: option.flag for option in method.options if option.field is not None}
    for field, flag in fields.items():
        if f"{field}:" in text:
            text = text.replace(f"{field}:", f"{flag}:", 1)
            break
    return in_flag_terms(text, fields)


def jax_device_kind() -> str:
    """The default device's kind (e.g. "cpu", "NVIDIA H100 80GB HBM3")."""
    import jax

    return jax.devices()[0].device_kind
