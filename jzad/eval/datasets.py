"""Metrics a dataset adds to the generic ones (image and pixel AUROC/AP/F1-max, PRO), keyed by --dataset.

``dataset_metrics(name)`` returns None for the datasets the generic metrics cover, else a ``DatasetMetrics``:
the columns of the printed table and ``compute(result, source) -> dict`` of the extra numbers for one scored
category (``result``: the pipeline's CategoryResult; ``source``: the test images it scored).

MVTec LOCO ("loco"): the image AUROC of good against logical anomalies and of good against structural ones
(the official evaluation's pair; the generic ``image_auroc``, good against both, is the CLIP-LAD paper's
number) and AUC-sPRO up to FPR 0.05 (the headline) and 0.3, the mean over the logical and the structural
evaluation as the official script reports it, each type also on its own. sPRO runs on the maps at each
image's original size, resized exactly as the map TIFFs are written (``map_at_size``), against every defect
channel at full resolution (``LocoImages.image_truths``), one image at a time (``MapsAtImageSize``), so host
memory stays at one full-size image and its channels; nan when the ground truth is incomplete
(--allow-missing-masks).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from jzad.eval.outputs import map_at_size
from jzad.eval.spro import loco_image_metrics, loco_localization

LOCO_MAX_FPRS = (0.05, 0.3)
LOCO_COLUMNS = ("image_auroc", "image_auroc_logical", "image_auroc_structural", "pixel_auroc", "pro", "spro_05",
                "spro_30")


@dataclass(frozen=True)
class DatasetMetrics:
    """columns: the table's metric columns; compute(result, source) -> {metric: value} added to the generic."""

    columns: tuple[str, ...]
    compute: Callable


class MapsAtImageSize:
    """(N, S, S) maps seen as a sequence of N (H, W) float32 maps at the images' common original size, each
    resized (``map_at_size``) when it is read, so sPRO never holds the whole category at full size."""

    def __init__(self, maps: np.ndarray, sizes):
        shapes = {tuple(int(v) for v in s) for s in sizes}
        if len(shapes) != 1:
            raise ValueError(f"sPRO needs one image size per category, found {sorted(shapes)}")
        self.maps, self.size = maps, shapes.pop()

    def __len__(self) -> int:
        return len(self.maps)

    def __getitem__(self, i: int) -> np.ndarray:
        return map_at_size(self.maps[i], self.size).astype(np.float32, copy=False)


def loco_metrics(result, source) -> dict:
    """MVTec LOCO's image AUROCs per anomaly type and AUC-sPRO (module docstring) of one category."""
    types = tuple(result.defect_types)
    image = loco_image_metrics(np.asarray(result.image_scores, np.float64), types)
    out = {"image_auroc_logical": image["logical_anomalies"], "image_auroc_structural": image["structural_anomalies"]}
    nan = {name: {limit: float("nan") for limit in LOCO_MAX_FPRS}
           for name in ("mean", "logical_anomalies", "structural_anomalies")}
    localization = nan if not source.has_masks else loco_localization(
        MapsAtImageSize(result.maps, result.original_sizes), source.image_truths(), types, LOCO_MAX_FPRS)
    for limit in LOCO_MAX_FPRS:
        tag = f"{round(limit * 100):02d}"
        out[f"spro_{tag}"] = localization["mean"][limit]
        out[f"spro_{tag}_logical"] = localization["logical_anomalies"][limit]
        out[f"spro_{tag}_structural"] = localization["structural_anomalies"][limit]
    return out


_BY_DATASET = {"loco": DatasetMetrics(LOCO_COLUMNS, loco_metrics)}


def dataset_metrics(dataset: str) -> DatasetMetrics | None:
    """The extra metrics of a dataset, or None when the generic ones are all it has."""
    return _BY_DATASET.get(dataset)
