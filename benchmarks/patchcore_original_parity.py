"""jzad's PatchCore against the original amazon-science/patchcore-inspection code run as the oracle, on real
photos (MVTec hazelnut from shared/data), 1 and 4 shots, both settings of the BatchNorm option.

    JZAD_PATCHCORE_ORIGINAL=/path/to/patchcore-inspection [JZAD_ORIGINAL_PYTHONPATH=/dir/with/torchvision] \\
        python -m benchmarks.patchcore_original_parity [--test 0] [--out benchmarks/results/...json]

The oracle runs in its own process (``benchmarks/patchcore_original_oracle.py``: the original's MVTecDataset,
PatchCore.load/fit/predict, FaissNN, IdentitySampler) on a random-weight torchvision WideResNet-50-2 state dict;
jzad runs the same state dict file through the shared driver (``jzad.pipeline.run_category``, as ``python -m
jzad.run --method patchcore --weights FILE --coreset-ratio 1.0 [--bn-stats checkpoint]``) on the same reference
and test images. Setting "original" (jzad's default) is compared with the original run as published (backbone in
train mode at load); "checkpoint" with the original run whose backbone was put in eval mode before ``load``.
Errors are max |jzad - original| relative to the original's score scale (its largest image score; its largest
map value for maps), and, recorded beside, relative to the range of its scores over the set. ``JZAD_ORIGINAL_PYTHONPATH`` is prepended to the oracle's PYTHONPATH (a folder where
torchvision and timm were installed with ``pip install --no-deps --target``, when the environment has none).
"""

from __future__ import annotations

import argparse
import datetime
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
ENV_COPY = "JZAD_PATCHCORE_ORIGINAL"
ENV_PATH = "JZAD_ORIGINAL_PYTHONPATH"
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "mvtec_subset"
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "patchcore_original_parity_cpu.json"
BN_STATS = ("original", "checkpoint")


def original_copy() -> tuple[Path | None, str]:
    """The local copy of the original repository named by $JZAD_PATCHCORE_ORIGINAL, or None and why not."""
    value = os.environ.get(ENV_COPY)
    if not value:
        return None, (f"set {ENV_COPY} to a local copy of github.com/amazon-science/patchcore-inspection "
                      f"(and {ENV_PATH} to where torchvision and timm import from, if the environment lacks them; "
                      "faiss-cpu is the [oracle] extra)")
    path = Path(value)
    if not (path / "src" / "patchcore" / "patchcore.py").is_file():
        return None, f"{ENV_COPY}={value}: no src/patchcore/patchcore.py there"
    return path, ""


def run_oracle(copy: Path, data: Path, category: str, weights: Path, shots, test: int, out: Path,
               make_weights: bool) -> dict:
    """The original code in its own process -> its arrays (scores_K_bn, maps_K_bn, paths, note)."""
    env = dict(os.environ)
    extra = os.environ.get(ENV_PATH)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (extra, env.get("PYTHONPATH")) if p)
    command = [sys.executable, str(Path(__file__).with_name("patchcore_original_oracle.py")), "--copy", str(copy),
               "--data", str(data), "--category", category, "--weights", str(weights), "--shots",
               ",".join(str(k) for k in shots), "--test", str(test), "--out", str(out)]
    if make_weights:
        command.append("--make-weights")
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"the original code failed (exit {done.returncode}): {done.stderr.strip()[-2000:]}")
    with np.load(out) as arrays:
        return {k: arrays[k] for k in arrays.files}


def run_jzad(data: Path, category: str, weights: Path, train_paths, test_paths, bn_stats: str):
    """jzad's PatchCore through the driver on the same images: -> image scores (N,), maps (N, 224, 224)."""
    from jzad import data as jdata
    from jzad.methods import RunContext, get_method
    from jzad.pipeline import Scorer, run_category

    def pick(image_set, paths):
        index = {str(Path(p).resolve()): i for i, p in enumerate(image_set.paths)}
        return jdata.FileImages(image_set.select([index[str(Path(p).resolve())] for p in paths]), root=data)

    method = get_method("patchcore")
    backbone = _backbone(weights, method)
    config = method.configure({"coreset_ratio": 1.0, "bn_stats": bn_stats},
                              RunContext("mvtec", backbone.image_size, shots=len(train_paths)))
    test = pick(jdata.read_dataset("mvtec", data, category), test_paths)
    train = pick(jdata.read_dataset("mvtec", data, category, split="train"), train_paths)
    result = run_category(Scorer(method, config, backbone), test, category, train)
    return np.asarray(result.image_scores, np.float64), np.asarray(result.maps, np.float32)


_BACKBONES: dict = {}


