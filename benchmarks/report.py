"""README "Performance" section from the benchmark results: benchmarks/results/musc_*.json -> markdown.

    python benchmarks/report.py [--results benchmarks/results] [--out benchmarks/results/PERFORMANCE.md]

Every number comes from a JSON file written by ``python -m benchmarks.musc_timing`` (date, device, versions,
shapes and timings are taken from the file, nothing is typed in here). The section is printed to stdout and
written to --out. ``render_run`` is also what the harness prints after a run.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
STAGE_NAMES = {"extract": "feature extraction", "lnamd": "LNAMD", "msm": "MSM", "upsample": "upsample",
               "rscin": "RsCIN", "features": "LNAMD (taps concatenated)", "init": "init", "expand": "expand", "filter": "filter", "score": "score"}
MIB = float(1 << 20)


def dumps(payload: dict) -> str:
    """JSON text of a results payload; non-finite floats are refused (they would not be valid JSON)."""
    return json.dumps(payload, indent=2, allow_nan=False)


def rscin_parity(parity: dict) -> str:
    """Both sides' RsCIN against float64 NumPy on the same inputs, which tells a near-tied neighbour reordered
    by float32 rounding from an arithmetic difference; empty for results files written before they were
    recorded."""
    if "rscin_jzad_vs_float64_max_abs" not in parity:
        return ""
    return (f"; RsCIN on the reference's inputs against float64 NumPy: jzad "
            f"{parity['rscin_jzad_vs_float64_max_abs']:.2g}, reference "
            f"{parity['rscin_reference_vs_float64_max_abs']:.2g}: RsCIN picks each image's nearest images by similarities that near-tie on random weights, where float32 "
            f"rounding can reorder them")


def fmt(value: float | None) -> str:
    """A number with about three significant digits, "n/a" for None."""
    if value is None:
        return "n/a"
    if not math.isfinite(value):
        raise ValueError(f"fmt: non-finite value {value!r} in the results")
    size = abs(value)
    if size >= 100:
        return f"{value:.0f}"
    if size >= 10:
        return f"{value:.1f}"
    if size >= 1:
        return f"{value:.2f}"
    if size >= 0.01:
        return f"{value:.3f}"
    return f"{value:.2g}"


def _mb(nbytes: int | None) -> str:
    return "n/a" if nbytes is None else fmt(nbytes / MIB)


def device_text(payload: dict) -> str:
    """"NVIDIA H100 80GB HBM3" / "CPU: <model> (2 cores, torch 2 threads)" from a payload's device block."""
    device = payload["device"]
    if device["platform"] == "cpu":
        text = f"CPU: {device['cpu']} ({device['cpu_count']} cores, torch {device['torch_threads']} threads"
        load = device.get("load_average")
        if load:
            text += (f"; 1-min load average during the run {fmt(load['min'])} / {fmt(load['median'])} / "
                     f"{fmt(load['max'])} min / median / max")
        text += ")"
    else:
        text = device.get("torch_device_name") or device["kind"]
        text = f"{device['platform'].upper()}: {text}"
    if device.get("shards", 1) > 1:
        text += f", {device['shards']} shards"
    return text


def _breakdown_table(payload: dict) -> list[str]:
    stages = payload["stages"]
    config = payload["config"]
    jax_sum, ref_sum = payload["jax"]["summary"], payload["reference"]["summary"]
    head = "| implementation | " + " | ".join(STAGE_NAMES[s] for s in stages)
    head += " | total | compile (s) | peak memory (MiB) |"
    lines = [head, "|" + "---|" * (len(stages) + 4)]
    jax_compile = sum(jax_sum["stages"][s]["compile_s"] for s in stages)
    label = f"jzad (JAX, {config['precision']}, MSM schedule {config['schedule_resolved']})"
    cells = [fmt(jax_sum["stages"][s]["per_image_ms"]) for s in stages]
    lines.append(f"| {label} | " + " | ".join(cells)
                 + f" | {fmt(jax_sum['total_per_image_ms'])} | {fmt(jax_compile)} | "
                 + f"{_mb(payload['jax']['memory']['peak_bytes'])} |")
    cells = [fmt(ref_sum["stages"][s]["per_image_ms"]) for s in stages]
    lines.append(f"| PyTorch reference (fp32, cdist {config['cdist_mode']}) | " + " | ".join(cells)
                 + f" | {fmt(ref_sum['total_per_image_ms'])} | n/a | "
                 + f"{_mb(payload['reference']['memory']['peak_bytes'])} |")
    ratios = [fmt(ref_sum["stages"][s]["median_s"] / jax_sum["stages"][s]["median_s"]) + "x" for s in stages]
    lines.append("| speed-up (reference / JAX) | " + " | ".join(ratios)
                 + f" | {fmt(ref_sum['total_median_s'] / jax_sum['total_median_s'])}x | | |")
    return lines


