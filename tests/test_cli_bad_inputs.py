"""Bad inputs at the command line and the method boundary: each broken input is built here and the exact
behaviour asserted (message, exit status, files written, values): --image-size off the patch grid, identical
images, NaN features, failing categories and Ctrl-C, --out checks, user errors, --weights that is not a
checkpoint, porting without torch, the hub offline, the README's commands.
"""

from __future__ import annotations

import csv
import json
import os
import pathlib
import re
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import jzad.pipeline
import jzad.run
from jzad import data as jdata
from jzad.backbone.config import get_architecture
from jzad.run import main

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--backbone", "random-tiny", "--image-size", "32", "--quiet", "--no-heatmaps"]
NORMAL, ANOMALOUS = 3, 3
ERROR = "python -m jzad.run: error: "


def write_category(root: Path, category: str, seed: int = 0) -> Path:
    """A small MVTec-layout category (3 normal + 3 anomalous test images of 32 px, masks, 2 train images)."""
    return jdata.write_synthetic_mvtec(root, category, num_normal=NORMAL, num_anomalous=ANOMALOUS, num_train=2,
                                       size=32, seed=seed)


def read_scores(path: Path) -> dict[str, float]:
    with open(path, newline="") as f:
        return {row["name"]: float(row["score"]) for row in csv.DictReader(f)}


def stderr_lines(capsys) -> tuple[str, list[str]]:
    captured = capsys.readouterr()
    return captured.out, [line for line in captured.err.splitlines() if line.strip()]


def assert_user_error(capsys, *fragments: str, lines: int = 1) -> str:
    """The run printed a user error: its last ``lines`` lines hold the message (the first starting with the
    program's error prefix) with every fragment, and no traceback anywhere. Returns the message."""
    _, err = stderr_lines(capsys)
    assert not any("Traceback" in line for line in err), err
    message = err[-lines:]
    assert message[0].startswith(ERROR), err
    text = "\n".join(message)
    for fragment in fragments:
        assert fragment in text, (fragment, text)
    return text


@pytest.fixture(autouse=True)
def no_hub(monkeypatch):
    """No test may reach the network: the hub probe and the hub client both fail loudly if called."""
    import huggingface_hub

    def refuse(*args, **kwargs):
        raise AssertionError("the network was used")

    monkeypatch.setattr(huggingface_hub, "list_repo_files", refuse)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", refuse)


# ------------------------------------------------------------------------------------------ --image-size


def test_image_size_zero_or_not_a_multiple_of_the_patch_is_an_error_naming_valid_sizes(tmp_path, capsys,
                                                                                       monkeypatch):
    tiny = get_architecture("tiny").vision
    patch, native = tiny.patch_size, tiny.image_size
    options = [a for a in TINY if a not in ("--image-size", "32")]
    out = tmp_path / "out"
    assert main(options + ["--image-size", "0", "--out", str(out)]) == 2
    assert_user_error(capsys, f"--image-size: expected a positive multiple of the patch size {patch}",
                      f"e.g. {native}", "got 0")
    low = 3 * patch
    assert main(options + ["--image-size", str(low + 2), "--out", str(out)]) == 2
    assert_user_error(capsys, f"--image-size {low + 2}: not a multiple of the patch size {patch}",
                      f"use {low} or {low + patch}")
    assert main(options + ["--image-size", "-5", "--out", str(out)]) == 2
    assert_user_error(capsys, "--image-size", "got -5")
    assert not (out / "results.json").exists()
    with pytest.raises(SystemExit) as stop:
        main(options + ["--image-size", "big"])
    assert stop.value.code == 2
    _, err = stderr_lines(capsys)
    assert err == [f"{ERROR}argument --image-size: expected an integer, got 'big'",
                   "(`python -m jzad.run --help` lists every option)"]


# ---------------------------------------------------------------------------------------- identical images


def identical_source(size: int = 32, count: int = NORMAL + ANOMALOUS):
    """``count`` copies of one defective synthetic image; the second half labelled anomalous with its mask."""
    images, masks, _, _ = jdata.make_synthetic_set(0, 1, size=size, seed=3)
    half = count // 2
    labels = np.array([0] * half + [1] * half)
    stacked_masks = np.repeat(masks[:1], count, axis=0)
    stacked_masks[:half] = False
    types = ("good",) * half + ("scratch",) * half
    return jdata.ArrayImages(np.repeat(images[:1], count, axis=0), [f"copy_{i}" for i in range(count)], labels,
                             types, stacked_masks)


