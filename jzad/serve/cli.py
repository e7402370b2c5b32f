"""Command line of the inspection service: options, the scorer (through ``jzad.run``'s own option handling),
the references, the store, and uvicorn with a SIGTERM that drains and checkpoints before exit."""

from __future__ import annotations

import argparse
import ipaddress
import math
import os
import signal
import sys
from pathlib import Path

from jzad.cli import UserError, build_parser, check_options, in_flag_terms, load_scorer, number_type, positive_int
from jzad.eval.verdict import REFERENCE_QUANTILE
from jzad.methods import OptionError
from jzad.stream_cli import stream_reference_paths

DEMO_REFERENCES = 4
TOKEN_ENV = "JZAD_SERVE_TOKEN"
RUN_OPTIONS_REFUSED = ("data", "dataset", "out", "overwrite", "save_maps", "maps_at_image_size", "no_heatmaps",
                       "heatmap_size", "stream", "infer_labels", "allow_missing_masks", "aupro", "coordinator",
                       "num_processes", "process_id", "quiet")
"""``jzad.run`` options that mean nothing to the service (they are refused by name)."""


_non_negative_float = number_type(float, "a number >= 0", lambda value: value >= 0)
_finite_float = number_type(float, "a finite number", math.isfinite)


def build_serve_parser() -> argparse.ArgumentParser:
    """The service's own options; every other option is ``python -m jzad.run``'s (method, backbone, stream)."""
    p = argparse.ArgumentParser(
        prog="python -m jzad.serve",
        description="Score images over HTTP as they arrive (POST /score), with a live page (GET /), Prometheus "
        "metrics (GET /metrics) and overlays (GET /maps/<id>.png). Method, backbone and stream options are those "
        "of python -m jzad.run (--backbone, --weights, --image-size, --seed, --precision, the method's options, "
        "the stream options of MuSc/FSLC).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--method", required=True, help="a method that streams (python -m jzad.run --help lists them)")
    p.add_argument("--references", type=Path, default=None, metavar="FOLDER_OR_LIST",
                   help="few-shot methods: the normal reference images, fitted once at start-up")
    p.add_argument("--demo", action="store_true",
                   help="built-in demo: the method's random-weight demo backbone and, for few-shot methods, "
                   f"{DEMO_REFERENCES} synthetic normal images as references")
    p.add_argument("--threshold", type=_finite_float, default=None,
                   help="raw image score at and above which an image is anomalous (normalised to 0.5); default: "
                   f"the {REFERENCE_QUANTILE:g} quantile of leave-one-out reference scores (few-shot methods)")
    p.add_argument("--threshold-from", type=Path, default=None, metavar="RESULTS",
                   help="the threshold an earlier run of the same method saved in its results.json")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (loopback by default)")
    p.add_argument("--port", type=int, default=8000, help="TCP port")
    p.add_argument("--token", default=None,
                   help=f"require 'Authorization: Bearer TOKEN' on every endpoint (default: ${TOKEN_ENV} if set)")
    p.add_argument("--max-batch", type=positive_int, default=8, help="most images scored in one device batch")
    p.add_argument("--max-wait-ms", type=_non_negative_float, default=10.0,
                   help="longest an image waits for others to fill its batch")
    p.add_argument("--queue-size", type=positive_int, default=256,
                   help="images that may wait; beyond it requests get 503 with Retry-After")
    p.add_argument("--max-bytes", type=positive_int, default=20 * 1024 * 1024, help="largest image file")
    p.add_argument("--max-images", type=positive_int, default=64, help="most images in one request")
    p.add_argument("--store", type=Path, default=Path("jzad-serve"),
                   help="the service's folder: overlays (maps/), the checkpointed state (state/), scratch")
    p.add_argument("--keep-maps", type=positive_int, default=1000, help="overlays kept in the store")
    p.add_argument("--checkpoint-every-s", type=_non_negative_float, default=60.0,
                   help="seconds between state checkpoints (0: only at shutdown); a restart continues from the last")
    p.add_argument("--category", default="object",
                   help="the object's name (WinCLIP's prompts; recorded in the checkpoint signature)")
    return p


