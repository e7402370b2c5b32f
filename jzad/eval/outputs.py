"""Files a run writes for people and for evaluation scripts: map TIFFs, captioned overlays, summary figures.

- ``output_paths``: unique relative output paths that keep each image's path under the data root (so
  ``001.png`` and ``001.jpg`` never collide; the extension is kept only where two names would clash).
- ``save_map_tiffs``: one float32 TIFF per image at the metric resolution or resized to each image's original
  (H, W) (the layout the official MVTec AD / MVTec LOCO evaluation scripts read).
- ``save_captioned_overlays``: image | overlay | mask contour panels with the image name, its image score,
  verdict and label, and a labelled colour bar of the category's shared pixel-score scale (``HeatmapStyle``:
  the method's units, 0-1 display for raw distances, a mark on figures from random weights).
- ``evaluation_names``: ``<category>/test/<type>/<id>`` names for the map TIFFs and heatmaps, the category
  folder never repeated.
- ``save_summary``: per category, the ROC curve, the precision-recall curve and the score histograms of normal
  vs anomalous images (matplotlib, Agg backend).
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from jzad.data.names import output_names
from jzad.eval.heatmaps import jet, panels, value_range

_BAR_WIDTH = 14
_CAPTION_HEIGHT = 16


def output_paths(names, suffix: str) -> list[str]:
    """Relative output paths (POSIX) for image names: ``jzad.data.output_names`` (safe, unique, the relative
    path kept) with the image extension replaced by ``suffix``, or kept before it (``001.png.tiff``) for names
    that would otherwise share a path."""
    safe = output_names([str(n) for n in names])
    short = [os.path.splitext(name)[0] or name for name in safe]
    counts = Counter(name.lower() for name in short)
    return [(s if counts[s.lower()] == 1 else full) + suffix for s, full in zip(short, safe)]


def map_at_size(amap: np.ndarray, size) -> np.ndarray:
    """A float map (h, w) resized to size (H, W) with PIL bilinear on the float32 image (what the map TIFFs
    at image size hold); unchanged when it already has that size."""
    h, w = (int(v) for v in size)
    amap = np.ascontiguousarray(amap, dtype=np.float32)
    if amap.shape == (h, w):
        return amap
    return np.asarray(Image.fromarray(amap, mode="F").resize((w, h), Image.Resampling.BILINEAR))


def save_map_tiffs(out_dir, names, maps: np.ndarray, sizes=None) -> list[Path]:
    """One float32 TIFF per map under out_dir (paths from ``output_paths``); sizes: each image's (H, W) to
    resize to (``map_at_size``), or None for the maps' own resolution."""
    out_dir = Path(out_dir)
    paths = []
    for rel, index in zip(output_paths(names, ".tiff"), range(len(maps))):
        amap = maps[index] if sizes is None else map_at_size(maps[index], sizes[index])
        path = out_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.ascontiguousarray(amap, dtype=np.float32), mode="F").save(path, format="TIFF")
        paths.append(path)
    return paths


@dataclass(frozen=True)
class HeatmapStyle:
    """How a run's overlays explain themselves.

    units: what the map values are (the method's units, e.g. "squared L2 distance to the memory bank").
    normalised: show maps on a 0-1 scale over the category (for raw-distance methods whose values, such as
    6.4e4, mean nothing to a reader); the raw values stay in the CSV and the map TIFFs. random_weights: the
    backbone has random weights, so every figure carries a mark saying its scores mean nothing."""

    units: str = "anomaly score"
    normalised: bool = False
    random_weights: bool = False

    def bar_label(self, lo: float, hi: float) -> str:
        """The colour bar's label: the pixel score it shows, and its raw range when normalised."""
        if self.normalised:
            return f"pixel {self.units}\n0-1 over the category (raw {lo:.3g} to {hi:.3g})"
        return f"pixel {self.units}"


RANDOM_WEIGHTS_MARK = "RANDOM WEIGHTS: scores are not meaningful"
_MARK_RGB = (200, 0, 0)


def _wrapped(text: str, width: int, font) -> str:
    """``text`` with each line broken between words so that no line is wider than ``width`` pixels (a single
    word wider than that stays whole)."""
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    lines = []
    for line in text.split("\n"):
        current = ""
        for word in line.split(" "):
            trial = f"{current} {word}" if current else word
            if current and measure.textlength(trial, font=font) > width:
                lines.append(current)
                current = word
            else:
                current = trial
        lines.append(current)
    return "\n".join(lines)


