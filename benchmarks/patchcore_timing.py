"""PatchCore and PatchCore+ timing: the shared driver's stages per image, JAX (jzad) against the PyTorch
reference, in one run.

    python -m benchmarks.patchcore_timing --image-size 224 --shots 2 --queries 8 --batch 4

Both implementations run WideResNet-50-2 with the same random weights on the same synthetic images (half of
the queries with a planted defect), at the paper's settings (224 px crops, taps layer2/layer3, 1024-d
features, coreset ratio 0.05 with 10 random starts and a 128-d projection, PatchCore+ with lambda 0.3, 10 EM
rounds of 50 Sinkhorn iterations and the gradient M-step).
- JAX: ``jzad.pipeline.run_category``, the driver the command line runs, once to compile and once timed on
  a fresh ``StageClock`` (steady state; compile seconds reported apart). Stages as the driver records them:
  "extract" (the backbone over references and queries, per image), "fit" (the references' embedding and the
  coreset, per category), "embed", "nearest" (PatchCore) or "refine" (PatchCore+: Sinkhorn-EM and the scores against the
  refined prototypes), "upsample" (bilinear to 224 + Gaussian blur). The memory bank compared with the reference's is the one
  the driver's ``fit`` builds.
- Reference: ``benchmarks.reference_torch_resnet`` (torchvision's structure, with the original code's load-time
  BatchNorm update by PyTorch's BatchNorm when the run uses it, the default) and the literal steps of
  ``benchmarks.reference_torch_patchcore`` (unfold, interpolate, adaptive_avg_pool1d; the greedy coreset
  with the JAX run's random draws replayed; squared L2 to the nearest bank row; interpolate + scipy's
  gaussian_filter) and ``benchmarks.reference_torch_fastref`` for the refinement, one query at a time.
  One warm-up pass, then the timed pass.
- Parity: max relative difference of the memory bank, patch scores, image scores and maps.
- Refinement cost: FLOPs per image from the shapes (GEMMs in the prototypes' coefficient space, Sinkhorn's
  elementwise work, the M-step), the measured fp32 matmul ceiling (``benchmarks.roofline``) and time over
  that floor.
Writes ``benchmarks/results/patchcore_<platform>.json`` (device, load, versions, sizes, every number).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path

import jax
import numpy as np
import torch

from benchmarks import reference_torch_patchcore as ref
from benchmarks import roofline
from benchmarks import harness
from benchmarks.reference_torch_fastref import refine_reference
from benchmarks.reference_torch_resnet import TorchResNet, load_time_bn_update
from jzad import data as jdata
from jzad.backbone.resnet import IMAGENET_MEAN, IMAGENET_STD
from jzad.backbone.resnet_port import resnet_to_torch
from jzad.features import load_backbone
from jzad.methods import RunContext, get_method
from jzad.methods.patchcore import coreset_draws
from jzad.pipeline import Scorer, fit, run_category
from jzad.timing import StageClock

RESULTS = Path(__file__).resolve().parent / "results"
METHODS = ("patchcore", "patchcore_plus")


def refine_flops(m: int, n: int, c: int, iterations: int, sinkhorn_iterations: int, em_update: str) -> dict:
    """FLOPs of one query's refinement in the prototypes' coefficient space (``jzad.methods.refine``), m patches,
    n prototypes, c channels. gemm: K = f M^T and R = W M (2 m n c each), W0 by two triangular solves
    (2 m n^2), per EM round the cost's G0 W^T and ||R_j||^2 (4 m n^2) and the M-step (gradient: forward and
    backward of the objective's three (m, n) x (n, n) products, about 12 m n^2; closed: one, 2 m n^2), the
    nearest refined prototype (K W^T: 2 m^2 n) and its distance (3 m c). sinkhorn: per iteration two
    log-sum-exps over the (n, m) plan (subtract, scale, exp, sum, log: about 5 n m each) and the plan itself
    (3 n m) per round. The prototypes' Gram and Cholesky factor (once per chunk of images) are left out."""
    step = 12 * m * n * n if em_update == "gradient" else 2 * m * n * n
    gemm = 4 * m * n * c + 2 * m * n * n + iterations * (4 * m * n * n + step) + 2 * m * m * n + 3 * m * c
    sinkhorn = iterations * (sinkhorn_iterations * 10 * n * m + 3 * n * m)
    return {"gemm": float(gemm), "sinkhorn": float(sinkhorn), "total": float(gemm + sinkhorn)}