@pytest.mark.parametrize("name", ["musc", "fslc"])
def test_identical_images_score_exactly_equal_and_the_result_says_there_is_no_contrast(name):
    """Every score is exactly 0 (MuSc: squared distances within their rounding error are 0; FSLC: distances
    from the difference), so every metric is that of fully tied scores: AUROC 0.5, AP = the positive rate."""
    from jzad.features import load_backbone
    from jzad.methods import RunContext, get_method
    from jzad.pipeline import Scorer, run_category

    method = get_method(name)
    backbone = load_backbone("random-tiny", method.backbone_run(None), 32)
    config = method.configure({}, RunContext("synthetic", 32))
    source = identical_source()
    result = run_category(Scorer(method, config, backbone), source, "copies")
    assert np.all(result.patch_scores == 0.0) and np.all(result.maps == 0.0)
    assert np.all(result.image_scores == 0.0) and np.all(result.image_scores_raw == 0.0)
    masks = result.masks
    assert result.metrics["image_auroc"] == 0.5 and result.metrics["pixel_auroc"] == 0.5
    assert result.metrics["image_ap"] == 0.5
    assert result.metrics["pixel_ap"] == pytest.approx(masks.sum() / masks.size, rel=1e-12)
    assert len(result.notes) == 1 and result.notes[0].startswith("no contrast: all 6 images score 0 at every pixel")


def test_msm_sets_squared_distances_within_rounding_to_zero_and_keeps_larger_ones_exact():
    """MSM against a float64 NumPy reference: image 1 is image 0 plus a perturbation below the rounding floor
    (its distance is 0 in both schedules), image 2 differs by a clear margin (its distances match the exact
    reference)."""
    from jzad.kernels.distances import rounding_floor
    from jzad.methods.musc import MuScConfig, mutual_scores

    rng = np.random.default_rng(0)
    n, m, c = 4, 9, 64
    base = rng.normal(size=(m, c))
    base /= np.linalg.norm(base, axis=-1, keepdims=True)
    tiny_step = 0.25 * np.sqrt(rounding_floor(c) * 2.0)
    near = base + tiny_step * np.eye(c)[0]
    near /= np.linalg.norm(near, axis=-1, keepdims=True)
    far = rng.normal(size=(2, m, c))
    far /= np.linalg.norm(far, axis=-1, keepdims=True)
    features = np.concatenate([base[None], near[None], far]).astype(np.float32)
    f64 = features.astype(np.float64)
    d = np.sqrt(((f64[:, :, None, None, :] - f64[None, None, :, :, :]) ** 2).sum(-1)).min(-1)  # (n, m, n)
    assert d[0, :, 1].max() < np.sqrt(rounding_floor(c) * 2.0)
    d[0, :, 1] = d[1, :, 0] = 0.0
    d[np.arange(n), :, np.arange(n)] = np.inf
    expected = np.sort(d, axis=-1)[:, :, :1].mean(-1)  # k = floor(0.3 * 3) -> 1 (the k >= 1 guard)
    for schedule in ("rows", "pairs"):
        got = np.asarray(mutual_scores(features, MuScConfig(schedule=schedule)))
        assert np.all(got[:2] == 0.0), schedule
        np.testing.assert_allclose(got, expected, atol=2e-6, rtol=0)
        copies = np.repeat(features[2:3], 3, axis=0)
        assert np.all(np.asarray(mutual_scores(copies, MuScConfig(schedule=schedule))) == 0.0)
        # bf16 keeps its input-rounding noise (up to about 2^-8 relative in d^2, i.e. d <= sqrt(2 * 2^-8) for unit
        # rows): exact zeros are an fp32 guarantee, and the floor does not erase real bf16 near-matches.
        noisy = np.asarray(mutual_scores(copies, MuScConfig(schedule=schedule, precision="bf16")))
        assert noisy.max() <= np.sqrt(2 * 2.0**-8)


