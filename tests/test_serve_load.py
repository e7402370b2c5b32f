"""A bounded load test against a real service on 127.0.0.1: 4 concurrent clients x 200 images, zero errors, the
scores equal to ``python -m jzad.run --stream`` on the same images in the order the service scored them, and a
SIGTERM that drains and checkpoints every image before a clean exit (benchmarks/serve_load.py; its full report
with throughput and latency goes to benchmarks/results/serve_load_cpu.json when run as a script)."""

import pytest

pytest.importorskip("httpx")
pytest.importorskip("uvicorn")

from benchmarks.serve_load import run_load  # noqa: E402
from jzad.stream import has_checkpoint  # noqa: E402

CLIENTS, IMAGES = 4, 200


def test_four_clients_get_the_stream_scores_without_errors(tmp_path):
    report = run_load(CLIENTS, IMAGES, tmp_path)
    assert report["errors"] == 0, report["error_samples"]
    assert report["scored"] == CLIENTS * IMAGES and report["indices_contiguous"]
    assert report["stream_rows"] == CLIENTS * IMAGES and report["stream_same_order"]
    # The service batches arrivals as they come, the stream in fixed batches of 8: float32 rounding may differ.
    assert report["max_abs_score_difference_vs_stream"] <= 1e-5
    assert report["batch_size_max"] <= 8
    assert report["server_exit_status"] == 0
    assert has_checkpoint(tmp_path / "store" / "state") == CLIENTS * IMAGES  # SIGTERM drained and checkpointed
    assert "stopped after 800 images" in (tmp_path / "server.log").read_text()
