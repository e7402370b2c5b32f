"""The one driver every caller uses: decode -> extract -> method -> maps -> metrics for a category.

The command line (``jzad.run``), the benchmarks and the tests call ``run_category``, so the benchmark times
exactly what users run. A method's scoring runs as its one jitted program (``Method.score``, timed as the stage
"score") unless the scorer's ``profile`` is "stages": then the same body runs stage by stage, each stage timed
on the ``StageClock`` (device-synchronised, compile time apart).

Memory: a category is processed group by group. A pooling method (MuSc, FSLC) gets one subset at a time (MuSc's
``divide_num``; the official split by default), a non-pooling method fixed-size chunks. Only that group's images
are decoded and only its features live on the device; the host keeps the per-image outputs (image scores,
patch maps, maps at the model input size for the metrics). Host memory is bounded by the largest group plus
those outputs, never by the features of the whole set. Set-level re-scoring (MuSc's RsCIN) runs once over the
whole category after every group is scored.

Several processes (``jzad.kernels.multihost``): each decodes and extracts only its share of a group, the
shares become global arrays over one mesh of every process's devices, the method runs on those, and every
process receives the gathered per-image outputs (the command line lets process 0 write them).
"""

from __future__ import annotations

import resource
from functools import partial
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from jzad.data.sources import prefetch_batches
from jzad.data.choices import SPLITS
from jzad.data.subsets import official_subsets, stratified_subsets
from jzad.data.imageset import ImageSet
from jzad.eval import metrics as jmetrics
from jzad.features import Backbone, extract
from jzad.features.types import VALID
from jzad.kernels.multihost import assemble, gather_rows, process_share, to_host
from jzad.methods.base import Method, Scores, check_finite
from jzad.progress import RunProgress
from jzad.timing import StageClock

METRIC_COLUMNS = ("image_auroc", "image_ap", "image_f1_max", "pixel_auroc", "pixel_ap", "pixel_f1_max", "pro")
PROFILES = ("fused", "stages")
FUSED_STAGE = "score"
MAP_CHUNK = 32


@dataclass(frozen=True, eq=False)
class Scorer:
    """A method bound to its config, a backbone, a device mesh (None: one device) and the extraction batch.

    profile: "fused" (the production path: the method's scoring as one jitted program) or "stages" (the same
    body with every stage timed apart, for profiling).
    """

    method: Method
    config: Any
    backbone: Backbone
    mesh: Any = None
    batch_size: int = 8
    profile: str = "fused"

    def __post_init__(self):
        if self.profile not in PROFILES:
            raise ValueError(f"profile: expected one of {PROFILES}, got {self.profile!r}")

    def score(self, state, features, clock: StageClock):
        """The method on one group's features -> (Scores, state), fused or stage by stage (``profile``)."""
        if self.profile == "stages":
            return self.method.staged(self.config, state, features, self.mesh, clock)
        return clock.run(FUSED_STAGE, self.method.score, self.config, state, features, self.mesh)

    @property
    def request(self):
        """The features the method asks of the backbone."""
        return self.method.request(self.config)

    @property
    def prep(self):
        """How images become model inputs for this method."""
        return self.method.prep(self.config, self.backbone.image_size)

    @property
    def extract_fn(self):
        """images uint8 (B, S, S, 3) -> Features: the method's own extractor, else the backbone's features.

        With a mesh of several devices (one process) whose size divides the batch, each batch is put on the
        mesh split by image (``extraction_sharding``) before the forward, so every device runs its share and
        the features stay split over the mesh for the scorers."""
        if self.method.extractor is not None:
            forward = self.method.extractor(self.config, self.backbone)
        else:
            request = self.request
            forward = lambda images: self.backbone(images, request)  # noqa: E731
        sharding = self.extraction_sharding
        if sharding is None:
            return forward
        return lambda images: forward(jax.device_put(images, sharding))

    @property
    def extraction_sharding(self):
        """The NamedSharding that splits an image batch over the mesh, or None (one device, several processes,
        or a batch size the device count does not divide)."""
        if self.mesh is None or self.mesh.size == 1 or jax.process_count() > 1:
            return None
        if self.batch_size % self.mesh.size:
            return None
        return NamedSharding(self.mesh, PartitionSpec("data"))


