"""Streaming: score images as they arrive, in batches of b, against a bounded memory carried between batches.

    streamer = Streamer(scorer, stream_config, batch=1)   # scorer: a pipeline.Scorer (method, config, backbone)
    state = streamer.init()
    scores, state = streamer.step(state, images)          # uint8 (n <= b, S, S, 3) -> StreamScores of b rows

The method's streaming functions (``jzad.methods.get_streaming``: MuSc's bank, FSLC's coreset) are pure; this
module only drives them. ``run_stream`` takes arrivals (``jzad.data.arrivals``: a folder by modification time, a
list file, standard input), decodes each batch, pads it to b (one compiled shape for the whole stream), extracts,
steps, and appends each result to the scores CSV, flushed (and the maps with ``save_maps``); latency per image
is arrival (read from its source) to its score, ready to be written. ``save_state`` / ``restore_state``
checkpoint the state with orbax so a restarted process continues the stream where it stopped, with the same
scores as an uninterrupted run (same batch size: arrivals of one batch see each other). Host memory does not
grow with the stream (beyond 8 bytes of latency per image); device memory is the method's memory plus one batch.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
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
SIGNATURE_FILE = "stream.json"


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
        check_finite(jax.tree.map(lambda a: a[:n], features), names)
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


def _checkpoints(directory: Path) -> list[tuple[int, Path]]:
    if not directory.is_dir():
        return []
    return sorted((int(p.name), p) for p in directory.iterdir() if p.is_dir() and p.name.isdigit())


def save_state(directory: str | os.PathLike, state, done: int, signature: dict) -> Path:
    """Checkpoint ``state`` after ``done`` images under ``directory``/<done> (orbax StandardCheckpointer, an
    absolute path) and record ``signature``; older checkpoints are removed once the new one is complete."""
    import orbax.checkpoint as ocp

    directory = Path(directory).absolute()
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"{done:012d}"
    leaves = {f"{i:04d}": leaf for i, leaf in enumerate(jax.tree.leaves(state))}
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(target, {"done": np.asarray(done, np.int64), "leaves": leaves}, force=True)
    checkpointer.wait_until_finished()
    temp = directory / (SIGNATURE_FILE + ".tmp")
    temp.write_text(json.dumps(signature, indent=2) + "\n", encoding="utf-8")
    os.replace(temp, directory / SIGNATURE_FILE)
    for _, old in _checkpoints(directory):
        if old != target:
            shutil.rmtree(old)
    return target


def has_checkpoint(directory: str | os.PathLike) -> int | None:
    """The image count of the newest checkpoint under ``directory``, or None when there is none."""
    found = _checkpoints(Path(directory).absolute())
    return found[-1][0] if found else None


def restore_state(directory: str | os.PathLike, like, signature: dict) -> tuple[Any, int]:
    """(state, images done) from the newest checkpoint under ``directory``; ``like`` is a state of the same
    structure and placement (``Streamer.init()``). A checkpoint written under another signature raises
    ValueError naming the differing fields."""
    import orbax.checkpoint as ocp

    directory = Path(directory).absolute()
    found = _checkpoints(directory)
    if not found:
        raise ValueError(f"state_dir: no checkpoint in {directory}")
    recorded_path = directory / SIGNATURE_FILE
    recorded = json.loads(recorded_path.read_text(encoding="utf-8")) if recorded_path.is_file() else {}
    differing = sorted(k for k in set(signature) | set(recorded) if recorded.get(k) != signature.get(k))
    if differing:
        detail = "; ".join(f"{k}: {recorded.get(k)!r} there, {signature.get(k)!r} now" for k in differing[:3])
        raise ValueError(f"state_dir: the checkpoint in {directory} belongs to another stream set-up ({detail})")
    leaves, treedef = jax.tree.flatten(like)
    abstract = {"done": np.asarray(0, np.int64),
                "leaves": {f"{i:04d}": jax.ShapeDtypeStruct(leaf.shape, leaf.dtype) for i, leaf in enumerate(leaves)}}
    restored = ocp.StandardCheckpointer().restore(found[-1][1], abstract)
    values = [jax.device_put(restored["leaves"][f"{i:04d}"], leaf.sharding) for i, leaf in enumerate(leaves)]
    return jax.tree.unflatten(treedef, values), int(restored["done"])


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
        """Latency median and p95, throughput overall and after the first batch (compile apart)."""
        lat = self.latency_ms
        steady = self.images - self.first_batch_images
        rest = self.seconds - self.first_batch_seconds
        return {
            "images": self.images, "batches": self.batches, "done": self.done, "seconds": self.seconds,
            "first_batch_seconds": self.first_batch_seconds,
            "latency_ms_median": float(np.median(lat)) if lat.size else float("nan"),
            "latency_ms_p95": float(np.percentile(lat, 95)) if lat.size else float("nan"),
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
) -> tuple[StreamSummary, Any]:
    """Score ``arrivals`` ((name, path) pairs, in arrival order) batch by batch -> (summary, final state).

    ``state`` None starts empty. A resumed stream (``done`` > 0, ``outputs`` holding the first ``done`` rows)
    either replays its arrivals from the start (``replay``: a folder or a list, the first ``done`` are skipped
    after checking that their names match the CSV's rows) or continues with whatever arrives next (a live
    feed); rows are numbered from ``done`` either way. With ``state_dir`` the state is checkpointed every
    ``checkpoint_every`` batches and at the end. ``decode(items) -> (uint8 (n, S, S, 3), sizes)`` defaults to
    decoding the paths from disk; Ctrl-C ends the stream after the batch in progress (``interrupted``).
    """
    scorer = streamer.scorer
    size = scorer.backbone.image_size
    decode = decode or (lambda paths: decode_batch(paths, scorer.prep, size))
    state = streamer.init() if state is None else state
    signature = streamer.signature()
    latencies = array("d")
    counts = {"images": 0, "batches": 0, "warming": 0, "banked": 0}
    timing = {"start": None, "first": 0.0}
    pending: list[tuple[str, Any, float]] = []

    def flush_batch():
        nonlocal state, done
        names = [p[0] for p in pending]
        images, sizes = decode([p[1] for p in pending])
        scores, state_next = streamer.step(state, images, names)
        n = len(pending)
        image_scores = np.asarray(scores.image_scores)[:n]
        maps = None
        if outputs.wants_maps:
            maps = np.asarray(scorer.method.maps(scorer.config, scores.patch_scores, (size, size)))[:n]
        warming, banked = np.asarray(scores.warming)[:n], np.asarray(scores.banked)[:n]
        waited = time.perf_counter() - np.asarray([p[2] for p in pending])
        outputs.write(done, names, image_scores, warming, banked, waited, maps, sizes, images[:n])
        latencies.extend(1e3 * waited)
        state, done = state_next, done + n
        counts["images"] += n
        counts["batches"] += 1
        counts["warming"] += int(warming.sum())
        counts["banked"] += int(banked.sum())
        if counts["batches"] == 1:
            timing["first"] = time.perf_counter() - timing["start"]
        pending.clear()
        if state_dir is not None and counts["batches"] % checkpoint_every == 0:
            save_state(state_dir, state, done, signature)
        if on_batch is not None:
            on_batch(done)

    skip = done if replay else 0
    first_batch = 0
    interrupted = False
    try:
        for index, (name, item) in enumerate(arrivals):
            arrived = time.perf_counter()
            if index < skip:
                if outputs.names[index] != str(name):
                    raise ValueError(f"state_dir: arrival {index} is {name!r}, but the checkpointed stream "
                                     f"scored {outputs.names[index]!r} there; a resumed stream must replay the "
                                     "same arrivals")
                continue
            if timing["start"] is None:
                timing["start"] = arrived
            pending.append((str(name), item, arrived))
            if len(pending) == streamer.batch:
                first_batch = first_batch or len(pending)
                flush_batch()
        if pending:
            first_batch = first_batch or len(pending)
            flush_batch()
    except KeyboardInterrupt:
        interrupted = True
    if state_dir is not None and counts["images"] and counts["batches"] % checkpoint_every != 0:
        save_state(state_dir, state, done, signature)
    seconds = 0.0 if timing["start"] is None else time.perf_counter() - timing["start"]
    summary = StreamSummary(counts["images"], counts["batches"], seconds, timing["first"], first_batch,
                            np.asarray(latencies, np.float64), counts["warming"], counts["banked"], done, interrupted)
    return summary, state
