"""jzad.data: dataset readers, image and mask decoding, stratified subsets, synthetic sets.

I/O lives here, at the edge: readers list files into an `ImageSet`, `load_images` / `load_masks` turn them
into NumPy arrays that the methods and metrics consume. Nothing here imports torch or transformers.

Each name below is imported from its module on first use, so importing the package costs nothing: the
command line's parser and ``--help`` read ``jzad.data.choices`` without loading numpy or PIL.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "choices": ("CLI_DATASETS", "DATASETS", "SPLITS"),
    "decode": ("DECODE_FORMATS", "image_hw", "load_image", "load_images", "open_image", "resize_rgb",
               "to_rgb_array"),
    "errors": ("DataError", "DataNotFoundError"),
    "imageset": ("ImageSet",),
    "masks": ("DEFAULT_MASK_RULES", "DEFAULT_MASK_THRESHOLDS", "MASK_RULES", "MaskReport", "decode_mask", "load_mask",
              "load_masks", "load_set_masks", "mask_size_warnings", "read_masks", "read_set_masks",
              "resize_binary_mask"),
    "names": ("display_name", "output_names"),
    "loco": ("HueRule", "LOCO_CATEGORIES", "LocoSet", "SUBTYPE_RULES", "assign_subtypes", "load_loco_masks",
             "load_loco_truth", "loco_categories", "read_loco", "read_subtype_list", "select_subtype", "subtype_of",
             "union_mask"),
    "datasets": ("CategorySources", "LocoImages", "category_sources", "check_subtypes", "dataset_categories"),
    "readers": ("IMAGE_EXTENSIONS", "MASK_EXTENSIONS", "MASK_FOLDER_NAMES", "list_categories", "read_dataset"),
    "sources": ("ArrayImages", "FileImages", "prefetch_batches"),
    "synthetic_features": ("ShiftedFeatureSet", "make_shifted_feature_set"),
    "subsets": ("official_subsets", "reference_draw", "stratified_subsets"),
    "synthetic": ("DEFECT_KINDS", "make_synthetic_set", "write_synthetic_loco", "write_synthetic_mvtec"),
}
"""Module of jzad.data -> the names the package exports from it."""
_HOME = {name: module for module, names in _EXPORTS.items() for name in names}


def __getattr__(name: str):
    if name in _HOME:
        value = getattr(importlib.import_module(f"jzad.data.{_HOME[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'jzad.data' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOME))


__all__ = sorted(_HOME)
