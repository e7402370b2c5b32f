"""The synchronous core of the inspection service: uploaded bytes -> model inputs, a batch -> scores, overlays
and verdicts, the stream state advanced and checkpointed.

Nothing here is new arithmetic: decoding is ``jzad.data.decode.load_image`` + ``jzad.data.sources.prepare_image``
(every mode rule of the CLI, 16-bit and palette images included), scoring is ``jzad.stream.Streamer.step`` (the
method's own streaming functions), maps are the method's ``maps``, overlays ``jzad.eval.heatmaps.overlay`` and
checkpoints ``jzad.stream.StreamCheckpoints`` (orbax, written in the background) with the threshold stored beside
the stream state.
The ``Inspector`` is driven from one worker thread (``jzad.serve.batcher``), so its state needs no lock.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import os
import secrets
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from jzad.data.decode import load_image
from jzad.data.errors import DataError
from jzad.data.sources import ArrayImages, prepare_image
from jzad.eval.heatmaps import overlay
from jzad.eval.verdict import SOURCES, Threshold, anomalous, normalised_scores
from jzad.reference_scores import leave_one_out_scores
from jzad.stream import StreamCheckpoints, Streamer, has_checkpoint

MAP_ID_HEX = 32
"""Map ids are random hex strings of this length: the only names ``map_path`` resolves."""


class InputError(ValueError):
    """An upload the service refuses (HTTP 4xx): ``kind`` names the class of problem for the metrics and the
    JSON error, ``status`` the HTTP status."""

    def __init__(self, message: str, kind: str, status: int = 400):
        super().__init__(message)
        self.kind = kind
        self.status = status


@dataclass(frozen=True)
class Decoded:
    """One accepted upload: its name, the model input (S, S, 3) and the original (H, W)."""

    name: str
    image: np.ndarray
    size: tuple


@dataclass(frozen=True)
class Result:
    """One scored image, as ``POST /score`` returns it and the live page shows it."""

    index: int
    name: str
    score: float
    normalised: float
    anomalous: bool
    threshold: float
    latency_ms: float
    map_id: str
    warming: bool
    banked: bool
    batch: int
    width: int
    height: int

    def as_json(self) -> dict:
        """The JSON object of this result (the overlay as a URL under /maps). A warming image (MuSc/FSLC before
        their bank holds enough arrivals) may have no score yet: score and normalised score null, verdict
        "warming"."""
        scored = np.isfinite(self.score)
        verdict = ("anomalous" if self.anomalous else "normal") if scored else "warming"
        return {"index": self.index, "name": self.name, "score": self.score if scored else None,
                "normalised_score": self.normalised if scored else None,
                "anomalous": self.anomalous, "verdict": verdict,
                "threshold": self.threshold, "latency_ms": self.latency_ms, "map": f"/maps/{self.map_id}.png",
                "warming": self.warming, "banked": self.banked, "batch": self.batch,
                "width": self.width, "height": self.height}


def decode_upload(data: bytes, name: str, prep, size: int, scratch: Path) -> Decoded:
    """Bytes of one uploaded image -> ``Decoded`` by the CLI's own decoder (the bytes go through a scratch file
    under the service store, removed at once). Anything Pillow cannot decode raises ``InputError`` naming the
    upload."""
    if not data:
        raise InputError(f"{name}: empty upload (expected the bytes of an image file)", "empty")
    scratch.mkdir(parents=True, exist_ok=True)
    handle, path = tempfile.mkstemp(dir=scratch, suffix=".upload")
    try:
        with os.fdopen(handle, "wb") as f:
            f.write(data)
        try:
            image = load_image(path)
            prepared = prepare_image(image, prep, size)
        except DataError as err:
            raise InputError(str(err).replace(path, name), "undecodable") from err
    finally:
        os.unlink(path)
    return Decoded(name, prepared, (image.height, image.width))


def float32_threshold(threshold: Threshold) -> Threshold:
    """``threshold`` with value, lo and hi rounded to float32, the precision the checkpoint keeps them at (so a
    restarted service judges exactly as the one it continues)."""
    return dataclasses.replace(threshold, value=float(np.float32(threshold.value)), lo=float(np.float32(threshold.lo)),
                               hi=float(np.float32(threshold.hi)))


def normalised_maps(maps: np.ndarray, threshold: Threshold) -> np.ndarray:
    """Anomaly maps (n, H, W) normalised as the image scores are (``jzad.eval.verdict.normalised_scores``), so an
    overlay's colours read on the verdict's scale: 0.5 is the threshold."""
    maps = np.asarray(maps, np.float64)
    return normalised_scores(maps.reshape(-1), threshold).reshape(maps.shape).astype(np.float32)


def reference_scores(streamer: Streamer) -> np.ndarray:
    """Leave-one-out scores of the stream's reference images (``jzad.reference_scores``: each scored by the
    method fitted on the others), the rule ``jzad.eval.verdict.reference_threshold`` takes its quantile of.
    Needs at least two references."""
    references = np.asarray(streamer.references)
    if len(references) < 2:
        raise ValueError(f"references: {len(references)} image(s); a threshold from the references needs at "
                         "least 2 (or give a threshold)")
    source = ArrayImages(references, [f"reference {i}" for i in range(len(references))])
    return leave_one_out_scores(streamer.scorer, source, streamer.category)


class MapStore:
    """Overlay PNGs under ``folder``, named by random hex ids; the newest ``keep`` are kept (older files are
    deleted as new ones arrive), so disk use is bounded. ``path(id)`` resolves only ids of that exact form."""

    def __init__(self, folder: str | os.PathLike, keep: int):
        if keep < 1:
            raise ValueError(f"keep: expected an integer >= 1 overlays to keep, got {keep}")
        self.folder = Path(folder).absolute()
        self.folder.mkdir(parents=True, exist_ok=True)
        self.keep = keep
        existing = sorted(self.folder.glob("*.png"), key=lambda p: (p.stat().st_mtime, p.name))
        self._ids = collections.deque(p.stem for p in existing if self.is_id(p.stem))
        self._trim()

    @staticmethod
    def is_id(text: str) -> bool:
        """Whether ``text`` is a map id (``MAP_ID_HEX`` lowercase hex digits)."""
        return len(text) == MAP_ID_HEX and all(c in "0123456789abcdef" for c in text)

    def path(self, map_id: str) -> Path | None:
        """The file of ``map_id``, or None when the id is malformed or its file is gone."""
        if not self.is_id(map_id):
            return None
        path = self.folder / f"{map_id}.png"
        return path if path.is_file() else None

    def add(self, rgb: np.ndarray) -> str:
        """Write one uint8 RGB overlay (atomically) and return its id."""
        map_id = secrets.token_hex(MAP_ID_HEX // 2)
        buffer = io.BytesIO()
        Image.fromarray(rgb).save(buffer, format="PNG")
        temp = self.folder / f".{map_id}.tmp"
        temp.write_bytes(buffer.getvalue())
        os.replace(temp, self.folder / f"{map_id}.png")
        self._ids.append(map_id)
        self._trim()
        return map_id

    def _trim(self) -> None:
        while len(self._ids) > self.keep:
            old = self.folder / f"{self._ids.popleft()}.png"
            old.unlink(missing_ok=True)


def batch_buckets(streamer: Streamer) -> dict[int, Streamer]:
    """Compiled batch sizes -> streamers. Few-shot streams (``Streaming.references``) score each image against
    the fitted references alone and their state does not depend on the batch size, so a partly filled batch runs
    at the next power of two (1, 2, 4, ... b) instead of padded to b; MuSc/FSLC arrivals of one batch see each
    other and their state is laid out for b, so they keep the one batch size b."""
    b = streamer.batch
    if not streamer.streaming.references:
        return {b: streamer}
    sizes = {b} | {1 << k for k in range(b.bit_length()) if 1 << k < b}
    return {size: dataclasses.replace(streamer, batch=size) for size in sorted(sizes)}


class Inspector:
    """The streamer, its state, the threshold and the map store; ``score`` advances the stream by one batch.
    The threshold (a ``jzad.eval.verdict.Threshold``) is kept at float32 precision, as the checkpoint stores it;
    a restored checkpoint's threshold replaces the one given.

    With ``state_dir`` the state and the threshold are checkpointed there (``checkpoint``, written in the
    background; ``close_checkpoints`` waits for them) and a service started on a folder holding a checkpoint
    continues from it (same method set-up, refused otherwise)."""

    def __init__(self, streamer: Streamer, threshold: Threshold, maps: MapStore,
                 state_dir: str | os.PathLike | None, overlay_size: int = 256):
        self.streamer = streamer
        self.buckets = batch_buckets(streamer)
        self.threshold = float32_threshold(threshold)
        self.maps = maps
        self.state_dir = None if state_dir is None else Path(state_dir).absolute()
        self.overlay_size = overlay_size
        self.done = 0
        self.batches = 0
        self.resumed = 0
        self.state = streamer.init()
        resume = self.state_dir is not None and has_checkpoint(self.state_dir) is not None
        self.checkpoints = None if self.state_dir is None else StreamCheckpoints(self.state_dir)
        if resume:
            self._restore()
        self.saved = self.done

    def _restore(self) -> None:
        like = (self.state, jnp.zeros((3,), jnp.float32), jnp.zeros((), jnp.int32))
        (state, values, source), done = self.checkpoints.restore(like, self.signature())
        self.state, self.done, self.resumed = state, done, done
        value, lo, hi = (float(v) for v in np.asarray(values))
        self.threshold = Threshold(value, SOURCES[int(source)], lo, hi, self.threshold.quantile)

    def signature(self) -> dict:
        """The stream's signature (``Streamer.signature``) plus what the service adds to the state."""
        return {**self.streamer.signature(), "service": "jzad.serve", "checkpoint": "stream state, threshold"}

    def checkpoint(self) -> Path | None:
        """Start saving the state, the threshold (value, lo, hi, source) and the image count (orbax, on disk in
        the background once the arrays are off the device); the step's folder, or None without ``state_dir``."""
        if self.state_dir is None:
            return None
        t = self.threshold
        tree = (self.state, jnp.asarray([t.value, t.lo, t.hi], jnp.float32), jnp.asarray(SOURCES.index(t.source),
                                                                                       jnp.int32))
        path = self.checkpoints.save(tree, self.done, self.signature())
        self.saved = self.done
        return path

    def close_checkpoints(self) -> None:
        """Wait until every started checkpoint is on disk and release the checkpoint manager (at shutdown)."""
        if self.checkpoints is not None:
            self.checkpoints.close()

    def bucket(self, n: int) -> Streamer:
        """The streamer of the smallest compiled batch that holds n images."""
        return next(self.buckets[b] for b in sorted(self.buckets) if b >= n)

    def warm_up(self) -> None:
        """Compile what a batch of every fill 1..b runs (the step, the finite check on the real rows, the maps)
        on all-zero images against a copy of the state (the real state is untouched), so no request pays it."""
        scorer = self.streamer.scorer
        size = scorer.backbone.image_size
        for n in range(1, self.streamer.batch + 1):
            copy = jax.tree.map(jnp.copy, self.state)
            scores, _ = self.bucket(n).step(copy, np.zeros((n, size, size, 3), np.uint8), ["warm-up"] * n)
            jax.block_until_ready(scorer.method.maps(scorer.config, scores.patch_scores, (size, size)))

    def score(self, items: list[Decoded], arrived: list[float]) -> list[Result]:
        """Score one batch (arrival order), write its overlays, advance the state -> one ``Result`` each."""
        scorer = self.streamer.scorer
        size = scorer.backbone.image_size
        images = np.stack([item.image for item in items])
        names = [item.name for item in items]
        scores, state = self.bucket(len(items)).step(self.state, images, names)
        n = len(items)
        raw = np.asarray(scores.image_scores, np.float64)[:n]
        warming, banked = np.asarray(scores.warming)[:n], np.asarray(scores.banked)[:n]
        finite = np.isfinite(raw)
        if not (finite | warming).all():
            bad = [names[i] for i in np.flatnonzero(~finite & ~warming)]
            raise ValueError(f"non-finite scores for {', '.join(bad)}")
        maps = np.asarray(scorer.method.maps(scorer.config, scores.patch_scores, (size, size)))[:n]
        maps = np.where(finite[:, None, None], maps, self.threshold.lo)  # a warming image without a score
        self.state = state
        normalised = np.full(n, np.nan)
        flagged = np.zeros(n, bool)
        if finite.any():
            normalised[finite] = normalised_scores(raw[finite], self.threshold)
            flagged[finite] = anomalous(raw[finite], self.threshold)
        backgrounds = np.clip(np.rint(images[:n]), 0, 255).astype(np.uint8) if images.dtype != np.uint8 else images
        panels = overlay(backgrounds, normalised_maps(maps, self.threshold), vmin=0.0, vmax=1.0)
        now = time.perf_counter()
        batch = self.batches
        self.batches += 1
        results = []
        for i, item in enumerate(items):
            panel = panels[i]
            if panel.shape[0] > self.overlay_size:
                panel = np.asarray(Image.fromarray(panel).resize((self.overlay_size, self.overlay_size),
                                                                 Image.Resampling.BILINEAR))
            results.append(Result(self.done + i, item.name, float(raw[i]), float(normalised[i]), bool(flagged[i]),
                                  self.threshold.value, 1e3 * (now - arrived[i]), self.maps.add(panel),
                                  bool(warming[i]), bool(banked[i]), batch, int(item.size[1]), int(item.size[0])))
        self.done += n
        return results