def synthetic_sources(size: int, shots: int, queries: int, seed: int):
    """ArrayImages of queries (half normal, half with a planted defect, exact masks) and shots references."""
    normal = queries - queries // 2
    images, masks, labels, types = jdata.make_synthetic_set(normal, queries // 2, size=size, seed=seed)
    refs, _, _, _ = jdata.make_synthetic_set(shots, 0, size=size, seed=seed + 1)
    source = jdata.ArrayImages(images, [f"q{i:03d}" for i in range(queries)], labels, types, masks)
    references = jdata.ArrayImages(refs, [f"r{i:03d}" for i in range(shots)], np.zeros(shots, np.int64),
                                   ("good",) * shots)
    return source, references


# --------------------------------------------------------------------------------------------- JAX


def time_jax(method_name: str, backbone, source, references, batch: int, shots: int) -> dict:
    """run_category once to compile, once timed; per-image ms of every driver stage, the fit stage (embedding
    the references and the coreset) per category, compile seconds, and the memory bank the driver's fit built."""
    method = get_method(method_name)
    config = method.configure({}, RunContext("synthetic", backbone.image_size, shots=shots))
    scorer = Scorer(method, config, backbone, None, batch_size=batch, profile="stages")
    run_category(scorer, source, "synthetic", references, clock=StageClock())
    clock = StageClock()
    result = run_category(scorer, source, "synthetic", references, clock=clock)
    queries = len(source)
    stages = {s: 1e3 * t / queries for s, t in clock.run_seconds.items()}
    stages["extract"] = 1e3 * clock.run_seconds["extract"] / (queries + shots)
    state = fit(scorer, references, StageClock())
    return {"config": repr(config), "ms_per_image": stages, "fit_ms_per_category": 1e3 * clock.run_seconds["fit"],
            "compile_s": dict(clock.compile_seconds), "bank": np.asarray(state.bank),
            "image_scores": result.image_scores_raw, "patch_scores": result.patch_scores, "maps": result.maps,
            "metrics": result.metrics}


# --------------------------------------------------------------------------------------------- reference


def torch_backbone(backbone, bn_stats: str) -> TorchResNet:
    """The same weights in torchvision's structure; with ``bn_stats`` "original" (PatchCore's default) the original
    code's load-time BatchNorm update done by PyTorch's own BatchNorm, as the driver's extractor does it."""
    config = backbone.config
    model = TorchResNet(config.layers, config.width_per_group, config.groups, config.base_width).eval()
    state = {k: torch.from_numpy(v.copy()) for k, v in resnet_to_torch(backbone.params, config).items()}
    model.load_state_dict(state, strict=False)
    if bn_stats == "original":
        load_time_bn_update(model, backbone.image_size, "layer3")
    return model


def _normalise(images: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    return (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def reference_pass(model, refs: np.ndarray, images: np.ndarray, batch: int, ratio: float, projection, starts,
                   refine: dict, size: int) -> dict:
    """The reference pipeline stage by stage -> seconds per stage and its outputs."""
    seconds = {}

    def timed(stage, fn, *args, **kwargs):
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        seconds[stage] = seconds.get(stage, 0.0) + time.perf_counter() - start
        return out

    def extract(array):
        parts = [timed("extract", model.features, _normalise(array[i:i + batch])) for i in range(0, len(array), batch)]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    with torch.no_grad():
        train2, train3 = extract(refs)
        test2, test3 = extract(images)
        train = timed("fit_embed", ref.embed_reference, train2, train3)
        bank = timed("coreset", ref.memory_bank_reference, train.reshape(-1, train.shape[-1]), ratio, projection,
                     starts)
        features = timed("embed", ref.embed_reference, test2, test3)
        n, h, w = len(images), test2.shape[-2], test2.shape[-1]
        patch = timed("nearest", ref.nearest_reference, features, bank).reshape(n, h, w)
        image = timed("nearest", lambda p: p.reshape(n, -1).max(dim=1).values, patch)
        maps = timed("blur", ref.maps_reference, patch, size)
    refined = [timed("refine", refine_reference, f, bank, **refine)[0] for f in features]
    plus_patch = torch.stack(refined).reshape(n, h, w)
    plus_image = plus_patch.reshape(n, -1).max(dim=1).values
    plus_maps = timed("blur_plus", ref.maps_reference, plus_patch.detach(), size)
    return {"seconds": seconds, "bank": bank.numpy(), "patchcore": (image.numpy(), patch.numpy(), maps),
            "patchcore_plus": (plus_image.detach().numpy(), plus_patch.detach().numpy(), plus_maps)}


# --------------------------------------------------------------------------------------------- main


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.patchcore_timing", description=__doc__.split("\n\n")[0])
    p.add_argument("--image-size", type=int, default=224, help="crop side (the paper's 224)")
    p.add_argument("--shots", type=int, default=2, help="reference images")
    p.add_argument("--queries", type=int, default=8, help="query images (half with a planted defect)")
    p.add_argument("--batch", type=int, default=4, help="images per backbone forward")
    p.add_argument("--seed", type=int, default=0, help="weights and images")
    p.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    return p


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    torch.manual_seed(args.seed)
    load_start = os.getloadavg()[0]
    backbone = load_backbone("random-wide-resnet50-2", get_method("patchcore").backbone_run("wide-resnet50-2"),
                             image_size=args.image_size, seed=args.seed)
    source, references = synthetic_sources(args.image_size, args.shots, args.queries, args.seed)
    jax_runs = {name: time_jax(name, backbone, source, references, args.batch, args.shots) for name in METHODS}
    plus = get_method("patchcore_plus").configure({}, RunContext("synthetic", args.image_size, shots=args.shots))
    pc = plus.patchcore
    bank = jax_runs["patchcore"]["bank"]
    grid = args.image_size // 8
    projection, starts = coreset_draws(jax.random.key(pc.seed), args.shots * grid * grid, pc.dim)
    fields = {f.name: getattr(plus.refine, f.name) for f in dataclasses.fields(plus.refine)}
    model = torch_backbone(backbone, pc.bn_stats)
    reference_args = (model, references.images, source.images, args.batch, pc.coreset_ratio,
                      torch.from_numpy(np.array(projection)), np.asarray(starts).tolist(), fields, args.image_size)
    reference_pass(model, references.images[:1], source.images[:1], 1, pc.coreset_ratio, None, [0], fields,
                   args.image_size)
    reference = reference_pass(*reference_args)

    n, shots = args.queries, args.shots
    rs = reference["seconds"]
    m, k = grid * grid, bank.shape[0]
    flops = refine_flops(m, k, pc.dim, plus.refine.iterations, plus.refine.sinkhorn_iterations,
                         plus.refine.em_update)
    ceilings = roofline.measure_ceilings(1024, 64, repeats=3)
    floor_ms = 1e3 * flops["total"] / ceilings["matmul_fp32_flop_s"]
    jp, jq = jax_runs["patchcore"]["ms_per_image"], jax_runs["patchcore_plus"]["ms_per_image"]
    table = {
        "extract": (jp["extract"], 1e3 * rs["extract"] / (n + shots)),
        "fit: embed + coreset (per category)": (jax_runs["patchcore"]["fit_ms_per_category"],
                                                1e3 * (rs["fit_embed"] + rs["coreset"])),
        "embed": (jp["embed"], 1e3 * rs["embed"] / n),
        "nearest": (jp["nearest"], 1e3 * rs["nearest"] / n),
        "refine (PatchCore+)": (jq["refine"], 1e3 * rs["refine"] / n),
        "blur (upsample + Gaussian)": (jp["upsample"], 1e3 * rs["blur"] / n),
    }
    parity = {"bank": _rel(bank, reference["bank"])}
    for name in METHODS:
        image, patch, maps = reference[name]
        run = jax_runs[name]
        parity[name] = {"image_scores": _rel(run["image_scores"], image), "patch_scores": _rel(run["patch_scores"],
                        patch), "maps": _rel(run["maps"], maps)}
    environment = harness.environment("torch", "transformers")
    environment["device"].update(harness.torch_device_info("cpu"),
                                 load_avg_1min={"start": load_start, "end": os.getloadavg()[0]})
    payload = {
        "benchmark": "patchcore_timing", **environment,
        "sizes": {"image_size": args.image_size, "shots": shots, "queries": n, "batch": args.batch,
                  "patches_per_image": m, "prototypes": k, "dim": pc.dim, "coreset_ratio": pc.coreset_ratio},
        "stages_ms_per_image": {s: {"jax": j, "reference": r} for s, (j, r) in table.items()},
        "jax_driver": {name: {"ms_per_image": run["ms_per_image"], "fit_ms_per_category": run["fit_ms_per_category"],
                              "compile_s": run["compile_s"],
                              "metrics": run["metrics"], "config": run["config"]} for name, run in jax_runs.items()},
        "reference_seconds": rs,
        "parity_max_rel": parity,
        "refine_roofline": {"flops_per_image": flops, "matmul_fp32_flop_s": ceilings["matmul_fp32_flop_s"],
                            "floor_ms": floor_ms, "time_over_floor": jq["refine"] / floor_ms},
    }
    path = harness.write_json(args.out / f"patchcore_{payload['device']['platform']}.json", payload)
    print(f"PatchCore / PatchCore+ per image (ms), WRN-50-2 random weights, {args.image_size} px, {shots} shots, "
          f"{n} queries, {k} prototypes; {payload['device']['cpu']} ({os.cpu_count()} cores)")
    print("| stage | JAX | PyTorch reference | speed-up |")
    print("| :-- | --: | --: | --: |")
    for stage, (j, r) in table.items():
        print(f"| {stage} | {j:.2f} | {r:.2f} | {r / j:.1f}x |")
    print(f"refinement: {flops['total'] / 1e9:.2f} GFLOP/image ({flops['sinkhorn'] / 1e9:.2f} in Sinkhorn), "
          f"floor {floor_ms:.2f} ms at {ceilings['matmul_fp32_flop_s'] / 1e9:.0f} GFLOP/s fp32, "
          f"{jq['refine'] / floor_ms:.1f}x over floor")
    print(f"parity (max relative difference): {json.dumps(parity)}")
    print(f"wrote {path}")
    return payload


if __name__ == "__main__":
    main()
