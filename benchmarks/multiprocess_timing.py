"""One process against several local processes: the same command-line run, timed both ways on this machine.

    python -m benchmarks.multiprocess_timing --processes 2 --devices 1 -- --method musc --image-size 224

The run (``python -m jzad.run`` with the arguments after ``--``; the built-in demo by default) is launched as
one process with P x D fake CPU devices (``--shards P*D``) and as P local processes of D devices each, joined
by JAX's distributed runtime (gloo collectives) through a free local port: the same mesh size, so the same
arithmetic. Recorded per layout: the wall time of the whole command (start-up, compiles, scoring, writing),
the per-stage steady-state ms/image and compile seconds from process 0's results.json, and whether the scores
equal the one-process run's bit for bit. The 1-minute load average is sampled before and after each run (the
CPU may be shared). Output: ``<out>/multiprocess_<platform>.json``.

``launch_local`` is also the launcher of tests/test_multiprocess.py.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parents[1]
DEMO_ARGS = ("--backbone", "random-vit-b-16", "--image-size", "224", "--no-heatmaps", "--quiet")


@dataclass
class Launched:
    """One finished (or killed) process: its exit status (None: killed at the deadline), output, seconds."""

    process_id: int
    returncode: int | None
    output: str
    seconds: float


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the OS picks it)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


WORKER = "import json, sys\nfrom jzad.run import main\nsys.exit(max([main(args) for args in json.loads(sys.argv[1])]))"
"""A process's program: ``jzad.run.main`` on each argument list in turn (the runtime starts once)."""


def launch_local(runs: list[tuple[list[str], Path]], processes: int, devices: int, workdir: Path,
                 timeout: float) -> list[Launched]:
    """Start ``processes`` local processes of ``devices`` fake CPU devices each; every process runs the
    command line (``jzad.run.main``) on each (arguments, out) of ``runs`` in turn, with ``--out
    OUT/process<i>``. More than one process join through a coordinator on a free local port
    (--coordinator/--num-processes/--process-id). All must finish within ``timeout`` seconds of the start:
    any still running then is killed (returncode None), so a hung run cannot hang the caller. The output
    goes through log files in ``workdir``, read back and deleted. Returns one ``Launched`` per process; its
    exit status is the largest of its runs'.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("JZAD_")}
    env.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu",
               PYTHONPATH=os.pathsep.join([str(ROOT)] + [p for p in [env.get("PYTHONPATH")] if p]))
    distributed = []
    if processes > 1:
        distributed = ["--coordinator", f"127.0.0.1:{free_port()}", "--num-processes", str(processes)]
    running = []
    finished = {}
    start = time.perf_counter()
    try:
        for i in range(processes):
            rank = ["--process-id", str(i)] if distributed else []
            argv = [[*args, "--out", str(Path(out) / f"process{i}"), *distributed, *rank] for args, out in runs]
            log = open(workdir / f"process{i}.log", "w+")
            running.append((i, subprocess.Popen([sys.executable, "-c", WORKER, json.dumps(argv)], stdout=log,
                                                stderr=subprocess.STDOUT, env=env, cwd=workdir), log))
        deadline = start + timeout
        for i, process, _ in running:
            try:
                process.wait(timeout=max(deadline - time.perf_counter(), 0.1))
                finished[i] = time.perf_counter() - start
            except subprocess.TimeoutExpired:
                continue
    finally:
        for _, process, _ in running:
            if process.poll() is None:
                process.kill()
                process.wait()
    results = []
    for i, process, log in running:
        log.seek(0)
        results.append(Launched(i, process.returncode if i in finished else None, log.read(),
                                finished.get(i, time.perf_counter() - start)))
        log.close()
        os.unlink(log.name)
    return results


def read_scores(path: Path) -> dict[str, float]:
    """name -> score of a scores_<category>.csv."""
    with open(path, newline="") as f:
        return {row["name"]: float(row["score"]) for row in csv.DictReader(f)}


def timed_layout(run_args: list[str], processes: int, devices: int, workdir: Path, timeout: float) -> dict:
    """One layout's run: wall seconds, process 0's timing table and its scores."""
    load_before = os.getloadavg()[0]
    launched = launch_local([(run_args, workdir / "out")], processes, devices, workdir, timeout)
    load_after = os.getloadavg()[0]
    for run in launched:
        if run.returncode != 0:
            raise RuntimeError(f"process {run.process_id} of {processes} ended with {run.returncode}:\n"
                               f"{run.output[-4000:]}")
    written = workdir / "out" / "process0"
    results = json.loads((written / "results.json").read_text())
    scores = {p.name: read_scores(p) for p in sorted(written.glob("scores_*.csv"))}
    return {"processes": processes, "devices_per_process": devices, "wall_s": max(r.seconds for r in launched),
            "timing": results["timing"], "load_average_1min": [load_before, load_after], "scores": scores}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, default=2, help="local processes of the multi-process layout")
    parser.add_argument("--devices", type=int, default=1, help="fake CPU devices per process")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds before a layout's run is killed")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for multiprocess_<platform>.json")
    parser.add_argument("run_args", nargs=argparse.REMAINDER,
                        help="after --: arguments of python -m jzad.run (default: the demo on ViT-B/16 at 224)")
    args = parser.parse_args(argv)
    run_args = [a for a in args.run_args if a != "--"] or list(DEMO_ARGS)
    total = args.processes * args.devices
    layouts = {}
    with tempfile.TemporaryDirectory() as folder:
        for name, processes, devices in ((f"1x{total}", 1, total),
                                         (f"{args.processes}x{args.devices}", args.processes, args.devices)):
            workdir = Path(folder) / name
            workdir.mkdir()
            extra = ["--shards", str(total)] if processes == 1 else []
            layouts[name] = timed_layout(run_args + extra, processes, devices, workdir, args.timeout)
    one, many = layouts.values()
    from benchmarks import harness

    payload = {
        "kind": "multiprocess_timing", **harness.environment(),
        "config": {"run_args": run_args, "processes": args.processes, "devices_per_process": args.devices},
        "scores_equal": one["scores"] == many["scores"],
        "layouts": {k: {f: v for f, v in layout.items() if f != "scores"} for k, layout in layouts.items()},
    }
    path = harness.write_json(args.out / "multiprocess_cpu.json", payload)
    for name, layout in payload["layouts"].items():
        total_row = next(r for r in layout["timing"] if r["stage"] == "total")
        print(f"{name}: wall {layout['wall_s']:.1f} s | steady {total_row['ms_per_image']:.1f} ms/image | "
              f"compile {total_row['compile_s']:.1f} s | load {layout['load_average_1min']}")
    print(f"scores equal: {payload['scores_equal']} | wrote {path}")
    return payload


if __name__ == "__main__":
    main()
