"""Load test of the inspection service: C concurrent clients x K images each against a real server on 127.0.0.1,
then the same images through ``python -m jzad.run --stream`` in the order the service scored them.

    python benchmarks/serve_load.py                          # 4 clients x 200 images, tiny PatchCore
    python benchmarks/serve_load.py --clients 2 --images 20 --out /tmp/load.json

Reports errors (any non-200 answer), throughput, per-request latency p50/p95 as the clients saw it, the
batch sizes the service formed, and the largest difference between the service's scores and the CLI stream's
on the same images in the same order (expected 0: both call the same streaming functions). The default method
is few-shot PatchCore on its tiny random backbone (a scorer whose cost is the service's own overhead);
``--method``/``--server-args`` choose others. Results go to benchmarks/results/serve_load_cpu.json.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "serve_load_cpu.json"
TINY_SERVER = ("--method", "patchcore", "--backbone", "random-tiny-resnet", "--image-size", "64")
THRESHOLD = "3.0"
"""A fixed threshold (the verdicts play no part in the load test; the references still set the normalisation range)."""


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``python -m jzad.serve`` in a subprocess on 127.0.0.1 (its output in ``log``); ``stop`` sends SIGTERM."""

    def __init__(self, args, store: Path, log: Path, token: str | None = None, timeout_s: float = 240.0):
        import httpx

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.token = token
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        command = [sys.executable, "-m", "jzad.serve", *args, "--host", "127.0.0.1", "--port", str(self.port),
                   "--store", str(store)] + (["--token", token] if token else [])
        self.log = log
        self._log_file = log.open("w")
        self.process = subprocess.Popen(command, stdout=self._log_file, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        deadline = time.monotonic() + timeout_s
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"the service exited with {self.process.returncode}: {log.read_text()[-2000:]}")
            try:
                if httpx.get(self.url + "/health", headers=self.headers, timeout=2.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the service did not answer /health within {timeout_s} s: "
                                   f"{log.read_text()[-2000:]}")
            time.sleep(0.25)

    @property
    def headers(self) -> dict:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def stop(self, timeout_s: float = 60.0) -> int:
        """SIGTERM (drain, checkpoint, exit) and wait; kills it after ``timeout_s``. Returns the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log_file.close()
        return self.process.returncode


def png_bytes(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def run_load(clients: int, images: int, work: Path, server_args=TINY_SERVER, max_batch: int = 8,
             max_wait_ms: float = 5.0, size: int = 64) -> dict:
    """Start a server, let ``clients`` threads each post ``images`` images (one per request), stop it with
    SIGTERM, then score the same files with the CLI stream in the service's order; returns the report."""
    import httpx

    from jzad import data as jdata

    work.mkdir(parents=True, exist_ok=True)
    pool, _, _, _ = jdata.make_synthetic_set(images - images // 4, images // 4, size=size, seed=11)
    folder = work / "images"
    folder.mkdir(exist_ok=True)
    payloads = []
    for i, image in enumerate(pool):
        data = png_bytes(image)
        (folder / f"{i:04d}.png").write_bytes(data)
        payloads.append(data)
    references = work / "references"
    references.mkdir(exist_ok=True)
    for i, image in enumerate(jdata.make_synthetic_set(4, 0, size=size, seed=12)[0]):
        (references / f"{i}.png").write_bytes(png_bytes(image))
    args = [*server_args, "--references", str(references), "--threshold", THRESHOLD, "--max-batch", str(max_batch),
            "--max-wait-ms", str(max_wait_ms), "--queue-size", str(4 * clients * 4), "--checkpoint-every-s", "0"]
    load_start = list(os.getloadavg())
    server = Server(args, work / "store", work / "server.log")
    results: list[list] = [[] for _ in range(clients)]
    errors: list[str] = []
    barrier = threading.Barrier(clients)

    def client(k: int) -> None:
        with httpx.Client(base_url=server.url, timeout=120.0) as http:
            barrier.wait()
            for i, data in enumerate(payloads):
                started = time.perf_counter()
                answer = http.post("/score", content=data, params={"name": f"{i:04d}.png"},
                                   headers={"content-type": "image/png"})
                seconds = time.perf_counter() - started
                if answer.status_code != 200:
                    errors.append(f"client {k} image {i}: {answer.status_code} {answer.text}")
                    continue
                result = answer.json()["images"][0]
                results[k].append((result["index"], result["name"], result["score"], result["batch"], seconds))

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    metrics = httpx.get(server.url + "/metrics").text
    status = server.stop()
    load_end = list(os.getloadavg())
    scored = sorted(r for rs in results for r in rs)
    latencies = np.asarray([r[4] for r in scored]) * 1e3
    batches: dict[int, int] = {}
    for r in scored:
        batches[r[3]] = batches.get(r[3], 0) + 1
    sizes = np.asarray(list(batches.values()))
    # the same images, in the order the service scored them, through the CLI stream
    listing = work / "order.txt"
    listing.write_text("".join(f"images/{name}\n" for _, name, _, _, _ in scored))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, "-m", "jzad.run", *server_args, "--stream", "--data", str(listing),
               "--stream-references", str(references), "--stream-batch", str(max_batch), "--out",
               str(work / "stream"), "--quiet", "--category", "object"]
    stream_start = time.perf_counter()
    cli = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    stream_seconds = time.perf_counter() - stream_start
    if cli.returncode != 0:
        raise RuntimeError(f"--stream failed: {cli.stderr[-2000:]}")
    with (work / "stream" / "scores_stream.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    stream_scores = np.asarray([float(row["score"]) for row in rows])
    service_scores = np.asarray([r[2] for r in scored])
    same_order = [row["name"] for row in rows] == [f"images/{r[1]}" for r in scored]
    stream_stats = json.loads((work / "stream" / "results.json").read_text())["stream"]
    import jax

    return {
        "benchmark": "serve_load", "clients": clients, "images_per_client": images, "requests": clients * images,
        "errors": len(errors), "error_samples": errors[:5], "server_exit_status": status,
        "scored": len(scored), "indices_contiguous": [r[0] for r in scored] == list(range(len(scored))),
        "wall_s": wall, "images_per_s": len(scored) / wall if wall else float("nan"),
        "latency_ms_p50": float(np.percentile(latencies, 50)) if latencies.size else float("nan"),
        "latency_ms_p95": float(np.percentile(latencies, 95)) if latencies.size else float("nan"),
        "batches": len(batches), "batch_size_mean": float(sizes.mean()) if sizes.size else float("nan"),
        "batch_size_max": int(sizes.max()) if sizes.size else 0,
        "max_abs_score_difference_vs_stream": float(np.max(np.abs(service_scores - stream_scores)))
        if len(stream_scores) == len(service_scores) and len(scored) else float("inf"),
        "stream_rows": len(rows), "stream_same_order": same_order,
        "cli_stream_images_per_s_after_first_batch": stream_stats["images_per_s_after_first_batch"],
        "cli_stream_wall_s_with_startup": stream_seconds,
        "server": {"args": list(args), "max_batch": max_batch, "max_wait_ms": max_wait_ms, "image_size": size},
        "metrics_excerpt": [line for line in metrics.splitlines() if line.startswith(("jzad_batch_size_count",
                                                                                      "jzad_images_scored_total"))],
        "device": jax.devices()[0].device_kind, "platform": platform.platform(), "python": platform.python_version(),
        "jax": jax.__version__, "cpu_count": os.cpu_count(), "load_average_start": load_start,
        "load_average_end": load_end,
        "note": "latency = one request (one image) as its client saw it, over HTTP on 127.0.0.1; timings taken "
                "on a CPU shared with other jobs (see load averages)",
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as work:
        report = run_load(args.clients, args.images, Path(work), max_batch=args.max_batch,
                          max_wait_ms=args.max_wait_ms)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in ("errors", "scored", "images_per_s", "latency_ms_p50", "latency_ms_p95",
                                             "batch_size_mean", "max_abs_score_difference_vs_stream")}))
    return 0 if report["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
