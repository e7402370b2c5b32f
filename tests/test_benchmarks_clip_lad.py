"""CLIP-LAD timing benchmark at tiny sizes: it times the driver (both profiles) and its parity against the
PyTorch reference holds, stage by stage and end to end."""

import json
import statistics

import pytest

pytest.importorskip("torch")

from benchmarks import clip_lad_timing  # noqa: E402


@pytest.mark.slow
def test_tiny_run_times_the_driver_and_matches_the_reference(tmp_path, capsys):
    out = tmp_path / "clip_lad.json"
    report = clip_lad_timing.main(["--arch", "tiny-text", "--image-size", "32", "--n", "6", "--shots", "2",
                                   "--repeats", "2", "--out", str(out)])
    saved = json.loads(out.read_text())
    case = saved["case"]
    assert report["path"] == str(out) and case["n"] == 6 and case["shots"] == 2 and case["image_size"] == 32
    assert {"jax", "torch", "python"} <= set(saved["versions"]) and saved["load_average"]["samples"] >= 1
    assert tuple(case["stages"]) == ("extract", "features", "assign", "match", "histogram", "memory", "fusion",
                                     "upsample")
    for row in case["stages"].values():
        assert len(row["jax_runs_s"]) == len(row["torch_runs_s"]) == 2
        assert row["jax_ms_per_image"] == pytest.approx(1e3 * statistics.median(row["jax_runs_s"]) / 6)
        assert row["torch_ms_per_image"] == pytest.approx(1e3 * statistics.median(row["torch_runs_s"]) / 6)
    assert tuple(case["fused"]["stages"]) == ("extract", "score", "upsample")
    assert set(case["per_category"]["run_s"]) == {"prepare", "extract", "fit", "calibrate"}

    parity = case["parity"]
    assert parity["parity_images"] == 6
    assert parity["regions_agree"] >= 0.98 and parity["labels_agree"] >= 0.98
    for key in ("forward_dense_max_abs", "logical_max_abs", "structural_map_max_abs", "fused_max_abs",
                "maps_max_abs", "fused_profile_image_scores_max_abs", "fused_profile_maps_max_abs"):
        assert parity[key] <= 1e-4, (key, parity[key])
    stdout = capsys.readouterr().out
    assert "through the driver" in stdout and "fused profile" in stdout and f"wrote {out}" in stdout
