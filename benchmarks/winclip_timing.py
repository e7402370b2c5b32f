"""WinCLIP / WinCLIP+ timing through the shared driver, JAX against the PyTorch reference, stage by stage.

    python -m benchmarks.winclip_timing [--vision-layers 2 --text-layers 2 --queries 8 --shots 2 --repeats 1]

Model: OpenCLIP ViT-B-16-plus-240's shapes (vision width 896, 14 heads, patch 16 at 240 px: 15 x 15 grid, 196
windows of 2 x 2 and 169 of 3 x 3; text width 640, 10 heads, 49,408 tokens, context 77; embed 640, exact
GELU) with random weights, at a reduced depth on this CPU (--vision-layers / --text-layers; 12 and 12 are the
real model): every stage's cost is linear in the depth except the scoring. Images: the synthetic product set
at 240 px (half with planted defects), --shots normal references.
- JAX: ``jzad.pipeline.run_category`` (what ``python -m jzad.run`` runs) with a ``StageClock``, after one
  untimed run that compiles every program; median over --repeats runs. Stages: prepare (text encoding, once
  per category), extract (the full pass and every window pass in one jitted call; the driver also extracts the
  references there, so per-image = seconds / (queries + shots)), fit (memories; WinCLIP+'s coreset),
  zero_shot, few_shot (memory matching), refine (WinCLIP+: the EM per query and the fusion), upsample (maps to
  240, WinCLIP+ with the Gaussian). The extract stage is also split on the query batch: the method's
  extractor (what the driver's extract stage runs) against the backbone's own forward with its image embedding
  (the full pass: patch embedding + all blocks + head); the window passes (365 short sequences per image) are
  the difference.
- Reference (``benchmarks/reference_torch_winclip.py``): a plain torch CLIP with the same weights, anomalib's
  WinCLIP steps, FastRef's refinement one query at a time (``reference_torch_fastref``), per-stage
  ``StageTimer``; one untimed warm-up call on one query first.
- Parity: max abs difference of image scores and maps, JAX driver vs reference, both methods.
- Window refinement (``window_refinement_study``): whether also refining the window memories helps. A random
  CLIP with the real 15 x 15 grid (60 px, patch 4; width 384, embed 320) on textured images with small planted
  squares; queries with a global contrast/brightness shift that the references lack (FastRef's setting) or
  none; image and pixel AUROC of the few-shot maps of WinCLIP, WinCLIP+ (patch memory refined) and WinCLIP+
  (patch and window memories refined), each a driver run (the few-shot map recovered from the body's recorded
  stage outputs), mean over seeds. Random weights: these AUROCs compare the scoring
  rules on the same features, not CLIP's accuracy.
Writes benchmarks/results/winclip_<platform>.json (device, versions, sizes, load average, every number).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import jax
import numpy as np
import torch

from benchmarks import harness
from benchmarks.reference_torch import StageTimer
from benchmarks.reference_torch_winclip import TorchCLIP, winclip_plus_reference, winclip_reference
from jzad import data as jdata
from jzad.backbone import (
    ARCHITECTURES,
    CLIP_MEAN,
    CLIP_STD,
    ImageEncoder,
    TextConfig,
    VisionConfig,
    clip_tokenizer,
    init_clip,
    tokenize,
)
from jzad.backbone.port import flax_to_openai
from jzad.eval.metrics import image_metrics, pixel_metrics
from jzad.features.clip import clip_backbone
from jzad.kernels.resize import resize_bilinear
from jzad.methods import FeatureRequest, RunContext, get_method
from jzad.methods.patchcore import coreset_draws
from jzad.methods.winclip import prompt_ensemble
from jzad.pipeline import Scorer, run_category
from jzad.timing import StageClock

RESULTS = Path(__file__).resolve().parent / "results"
CATEGORY = "widget"
JAX_STAGES = ("prepare", "fit", "extract", "zero_shot", "few_shot", "refine", "upsample")
TORCH_STAGES = ("text", "coreset", "full_pass", "window_passes", "zero_shot", "few_shot", "refine", "upsample")


def model_config(vision_layers: int, text_layers: int):
    """ViT-B-16-plus-240's shapes at the given depths."""
    base = ARCHITECTURES["ViT-B-16-plus-240"]
    v, t = base.vision, base.text
    return base.replace(vision=VisionConfig(width=v.width, layers=vision_layers, heads=v.heads, patch_size=16,
                                            image_size=240),
                        text=TextConfig(width=t.width, layers=text_layers, heads=t.heads))


def study_config():
    """The window-refinement study's random CLIP: the real 15 x 15 grid (60 px, patch 4), vision width 384 x 2
    blocks, embed 320 (channels above the prototype counts, as in the real model: 896 and 640 against
    alpha K 225 and alpha K 196), a 1-block text tower of width 32 over the real vocabulary, exact GELU."""
    return ARCHITECTURES["ViT-B-16-plus-240"].replace(
        vision=VisionConfig(width=384, layers=2, heads=6, patch_size=4, image_size=60),
        text=TextConfig(width=32, layers=1, heads=4), embed_dim=320)


