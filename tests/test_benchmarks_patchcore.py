"""PatchCore timing benchmark at a small size: it times the driver (the fit stage included) and the driver's memory
bank, scores and maps equal the PyTorch reference's, with the original code's load-time BatchNorm update done by
PyTorch's own BatchNorm on the reference side (the default run)."""

import json

import pytest

pytest.importorskip("torch")

from benchmarks import patchcore_timing  # noqa: E402


@pytest.mark.slow
def test_small_run_times_the_driver_and_matches_the_reference(tmp_path, capsys):
    payload = patchcore_timing.main(["--image-size", "64", "--shots", "1", "--queries", "2", "--batch", "2",
                                     "--out", str(tmp_path)])
    saved = json.loads((tmp_path / f"patchcore_{payload['device']['platform']}.json").read_text())
    assert saved["sizes"]["patches_per_image"] == 64 and saved["sizes"]["prototypes"] == 3
    assert set(saved["stages_ms_per_image"]) == {"extract", "fit: embed + coreset (per category)", "embed",
                                                 "nearest", "refine (PatchCore+)", "blur (upsample + Gaussian)"}
    for name in ("patchcore", "patchcore_plus"):
        assert {"extract", "fit", "embed", "upsample"} <= set(saved["jax_driver"][name]["ms_per_image"])
    fit_row = saved["stages_ms_per_image"]["fit: embed + coreset (per category)"]
    assert fit_row["jax"] == saved["jax_driver"]["patchcore"]["fit_ms_per_category"]
    parity = saved["parity_max_rel"]
    assert parity["bank"] <= 1e-5, parity
    assert max(parity["patchcore"].values()) <= 1e-5, parity
    assert max(parity["patchcore_plus"].values()) <= 1e-4, parity
    assert "parity (max relative difference)" in capsys.readouterr().out
