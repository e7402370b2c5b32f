"""Benchmark harness: an in-process smoke run on a tiny backbone, the roofline formulas, memory and budgets."""

import json
import math

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import harness, musc_timing, report, roofline  # noqa: E402

STAGES = ("extract", "lnamd", "msm", "upsample", "rscin")


def _finite_numbers(tree, path="payload"):
    """Every float in a JSON tree (paths of the non-finite ones)."""
    bad = []
    if isinstance(tree, dict):
        for key, value in tree.items():
            bad += _finite_numbers(value, f"{path}.{key}")
    elif isinstance(tree, list):
        for index, value in enumerate(tree):
            bad += _finite_numbers(value, f"{path}[{index}]")
    elif isinstance(tree, float) and not math.isfinite(tree):
        bad.append(path)
    return bad


@pytest.mark.slow
def test_smoke_run_tiny_backbone(tmp_path, capsys):
    payload = musc_timing.main([
        "--backbone", "tiny@32", "--n", "5", "--repeats", "1", "--batch", "4", "--scaling", "4,6",
        "--max-seconds", "1e-6", "--ceiling-size", "64", "--copy-mib", "1", "--out", str(tmp_path),
    ])
    stdout = capsys.readouterr().out
    path = tmp_path / "musc_cpu_tiny-32_N5.json"
    assert path.is_file() and payload["path"] == str(path)
    saved = json.loads(path.read_text())
    assert _finite_numbers(saved) == []
    for key in ("date", "device", "versions", "config", "jax", "reference", "parity", "ceilings", "roofline"):
        assert key in saved
    assert set(saved["versions"]) >= {"jax", "torch", "transformers", "python"}
    load = saved["device"]["load_average"]
    assert load["samples"] >= 1 and 0 <= load["min"] <= load["median"] <= load["max"]
    assert saved["config"]["n"] == 5 and saved["config"]["m"] == 16 and saved["config"]["width"] == 64

    for impl in ("jax", "reference"):
        stages = saved[impl]["summary"]["stages"]
        assert set(stages) == set(STAGES)
        for stage in STAGES:
            assert len(stages[stage]["runs_s"]) == 1
            assert stages[stage]["per_image_ms"] == pytest.approx(1e3 * stages[stage]["median_s"] / 5)
        assert saved[impl]["summary"]["total_median_s"] == pytest.approx(sum(s["median_s"] for s in stages.values()))
    assert all(saved["reference"]["summary"]["stages"][s]["compile_s"] is None for s in STAGES)
    # the driver pads MuSc's pool of 5 to its bucket of 8 rows; every program is one the driver runs
    assert saved["config"]["pool_rows"] == 8
    programs = saved["jax"]["program_memory"]
    assert set(programs) == {"extract_b4", "lnamd", "msm", "upsample", "score", "rscin"}
    assert programs["msm"]["argument_size_in_bytes"] >= 8 * 16 * 64 * 4
    assert programs["score"]["argument_size_in_bytes"] >= 4 * 8 * 16 * 64 * 4
    assert programs["extract_b4"]["argument_size_in_bytes"] >= 4 * 32 * 32 * 3
    fused = saved["jax"]["fused"]
    fused_stages = fused["summary"]["stages"]
    assert set(fused_stages) == {"extract", "score", "upsample", "rscin"}
    scoring_s = sum(fused_stages[s]["median_s"] for s in ("score", "upsample", "rscin"))
    assert fused["per_image_ms"] == pytest.approx(1e3 * scoring_s / 5)

    parity = saved["parity"]
    for key in ("patch_scores_max_abs", "image_scores_max_abs", "image_scores_raw_max_abs", "maps_max_abs",
                "fused_patch_scores_max_abs", "fused_image_scores_max_abs"):
        assert parity[key] <= 1e-4, (key, parity[key])
    assert parity["taps_max_abs"] <= 1e-4 * max(1.0, parity["taps_max_magnitude"])
    assert parity["rscin_jzad_vs_float64_max_abs"] <= 1e-6

    roof = saved["roofline"]
    assert set(roof) == set(STAGES)
    for row in roof.values():
        assert row["jax_over_floor"] == pytest.approx(row["jax_s"] / row["floor_s"])
    assert roof["msm"]["flops"] == pytest.approx(12 * roofline.msm_flops(5, 16, 64, symmetric=True))

    first, second = saved["scaling"]
    assert first["n"] == 4 and first["jax"]["status"] == "ok" and first["reference"]["status"] == "ok"
    assert first["jax"]["pool_rows"] == 8
    assert first["jax"]["msm_program_memory"]["argument_size_in_bytes"] >= 8 * 16 * 64 * 4
    assert set(first["jax"]["summary"]["stages"]) == {"lnamd", "msm", "upsample", "rscin"}
    for impl in ("jax", "reference"):
        assert second[impl]["status"] == "skipped" and "time budget: N=4" in second[impl]["reason"]

    fslc = saved["fslc"]
    fslc_stages = ("features", "init", "expand", "filter", "score", "upsample")
    assert fslc["status"] == "ok" and tuple(fslc["stages"]) == fslc_stages
    assert fslc["sizes"]["init_images"] == 4 and fslc["sizes"]["init_coreset"] == 64
    assert fslc["expanded_size"] == 64 + 1 * 10
    for impl in ("jax", "reference"):
        stages = fslc[impl]["summary"]["stages"]
        assert set(stages) == set(fslc_stages)
    assert set(fslc["roofline"]) == set(fslc_stages) and fslc["parity"]["init_images_equal"]
    assert set(fslc["jax"]["program_memory"]) == {"features", "init", "expand", "filter", "score"}
    assert "FSLC at N = 5" in stdout and "| jzad (JAX) |" in stdout
    assert "the driver's fused profile" in stdout and "the fused scoring program" in stdout

    for name in ("feature extraction", "LNAMD", "MSM", "upsample", "RsCIN"):
        assert f"| {name} |" in stdout and name in stdout.splitlines()[6]
    assert "| 6 | - |" in stdout and "skipped: time budget" in stdout
    assert f"wrote {path}" in stdout

    section = report.main(["--results", str(tmp_path)])
    assert (tmp_path / "PERFORMANCE.md").read_text() == section
    assert section.startswith("## Performance")
    jax_total = report.fmt(saved["jax"]["summary"]["total_per_image_ms"])
    assert f"| {jax_total} |" in section and saved["date"] in section and "musc_cpu_tiny-32_N5.json" in section


