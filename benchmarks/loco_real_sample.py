"""CLIP-LAD end to end on real MVTec LOCO juice_bottle photos, with planted anomalies, through the CLI.

    python -m benchmarks.loco_real_sample [--data ../shared/data/mvtec_loco_sample] [--backbone random-ViT-B-16]

The shared sample has only 40 real train/good photos (200 x 400, three juices) and no test split, so this
builds a LOCO tree from them: per juice (hand labels of tests/fixtures/juice_bottle_sample_subtypes.csv, used
only to split; the run itself assigns sub-types with the default rule) the first 3 photos are test/good, the next
3 validation/good, the rest train/good (references). Planted on the 3 test photos of each juice, each with its
ground-truth channel:
- logical_anomalies/<id>_wrong_label.png: the top label of a bottle of another juice pasted over its own
  (wrong_juice_type, pixel value 240; the liquid still says which juice);
- logical_anomalies/<id>_no_label.png: the top label painted over with the liquid just below it
  (missing_top_label, 255);
- structural_anomalies/<id>_stain.png: a dark blob on the liquid (contamination, 238).
Then ``python -m jzad.run --method clip_lad --dataset loco --category juice_bottle`` with --loco-subtypes rule
(the default), and a summary of its results.json (metrics per sub-type, the sub-type report) with device,
versions, sizes and load into benchmarks/results/loco_real_sample_<platform>.json.

There are no pretrained CLIP weights on these machines: the backbone is random (or any non-CLIP name given),
so the metrics are a record that the whole path runs on real photos, not a measure of CLIP-LAD's accuracy.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
from PIL import Image

from jzad.data.loco import SUBTYPE_RULES
from jzad.eval import report

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "mvtec_loco_sample"
LABELS = ROOT / "tests" / "fixtures" / "juice_bottle_sample_subtypes.csv"
RULE = SUBTYPE_RULES["juice_bottle"]
WRONG_JUICE_TYPE, MISSING_TOP_LABEL, CONTAMINATION = 240, 255, 238


def label_box(image: np.ndarray) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of the top label: 42-64 % down the located bottle body, 80 px around its
    axis (at the sample's 200 x 400 size)."""
    top, bottom, left, right = RULE.body(image)
    height, centre = bottom - top, (left + right) // 2
    return int(top + 0.42 * height), int(top + 0.64 * height), centre - 40, centre + 40


