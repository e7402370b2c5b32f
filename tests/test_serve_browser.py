"""The live page in a real browser: headless Chromium (Debian's package, installed by .ci/run) opens the page of a
real service on 127.0.0.1, images are posted, and the page shows the new overlay, verdict and chart point;
a screenshot is saved under the test's output folder. Driven over the DevTools protocol (websockets)."""

import base64
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

websockets_sync = pytest.importorskip("websockets.sync.client")
httpx = pytest.importorskip("httpx")

from benchmarks.serve_load import Server, png_bytes  # noqa: E402
from jzad import data as jdata  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed (.ci/run installs it)")


class Browser:
    """Chromium --headless with a DevTools websocket on one page target."""

    def __init__(self, profile: Path):
        self.process = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
             "--no-proxy-server",
             "--remote-debugging-port=0", "--remote-debugging-address=127.0.0.1", f"--user-data-dir={profile}",
             "--window-size=1280,900", "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        endpoint = None
        while endpoint is None:
            line = self.process.stderr.readline()
            if "DevTools listening on" in line:
                endpoint = line.split("DevTools listening on", 1)[1].strip()
            elif not line and self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("chromium did not start its DevTools endpoint")
        port = endpoint.split("://", 1)[1].split("/", 1)[0]
        targets = httpx.get(f"http://{port}/json/list", timeout=10).json()
        page = next(t for t in targets if t["type"] == "page")
        self.socket = websockets_sync.connect(page["webSocketDebuggerUrl"], max_size=64 * 2 ** 20).__enter__()
        self.next_id = 0

    def call(self, method: str, **params):
        self.next_id += 1
        self.socket.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv(timeout=60))
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]

    def evaluate(self, expression: str):
        return self.call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def wait_for(self, expression: str, timeout_s: float = 30.0):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.1)
        state = self.evaluate("location.href + ' | ' + document.title + ' | ' + "
                              "(document.getElementById('status') || {}).textContent")
        raise AssertionError(f"the page never satisfied: {expression} (page: {state})")

    def close(self):
        try:
            self.socket.close()
        finally:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()


SERVICE = ["--method", "patchcore", "--demo", "--backbone", "random-tiny-resnet", "--image-size", "64"]


def threshold_between_verdicts(images, tmp_path: Path) -> float:
    """A threshold inside the images' scores (between the 3rd and 4th of 5), computed by the stream driver on
    the service's own set-up, so the page must show both verdicts whatever the arithmetic's exact values."""
    from jzad.serve.cli import build_service
    from jzad.stream import StreamOutputs, Streamer, run_stream

    service, _ = build_service([*SERVICE, "--threshold", "0", "--store", str(tmp_path / "probe-store")])
    streamer = service.inspector.streamer
    paths = []
    for i, image in enumerate(images):
        paths.append(tmp_path / f"probe{i}.png")
        paths[-1].write_bytes(png_bytes(image))
    outputs = StreamOutputs(tmp_path / "probe")
    run_stream(Streamer(streamer.scorer, streamer.stream_config, 4, streamer.references, streamer.category),
               [(p.name, p) for p in paths], outputs)
    outputs.close()
    rows = (tmp_path / "probe" / "scores_stream.csv").read_text().splitlines()[1:]
    scores = sorted(float(row.split(",")[2]) for row in rows)
    return (scores[2] + scores[3]) / 2


def test_the_live_page_shows_new_overlays_verdicts_and_chart_points(tmp_path):
    images = jdata.make_synthetic_set(3, 2, size=64, seed=31)[0]
    threshold = threshold_between_verdicts(images, tmp_path)
    server = Server([*SERVICE, "--threshold", f"{threshold!r}", "--max-batch", "4"], tmp_path / "store",
                    tmp_path / "server.log", token="page-token")
    browser = None
    try:
        with tempfile.TemporaryDirectory() as profile:
            browser = Browser(Path(profile))
            browser.call("Page.enable")
            browser.call("Page.navigate", url=f"{server.url}/?token=page-token")
            browser.wait_for("document.body && document.body.dataset.connected === '1'")
            assert browser.evaluate("document.getElementById('chart').dataset.points") == "0"
            files = [("image", (f"part{i}.png", png_bytes(im), "image/png")) for i, im in enumerate(images)]
            answer = httpx.post(server.url + "/score", files=files, headers=server.headers, timeout=120)
            assert answer.status_code == 200
            results = answer.json()["images"]
            for r in results:
                card = f"document.getElementById('result-{r['index']}')"
                browser.wait_for(f"{card} && {card}.querySelector('img').complete && "
                                 f"{card}.querySelector('img').naturalWidth > 0")
                assert browser.evaluate(f"{card}.dataset.verdict") == r["verdict"]
                assert browser.evaluate(f"{card}.querySelector('.verdict').textContent") == r["verdict"]
                assert browser.evaluate(f"{card}.querySelector('img').getAttribute('src')").startswith(r["map"])
            browser.wait_for(f"document.getElementById('chart').dataset.points === '{len(results)}'")
            assert browser.evaluate("document.getElementById('scored').textContent") == str(len(results))
            verdicts = [r["verdict"] for r in results]
            assert verdicts.count("anomalous") == 2 and verdicts.count("normal") == 3
            shown = browser.evaluate("document.getElementById('anomalous').textContent")
            assert shown == str(verdicts.count("anomalous"))
            shot = browser.call("Page.captureScreenshot", format="png")
            (tmp_path / "serve_page.png").write_bytes(base64.b64decode(shot["data"]))
            assert (tmp_path / "serve_page.png").stat().st_size > 1000
    finally:
        if browser is not None:
            browser.close()
        assert server.stop() == 0, (tmp_path / "server.log").read_text()[-2000:]
