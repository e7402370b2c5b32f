"""Streaming: score images as they arrive, in batches of b, against a bounded memory carried between batches.

    streamer = Streamer(scorer, stream_config, batch=1)   # scorer: a pipeline.Scorer (method, config, backbone)
    state = streamer.init()
    scores, state = streamer.step(state, images)          # uint8 (n <= b, S, S, 3) -> StreamScores of b rows

The method's streaming functions (``jzad.methods.get_streaming``: MuSc's bank, FSLC's coreset) are pure; this
module only drives them. ``run_stream`` takes arrivals (``jzad.data.arrivals``: a folder by modification time, a
list file, standard input), decodes each batch, pads it to b (one compiled shape for the whole stream), extracts,
steps, and appends each result to the scores CSV, flushed (and the maps with ``save_maps``); latency per image
is arrival (read from its source) to its score, ready to be written. ``StreamCheckpoints`` (orbax's
``CheckpointManager``; ``save_state`` / ``restore_state`` for one call) checkpoints the state in the background so
a restarted process continues the stream where it stopped, with the same scores as an uninterrupted run (same
batch size: arrivals of one batch see each other). Host memory does not
grow with the stream (beyond 8 bytes of latency per image); device memory is the method's memory plus one batch.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import os
import time
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np

from jzad.data.decode import load_image
from jzad.data.sources import prepare_image
from jzad.eval.outputs import save_map_tiffs
from jzad.methods.base import StreamScores, check_finite, get_streaming
from jzad.pipeline import Scorer

CHECKPOINT_EVERY = 100
"""Batches between stream checkpoints by default (and one at the end): a checkpoint writes the whole state, so
saving after every batch made the latency tail (benchmarks/stream_scale.py)."""
CSV_NAME = "scores_stream.csv"
CSV_COLUMNS = ("index", "name", "score", "warming", "banked", "latency_ms", "anomalous", "normalised_score")
MAPS_DIR = "stream"


@dataclass(frozen=True, eq=False)
class Streamer:
    """A method bound to its config and backbone (``scorer``), its stream config and the batch size b.

    Few-shot methods (``Streaming.references``) also take ``references``, the decoded normal reference images
    (uint8 (k, S, S, 3); None for a zero-shot WinCLIP stream), fitted once in ``init``, and ``category``, the
    name ``prepare`` gets (WinCLIP's object word unless ``--class-name`` sets it)."""

    scorer: Scorer
    stream_config: Any
    batch: int = 1
    references: Any = None
    category: str = "stream"

    def __post_init__(self):
        if isinstance(self.batch, bool) or not isinstance(self.batch, int) or self.batch < 1:
            raise ValueError(f"batch: expected an integer >= 1, got {self.batch!r}")

    @property
    def streaming(self):
        """The method's streaming functions."""
        return get_streaming(self.scorer.method.name)

    def extract(self, images) -> Any:
        """uint8 (b, S, S, 3) -> Features as the method's streaming step asks for them."""
        method, config, backbone = self.scorer.method, self.scorer.config, self.scorer.backbone
        if method.extractor is not None:
            return method.extractor(config, backbone)(images)
        return backbone(images, self.streaming.request(config))

    def init(self):
        """An empty state for batches of b images (shapes from an abstract pass of the backbone)."""
        size = self.scorer.backbone.image_size
        shapes = jax.eval_shape(self.extract, jax.ShapeDtypeStruct((self.batch, size, size, 3), jnp.uint8))
        if not self.streaming.references:
            return self.streaming.init(self.scorer.config, self.stream_config, shapes, self.scorer.mesh)
        method, config, backbone = self.scorer.method, self.scorer.config, self.scorer.backbone
        prepared = method.prepare(config, backbone, self.category)
        references = None
        if self.references is not None:
            references = self.extract(np.asarray(self.references))
            check_finite(references, None, "reference features")
        return self.streaming.init(config, self.stream_config, shapes, self.scorer.mesh, references=references,
                                   prepared=prepared)

    def step(self, state, images: np.ndarray, names=None) -> tuple[StreamScores, Any]:
        """Score n <= b decoded images (uint8 (n, S, S, 3)) -> (StreamScores of b rows, the first n real, state).

        Non-finite features raise ValueError naming the images (``names``).
        """
        n = len(images)
        if not 1 <= n <= self.batch:
            raise ValueError(f"step: expected 1..{self.batch} images (the batch size), got {n}")
        if n < self.batch:
            images = np.concatenate([images, np.zeros((self.batch - n,) + images.shape[1:], images.dtype)])
        features = self.extract(images)
        check_finite(features, names, count=n)  # the whole padded batch: slicing the n real rows compiled per n
        valid = np.arange(self.batch) < n
        return self.streaming.step(self.scorer.config, self.stream_config, state, features, valid, self.scorer.mesh)

    def signature(self) -> dict:
        """What a checkpointed state depends on: restoring it under another signature is refused."""
        backbone = self.scorer.backbone
        return {"method": self.scorer.method.name, "method_config": repr(self.scorer.config),
                "stream_config": repr(self.stream_config), "batch": self.batch, "backbone": backbone.name,
                "weights": backbone.origin, "image_size": backbone.image_size, "taps": list(backbone.taps),
                "dtype": backbone.dtype, "references": self._references_digest(), "category": self.category}

    def _references_digest(self) -> str | None:
        if self.references is None:
            return None
        images = np.ascontiguousarray(self.references)
        return f"{len(images)} images, sha256 {hashlib.sha256(images.tobytes()).hexdigest()[:16]}"


# --------------------------------------------------------------------------------------------- checkpoints


class StreamCheckpoints:
    """The stream-state checkpoints in one folder, kept by orbax's ``CheckpointManager``: one step per
    checkpoint, numbered by the images done, the newest ``keep`` kept, each holding the state's leaves and the
    stream's signature (JSON). ``save`` returns once the state is copied off the device (so the next step may
    donate its buffers) and writes to disk in the background; ``wait`` blocks until every save is on disk;
    ``close`` waits, then releases the manager. Used from one thread at a time (orbax's manager is not
    thread-safe)."""

    def __init__(self, directory: str | os.PathLike, keep: int = 1):
        import orbax.checkpoint as ocp

        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
            raise ValueError(f"keep: expected an integer >= 1 checkpoints to keep, got {keep!r}")
        self.directory = Path(directory).absolute()
        refuse_older_layout(self.directory)
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=True)
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "signature"))

    @property
    def latest(self) -> int | None:
        """The image count of the newest checkpoint (one still being written included), or None."""
        return self._manager.latest_step()

    def save(self, state, done: int, signature: dict) -> Path:
        """Start checkpointing ``state`` after ``done`` images with its ``signature``; returns the step's folder
        once the arrays are off the device (the write goes on in the background). Saving the newest step again
        does nothing (the same images give the same state); a step older than the newest raises ValueError."""
        import orbax.checkpoint as ocp

        latest = self.latest
        if latest is not None and done <= latest:
            if done < latest:
                raise ValueError(f"state_dir: {self.directory} holds a checkpoint after {latest} images, newer than "
                                 f"this stream's {done}")
            return self.step_path(done)
        leaves = {f"{i:04d}": leaf for i, leaf in enumerate(jax.tree.leaves(state))}
        self._manager.save(done, args=ocp.args.Composite(state=ocp.args.StandardSave(leaves),
                                                         signature=ocp.args.JsonSave(signature)))
        return self.step_path(done)

    def step_path(self, done: int) -> Path:
        """The folder of the checkpoint after ``done`` images."""
        return self.directory / str(done)

    def restore(self, like, signature: dict) -> tuple[Any, int]:
        """(state, images done) from the newest checkpoint; ``like`` is a state of the same structure and
        placement (``Streamer.init()``). A checkpoint written under another signature raises ValueError
        naming the differing fields."""
        import orbax.checkpoint as ocp

        self.wait()
        done = self.latest
        if done is None:
            raise ValueError(f"state_dir: no checkpoint in {self.directory}")
        if not (self.step_path(done) / "signature").is_dir():
            raise ValueError(f"state_dir: the checkpoint {self.step_path(done)} holds no stream signature (not "
                             "written by a jzad stream); remove the folder to start the stream again")
        recorded = self._manager.restore(done, args=ocp.args.Composite(signature=ocp.args.JsonRestore())).signature
        differing = sorted(k for k in set(signature) | set(recorded) if recorded.get(k) != signature.get(k))
        if differing:
            detail = "; ".join(f"{k}: {recorded.get(k)!r} there, {signature.get(k)!r} now" for k in differing[:3])
            raise ValueError(f"state_dir: the checkpoint in {self.directory} belongs to another stream set-up "
                             f"({detail})")
        leaves, treedef = jax.tree.flatten(like)
        abstract = {f"{i:04d}": jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=getattr(leaf, "sharding", None))
                    for i, leaf in enumerate(leaves)}
        restored = self._manager.restore(done, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))
        return jax.tree.unflatten(treedef, [restored.state[f"{i:04d}"] for i in range(len(leaves))]), done

    def wait(self) -> None:
        """Block until every started save is on disk (and older checkpoints beyond ``keep`` are removed)."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Wait for the saves, then release the manager's threads."""
        self._manager.close()

    def __enter__(self) -> "StreamCheckpoints":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def refuse_older_layout(directory: Path) -> None:
    """Raise ValueError when ``directory`` holds a checkpoint in the layout of jzad before orbax's manager kept
    them (``stream.json`` beside zero-padded step folders), which the manager would not see."""
    if (directory / "stream.json").is_file():
        raise ValueError(f"state_dir: {directory} holds a stream checkpoint in an older jzad layout, which this "
                         "version does not read; remove the folder to start the stream again")