def build(config, seed: int):
    """(Backbone with its text tower, params, TorchCLIP with the same weights)."""
    params = init_clip(config, seed)
    encoder = ImageEncoder(config.replace(text=None), {"visual": params["visual"]}, (config.vision.layers,),
                           "float32", origin=f"random:custom:{seed}")
    backbone = clip_backbone(encoder, "random-custom", None, (params["text"], config, None))
    model = TorchCLIP(flax_to_openai(params, config), config.vision.heads, config.text.heads, config.activation)
    return backbone, params, model


def normalised(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, S, S, 3) at the model size -> CLIP-normalised (N, 3, S, S) float32."""
    x = (images.astype(np.float32) / 255.0 - np.asarray(CLIP_MEAN, np.float32)) / np.asarray(CLIP_STD, np.float32)
    return torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()


def prompt_ids(name: str):
    return tuple(torch.from_numpy(np.array(tokenize(clip_tokenizer(), p, 77)[0])).long() for p in prompt_ensemble(name))


def reference_draws(method_config, references: int, grid: int, widths):
    """The JAX coreset draws (projection, start points) per memory, for the reference to replay."""
    keys = jax.random.split(jax.random.key(method_config.seed), 1 + len(method_config.winclip.scales))
    rows = [references * grid * grid] + [references * (grid - s + 1) ** 2 for s in method_config.winclip.scales]
    draws = []
    for key, count, width in zip(keys, rows, widths):
        projection, starts = coreset_draws(key, count, width, method_config.projection_dim, method_config.num_starts)
        draws.append((None if projection is None else torch.from_numpy(np.array(projection)), np.array(starts)))
    return draws


def refine_kwargs(method_config) -> dict:
    return {name: getattr(method_config.refine, name) for name in method_config.refine.__dataclass_fields__}


def driver_runs(method, config, backbone, source, references, repeats: int, batch_size: int):
    """Compile once, then ``repeats`` timed runs of run_category: (last result, per-run clocks)."""
    scorer = Scorer(method, config, backbone, None, batch_size, profile="stages")
    run_category(scorer, source, CATEGORY, references)
    clocks, result = [], None
    for _ in range(repeats):
        clock = StageClock()
        result = run_category(scorer, source, CATEGORY, references, clock=clock)
        clocks.append(clock)
    return result, clocks


def extract_split(method, config, backbone, images: np.ndarray, repeats: int) -> dict:
    """Seconds per image on the query batch of the method's extractor (the driver's: the full pass and every
    window pass) and of the backbone's own forward with its image embedding (the full pass alone, as every ViT
    method runs it); the window passes are their difference."""
    extract = method.extractor(config, backbone)
    out = {}
    for name, fn in (("extract", extract), ("full_pass", lambda x: backbone(x, FeatureRequest(embedding=True)))):
        jax.block_until_ready(fn(images))
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            jax.block_until_ready(fn(images))
            times.append(time.perf_counter() - start)
        out[name] = statistics.median(times) / len(images)
    out["window_passes"] = out.pop("extract") - out["full_pass"]
    return out


def jax_stage_ms(clocks, queries: int, shots: int) -> dict:
    """Median over runs of each stage: ms per query image (extract per extracted image), seconds for the
    per-category stages (prepare, fit)."""
    out = {}
    for stage in JAX_STAGES:
        values = [c.run_seconds.get(stage) for c in clocks]
        if values[0] is None:
            continue
        median = statistics.median(values)
        if stage in ("prepare", "fit"):
            out[stage + "_s"] = median
        else:
            out[stage] = 1e3 * median / (queries + shots if stage == "extract" else queries)
    return out


def torch_stage_ms(timer: StageTimer, queries: int) -> dict:
    out = {}
    for stage, seconds in timer.seconds.items():
        out[stage + "_s" if stage in ("text", "coreset") else stage] = (
            seconds if stage in ("text", "coreset") else 1e3 * seconds / queries)
    return out


def load_average() -> float:
    return os.getloadavg()[0]


def timing(args) -> dict:
    config = model_config(args.vision_layers, args.text_layers)
    backbone, params, model = build(config, args.seed)
    grid = config.vision.grid_size
    images, masks, labels, types = jdata.make_synthetic_set(args.queries - args.queries // 2, args.queries // 2,
                                                            size=240, seed=args.seed)
    refs, _, _, _ = jdata.make_synthetic_set(args.shots, 0, size=240, seed=args.seed + 1)
    source = jdata.ArrayImages(images, [f"q{i}" for i in range(len(images))], labels, types, masks)
    references = jdata.ArrayImages(refs, [f"r{i}" for i in range(len(refs))], np.zeros(len(refs)),
                                   ("good",) * len(refs))
    ids = prompt_ids(CATEGORY)
    out = {"jax": {}, "torch": {}, "parity": {}, "load_average": []}
    base = get_method("winclip")
    split = extract_split(base, base.configure({}, RunContext("mvtec", 240, args.shots)), backbone, images,
                          args.repeats)
    out["jax"]["extract_split_ms"] = {k: 1e3 * v for k, v in split.items()}
    for name in ("winclip", "winclip_plus"):
        method = get_method(name)
        method_config = method.configure({}, RunContext("mvtec", 240, args.shots))
        out["load_average"].append(load_average())
        cpu = time.process_time()
        result, clocks = driver_runs(method, method_config, backbone, source, references, args.repeats,
                                     args.batch_size)
        stages = jax_stage_ms(clocks, len(images), len(refs))
        stages["process_cpu_s_all_runs"] = time.process_time() - cpu
        out["jax"][name] = stages
        timer = StageTimer()
        out["load_average"].append(load_average())
        cpu = time.process_time()
        if name == "winclip":
            winclip_reference(model, normalised(images[:1]), ids, normalised(refs), grid)
            image, maps = winclip_reference(model, normalised(images), ids, normalised(refs), grid, timer=timer)
            maps = maps.numpy()
        else:
            draws = reference_draws(method_config, len(refs), grid, (config.vision.width,))
            kwargs = refine_kwargs(method_config)
            winclip_plus_reference(model, normalised(images[:1]), ids, normalised(refs), grid, draws,
                                   method_config.coreset_ratio, kwargs)
            image, maps, _ = winclip_plus_reference(model, normalised(images), ids, normalised(refs), grid, draws,
                                                    method_config.coreset_ratio, kwargs, timer=timer)
        stages = torch_stage_ms(timer, len(images))
        stages["process_cpu_s"] = time.process_time() - cpu
        out["torch"][name] = stages
        out["parity"][name] = {"image_max_abs": float(np.abs(result.image_scores - image.numpy()).max()),
                               "maps_max_abs": float(np.abs(result.maps - maps).max())}
        print(f"{name}: jax {out['jax'][name]}\n  torch {out['torch'][name]}\n  parity {out['parity'][name]}",
              flush=True)
    return out


def textured(rng, count: int, size: int = 60) -> np.ndarray:
    """Normal images uint8 (count, size, size, 3): the same smooth stripes and blobs, each with its own small
    noise and brightness."""
    y, x = np.mgrid[0:size, 0:size] / size
    base = np.stack([np.sin(9 * x + 2 * y), np.cos(7 * y - 3 * x), np.sin(5 * (x + y))], axis=-1)
    image = base[None] * rng.uniform(0.9, 1.1, (count, 1, 1, 1)) + 0.05 * rng.standard_normal((count, size, size, 3))
    return np.clip(np.rint(image * 60 + 128), 0, 255).astype(np.uint8)


def planted(rng, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each image with one square of random colours, 2 to 4 px (a few patches of 4 px): (images, masks)."""
    images, masks = images.copy(), np.zeros(images.shape[:3], bool)
    for i in range(len(images)):
        row, col = rng.integers(4, images.shape[1] - 8, 2)
        side = int(rng.integers(2, 5))
        images[i, row:row + side, col:col + side] = rng.integers(0, 256, (side, side, 3))
        masks[i, row:row + side, col:col + side] = True
    return images, masks