def _vertical_text(text: str, height: int) -> Image.Image:
    """Text (lines split at newlines, and between words where a line is longer than ``height``) rotated 90
    degrees, reading bottom to top, on a white strip of the given height."""
    font = ImageFont.load_default()
    text = _wrapped(text, height - 4, font)
    left, top, right, bottom = ImageDraw.Draw(Image.new("RGB", (1, 1))).multiline_textbbox((0, 0), text, font=font)
    strip = Image.new("RGB", (max(right - left + 4, height), bottom - top + 4), (255, 255, 255))
    ImageDraw.Draw(strip).multiline_text((2 - left, 2 - top), text, fill=(0, 0, 0), font=font)
    rotated = strip.rotate(90, expand=True)
    return rotated.crop((0, rotated.height - height, rotated.width, rotated.height))


def colour_bar(height: int, lo: float, hi: float, label: str = "") -> np.ndarray:
    """uint8 (height, width, 3) vertical jet bar, high values on top, with the scale's ends printed and, when
    given, ``label`` written along it (wrapped to the bar's height)."""
    ramp = np.linspace(1.0, 0.0, height, dtype=np.float32)[:, None].repeat(_BAR_WIDTH, axis=1)
    bar = np.round(jet(ramp) * 255.0).astype(np.uint8)
    label_width = 56
    side = _vertical_text(label, height) if label else None
    extra = side.width if side is not None else 0
    canvas = Image.new("RGB", (_BAR_WIDTH + label_width + extra, height), (255, 255, 255))
    canvas.paste(Image.fromarray(bar), (0, 0))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    draw.text((_BAR_WIDTH + 2, 0), f"{hi:.3g}", fill=(0, 0, 0), font=font)
    draw.text((_BAR_WIDTH + 2, height - 11), f"{lo:.3g}", fill=(0, 0, 0), font=font)
    if side is not None:
        canvas.paste(side, (_BAR_WIDTH + label_width, 0))
    return np.asarray(canvas)


def captioned_panel(image: np.ndarray, amap: np.ndarray, mask, caption: str, lo: float, hi: float,
                    style: HeatmapStyle = HeatmapStyle()) -> np.ndarray:
    """One picture: a caption line over image | overlay | mask contour, with the labelled colour bar at the
    right; a normalised style shows the bar from 0 to 1 (the colours are the same), and a random-weights style
    adds a red mark line under the caption."""
    body = panels(image[None], amap[None], None if mask is None else mask[None], 0.5, lo, hi)[0]
    shown = (0.0, 1.0) if style.normalised else (lo, hi)
    bar = colour_bar(body.shape[0], *shown, style.bar_label(lo, hi))
    row = np.concatenate([body, np.full((body.shape[0], 4, 3), 255, np.uint8), bar], axis=1)
    top = _CAPTION_HEIGHT * (2 if style.random_weights else 1)
    canvas = Image.new("RGB", (row.shape[1], row.shape[0] + top), (255, 255, 255))
    canvas.paste(Image.fromarray(row), (0, top))
    draw = ImageDraw.Draw(canvas)
    draw.text((2, 2), caption, fill=(0, 0, 0), font=ImageFont.load_default())
    if style.random_weights:
        draw.text((2, 2 + _CAPTION_HEIGHT), RANDOM_WEIGHTS_MARK, fill=_MARK_RGB, font=ImageFont.load_default())
    return np.asarray(canvas)


def caption(name: str, score: float, label=None, defect_type=None, normalised: float | None = None,
            flagged: bool | None = None) -> str:
    """"name | image score 0.123 | verdict anomalous (0.71 on the 0-1 scale, threshold 0.5) | truth: anomalous
    (crack)": the image score is named as such (it is not the map's maximum shown on the bar); the verdict part
    only when a threshold exists, the truth part only when the label is known."""
    text = f"{name} | image score {score:.4g}"
    if flagged is not None:
        text += f" | verdict {'anomalous' if flagged else 'normal'}"
        if normalised is not None:
            text += f" ({normalised:.2f}, threshold 0.5)"
    if label is not None:
        text += " | truth: " + ("anomalous" if int(label) else "normal")
        if defect_type:
            text += f" ({defect_type})"
    return text


