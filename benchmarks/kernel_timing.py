"""Time the core kernels at a MuSc-sized problem: one image's patches against all other images.

    python -m benchmarks.kernel_timing [--queries 1369 --groups 199 --members 1369 --channels 1024]

Nearest-neighbour min (fp32 and bf16), interval mean and k-center greedy; compile time separate, device
synchronised before every clock read, median of repeats. Writes benchmarks/results/kernels_<platform>.json.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from benchmarks import harness
from jzad.kernels import interval_mean, kcenter_greedy, nearest_group_distance

RESULTS = Path(__file__).resolve().parent / "results"


def measure(fn, *args, repeats: int) -> dict:
    """Compile seconds and median steady-state seconds of fn(*args), synchronising before each clock read."""
    start = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    compile_s = time.perf_counter() - start
    jax.block_until_ready(compiled(*args))
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        runs.append(time.perf_counter() - start)
    return {"compile_s": compile_s, "median_s": statistics.median(runs), "runs_s": runs}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=1369, help="query patches (one image's patch count)")
    parser.add_argument("--groups", type=int, default=199, help="reference images")
    parser.add_argument("--members", type=int, default=1369, help="patches per reference image")
    parser.add_argument("--channels", type=int, default=1024, help="feature width")
    parser.add_argument("--query-tile", type=int, default=2048)
    parser.add_argument("--group-tile", type=int, default=8)
    parser.add_argument("--coreset", type=int, default=1000, help="k of the k-center benchmark")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None, help="results JSON (default benchmarks/results/)")
    args = parser.parse_args(argv)

    key = jax.random.key(0)
    kq, kr = jax.random.split(key)
    queries = jax.random.normal(kq, (args.queries, args.channels), jnp.float32)
    refs = jax.random.normal(kr, (args.groups, args.members, args.channels), jnp.float32)
    flops = 2.0 * args.queries * args.groups * args.members * args.channels
    results = {}
    for precision in ("fp32", "bf16"):
        fn = lambda q, r, p=precision: nearest_group_distance(  # noqa: E731
            q, r, query_tile=args.query_tile, group_tile=args.group_tile, precision=p
        )
        t = measure(fn, queries, refs, repeats=args.repeats)
        t["gflop_per_s"] = flops / t["median_s"] / 1e9
        results[f"nearest_{precision}"] = t
    dist = jax.random.uniform(key, (args.queries, args.groups))
    results["interval_mean"] = measure(lambda d: interval_mean(d, 0.0, 0.3), dist, repeats=args.repeats)
    points = refs.reshape(-1, args.channels)[: args.groups * args.members // 4]
    results["kcenter_greedy"] = measure(lambda x: kcenter_greedy(x, args.coreset, 0), points, repeats=1)
    results["kcenter_greedy"]["points"] = list(points.shape)
    results["kcenter_greedy_projected_128"] = measure(
        lambda x: kcenter_greedy(x, args.coreset, 0, projection_dim=128, key=key), points, repeats=1
    )

    device = jax.devices()[0]
    payload = {
        **harness.environment(),
        "shapes": {"queries": [args.queries, args.channels], "refs": [args.groups, args.members, args.channels],
                   "query_tile": args.query_tile, "group_tile": args.group_tile, "coreset_k": args.coreset},
        "nearest_flop": flops,
        "results": results,
    }
    out = args.out or RESULTS / f"kernels_{device.platform}.json"
    harness.write_json(out, payload)
    print("| kernel | compile s | median s | note |\n|---|---|---|---|")
    for name, t in results.items():
        note = f"{t['gflop_per_s']:.0f} GFLOP/s" if "gflop_per_s" in t else ""
        print(f"| {name} | {t['compile_s']:.2f} | {t['median_s']:.3f} | {note} |")
    print(f"wrote {out}")
    return payload


if __name__ == "__main__":
    main()