def plant_wrong_label(image: np.ndarray, donor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    out = image.copy()
    r0, r1, c0, c1 = label_box(donor)
    s0, _, t0, t1 = label_box(image)
    out[s0:s0 + r1 - r0, t0:t1] = donor[r0:r1, c0:c1]
    mask = np.zeros(image.shape[:2], bool)
    mask[s0:s0 + r1 - r0, t0:t1] = True
    return out, mask


def plant_no_label(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    out = image.copy()
    r0, r1, c0, c1 = label_box(image)
    top, bottom, _, _ = RULE.body(image)
    below = image[int(top + 0.68 * (bottom - top)):int(top + 0.74 * (bottom - top)), c0:c1]
    for row in range(r0, r1):
        out[row, c0:c1] = below[(row - r0) % len(below)]
    mask = np.zeros(image.shape[:2], bool)
    mask[r0:r1, c0:c1] = True
    return out, mask


def plant_stain(image: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    top, bottom, left, right = RULE.body(image)
    cy = int(top + rng.uniform(0.7, 0.78) * (bottom - top))
    cx = int((left + right) / 2 + rng.uniform(-10, 10))
    yy, xx = np.mgrid[:image.shape[0], :image.shape[1]]
    mask = ((yy - cy) / 9.0) ** 2 + ((xx - cx) / 13.0) ** 2 <= 1.0
    out = image.copy()
    out[mask] = (out[mask] * 0.25 + np.array([35, 25, 15]) * 0.75).astype(np.uint8)
    return out, mask


def build_tree(data: Path, tree: Path) -> dict:
    """The LOCO root described in the module docstring; returns {relative path: (juice, what)}."""
    folder = data / "juice_bottle" / "train" / "good"
    with open(LABELS, newline="") as f:
        labels = {row["file"]: row["subtype"] for row in csv.DictReader(f)}
    cat = tree / "juice_bottle"
    cat.mkdir(parents=True)
    shutil.copy(data / "juice_bottle" / "defects_config.json", cat / "defects_config.json")
    photos = {name: np.asarray(Image.open(folder / name).convert("RGB")) for name in labels}
    manifest = {}

    def save(relative: str, image: np.ndarray, juice: str, what: str, mask=None, value=0):
        path = cat / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(path)
        manifest[f"juice_bottle/{relative}"] = (juice, what)
        if mask is not None:
            channel = cat / "ground_truth" / Path(relative).parent.name / Path(relative).stem / "000.png"
            channel.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.where(mask, value, 0).astype(np.uint8)).save(channel)

    juices = RULE.names
    for k, juice in enumerate(juices):
        names = sorted(n for n, j in labels.items() if j == juice)
        for name in names[6:]:
            save(f"train/good/{name}", photos[name], juice, "normal")
        for name in names[3:6]:
            save(f"validation/good/{name}", photos[name], juice, "normal")
        donor_juice = juices[(k + 1) % len(juices)]
        donor = photos[sorted(n for n, j in labels.items() if j == donor_juice)[-1]]
        for index, name in enumerate(names[:3]):
            stem = Path(name).stem
            save(f"test/good/{name}", photos[name], juice, "normal")
            if index == 0:
                image, mask = plant_wrong_label(photos[name], donor)
                save(f"test/logical_anomalies/{stem}_wrong_label.png", image, juice,
                     f"{donor_juice} label on a {juice} bottle", mask, WRONG_JUICE_TYPE)
            elif index == 1:
                image, mask = plant_no_label(photos[name])
                save(f"test/logical_anomalies/{stem}_no_label.png", image, juice, "top label removed", mask,
                     MISSING_TOP_LABEL)
            else:
                image, mask = plant_stain(photos[name], int(stem))
                save(f"test/structural_anomalies/{stem}_stain.png", image, juice, "dark stain on the liquid", mask,
                     CONTAMINATION)
    return manifest


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--backbone", default="random-ViT-B-16")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--shots", type=int, default=4)
    parser.add_argument("--out", type=Path, default=None, help="run folder (default: a temporary one)")
    args = parser.parse_args(argv)
    from jzad.run import main as run_main

    load_start = list(os.getloadavg())
    with tempfile.TemporaryDirectory() as scratch:
        tree = Path(scratch) / "loco"
        manifest = build_tree(args.data, tree)
        out = args.out or Path(scratch) / "run"
        command = ["--method", "clip_lad", "--dataset", "loco", "--data", str(tree), "--category", "juice_bottle",
                   "--shots", str(args.shots), "--backbone", args.backbone, "--image-size", str(args.image_size),
                   "--no-heatmaps", "--quiet", "--out", str(out), "--overwrite"]
        start = time.perf_counter()
        status = run_main(command)
        seconds = time.perf_counter() - start
        results = json.loads((out / "results.json").read_text())
        scores = {}
        for entry in results["categories"]:
            with open(out / f"scores_{entry['category']}.csv", newline="") as f:
                scores[entry["category"]] = [{"name": r["name"], "score": float(r["score"]), "label": int(r["label"])}
                                             for r in csv.DictReader(f)]
    summary = {
        "what": "CLIP-LAD on real MVTec LOCO juice_bottle photos (shared sample) with planted anomalies; "
                "random or non-CLIP weights: a record, not a target",
        "command": "python -m jzad.run " + " ".join(command[:-4]),
        "exit_status": status,
        "device": jax.devices()[0].device_kind, "platform": platform.platform(),
        "environment": results["environment"], "backbone": results["backbone"],
        "images": {path: {"juice": juice, "what": what} for path, (juice, what) in manifest.items()},
        "categories": [{k: e[k] for k in ("category", "num_images", "metrics", "subtypes", "notes")}
                       for e in results["categories"]],
        "scores": scores, "failed": results["failed"], "status": results["status"],
        "wall_s": round(seconds, 1), "load_average_start": load_start, "load_average_end": list(os.getloadavg()),
    }
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"loco_real_sample_{jax.devices()[0].platform}.json"
    path.write_text(json.dumps(summary, indent=1, default=float) + "\n")
    rows = [{"category": e["category"], **{k: e["metrics"][k] for k in ("image_auroc", "image_auroc_logical",
                                                                          "image_auroc_structural", "spro_05")}}
            for e in results["categories"]]
    if rows:
        print(report.format_table(rows, ("category", "image_auroc", "image_auroc_logical", "image_auroc_structural",
                                         "spro_05"), title="CLIP-LAD, real juice_bottle photos, planted anomalies"))
    print(f"wrote {path}")
    return summary


if __name__ == "__main__":
    main()