@dataclass
class CategoryResult:
    """Everything a category run produced, host-side.

    image_scores (N,) after ``finalize``; image_scores_raw (N,) before it; patch_scores (N, h, w); maps
    (N, S, S) float32 at the model input size (what the metrics use); masks (N, S, S) bool or None;
    original_sizes: each image's (H, W) on disk; groups: the index arrays scored together. notes: warnings about
    the result (``contrast_note``), also written to results.json.
    """

    category: str
    names: tuple
    labels: np.ndarray | None
    defect_types: tuple
    image_scores: np.ndarray
    image_scores_raw: np.ndarray
    patch_scores: np.ndarray
    maps: np.ndarray
    masks: np.ndarray | None
    mask_report: dict | None
    original_sizes: list
    groups: list
    metrics: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)


def score_groups(method: Method, num_images: int, defect_types, subsets: int, split: str = "official",
                 chunk: int = 64) -> list[np.ndarray]:
    """The index groups a category is scored in: MuSc's subsets for a pooling method (``split`` "official"
    or "balanced"), consecutive chunks of ``chunk`` images otherwise."""
    if method.pools:
        if split not in SPLITS:
            raise ValueError(f"split: expected one of {SPLITS}, got {split!r}")
        if subsets == 1:
            return [np.arange(num_images)]
        if split == "official":
            return official_subsets(defect_types, subsets)
        image_set = ImageSet("in-memory", "", tuple(str(i) for i in range(num_images)), None,
                             tuple(defect_types), (None,) * num_images, False)
        return stratified_subsets(image_set, subsets)
    return [np.arange(first, min(first + chunk, num_images)) for first in range(0, num_images, chunk)]


