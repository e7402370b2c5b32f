"""MVTec LOCO ground truth for sPRO: the entries of ``defects_config.json`` and each defect channel of a set as a
mask with its saturation area (the official evaluation's rules; ``jzad.eval.spro`` computes the metric).

A channel is one defect of one image (one PNG); its nonzero pixels share one value, which names the defect's
entry. Saturation area of a channel of area A: ``int(saturation_threshold * A)`` when ``relative_saturation``,
else ``min(saturation_threshold, A)``.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

_DEFECT_KEYS = ("defect_name", "pixel_value", "saturation_threshold", "relative_saturation")


@dataclass(frozen=True)
class DefectConfig:
    """One entry of ``defects_config.json``.

    pixel_value: the gray value (1..255) marking this defect in a ground-truth channel.
    saturation_threshold: a fraction of the channel's area in (0, 1] when relative_saturation, else an
    absolute pixel count (an int >= 1) at the original image resolution.
    """

    defect_name: str
    pixel_value: int
    saturation_threshold: float
    relative_saturation: bool

    def __post_init__(self):
        if not isinstance(self.defect_name, str) or not self.defect_name:
            raise ValueError(f"defect_name must be a non-empty string, got {self.defect_name!r}")
        if isinstance(self.pixel_value, bool) or not isinstance(self.pixel_value, numbers.Integral):
            raise ValueError(f"{self.defect_name}: pixel_value must be an int in [1, 255], got {self.pixel_value!r}")
        if not 1 <= int(self.pixel_value) <= 255:
            raise ValueError(f"{self.defect_name}: pixel_value must be in [1, 255], got {self.pixel_value}")
        if not isinstance(self.relative_saturation, bool):
            raise ValueError(
                f"{self.defect_name}: relative_saturation must be true or false, got {self.relative_saturation!r}"
            )
        t = self.saturation_threshold
        if isinstance(t, bool) or not isinstance(t, numbers.Real):
            raise ValueError(f"{self.defect_name}: saturation_threshold must be a number, got {t!r}")
        if self.relative_saturation and not 0.0 < float(t) <= 1.0:
            raise ValueError(
                f"{self.defect_name}: a relative saturation_threshold must be in (0, 1], got {t}"
            )
        if not self.relative_saturation and (float(t) != int(t) or int(t) < 1):
            raise ValueError(
                f"{self.defect_name}: an absolute saturation_threshold must be a whole pixel count >= 1, got {t}"
            )
        object.__setattr__(self, "pixel_value", int(self.pixel_value))
        object.__setattr__(self, "saturation_threshold", float(t) if self.relative_saturation else int(t))


def parse_defects_config(entries, source: str = "defects_config.json") -> tuple[DefectConfig, ...]:
    """The parsed JSON list of a ``defects_config.json`` -> DefectConfig entries (in file order).

    Raises ValueError naming ``source`` for a non-list, missing keys, bad values or repeated pixel values.
    """
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{source}: expected a non-empty JSON list of defect entries, got {type(entries).__name__}")
    defects = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, Mapping):
            raise ValueError(f"{source}: entry {i} must be an object with keys {_DEFECT_KEYS}, got {entry!r}")
        missing = [k for k in _DEFECT_KEYS if k not in entry]
        if missing:
            raise ValueError(f"{source}: entry {i} lacks {missing}; each entry needs {_DEFECT_KEYS}")
        try:
            defects.append(DefectConfig(**{k: entry[k] for k in _DEFECT_KEYS}))
        except ValueError as err:
            raise ValueError(f"{source}: entry {i}: {err}") from err
    values = [d.pixel_value for d in defects]
    repeated = sorted({v for v in values if values.count(v) > 1})
    if repeated:
        raise ValueError(f"{source}: pixel values {repeated} name more than one defect")
    return tuple(defects)


def saturation_area(defect_area: int, defect: DefectConfig) -> int:
    """The official saturation area of a channel of ``defect_area`` pixels."""
    if defect.relative_saturation:
        return int(defect.saturation_threshold * int(defect_area))
    return int(min(defect.saturation_threshold, int(defect_area)))


@dataclass(frozen=True, eq=False)
class SPROTruth:
    """Ground truth of a set of N images as D defect channels.

    masks: (D, H, W) bool, one defect per channel (channels of one image may overlap).
    image_index: (D,) int, the image (0..N-1) each channel belongs to; good images have none.
    saturation: (D,) int, each channel's saturation area (>= 1).
    names: (D,) defect name of each channel.
    """

    masks: np.ndarray
    image_index: np.ndarray
    saturation: np.ndarray
    names: tuple[str, ...]

    def __post_init__(self):
        masks = np.asarray(self.masks)
        if masks.ndim != 3 or masks.dtype != np.bool_:
            raise ValueError(f"SPROTruth.masks must be (D, H, W) bool, got {masks.dtype} {masks.shape}")
        d = masks.shape[0]
        index = np.asarray(self.image_index, dtype=np.int64).reshape(-1)
        saturation = np.asarray(self.saturation, dtype=np.int64).reshape(-1)
        if index.shape != (d,) or saturation.shape != (d,) or len(self.names) != d:
            raise ValueError(
                f"SPROTruth has {d} masks but {index.size} image indices, {saturation.size} saturation areas "
                f"and {len(self.names)} names"
            )
        if d and index.min() < 0:
            raise ValueError("SPROTruth.image_index must be >= 0")
        if d and saturation.min() < 1:
            bad = int(np.argmin(saturation))
            raise ValueError(
                f"channel {bad} ({self.names[bad]}, image {index[bad]}) has saturation area "
                f"{saturation[bad]}; it must be >= 1 (empty defect or a tiny relative threshold)"
            )
        object.__setattr__(self, "masks", masks)
        object.__setattr__(self, "image_index", index)
        object.__setattr__(self, "saturation", saturation)
        object.__setattr__(self, "names", tuple(str(n) for n in self.names))

    def __len__(self) -> int:
        return self.masks.shape[0]


def truth_from_channels(
    channels: Sequence[Sequence[np.ndarray]],
    defects: Sequence[DefectConfig],
    shape=None,
    sources: Sequence[Sequence[str]] | None = None,
) -> SPROTruth:
    """SPROTruth from decoded ground-truth PNGs.

    channels: per image, its channel arrays ((H, W) integers: 0 = defect-free, one positive value naming the
    defect in ``defects``); an empty sequence for a good image. shape: (H, W) when no image has a channel.
    sources: per image, a name for each channel (its file) used in error messages instead of "image i channel j".
    Raises ValueError for a channel with no or several positive values, an unknown value or mismatched sizes.
    """
    by_value = {d.pixel_value: d for d in defects}
    masks, index, saturation, names = [], [], [], []
    for i, image_channels in enumerate(channels):
        for j, channel in enumerate(image_channels):
            where = f"image {i} channel {j}" if sources is None else str(sources[i][j])
            array = np.asarray(channel)
            if array.ndim != 2 or not np.issubdtype(array.dtype, np.integer):
                raise ValueError(f"{where}: expected an (H, W) integer array, got {array.dtype} {array.shape}")
            values = np.unique(array)
            positive = values[values > 0]
            if positive.size != 1 or values.min() < 0:
                raise ValueError(
                    f"{where}: a channel must hold 0 and exactly one positive defect value, found {values.tolist()}"
                )
            value = int(positive[0])
            if value not in by_value:
                raise ValueError(
                    f"{where}: pixel value {value} is not in the defects config (known: {sorted(by_value)})"
                )
            mask = array > 0
            masks.append(mask)
            index.append(i)
            saturation.append(saturation_area(int(mask.sum()), by_value[value]))
            names.append(by_value[value].defect_name)
    sizes = {m.shape for m in masks}
    if len(sizes) > 1:
        raise ValueError(f"ground-truth channels have different sizes: {sorted(sizes)}")
    if masks:
        stacked = np.stack(masks)
    else:
        if shape is None:
            raise ValueError("no image has a ground-truth channel; pass shape=(H, W)")
        stacked = np.zeros((0, *shape), bool)
    return SPROTruth(stacked, np.asarray(index, np.int64), np.asarray(saturation, np.int64), tuple(names))
