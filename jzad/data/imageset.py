"""`ImageSet`: the list of files a dataset reader found, with whatever ground truth the layout provides.

Readers only list files; decoding happens later (`load_images`, `load_masks`), so an `ImageSet` is cheap,
hashable and can be split (`select`) before any pixel is read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class ImageSet:
    """N images of one dataset category and split, in a sorted, deterministic order.

    dataset: reader name ("mvtec", "visa", ...); category: the category read.
    paths: (N,) image file paths.
    labels: (N,) 1 anomalous / 0 normal, or None when the layout gives no labels (plain folders).
    defect_types: (N,) defect type of each image ("good", "ok", "scratch", ...), used to stratify subsets.
    mask_paths: (N,) ground-truth mask path of each anomalous image; None for normal images (their mask is
        all zeros) and for anomalous images whose mask was allowed to be missing.
    has_masks: True when pixel ground truth is known for every image (labels known and every anomalous
        image has a mask path), i.e. pixel metrics can be computed.
    skipped: (path, reason) of files with an image extension that the reader saw and left out (mask files
        in a plain folder, symlink loops), so a caller can say how many images it found and skipped.
    """

    dataset: str
    category: str
    paths: tuple[str, ...]
    labels: tuple[int, ...] | None
    defect_types: tuple[str, ...]
    mask_paths: tuple[str | None, ...]
    has_masks: bool
    skipped: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        skipped = tuple((str(p), str(r)) for p, r in self.skipped)
        object.__setattr__(self, "skipped", skipped)
        object.__setattr__(self, "paths", tuple(str(p) for p in self.paths))
        object.__setattr__(self, "defect_types", tuple(str(t) for t in self.defect_types))
        object.__setattr__(
            self, "mask_paths", tuple(None if m is None else str(m) for m in self.mask_paths)
        )
        n = len(self.paths)
        if len(self.defect_types) != n or len(self.mask_paths) != n:
            raise ValueError(
                f"ImageSet fields must all have one entry per image: {n} paths, "
                f"{len(self.defect_types)} defect_types, {len(self.mask_paths)} mask_paths"
            )
        if self.labels is not None:
            labels = tuple(int(v) for v in self.labels)
            if len(labels) != n:
                raise ValueError(f"ImageSet has {n} paths but {len(labels)} labels")
            bad = sorted({v for v in labels if v not in (0, 1)})
            if bad:
                raise ValueError(f"ImageSet labels must be 0 (normal) or 1 (anomalous), got {bad}")
            object.__setattr__(self, "labels", labels)
            for path, label, mask in zip(self.paths, labels, self.mask_paths):
                if label == 0 and mask is not None:
                    raise ValueError(f"normal image {path} must have mask_path None, got {mask}")
            complete = all(m is not None for v, m in zip(labels, self.mask_paths) if v == 1)
            if self.has_masks and not complete:
                raise ValueError("ImageSet.has_masks is True but some anomalous images have no mask path")
        else:
            if any(m is not None for m in self.mask_paths):
                raise ValueError("an ImageSet without labels cannot have mask paths")
            if self.has_masks:
                raise ValueError("an ImageSet without labels cannot have has_masks=True")

    def __len__(self) -> int:
        return len(self.paths)

    def summary(self) -> str:
        """One line: images found (anomalous among them when labelled) and files skipped, by reason."""
        line = f"{self.dataset}/{self.category}: {len(self)} images"
        if self.labels is not None:
            line += f" ({self.num_anomalous} anomalous)"
        if self.skipped:
            reasons: dict[str, int] = {}
            for _, reason in self.skipped:
                reasons[reason] = reasons.get(reason, 0) + 1
            detail = ", ".join(f"{count} {reason}" for reason, count in sorted(reasons.items()))
            line += f"; skipped {len(self.skipped)} files ({detail})"
        return line

    @property
    def num_anomalous(self) -> int | None:
        """Number of anomalous images, or None when labels are unknown."""
        return None if self.labels is None else sum(self.labels)

    def select(self, indices: Sequence[int] | np.ndarray) -> "ImageSet":
        """The images at `indices` (in that order) as a new ImageSet, e.g. one of `stratified_subsets`."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        n = len(self)
        if idx.size and (idx.min() < -n or idx.max() >= n):
            raise IndexError(f"indices out of range for an ImageSet of {n} images: {idx.tolist()}")
        picked = [int(i) for i in idx]
        labels = None if self.labels is None else tuple(self.labels[i] for i in picked)
        return ImageSet(
            dataset=self.dataset,
            category=self.category,
            paths=tuple(self.paths[i] for i in picked),
            labels=labels,
            defect_types=tuple(self.defect_types[i] for i in picked),
            mask_paths=tuple(self.mask_paths[i] for i in picked),
            has_masks=self.has_masks,
            skipped=self.skipped,
        )
