"""Time CLIP-LAD per image, stage by stage: jzad's jitted stages vs a PyTorch reference of the same steps.

    python benchmarks/clip_lad_timing.py [--arch ViT-B-16] [--image-size 224] [--n 8] [--shots 4] [--repeats 3]

Stages (the paper gives no timing; these are ours): forward (NACLIP pass: taps + dense embeddings, pixel
normalisation included), features (drop CLS, bilinear x2, normalise), assign (nearest k-means centre: the
clustering assignment), match (region embeddings vs coarse prompts, patches vs fine prompts), histogram (part
shares and s_log), memory (patch-memory nearest neighbours and s_str) and fusion (Mahalanobis). Random CLIP
weights of the architecture's real shapes, shared by both sides (``flax_to_openai``); synthetic product images.
The per-category work (prompt embeddings, k-means on the k shots, the memories, the validation statistics) is
done once by jzad's fit/calibrate and handed to both sides, so the rows compare the per-image stages on the same
inputs; the parity block gives the largest differences of each stage's outputs.

Each stage: one warm-up call (JAX: its compile time recorded), then ``repeats`` rounds timing the JAX stage and
the PyTorch stage in turn (both see the same machine load), median per stage. Writes
benchmarks/results/clip_lad_<platform>.json with the device, versions, sizes and load averages.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import harness
from jzad import data as jdata
from jzad.backbone import CLIP_MEAN, CLIP_STD, default_taps, get_architecture
from jzad.backbone.port import flax_to_openai
from jzad.features import load_backbone
from jzad.features.types import BackboneRun
from jzad.kernels import device_mesh
from jzad.methods import RunContext, get_method
from jzad.methods.clip_lad import (
    DENSE,
    CategoryPrompts,
    CategoryText,
    assign_stage,
    features_stage,
    fusion_stage,
    histogram_stage,
    make_prompts,
    match_stage,
    memory_stage,
    scoring_key,
)

RESULTS = Path(__file__).resolve().parent / "results"
STAGES = ("forward", "features", "assign", "match", "histogram", "memory", "fusion")


def run(arch: str, image_size: int, n: int, shots: int, clusters: int, repeats: int, seed: int) -> dict:
    import torch

    from benchmarks import reference_torch_clip_lad as ref

    method = get_method("clip_lad")
    full = get_architecture(arch)
    taps = default_taps(full)[:-1]
    backbone = load_backbone(f"random-{arch}", BackboneRun(taps=taps), image_size=image_size, seed=seed)
    config = method.configure({"clusters": clusters}, RunContext("bench", image_size, shots, backbone.taps))
    rng = np.random.default_rng(seed)
    dim = backbone.config.embed_dim
    text = rng.normal(size=(3 + 2 + 6, dim)).astype(np.float32)
    row = CategoryPrompts(("b",) * 3, ("o",) * 2, ("p",) * 6, clusters)
    prepared = CategoryText(make_prompts(jnp.asarray(text[:3]), jnp.asarray(text[3:5]), jnp.asarray(text[5:])), row)
    images, _, _, _ = jdata.make_synthetic_set(n // 2, n - n // 2, size=image_size, seed=seed)
    refs, _, _, _ = jdata.make_synthetic_set(shots, 0, size=image_size, seed=seed + 1)
    held_out, _, _, _ = jdata.make_synthetic_set(8, 0, size=image_size, seed=seed + 2)
    extract = method.extractor(config, backbone)
    state = method.fit(config, extract(refs), None, prepared)
    state = method.calibrate(config, state, extract(held_out), None)
    cfg, fitted, mesh = scoring_key(config), state, device_mesh(1)
    slots = fitted.centres.shape[0]

    # JAX side: the seam's stages on the query images.
    feats = extract(images)
    prep = features_stage(tuple(feats.layers), feats.extras[DENSE], cfg, mesh)
    regions = assign_stage(prep.cluster, fitted.centres, fitted.num_clusters, cfg, mesh)
    labels = match_stage(prep.dense, regions, fitted.prompts, fitted.region_level, cfg, mesh, slots)
    tf = fitted.prompts.fine.shape[0]
    _, logical = histogram_stage(labels, fitted.histograms, cfg, mesh, tf)
    maps, structural = memory_stage(prep.levels, fitted.patch_memory, cfg, mesh)
    jax_stages = {  # stage -> (function of arrays, its arrays)
        "forward": (extract, (jnp.asarray(images),)),
        "features": (lambda a, b: features_stage(a, b, cfg, mesh), (tuple(feats.layers), feats.extras[DENSE])),
        "assign": (lambda a, b, c: assign_stage(a, b, c, cfg, mesh), (prep.cluster, fitted.centres,
                                                                       fitted.num_clusters)),
        "match": (lambda a, b, c, d: match_stage(a, b, c, d, cfg, mesh, slots),
                  (prep.dense, regions, fitted.prompts, fitted.region_level)),
        "histogram": (lambda a, b: histogram_stage(a, b, cfg, mesh, tf), (labels, fitted.histograms)),
        "memory": (lambda a, b: memory_stage(a, b, cfg, mesh), (prep.levels, fitted.patch_memory)),
        "fusion": (lambda a, b, c: fusion_stage(a, b, c, cfg, mesh), (logical, structural, fitted.fusion)),
    }

    # PyTorch side: the same steps on the same weights and fitted state.
    state_dict = {k: torch.from_numpy(v) for k, v in flax_to_openai(backbone.params, backbone.config).items()}
    vision = backbone.config.vision
    pixels = torch.from_numpy(images)
    mean, std = torch.tensor(CLIP_MEAN), torch.tensor(CLIP_STD)
    # The reference runs the category unpadded: its N_c centres, its prompt rows, its histogram bins.
    tc, tf_real = len(row.background) + len(row.objects), len(row.parts)
    t = {k: torch.from_numpy(np.array(v)) for k, v in (
        ("centres", fitted.centres[:clusters]), ("coarse", fitted.prompts.coarse[:tc]),
        ("is_object", fitted.prompts.is_object[:tc]), ("fine", fitted.prompts.fine[:tf_real]),
        ("histograms", fitted.histograms[:, :tf_real]), ("mean", fitted.fusion.mean),
        ("cholesky", fitted.fusion.cholesky))}
    memory = tuple(torch.from_numpy(np.array(m)) for m in fitted.patch_memory)
    cluster_index = [cfg.tap_index(tap) for tap in cfg.cluster_taps]
    structural_index = [cfg.tap_index(tap) for tap in cfg.structural_taps]

    def forward():
        x = (pixels.float() / 255.0 - mean) / std
        return ref.naclip_forward(state_dict, x, vision.heads, vision.patch_size, vision.layers, cfg.taps,
                                  cfg.sigma, backbone.config.activation)

    with torch.inference_mode():
        t_streams, t_dense = forward()
        t_prep = ref.prepare(t_streams, t_dense, cluster_index, structural_index, cfg.upsample)
        t_regions = ref.assign(t_prep.cluster, t["centres"])
        t_labels = ref.match(t_prep.dense, t_regions, clusters, t["coarse"], t["is_object"], t["fine"],
                             row.fine_level)
        _, t_logical = ref.histogram(t_labels, tf_real, t["histograms"], cfg.delta)
        t_maps, t_structural = ref.memory_scores(t_prep.levels, memory)
        t_fused = ref.fusion(t_logical, t_structural, t["mean"], t["cholesky"])
    torch_stages = {
        "forward": forward,
        "features": lambda: ref.prepare(t_streams, t_dense, cluster_index, structural_index, cfg.upsample),
        "assign": lambda: ref.assign(t_prep.cluster, t["centres"]),
        "match": lambda: ref.match(t_prep.dense, t_regions, clusters, t["coarse"], t["is_object"],
                                   t["fine"], row.fine_level),
        "histogram": lambda: ref.histogram(t_labels, tf_real, t["histograms"], cfg.delta),
        "memory": lambda: ref.memory_scores(t_prep.levels, memory),
        "fusion": lambda: ref.fusion(t_logical, t_structural, t["mean"], t["cholesky"]),
    }

    rows = {}
    for stage in STAGES:
        fn, arrays = jax_stages[stage]
        start = time.perf_counter()
        compiled = jax.jit(fn).lower(*arrays).compile()
        compile_s = time.perf_counter() - start
        runs = {"jax": [], "torch": []}
        with torch.inference_mode():
            harness.timed(compiled, *arrays)
            torch_stages[stage]()
            for _ in range(repeats):
                runs["jax"].append(harness.timed(compiled, *arrays)[1])
                start = time.perf_counter()
                torch_stages[stage]()
                runs["torch"].append(time.perf_counter() - start)
        jax_s, torch_s = statistics.median(runs["jax"]), statistics.median(runs["torch"])
        rows[stage] = {"jax_ms_per_image": 1e3 * jax_s / n, "torch_ms_per_image": 1e3 * torch_s / n,
                       "jax_compile_s": compile_s, "torch_over_jax": torch_s / jax_s,
                       "jax_runs_s": runs["jax"], "torch_runs_s": runs["torch"]}
    fused_scores = method.score(config, state, feats, None)[0].image_scores
    p = vision.image_size // vision.patch_size * cfg.upsample
    parity = {
        "forward_dense_max_abs": float(np.abs(np.asarray(feats.extras[DENSE]).reshape(n, -1, dim)
                                              - t_dense[:, 1:].numpy()).max()),
        "regions_agree": float((np.asarray(regions) == t_regions.numpy()).mean()),
        "labels_agree": float((np.asarray(labels) == t_labels.numpy()).mean()),
        "logical_max_abs": float(np.abs(np.asarray(logical) - t_logical.numpy()).max()),
        "structural_map_max_abs": float(np.abs(np.asarray(maps) - t_maps.numpy()).max()),
        "fused_max_abs": float(np.abs(np.asarray(fused_scores) - t_fused.numpy()).max()),
    }
    return {"arch": arch, "image_size": image_size, "n": n, "shots": shots, "clusters": clusters,
            "taps": list(cfg.taps), "patches_per_image": p * p, "width": vision.width, "embed_dim": dim,
            "fine_classes": tf_real, "image_chunk": cfg.image_chunk, "torch_threads": torch.get_num_threads(),
            "stages": rows, "parity": parity,
            "total_ms_per_image": {side: sum(r[f"{side}_ms_per_image"] for r in rows.values())
                                   for side in ("jax", "torch")}}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="ViT-B-16")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--n", type=int, default=8, help="query images")
    parser.add_argument("--shots", type=int, default=4)
    parser.add_argument("--clusters", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="results JSON (default benchmarks/results/)")
    args = parser.parse_args(argv)
    device = jax.devices()[0]
    report = {"benchmark": "clip_lad", **harness.environment("torch"), "dtype": "float32"}
    report["case"] = run(args.arch, args.image_size, args.n, args.shots, args.clusters, args.repeats, args.seed)
    report["load_average_end"] = list(os.getloadavg())
    case = report["case"]
    print(f"{args.arch}@{args.image_size}, {case['patches_per_image']} patches/image, N={args.n}, k={args.shots}, "
          f"N_c={args.clusters}; ms per image (median of {args.repeats})")
    print(f"{'stage':<10} {'jax':>10} {'torch':>10} {'torch/jax':>10}")
    for stage, row in case["stages"].items():
        print(f"{stage:<10} {row['jax_ms_per_image']:>10.2f} {row['torch_ms_per_image']:>10.2f} "
              f"{row['torch_over_jax']:>10.2f}")
    print(f"{'total':<10} {case['total_ms_per_image']['jax']:>10.2f} {case['total_ms_per_image']['torch']:>10.2f}")
    print("parity:", json.dumps(case["parity"]))
    out = args.out or RESULTS / f"clip_lad_{device.platform}.json"
    harness.write_json(out, report)
    print(f"wrote {out}")
    return report


if __name__ == "__main__":
    main()
