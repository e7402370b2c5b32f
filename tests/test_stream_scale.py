"""The scale and streaming benchmark's dry run (N = 50, in-process): every section runs and records what the
full run records, and the streamed scores equal the streaming functions called directly."""

import csv
import json

import numpy as np
import pytest

from benchmarks import stream_scale


@pytest.mark.slow
def test_dry_run_records_every_section(tmp_path):
    payload = stream_scale.main(["--dry-run", "--out", str(tmp_path / "stream.json")])
    saved = json.loads((tmp_path / "stream.json").read_text())
    assert saved["dry_run"] and saved["config"]["r_list"] == [1]
    whole, stream = saved["memory"]["whole"][0], saved["memory"]["stream"][0]
    assert whole["n"] == stream["n"] == 50 and whole["subsets"] == 1 and stream["images"] == 50
    assert stream["batches"] == -(-50 // saved["config"]["stream_batch"])
    assert whole["per_image_outputs_mib"] * 2**20 == 50 * (32 * 32 + 4 * 4) * 4
    for key in ("b1", "b8"):
        row = saved["throughput"][key]
        assert row["images"] == 50 and row["latency_ms_median"] <= row["latency_ms_p95"]
        assert row["batches"] == -(-50 // row["batch"])
    assert set(saved["burst"]["policies"]) == {"fifo", "reservoir", "fifo+admit0.9", "reservoir+admit0.9"}
    burst = saved["burst"]["policies"]
    # With admission the burst (scored above the bank's 90% quantile) never enters the bank; FIFO banks it all.
    assert burst["fifo"]["burst_banked"] == saved["burst"]["burst"] and burst["fifo+admit0.9"]["burst_banked"] == 0
    assert payload["path"] == str(tmp_path / "stream.json")


def test_streamed_rows_equal_the_streaming_step(tmp_path):
    source = stream_scale.SyntheticSource(12)
    stream_scale.stream(12, 4, 8, tmp_path, source, r_list=(1,))
    with open(tmp_path / "scores_stream.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    runner = stream_scale.streamer(4, 8, r_list=(1,))
    state = runner.init()
    expected = []
    for first in range(0, 12, 4):
        scores, state = runner.step(state, np.stack([source.image(i) for i in range(first, first + 4)]))
        expected += np.asarray(scores.image_scores).tolist()
    assert [r["name"] for r in rows] == list(source.names)
    np.testing.assert_array_equal([float(r["score"]) for r in rows], np.asarray(expected, np.float32))