def _backbone(weights: Path, method):
    """The state dict file loaded once per process (the load-time BatchNorm update is then cached on it)."""
    from jzad.features import load_backbone

    if weights not in _BACKBONES:
        _BACKBONES[weights] = load_backbone(str(weights), method.backbone_run("wide-resnet50-2"))
    return _BACKBONES[weights]


def relative_error(ours: np.ndarray, original: np.ndarray, scale: str = "max") -> float:
    """max |ours - original| relative to the original's score scale: its largest magnitude ("max", the
    project's convention for parity) or its range over the set ("range", stricter when scores share a large
    offset)."""
    ours, original = np.asarray(ours, np.float64), np.asarray(original, np.float64)
    if ours.shape != original.shape:
        raise ValueError(f"shapes differ: jzad {ours.shape}, original {original.shape}")
    size = np.abs(original).max() if scale == "max" else original.max() - original.min()
    return float(np.abs(ours - original).max() / size)


def compare(copy: Path, data: Path, category: str, shots=(1, 4), test: int = 0, workdir: Path | None = None) -> dict:
    """Both sides on both BatchNorm settings and every shot count -> errors, plus the cross errors (jzad's
    setting against the original's other setting) that show how much the BatchNorm update moves scores."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(workdir or tmp)
        weights = folder / "wide_resnet50_2_random.pt"
        start = time.perf_counter()
        oracle = run_oracle(copy, data, category, weights, shots, test, folder / "oracle.npz", True)
        oracle_seconds = time.perf_counter() - start
        rows = []
        start = time.perf_counter()
        for k in shots:
            for bn_stats in BN_STATS:
                image, maps = run_jzad(data, category, weights, oracle[f"train_paths_{k}"], oracle["test_paths"],
                                       bn_stats)
                other = BN_STATS[1 - BN_STATS.index(bn_stats)]
                rows.append({
                    "shots": int(k), "bn_stats": bn_stats, "images": int(len(image)),
                    "image_error": relative_error(image, oracle[f"scores_{k}_{bn_stats}"]),
                    "map_error": relative_error(maps, oracle[f"maps_{k}_{bn_stats}"]),
                    "image_error_of_range": relative_error(image, oracle[f"scores_{k}_{bn_stats}"], "range"),
                    "map_error_of_range": relative_error(maps, oracle[f"maps_{k}_{bn_stats}"], "range"),
                    "image_error_vs_other_setting": relative_error(image, oracle[f"scores_{k}_{other}"]),
                    "map_error_vs_other_setting": relative_error(maps, oracle[f"maps_{k}_{other}"]),
                })
        jzad_seconds = time.perf_counter() - start
    return {"rows": rows, "oracle_note": str(oracle["note"]), "oracle_seconds": oracle_seconds,
            "jzad_seconds": jzad_seconds}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="MVTec-layout root holding --category")
    parser.add_argument("--category", default="hazelnut")
    parser.add_argument("--test", type=int, default=0, help="first N test images in the original's order (0: all)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    copy, why = original_copy()
    if copy is None:
        raise SystemExit(why)
    import jax

    from benchmarks.harness import commit as checkout_commit, cpu_name, versions
    from benchmarks.report import dumps

    result = compare(copy, args.data, args.category, test=args.test)
    commit = subprocess.run(["git", "-C", str(copy), "rev-parse", "HEAD"], capture_output=True, text=True)
    payload = {
        "kind": "patchcore_original_parity",
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "oracle": {"repository": "github.com/amazon-science/patchcore-inspection",
                   "commit": commit.stdout.strip() or "fcaa92f124fb1ad74a7acf56726decd4b27cbcad (fetched snapshot)",
                   "run": "PatchCore.load/fit/predict, layer2+layer3, embed 1024/1024, patch 3, 1 NN, IdentitySampler, "
                          "FaissNN (faiss-cpu), MVTecDataset transforms (Resize 256, CenterCrop 224)",
                   "note": result["oracle_note"]},
        "weights": "torchvision wide_resnet50_2(weights=None) state dict, torch.manual_seed(0)",
        "data": f"{args.data.name}/{args.category} (real photos): first {args.test or 'all'} test images, the first "
                "K train/good images as references",
        "threshold": 1e-4, "rows": result["rows"],
        "passed": all(r["image_error"] <= 1e-4 and r["map_error"] <= 1e-4 for r in result["rows"]),
        "seconds": {"oracle": result["oracle_seconds"], "jzad": result["jzad_seconds"]},
        "device": {"platform": jax.devices()[0].platform, "cpu": cpu_name(), "cpu_count": os.cpu_count(),
                   "load_average_1m": os.getloadavg()[0]},
        "versions": versions("torch", "transformers"), "commit": checkout_commit(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(dumps(payload) + "\n")
    for row in result["rows"]:
        print(row)
    return 0 if payload["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
