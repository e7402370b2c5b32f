"""Time the CLIP vision forward per image: jitted Flax vs PyTorch transformers, same random weights.

    python benchmarks/clip_forward_timing.py [--cases ViT-B-16@224,ViT-L-14@518] [--batch 1] [--repeats 3]

For each case a transformers CLIPVisionModelWithProjection of the architecture's real shapes is built with
random weights at the run size (position embeddings laid out for it, so neither side interpolates per
call) and ported to Flax with jzad's tables. Both return the tapped residual streams and the projected
CLS embedding. Flax: AOT compile timed separately, block_until_ready before each clock read; PyTorch:
inference_mode. One warm-up each, then the two are timed in alternation (so both see the same load on a
shared machine); median of repeats. Writes
benchmarks/results/clip_forward_<platform>.json with the device, versions and shapes.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import jax
import numpy as np

from benchmarks import harness
from jzad.backbone import default_taps, encode_image, get_architecture, hf_to_openai, openai_to_flax

RESULTS = Path(__file__).resolve().parent / "results"


def vision_flops(config) -> float:
    """Multiply-add FLOPs (x2) of one image through the vision tower: patch embedding, blocks, projection."""
    v = config.vision
    tokens, width, mlp = v.num_tokens, v.width, v.mlp_dim
    patch = 2 * (tokens - 1) * 3 * v.patch_size**2 * width
    per_block = 2 * tokens * width * (4 * width + 2 * mlp) + 4 * tokens * tokens * width
    return float(patch + v.layers * per_block + 2 * width * (config.embed_dim or 0))


def torch_model(config, seed: int):
    """A random transformers CLIPVisionModelWithProjection of config's shapes at its image size."""
    import torch
    import transformers

    torch.manual_seed(seed)
    v = config.vision
    hf_config = transformers.CLIPVisionConfig(
        hidden_size=v.width,
        intermediate_size=v.mlp_dim,
        num_hidden_layers=v.layers,
        num_attention_heads=v.heads,
        image_size=v.image_size,
        patch_size=v.patch_size,
        projection_dim=config.embed_dim,
        hidden_act=config.activation,
    )
    return transformers.CLIPVisionModelWithProjection(hf_config).eval()


def flax_forward(params, images, config, taps):
    """AOT-compiled Flax forward: (callable returning synchronised outputs, compile seconds)."""
    fn = jax.jit(lambda p, x: encode_image(p, x, config, taps))
    start = time.perf_counter()
    compiled = fn.lower(params, images).compile()
    compile_s = time.perf_counter() - start
    return (lambda: jax.block_until_ready(compiled(params, images))), compile_s


def torch_forward(model, images, taps):
    """PyTorch forward under inference_mode returning (taps, embeds)."""
    import torch

    pixels = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))

    def forward():
        with torch.inference_mode():
            out = model(pixel_values=pixels, output_hidden_states=True)
        return tuple(out.hidden_states[t] for t in taps), out.image_embeds

    return forward


def interleaved_runs(forwards: dict, repeats: int) -> tuple[dict, dict]:
    """One warm-up each, then repeats rounds timing every forward in turn (so both sides see the same
    machine load); returns (name -> list of seconds, name -> warm-up outputs)."""
    outputs = {name: fn() for name, fn in forwards.items()}
    runs = {name: [] for name in forwards}
    for _ in range(repeats):
        for name, fn in forwards.items():
            start = time.perf_counter()
            fn()
            runs[name].append(time.perf_counter() - start)
    return runs, outputs


def run_case(arch: str, image_size: int, batch: int, repeats: int, with_torch: bool, seed: int) -> dict:
    base = get_architecture(arch)
    v = base.vision
    config = base.replace(text=None, vision=type(v)(**{**v.__dict__, "image_size": image_size}))
    taps = default_taps(config)
    model = torch_model(config, seed)
    state = {k: t.detach().numpy() for k, t in model.state_dict().items()}
    params = jax.device_put(openai_to_flax(hf_to_openai(state), config))
    images = np.random.default_rng(seed).normal(size=(batch, image_size, image_size, 3)).astype(np.float32)
    forwards = {}
    forwards["flax_fp32"], compile_s = flax_forward(params, images, config, taps)
    if with_torch:
        import torch

        forwards["torch_fp32"] = torch_forward(model, images, taps)
    runs, outputs = interleaved_runs(forwards, repeats)
    flops = vision_flops(config)
    result = {
        "arch": arch,
        "image_size": image_size,
        "batch": batch,
        "tokens": config.vision.num_tokens,
        "grid": config.vision.grid_size,
        "taps": list(taps),
        "activation": config.activation,
        "params_vision": int(sum(np.size(x) for x in jax.tree.leaves(params))),
        "gflop_per_image": flops / 1e9,
    }
    for name, times in runs.items():
        median = statistics.median(times)
        result[name] = {
            "median_s": median,
            "runs_s": times,
            "ms_per_image": 1e3 * median / batch,
            "gflops": flops * batch / median / 1e9,
        }
    result["flax_fp32"]["compile_s"] = compile_s
    if with_torch:
        result["torch_fp32"]["threads"] = torch.get_num_threads()
        (flax_taps, flax_embed), (torch_taps, torch_embed) = outputs["flax_fp32"], outputs["torch_fp32"]
        diffs = [float(np.abs(np.asarray(a) - b.numpy()).max()) for a, b in zip(flax_taps, torch_taps)]
        result["max_abs_diff"] = {
            "taps": max(diffs),
            "embed": float(np.abs(np.asarray(flax_embed) - torch_embed.numpy()).max()),
        }
        result["flax_over_torch"] = result["flax_fp32"]["median_s"] / result["torch_fp32"]["median_s"]
    return result


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default="ViT-B-16@224,ViT-L-14@518", help="comma-separated ARCH@SIZE")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-torch", action="store_true", help="time the Flax side only")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="results JSON (default benchmarks/results/)")
    args = parser.parse_args(argv)
    cases = []
    for item in args.cases.split(","):
        arch, _, size = item.partition("@")
        if not size.isdigit():
            parser.error(f"case {item!r} must be ARCH@SIZE, e.g. ViT-L-14@518")
        cases.append((arch, int(size)))
    device = jax.devices()[0]
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as err:
        raise SystemExit(f"this benchmark needs torch and transformers: {err}") from err
    report = {"benchmark": "clip_forward", **harness.environment("torch", "transformers"), "dtype": "float32",
              "cases": []}
    for arch, size in cases:
        result = run_case(arch, size, args.batch, args.repeats, not args.no_torch, args.seed)
        report["cases"].append(result)
        line = f"{arch}@{size} batch {args.batch}: flax {result['flax_fp32']['ms_per_image']:.1f} ms/img"
        line += f" (compile {result['flax_fp32']['compile_s']:.2f} s, {result['flax_fp32']['gflops']:.0f} GFLOP/s)"
        if "torch_fp32" in result:
            line += f", torch {result['torch_fp32']['ms_per_image']:.1f} ms/img"
            line += f", max |diff| {result['max_abs_diff']['taps']:.2e}"
        print(line, flush=True)
    report["load_average_end"] = list(os.getloadavg())
    out = args.out or RESULTS / f"clip_forward_{device.platform}.json"
    harness.write_json(out, report)
    print(f"wrote {out}")
    return report


if __name__ == "__main__":
    main()