def shifted(images: np.ndarray) -> np.ndarray:
    """A global photometric shift: contrast x0.6, brightness +50 (uint8, rounded, clipped)."""
    return np.clip(np.rint(images.astype(np.float32) * 0.6 + 50.0), 0, 255).astype(np.uint8)


def few_shot_maps(method, config, backbone, source, references, fused_stage: str) -> np.ndarray:
    """The few-shot grid maps (N, g, g) of a driver run: the driver fuses them with the zero-shot map as
    (zero + few) / 2, so they are 2 fused - zero from the body's recorded stage outputs."""
    clock = harness.RecordingClock()
    run_category(Scorer(method, config, backbone, None, len(source), profile="stages"), source, CATEGORY,
                 references, clock=clock)
    (zero,), (fused,) = clock.outputs["zero_shot"], clock.outputs[fused_stage]
    n = len(source)
    return 2.0 * np.asarray(fused[1])[:n] - np.asarray(zero[1])[:n]


def window_refinement_study(seeds, shots: int, queries: int) -> dict:
    """Mean image / pixel AUROC over seeds of the few-shot maps of WinCLIP, WinCLIP+ (patch memory refined) and
    WinCLIP+ (patch and window memories refined), each a driver run, on a random CLIP with the 15 x 15 grid
    (``study_config``), with and without a global shift of the queries that the references lack. The
    zero-shot term (random text embeddings here) is common to all three and left out (``few_shot_maps``)."""
    config = study_config()
    rows = {}
    for seed in seeds:
        rng = np.random.default_rng(seed)
        backbone, _, _ = build(config, seed)
        normal = textured(rng, queries // 2)
        anomalous, defect_masks = planted(rng, textured(rng, queries - queries // 2))
        masks = np.concatenate([np.zeros_like(defect_masks), defect_masks])
        labels = np.r_[np.zeros(len(normal)), np.ones(len(anomalous))]
        refs = textured(rng, shots)
        references = jdata.ArrayImages(refs, [f"r{i}" for i in range(shots)], np.zeros(shots), ("good",) * shots)
        context = RunContext("mvtec", 60, shots)
        arms = [("winclip", get_method("winclip"), {}, "few_shot")] + [
            (f"winclip_plus {mode}", get_method("winclip_plus"), {"refine_memories": mode}, "refine")
            for mode in ("patches", "all")]
        for shift in (False, True):
            images = np.concatenate([normal, anomalous])
            images = shifted(images) if shift else images
            source = jdata.ArrayImages(images, [f"q{i}" for i in range(len(images))], labels,
                                       ("good",) * len(normal) + ("square",) * len(anomalous), masks)
            for name, method, values, stage in arms:
                grid_maps = few_shot_maps(method, method.configure(values, context), backbone, source, references,
                                          stage)
                image = image_metrics(grid_maps.reshape(len(grid_maps), -1).max(axis=1), labels)["auroc"]
                pixel = pixel_metrics(np.asarray(resize_bilinear(grid_maps, 60)), masks)["auroc"]
                rows.setdefault(f"{'shift' if shift else 'no_shift'} | {name}", []).append((image, pixel))
    return {key: {"image_auroc": float(np.mean([v[0] for v in values])),
                  "pixel_auroc": float(np.mean([v[1] for v in values])),
                  "image_auroc_per_seed": [float(v[0]) for v in values],
                  "pixel_auroc_per_seed": [float(v[1]) for v in values]} for key, values in rows.items()}


def table(out: dict) -> str:
    """The stage table (ms per query image; text and fit/coreset in seconds per category)."""
    split = out["jax"]["extract_split_ms"]
    lines = ["| stage | JAX winclip | torch winclip | JAX winclip+ | torch winclip+ |", "|---|---|---|---|---|"]

    def cell(side, name, key):
        value = out[side][name].get(key)
        return "-" if value is None else f"{value:.3g}"

    rows = [("text encoding, once (s)", "prepare_s", "text_s"),
            ("fit: memories / coreset, once (s)", "fit_s", "coreset_s"),
            ("full pass", None, "full_pass"), ("window passes", None, "window_passes"),
            ("extract (full + windows, driver)", "extract", None), ("zero-shot scoring", "zero_shot", "zero_shot"),
            ("few-shot matching", "few_shot", "few_shot"), ("refinement + fusion", "refine", "refine"),
            ("upsample (+ blur)", "upsample", "upsample")]
    for label, jax_key, torch_key in rows:
        cells = []
        for name in ("winclip", "winclip_plus"):
            if jax_key is None:
                cells.append(f"{split['full_pass' if torch_key == 'full_pass' else 'window_passes']:.3g}")
            else:
                cells.append(cell("jax", name, jax_key))
            cells.append("-" if torch_key is None else cell("torch", name, torch_key))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vision-layers", type=int, default=2)
    parser.add_argument("--text-layers", type=int, default=2)
    parser.add_argument("--queries", type=int, default=8)
    parser.add_argument("--shots", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=2, help="images per extraction batch (the driver pads "
                        "the last batch: keep queries and shots multiples of it)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--study-seeds", type=int, default=3)
    parser.add_argument("--study-queries", type=int, default=24)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    payload = {
        **harness.environment("torch"),
        "sizes": {"architecture": "ViT-B-16-plus-240 shapes", "vision_layers": args.vision_layers,
                  "text_layers": args.text_layers, "image_size": 240, "grid": 15, "windows": [196, 169],
                  "queries": args.queries, "shots": args.shots, "repeats": args.repeats, "prompts": 231},
    }
    payload["timing"] = timing(args)
    payload["window_refinement_study"] = window_refinement_study(range(args.study_seeds), args.shots,
                                                                 args.study_queries)
    payload["table"] = table(payload["timing"])
    print(payload["table"])
    for key, value in payload["window_refinement_study"].items():
        print(f"{key}: image AUROC {value['image_auroc']:.3f}, pixel AUROC {value['pixel_auroc']:.3f}")
    path = harness.write_json(args.out / f"winclip_{jax.default_backend()}.json", payload)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
