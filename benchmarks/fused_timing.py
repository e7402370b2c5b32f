"""MuSc through the driver (``jzad.pipeline.run_category``), the method's scoring as one jitted program ("fused",
what the command line runs) against the same body stage by stage ("stages", ``--profile stages``): wall time,
compile time and the number of XLA programs compiled, in one process, each run from a cold in-memory jit cache
(no persistent cache).

Cases: the built-in demo (28 synthetic images, the demo backbone random-vit-b-16 at 224 px) with --subsets 1
and 3, and a synthetic set of N images (default 200) on a small random ViT. Random weights: the arithmetic and
shapes are the real ones, the scores are not meaningful.

    python benchmarks/fused_timing.py --out benchmarks/results/fused_cpu.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402

from jzad.compile_cache import disable_compile_cache  # noqa: E402
from jzad.data import ArrayImages, make_synthetic_set  # noqa: E402
from jzad.eval.report import environment_info  # noqa: E402
from jzad.experiment import build_scorer, demo_sources  # noqa: E402
from jzad.methods import get_method  # noqa: E402
from jzad.pipeline import run_category  # noqa: E402
from jzad.timing import CompileLog, StageClock  # noqa: E402


def timed_run(scorer, source, subsets: int) -> dict:
    """One category run from a cold jit cache -> wall s, compile s, programs compiled, per-stage seconds."""
    jax.clear_caches()
    clock = StageClock()
    with CompileLog() as compiled:
        start = time.perf_counter()
        result = run_category(scorer, source, "bench", subsets=subsets, clock=clock)
    wall = time.perf_counter() - start
    return {"wall_s": wall, "xla_programs": compiled.count, "backend_compile_s": compiled.seconds,
            "compile_s_by_stage": dict(clock.compile_seconds), "run_s_by_stage": dict(clock.run_seconds),
            "groups": [len(g) for g in result.groups], "image_auroc": result.metrics.get("image_auroc"),
            "image_scores_head": [float(v) for v in result.image_scores[:4]], "load_avg": os.getloadavg()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200, help="N of the synthetic-set case")
    parser.add_argument("--large-backbone", default="random-tiny", help="backbone of the synthetic-set case")
    parser.add_argument("--large-size", type=int, default=64, help="image side of the synthetic-set case")
    parser.add_argument("--skip-demo", action="store_true")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    disable_compile_cache()
    method = get_method("musc")
    cases = []
    if not args.skip_demo:
        demo = build_scorer(method, {}, 0, demo=True)
        source = demo_sources(demo.backbone.image_size, 0, 0, 0).source
        for subsets in (1, 3):
            for profile in ("fused", "stages"):
                scorer = dataclasses.replace(demo, profile=profile)
                cases.append({"case": "demo", "backbone": demo.backbone.name, "image_size": demo.backbone.image_size,
                              "images": len(source), "subsets": subsets, "profile": profile,
                              **timed_run(scorer, source, subsets)})
                print(json.dumps(cases[-1]), flush=True)
    large = build_scorer(method, {}, 0, backbone=args.large_backbone, image_size=args.large_size, demo=True)
    images, masks, labels, types = make_synthetic_set(args.images // 2, args.images - args.images // 2,
                                                      size=args.large_size, seed=0)
    source = ArrayImages(images, [f"{t}_{i:04d}" for i, t in enumerate(types)], labels, types, masks)
    for profile in ("fused", "stages"):
        scorer = dataclasses.replace(large, profile=profile)
        cases.append({"case": f"synthetic N={args.images}", "backbone": large.backbone.name,
                      "image_size": large.backbone.image_size, "images": len(source), "subsets": 1,
                      "profile": profile, **timed_run(scorer, source, 1)})
        print(json.dumps(cases[-1]), flush=True)
    payload = {"benchmark": "fused_timing", "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
               "environment": environment_info(), "note": "CPU shared with other jobs: see load_avg per case; "
                                                        "ratios within one run are meaningful, absolute times not",
               "cases": cases}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