def save_state(directory: str | os.PathLike, state, done: int, signature: dict) -> Path:
    """Checkpoint ``state`` after ``done`` images under ``directory`` with its ``signature`` and wait until it
    is on disk (``StreamCheckpoints`` saves in the background); older checkpoints are removed."""
    with StreamCheckpoints(directory) as checkpoints:
        return checkpoints.save(state, done, signature)


def has_checkpoint(directory: str | os.PathLike) -> int | None:
    """The image count of the newest complete checkpoint under ``directory``, or None when there is none (safe
    to call while another thread or process writes one)."""
    import orbax.checkpoint as ocp

    directory = Path(directory).absolute()
    if not directory.is_dir():
        return None
    refuse_older_layout(directory)
    latest = ocp.path.step.latest_step_metadata(directory, ocp.path.step.standard_name_format())
    return None if latest is None else latest.step


def restore_state(directory: str | os.PathLike, like, signature: dict) -> tuple[Any, int]:
    """(state, images done) from the newest checkpoint under ``directory`` (``StreamCheckpoints.restore``)."""
    directory = Path(directory).absolute()
    if has_checkpoint(directory) is None:
        raise ValueError(f"state_dir: no checkpoint in {directory}")
    with StreamCheckpoints(directory) as checkpoints:
        return checkpoints.restore(like, signature)