def test_vit_flops_hand_computed_and_against_xla():
    tiny = roofline.VitShape(width=8, layers=2, mlp_dim=32, patch_size=4, image_size=8, embed_dim=6)
    # patch embed 2*4*48*8 = 3072; block 2*5*(4*64 + 2*8*32) + 4*25*8 = 8480 (x2); proj 2*8*6 = 96
    assert tiny.tokens == 5 and roofline.vit_forward_flops(tiny) == 3072 + 2 * 8480 + 96
    large = roofline.VitShape(1024, 24, 4096, 14, 518, 768)
    assert roofline.vit_forward_flops(large) == pytest.approx(1.0136e12, rel=1e-4)
    assert large.parameters == pytest.approx(304.3e6, rel=5e-3)

    from jzad.backbone.clip import abstract_params, encode_image
    from jzad.backbone.config import get_architecture

    config = get_architecture("ViT-B-16").replace(text=None)
    images = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
    lowered = jax.jit(lambda p, x: encode_image(p, x, config)).lower(abstract_params(config), images)
    xla_flops = lowered.cost_analysis()["flops"]
    ours = roofline.vit_forward_flops(roofline.VitShape(768, 12, 3072, 16, 224, 512))
    assert ours == pytest.approx(xla_flops, rel=0.01)
    assert ours == pytest.approx(35.13e9, rel=1e-3)