def test_identical_images_through_the_cli_write_the_note(tmp_path, capsys):
    root = tmp_path / "data"
    cat = write_category(root, "copies")
    first = next((cat / "test" / "good").glob("*.png"))
    pixels = Image.open(first).copy()
    for image in sorted((cat / "test").rglob("*.png")):
        pixels.save(image)
    out = tmp_path / "out"
    assert main(TINY + ["--data", str(root), "--category", "copies", "--out", str(out)]) == 0
    _, err = stderr_lines(capsys)
    assert any(line.startswith("warning: copies: no contrast: all 6 images score 0 at every pixel") for line in err)
    entry = json.loads((out / "results.json").read_text())["categories"][0]
    assert entry["notes"][0].startswith("no contrast") and entry["metrics"]["image_auroc"] == 0.5
    assert entry["metrics"]["pixel_auroc"] == 0.5
    assert set(read_scores(out / "scores_copies.csv").values()) == {0.0}


# ------------------------------------------------------------------------------------- NaN in the features


def test_nan_in_tokens_or_embeddings_raises_naming_the_images_in_the_python_api():
    from jzad.methods.fslc import FSLCConfig, score_fslc
    from jzad.methods.musc import MuScConfig, score_musc

    rng = np.random.default_rng(1)
    tokens = tuple(rng.normal(size=(6, 1 + 16, 8)).astype(np.float32) for _ in range(2))
    embeds = rng.normal(size=(6, 4)).astype(np.float32)
    bad_tokens = (tokens[0], tokens[1].copy())
    bad_tokens[1][3, 5, 2] = np.nan
    bad_embeds = embeds.copy()
    bad_embeds[[1, 4], 0] = np.inf
    fslc = FSLCConfig(num_init_images=2, init_coreset_size=8, expand_per_image=2)
    for score, config in ((score_musc, MuScConfig()), (score_fslc, fslc)):
        with pytest.raises(ValueError, match=r"of 1 image\(s\) are not finite \(NaN or inf\): at index 3$"):
            score(bad_tokens, embeds, config)
        with pytest.raises(ValueError, match=r"of 2 image\(s\) are not finite \(NaN or inf\): at index 1, 4$"):
            score(tokens, bad_embeds, config)
    with pytest.raises(ValueError, match=r"score_musc: reference_tokens of 1 image\(s\).*at index 0"):
        refs = tuple(t[:2].copy() for t in tokens)
        refs[0][0, 0, 0] = np.nan
        score_musc(tokens, embeds, MuScConfig(mode="few_shot"), reference_tokens=refs)


# ------------------------------------------------------------------------------ failing categories


def corrupt_one_image(cat: Path) -> Path:
    victim = sorted((cat / "test" / "good").glob("*.png"))[1]
    victim.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 4)
    return victim