# --------------------------------------------------------------------------------------------- outputs


class StreamOutputs:
    """``scores_stream.csv`` under ``out`` (columns ``CSV_COLUMNS``), appended and flushed batch by batch, and
    with ``save_maps`` one float32 TIFF per image under maps/stream/ (at each image's original size with
    ``maps_at_image_size``). ``keep`` > 0 continues a checkpointed stream: the CSV keeps its first ``keep``
    rows (rows written after the checkpoint are dropped) and ``names`` lists them.

    A row with nothing to compare yet (a zero-shot stream's first arrival: the method returns NaN) is written
    with score 0.0 ("no evidence") and warming 1, so the CSV never holds NaN. ``threshold``
    (``jzad.eval.verdict.Threshold``) fills ``anomalous`` and ``normalised_score`` (empty without one; warming rows
    are never flagged). ``output_name`` maps an arrival's name to the relative path of its map TIFF and
    heatmap (``jzad.data.arrivals.output_namer``). ``heatmaps`` (a ``HeatmapStyle``) writes a captioned overlay
    per image under heatmaps/stream/ at ``heatmap_size``, on the threshold's score range when there is one (the
    same colours for every image), else on each batch's range (said on the bar). ``echo``: a text stream that
    gets one line per image (index, name, score, verdict or warming)."""

    def __init__(self, out: str | os.PathLike, save_maps: bool = False, maps_at_image_size: bool = False,
                 keep: int = 0, threshold=None, output_name: Callable[[str], str] | None = None, heatmaps=None,
                 heatmap_size: int = 256, echo=None):
        self.out = Path(out)
        self.path = self.out / CSV_NAME
        self.save_maps = save_maps
        self.maps_at_image_size = maps_at_image_size
        self.threshold = threshold
        self.output_name = output_name or str
        self.heatmaps = heatmaps
        self.heatmap_size = heatmap_size
        self.echo = echo
        self.names: list[str] = []
        rows = []
        if keep:
            rows = self._read_rows()
            if len(rows) < keep:
                raise ValueError(f"{self.path}: {len(rows)} rows, but the stream checkpoint covers {keep} images")
            rows = rows[:keep]
            self.names = [row[1] for row in rows]
        self.out.mkdir(parents=True, exist_ok=True)
        temp = self.path.with_name(self.path.name + ".tmp")
        with temp.open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(CSV_COLUMNS)
            writer.writerows(rows)
        os.replace(temp, self.path)
        self._file = self.path.open("a", newline="", encoding="utf-8")
        self._writer = csv.writer(self._file)

    @property
    def wants_maps(self) -> bool:
        """Whether ``write`` needs the batch's maps (TIFFs or heatmaps)."""
        return self.save_maps or self.heatmaps is not None

    def _read_rows(self) -> list[list[str]]:
        if not self.path.is_file():
            raise ValueError(f"{self.path}: missing; a resumed stream continues its scores CSV")
        with self.path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
        if not rows or tuple(rows[0]) != CSV_COLUMNS:
            raise ValueError(f"{self.path}: expected the header {','.join(CSV_COLUMNS)}")
        return rows[1:]

    def write(self, first: int, names, scores: np.ndarray, warming: np.ndarray, banked: np.ndarray,
              latency_s: np.ndarray, maps: np.ndarray | None = None, sizes=None, images=None) -> None:
        """Append one batch of results (row indices first, first + 1, ...) and flush; maps (n, S, S) or None;
        images uint8 (n, S, S, 3) for the heatmaps, or None."""
        from jzad.eval import verdict

        scores = np.asarray(scores, np.float64)
        empty = ~np.isfinite(scores)
        scores = np.where(empty, 0.0, scores)
        warming = np.asarray(warming, bool) | empty
        flagged = normalised = None
        if self.threshold is not None:
            flagged = verdict.anomalous(scores, self.threshold) & ~warming
            normalised = verdict.normalised_scores(scores, self.threshold)
        relative = [self.output_name(str(n)) for n in names]
        if maps is not None:
            maps = np.where(np.isfinite(maps), maps, 0.0).astype(np.float32)
        if self.save_maps and maps is not None:
            save_map_tiffs(self.out / "maps" / MAPS_DIR, relative, maps, sizes if self.maps_at_image_size else None)
        if self.heatmaps is not None and maps is not None and images is not None:
            self._heatmaps(relative, images, maps, scores, normalised, flagged)
        for i, name in enumerate(names):
            verdict_cells = ("", "") if flagged is None else (int(flagged[i]), repr(float(normalised[i])))
            self._writer.writerow((first + i, name, repr(float(scores[i])), int(bool(warming[i])),
                                   int(bool(banked[i])), f"{1e3 * float(latency_s[i]):.3f}", *verdict_cells))
            if self.echo is not None:
                state = ("warming up" if warming[i] else "" if flagged is None
                         else "ANOMALOUS" if flagged[i] else "normal")
                print(f"{first + i} {name} score {scores[i]:.6g}" + (f" {state}" if state else "")
                      + ("" if normalised is None else f" ({normalised[i]:.2f} of 1, threshold 0.5)"),
                      file=self.echo, flush=True)
        self._file.flush()
        self.names.extend(str(n) for n in names)

    def _heatmaps(self, relative, images, maps, scores, normalised, flagged) -> None:
        from jzad.eval.outputs import captioned_panel, caption
        from PIL import Image

        if self.threshold is not None:
            lo, hi, where = self.threshold.lo, self.threshold.hi, "the threshold's score range"
        else:
            lo, hi, where = float(maps.min()), float(maps.max()), "this batch's range"
        style = self.heatmaps
        size = self.heatmap_size
        for i, rel in enumerate(relative):
            pixels = images[i] if images[i].dtype == np.uint8 else np.clip(np.rint(images[i]), 0, 255).astype(np.uint8)
            image = np.asarray(Image.fromarray(pixels).resize((size, size), Image.Resampling.BICUBIC))
            amap = np.asarray(Image.fromarray(maps[i], mode="F").resize((size, size), Image.Resampling.BILINEAR))
            text = caption(rel, float(scores[i]), normalised=None if normalised is None else float(normalised[i]),
                           flagged=None if flagged is None else bool(flagged[i])) + f" | colours: {where}"
            path = self.out / "heatmaps" / MAPS_DIR / (os.path.splitext(rel)[0] + ".png")
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(captioned_panel(image, amap, None, text, lo, hi, style)).save(path, compress_level=1)

    def close(self) -> None:
        """Close the CSV."""
        self._file.close()