def save_captioned_overlays(out_dir, names, images: np.ndarray, maps: np.ndarray, masks, scores, labels,
                            defect_types, value_scale: tuple[float, float], style: HeatmapStyle = HeatmapStyle(),
                            normalised=None, flagged=None) -> list[Path]:
    """Write ``captioned_panel`` PNGs for a batch of images under out_dir (paths from ``output_paths``).

    images uint8 (n, H, W, 3), maps (n, H, W), masks (n, H, W) or None; value_scale: the category's shared
    (lo, hi) colour scale (see ``heatmaps.value_range``); normalised / flagged: each image's normalised score
    and verdict (``jzad.eval.verdict``), or None without a threshold."""
    out_dir = Path(out_dir)
    lo, hi = value_scale
    paths = []
    for i, rel in enumerate(output_paths(names, ".png")):
        label = None if labels is None else labels[i]
        kind = None if defect_types is None else defect_types[i]
        text = caption(names[i], float(scores[i]), label, kind,
                       None if normalised is None else float(normalised[i]),
                       None if flagged is None else bool(flagged[i]))
        picture = captioned_panel(images[i], maps[i], None if masks is None else masks[i], text, lo, hi, style)
        path = out_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(picture).save(path, compress_level=1)
        paths.append(path)
    return paths


def evaluation_names(names, folder: str) -> list[str]:
    """Image names laid out as the official MVTec AD / LOCO evaluation scripts read maps,
    ``<folder>/test/<type>/<id>``: names already under ``folder`` (paths relative to the dataset root, e.g.
    ``grid/test/bent/000.png``) are kept, others (relative to the category folder, e.g. LOCO's
    ``test/good/000.png``) get ``folder/`` in front, so a category's folder never repeats."""
    out = []
    for name in names:
        posix = Path(str(name)).as_posix()
        out.append(posix if not folder or posix.split("/", 1)[0] == folder else f"{folder}/{posix}")
    return out


def save_summary(path, category: str, scores: np.ndarray, labels) -> Path:
    """summary_<category>.png: ROC and precision-recall curves (when both classes are present) and the score
    histograms of normal vs anomalous images (all scores when unlabelled)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from jzad.eval.metrics import image_metrics, roc_pr_curves

    scores = np.asarray(scores, np.float64)
    both = labels is not None and 0 < int(np.sum(labels)) < len(labels)
    figure, axes = plt.subplots(1, 3 if both else 1, figsize=(13 if both else 5, 4), squeeze=False)
    axes = axes[0]
    if both:
        labels = np.asarray(labels)
        curves = roc_pr_curves(scores, labels)
        summary = image_metrics(scores, labels)
        axes[0].plot(curves["fpr"], curves["tpr"])
        axes[0].plot([0, 1], [0, 1], linestyle=":", color="grey")
        axes[0].set(title=f"ROC (AUROC {summary['auroc']:.3f})", xlabel="false positive rate",
                    ylabel="true positive rate")
        axes[1].plot(curves["recall"], curves["precision"])
        axes[1].set(title=f"precision-recall (AP {summary['ap']:.3f})", xlabel="recall", ylabel="precision",
                    ylim=(0, 1.02))
        bins = np.histogram_bin_edges(scores, bins=30)
        axes[2].hist(scores[labels == 0], bins=bins, alpha=0.6, label=f"normal ({int((labels == 0).sum())})")
        axes[2].hist(scores[labels == 1], bins=bins, alpha=0.6, label=f"anomalous ({int(labels.sum())})")
        axes[2].legend()
        axes[2].set(title="image scores", xlabel="score", ylabel="images")
    else:
        axes[0].hist(scores, bins=30)
        axes[0].set(title="image scores (no labels)", xlabel="score", ylabel="images")
    figure.suptitle(category)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=80)
    plt.close(figure)
    return path


__all__ = ["RANDOM_WEIGHTS_MARK", "HeatmapStyle", "caption", "captioned_panel", "colour_bar", "evaluation_names",
           "output_paths", "save_captioned_overlays",
           "save_map_tiffs", "save_summary", "value_range"]
