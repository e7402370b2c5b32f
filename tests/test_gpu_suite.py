"""The prepared GPU benchmark run, dry-run on the CPU at tiny sizes: it completes, writes its JSON and table,
keeps the budget (a part that does not fit is skipped with the reason), and its parity numbers hold against
the PyTorch reference, so the run on a lent GPU cannot fail on a typo."""

import json
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from benchmarks import gpu_suite  # noqa: E402
from benchmarks.musc_timing import MUSC_STAGES  # noqa: E402
from jzad.methods import method_names  # noqa: E402

TINY = ["--backbone", "tiny@32", "--n", "8", "--scaling", "4", "--batch", "4", "--attention-images", "4",
        "--method-images", "6", "--method-pilot", "4", "--method-backbone", "tiny", "--method-shots", "2",
        "--compile-allowance", "0.5", "--ceiling-size", "64", "--copy-mib", "1"]
CORE_PARTS = ("ceilings", "musc_bf16", "musc_fp32", "musc_reference", "attention", "musc_scaling", "fslc")


def _check_summary(summary, stages, n):
    assert set(summary["stages"]) == set(stages)
    for stage in stages:
        entry = summary["stages"][stage]
        assert entry["per_image_ms"] == pytest.approx(1e3 * entry["median_s"] / n)
    assert summary["total_median_s"] == pytest.approx(sum(s["median_s"] for s in summary["stages"].values()))


@pytest.mark.slow
def test_dry_run_completes_and_matches_the_reference(tmp_path, capsys):
    payload = gpu_suite.main(TINY + ["--budget", "600", "--out", str(tmp_path)])
    assert payload["out"] == str(tmp_path)
    saved = json.loads((tmp_path / gpu_suite.JSON_NAME).read_text())
    table = (tmp_path / gpu_suite.TABLE_NAME).read_text()
    parts = saved["parts"]
    assert list(parts) == [part.name for part in gpu_suite.PARTS]
    for name in CORE_PARTS:
        assert parts[name]["status"] == "ok", (name, parts[name])
    for run in gpu_suite.METHOD_RUNS:
        entry = parts[run.method]
        if run.method in method_names():
            assert entry["status"] == "ok", (run.method, entry)
            _check_summary(entry["summary"], tuple(entry["summary"]["stages"]), 6)
            assert "extract" in entry["summary"]["stages"] and entry["pilot"]["n"] == 4
        else:
            assert entry["status"] == "skipped" and f"method {run.method!r} is not registered" in entry["reason"]
    assert saved["elapsed_s"] <= 600 and saved["budget_s"] == 600
    assert saved["device"]["platform"] == "cpu" and {"jax", "torch", "python"} <= set(saved["versions"])

    for name in ("musc_bf16", "musc_fp32", "musc_reference"):
        _check_summary(parts[name]["summary"], MUSC_STAGES, 8)
        roof = parts[name]["roofline"]["msm"]
        assert roof["over_floor"] == pytest.approx(roof["measured_s"] / roof["floor_s"])
    assert parts["musc_fp32"]["schedule"] in ("rows", "pairs")
    assert parts["musc_reference"]["roofline"]["msm"]["flops"] == pytest.approx(
        2 * parts["musc_fp32"]["roofline"]["msm"]["flops"])

    fp32, bf16 = parts["musc_reference"]["parity"]["fp32"], parts["musc_reference"]["parity"]["bf16"]
    for key in ("patch_scores_max_abs", "maps_max_abs", "image_scores_raw_max_abs", "image_scores_max_abs"):
        assert fp32[key] <= 1e-4, (key, fp32[key])
    assert fp32["image_scores_rank_correlation"] == pytest.approx(1.0)
    assert 0 < bf16["patch_scores_max_abs"] <= 0.02 * bf16["patch_scores_max_magnitude"]

    variants = {(v["attention"], v["dtype"]): v for v in parts["attention"]["variants"]}
    assert variants[("cudnn", "bfloat16")]["status"] == "skipped"
    assert "needs a CUDA GPU" in variants[("cudnn", "bfloat16")]["reason"]
    xla = variants[("xla", "float32")]
    assert xla["status"] == "ok" and xla["taps_max_abs"] <= 1e-4 * max(1.0, xla["taps_max_magnitude"])
    assert xla["embeds_max_abs"] <= 1e-4 and variants[("einsum", "float32")]["status"] == "ok"

    (row,) = parts["musc_scaling"]["rows"]
    assert row["n"] == 4
    for key in ("jax_bf16", "jax_fp32", "reference"):
        assert row[key]["status"] == "ok"
        _check_summary(row[key]["summary"], MUSC_STAGES, 4)

    fslc = parts["fslc"]
    _check_summary(fslc["summary"], gpu_suite.FSLC_STAGES, 8)
    assert fslc["sizes"]["init_images"] == 7 and fslc["reference"]["status"] == "ok"
    assert fslc["reference"]["parity"]["image_scores_max_abs"] <= 1e-4

    for heading in ("## Parts", "## MuSc, tiny@32", "## Feature extraction by attention implementation",
                    "## MuSc scaling with N", "## FSLC, N = 8"):
        assert heading in table
    assert "| speed-up fp32 (reference / JAX) |" in table and "| xla | float32 | 4 |" in table
    assert table in capsys.readouterr().out