def test_a_bad_image_in_the_second_category_keeps_the_first_and_exits_1(tmp_path, capsys):
    root = tmp_path / "data"
    write_category(root, "alpha")
    victim = corrupt_one_image(write_category(root, "beta", seed=1))
    out = tmp_path / "out"
    assert main(TINY + ["--data", str(root), "--category", "all", "--out", str(out)]) == 1
    _, err = stderr_lines(capsys)
    assert err[-1].startswith("1 of 2 categories failed (the others are complete;") and victim.name in err[-1]
    assert not any("Traceback" in line for line in err)
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "failed"
    assert [c["category"] for c in results["categories"]] == ["alpha"]
    assert results["categories"][0]["num_images"] == NORMAL + ANOMALOUS
    from sklearn.metrics import roc_auc_score

    with open(out / "scores_alpha.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    expected = roc_auc_score([int(r["label"]) for r in rows], [float(r["score"]) for r in rows])
    assert results["categories"][0]["metrics"]["image_auroc"] == pytest.approx(expected, abs=1e-9)
    (failure,) = results["failed"]
    assert failure["category"] == "beta" and failure["error_type"] == "DataError" and str(victim) in failure["error"]
    assert len(read_scores(out / "scores_alpha.csv")) == NORMAL + ANOMALOUS
    assert not (out / "scores_beta.csv").exists()


def test_a_single_failing_category_is_a_user_error(tmp_path, capsys):
    root = tmp_path / "data"
    victim = corrupt_one_image(write_category(root, "beta", seed=1))
    out = tmp_path / "out"
    assert main(TINY + ["--data", str(root), "--category", "beta", "--out", str(out)]) == 2
    assert_user_error(capsys, "cannot", str(victim))
    assert json.loads((out / "results.json").read_text())["status"] == "failed"


def test_ctrl_c_during_scoring_leaves_results_marked_interrupted_with_the_finished_category(tmp_path, capsys,
                                                                                           monkeypatch):
    root = tmp_path / "data"
    write_category(root, "alpha")
    write_category(root, "beta", seed=1)
    score_source = jzad.pipeline.score_source

    def interrupted_in_beta(scorer, state, source, groups, clock, progress=None, label=""):
        if label == "beta":
            raise KeyboardInterrupt
        return score_source(scorer, state, source, groups, clock, progress, label)

    monkeypatch.setattr(jzad.pipeline, "score_source", interrupted_in_beta)
    out = tmp_path / "out"
    assert main(TINY + ["--data", str(root), "--category", "all", "--out", str(out)]) == 130
    _, err = stderr_lines(capsys)
    assert err[-1] == f"interrupted: {out / 'results.json'} lists the categories that finished"
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "interrupted" and results["failed"] == []
    assert [c["category"] for c in results["categories"]] == ["alpha"]
    assert sorted(p.name for p in out.iterdir()) == ["results.json", "scores_alpha.csv"]


# ---------------------------------------------------------------------------------------------- --out


def refuse_loading(monkeypatch):
    """Any attempt to load a backbone (the first piece of work after the checks) fails the test."""
    def never(*args, **kwargs):
        raise AssertionError("work started before --out was checked")

    monkeypatch.setattr(jzad.run, "load_scorer", never)


def test_out_that_is_a_file_or_unwritable_fails_before_any_work(tmp_path, capsys, monkeypatch):
    refuse_loading(monkeypatch)
    a_file = tmp_path / "results"
    a_file.write_text("keep me")
    assert main(TINY + ["--out", str(a_file)]) == 2
    assert_user_error(capsys, f"--out: {a_file} exists and is not a folder")
    assert a_file.read_text() == "keep me"
    assert main(TINY + ["--out", str(a_file / "sub")]) == 2
    assert_user_error(capsys, f"--out: cannot write to {a_file / 'sub'}")

    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    probe = locked / "probe"
    try:
        probe.write_text("")
        writable_anyway = True  # root (CAP_DAC_OVERRIDE) ignores the mode bits: make the write fail as it would
        probe.unlink()
    except PermissionError:
        writable_anyway = False
    if writable_anyway:
        write_text = pathlib.Path.write_text

        def read_only(self, *args, **kwargs):
            if self.parent == locked:
                raise PermissionError(13, "Permission denied", str(self))
            return write_text(self, *args, **kwargs)

        monkeypatch.setattr(pathlib.Path, "write_text", read_only)
    try:
        assert main(TINY + ["--out", str(locked)]) == 2
    finally:
        locked.chmod(0o755)
    assert_user_error(capsys, f"--out: cannot write to {locked} (Permission denied)")
    assert list(locked.iterdir()) == []


def test_non_empty_out_needs_overwrite_which_removes_only_jzad_outputs(tmp_path, capsys, monkeypatch):
    root = tmp_path / "data"
    write_category(root, "alpha")
    out = tmp_path / "out"
    args = ["--backbone", "random-tiny", "--image-size", "32", "--quiet", "--heatmap-size", "32",
            "--data", str(root), "--category", "alpha", "--out", str(out)]
    assert main(args) == 0
    fresh = sorted(p.name for p in (out / "heatmaps" / "alpha").rglob("*.png"))
    assert len(fresh) == NORMAL + ANOMALOUS
    stale = out / "heatmaps" / "alpha" / "removed_since" / "old.png"
    stale.parent.mkdir()
    stale.write_bytes(b"stale")
    (out / "scores_gone.csv").write_text("name,score\n")
    (out / "results.json.tmp").write_text("{")
    (out / "notes.txt").write_text("mine")
    (out / "mine").mkdir()
    (out / "mine" / "keep.png").write_bytes(b"mine")
    capsys.readouterr()

    monkeypatch.setattr(jzad.run, "load_scorer", lambda *a, **k: pytest.fail("scored into a non-empty --out"))
    assert main(args) == 2
    assert_user_error(capsys, f"--out: {out} is not empty; pass --overwrite")
    assert stale.exists()
    monkeypatch.undo()

    assert main(args + ["--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["heatmaps", "mine", "notes.txt", "results.json",
                                                     "scores_alpha.csv", "summary_alpha.png"]
    assert sorted(p.name for p in (out / "heatmaps" / "alpha").rglob("*.png")) == fresh
    assert (out / "notes.txt").read_text() == "mine" and (out / "mine" / "keep.png").read_bytes() == b"mine"


# ---------------------------------------------------------------------------------------- user errors


def test_user_errors_end_with_one_line_and_exit_2(tmp_path, capsys, monkeypatch):
    root = tmp_path / "data"
    write_category(root, "alpha")
    data = ["--data", str(root)]
    cases = [
        (data + ["--category", "nope"], [f"--category: {root} has no mvtec category 'nope'; it has alpha"]),
        (["--taps", "9"], ["--taps: taps must be 1-based block indices in [1, 4], got (9,)"]),
        (["--r-list", "2"], ["--r-list: expected odd window sizes >= 1, got (2,)"]),
        (["--shots", "2"], ["--shots: applies to --mode few_shot or plus"]),
        (["--mode", "few_shot"], ["--mode few_shot: needs --shots R >= 1 normal reference images"]),
        (["--seeds", "1,2"], ["--seeds repeats the few-shot reference draw: it needs --shots K >= 1"]),
        (["--method", "fslc", "--windows", "1"], ["--windows does not apply to --method fslc"]),
        (["--allow-missing-masks"], ["--allow-missing-masks applies to --data"]),
        (data + ["--dataset", "visa"], ["visa: split file not found"]),
        (["--backbone", "no-such-net"], ["--backbone: cannot load 'no-such-net': unknown checkpoint"]),
    ]
    for args, fragments in cases:
        out = tmp_path / "out"
        assert main(TINY + args + ["--out", str(out)]) == 2, args
        printed, err = stderr_lines(capsys)
        assert "method:" not in printed, args
        assert len(err) == 1 and err[0].startswith(ERROR) and "Traceback" not in err[0], (args, err)
        for fragment in fragments:
            assert fragment in err[0], (fragment, err[0])
        assert not (out / "results.json").exists()
    with pytest.raises(jzad.run.UserError, match="--taps"):
        main(TINY + ["--taps", "9", "--debug", "--out", str(tmp_path / "debug")])


def test_a_missing_mask_names_the_cli_option_that_allows_it(tmp_path, capsys):
    root = tmp_path / "data"
    cat = write_category(root, "alpha")
    mask = sorted((cat / "ground_truth").rglob("*_mask.png"))[0]
    mask.unlink()
    assert main(TINY + ["--data", str(root), "--category", "alpha", "--out", str(tmp_path / "a")]) == 2
    message = assert_user_error(capsys, "no ground-truth mask for anomalous image", mask.name,
                                "read it with --allow-missing-masks")
    assert "allow_missing_masks" not in message
    out = tmp_path / "b"
    assert main(TINY + ["--data", str(root), "--category", "alpha", "--allow-missing-masks", "--out", str(out)]) == 0
    metrics = json.loads((out / "results.json").read_text())["categories"][0]["metrics"]
    assert metrics["image_auroc"] is not None and metrics["pixel_auroc"] is None and metrics["pro"] is None


# ----------------------------------------------------------------------------- checkpoint files


def test_weights_that_are_not_a_checkpoint_say_so_without_torch_advice(tmp_path, capsys):
    text = tmp_path / "weights.pt"
    text.write_text("these are not weights\n")
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")
    for path, fragment in ((text, "is not a checkpoint: not a PyTorch (.pt/.pth/.bin), TorchScript or safetensors "
                           "file (it starts with b'thes')"), (empty, "is not a checkpoint: the file is empty")):
        assert main(TINY + ["--weights", str(path), "--out", str(tmp_path / "out")]) == 2
        message = assert_user_error(capsys, f"--weights: cannot load '{path}': {path} {fragment}")
        assert "weights_only" not in message
    torch = pytest.importorskip("torch")
    pickled = tmp_path / "arrays.pt"
    torch.save({"visual.proj": np.zeros((2, 2), np.float32)}, pickled)
    assert main(TINY + ["--weights", str(pickled), "--out", str(tmp_path / "out")]) == 2
    message = assert_user_error(capsys, f"{pickled} is not a state dict of tensors (it contains numpy.",
                                "save the weights with torch.save(model.state_dict(), path)")
    assert "weights_only" not in message and "Weights only" not in message


PORT_WITHOUT_TORCH = textwrap.dedent("""
    import sys
    sys.modules["torch"] = None  # import torch now fails as if it were not installed
    from jzad.weights.__main__ import main
    sys.exit(main(["port", sys.argv[1], "--name", "mine", "--weights-dir", sys.argv[2]]))
""")


@pytest.mark.slow
def test_porting_without_torch_says_which_extra_to_install(tmp_path):
    checkpoint = tmp_path / "ViT-B-16.pt"
    checkpoint.write_bytes(b"\x80\x02" + b"\x00" * 64)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", PORT_WITHOUT_TORCH, str(checkpoint), str(tmp_path / "w")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == (
        f"python -m jzad.weights: error: reading the PyTorch checkpoint {checkpoint} needs PyTorch, which is not "
        "installed here: pip install torch==2.13.0 (the CPU build; or the project's extra: pip install -e "
        "'.[port]' from a clone of jzad)")
    extras = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'^port = \[\s*"torch==2\.13\.0",\s*\]', extras, re.M)