def bucket_size(count: int) -> int:
    """The padded size of a group of ``count`` images: at least 8, else the next multiple of a quarter of the
    largest power of two <= count (9 -> 10, 28 -> 28, 29 -> 32, 200 -> 224): at most 25% padding, and groups of
    nearby sizes (MuSc's subsets, a ragged last chunk) share one compiled program."""
    if count < 1:
        raise ValueError(f"bucket_size: expected a positive image count, got {count}")
    if count <= 8:
        return 8
    step = 1 << (count.bit_length() - 3)
    return -(-count // step) * step


@partial(jax.jit, static_argnums=(1,))
def _zero_padded(tree, rows: int):
    return jax.tree.map(lambda a: jnp.pad(a, [(0, rows - a.shape[0])] + [(0, 0)] * (a.ndim - 1)), tree)


def with_valid(features, count: int, size: int):
    """Features of ``size`` rows whose first ``count`` are images -> the same with ``extras[VALID]`` (size,)
    bool marking them (a NumPy array: replicated as it is on every process of a multi-process run)."""
    return features._replace(extras={**features.extras, VALID: np.arange(size) < count})


def extract_source(scorer: Scorer, source, indices, clock: StageClock, task=None, rows: int | None = None):
    """Decode (thread pool, ahead of the device) and extract the images at ``indices`` -> (Features, sizes).

    ``rows`` (>= len(indices)): the features have that many rows, zeros past the images (a group padded to a
    bucket size, one program for groups of any size up to it).

    In a multi-process run each process decodes and extracts only its share of ``indices``
    (``process_share``); the shares become global arrays over the scorer's mesh (``assemble``, timed as part
    of "extract") and the original sizes of every image are gathered. One process: the shares are the whole.
    """
    sizes = []
    mine = process_share(indices)
    decoded_batches = prefetch_batches(source, mine, scorer.prep, scorer.backbone.image_size, scorer.batch_size)

    def images():
        for _, decoded in decoded_batches:
            sizes.extend(decoded.sizes)
            yield decoded.images

    local_rows = rows if rows is not None and jax.process_count() == 1 else None
    features = extract(scorer.extract_fn, images(), scorer.batch_size, clock,
                       on_batch=None if task is None else task.advance, rows=local_rows)
    features = clock.run("extract", assemble, features, len(indices), scorer.mesh)
    if rows is not None and local_rows is None:
        features = clock.run("extract", _zero_padded, features, rows)
    if jax.process_count() > 1:
        sizes = [tuple(int(v) for v in hw) for hw in gather_rows(np.asarray(sizes, np.int64), len(indices))]
    return features, sizes


def fit(scorer: Scorer, references, clock: StageClock, task=None, category: str = "", calibration=None):
    """The method's state for a category: ``prepare`` once, ``fit`` on the reference images (a source, or None
    for zero-shot), then ``calibrate`` on held-out normal images when the method has that step. With extraction
    sharded over the mesh the state is replicated on it, so the scoring program sees one device set."""
    method = scorer.method
    prepared = clock.run("prepare", method.prepare, scorer.config, scorer.backbone, category)
    ref_features = None
    if references is not None:
        ref_features, _ = extract_source(scorer, references, np.arange(len(references)), clock, task)
        check_finite(ref_features, references.names, "reference features")
    state = clock.run("fit", method.fit, scorer.config, ref_features, scorer.mesh, prepared)
    if method.calibrate is not None:
        if calibration is None:
            raise ValueError(f"method {method.name} needs calibration images ({method.calibration} split)")
        rows = bucket_size(len(calibration))
        cal_features, _ = extract_source(scorer, calibration, np.arange(len(calibration)), clock, task, rows=rows)
        check_finite(cal_features, calibration.names, "calibration features", count=len(calibration))
        cal_features = with_valid(cal_features, len(calibration), rows)
        state = clock.run("calibrate", method.calibrate, scorer.config, state, cal_features, scorer.mesh)
    if scorer.extraction_sharding is not None:
        state = jax.device_put(state, NamedSharding(scorer.mesh, PartitionSpec()))
    return state


def maps_at(method: Method, config, patch_scores: np.ndarray, size: int, clock: StageClock,
            rows: int | None = None) -> np.ndarray:
    """Anomaly maps (n, size, size) float32 from patch scores (n, h, w), computed in padded chunks of
    min(``MAP_CHUNK``, rows) images (rows: the group's bucket size, default n) so one shape is compiled."""
    n = patch_scores.shape[0]
    out = np.empty((n, size, size), np.float32)
    chunk = min(MAP_CHUNK, rows or n)
    for first in range(0, n, chunk):
        block = patch_scores[first:first + chunk]
        real = block.shape[0]
        if real < chunk:
            block = np.concatenate([block, np.repeat(block[-1:], chunk - real, axis=0)])
        out[first:first + real] = np.asarray(clock.run("upsample", method.maps, config, jnp.asarray(block),
                                                       (size, size)))[:real]
    return out


def score_source(scorer: Scorer, state, source, groups, clock: StageClock, progress: RunProgress | None = None,
                 label: str = ""):
    """Score every group of ``source`` (decode, extract, method stages, maps) -> (host arrays dict, state).

    When the method pads (``Method.pads_to_buckets``) every group is padded to the bucket of the largest
    (``bucket_size``), so all groups run one compiled program. Returns keys image_scores_raw (N,), patch_scores (N, h, w), maps (N, S, S), keep (dict of (N, ...)),
    original_sizes (list of (H, W)); in a multi-process run every process gets the whole of each (the scores
    are gathered from the global mesh).
    """
    progress = progress or RunProgress(False)
    n = len(source)
    size = scorer.backbone.image_size
    extract_task = progress.task(f"{label} decode+extract", sum(len(process_share(g)) for g in groups))
    score_task = progress.task(f"{label} {scorer.method.name}", len(groups))
    clock_hook = clock.on_start
    clock.on_start = lambda stage: (score_task.stage(stage) if stage != "extract" else extract_task.stage(stage))
    image_raw = np.zeros(n, np.float32)
    patch = maps = None
    keep: dict = {}
    sizes: list = [None] * n
    target = None
    if scorer.method.pads_to_buckets(scorer.config):
        target = bucket_size(max(len(g) for g in groups))
    try:
        for indices in groups:
            features, group_sizes = extract_source(scorer, source, indices, clock, extract_task, target)
            check_finite(features, [source.names[i] for i in indices], count=len(indices))
            if target is not None:
                features = with_valid(features, len(indices), target)
            scores, state = scorer.score(state, features, clock)
            del features
            host = jax.tree.map(lambda a, n=len(indices): a[:n], to_host(scores))
            if patch is None:
                patch = np.zeros((n,) + host.patch_scores.shape[1:], np.float32)
                maps = np.zeros((n, size, size), np.float32)
            patch[indices] = host.patch_scores
            image_raw[indices] = host.image_scores
            for key, value in host.keep.items():
                if key not in keep:
                    keep[key] = np.zeros((n,) + value.shape[1:], value.dtype)
                keep[key][indices] = value
            maps[indices] = maps_at(scorer.method, scorer.config, host.patch_scores, size, clock, target)
            for index, shape in zip(indices, group_sizes):
                sizes[int(index)] = shape
            score_task.advance(1)
    finally:
        clock.on_start = clock_hook
    score_task.stage("done")
    return {"image_scores_raw": image_raw, "patch_scores": patch, "maps": maps, "keep": keep,
            "original_sizes": sizes}, state


def finalize(scorer: Scorer, outputs: dict, clock: StageClock) -> np.ndarray:
    """The method's set-level re-scoring over a whole category -> final image scores (N,)."""
    scores = Scores(jnp.asarray(outputs["patch_scores"]), jnp.asarray(outputs["image_scores_raw"]),
                    {k: jnp.asarray(v) for k, v in outputs["keep"].items()})
    final = clock.run(scorer.method.finalize_stage, scorer.method.finalize, scorer.config, scores)
    return np.asarray(final.image_scores, np.float32)


def category_metrics(labels, masks, image_scores: np.ndarray, maps: np.ndarray, aupro_convention: str) -> dict:
    """Image metrics when labels hold both classes, pixel metrics and PRO when masks hold defects; nan else."""
    out = {name: float("nan") for name in METRIC_COLUMNS}
    if labels is not None and 0 < int(labels.sum()) < len(labels):
        image = jmetrics.image_metrics(image_scores, labels)
        out.update(image_auroc=image["auroc"], image_ap=image["ap"], image_f1_max=image["f1_max"])
    if masks is not None and masks.any():
        pixel = jmetrics.pixel_metrics(maps, masks)
        out.update(pixel_auroc=pixel["auroc"], pixel_ap=pixel["ap"], pixel_f1_max=pixel["f1_max"])
        out["pro"] = jmetrics.aupro(maps, masks, convention=aupro_convention)
    return out


def run_category(
    scorer: Scorer,
    source,
    category: str,
    references=None,
    subsets: int = 1,
    split: str = "official",
    chunk: int = 64,
    aupro_convention: str = "mvtec",
    clock: StageClock | None = None,
    progress: RunProgress | None = None,
    calibration=None,
) -> CategoryResult:
    """One category end to end: fit on the references (and calibrate on held-out normals when the method asks),
    score every group, finalize, maps, masks, metrics."""
    clock = clock or StageClock()
    progress = progress or RunProgress(False)
    n = len(source)
    if subsets < 1 or subsets > n:
        raise ValueError(f"subsets: expected 1..{n} (the category's image count), got {subsets}")
    groups = score_groups(scorer.method, n, source.defect_types, subsets, split, chunk)
    ref_task = progress.task(f"{category} references", len(references)) if references is not None else None
    state = fit(scorer, references, clock, ref_task, category, calibration)
    outputs, _ = score_source(scorer, state, source, groups, clock, progress, category)
    image_scores = finalize(scorer, outputs, clock)
    masks, mask_report = None, None
    if source.has_masks:
        masks, mask_report = source.masks(scorer.prep, scorer.backbone.image_size)
    result = CategoryResult(
        category=category, names=tuple(source.names), labels=source.labels, defect_types=tuple(source.defect_types),
        image_scores=image_scores, image_scores_raw=outputs["image_scores_raw"],
        patch_scores=outputs["patch_scores"], maps=outputs["maps"], masks=masks, mask_report=mask_report,
        original_sizes=outputs["original_sizes"], groups=[np.asarray(g) for g in groups],
    )
    result.metrics = category_metrics(source.labels, masks, image_scores, result.maps, aupro_convention)
    note = contrast_note(image_scores, result.maps)
    if note is not None:
        result.notes.append(note)
    return result


def contrast_note(image_scores: np.ndarray, maps: np.ndarray) -> str | None:
    """A note when a category has no contrast: every image score and every map value is the same number (e.g. a
    set of identical images: MuSc scores them exactly 0, see ``jzad.methods.musc``); None otherwise."""
    values = np.concatenate([np.ravel(image_scores), np.ravel(maps)])
    if values.size == 0 or not np.all(values == values[0]):
        return None
    return (f"no contrast: all {len(image_scores)} images score {float(values[0]):.6g} at every pixel (identical "
            "images, up to float rounding); the metrics are those of fully tied scores (AUROC 0.5) and say nothing "
            "about the method")


def peak_memory() -> dict:
    """Peak host RSS of this process so far (MiB) and, where the backend reports it, the peak memory of its
    first local device."""
    out = {"host_peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}
    stats = jax.local_devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        out["device_peak_mib"] = stats["peak_bytes_in_use"] / 2**20
    return out