def test_stage_formulas_hand_computed():
    assert roofline.msm_flops(3, 4, 5) == 2 * 5 * 16 * 3 * 2 == 960
    assert roofline.msm_flops(3, 4, 5, symmetric=True) == 480
    assert roofline.msm_flops(200, 1369, 1024) * 12 == pytest.approx(1.83e15, rel=2e-3)
    assert roofline.msm_bytes(3, 4, 5) == 3 * 4 * 5 * 4 + 4 * (2 * 3 * 4 * 2 + 3 * 4) == 480
    assert roofline.lnamd_flops(2, 4, 3, 1) == 216 and roofline.lnamd_flops(2, 4, 3, 3) == 432
    assert roofline.lnamd_bytes(2, 4, 3) == 192
    assert roofline.upsample_flops(2, 3, 5) == 240 and roofline.upsample_bytes(2, 4, 3, 5) == 4 * 2 * 19
    assert roofline.rscin_flops(4, 3, (1, 2, 5)) == 96 + 36 + 3 * 4 * (1 + 2 + 4)
    assert roofline.floor_seconds(1e9, 1e6, 1e9, 1e9) == 1.0
    assert roofline.floor_seconds(1e3, 4e9, 1e9, 2e9) == 2.0
    with pytest.raises(ValueError, match="ceilings"):
        roofline.floor_seconds(1.0, 1.0, 0.0, 1.0)

    shape = roofline.MuscShape(n=3, m=4, c=5, layers=2, r_list=(1, 3), embed_dim=6, map_h=3, map_w=5,
                               windows=(1, 2))
    costs = roofline.musc_stage_costs(shape, None)
    assert set(costs) == {"lnamd", "msm", "upsample", "rscin"}
    assert costs["msm"]["flops"] == 4 * 480 and costs["msm"]["flops_ordered"] == 4 * 960
    assert costs["lnamd"]["flops"] == 2 * (3 * 4 * 5 * 9 + 3 * 4 * 5 * 18)
    floors = roofline.stage_floors(costs, {"matmul_fp32_flop_s": 10.0, "copy_bytes_s": 1e9})
    assert floors["msm"] == pytest.approx(192.0)


def test_scaling_budget_and_out_of_memory_guard():
    reason = musc_timing.next_allowed(10.0, 50, 100, 30.0)
    assert reason is not None and "predicted 40 s" in reason and "N=50 took 10.0 s" in reason
    assert musc_timing.next_allowed(10.0, 50, 100, 40.0) is None
    assert musc_timing.next_allowed(1e9, 50, 100, None) is None

    def out_of_memory():
        raise MemoryError("cannot allocate 7.5 GiB")

    assert musc_timing.run_guarded(lambda x: x + 1, 2) == (3, None)
    assert musc_timing.run_guarded(out_of_memory) == (None, "MemoryError: cannot allocate 7.5 GiB")
    with pytest.raises(ValueError, match="not memory"):
        musc_timing.run_guarded(lambda: (_ for _ in ()).throw(ValueError("not memory")))


def test_peak_memory_sees_an_allocation():
    def work():
        blocks = [torch.ones(1 << 20, dtype=torch.float64) for _ in range(10)]  # 10 x 8 MiB, then freed
        return float(sum(b[0] for b in blocks))

    work()  # the heap now holds 80 MiB of freed blocks that the measured call could reuse unseen
    with harness.PeakMemory("torch", "cpu") as meter:
        assert work() == 10.0
    assert meter.bytes >= 76 << 20, meter.as_dict()
    with pytest.raises(ValueError, match="framework"):
        harness.PeakMemory("tf", "cpu")


