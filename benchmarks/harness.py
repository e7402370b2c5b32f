"""What every benchmark shares, written once: the environment a result depends on (versions, device, CPU,
commit, date), load-average sampling over a run, peak memory of a block, timing of a call, the results JSON
(atomic, finite numbers only), the argument types of the benchmark command lines, and the hooks that time and
inspect the production path.

    with LoadSampler() as load, PeakMemory("jax", "cpu") as memory:
        out, seconds = timed(fn, *args)
    write_json(path, {**environment("torch"), "load_average": load.summary(), "memory": memory.as_dict(), ...})

Benchmarks time the production path (``jzad.pipeline`` / ``jzad.experiment``) and record a result with the
load of the machine it ran on: on a shared CPU the contention is part of what a timing means. They never call a
method's stage functions themselves: ``pipeline_run`` times the driver (fused, or stage by stage with
``Scorer(profile="stages")``), ``RecordingClock`` keeps each stage's outputs of ``Method.staged`` for parity
against a reference, and ``StagePrograms`` compiles the stages ``Method.body`` calls, for their memory.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import resource
import shutil
import statistics
import subprocess
import time
from collections import defaultdict
from importlib import metadata
from pathlib import Path

import jax
import numpy as np

from benchmarks.report import dumps
from jzad.cli import positive_int
from jzad.pipeline import run_category
from jzad.timing import StageClock

__all__ = ["LoadSampler", "PeakMemory", "RecordingClock", "StagePrograms", "commit", "compile_program",
           "cpu_name", "default_torch_device", "device_info", "environment", "image_counts", "jsonable", "max_abs", "memory_analysis", "pipeline_run",
           "positive_int", "release_free_heap", "stage_summary", "summarize_runs", "timed", "to_numpy", "torch_device_info",
           "versions", "write_json", "write_text"]

CORE_PACKAGES = ("jax", "jaxlib", "flax", "numpy")


def timed(fn, *args):
    """(result, seconds) of fn(*args); the result is ready on device when the clock is read."""
    start = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    return out, time.perf_counter() - start


def max_abs(a, b) -> float:
    """Largest absolute difference of two arrays (JAX, NumPy or torch), in float64."""
    return float(np.max(np.abs(np.asarray(to_numpy(a), np.float64) - np.asarray(to_numpy(b), np.float64))))


def to_numpy(x) -> np.ndarray:
    """A NumPy array of a JAX, NumPy or torch array (torch tensors detached, as float32, on the CPU)."""
    if hasattr(x, "detach"):
        return x.detach().float().cpu().numpy()
    return np.asarray(x)


def default_torch_device() -> str:
    """The PyTorch reference's device: CUDA when JAX runs on a GPU and torch sees one, else the CPU."""
    import torch

    return "cuda" if jax.devices()[0].platform == "gpu" and torch.cuda.is_available() else "cpu"


def image_counts(text: str) -> tuple[int, ...]:
    """argparse type of a scaling run's image counts: "25,50,100" -> (25, 50, 100), sorted, each >= 2."""
    try:
        values = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 25,50,100, got {text!r}") from err
    if not values or values[0] < 2:
        raise argparse.ArgumentTypeError(f"expected image counts >= 2, got {text!r}")
    return tuple(values)


def versions(*extra: str) -> dict:
    """Python and the installed versions of jax, jaxlib, flax, numpy, jzad and each ``extra`` distribution
    (e.g. "torch", "transformers"); a distribution that is not installed is recorded as None."""
    import jzad

    found = {"python": platform.python_version(), "jzad": jzad.__version__}
    for name in CORE_PACKAGES + extra:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def commit() -> str | None:
    """The short git commit of the checkout the benchmark runs from (None outside a git checkout)."""
    if shutil.which("git") is None:
        return None
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).resolve().parent,
                         capture_output=True, text=True)
    return out.stdout.strip() if out.returncode == 0 else None


def cpu_name() -> str:
    """The CPU model (from /proc/cpuinfo where there is one)."""
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def device_info(**extra) -> dict:
    """The JAX device a run uses (platform, kind, device count), the CPU and its cores, and ``extra``."""
    device = jax.devices()[0]
    return {"platform": device.platform, "kind": device.device_kind, "jax_devices": len(jax.devices()),
            "cpu": cpu_name(), "cpu_count": os.cpu_count(), **extra}


