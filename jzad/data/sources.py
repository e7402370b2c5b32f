"""Image sources for the pipeline: what a category's images are called, how to decode a batch of them at a
method's input geometry (``ImagePrep``), their labels and masks -- without holding the whole set in memory.

- ``FileImages``: an ``ImageSet`` read from disk; batches are decoded on demand.
- ``ArrayImages``: images already in memory at the model size (the built-in demo, tests, the Python API).

``prefetch_batches`` decodes batches in a thread pool ahead of the consumer (PIL releases the GIL while it
decodes and resizes), so decoding overlaps device work.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
from PIL import Image

from jzad.data.decode import load_image
from jzad.data.imageset import ImageSet
from jzad.data.masks import _center_crop, read_set_masks, resize_binary_mask
from jzad.data.names import display_name
from jzad.data.prep import ImagePrep


def resized_shape(width: int, height: int, prep: ImagePrep, size: int) -> tuple[int, int]:
    """(H, W) an image of (width, height) is resized to before any crop: (size, size) for "square"; for
    "resize_crop" the shorter side becomes resize_to and the longer int(resize_to * long / short), as
    torchvision's Resize(int) computes it."""
    if prep.square:
        return size, size
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(prep.resize_to * long / short)
    return (new_long, prep.resize_to) if width <= height else (prep.resize_to, new_long)


def center_crop(array: np.ndarray, size: int) -> np.ndarray:
    """The central size x size window of (H, W, ...) as torchvision's CenterCrop picks it (round half to even of
    (H - size) / 2); H, W >= size."""
    return _center_crop(array, size)


def resize_float(array: np.ndarray, size: int) -> np.ndarray:
    """uint8 or float (H, W, 3) -> float32 (size, size, 3) on the same value scale: each channel as a float32
    PIL "F" image resized by PIL's antialiased bicubic (Keys a = -0.5, support widened by the downscale
    factor), no rounding or clamping. The resize is linear, so resizing [0, 255] values equals 255 x resizing
    the [0, 1] image (anomalib's WinCLIP transform) up to float32 rounding."""
    channels = np.asarray(array, np.float32)
    if channels.shape[:2] == (size, size):
        return np.ascontiguousarray(channels)
    return np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(channels[..., c])).resize(
        (size, size), resample=Image.Resampling.BICUBIC), np.float32) for c in range(channels.shape[-1])], axis=-1)


def prepare_image(image: Image.Image, prep: ImagePrep, size: int) -> np.ndarray:
    """RGB PIL image -> (size, size, 3) model input: uint8 by PIL bicubic straight to size ("square"), float32
    [0, 255] by ``resize_float`` ("square_float"), or uint8 by PIL bilinear of the shorter side to resize_to
    then a centre crop ("resize_crop", PatchCore's transform)."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    if prep.float_pixels:
        return resize_float(np.asarray(image, np.uint8), size)
    h, w = resized_shape(image.width, image.height, prep, size)
    resample = Image.Resampling.BICUBIC if prep.kind == "square" else Image.Resampling.BILINEAR
    if image.size != (w, h):
        image = image.resize((w, h), resample=resample)
    array = np.asarray(image, dtype=np.uint8)
    return array if prep.square else center_crop(array, size)


@dataclass(frozen=True)
class Decoded:
    """One decoded batch: images (n, S, S, 3), uint8 or float32 [0, 255] as the ``ImagePrep`` asks, and each
    file's original (H, W)."""

    images: np.ndarray
    sizes: tuple


class FileImages:
    """A category's images on disk (an ``ImageSet``), named as the user sees them under ``root``."""

    def __init__(self, image_set: ImageSet, root: str | os.PathLike | None = None,
                 names: Sequence[str] | None = None):
        self.image_set = image_set
        if names is None:
            names = [display_name(p, root) if root is not None else str(p) for p in image_set.paths]
        self.names = tuple(names)
        self.labels = None if image_set.labels is None else np.asarray(image_set.labels, np.int64)
        self.defect_types = tuple(image_set.defect_types)

    def __len__(self) -> int:
        return len(self.image_set)

    @property
    def has_masks(self) -> bool:
        """Whether pixel ground truth is known for every image."""
        return self.image_set.has_masks

    def decode(self, indices: Sequence[int], prep: ImagePrep, size: int) -> Decoded:
        """Decode the images at ``indices`` to the model input geometry."""
        images = np.empty((len(indices), size, size, 3), np.float32 if prep.float_pixels else np.uint8)
        sizes = []
        for row, index in enumerate(indices):
            image = load_image(self.image_set.paths[int(index)])
            sizes.append((image.height, image.width))
            images[row] = prepare_image(image, prep, size)
        return Decoded(images, tuple(sizes))

    def masks(self, prep: ImagePrep, size: int) -> tuple[np.ndarray, dict]:
        """bool (N, S, S) ground truth at the model input geometry and what reading it did (``MaskReport``
        fields, its one-line summary and the mask-size warning, if any)."""

        def geometry(h: int, w: int):
            return resized_shape(w, h, prep, size), (None if prep.square else size)

        masks, report = read_set_masks(self.image_set, (size, size), geometry=geometry)
        return masks, {"rule": report.rule, "threshold": report.threshold, "masks_read": report.num_masks,
                       "two_value": len(report.two_value), "empty_anomalous": report.num_empty,
                       "size_mismatches": len(report.size_mismatches), "summary": report.summary(),
                       "warning": report.size_warning()}


