"""jzad.eval.report: tables against hand-written strings, JSON and CSV round trips, environment facts."""

import csv
import json
import math
import platform
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from jzad.eval import report


def test_format_table_known_string():
    rows = [
        {"category": "bottle", "auroc": 0.97812, "n": 10, "extra": "ignored"},
        {"category": "cable", "auroc": float("nan"), "n": np.int64(20)},
        {"category": "a|b", "auroc": np.float32(0.5), "n": 3},
    ]
    got = report.format_table(rows, ("category", "auroc", "n"), title="musc metrics")
    want = "\n".join([
        "### musc metrics",
        "",
        "| category |  auroc |       n |",
        "| :------- | -----: | ------: |",
        "| bottle   | 0.9781 |      10 |",
        "| cable    |    nan |      20 |",
        "| a\\|b     | 0.5000 |       3 |",
        "| mean     | 0.7391 | 11.0000 |",
    ])
    assert got == want


def test_format_table_options_and_nan_columns():
    rows = [{"stage": "msm", "ms": 1.25, "note": "x"}, {"stage": "rscin", "ms": float("nan"), "note": None}]
    got = report.format_table(rows, ["stage", "ms", "note"], mean_row=False, digits=1)
    assert got == "\n".join([
        "| stage |   ms | note |",
        "| :---- | ---: | :--- |",
        "| msm   |  1.2 | x    |",
        "| rscin |  nan | -    |",
    ])
    all_nan = report.format_table([{"c": "a", "v": float("nan")}, {"c": "b", "v": np.nan}], ["c", "v"])
    assert all_nan.splitlines()[-1] == "| mean |  nan |"
    assert report.format_table([], ["category", "auroc"]) == "| category | auroc |\n| :------- | :---- |"


def test_format_table_errors():
    with pytest.raises(ValueError, match=r"rows\[1\]: missing column\(s\) \['auroc'\]"):
        report.format_table([{"category": "a", "auroc": 1.0}, {"category": "b"}], ["category", "auroc"])
    with pytest.raises(ValueError, match="at least one column"):
        report.format_table([{"a": 1}], [])
    with pytest.raises(ValueError, match="expected a dict"):
        report.format_table([("a", 1)], ["a"])


@dataclass(frozen=True)
class _Config:
    k: int
    windows: tuple


def test_write_results_json_round_trip(tmp_path):
    payload = {
        "method": "musc",
        "config": {"out": Path("/tmp/run"), "windows": (1, 2, 3), "flag": np.bool_(True), "cfg": _Config(3, (1, 8))},
        "metrics": {"auroc": np.float32(0.75), "pro": float("nan"), "ap": np.float64(np.inf), "n": np.int64(7)},
        "scores": np.array([0.5, np.nan, 2.0], np.float32),
        "grid": np.arange(4, dtype=np.int16).reshape(2, 2),
        "types": np.array(["good", "crack"]),
        3: "int key",
        "nested": [{"x": -np.inf}, None, True],
    }
    path = report.write_results_json(tmp_path / "sub" / "results.json", payload)
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {
        "method": "musc",
        "config": {"out": "/tmp/run", "windows": [1, 2, 3], "flag": True, "cfg": {"k": 3, "windows": [1, 8]}},
        "metrics": {"auroc": 0.75, "pro": None, "ap": None, "n": 7},
        "scores": [0.5, None, 2.0],
        "grid": [[0, 1], [2, 3]],
        "types": ["good", "crack"],
        "3": "int key",
        "nested": [{"x": None}, None, True],
    }
    assert report.to_jsonable(np.float32(0.1)) == float(np.float32(0.1))  # exact widening, not 0.1


def test_write_results_json_rejects_unknown_types(tmp_path):
    with pytest.raises(TypeError, match=r"payload\['a'\]\[1\]: value of type set"):
        report.write_results_json(tmp_path / "r.json", {"a": [1, {2}]})
    with pytest.raises(TypeError, match="dict key"):
        report.write_results_json(tmp_path / "r.json", {(1, 2): 3})
    assert not (tmp_path / "r.json").exists()


def test_write_scores_csv_round_trip(tmp_path):
    names = ["good/000.png", "crack, big/001.png", "crack/002.png"]
    scores = np.array([0.1, 3.25e-7, -2.0], np.float32)
    path = report.write_scores_csv(tmp_path / "scores.csv", names, np.array([0, 1, 1]), scores,
                                   ("good", "crack", "crack"))
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == list(report.SCORE_COLUMNS)
    assert [r["name"] for r in rows] == names
    assert [r["defect_type"] for r in rows] == ["good", "crack", "crack"]
    assert [r["label"] for r in rows] == ["0", "1", "1"]
    assert [float(r["score"]) for r in rows] == scores.astype(np.float64).tolist()  # bit-exact
    unlabelled = report.write_scores_csv(tmp_path / "u.csv", ["a", "b"], None, [1.5, 2.5])
    assert unlabelled.read_text().splitlines() == ["name,defect_type,label,score", "a,,,1.5", "b,,,2.5"]


@pytest.mark.parametrize(
    "labels, scores, types, match",
    [
        (None, [1.0], None, r"scores: expected shape \(2,\)"),
        ([0, 2], [1.0, 2.0], None, "only the values 0 and 1"),
        ([0], [1.0, 2.0], None, r"labels: expected shape \(2,\)"),
        (None, [1.0, 2.0], ["good"], "defect_types: expected 2 entries"),
        (None, ["a", "b"], None, "real values"),
    ],
)
def test_write_scores_csv_errors(tmp_path, labels, scores, types, match):
    with pytest.raises(ValueError, match=match):
        report.write_scores_csv(tmp_path / "s.csv", ["x", "y"], labels, scores, types)


def test_environment_info_reports_versions_and_devices(tmp_path):
    import flax
    import jax

    info = report.environment_info()
    devices = jax.devices()
    assert info["python"] == platform.python_version()
    assert info["platform"] == platform.platform()
    assert info["jax"] == jax.__version__
    assert info["flax"] == flax.__version__
    assert info["numpy"] == np.__version__
    assert info["device_count"] == len(devices)
    assert info["device_kind"] == devices[0].device_kind
    assert info["backend"] == jax.default_backend()
    assert info["process_count"] == 1
    round_trip = json.loads(report.write_results_json(tmp_path / "env.json", info).read_text())
    assert round_trip == info


def test_mean_row_matches_nanmean():
    rng = np.random.default_rng(0)
    values = rng.random(7)
    values[[1, 4]] = np.nan
    table = report.format_table([{"c": str(i), "v": v} for i, v in enumerate(values)], ["c", "v"], digits=6)
    assert math.isclose(float(table.splitlines()[-1].split("|")[2]), np.nanmean(values), abs_tol=1e-6)