def test_parse_backbone():
    spec = musc_timing.parse_backbone("vit-l-14@518")
    assert spec.grid == 37 and spec.taps == (6, 12, 18, 24) and spec.config.activation == "gelu"
    assert spec.slug == "vit-l-14-518" and spec.config.text is None
    native = musc_timing.parse_backbone("vit-b-16")
    assert native.image_size == 224 and native.config.activation == "quick_gelu" and native.taps == (3, 6, 9, 12)
    with pytest.raises(ValueError, match="multiple of patch size 16"):
        musc_timing.parse_backbone("vit-b-16@230")
    with pytest.raises(ValueError, match="unknown architecture"):
        musc_timing.parse_backbone("resnet50@224")


def _musc_features(n=6, grid=4, width=16, layers=2, seed=0):
    from jzad.features import Features

    rng = np.random.default_rng(seed)
    grids = tuple(jnp.asarray(rng.normal(size=(n, grid, grid, width)), jnp.float32) for _ in range(layers))
    return Features(grids, jnp.asarray(rng.normal(size=(n, 8)), jnp.float32))


def test_recording_clock_keeps_the_body_outputs():
    from jzad.methods import get_method
    from jzad.methods.musc import MuScConfig

    method, config = get_method("musc"), MuScConfig(map_size=8)
    features = _musc_features()
    state = method.fit(config, None, None, None)
    clock = harness.RecordingClock()
    scores, _ = method.staged(config, state, features, None, clock)
    assert len(clock.outputs["lnamd"]) == len(clock.outputs["msm"]) == 2 * len(config.r_list)
    # MuSc's patch score is the plain mean of the (layer, r) MSM maps; its raw image score the upsample output
    mean = np.mean([np.asarray(m) for m in clock.outputs["msm"]], axis=0).reshape(scores.patch_scores.shape)
    np.testing.assert_allclose(np.asarray(scores.patch_scores), mean, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(np.asarray(clock.outputs["upsample"][0]), np.asarray(scores.image_scores))
    assert set(clock.outputs) == {"lnamd", "msm", "upsample"}


def test_stage_programs_compile_the_body_without_running_it():
    from jzad.methods import get_method
    from jzad.methods.musc import MuScConfig, max_of_upsampled

    method, config = get_method("musc"), MuScConfig(map_size=8)
    features = _musc_features()
    calls = []

    class Counting(harness.StagePrograms):
        def run(self, stage, fn, *args, **kwargs):
            calls.append((stage, isinstance(args[0], jax.core.Tracer)))  # traced: compiled, never executed
            return super().run(stage, fn, *args, **kwargs)

    programs = Counting().of_body(method, config, method.fit(config, None, None, None), features, None)
    assert len(calls) == 2 * 2 * len(config.r_list) + 1 and all(traced for _, traced in calls)
    assert set(programs.memory) == {"lnamd", "msm", "upsample"}
    assert programs.memory["msm"]["argument_size_in_bytes"] >= 6 * 16 * 16 * 4
    patch = jax.ShapeDtypeStruct((6, 4, 4), jnp.float32)
    direct = harness.memory_analysis(jax.jit(lambda p: max_of_upsampled(p, 8)).lower(patch).compile())
    assert programs.memory["upsample"] == direct


def test_summarize_runs_medians():
    runs = [{"a": 1.0, "b": 4.0}, {"a": 3.0, "b": 1.0}, {"a": 2.0, "b": 2.0}]
    summary = harness.summarize_runs(runs, 4, {"a": 0.5})
    assert summary["stages"]["a"]["median_s"] == 2.0 and summary["stages"]["b"]["median_s"] == 2.0
    assert summary["stages"]["a"]["per_image_ms"] == 500.0 and summary["stages"]["b"]["compile_s"] == 0.0
    assert summary["total_runs_s"] == [5.0, 4.0, 4.0] and summary["total_median_s"] == 4.0
    assert summary["total_per_image_ms"] == 1000.0
    assert harness.summarize_runs(runs, 4, None)["stages"]["a"]["compile_s"] is None