def torch_device_info(torch_device: str) -> dict:
    """torch's side of a comparison: its device, thread count and (CUDA) device name."""
    import torch

    info = {"torch_device": torch_device, "torch_threads": torch.get_num_threads()}
    if torch_device.startswith("cuda"):
        info["torch_device_name"] = torch.cuda.get_device_name(torch_device)
    return info


def environment(*extra_versions: str, **device_extra) -> dict:
    """The environment block of a results file: UTC date, commit, device (``device_info(**device_extra)``),
    versions (``versions(*extra_versions)``) and the load average now."""
    return {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
            "commit": commit(), "device": device_info(**device_extra), "versions": versions(*extra_versions),
            "load_average_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}


def jsonable(value):
    """A results tree as plain JSON values: numpy scalars and arrays as Python numbers and lists, tuples as
    lists, non-finite floats as None."""
    if isinstance(value, dict):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(item) for item in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if np.isfinite(value) else None
    return value


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write a file through a temporary file and a rename, so readers (and a killed run) never leave half of
    it; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(path.name + ".tmp")
    temp.write_text(text)
    os.replace(temp, path)
    return path


def write_json(path: str | os.PathLike, payload: dict) -> Path:
    """A results payload as JSON (``jsonable``: numpy values as numbers, non-finite ones as null), written
    atomically (``write_text``)."""
    return write_text(path, dumps(jsonable(payload)) + "\n")


def proc_status(field: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise ValueError(f"/proc/self/status has no {field} line")


def release_free_heap() -> bool:
    """Return freed heap pages to the OS (glibc malloc_trim), so memory a block reuses from earlier work
    shows up as RSS growth again; False where the C library has no malloc_trim."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    if libc is None or not hasattr(libc, "malloc_trim"):
        return False
    libc.malloc_trim(0)
    return True


class PeakMemory:
    """Peak memory growth of the enclosed block on one device ("bytes", "method" after exit).

    torch on CUDA: max_memory_allocated after reset_peak_memory_stats, minus what was allocated before.
    JAX on an accelerator: XLA's peak_bytes_in_use (a process-lifetime peak: it cannot be reset) minus
    bytes_in_use before. CPU (both): peak resident set growth, VmHWM after resetting it through
    /proc/self/clear_refs, minus VmRSS before, with freed heap pages first returned to the OS (malloc_trim)
    so reused memory counts; without /proc, the growth of ru_maxrss (a lower bound).
    """

    def __init__(self, framework: str, device: str):
        if framework not in ("jax", "torch"):
            raise ValueError(f"framework: expected 'jax' or 'torch', got {framework!r}")
        self.framework = framework
        self.device = device
        self.bytes = None
        self.method = None

    def __enter__(self):
        if self.framework == "torch" and self.device.startswith("cuda"):
            import torch

            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            self.method = "torch.cuda.max_memory_allocated - allocated before"
        elif self.framework == "jax" and self.device != "cpu" and jax.devices()[0].memory_stats():
            self._base = jax.devices()[0].memory_stats()["bytes_in_use"]
            self.method = "XLA peak_bytes_in_use (process lifetime) - bytes_in_use before"
        elif os.access("/proc/self/clear_refs", os.W_OK):
            trimmed = release_free_heap()
            with open("/proc/self/clear_refs", "w") as handle:
                handle.write("5")
            self._base = proc_status("VmRSS")
            self.method = ("peak RSS growth (" + ("malloc_trim, then " if trimmed else "")
                           + "VmHWM after clear_refs - VmRSS before)")
        else:
            self._base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            self.method = "ru_maxrss growth (lower bound)"
        return self

    def __exit__(self, *exc):
        if self.method.startswith("torch"):
            import torch

            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        elif self.method.startswith("XLA"):
            peak = jax.devices()[0].memory_stats()["peak_bytes_in_use"]
        elif self.method.startswith("peak RSS"):
            peak = proc_status("VmHWM")
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        self.bytes = max(int(peak - self._base), 0)
        return False

    def as_dict(self) -> dict:
        return {"peak_bytes": self.bytes, "method": self.method}


class LoadSampler:
    """Samples the 1-minute load average every ``interval`` seconds while a run lasts (a shared machine's
    contention is part of what a CPU timing means); ``summary()`` gives min / median / max and the count."""

    def __init__(self, interval: float = 5.0):
        import threading

        self.samples = [os.getloadavg()[0]] if hasattr(os, "getloadavg") else []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, args=(interval,), daemon=True)

    def _loop(self, interval: float) -> None:
        while not self._stop.wait(interval):
            self.samples.append(os.getloadavg()[0])

    def __enter__(self):
        if self.samples:
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        return False

    def summary(self) -> dict | None:
        if not self.samples:
            return None
        return {"min": min(self.samples), "median": statistics.median(self.samples), "max": max(self.samples),
                "samples": len(self.samples), "cores": os.cpu_count()}


# --------------------------------------------------------------------------------------------- production path


def summarize_runs(runs: list[dict], n: int, compile_s: dict | None) -> dict:
    """Per-stage medians over repeated runs ({stage: seconds} each, same stages) of N images:
    {"stages": {stage: {"compile_s", "median_s", "runs_s", "per_image_ms"}}, "total_median_s", "total_runs_s",
    "total_per_image_ms"}; compile_s None (a reference with no compile step) records None per stage."""
    stages = {}
    for stage in runs[0]:
        values = [run[stage] for run in runs]
        median = statistics.median(values)
        stages[stage] = {
            "compile_s": None if compile_s is None else compile_s.get(stage, 0.0),
            "median_s": median,
            "runs_s": values,
            "per_image_ms": 1e3 * median / n,
        }
    totals = [sum(run.values()) for run in runs]
    return {"stages": stages, "total_median_s": statistics.median(totals), "total_runs_s": totals,
            "total_per_image_ms": 1e3 * statistics.median(totals) / n}


def pipeline_run(scorer, source, repeats: int, platform_name: str, warmup: bool = True,
                 references=None, calibration=None, category: str = "benchmark") -> dict:
    """``jzad.pipeline.run_category`` (fit, decode, extract, the method's scoring, maps, finalize), timed stage
    by stage on its StageClock: an untimed warm-up run (when ``warmup``), then ``repeats`` timed runs. The
    scorer's ``profile`` decides what the stages are: "fused" times the method's one program as "score",
    "stages" times each stage of the same body.

    Returns {"runs": [{stage: seconds}] per timed run, "compile_s": {stage: seconds} of the first run,
    "result": the last CategoryResult, "memory": the first timed run's peak (``PeakMemory``)}.
    """
    compile_s = None
    if warmup:
        clock = StageClock()
        run_category(scorer, source, category, references, clock=clock, calibration=calibration)
        compile_s = dict(clock.compile_seconds)
    runs, memory, result = [], None, None
    for index in range(repeats):
        clock = StageClock()
        meter = PeakMemory("jax", platform_name)
        with meter:
            result = run_category(scorer, source, category, references, clock=clock, calibration=calibration)
        if compile_s is None:
            compile_s = dict(clock.compile_seconds)
        if index == 0:
            memory = meter.as_dict()
        runs.append(dict(clock.run_seconds))
    return {"runs": runs, "compile_s": compile_s, "result": result, "memory": memory}


def stage_summary(timed_runs: dict, stages: tuple[str, ...], n: int) -> dict:
    """``summarize_runs`` of a ``pipeline_run`` over the named stages (a stage a run did not time counts 0)."""
    runs = [{s: run.get(s, 0.0) for s in stages} for run in timed_runs["runs"]]
    return summarize_runs(runs, n, {s: timed_runs["compile_s"].get(s, 0.0) for s in stages})


class RecordingClock(StageClock):
    """A StageClock that also keeps what every timed call returned: ``outputs[stage]`` lists them in call order.
    Passed to ``Method.staged``, it gives a benchmark the production body's intermediate results to compare with
    a reference, without calling the method's stage functions itself."""

    def __init__(self) -> None:
        super().__init__()
        self.outputs: dict[str, list] = defaultdict(list)

    def run(self, stage: str, fn, *args, **kwargs):
        out = super().run(stage, fn, *args, **kwargs)
        self.outputs[stage].append(out)
        return out


def memory_analysis(compiled) -> dict:
    """The byte counts of a compiled program's ``memory_analysis()`` ({} where the backend gives none)."""
    stats = compiled.memory_analysis()
    if stats is None:
        return {}
    keys = ("temp_size_in_bytes", "argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes",
            "peak_memory_in_bytes")
    return {k: int(getattr(stats, k)) for k in keys if hasattr(stats, k)}


def compile_program(fn, *args) -> dict:
    """AOT-compile fn for args (arrays or ShapeDtypeStructs): {"run", "compile_s", "memory"}."""
    start = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    return {"run": compiled, "compile_s": time.perf_counter() - start, "memory": memory_analysis(compiled)}


def _is_arrays(value) -> bool:
    leaves = jax.tree.leaves(value)
    return bool(leaves) and all(isinstance(leaf, (jax.Array, np.ndarray)) for leaf in leaves)


def _abstract(tree):
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), tree)


def _program_key(stage: str, fn, args: tuple, dynamic: list, kwargs: dict, inputs: list):
    """What decides a stage's program (function, fixed arguments, input shapes), hashable; None when a fixed
    argument is not hashable (the program is then compiled on every call)."""
    fixed = tuple((i, arg) for i, arg in enumerate(args) if i not in dynamic)
    shapes = tuple((leaf.shape, str(leaf.dtype)) for leaf in jax.tree.leaves(inputs))
    key = (stage, fn, fixed, tuple(sorted(kwargs.items())), jax.tree.structure(inputs), shapes)
    try:
        hash(key)
    except TypeError:
        return None
    return key


class StagePrograms:
    """The programs a method's scoring body runs stage by stage, compiled ahead of time without running them:
    ``of_body`` traces ``Method.body`` abstractly (``jax.eval_shape``) with this object's ``run`` as its stage
    runner, which lowers and compiles each stage on the shapes it is called with. ``memory[stage]`` is the
    ``memory_analysis`` of that stage's largest program (largest temp buffer over the calls of the stage),
    ``compile_s[stage]`` the seconds spent compiling its programs (a call that repeats one compiled before,
    same function, fixed arguments and shapes, is not compiled again). Array arguments of a stage are its
    program's inputs; every other argument (config, mesh, static sizes) is fixed, as the stage functions take
    them."""

    def __init__(self) -> None:
        self.memory: dict[str, dict] = {}
        self.compile_s: dict[str, float] = defaultdict(float)
        self._seen: set = set()

    def run(self, stage: str, fn, *args, **kwargs):
        """The stage runner ``Method.body`` calls: compile fn's program for these arguments' shapes (once per
        distinct program), record its memory, then call fn itself so the body's trace goes on."""
        dynamic = [i for i, arg in enumerate(args) if _is_arrays(arg)]

        def call(*arrays):
            full = list(args)
            for index, array in zip(dynamic, arrays):
                full[index] = array
            return fn(*full, **kwargs)

        inputs = [_abstract(args[i]) for i in dynamic]
        key = _program_key(stage, fn, args, dynamic, kwargs, inputs)
        if key is not None and key in self._seen:
            return call(*[args[i] for i in dynamic])
        if key is not None:
            self._seen.add(key)
        program = compile_program(call, *inputs)
        self.compile_s[stage] += program["compile_s"]
        previous = self.memory.get(stage, {}).get("temp_size_in_bytes", -1)
        if program["memory"].get("temp_size_in_bytes", 0) > previous:
            self.memory[stage] = program["memory"]
        return call(*[args[i] for i in dynamic])

    def of_body(self, method, config, state, queries, mesh) -> "StagePrograms":
        """Compile every stage ``method.body`` runs on ``queries`` with ``state`` (nothing is executed)."""
        jax.eval_shape(lambda s, q: method.body(config, s, q, mesh, self.run), state, queries)
        return self
