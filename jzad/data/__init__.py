"""jzad.data: dataset readers, image and mask decoding, stratified subsets, synthetic sets.

I/O lives here, at the edge: readers list files into an `ImageSet`, `load_images` / `load_masks` turn them
into NumPy arrays that the methods and metrics consume. Nothing here imports torch or transformers.
"""

from jzad.data.decode import DECODE_FORMATS, image_hw, load_image, load_images, open_image, resize_rgb, to_rgb_array
from jzad.data.errors import DataError, DataNotFoundError
from jzad.data.imageset import ImageSet
from jzad.data.masks import (
    DEFAULT_MASK_RULES,
    DEFAULT_MASK_THRESHOLDS,
    MASK_RULES,
    load_mask,
    load_masks,
    MaskReport,
    decode_mask,
    load_set_masks,
    mask_size_warnings,
    read_masks,
    read_set_masks,
    resize_binary_mask,
)
from jzad.data.names import display_name, output_names
from jzad.data.loco import (
    LOCO_CATEGORIES,
    SUBTYPE_RULES,
    HueRule,
    LocoSet,
    assign_subtypes,
    load_loco_masks,
    load_loco_truth,
    loco_categories,
    read_loco,
    read_subtype_list,
    select_subtype,
    subtype_of,
    union_mask,
)
from jzad.data.datasets import (
    CLI_DATASETS,
    CategorySources,
    LocoImages,
    category_sources,
    check_subtypes,
    dataset_categories,
)
from jzad.data.readers import (
    DATASETS,
    IMAGE_EXTENSIONS,
    MASK_EXTENSIONS,
    MASK_FOLDER_NAMES,
    list_categories,
    read_dataset,
)
from jzad.data.sources import ArrayImages, FileImages, prefetch_batches
from jzad.data.synthetic_features import ShiftedFeatureSet, make_shifted_feature_set
from jzad.data.subsets import official_subsets, reference_draw, stratified_subsets
from jzad.data.synthetic import DEFECT_KINDS, make_synthetic_set, write_synthetic_loco, write_synthetic_mvtec

__all__ = [
    "CLI_DATASETS",
    "CategorySources",
    "LocoImages",
    "category_sources",
    "check_subtypes",
    "dataset_categories",
    "union_mask",
    "write_synthetic_loco",
    "ShiftedFeatureSet",
    "make_shifted_feature_set",
    "reference_draw",
    "LOCO_CATEGORIES",
    "SUBTYPE_RULES",
    "HueRule",
    "LocoSet",
    "assign_subtypes",
    "load_loco_masks",
    "load_loco_truth",
    "loco_categories",
    "read_loco",
    "read_subtype_list",
    "select_subtype",
    "subtype_of",
    "DECODE_FORMATS",
    "DataError",
    "DataNotFoundError",
    "MASK_FOLDER_NAMES",
    "MaskReport",
    "decode_mask",
    "display_name",
    "image_hw",
    "mask_size_warnings",
    "output_names",
    "read_masks",
    "read_set_masks",
    "to_rgb_array",
    "ArrayImages",
    "FileImages",
    "official_subsets",
    "prefetch_batches",
    "DATASETS",
    "DEFAULT_MASK_RULES",
    "DEFAULT_MASK_THRESHOLDS",
    "DEFECT_KINDS",
    "IMAGE_EXTENSIONS",
    "ImageSet",
    "MASK_EXTENSIONS",
    "MASK_RULES",
    "list_categories",
    "load_image",
    "load_images",
    "load_mask",
    "load_masks",
    "load_set_masks",
    "make_synthetic_set",
    "open_image",
    "read_dataset",
    "resize_binary_mask",
    "resize_rgb",
    "stratified_subsets",
    "write_synthetic_mvtec",
]