# --------------------------------------------------------------------------------------------- driver


@dataclass
class StreamSummary:
    """What a stream run did (this process only): images scored, batches, wall seconds from the first arrival
    to the last flushed row, the first batch's seconds (compilation included) and images, latencies (ms,
    arrival to score), warming and banked counts, the images done (resumed ones included), interrupted."""

    images: int
    batches: int
    seconds: float
    first_batch_seconds: float
    first_batch_images: int
    latency_ms: np.ndarray
    warming: int
    banked: int
    done: int
    interrupted: bool = False

    def report(self) -> dict:
        """Latency median and p95 over every image and after the first batch (its compilation apart: in a short
        stream the first batch alone can be the p95), throughput overall and after the first batch."""
        lat = self.latency_ms
        steady = self.images - self.first_batch_images
        rest = self.seconds - self.first_batch_seconds
        after = lat[self.first_batch_images:]
        return {
            "images": self.images, "batches": self.batches, "done": self.done, "seconds": self.seconds,
            "first_batch_seconds": self.first_batch_seconds,
            "latency_ms_median": float(np.median(lat)) if lat.size else float("nan"),
            "latency_ms_p95": float(np.percentile(lat, 95)) if lat.size else float("nan"),
            "latency_ms_median_after_first_batch": float(np.median(after)) if after.size else float("nan"),
            "latency_ms_p95_after_first_batch": float(np.percentile(after, 95)) if after.size else float("nan"),
            "images_per_s": self.images / self.seconds if self.seconds > 0 else float("nan"),
            "images_per_s_after_first_batch": steady / rest if steady and rest > 0 else float("nan"),
            "warming": self.warming, "banked": self.banked, "interrupted": self.interrupted,
        }