def build_service(argv: list[str]):
    """(service, serve options) from the command line; user errors raise ``UserError``/``OptionError``."""
    from jzad.data import make_synthetic_set
    from jzad.methods import get_method, get_streaming, streaming_names
    from jzad.serve.app import Service, ServiceSettings
    from jzad.eval.verdict import choose_threshold, threshold_from_results
    from jzad.serve.engine import Inspector, MapStore, reference_scores
    from jzad.stream import Streamer, decode_batch

    serve, rest = build_serve_parser().parse_known_args(argv)
    if serve.method not in streaming_names():
        raise OptionError(f"--method: {serve.method!r} does not stream; expected one of {', '.join(streaming_names())}")
    run_parser = build_parser()
    store = serve.store.absolute()
    run_args = run_parser.parse_args(["--method", serve.method, "--stream", "--data", str(store),
                                      "--stream-batch", str(serve.max_batch), *rest])
    for dest in RUN_OPTIONS_REFUSED:
        if dest not in ("data", "stream", "method") and getattr(run_args, dest, None) != run_parser.get_default(dest):
            raise OptionError(f"--{dest.replace('_', '-')} does not apply to python -m jzad.serve")
    for dest in ("stream_state", "stream_references", "checkpoint_every", "shots", "seeds", "subsets"):
        if dest in vars(run_args):
            raise OptionError(f"--{dest.replace('_', '-')} does not apply to python -m jzad.serve (see --help)")
    method = get_method(serve.method)
    streaming = get_streaming(method.name)
    if serve.references is not None and not streaming.references:
        raise OptionError(f"--references does not apply to --method {method.name} (it scores against its own "
                          "arrivals)")
    if serve.references is not None and serve.demo:
        raise OptionError("--references and --demo exclude each other (the demo brings synthetic references)")
    if streaming.references and method.few_shot == "required" and serve.references is None and not serve.demo:
        raise OptionError(f"--method {method.name} scores against normal reference images: give --references "
                          "FOLDER_OR_LIST (or --demo)")
    if serve.threshold is not None and serve.threshold_from is not None:
        raise OptionError("--threshold and --threshold-from exclude each other")
    if serve.threshold is None and serve.threshold_from is None and not (streaming.references and (
            serve.references is not None or serve.demo)):
        raise OptionError(f"--method {method.name} has no reference images to draw a threshold from: give "
                          "--threshold or --threshold-from RESULTS")
    if serve.token is None:
        serve.token = os.environ.get(TOKEN_ENV) or None
    if serve.token is not None and not serve.token.strip():
        raise OptionError("--token: expected a non-empty token")
    if streaming.references and (serve.references is not None or serve.demo):
        run_args.stream_references = serve.references or store
    values = check_options(run_args, method)
    try:
        reference_paths = stream_reference_paths(serve.references) if serve.references is not None else []
    except UserError as err:  # the same check as the CLI stream's, named by this command's flag
        raise UserError(str(err).replace("--stream-references", "--references")) from err
    if serve.demo:
        run_args.data = None
    if run_args.shards is None:
        run_args.shards = 1
    shots = len(reference_paths) or (DEMO_REFERENCES if serve.demo and streaming.references else 0)
    scorer = load_scorer(run_args, method, values, shots)
    stream_config = streaming.configure({o.dest: vars(run_args)[o.dest] for o in streaming.options
                                         if o.dest in vars(run_args)}, scorer.config)
    size = scorer.backbone.image_size
    references = None
    if reference_paths:
        references, _ = decode_batch(reference_paths, scorer.prep, size)
    elif serve.demo and streaming.references:
        references = make_synthetic_set(DEMO_REFERENCES, 0, size=size, seed=run_args.seed)[0]
    streamer = Streamer(scorer, stream_config, serve.max_batch, references, serve.category)
    if serve.threshold_from is not None:
        threshold = threshold_from_results(serve.threshold_from, method.name, serve.category)
    else:
        loo = reference_scores(streamer) if references is not None else None
        threshold = choose_threshold(loo if loo is not None else [serve.threshold], reference_scores=loo,
                                     given=serve.threshold)
    inspector = Inspector(streamer, threshold,
                          MapStore(store / "maps", serve.keep_maps), store / "state")
    settings = ServiceSettings(max_bytes=serve.max_bytes, max_images=serve.max_images, token=serve.token,
                               method=method.name, backbone=scorer.backbone.describe())
    options = {"max_batch": serve.max_batch, "max_wait_s": serve.max_wait_ms / 1e3, "queue_size": serve.queue_size,
               "checkpoint_every_s": serve.checkpoint_every_s}
    return Service(inspector, options, settings), serve


SERVICE_FLAGS = {"references": "--references", "keep": "--keep-maps", "max_batch": "--max-batch"}
"""Argument names the service library's errors start with -> the flag that sets them."""


def in_service_flags(message: str) -> str:
    """A library error worded with this command's flag for the argument it names first (as ``jzad.cli.in_flag_terms``
    does for ``jzad.run``)."""
    for name, flag in SERVICE_FLAGS.items():
        if message.startswith(f"{name}:"):
            return flag + message[len(name):]
    return in_flag_terms(message)


def main(argv: list[str] | None = None) -> int:
    """Entry point: build the service, then serve until SIGINT/SIGTERM (drain, checkpoint, exit 0)."""
    import uvicorn

    from jzad.serve.app import build_app

    argv = sys.argv[1:] if argv is None else argv
    try:
        service, serve = build_service(argv)
    except (UserError, OptionError, ValueError, FileNotFoundError) as err:
        print(f"python -m jzad.serve: error: {in_service_flags(str(err))}", file=sys.stderr)
        return 2
    try:
        loopback = ipaddress.ip_address(serve.host).is_loopback
    except ValueError:
        loopback = serve.host == "localhost"
    if not loopback and service.settings.token is None:
        print(f"warning: binding {serve.host} without --token: anyone who reaches it can score and read maps",
              file=sys.stderr)
    inspector = service.inspector
    print(f"method: {service.settings.method} | backbone: {service.settings.backbone} | threshold: "
          f"{inspector.threshold.describe()} | max batch {serve.max_batch}, wait {serve.max_wait_ms:g} ms, "
          f"queue {serve.queue_size} | store: {inspector.maps.folder.parent}"
          + (f" | resumed after {inspector.done} images" if inspector.done else ""), flush=True)

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame):
            service.closing = True  # live pages end their event streams, so the graceful shutdown can finish
            super().handle_exit(sig, frame)

    config = uvicorn.Config(build_app(service), host=serve.host, port=serve.port, log_level="warning",
                            lifespan="on", timeout_keep_alive=5)
    server = Server(config)
    for sig in (signal.SIGINT, signal.SIGTERM):  # uvicorn re-raises the signal it handled to these handlers after
        signal.signal(sig, lambda number, frame: None)  # its graceful shutdown: we exit 0 after the checkpoint instead
    server.run()
    print(f"stopped after {inspector.done} images; state checkpointed in {inspector.state_dir}", flush=True)
    return 0
