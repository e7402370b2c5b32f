"""jzad.eval: metrics (AUROC, AP, F1-max, AUPRO), verdicts (thresholds), heatmap images and reports, all
host-side NumPy."""

from jzad.eval.heatmaps import colorize, jet, mask_contour, overlay, panels, sanitize_name, save_overlays, value_range
from jzad.eval.metrics import aupro, image_metrics, label_regions, pixel_metrics
from jzad.eval.spro import (
    OFFICIAL_MAX_FPRS,
    DefectConfig,
    SPROTruth,
    auc_spro,
    loco_image_metrics,
    loco_localization,
    parse_defects_config,
    spro_curve,
    truth_from_channels,
)
from jzad.eval.verdict import Threshold, at_threshold, choose_threshold, normalised_scores
from jzad.eval.report import environment_info, format_table, to_jsonable, write_results_json, write_scores_csv

__all__ = [
    "OFFICIAL_MAX_FPRS",
    "DefectConfig",
    "SPROTruth",
    "Threshold",
    "at_threshold",
    "choose_threshold",
    "normalised_scores",
    "auc_spro",
    "loco_image_metrics",
    "loco_localization",
    "parse_defects_config",
    "spro_curve",
    "truth_from_channels",
    "aupro",
    "colorize",
    "environment_info",
    "format_table",
    "image_metrics",
    "jet",
    "label_regions",
    "mask_contour",
    "overlay",
    "panels",
    "pixel_metrics",
    "sanitize_name",
    "save_overlays",
    "to_jsonable",
    "value_range",
    "write_results_json",
    "write_scores_csv",
]
