"""The --stream path of ``python -m jzad.run``: score images as they arrive (a folder, a list file or standard
input) with a method's streaming functions, through ``jzad.experiment.run_stream_experiment``; the options are
parsed and checked by ``jzad.cli``."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from jzad import data as jdata
from jzad import experiment
from jzad.cli import UserError, check_out, default_backbone, in_flag_terms, jax_device_kind, load_scorer
from jzad.experiment import ResultsFile
from jzad.methods import Method, get_streaming


def run_stream_cli(args: argparse.Namespace, method: Method, values: dict) -> int:
    """--stream: score --data's images in arrival order with the method's streaming functions, appending each
    batch to scores_stream.csv; resume from --stream-state when it holds a checkpoint. Returns the exit status."""
    from jzad.data.arrivals import arrivals
    from jzad.eval import report
    from jzad.stream import CHECKPOINT_EVERY, Streamer, decode_batch, has_checkpoint

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
    backbone_note = default_backbone(args, method)
    scorer = load_scorer(args, method, values, len(reference_paths))
    stream_config = streaming.configure({o.dest: given[o.dest] for o in streaming.options if o.dest in given},
                                        scorer.config)
    references, category = None, "stream"
    if streaming.references:
        category = args.category if args.category != "all" else (
            args.data.absolute().name if str(args.data) != "-" else "object")
        if reference_paths:
            references, _ = decode_batch(reference_paths, scorer.prep, scorer.backbone.image_size)
    threshold = stream_threshold(args, scorer, references, reference_paths, category)
    streamer = Streamer(scorer, stream_config, given.get("stream_batch", 1), references, category)
    results = ResultsFile(Path(out) / "results.json", {
        "mode": "stream", "method": method.name, "method_config": experiment.config_object(scorer.config),
        "stream_config": repr(stream_config), "config": experiment.jsonable_config(given),
        "environment": report.environment_info(), "category": "stream",
        "threshold": None if threshold is None else {**threshold.to_json(), "describe": threshold.describe()}})
    source_kind = ("standard input" if str(args.data) == "-" else "a folder, oldest first" if args.data.is_dir()
                   else "a list file")
    against = (f"each arrival against {len(references)} reference images from {args.stream_references}"
               if references is not None else "each arrival against the images that arrived before it"
               if not streaming.references else "each arrival against the prompts alone (zero-shot)")

    def announce(resumed: int | None) -> None:
        print(f"method: {method.name} (stream) | batch: {streamer.batch} | {stream_config} | data: {args.data} "
              f"({source_kind})" + (f" | resuming after {resumed} images" if resumed else ""))
        print(f"scores: {against}" + (f" | prompts name the object {category!r}" if method.needs_text else "")
              + f" | verdict: {'threshold ' + threshold.describe() if threshold is not None else 'none'}")
        print(f"backbone: {scorer.backbone.describe()} | device: {jax_device_kind()}")
        if backbone_note:
            print(f"backbone: {backbone_note}")

    from jzad.data.arrivals import output_namer
    from jzad.eval.outputs import HeatmapStyle

    options = {"threshold": threshold, "output_name": output_namer(args.data),
               "echo": None if args.quiet else sys.stdout, "heatmap_size": args.heatmap_size,
               "heatmaps": HeatmapStyle(method.score_units, method.distance_scores, scorer.backbone.random_weights)
               if "heatmaps" in given else None}
    summary, csv_path = experiment.run_stream_experiment(
        streamer, arrivals(args.data), out, results, state_dir=state_dir, done=done,
        checkpoint_every=given.get("checkpoint_every", CHECKPOINT_EVERY), save_maps=args.save_maps,
        maps_at_image_size=args.maps_at_image_size, replay=str(args.data) != "-",
        announce=announce, outputs_options=options)
    stats = results.payload["stream"]
    after = (f" (first batch {1e3 * summary.first_batch_seconds:.0f} ms, compilation included; after it median "
             f"{stats['latency_ms_median_after_first_batch']:.1f} ms, "
             f"p95 {stats['latency_ms_p95_after_first_batch']:.1f} ms)" if summary.batches > 1 else "")
    print(f"{summary.images} images in {summary.batches} batches: latency median {stats['latency_ms_median']:.1f} "
          f"ms, p95 {stats['latency_ms_p95']:.1f} ms{after}; {stats['images_per_s']:.2f} images/s "
          f"({stats['images_per_s_after_first_batch']:.2f} after the first batch); {summary.warming} warming, "
          f"{summary.banked} banked")
    print(f"wrote {out}: results.json, {csv_path.name}" + (", maps/" if args.save_maps else "")
          + (", heatmaps/" if "heatmaps" in given else ""))
    return 130 if summary.interrupted else 0


def stream_threshold(args, scorer, references, reference_paths, category: str):
    """The verdict threshold of a stream: --threshold (its normalised score on a unit range), --threshold-from
    (an earlier run's, with its range; --category picks one of several saved categories), else the quantile of
    the stream references' leave-one-out scores; None without any (zero-shot streams: give --threshold or
    --threshold-from)."""
    from jzad.eval import verdict
    from jzad.reference_scores import ReferencesTooFew, leave_one_out_scores

    if args.threshold is not None:
        return verdict.Threshold(float(args.threshold), "given", float(args.threshold), float(args.threshold))
    if args.threshold_from is not None:
        try:
            named = args.category if args.category != "all" else category
            return verdict.threshold_from_results(args.threshold_from, scorer.method.name, named)
        except ValueError as err:
            raise UserError(in_flag_terms(str(err))) from err
    if references is None or len(references) < 2:
        return None
    source = jdata.ArrayImages(references, [str(p) for p in reference_paths], np.zeros(len(references), np.int64),
                               ("good",) * len(references))
    try:
        loo = leave_one_out_scores(scorer, source, category)
    except ReferencesTooFew as err:
        print(f"warning: {err}", file=sys.stderr)
        return None
    return None if loo is None else verdict.choose_threshold(loo, None, loo)


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