class ArrayImages:
    """Images already at the model input size (uint8 (N, S, S, 3)), with optional labels and masks."""

    def __init__(self, images: np.ndarray, names: Sequence[str], labels=None, defect_types=None, masks=None):
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"ArrayImages: expected uint8 images (N, S, S, 3), got {images.dtype} {images.shape}")
        self.images = images
        self.names = tuple(names)
        self.labels = None if labels is None else np.asarray(labels, np.int64)
        self.defect_types = tuple(defect_types) if defect_types is not None else ("unknown",) * len(images)
        self._masks = None if masks is None else np.asarray(masks, bool)
        if len(self.names) != len(images) or len(self.defect_types) != len(images):
            raise ValueError("ArrayImages: names and defect_types need one entry per image")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def has_masks(self) -> bool:
        """Whether masks were given."""
        return self._masks is not None

    def decode(self, indices: Sequence[int], prep: ImagePrep, size: int) -> Decoded:
        """The images at ``indices`` (already at the model size; resized when another size is asked; float32
        when the prep asks for float pixels)."""
        picked = self.images[np.asarray(indices, np.int64)]
        if prep.float_pixels:
            picked = np.stack([resize_float(a, size) for a in picked])
        elif picked.shape[1:3] != (size, size):
            picked = np.stack([prepare_image(Image.fromarray(a), prep, size) for a in picked])
        return Decoded(picked, tuple(a.shape[:2] for a in self.images[np.asarray(indices, np.int64)]))

    def masks(self, prep: ImagePrep, size: int) -> tuple[np.ndarray, dict]:
        """The given masks (N, S, S) and a report."""
        if self._masks is None:
            raise ValueError("ArrayImages: no masks were given")
        masks = self._masks
        if masks.shape[1:] != (size, size):
            masks = np.stack([resize_binary_mask(m.astype(np.uint8) * 255, size, "half") for m in masks])
        empty = int(sum(1 for m, v in zip(masks, self.labels) if v == 1 and not m.any()))
        return masks, {"rule": "given", "threshold": None, "masks_read": 0, "empty_anomalous": empty,
                       "summary": f"{len(masks)} masks given in memory, {empty} anomalous with an empty mask",
                       "warning": None}


def prefetch_batches(source, indices: Sequence[int], prep: ImagePrep, size: int, batch_size: int,
                     workers: int = 4, ahead: int = 2) -> Iterator[tuple[np.ndarray, Decoded]]:
    """Yield (batch indices, Decoded) over ``indices`` in order, decoding up to ``ahead`` batches in advance on
    a thread pool of ``workers`` threads (each batch split across the threads)."""
    indices = np.asarray(indices, np.int64)
    batches = [indices[i:i + batch_size] for i in range(0, len(indices), batch_size)]
    if not batches:
        return

    with ThreadPoolExecutor(max_workers=workers) as pool, ThreadPoolExecutor(max_workers=ahead) as outer:

        def decode(batch):
            parts = [p for p in np.array_split(batch, min(workers, len(batch))) if len(p)]
            decoded = list(pool.map(lambda part: source.decode(part, prep, size), parts))
            return Decoded(np.concatenate([d.images for d in decoded]), sum((d.sizes for d in decoded), ()))

        futures = [outer.submit(decode, b) for b in batches[:ahead]]
        for position, batch in enumerate(batches):
            result = futures[position].result()
            follow = position + ahead
            if follow < len(batches):
                futures.append(outer.submit(decode, batches[follow]))
            yield batch, result


__all__ = ["ArrayImages", "Decoded", "FileImages", "center_crop", "prefetch_batches", "prepare_image",
           "resize_float", "resized_shape"]