def decode_batch(paths, prep, size: int) -> tuple[np.ndarray, list]:
    """Decode image files to the model input geometry -> (uint8 (n, S, S, 3), each file's (H, W))."""
    images = np.empty((len(paths), size, size, 3), np.uint8)
    sizes = []
    for row, path in enumerate(paths):
        image = load_image(path)
        sizes.append((image.height, image.width))
        images[row] = prepare_image(image, prep, size)
    return images, sizes


def check_replayed(outputs: StreamOutputs, index: int, name) -> None:
    """A resumed stream replays its arrivals: arrival ``index`` must have the name of the CSV's row ``index``."""
    if outputs.names[index] != str(name):
        raise ValueError(f"state_dir: arrival {index} is {name!r}, but the checkpointed stream scored "
                         f"{outputs.names[index]!r} there; a resumed stream must replay the same arrivals")


@dataclass(frozen=True)
class BatchTiming:
    """Where one stream batch's wall time went, in seconds: ``waiting`` from its first arrival until it was
    full (or the arrivals ended), then ``decode``, ``step`` (extraction, the method's step and the maps until
    the scores are on the host), ``outputs`` (CSV rows, map files) and ``checkpoint`` (the part of a save that
    holds the stream: copying the state off the device; about 0 when none was due, ``checkpointed`` says
    whether one was). ``index`` counts this process's batches from 0; ``done`` is the image count after it."""

    index: int
    images: int
    done: int
    checkpointed: bool
    waiting: float
    decode: float
    step: float
    outputs: float
    checkpoint: float

    @property
    def seconds(self) -> float:
        """From the batch's first arrival to its end (checkpoint included)."""
        return self.waiting + self.decode + self.step + self.outputs + self.checkpoint


