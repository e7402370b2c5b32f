"""Multi-process scoring: two local processes (two fake CPU devices each), joined by JAX's distributed runtime
over gloo, score the synthetic demo exactly as one process over a mesh of the same size, for every method; only
process 0 writes.

Why (nearly) bit for bit: both runs execute the same scoring programs on the same global shapes; the one-process
run extracts with each batch split over its 4 devices (sharded extraction), the two processes each extract their
share on one device, so features may differ by float rounding (1e-7 seen for WinCLIP): scores are compared to
1e-5 relative, metrics to 1e-3. Each process extracts its
share of a group with the backbone program of the same batch shape (every image's features depend on that
image only), the shares are assembled into the same (N, ...) arrays the single process holds, and every
kernel gives each of the 4 devices the same block of rows. The collectives only move values or pick among
them (all-gathers, pmin, a psum that adds zeros to one row), so no floating-point sum is reordered.
Against one device the result is the same for FSLC and MuSc "pairs" (tests/test_pipeline.py); MuSc "rows"
agrees to ~2e-7 there, since the GEMM row count per device follows the shard count.
"""

import dataclasses
import json

import jax
import pytest

from benchmarks.multiprocess_timing import launch_local, read_scores
from jzad.methods import base, get_method
from jzad.run import build_parser, distributed_settings, main

TINY = ["--image-size", "32", "--quiet", "--no-heatmaps"]
CASES = {
    "musc-rows": ["--method", "musc", "--backbone", "random-tiny", "--schedule", "rows"],
    "musc-pairs-subsets": ["--method", "musc", "--backbone", "random-tiny", "--schedule", "pairs", "--subsets", "3"],
    "fslc": ["--method", "fslc", "--backbone", "random-tiny"],
    "patchcore": ["--method", "patchcore", "--backbone", "random-tiny-resnet"],
    "patchcore_plus": ["--method", "patchcore_plus", "--backbone", "random-tiny-resnet"],
    "winclip": ["--method", "winclip", "--backbone", "random-tiny-text", "--shots", "1"],
    "winclip_plus": ["--method", "winclip_plus", "--backbone", "random-tiny-text"],
    "clip_lad": ["--method", "clip_lad", "--backbone", "random-tiny-text"],
}
TIMEOUT_S = 600


@pytest.mark.slow
def test_two_processes_score_as_one_process_and_only_process_0_writes(tmp_path):
    runs = [(TINY + args, tmp_path / case) for case, args in CASES.items()]
    for run in launch_local(runs, processes=2, devices=2, workdir=tmp_path, timeout=TIMEOUT_S):
        status = "killed after the timeout" if run.returncode is None else f"exit status {run.returncode}"
        errors = "\n".join(line for line in run.output.splitlines() if "error" in line.lower())
        assert run.returncode == 0, f"process {run.process_id}: {status}\n{errors}\n{run.output[-3000:]}"
    # Process 1 created nothing (its --out included) and the launcher removed both logs.
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(CASES)
    for case, args in CASES.items():
        two_out, one_out = tmp_path / case / "process0", tmp_path / case / "one"
        assert sorted(p.name for p in (tmp_path / case).iterdir()) == ["process0"], case
        assert main(TINY + args + ["--shards", "4", "--out", str(one_out)]) == 0
        two, one = read_scores(two_out / "scores_synthetic.csv"), read_scores(one_out / "scores_synthetic.csv")
        assert len(two) == 28 and two.keys() == one.keys(), case
        assert max(abs(two[k] - one[k]) for k in one) <= 1e-5 * max(1.0, max(abs(v) for v in one.values())), case
        results = json.loads((two_out / "results.json").read_text())
        reference = json.loads((one_out / "results.json").read_text())
        assert results["status"] == "complete" and results["processes"] == 2 and results["config"]["shards"] == 4
        assert results["categories"][0].get("subset_sizes") == reference["categories"][0].get("subset_sizes")
        for name, value in results["categories"][0]["metrics"].items():
            assert value == pytest.approx(reference["categories"][0]["metrics"][name], abs=1e-3), (case, name)


def test_distributed_settings_from_flags_and_environment():
    parse = build_parser().parse_args
    assert distributed_settings(parse([]), environ={}) is None
    flags = parse(["--coordinator", "10.0.0.1:1234", "--num-processes", "4", "--process-id", "3"])
    assert distributed_settings(flags, environ={}) == {"coordinator": "10.0.0.1:1234", "num_processes": 4,
                                                       "process_id": 3}
    environ = {"JZAD_COORDINATOR": "node0:9999", "JZAD_NUM_PROCESSES": "8", "JZAD_PROCESS_ID": "5"}
    assert distributed_settings(parse([]), environ) == {"coordinator": "node0:9999", "num_processes": 8,
                                                        "process_id": 5}
    assert distributed_settings(parse(["--process-id", "2"]), environ)["process_id"] == 2
    assert distributed_settings(parse(["--coordinator", "auto"]), environ={}) == {
        "coordinator": "auto", "num_processes": None, "process_id": None}


@pytest.mark.parametrize("argv,environ,fragment", [
    (["--num-processes", "2", "--process-id", "0"], {}, "need --coordinator"),
    (["--coordinator", "node0"], {}, "HOST:PORT"),
    (["--coordinator", "node0:99"], {}, "--num-processes P and --process-id I"),
    (["--coordinator", "node0:99", "--num-processes", "2", "--process-id", "2"], {}, "--process-id: expected 0..1"),
    ([], {"JZAD_COORDINATOR": "node0:99", "JZAD_NUM_PROCESSES": "two", "JZAD_PROCESS_ID": "0"},
     "JZAD_NUM_PROCESSES"),
])
def test_bad_distributed_settings_are_one_line_errors(tmp_path, capsys, monkeypatch, argv, environ, fragment):
    for name in ("JZAD_COORDINATOR", "JZAD_NUM_PROCESSES", "JZAD_PROCESS_ID"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    assert main(TINY + ["--backbone", "random-tiny"] + argv + ["--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert fragment in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_a_method_without_multi_process_support_is_refused(tmp_path, capsys, monkeypatch):
    local_only = dataclasses.replace(get_method("musc"), name="musc-local", multi_process=False)
    monkeypatch.setitem(base._REGISTRY, "musc-local", local_only)
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    assert main(TINY + ["--backbone", "random-tiny", "--method", "musc-local", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "--method musc-local does not support multi-process scoring (2 processes)" in err
    assert not (tmp_path / "o").exists()
