"""Scale and streaming: host memory at N = 1,000 and 10,000, stream throughput and latency, a defect burst.

    python -m benchmarks.stream_scale                 # N = 1,000 and 10,000 (tens of minutes on a 2-core CPU)
    python -m benchmarks.stream_scale --dry-run       # N = 50, every section in-process (the CI check)

Synthetic product images (``jzad.data.make_synthetic_set``, one seed per image, 10% with planted defects) are
made as they are decoded, so no image set sits in memory; MuSc on the random-weight tiny backbone at 32 px.
Sections, each written to benchmarks/results/stream_<platform>.json:
- whole: ``run_category`` (the shared driver) over N images in balanced subsets of ``--subset-size``: peak RSS
  (ru_maxrss of a fresh process per N), seconds, image AUROC. The driver keeps per-image outputs for the
  metrics (maps at 32 x 32 float32: 4 KiB per image), the only part that grows with N.
- stream: ``jzad.stream.run_stream`` over N arrivals (batch ``--stream-batch``, bank ``--bank``), each row
  appended to a CSV: peak RSS per N (a fresh process each), latency, throughput.
- throughput: the stream at b = 1, 8, 32 over the same ``--throughput-n`` images against scoring them as one
  set with ``run_category`` (compile excluded on both sides: the stream's first batch, the set's first run).
- burst: normals, then a burst of identical defect images, then normals with sporadic defects, streamed at
  b = 1 under FIFO, reservoir and normal-only admission: how the burst scores against the normals' 95th
  percentile, AUROCs, how much of the burst entered the bank.
- latency: the stream at ``--stream-batch`` over ``--throughput-n`` arrivals, checkpointing every
  ``--checkpoint-every`` batches, ``--repeats`` times: each batch's wall time (first arrival to end, checkpoint
  included) split into waiting / decode / step / outputs / checkpoint, with the XLA compilations that ran in
  it (jax.monitoring) and the process's CPU time over it (a batch slow in wall time but not in CPU time waited
  for a core: the machine's load). The leading batches that compiled are the warm-up, reported apart and said
  so; the steady state (every later batch, recompiles included) gives the median, p95 and the batches slower
  than 3x the median with their cause.

    python -m benchmarks.stream_scale --sections latency   # only this section; the others keep their results
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks import harness

RESULTS = Path(__file__).resolve().parent / "results"
SIZE = 32
DEFECT_EVERY = 10


class SyntheticSource:
    """N synthetic images made on demand: image i from ``make_synthetic_set`` with seed base + i, anomalous
    when i % DEFECT_EVERY == DEFECT_EVERY - 1 (the pipeline's source interface; no masks)."""

    def __init__(self, n: int, base: int = 0):
        self.n, self.base = n, base
        self.names = tuple(f"img{i:05d}" for i in range(n))
        self.labels = np.asarray([int(i % DEFECT_EVERY == DEFECT_EVERY - 1) for i in range(n)], np.int64)
        self.defect_types = tuple("defect" if label else "good" for label in self.labels)
        self.has_masks = False

    def __len__(self) -> int:
        return self.n

    def image(self, index: int) -> np.ndarray:
        from jzad import data as jdata

        label = int(self.labels[index])
        images, _, _, _ = jdata.make_synthetic_set(1 - label, label, size=SIZE, seed=self.base + int(index))
        return images[0]

    def decode(self, indices, prep, size):
        from jzad.data.sources import Decoded

        return Decoded(np.stack([self.image(int(i)) for i in indices]), tuple((SIZE, SIZE) for _ in indices))


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def musc_setup(r_list=(1, 3, 5)):
    from jzad.features import load_backbone
    from jzad.methods import RunContext, get_method

    method = get_method("musc")
    backbone = load_backbone("random-tiny", method.backbone_run(None), image_size=SIZE, seed=0)
    config = method.configure({"r_list": tuple(r_list)}, RunContext("synthetic", SIZE))
    return method, config, backbone


def whole(n: int, subset_size: int, r_list=(1, 3, 5)) -> dict:
    """run_category over n synthetic images in balanced subsets -> seconds, peak RSS, AUROC."""
    from jzad.pipeline import Scorer, run_category

    method, config, backbone = musc_setup(r_list)
    source = SyntheticSource(n)
    subsets = max(1, n // subset_size)
    start = time.perf_counter()
    result = run_category(Scorer(method, config, backbone, None, batch_size=50), source, "synthetic",
                          subsets=subsets, split="balanced")
    seconds = time.perf_counter() - start
    return {"n": n, "subsets": subsets, "largest_subset": max(len(g) for g in result.groups), "seconds": seconds,
            "images_per_s": n / seconds, "image_auroc": result.metrics["image_auroc"],
            "per_image_outputs_mib": (result.maps.nbytes + result.patch_scores.nbytes) / 2**20,
            "peak_rss_mib": peak_rss_mib()}


def streamer(batch: int, bank: int, admit=None, replacement="fifo", warmup=None, r_list=(1, 3, 5)):
    from jzad.methods.stream_musc import MuScStreamConfig
    from jzad.pipeline import Scorer
    from jzad.stream import Streamer

    method, config, backbone = musc_setup(r_list)
    stream = MuScStreamConfig(capacity=bank, replacement=replacement, admit_quantile=admit,
                              warmup=min(10, bank) if warmup is None else warmup)
    return Streamer(Scorer(method, config, backbone), stream, batch)


def stream(n: int, batch: int, bank: int, out: Path, source=None, r_list=(1, 3, 5)) -> dict:
    """run_stream over n synthetic arrivals -> latency, throughput, peak RSS; rows appended to out/."""
    from jzad.stream import StreamOutputs, run_stream

    source = source or SyntheticSource(n)
    runner = streamer(batch, bank, r_list=r_list)
    outputs = StreamOutputs(out)
    items = ((source.names[i], i) for i in range(n))
    decode = lambda indices: (np.stack([source.image(i) for i in indices]), [(SIZE, SIZE)] * len(indices))  # noqa: E731
    summary, _ = run_stream(runner, items, outputs, decode=decode)
    outputs.close()
    report = summary.report()
    report.update(n=n, batch=batch, bank=bank, peak_rss_mib=peak_rss_mib())
    return report


def throughput(n: int, batches, bank: int, out: Path, r_list=(1, 3, 5)) -> dict:
    """The stream at each batch size against run_category over the same n images as one set (images/s)."""
    from jzad.pipeline import Scorer, run_category

    source = SyntheticSource(n, base=10**6)
    rows = {}
    for b in batches:
        rows[f"b{b}"] = stream(n, b, bank, out / f"b{b}", source, r_list)
    method, config, backbone = musc_setup(r_list)
    scorer = Scorer(method, config, backbone, None, batch_size=50)
    run_category(scorer, source, "synthetic")
    start = time.perf_counter()
    result = run_category(scorer, source, "synthetic")
    seconds = time.perf_counter() - start
    rows["one_set"] = {"n": n, "seconds": seconds, "images_per_s": n / seconds,
                       "image_auroc": result.metrics["image_auroc"]}
    return rows


def auroc(scores, labels) -> float:
    from jzad.eval import metrics

    labels = np.asarray(labels)
    if labels.min() == labels.max():
        return float("nan")
    return float(metrics.image_metrics(np.asarray(scores, np.float64), labels)["auroc"])


def burst(normals: int, burst_len: int, after: int, bank: int, out: Path, r_list=(1, 3, 5)) -> dict:
    """Normals, then ``burst_len`` normal parts that all carry the same defect (a white 12 x 12 square at one
    place: a recurring fault), then normals with every fourth a sporadic synthetic defect; streamed at b = 1
    under each bank policy -> per policy: burst vs normal scores, AUROCs, burst images banked."""
    from jzad import data as jdata
    from jzad.stream import StreamOutputs, run_stream

    count = normals + burst_len + after
    normal_images, _, _, _ = jdata.make_synthetic_set(count, 0, size=SIZE, seed=7)
    defects, _, _, _ = jdata.make_synthetic_set(0, after // 4 + 1, size=SIZE, seed=8)
    images, kind = [], []
    for i in range(count):
        if normals <= i < normals + burst_len:
            part = normal_images[i].copy()
            part[8:20, 8:20] = 255
            images.append(part)
            kind.append("burst")
        elif i >= normals + burst_len and (i - normals - burst_len) % 4 == 3:
            images.append(defects[(i - normals - burst_len) // 4])
            kind.append("sporadic")
        else:
            images.append(normal_images[i])
            kind.append("normal")
    images, kind = np.stack(images), np.asarray(kind)
    warmup = bank // 2
    policies = {"fifo": {}, "reservoir": {"replacement": "reservoir"}, "fifo+admit0.9": {"admit": 0.9},
                "reservoir+admit0.9": {"replacement": "reservoir", "admit": 0.9}}
    results = {}
    for name, options in policies.items():
        runner = streamer(1, bank, warmup=warmup, r_list=r_list, **options)
        outputs = StreamOutputs(out / name.replace("+", "_"))
        items = [(f"{k}{i:04d}", i) for i, k in enumerate(kind)]
        summary, _ = run_stream(runner, items, outputs,
                                decode=lambda idx: (images[np.asarray(idx)], [(SIZE, SIZE)] * len(idx)))
        outputs.close()
        with open(outputs.path, newline="") as f:
            rows = list(csv.DictReader(f))
        scores = np.asarray([float(r["score"]) for r in rows])
        banked = np.asarray([r["banked"] == "1" for r in rows])
        settled = np.arange(count) >= warmup
        normal = scores[(kind == "normal") & settled]
        p95 = float(np.percentile(normal, 95))
        burst_scores = scores[kind == "burst"]
        later = np.arange(count) >= normals + burst_len
        results[name] = {
            "normal_p95": p95,
            "burst_above_normal_p95": float(np.mean(burst_scores > p95)),
            "burst_first_score": float(burst_scores[0]), "burst_last_score": float(burst_scores[-1]),
            "burst_auroc_vs_normals": auroc(np.r_[normal, burst_scores], np.r_[np.zeros(normal.size),
                                                                              np.ones(burst_scores.size)]),
            "sporadic_auroc_after_burst": auroc(scores[later & (kind != "burst")],
                                                (kind[later & (kind != "burst")] == "sporadic").astype(int)),
            "burst_banked": int(banked[kind == "burst"].sum()),
            "images_per_s": summary.report()["images_per_s"],
        }
    return {"normals": normals, "burst": burst_len, "after": after, "bank": bank, "warmup": warmup,
            "policies": results}


SLOW = 3.0
"""A steady-state batch slower than SLOW x the steady median is listed with its cause."""
CONTENDED = 1.5
"""A slow batch whose process CPU time is within CONTENDED x the typical was waiting for a core."""
PARTS = ("waiting", "decode", "step", "outputs", "checkpoint")


def batch_rows(timings, compiles, cpu_s, writing) -> list[dict]:
    """Each batch's parts (ms), its compilations, the process's CPU time over it (all threads) and whether it
    began while a checkpoint was still being written in the background."""
    return [{"batch": t.index, "images": t.images, "checkpointed": t.checkpointed, "ms": 1e3 * t.seconds,
             **{f"{part}_ms": 1e3 * getattr(t, part) for part in PARTS}, "cpu_ms": 1e3 * cpu,
             "compiles": len(c), "compile_ms": 1e3 * sum(s for _, s in c), "compiled": sorted({n for n, _ in c}),
             "checkpoint_writing": w}
            for t, c, cpu, w in zip(timings, compiles, cpu_s, writing)]


def slow_cause(row: dict, typical: dict) -> str:
    """Why a batch was slow: compilation when it compiled, else the part furthest above its typical time, with
    "waiting for a core" when the process's CPU time stayed typical (the wall time went to other processes)."""
    if row["compiles"]:
        return f"compile ({row['compiles']} x: {', '.join(row['compiled'])})"
    part = max(PARTS, key=lambda p: row[f"{p}_ms"] - typical[p])
    cause = "checkpoint save" if part == "checkpoint" else part
    if part != "checkpoint" and row["checkpoint_writing"]:
        cause += ", beside the background write of the last checkpoint (it shares the cores)"
    if row["cpu_ms"] <= CONTENDED * typical["cpu"]:
        cause += (f", waiting for a core (CPU time {row['cpu_ms']:.0f} ms, typically {typical['cpu']:.0f}: "
                  "the machine's load)")
    return cause


def attribute(rows: list[dict]) -> dict:
    """Warm-up = the leading batches that compiled (reported apart, said so); the steady state is every later
    batch, recompiles included: per-batch median / p95 and the batches over SLOW x the median with their
    cause."""
    warm = next((i for i, row in enumerate(rows) if not row["compiles"]), len(rows))
    steady = rows[warm:]
    summary = {"warm_up": {"batches": warm, "ms": [r["ms"] for r in rows[:warm]],
                           "compiles": sum(r["compiles"] for r in rows[:warm]),
                           "compile_ms": sum(r["compile_ms"] for r in rows[:warm]),
                           "note": "leading batches that ran XLA compilations: reported apart from the steady state"}}
    if not steady:
        return {**summary, "steady": None}
    ms = np.asarray([r["ms"] for r in steady])
    median = float(np.median(ms))
    typical = {p: float(np.median([r[f"{p}_ms"] for r in steady])) for p in PARTS + ("cpu",)}
    cpu = np.asarray([r["cpu_ms"] for r in steady])
    slow = [{"batch": r["batch"], "ms": r["ms"], "cause": slow_cause(r, typical)}
            for r in steady if r["ms"] > SLOW * median]
    return {**summary, "steady": {
        "batches": len(steady), "batch_ms_median": median, "batch_ms_p95": float(np.percentile(ms, 95)),
        "batch_ms_max": float(ms.max()), "p95_over_median": float(np.percentile(ms, 95)) / median,
        "typical_ms": typical, "cpu_ms_median": float(np.median(cpu)), "cpu_ms_p95": float(np.percentile(cpu, 95)),
        "recompiles": sum(r["compiles"] for r in steady),
        "checkpoints": sum(r["checkpointed"] for r in steady),
        "checkpoint_ms": [r["checkpoint_ms"] for r in steady if r["checkpointed"]],
        f"slower_than_{SLOW:g}x_median": slow}}


def latency(n: int, batch: int, bank: int, out: Path, checkpoint_every: int, r_list=(1, 3, 5)) -> dict:
    """run_stream over n arrivals, checkpointing to out/state every ``checkpoint_every`` batches (and at the
    end): each batch's wall time from its first arrival to its end (checkpoint included) split into its parts,
    with the XLA compilations that ran in it -> per batch rows, warm-up and steady state apart, slow batches
    with their cause, per-image latency (arrival to score), the wait for the last save at the end."""
    from jzad.stream import StreamOutputs, has_checkpoint, run_stream
    from jzad.timing import CompileLog

    source = SyntheticSource(n, base=2 * 10**6)
    runner = streamer(batch, bank, r_list=r_list)
    outputs = StreamOutputs(out)
    timings, compiles, ends, cpu, writing = [], [], [], [], [False]
    started = [0]  # the image count of the newest checkpoint begun
    items = ((source.names[i], i) for i in range(n))
    decode = lambda indices: (np.stack([source.image(i) for i in indices]), [(SIZE, SIZE)] * len(indices))  # noqa: E731

    def on_timing(timing):
        timings.append(timing)
        compiles.append(log.take())
        ends.append(time.perf_counter())
        cpu.append(time.process_time())
        started[0] = timing.done if timing.checkpointed else started[0]
        writing.append(started[0] > (has_checkpoint(out / "state") or 0))  # what the next batch begins beside

    with harness.LoadSampler(2.0) as load, CompileLog() as log:
        log.take()
        start, cpu_start = time.perf_counter(), time.process_time()
        summary, _ = run_stream(runner, items, outputs, state_dir=out / "state", checkpoint_every=checkpoint_every,
                                decode=decode, on_timing=on_timing)
        finished = time.perf_counter()
    outputs.close()
    rows = batch_rows(timings, compiles, np.diff(np.r_[cpu_start, cpu]), writing)
    report = attribute(rows)
    warm_images = sum(r["images"] for r in rows[:report["warm_up"]["batches"]])
    steady_latency = summary.latency_ms[warm_images:]
    report.update(n=n, batch=batch, bank=bank, checkpoint_every=checkpoint_every, load_average=load.summary(),
                  seconds=finished - start, final_checkpoint_wait_ms=1e3 * (finished - ends[-1]),
                  image_latency_ms_median_all=float(np.median(summary.latency_ms)),
                  image_latency_ms_p95_all=float(np.percentile(summary.latency_ms, 95)),
                  image_latency_ms_median_steady=float(np.median(steady_latency)),
                  image_latency_ms_p95_steady=float(np.percentile(steady_latency, 95)), batches=rows)
    return report


def run_worker(args) -> dict:
    out = Path(args.tmp)
    if args.worker == "whole":
        return whole(args.n, args.subset_size)
    return stream(args.n, args.stream_batch, args.bank, out)


def in_subprocess(section: str, n: int, args, tmp: Path) -> dict:
    """One measurement in a fresh Python process (its peak RSS is its own)."""
    command = [sys.executable, "-m", "benchmarks.stream_scale", "--worker", section, "--n", str(n),
               "--subset-size", str(args.subset_size), "--stream-batch", str(args.stream_batch),
               "--bank", str(args.bank), "--tmp", str(tmp)]
    done = subprocess.run(command, capture_output=True, text=True, check=True,
                          cwd=Path(__file__).resolve().parents[1])
    return json.loads(done.stdout.strip().splitlines()[-1])


def environment() -> dict:
    return {**harness.device_info(), "load_average": list(os.getloadavg()), "versions": harness.versions(),
            "commit": harness.commit()}


SECTIONS = ("memory", "throughput", "burst", "latency")


def memory_section(sizes, args, tmp: Path, r_list) -> dict:
    """Peak RSS of the whole-set and the stream runs at each N (a fresh process each, in-process for a dry run)."""
    memory = {"whole": [], "stream": []}
    for n in sizes:
        for section in ("whole", "stream"):
            start = time.perf_counter()
            if args.dry_run:
                row = whole(n, args.subset_size, r_list) if section == "whole" else stream(
                    n, args.stream_batch, args.bank, tmp / f"stream{n}", r_list=r_list)
            else:
                row = in_subprocess(section, n, args, tmp / f"{section}{n}")
            memory[section].append(row)
            print(f"{section} N={n}: peak RSS {row['peak_rss_mib']:.0f} MiB, "
                  f"{time.perf_counter() - start:.0f} s", file=sys.stderr)
    for section, rows in list(memory.items()):
        if len(rows) > 1:
            memory[f"{section}_rss_ratio"] = rows[-1]["peak_rss_mib"] / rows[0]["peak_rss_mib"]
    return memory


def main(argv=None) -> dict:
    from jzad.stream import CHECKPOINT_EVERY

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,10000", help="N values of the memory runs")
    parser.add_argument("--subset-size", type=int, default=100, help="images per subset of the whole-set runs")
    parser.add_argument("--stream-batch", type=int, default=8, help="batch of the memory and latency stream runs")
    parser.add_argument("--bank", type=int, default=64, help="bank capacity B")
    parser.add_argument("--throughput-n", type=int, default=1000, help="images of the throughput and latency runs")
    parser.add_argument("--batches", default="1,8,32", help="batch sizes of the throughput runs")
    parser.add_argument("--checkpoint-every", type=harness.positive_int, default=CHECKPOINT_EVERY,
                        help="batches between checkpoints in the latency runs (the stream's default)")
    parser.add_argument("--repeats", type=harness.positive_int, default=3, help="latency runs, one after another")
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help="sections to run; the others keep their results from the existing results file "
                             "(section_runs: when and at what load each section ran)")
    parser.add_argument("--dry-run", action="store_true", help="N = 50, in-process, r = 1 only, small burst")
    parser.add_argument("--out", type=Path, default=None, help="results JSON (default benchmarks/results/)")
    parser.add_argument("--worker", choices=("whole", "stream"), default=None, help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--tmp", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(run_worker(args)))
        return {}
    sections = [v for v in args.sections.split(",") if v]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        parser.error(f"--sections: unknown {', '.join(unknown)} (expected some of {', '.join(SECTIONS)})")

    sizes = [50] if args.dry_run else [int(v) for v in args.sizes.split(",")]
    batches = [1, 8] if args.dry_run else [int(v) for v in args.batches.split(",")]
    r_list = (1,) if args.dry_run else (1, 3, 5)
    n = 50 if args.dry_run else args.throughput_n
    date = time.strftime("%Y-%m-%d %H:%M:%S")
    device = environment()
    name = "stream_cpu_dry.json" if args.dry_run else f"stream_{device['platform']}.json"
    out = args.out or RESULTS / name
    kept = json.loads(out.read_text()) if set(sections) != set(SECTIONS) and out.is_file() else {}
    payload = {**kept, "date": date, "device": device, "dry_run": args.dry_run,
               "config": {"image_size": SIZE, "backbone": "random-tiny (4 blocks, width 64, patch 8: 4x4 patches)",
                          "r_list": list(r_list), "subset_size": args.subset_size, "stream_batch": args.stream_batch,
                          "bank": args.bank, "defect_every": DEFECT_EVERY, "checkpoint_every": args.checkpoint_every}}
    ran = {"date": date, "load_average": device["load_average"], "commit": device["commit"]}
    before = {"date": kept.get("date"), "load_average": kept.get("device", {}).get("load_average"),
              "commit": kept.get("device", {}).get("commit")}
    payload["section_runs"] = {**{section: before for section in SECTIONS if section in kept},
                               **kept.get("section_runs", {}), **{section: ran for section in sections}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if "memory" in sections:
            payload["memory"] = memory_section(sizes, args, tmp, r_list)
        if "throughput" in sections:
            payload["throughput"] = throughput(n, batches, args.bank, tmp / "throughput", r_list)
        if "burst" in sections:
            payload["burst"] = (burst(12, 6, 8, 8, tmp / "burst", r_list) if args.dry_run
                                else burst(80, 24, 48, args.bank // 2, tmp / "burst"))
        if "latency" in sections:
            import jax

            jax.clear_caches()  # the first run compiles as a fresh process would (its warm-up), later ones do not
            payload["latency"] = [latency(n, args.stream_batch, args.bank, tmp / f"latency{k}",
                                          args.checkpoint_every, r_list) for k in range(args.repeats)]
    payload["device"]["load_average_end"] = list(os.getloadavg())
    harness.write_json(out, payload)
    print_summary(payload)
    print(f"wrote {out}")
    payload["path"] = str(out)
    return payload


def print_summary(payload: dict) -> None:
    if "memory" in payload:
        print_memory(payload["memory"])
    if "throughput" in payload:
        print("\n| stream batch | images/s (after first batch) | latency median (ms) | latency p95 (ms) |")
        print("|---|---|---|---|")
        for key, row in payload["throughput"].items():
            if key == "one_set":
                print(f"| one set (run_category) | {row['images_per_s']:.1f} | | |")
            else:
                print(f"| {row['batch']} | {row['images_per_s_after_first_batch']:.1f} | "
                      f"{row['latency_ms_median']:.1f} | {row['latency_ms_p95']:.1f} |")
    if "burst" in payload:
        print("\n| policy | burst > normal p95 | burst AUROC | sporadic AUROC after | burst banked |")
        print("|---|---|---|---|---|")
        for name, row in payload["burst"]["policies"].items():
            print(f"| {name} | {row['burst_above_normal_p95']:.2f} | {row['burst_auroc_vs_normals']:.3f} | "
                  f"{row['sporadic_auroc_after_burst']:.3f} | {row['burst_banked']} / {payload['burst']['burst']} |")
    if "latency" in payload:
        print_latency(payload["latency"])


def print_memory(memory: dict) -> None:
    print("| run | N | peak RSS (MiB) | seconds | images/s |\n|---|---|---|---|---|")
    for section in ("whole", "stream"):
        for row in memory[section]:
            print(f"| {section} | {row['n']} | {row['peak_rss_mib']:.0f} | {row['seconds']:.1f} | "
                  f"{row['images_per_s']:.1f} |")
    for section in ("whole", "stream"):
        if f"{section}_rss_ratio" in memory:
            print(f"{section}: RSS ratio N = {memory[section][-1]['n']} / {memory[section][0]['n']}: "
                  f"{memory[f'{section}_rss_ratio']:.3f}")


def print_latency(runs: list[dict]) -> None:
    print("\n| run | warm-up batches (ms, compiles) | steady batches | batch median (ms) | batch p95 (ms) | "
          "p95 / median | CPU ms median / p95 | image latency median / p95 (ms, steady) | checkpoints (ms) | "
          "final save wait (ms) | load (median) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for k, run in enumerate(runs):
        warm, steady = run["warm_up"], run["steady"]
        load = run["load_average"]["median"] if run["load_average"] else float("nan")
        print(f"| {k} | {warm['batches']} ({', '.join(f'{v:.0f}' for v in warm['ms'])}; {warm['compiles']}) | "
              f"{steady['batches']} | {steady['batch_ms_median']:.1f} | {steady['batch_ms_p95']:.1f} | "
              f"{steady['p95_over_median']:.2f} | {steady['cpu_ms_median']:.1f} / {steady['cpu_ms_p95']:.1f} | "
              f"{run['image_latency_ms_median_steady']:.1f} / "
              f"{run['image_latency_ms_p95_steady']:.1f} | "
              f"{', '.join(f'{v:.0f}' for v in steady['checkpoint_ms'])} | {run['final_checkpoint_wait_ms']:.0f} | "
              f"{load:.1f} |")
        for slow in steady[f"slower_than_{SLOW:g}x_median"]:
            print(f"    run {k} batch {slow['batch']}: {slow['ms']:.0f} ms, {slow['cause']}")


if __name__ == "__main__":
    main()
