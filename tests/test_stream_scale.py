"""The scale and streaming benchmark's dry run (N = 50, in one cold process: its latency section clears JAX's
caches to compile as a fresh process would): every section runs and records what the
full run records, and the streamed scores equal the streaming functions called directly."""

import csv
import json

import numpy as np
import pytest

from benchmarks import stream_scale


@pytest.mark.slow
@pytest.mark.cold_process
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
    for run in saved["latency"]:  # 7 batches of 8 (the last padded), checkpointed every 100 and at the end
        assert run["n"] == 50 and len(run["batches"]) == 7 and run["checkpoint_every"] == 100
        assert run["warm_up"]["batches"] + run["steady"]["batches"] == 7
        assert run["steady"]["recompiles"] == 0 and run["final_checkpoint_wait_ms"] >= 0
    assert saved["latency"][0]["warm_up"]["compiles"] > 0  # the first run compiles in its first batch


def timing_row(batch, ms, compiles=0, checkpointed=False, cpu=None, writing=False, **parts):
    row = {"batch": batch, "images": 8, "checkpointed": checkpointed, "ms": ms, "compiles": compiles,
           "checkpoint_writing": writing,
           "compile_ms": 0.9 * ms if compiles else 0.0, "compiled": ["step"] if compiles else []}
    row["cpu_ms"] = ms if cpu is None else cpu  # busy the whole batch unless said otherwise
    row.update({f"{p}_ms": 0.0 for p in stream_scale.PARTS})
    row.update({f"{p}_ms": v for p, v in parts.items()})
    row["step_ms"] = ms - sum(parts.values())  # the rest of the batch
    return row


def test_attribution_reports_warm_up_apart_and_names_each_slow_batch():
    rows = [timing_row(0, 5000.0, compiles=10), timing_row(1, 900.0, compiles=1)]
    rows += [timing_row(b, 10.0 + b % 3) for b in range(2, 22)]
    rows[10] = timing_row(10, 300.0, checkpoint=290.0, checkpointed=True)
    rows[15] = timing_row(15, 200.0, compiles=2)
    rows[11] = timing_row(11, 90.0, writing=True)
    rows[18] = timing_row(18, 50.0, decode=45.0)
    rows[20] = timing_row(20, 40.0, cpu=12.0)  # slow in wall time only: other processes had the cores
    got = stream_scale.attribute(rows)
    assert got["warm_up"]["batches"] == 2 and got["warm_up"]["compiles"] == 11
    assert got["warm_up"]["ms"] == [5000.0, 900.0]
    steady = got["steady"]
    ms = [r["ms"] for r in rows[2:]]
    assert steady["batches"] == 20 and steady["batch_ms_median"] == np.median(ms)
    assert steady["batch_ms_p95"] == np.percentile(ms, 95) and steady["recompiles"] == 2
    assert steady["checkpoints"] == 1 and steady["checkpoint_ms"] == [290.0]
    assert [(s["batch"], s["cause"]) for s in steady["slower_than_3x_median"]] == [
        (10, "checkpoint save"), (11, "step, beside the background write of the last checkpoint (it shares the cores)"),
        (15, "compile (2 x: step)"), (18, "decode"),
        (20, "step, waiting for a core (CPU time 12 ms, typically 12: the machine's load)")]
    assert steady["cpu_ms_median"] == np.median([r["cpu_ms"] for r in rows[2:]])


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
