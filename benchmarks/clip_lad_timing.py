"""Time CLIP-LAD per image, stage by stage, through the driver, against a PyTorch reference of the same steps.

    python -m benchmarks.clip_lad_timing [--arch ViT-B-16] [--image-size 224] [--n 8] [--shots 4] [--repeats 3]

JAX runs what the command line runs: the scorer ``jzad.experiment.build_scorer`` builds (random weights of the
architecture's real shapes, text tower included), the category fitted once by the driver (``jzad.pipeline.fit``:
prompt embeddings, k-means on the k shots, part histograms and patch memory, the fusion statistics from 8
held-out normal images; its seconds are recorded apart, "per_category"), then the queries scored by the driver
(``score_source`` + ``finalize``, what ``run_category`` runs after fitting) on synthetic product images:

- stage by stage (``Scorer(profile="stages")``, the command line's ``--profile stages``): extract (the NACLIP
  pass, pixel normalisation included), then the method's stages features (drop CLS, bilinear x2, normalise),
  assign (nearest k-means centre), match (region embeddings vs coarse prompts, patches vs fine prompts),
  histogram (part shares and s_log), memory (patch-memory nearest neighbours and s_str), fusion (Mahalanobis),
  and upsample (maps to the image size);
- fused (``profile="fused"``, the command line's default): extract, score (the method's body as one jitted
  program), upsample.

Each: one warm-up run (its compile seconds recorded), then ``repeats`` timed runs; median per stage. The
reference (``benchmarks.reference_torch_clip_lad``, CPU) runs the same steps on the same weights and the
driver's fitted state (centres, prompts, memories, fusion statistics): one warm-up pass, then ``repeats`` timed
passes. Parity compares the driver's own stage outputs (recorded on the warm-up run, ``harness.RecordingClock``)
and its final maps and image scores (both profiles) with the reference's. The paper gives no timing; the rows
are ours. No stage function is called here directly.

Results: benchmarks/results/clip_lad_<platform>.json: {"benchmark": "clip_lad", date, commit, device, versions,
load averages, "dtype", "case": {sizes, "stages": {stage: {"jax_ms_per_image", "torch_ms_per_image",
"jax_compile_s", "torch_over_jax", "jax_runs_s", "torch_runs_s"}}, "total_ms_per_image": {"jax", "torch"},
"fused": {"stages": {stage: {...}}, "total_ms_per_image", "scoring_ms_per_image", "compile_s"},
"per_category": {"run_s", "compile_s"}, "parity"}}. The per-image stage rows are the driver's stage names
(the NACLIP pass is "extract"; results before this layout called it "forward" and timed each stage apart).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
from pathlib import Path

import jax
import numpy as np

from benchmarks import harness
from jzad import data as jdata
from jzad.backbone import CLIP_MEAN, CLIP_STD
from jzad.backbone.port import flax_to_openai
from jzad.experiment import build_scorer
from jzad.methods import get_method
from jzad.methods.clip_lad import DENSE
from jzad.pipeline import finalize, fit, score_groups, score_source
from jzad.timing import StageClock

RESULTS = Path(__file__).resolve().parent / "results"
METHOD = "clip_lad"
STAGES = ("extract",) + get_method(METHOD).stages + ("upsample",)
FUSED_STAGES = ("extract", "score", "upsample")
CATEGORY_STAGES = ("prepare", "extract", "fit", "calibrate")
HELD_OUT = 8


def synthetic_sources(n: int, shots: int, size: int, seed: int):
    """Queries (n synthetic images, half with a defect), ``shots`` normal references and ``HELD_OUT`` normal
    validation images, as in-memory sources."""
    images, masks, labels, types = jdata.make_synthetic_set(n // 2, n - n // 2, size=size, seed=seed)
    queries = jdata.ArrayImages(images, [f"{t}_{i:03d}" for i, t in enumerate(types)], labels, types, masks)
    normal = []
    for count, offset, name in ((shots, 1, "reference"), (HELD_OUT, 2, "validation")):
        pool, _, _, _ = jdata.make_synthetic_set(count, 0, size=size, seed=seed + offset)
        normal.append(jdata.ArrayImages(pool, [f"{name}_{i:03d}" for i in range(count)], np.zeros(count, np.int64),
                                        ("good",) * count))
    return queries, normal[0], normal[1]


def fit_category(scorer, references, held_out, category: str) -> tuple:
    """The driver's fit of a category (prepare, extract the references and held-out images, fit, calibrate): a
    warm-up, then one timed fit -> (state, {"run_s": {stage: s}, "compile_s": {stage: s} of the warm-up})."""
    warm = StageClock()
    fit(scorer, references, warm, None, category, held_out)
    clock = StageClock()
    state = fit(scorer, references, clock, None, category, held_out)
    return state, {"run_s": {s: clock.run_seconds.get(s, 0.0) for s in CATEGORY_STAGES},
                   "compile_s": {s: warm.compile_seconds.get(s, 0.0) for s in CATEGORY_STAGES}}


def score_queries(scorer, state, source, clock: StageClock) -> dict:
    """The driver's scoring of the queries with a fitted state (``score_source`` then ``finalize``: what
    ``run_category`` runs after fit) -> host outputs, "image_scores" the final ones."""
    groups = score_groups(scorer.method, len(source), source.defect_types, 1)
    outputs, _ = score_source(scorer, state, source, groups, clock)
    outputs["image_scores"] = finalize(scorer, outputs, clock)
    return outputs


def time_driver(scorer, state, source, stages: tuple, repeats: int) -> dict:
    """``score_queries``: a warm-up run on a ``RecordingClock`` (compile seconds and each stage's outputs), then
    ``repeats`` timed runs -> {"runs": [{stage: s}], "compile_s", "recorded" (stage -> outputs), "outputs"}."""
    warm = harness.RecordingClock()
    score_queries(scorer, state, source, warm)
    runs, outputs = [], None
    for _ in range(repeats):
        clock = StageClock()
        outputs = score_queries(scorer, state, source, clock)
        runs.append({s: clock.run_seconds.get(s, 0.0) for s in stages})
    return {"runs": runs, "compile_s": {s: warm.compile_seconds.get(s, 0.0) for s in stages},
            "recorded": warm.outputs, "outputs": outputs}


class Reference:
    """The PyTorch reference of the per-image stages on the backbone's weights and the driver's fitted state."""

    def __init__(self, backbone, config, fitted):
        import torch

        from benchmarks import reference_torch_clip_lad

        self.ref = reference_torch_clip_lad
        self.cfg = config
        self.weights = {k: torch.from_numpy(v) for k, v in flax_to_openai(backbone.params, backbone.config).items()}
        self.vision, self.activation = backbone.config.vision, backbone.config.activation
        self.size = backbone.image_size
        # The reference runs the category unpadded: its N_c centres, its real prompt rows and histogram bins.
        self.num_clusters = int(fitted.num_clusters)
        self.fine_level = "region" if bool(fitted.region_level) else "patch"
        coarse, fine = np.asarray(fitted.prompts.coarse_valid), np.asarray(fitted.prompts.fine_valid)
        self.t = {k: torch.from_numpy(np.array(v)) for k, v in (
            ("centres", np.asarray(fitted.centres)[: self.num_clusters]),
            ("coarse", np.asarray(fitted.prompts.coarse)[coarse]),
            ("is_object", np.asarray(fitted.prompts.is_object)[coarse]),
            ("fine", np.asarray(fitted.prompts.fine)[fine]), ("histograms", np.asarray(fitted.histograms)[:, fine]),
            ("mean", fitted.fusion.mean), ("cholesky", fitted.fusion.cholesky))}
        self.memory = tuple(torch.from_numpy(np.array(m)) for m in fitted.patch_memory)
        self.cluster_index = [self.cfg.tap_index(tap) for tap in self.cfg.cluster_taps]
        self.structural_index = [self.cfg.tap_index(tap) for tap in self.cfg.structural_taps]

    def run(self, images: np.ndarray, timer) -> dict:
        """One pass over uint8 images (N, S, S, 3), each stage timed on ``timer`` -> every stage's outputs."""
        import torch
        import torch.nn.functional as F

        ref, cfg, t, v = self.ref, self.cfg, self.t, self.vision
        with timer.stage("extract"):
            pixels = (torch.from_numpy(images).float() / 255.0 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
            streams, dense = ref.naclip_forward(self.weights, pixels, v.heads, v.patch_size, v.layers, cfg.taps,
                                                cfg.sigma, self.activation)
        with timer.stage("features"):
            prep = ref.prepare(streams, dense, self.cluster_index, self.structural_index, cfg.upsample)
        with timer.stage("assign"):
            regions = ref.assign(prep.cluster, t["centres"])
        with timer.stage("match"):
            labels = ref.match(prep.dense, regions, self.num_clusters, t["coarse"], t["is_object"], t["fine"],
                               self.fine_level)
        with timer.stage("histogram"):
            _, logical = ref.histogram(labels, t["fine"].shape[0], t["histograms"], cfg.delta)
        with timer.stage("memory"):
            patch_maps, structural = ref.memory_scores(prep.levels, self.memory)
        with timer.stage("fusion"):
            fused = ref.fusion(logical, structural, t["mean"], t["cholesky"])
        with timer.stage("upsample"):
            side = int(round(patch_maps.shape[1] ** 0.5))
            maps = F.interpolate(patch_maps.reshape(-1, 1, side, side), size=(self.size, self.size),
                                 mode="bilinear", align_corners=False)[:, 0]
        return {"dense": dense, "regions": regions, "labels": labels, "logical": logical,
                "patch_maps": patch_maps, "fused": fused, "maps": maps}

    def time(self, images: np.ndarray, repeats: int) -> dict:
        """One untimed warm-up pass, then ``repeats`` timed passes -> {"runs": [{stage: s}], "outputs"}."""
        import torch

        from benchmarks.reference_torch import StageTimer

        runs = []
        with torch.inference_mode():
            outputs = self.run(images, StageTimer())
            for _ in range(repeats):
                timer = StageTimer()
                outputs = self.run(images, timer)
                runs.append({s: timer.seconds[s] for s in STAGES})
        return {"runs": runs, "outputs": outputs}


def parity(staged: dict, fused: dict, theirs: dict, dense: np.ndarray, count: int) -> dict:
    """JAX (the driver's recorded stage outputs of the first group, ``count`` images, and the final outputs of
    both profiles) against the reference's outputs."""
    recorded = {stage: staged["recorded"][stage][0] for stage in ("assign", "match", "histogram", "memory")}
    t = {k: v.numpy() for k, v in theirs.items()}
    n, dim = t["dense"].shape[0], dense.shape[-1]
    return {
        "forward_dense_max_abs": harness.max_abs(dense.reshape(n, -1, dim), t["dense"][:, 1:]),
        "regions_agree": float((np.asarray(recorded["assign"])[:count] == t["regions"][:count]).mean()),
        "labels_agree": float((np.asarray(recorded["match"])[:count] == t["labels"][:count]).mean()),
        "logical_max_abs": harness.max_abs(np.asarray(recorded["histogram"][1])[:count], t["logical"][:count]),
        "structural_map_max_abs": harness.max_abs(np.asarray(recorded["memory"][0])[:count], t["patch_maps"][:count]),
        "fused_max_abs": harness.max_abs(staged["outputs"]["image_scores"], t["fused"]),
        "maps_max_abs": harness.max_abs(staged["outputs"]["maps"], t["maps"]),
        "fused_profile_image_scores_max_abs": harness.max_abs(fused["outputs"]["image_scores"], t["fused"]),
        "fused_profile_maps_max_abs": harness.max_abs(fused["outputs"]["maps"], t["maps"]),
        "parity_images": count,
    }


def _median(values: list) -> float:
    return statistics.median(values)


def stage_rows(jax_run: dict, torch_runs: list, n: int) -> dict:
    """Per stage: ms per image (median of the runs) of both, JAX compile seconds, the ratio and every run."""
    rows = {}
    for stage in STAGES:
        jax_s = [run[stage] for run in jax_run["runs"]]
        torch_s = [run[stage] for run in torch_runs]
        rows[stage] = {"jax_ms_per_image": 1e3 * _median(jax_s) / n, "torch_ms_per_image": 1e3 * _median(torch_s) / n,
                       "jax_compile_s": jax_run["compile_s"][stage],
                       "torch_over_jax": _median(torch_s) / max(_median(jax_s), 1e-12),
                       "jax_runs_s": jax_s, "torch_runs_s": torch_s}
    return rows


def fused_rows(fused_run: dict, n: int) -> dict:
    """The fused profile's stages (ms per image, compile, runs), its total and its scoring after extraction."""
    stages = {stage: {"ms_per_image": 1e3 * _median([run[stage] for run in fused_run["runs"]]) / n,
                      "compile_s": fused_run["compile_s"][stage], "runs_s": [run[stage] for run in fused_run["runs"]]}
              for stage in FUSED_STAGES}
    totals = [sum(run.values()) for run in fused_run["runs"]]
    scoring = [sum(run[s] for s in FUSED_STAGES[1:]) for run in fused_run["runs"]]
    return {"stages": stages, "total_ms_per_image": 1e3 * _median(totals) / n,
            "scoring_ms_per_image": 1e3 * _median(scoring) / n,
            "compile_s": sum(fused_run["compile_s"].values())}


def run(arch: str, image_size: int, n: int, shots: int, clusters: int, repeats: int, seed: int,
        category: str = "breakfast_box") -> dict:
    """Every measurement of one case (see the module doc) -> the results file's "case"."""
    import torch

    method = get_method(METHOD)
    scorer = build_scorer(method, {"clusters": clusters}, shots, backbone=f"random-{arch}", image_size=image_size,
                          seed=seed)
    staged_scorer = dataclasses.replace(scorer, profile="stages")
    queries, references, held_out = synthetic_sources(n, shots, scorer.backbone.image_size, seed)
    state, per_category = fit_category(staged_scorer, references, held_out, category)
    staged = time_driver(staged_scorer, state, queries, STAGES, repeats)
    fused = time_driver(scorer, state, queries, FUSED_STAGES, repeats)
    images = queries.images
    reference = Reference(scorer.backbone, scorer.config, state)
    theirs = reference.time(images, repeats)
    dense = np.asarray(scorer.extract_fn(images).extras[DENSE])
    count = len(score_groups(method, n, queries.defect_types, 1)[0])
    cfg, vision = scorer.config, scorer.backbone.config.vision
    rows = stage_rows(staged, theirs["runs"], n)
    side = vision.image_size // vision.patch_size * cfg.upsample
    return {"arch": arch, "image_size": scorer.backbone.image_size, "n": n, "shots": shots, "clusters": clusters,
            "category": category, "held_out": HELD_OUT, "taps": list(cfg.taps), "patches_per_image": side * side,
            "width": vision.width, "embed_dim": scorer.backbone.config.embed_dim,
            "fine_classes": int(np.sum(state.prompts.fine_valid)), "fine_level": reference.fine_level,
            "image_chunk": cfg.image_chunk, "batch": scorer.batch_size, "torch_threads": torch.get_num_threads(),
            "stages": rows, "fused": fused_rows(fused, n), "per_category": per_category,
            "parity": parity(staged, fused, theirs["outputs"], dense, count),
            "total_ms_per_image": {side_: sum(r[f"{side_}_ms_per_image"] for r in rows.values())
                                   for side_ in ("jax", "torch")}}


def print_case(case: dict, repeats: int) -> None:
    """The per-stage table, the fused line and the parity block on stdout."""
    print(f"{case['arch']}@{case['image_size']}, {case['patches_per_image']} patches/image, N={case['n']}, "
          f"k={case['shots']}, N_c={case['clusters']}; ms per image (median of {repeats}), through the driver")
    print(f"{'stage':<10} {'jax':>10} {'torch':>10} {'torch/jax':>10}")
    for stage, row in case["stages"].items():
        print(f"{stage:<10} {row['jax_ms_per_image']:>10.2f} {row['torch_ms_per_image']:>10.2f} "
              f"{row['torch_over_jax']:>10.2f}")
    print(f"{'total':<10} {case['total_ms_per_image']['jax']:>10.2f} {case['total_ms_per_image']['torch']:>10.2f}")
    fused = case["fused"]
    print(f"fused profile (the command line's default): total {fused['total_ms_per_image']:.2f} ms/image, "
          f"scoring after extraction {fused['scoring_ms_per_image']:.2f} ms/image")
    print("parity:", json.dumps(case["parity"]))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.clip_lad_timing", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="ViT-B-16", help="CLIP architecture (random weights of its shapes)")
    parser.add_argument("--image-size", type=harness.positive_int, default=224)
    parser.add_argument("--n", type=harness.positive_int, default=8, help="query images")
    parser.add_argument("--shots", type=harness.positive_int, default=4)
    parser.add_argument("--clusters", type=harness.positive_int, default=6)
    parser.add_argument("--category", default="breakfast_box", help="prompt table row (MVTec LOCO category)")
    parser.add_argument("--repeats", type=harness.positive_int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="results JSON (default benchmarks/results/)")
    args = parser.parse_args(argv)
    device = jax.devices()[0]
    report = {"benchmark": "clip_lad", **harness.environment("torch"), "dtype": "float32"}
    with harness.LoadSampler() as load:
        report["case"] = run(args.arch, args.image_size, args.n, args.shots, args.clusters, args.repeats,
                             args.seed, args.category)
    report["load_average"] = load.summary()
    report["load_average_end"] = list(os.getloadavg())
    print_case(report["case"], args.repeats)
    out = args.out or RESULTS / f"clip_lad_{device.platform}.json"
    harness.write_json(out, report)
    print(f"wrote {out}")
    report["path"] = str(out)
    return report


if __name__ == "__main__":
    main()