def run_stream(
    streamer: Streamer,
    arrivals: Iterable[tuple[str, Any]],
    outputs: StreamOutputs,
    state=None,
    done: int = 0,
    state_dir: str | os.PathLike | None = None,
    checkpoint_every: int = CHECKPOINT_EVERY,
    on_batch: Callable[[int], None] | None = None,
    decode: Callable | None = None,
    replay: bool = True,
    on_timing: Callable[[BatchTiming], None] | None = None,
) -> tuple[StreamSummary, Any]:
    """Score ``arrivals`` ((name, path) pairs, in arrival order) batch by batch -> (summary, final state).

    ``state`` None starts empty. A resumed stream (``done`` > 0, ``outputs`` holding the first ``done`` rows)
    either replays its arrivals from the start (``replay``: a folder or a list, the first ``done`` are skipped
    after checking that their names match the CSV's rows) or continues with whatever arrives next (a live
    feed); rows are numbered from ``done`` either way. With ``state_dir`` the state is checkpointed
    (``StreamCheckpoints``, written in the background) every ``checkpoint_every`` batches and at the end; the
    run returns once the last checkpoint is on disk. ``decode(items) -> (uint8 (n, S, S, 3), sizes)`` defaults
    to decoding the paths from disk; ``on_timing`` gets each batch's ``BatchTiming``; Ctrl-C ends the stream
    after the batch in progress (``interrupted``).
    """
    if isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, int) or checkpoint_every < 1:
        raise ValueError(f"checkpoint_every: expected an integer >= 1 batches, got {checkpoint_every!r}")
    scorer = streamer.scorer
    size = scorer.backbone.image_size
    decode = decode or (lambda paths: decode_batch(paths, scorer.prep, size))
    state = streamer.init() if state is None else state
    signature = streamer.signature()
    latencies = array("d")
    counts = {"images": 0, "batches": 0, "warming": 0, "banked": 0}
    timing = {"start": None, "first": 0.0}
    pending: list[tuple[str, Any, float]] = []

    def flush_batch(checkpoints):
        nonlocal state, done
        names = [p[0] for p in pending]
        clock = [time.perf_counter()]
        images, sizes = decode([p[1] for p in pending])
        clock.append(time.perf_counter())
        scores, state_next = streamer.step(state, images, names)
        n = len(pending)
        image_scores = np.asarray(scores.image_scores)[:n]
        maps = None
        if outputs.wants_maps:
            maps = np.asarray(scorer.method.maps(scorer.config, scores.patch_scores, (size, size)))[:n]
        warming, banked = np.asarray(scores.warming)[:n], np.asarray(scores.banked)[:n]
        clock.append(time.perf_counter())
        waited = clock[-1] - np.asarray([p[2] for p in pending])
        outputs.write(done, names, image_scores, warming, banked, waited, maps, sizes, images[:n])
        latencies.extend(1e3 * waited)
        state, done = state_next, done + n
        counts["images"] += n
        counts["batches"] += 1
        counts["warming"] += int(warming.sum())
        counts["banked"] += int(banked.sum())
        if counts["batches"] == 1:
            timing["first"] = time.perf_counter() - timing["start"]
        clock.append(time.perf_counter())
        due = checkpoints is not None and counts["batches"] % checkpoint_every == 0
        if due:
            checkpoints.save(state, done, signature)
        clock.append(time.perf_counter())
        if on_timing is not None:
            on_timing(BatchTiming(counts["batches"] - 1, n, done, due, clock[0] - pending[0][2],
                                  *(b - a for a, b in zip(clock, clock[1:]))))
        pending.clear()
        if on_batch is not None:
            on_batch(done)

    skip = done if replay else 0
    first_batch = 0
    interrupted = False
    with StreamCheckpoints(state_dir) if state_dir is not None else contextlib.nullcontext() as checkpoints:
        try:
            for index, (name, item) in enumerate(arrivals):
                arrived = time.perf_counter()
                if index < skip:
                    check_replayed(outputs, index, name)
                    continue
                if timing["start"] is None:
                    timing["start"] = arrived
                pending.append((str(name), item, arrived))
                if len(pending) == streamer.batch:
                    first_batch = first_batch or len(pending)
                    flush_batch(checkpoints)
            if pending:
                first_batch = first_batch or len(pending)
                flush_batch(checkpoints)
        except KeyboardInterrupt:
            interrupted = True
        if checkpoints is not None and counts["images"] and counts["batches"] % checkpoint_every != 0:
            checkpoints.save(state, done, signature)
    seconds = 0.0 if timing["start"] is None else time.perf_counter() - timing["start"]
    summary = StreamSummary(counts["images"], counts["batches"], seconds, timing["first"], first_batch,
                            np.asarray(latencies, np.float64), counts["warming"], counts["banked"], done, interrupted)
    return summary, state