# --------------------------------------------------------------------------------------- hub offline


@pytest.fixture
def no_local_weights(tmp_path, monkeypatch):
    """An empty weights folder and Hugging Face cache, and a home without ~/.cache/clip."""
    monkeypatch.setenv("JZAD_WEIGHTS_DIR", str(tmp_path / "weights"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("HF_ENDPOINT", raising=False)


def test_default_backbone_offline_fails_at_once_with_the_port_command(tmp_path, capsys, monkeypatch,
                                                                      no_local_weights):
    root = tmp_path / "data"
    write_category(root, "alpha")
    # No --backbone: a method that needs a text tower and finds no CLIP checkpoint says what to port, at once.
    text = ["--method", "winclip", "--data", str(root), "--category", "alpha", "--quiet", "--out",
            str(tmp_path / "text")]
    assert main(text) == 2
    assert_user_error(capsys, "no --backbone given: --method winclip: this method needs a CLIP text tower",
                      "port vit-b-16-plus-240 with `python -m jzad.weights port /path/to/")
    assert not (tmp_path / "text").exists()
    # --backbone naming a catalogue checkpoint that is not here: the hub is tried only when reachable.
    run = ["--data", str(root), "--category", "alpha", "--quiet", "--backbone", "vit-l-14-336", "--out",
           str(tmp_path / "out")]
    port = "`python -m jzad.weights port /path/to/ViT-L-14-336px.pt --name vit-l-14-336`"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(run) == 2
    assert_user_error(capsys, "--backbone: cannot load 'vit-l-14-336'", "the hub is disabled (HF_HUB_OFFLINE=1)",
                      port)

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    probes = []

    def no_network(address, timeout=None, *args, **kwargs):
        probes.append((address, timeout))
        raise OSError(101, "Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", no_network)
    assert main(run + ["--overwrite"]) == 2
    assert_user_error(capsys, "no network connection to huggingface.co:443 within 2 s", port)
    assert probes == [(("huggingface.co", 443), 2.0)]

    clip_cache = tmp_path / "home" / ".cache" / "clip"
    clip_cache.mkdir(parents=True)
    (clip_cache / "ViT-L-14-336px.pt").write_bytes(b"\x80\x02")
    assert main(run + ["--overwrite"]) == 2
    assert_user_error(capsys, f"`python -m jzad.weights port {clip_cache / 'ViT-L-14-336px.pt'} --name "
                      "vit-l-14-336`")


def test_a_cached_hub_snapshot_is_used_without_the_network(tmp_path, monkeypatch, no_local_weights):
    from jzad.weights.hub import download_hf

    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: pytest.fail("the network was probed"))
    repo = tmp_path / "hf" / "models--openai--clip-vit-base-patch16"
    snapshot = repo / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    (snapshot / "config.json").write_text("{}")
    (snapshot / "model.safetensors").write_bytes(b"")
    assert download_hf("openai/clip-vit-base-patch16") == snapshot


# ------------------------------------------------------------------------------------------ README


def test_readme_set_up_commands_run_from_a_fresh_clone_inside_the_venv():
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Set up"):readme.index("\n## ", readme.index("## Set up") + 1)]
    activate = "python3 -m venv .venv && . .venv/bin/activate && "
    commands = [c for c in re.findall(r"```bash\n(.*?)\n```", section, re.S) if c.startswith(activate)]
    assert len(commands) == 2 and all("\n" not in c for c in commands)
    assert all(c.startswith(activate) for c in commands)
    demo, tests = (c[len(activate):].split(" && ") for c in commands)
    assert demo == ["pip install -e .", "python -m jzad.run"]
    ci = (ROOT / ".ci" / "run").read_text()
    ci_steps = [re.sub(r"\bpip install -q\b", "pip install", line.strip()) for line in ci.splitlines()
                if line.strip().startswith(("pip install", "python -m pytest"))]
    assert tests == ci_steps