def test_a_budget_too_small_skips_every_part(tmp_path):
    gpu_suite.main(TINY + ["--budget", "0.001", "--compile-allowance", "1", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / gpu_suite.JSON_NAME).read_text())
    for name, entry in saved["parts"].items():
        assert entry["status"] == "skipped", name
        assert entry["reason"].startswith("budget: estimated") or "is not registered" in entry["reason"], entry
    assert saved["parts"]["ceilings"]["reason"].startswith("budget: estimated 1.0 s")
    assert "| musc_fp32 | skipped |" in (tmp_path / gpu_suite.TABLE_NAME).read_text()


def test_parts_in_order_within_the_budget_with_failures_recorded(tmp_path):
    args = gpu_suite.build_parser().parse_args(["--backbone", "tiny@32", "--budget", "10"])
    now = [0.0]
    suite = gpu_suite.Suite(args, tmp_path, "test", clock=lambda: now[0])
    written = {}

    def takes(seconds, result):
        def run(_):
            now[0] += seconds
            return result

        return run

    def read_back(_):
        written.update(json.loads((tmp_path / gpu_suite.JSON_NAME).read_text())["parts"])
        return {}

    def broken(_):
        raise RuntimeError("device lost")

    def stops(_):
        now[0] += 1.0
        raise gpu_suite.PartSkipped("budget: the full run", {"pilot": {"n": 2}})

    Part = gpu_suite.Part
    suite.run([
        Part("a", "first", takes(4.0, {"x": 1}), lambda _: 3.0),
        Part("b", "too long", takes(1.0, {}), lambda _: 7.0),
        Part("c", "raises", broken, lambda _: 1.0),
        Part("d", "reads the file", read_back, lambda _: 1.0),
        Part("e", "stops short", stops, lambda _: 1.0),
        Part("f", "unregistered", takes(1.0, {}), lambda _: 0.0, method="no_such_method"),
        Part("g", "fits exactly", takes(5.0, {}), lambda _: 5.0),
    ])
    parts = suite.payload["parts"]
    assert parts["a"]["status"] == "ok" and parts["a"]["x"] == 1 and parts["a"]["wall_s"] == 4.0
    assert parts["b"]["status"] == "skipped" and parts["b"]["reason"] == "budget: estimated 7.0 s, 6.0 s left"
    assert parts["c"]["status"] == "failed" and parts["c"]["error"] == "RuntimeError: device lost"
    assert any("device lost" in line for line in parts["c"]["traceback"])
    assert written["a"]["status"] == "ok" and written["c"]["status"] == "failed"
    assert parts["e"]["status"] == "skipped" and parts["e"]["pilot"] == {"n": 2}
    assert "method 'no_such_method' is not registered" in parts["f"]["reason"]
    assert parts["g"]["status"] == "ok" and suite.remaining() == 0.0
    saved = json.loads((tmp_path / gpu_suite.JSON_NAME).read_text())
    assert saved["parts"] == gpu_suite.jsonable(parts)


def test_options_and_json_values():
    with pytest.raises(SystemExit) as err:
        gpu_suite.build_parser().parse_args(["--only", "musc_fp32,warp_drive"])
    assert err.value.code == 2
    args = gpu_suite.build_parser().parse_args(["--only", "musc_fp32,fslc", "--skip", "attention"])
    assert args.only == ("musc_fp32", "fslc") and args.skip == ("attention",) and args.budget == 480.0
    suite = gpu_suite.Suite(args, Path("unused"), "test")
    reasons = {part.name: suite.skip_reason(part) for part in gpu_suite.PARTS}
    assert reasons["ceilings"] is None and reasons["musc_fp32"] is None
    assert reasons["musc_bf16"] == "not selected (--only)" and reasons["attention"] == "not selected (--only)"
    with pytest.raises(SystemExit):
        gpu_suite.build_parser().parse_args(["--budget", "0"])
    np = pytest.importorskip("numpy")
    assert gpu_suite.jsonable({"a": (np.float32(1.5), float("nan")), 2: np.arange(2), "b": np.bool_(True)}) == {
        "a": [1.5, None], "2": [0, 1], "b": True}
    assert gpu_suite.rank_correlation([3.0, 1.0, 2.0], [30.0, 10.0, 20.0]) == pytest.approx(1.0)
    assert gpu_suite.rank_correlation([1.0, 2.0, 3.0], [3.0, 2.0, 1.0]) == pytest.approx(-1.0)
    assert gpu_suite.default_out("NVIDIA H100 80GB HBM3").name.startswith("gpu_nvidia-h100-80gb-hbm3_")