def _roofline_table(rows: dict, n: int) -> list[str]:
    lines = ["| stage | GFLOP/image | MB/image | floor (ms/image) | JAX (ms/image) | JAX / floor "
             "| reference (ms/image) | reference / floor |", "|---|---|---|---|---|---|---|---|"]
    for stage, row in rows.items():
        lines.append(
            f"| {STAGE_NAMES[stage]} | {fmt(row['flops'] / n / 1e9)} | {fmt(row['bytes'] / n / 1e6)} | "
            f"{fmt(1e3 * row['floor_s'] / n)} | {fmt(1e3 * row['jax_s'] / n)} | {fmt(row['jax_over_floor'])}x | "
            f"{fmt(1e3 * row['reference_s'] / n)} | {fmt(row['reference_over_floor'])}x |"
        )
    return lines


def _scaling_table(payload: dict) -> list[str]:
    lines = ["| N | JAX (ms/image) | JAX MSM (ms/image) | JAX peak (MiB) | JAX MSM temp (MiB) | JAX compile (s) "
             "| reference (ms/image) | reference MSM (ms/image) | reference peak (MiB) | speed-up | note |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in payload["scaling"]:
        cells, notes = [str(row["n"])], []
        for impl in ("jax", "reference"):
            entry = row[impl]
            if entry["status"] == "ok":
                summary = entry["summary"]
                cells += [fmt(summary["total_per_image_ms"]), fmt(summary["stages"]["msm"]["per_image_ms"]),
                          _mb(entry["memory"]["peak_bytes"])]
                if impl == "jax":
                    cells.append(_mb(entry["msm_program_memory"].get("temp_size_in_bytes")))
                    cells.append(fmt(sum(s["compile_s"] for s in summary["stages"].values())))
            else:
                cells += ["-", "-", "-"] + (["-", "-"] if impl == "jax" else [])
                reason = entry.get("reason") or entry.get("error")
                notes.append(f"{'JAX' if impl == 'jax' else 'reference'} {entry['status']}: {reason}")
        both = row["jax"]["status"] == "ok" and row["reference"]["status"] == "ok"
        speed = (row["reference"]["summary"]["total_median_s"] / row["jax"]["summary"]["total_median_s"]) if both else None
        cells.append("-" if speed is None else fmt(speed) + "x")
        cells.append("; ".join(notes))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def render_run(payload: dict) -> str:
    """Markdown of one musc_timing results payload: breakdown, fused time, parity, roofline, scaling."""
    config, versions, parity = payload["config"], payload["versions"], payload["parity"]
    jax_stages, ref_stages = payload["jax"]["summary"]["stages"], payload["reference"]["summary"]["stages"]
    out = [
        f"### MuSc, {config['backbone']} ({config['activation']}), N = {config['n']}, {config['precision']}: "
        f"{device_text(payload)}",
        "",
        f"{payload['date']}; jax {versions['jax']}, torch {versions['torch']}, transformers "
        f"{versions['transformers']}, python {versions['python']}"
        + (f", commit {payload['commit']}" if payload.get("commit") else "") + ". "
        f"Random weights of the real shapes, random images; M = {config['m']} patches, C = {config['width']}, "
        f"taps {config['taps']}, r {config['r_list']}; median of {config['repeats']} repeats after a warm-up, "
        "device synchronised before every clock read, compile time apart."
        + (f" Note: {payload['note']}" if payload.get("note") else ""),
        "",
        "Per-image time by stage (ms/image):",
        "",
        *_breakdown_table(payload),
        "",
        f"MSM speed-up at N = {config['n']}: **"
        f"{fmt(ref_stages['msm']['median_s'] / jax_stages['msm']['median_s'])}x** (reference per-image cdist "
        f"{fmt(ref_stages['msm']['per_image_ms'])} ms/image, JAX {fmt(jax_stages['msm']['per_image_ms'])} ms/image).",
    ]
    fused = payload["jax"].get("fused")
    if fused:
        staged = sum(jax_stages[s]["per_image_ms"] for s in ("lnamd", "msm", "upsample", "rscin"))
        if "summary" in fused:
            what = ("JAX scoring as the command line runs it (the driver's fused profile: LNAMD + MSM + max of the "
                    "upsampled maps as one jitted program, then the maps and RsCIN)")
        else:
            what = "JAX scoring as one compiled program (score_musc: LNAMD + MSM + max of upsampled maps + RsCIN)"
        out += ["", f"{what}: {fmt(fused['per_image_ms'])} ms/image (compile {fmt(fused['compile_s'])} s); the "
                f"same stages timed one by one: {fmt(staged)} ms/image."]
    programs = payload["jax"].get("program_memory") or {}
    temp = {name: mem.get("temp_size_in_bytes") for name, mem in programs.items() if mem}
    if temp:
        lnamd_temp = max(v for k, v in temp.items() if k.startswith("lnamd"))
        extract_temp = max(v for k, v in temp.items() if k.startswith("extract"))
        fused_temp = f"the fused scoring program {_mb(temp['score'])} MiB, " if "score" in temp else ""
        out += ["", f"JAX compiled temp buffers (memory_analysis): {fused_temp}MSM {_mb(temp['msm'])} MiB, LNAMD "
                f"{_mb(lnamd_temp)} MiB, extraction {_mb(extract_temp)} MiB, upsample {_mb(temp['upsample'])} MiB "
                f"(peak memory above: {payload['jax']['memory']['method']}; reference: "
                f"{payload['reference']['memory']['method']})."]
    out += ["", f"Parity (max abs difference, JAX vs reference, each on its own features): patch scores "
            f"{parity['patch_scores_max_abs']:.2g}, image scores {parity['image_scores_max_abs']:.2g} "
            f"(before RsCIN {parity['image_scores_raw_max_abs']:.2g}{rscin_parity(parity)}), "
            f"maps {parity['maps_max_abs']:.2g}, "
            f"taps {parity['taps_max_abs']:.2g} (largest |tap| {parity['taps_max_magnitude']:.3g}), "
            f"embeddings {parity['embeds_max_abs']:.2g}."]
    ceilings = payload["ceilings"]
    out += ["", f"Roofline: measured ceilings fp32 matmul {fmt(ceilings['matmul_fp32_flop_s'] / 1e9)} GFLOP/s, "
            f"bf16 matmul {fmt(ceilings['matmul_bf16_flop_s'] / 1e9)} GFLOP/s, copy "
            f"{fmt(ceilings['copy_bytes_s'] / 1e9)} GB/s; floor = max(FLOPs / matmul rate, bytes / bandwidth); "
            "MSM FLOPs are the symmetric count C M^2 N (N - 1) per (layer, r), half of what the ordered "
            "per-image schedule computes.", "", *_roofline_table(payload["roofline"], config["n"])]
    if payload.get("scaling"):
        sc = payload["scaling_config"]
        out += ["", f"Scaling (scoring stages only, random tokens of this backbone's shape; {sc['repeats']} "
                f"timed pass(es) after a warm-up; budget --max-seconds {sc['max_seconds']:g}):", "",
                *_scaling_table(payload)]
    fslc = payload.get("fslc") or {}
    if fslc.get("status") == "ok":
        out += ["", *_fslc_section(payload)]
    elif fslc:
        out += ["", f"FSLC: {fslc['status']} ({fslc.get('reason', '')})."]
    return "\n".join(out) + "\n"


def _fslc_section(payload: dict) -> list[str]:
    """MuSc vs FSLC at the same N on the same features (the FSLC paper's Table 4), parity, roofline."""
    fslc, n = payload["fslc"], payload["config"]["n"]
    sizes, parity, stages = fslc["sizes"], fslc["parity"], fslc["stages"]
    scoring = ("lnamd", "msm", "upsample", "rscin")
    lines = [f"FSLC at N = {n} on the same features (S = {sizes['init_images']} images, M0 = "
             f"{sizes['init_coreset']}, {sizes['per_image']} patches per image -> {fslc['expanded_size']} points, "
             f"X = {sizes['filter_fraction']}, Otsu filter -> {parity['coreset_size_jax']} (JAX) / "
             f"{parity['coreset_size_reference']} (reference) points, b = {sizes['b']}, r = {sizes['r']}); "
             "feature extraction is the same forward pass as MuSc's (table above). ms/image:", "",
             "| implementation | " + " | ".join(STAGE_NAMES[s] for s in stages)
             + " | FSLC total | MuSc scoring (LNAMD + MSM + upsample + RsCIN) | MuSc / FSLC |",
             "|" + "---|" * (len(stages) + 4)]
    for impl, label in (("jax", "jzad (JAX)"), ("reference", "PyTorch reference")):
        summary = fslc[impl]["summary"]
        musc = payload[impl]["summary"]["stages"]
        musc_ms = sum(musc[s]["per_image_ms"] for s in scoring)
        lines.append(f"| {label} | " + " | ".join(fmt(summary["stages"][s]["per_image_ms"]) for s in stages)
                     + f" | {fmt(summary['total_per_image_ms'])} | {fmt(musc_ms)} | "
                     + f"{fmt(musc_ms / summary['total_per_image_ms'])}x |")
    ratios = [fmt(fslc["reference"]["summary"]["stages"][s]["median_s"] / fslc["jax"]["summary"]["stages"][s]["median_s"])
              + "x" for s in stages]
    lines.append("| speed-up (reference / JAX) | " + " | ".join(ratios) + " | "
                 + fmt(fslc["reference"]["summary"]["total_median_s"] / fslc["jax"]["summary"]["total_median_s"])
                 + "x | | |")
    lines += ["", f"FSLC parity (max abs difference, each on its own features): patch scores "
              f"{parity['patch_scores_max_abs']:.2g}, image scores {parity['image_scores_max_abs']:.2g}, maps "
              f"{parity['maps_max_abs']:.2g}; same init images: {parity['init_images_equal']}.", "",
              *_roofline_table(fslc["roofline"], n)]
    return lines


def load_results(folder: Path) -> list[dict]:
    """Every musc_*.json payload under folder, ordered by platform, backbone, N, date."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"--results: {folder} is not a directory of benchmark results")
    payloads = []
    for path in sorted(folder.glob("musc_*.json")):
        payload = json.loads(path.read_text())
        if payload.get("kind") != "musc_timing":
            raise ValueError(f"{path}: not a musc_timing results file (kind={payload.get('kind')!r})")
        payload["path"] = path.name
        payloads.append(payload)
    return sorted(payloads, key=lambda p: (p["device"]["platform"], p["config"]["backbone"], p["config"]["n"],
                                           p["date"]))


def render_section(payloads: list[dict]) -> str:
    """The README "## Performance" section for a list of results payloads."""
    out = ["## Performance", "",
           "Measured by `python -m benchmarks.musc_timing` (JAX vs the PyTorch reference in "
           "`benchmarks/reference_torch.py`, which runs MuSc the way the original code does: per-image "
           "`torch.cdist`, whole-tensor ops). Generated by `python benchmarks/report.py` from "
           "`benchmarks/results/musc_*.json`; every number below is read from those files.", ""]
    if not payloads:
        out.append("No results yet: run `python -m benchmarks.musc_timing` first.")
    for payload in payloads:
        out += [render_run(payload).rstrip("\n"), "", f"Source: `benchmarks/results/{payload['path']}`.", ""]
    return "\n".join(out).rstrip("\n") + "\n"


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder of musc_*.json files")
    parser.add_argument("--out", type=Path, default=None, help="markdown file (default <results>/PERFORMANCE.md)")
    args = parser.parse_args(argv)
    text = render_section(load_results(args.results))
    out = args.out or Path(args.results) / "PERFORMANCE.md"
    out.write_text(text)
    sys.stdout.write(text)
    return text


if __name__ == "__main__":
    main()
