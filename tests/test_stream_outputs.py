"""Stream outputs a person can follow (issue 26): one line per image, no NaN score, the verdict, heatmaps, and
output files named relative to the inputs' common root."""

import csv
import io

import numpy as np

from jzad.data.arrivals import output_namer
from jzad.eval.outputs import HeatmapStyle
from jzad.eval.verdict import Threshold
from jzad.stream import StreamOutputs


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_rows_lines_verdict_and_no_nan(tmp_path):
    echo = io.StringIO()
    threshold = Threshold(2.0, "given", 0.0, 4.0)
    outputs = StreamOutputs(tmp_path, threshold=threshold, echo=echo)
    outputs.write(0, ["a.png", "b.png", "c.png"], np.array([np.nan, 3.0, 1.0]), np.array([False, False, False]),
                  np.ones(3, bool), np.zeros(3))
    outputs.close()
    rows = _rows(tmp_path / "scores_stream.csv")
    assert [r["score"] for r in rows] == ["0.0", "3.0", "1.0"]
    assert [r["warming"] for r in rows] == ["1", "0", "0"]
    assert [r["anomalous"] for r in rows] == ["0", "1", "0"]
    np.testing.assert_allclose([float(r["normalised_score"]) for r in rows], [0.0, 0.75, 0.25])
    lines = echo.getvalue().splitlines()
    assert len(lines) == 3 and "warming up" in lines[0] and "b.png" in lines[1] and "ANOMALOUS" in lines[1]
    assert "normal" in lines[2]


def test_maps_and_heatmaps_named_relative_to_the_common_root(tmp_path):
    listing = tmp_path / "list.txt"
    absolute = [str(tmp_path / "cam" / "day1" / "x.png"), str(tmp_path / "cam" / "day2" / "y.png")]
    listing.write_text("".join(p + "\n" for p in absolute))
    out = tmp_path / "out"
    outputs = StreamOutputs(out, save_maps=True, output_name=output_namer(listing),
                            heatmaps=HeatmapStyle(random_weights=True), heatmap_size=32)
    maps = np.random.default_rng(0).random((2, 16, 16)).astype(np.float32)
    images = np.zeros((2, 16, 16, 3), np.uint8)
    outputs.write(0, absolute, np.array([0.5, 0.7]), np.zeros(2, bool), np.ones(2, bool), np.zeros(2), maps,
                  [(16, 16)] * 2, images)
    outputs.close()
    tiffs = sorted(p.relative_to(out).as_posix() for p in (out / "maps").rglob("*.tiff"))
    pngs = sorted(p.relative_to(out).as_posix() for p in (out / "heatmaps").rglob("*.png"))
    assert tiffs == ["maps/stream/day1/x.tiff", "maps/stream/day2/y.tiff"]
    assert pngs == ["heatmaps/stream/day1/x.png", "heatmaps/stream/day2/y.png"]
    assert _rows(out / "scores_stream.csv")[0]["anomalous"] == ""  # no threshold: no verdict


def test_stdin_names_relative_to_the_current_folder(tmp_path):
    namer = output_namer("-", cwd=tmp_path)
    assert namer(str(tmp_path / "a" / "b.png")) == "a/b.png"
    assert namer("c/d.png") == "c/d.png"
    assert namer("/elsewhere/e.png") == "elsewhere/e.png"
