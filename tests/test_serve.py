"""The inspection service in process (Starlette's TestClient): every endpoint and error, verdicts against
jzad.eval.verdict, scores against the stream driver on the same images in the same order, the bounded queue's 503,
the token, map confinement, and a restart from the checkpoint continuing with the same scores."""

import dataclasses
import io
import json
import threading
import time

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("starlette")
from starlette.testclient import TestClient  # noqa: E402

from jzad import data as jdata  # noqa: E402
from jzad.eval.verdict import anomalous, normalised_scores, reference_threshold  # noqa: E402
from jzad.serve.app import build_app  # noqa: E402
from jzad.serve.cli import build_serve_parser, build_service  # noqa: E402
from jzad.serve.engine import reference_scores  # noqa: E402
from jzad.stream import StreamOutputs, Streamer, decode_batch, has_checkpoint, run_stream  # noqa: E402

TINY = ["--method", "patchcore", "--demo", "--backbone", "random-tiny-resnet", "--image-size", "64"]


def png(image, mode=None) -> bytes:
    im = Image.fromarray(image) if mode is None else Image.fromarray(image).convert(mode)
    buffer = io.BytesIO()
    im.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def images():
    return jdata.make_synthetic_set(3, 3, size=64, seed=21)[0]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    store = tmp_path_factory.mktemp("store")
    service, _ = build_service([*TINY, "--store", str(store), "--max-batch", "4", "--max-wait-ms", "50",
                                "--queue-size", "8", "--max-bytes", "60000", "--max-images", "6"])
    with TestClient(build_app(service)) as client:
        yield service, client


def test_score_raw_and_multipart_match_the_stream_driver_and_the_verdict(served, images, tmp_path):
    service, client = served
    assert sorted(service.inspector.buckets) == [1, 2, 4]  # few-shot: partly filled batches at a smaller shape
    first = service.inspector.done
    answer = client.post("/score", content=png(images[0]), headers={"content-type": "image/png"},
                         params={"name": "a.png"})
    assert answer.status_code == 200
    files = [("image", (f"{i}.png", png(images[i]), "image/png")) for i in range(1, 6)]
    multi = client.post("/score", files=files)
    assert multi.status_code == 200
    got = answer.json()["images"] + multi.json()["images"]
    assert [r["index"] for r in got] == list(range(first, first + 6))
    assert [r["name"] for r in got] == ["a.png"] + [f"{i}.png" for i in range(1, 6)]
    # the reference: the stream driver on the same decoded files, in the same order
    folder = tmp_path / "imgs"
    folder.mkdir()
    paths = []
    for i, image in enumerate(images):
        paths.append(folder / f"{i}.png")
        paths[-1].write_bytes(png(image))
    streamer = service.inspector.streamer
    outputs = StreamOutputs(tmp_path / "out")
    run_stream(Streamer(streamer.scorer, streamer.stream_config, 4, streamer.references, streamer.category),
               [(p.name, p) for p in paths], outputs)
    outputs.close()
    rows = (tmp_path / "out" / "scores_stream.csv").read_text().splitlines()[1:]
    want = np.asarray([float(row.split(",")[2]) for row in rows])
    scores = np.asarray([r["score"] for r in got])
    np.testing.assert_allclose(scores, want, rtol=1e-6)
    threshold = service.inspector.threshold
    np.testing.assert_allclose([r["normalised_score"] for r in got], normalised_scores(scores, threshold), rtol=1e-6)
    assert [r["anomalous"] for r in got] == list(anomalous(scores, threshold))
    assert all(r["threshold"] == threshold.value and r["width"] == 64 for r in got)
    overlay = client.get(got[0]["map"])
    assert overlay.status_code == 200 and overlay.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(overlay.content)).size == (64, 64)


def test_the_threshold_is_the_quantile_of_each_reference_scored_by_a_stream_fitted_on_the_others(served):
    service, _ = served
    streamer = service.inspector.streamer
    references = np.asarray(streamer.references)
    by_stream = []
    for i in range(len(references)):  # the reference: the stream itself, initialised on the other references
        held_out = dataclasses.replace(streamer, references=np.delete(references, i, axis=0), batch=1)
        scores, _ = held_out.step(held_out.init(), references[i:i + 1])
        by_stream.append(float(np.asarray(scores.image_scores)[0]))
    np.testing.assert_allclose(reference_scores(streamer), by_stream, rtol=1e-5)
    assert service.inspector.threshold.value == pytest.approx(reference_threshold(by_stream), rel=1e-5)
    assert service.inspector.threshold.source == "references"


@pytest.mark.parametrize("request_kw, status, kind, words", [
    (dict(content=b"not an image at all", headers={"content-type": "image/png"}), 400, "undecodable", "cannot decode"),
    (dict(content=b"x", headers={"content-type": "text/plain"}), 415, "content_type", "text/plain is not accepted"),
    (dict(content=b"", headers={"content-type": "image/png"}), 400, "empty", "empty upload"),
    (dict(content=b"\0" * 70000, headers={"content-type": "image/png"}), 413, "too_large", "over the service's limit of 60000"),
    (dict(data={"note": "hello"}, files=[("image", ("x.png", b"", "image/png"))]), 400, "bad_multipart",
     "'note' is not a file"),
    (dict(files=[("image", (f"{i}.png", b"1", "image/png")) for i in range(7)]), 400, "bad_multipart",
     "Too many files"),
])
def test_bad_input_is_a_one_line_json_error_and_counted(served, request_kw, status, kind, words):
    service, client = served
    before = service.metrics.errors.labels(kind)._value.get()
    answer = client.post("/score", **request_kw)
    assert answer.status_code == status
    body = answer.json()
    assert body["kind"] == kind and words in body["error"] and "\n" not in answer.text
    assert service.metrics.errors.labels(kind)._value.get() == before + 1
    assert client.get("/health").json()["status"] == "ok"  # the service is still up


def test_truncated_16_bit_and_palette_images(served, images):
    service, client = served
    whole = png(images[0])
    truncated = client.post("/score", content=whole[: len(whole) // 2], headers={"content-type": "image/png"},
                            params={"name": "cut.png"})
    assert truncated.status_code == 400 and "cut.png" in truncated.json()["error"]
    gray16 = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16)
    buffer = io.BytesIO()
    Image.fromarray(gray16).save(buffer, format="PNG")
    palette = png(images[1], "P")
    answer = client.post("/score", files=[("a", ("g16.png", buffer.getvalue(), "image/png")),
                                          ("b", ("pal.png", palette, "image/png"))])
    assert answer.status_code == 200
    # documented handling (jzad.data.decode): 16-bit by its full range, palette by its colours -> as 8-bit RGB
    eight = np.repeat(np.rint(gray16 / 257.0).astype(np.uint8)[..., None], 3, -1)
    colours = np.asarray(Image.open(io.BytesIO(palette)).convert("RGB"))
    want = client.post("/score", files=[("a", ("g8.png", png(eight), "image/png")),
                                        ("b", ("rgb.png", png(colours), "image/png"))])
    np.testing.assert_allclose([r["score"] for r in answer.json()["images"]],
                               [r["score"] for r in want.json()["images"]], rtol=1e-6)


def test_maps_are_confined_to_the_store_and_unknown_routes_are_json(served):
    _, client = served
    for url in ("/maps/../../etc/passwd.png", "/maps/%2e%2e%2fstate.png", "/maps/" + "0" * 32 + ".png",
                "/maps/ABCDEF.png", "/nowhere"):
        answer = client.get(url)
        assert answer.status_code == 404 and answer.json()["kind"] == "not_found"
    assert client.get("/score").status_code == 405


def test_health_metrics_page_and_events(served, images):
    service, client = served
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["method"] == "patchcore"
    assert health["threshold"]["source"] == "references"
    page = client.get("/")
    assert page.status_code == 200 and "EventSource" in page.text
    body = {}

    def listen():
        body["text"] = client.get("/events").text

    listener = threading.Thread(target=listen)
    listener.start()
    deadline = time.monotonic() + 30
    while not service.subscribers and time.monotonic() < deadline:
        time.sleep(0.01)
    posted = client.post("/score", content=png(images[2]), headers={"content-type": "image/png"}).json()["images"][0]
    time.sleep(0.2)
    service.closing = True  # ends the event stream (what SIGTERM does)
    listener.join(30)
    service.closing = False
    events = [block for block in body["text"].split("\n\n") if block.startswith("event:")]
    assert events[0].startswith("event: hello")
    hello = json.loads(events[0].split("data: ", 1)[1])
    assert hello["threshold"] == service.inspector.threshold.value
    result = json.loads(events[-1].split("data: ", 1)[1])
    assert events[-1].startswith("event: result") and result == posted
    metrics = client.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    scored = next(float(line.split()[1]) for line in text.splitlines() if line.startswith("jzad_images_scored_total"))
    assert scored == service.inspector.done
    for name in ("jzad_latency_seconds_bucket", "jzad_queue_depth", "jzad_batch_size_count", "jzad_errors_total"):
        assert name in text


def test_a_full_queue_answers_503_with_retry_after(tmp_path, images):
    service, _ = build_service([*TINY, "--store", str(tmp_path), "--max-batch", "1", "--queue-size", "1",
                                "--max-wait-ms", "0", "--threshold", "1"])
    with TestClient(build_app(service)) as client:
        gate, scoring = threading.Event(), threading.Event()
        score = service.inspector.score

        def slow(items, arrived):
            scoring.set()
            gate.wait(30)
            return score(items, arrived)

        service.inspector.score = slow
        answers = []
        workers = [threading.Thread(target=lambda: answers.append(client.post(
            "/score", content=png(images[0]), headers={"content-type": "image/png"}))) for _ in range(2)]
        # The first request is being scored (held at the gate) before the second arrives, so the second is the
        # one image waiting: the queue is full, whatever the threads' timing.
        workers[0].start()
        assert scoring.wait(30)
        workers[1].start()
        deadline = time.monotonic() + 30
        while service.batcher.depth < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        busy = client.post("/score", content=png(images[0]), headers={"content-type": "image/png"})
        gate.set()
        for w in workers:
            w.join(30)
    assert busy.status_code == 503 and busy.json()["kind"] == "busy" and int(busy.headers["retry-after"]) >= 1
    assert sorted(a.status_code for a in answers) == [200, 200]


def test_token_is_required_on_every_endpoint(tmp_path, images):
    service, _ = build_service([*TINY, "--store", str(tmp_path), "--token", "s3cret", "--threshold", "1",
                                "--max-batch", "1"])
    with TestClient(build_app(service)) as client:
        for method, url in (("GET", "/"), ("GET", "/health"), ("GET", "/metrics"), ("GET", "/events"),
                            ("GET", "/maps/" + "a" * 32 + ".png"), ("POST", "/score")):
            answer = client.request(method, url)
            assert answer.status_code == 401 and answer.json()["kind"] == "unauthorized"
            assert answer.headers["www-authenticate"] == "Bearer"
        assert client.get("/health", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert client.get("/health", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert client.get("/health", params={"token": "s3cret"}).status_code == 200
        assert client.post("/score", params={"token": "s3cret"}, content=png(images[0]),
                           headers={"content-type": "image/png"}).status_code == 401  # query token: GET only


def test_a_restart_continues_with_the_same_scores_musc(tmp_path, images):
    """MuSc streams against its own arrivals (the bank): a service stopped after 3 images and restarted from its
    checkpoint gives the scores of one uninterrupted service, and of the stream driver, on the same order."""
    args = ["--method", "musc", "--demo", "--backbone", "random-tiny", "--image-size", "32", "--threshold", "0.5",
            "--max-batch", "1", "--r-list", "1"]

    def post_all(client, batch):
        return [np.nan if (s := client.post("/score", content=png(im[:32, :32]), headers={
            "content-type": "image/png"}).json()["images"][0]["score"]) is None else s for im in batch]

    service, _ = build_service([*args, "--store", str(tmp_path / "a"), "--checkpoint-every-s", "0.001"])
    assert list(service.inspector.buckets) == [1]
    with TestClient(build_app(service)) as client:
        first = post_all(client, images[:3])
        deadline = time.monotonic() + 30  # the schedule checkpoints after a batch, while the service runs
        while has_checkpoint(tmp_path / "a" / "state") != 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert has_checkpoint(tmp_path / "a" / "state") == 3
    service, _ = build_service([*args, "--store", str(tmp_path / "a")])
    assert service.inspector.done == 3
    with TestClient(build_app(service)) as client:
        second = post_all(client, images[3:])
        assert client.get("/health").json()["resumed_from"] == 3
    service, _ = build_service([*args, "--store", str(tmp_path / "b")])
    with TestClient(build_app(service)) as client:
        whole = post_all(client, images)
    assert np.isfinite(whole[1:]).all()  # MuSc's first arrival is warming (no score: null, verdict "warming")
    np.testing.assert_array_equal(first + second, whole)
    streamer = service.inspector.streamer
    paths = []
    for i, im in enumerate(images):
        paths.append(tmp_path / f"{i}.png")
        paths[-1].write_bytes(png(im[:32, :32]))
    decoded, _ = decode_batch(paths, streamer.scorer.prep, 32)
    state, want = streamer.init(), []
    for image in decoded:
        out, state = streamer.step(state, image[None])
        want.append(float(np.asarray(out.image_scores)[0]))
    np.testing.assert_allclose(whole, want, rtol=1e-6)  # NaN where the stream driver has no score yet either


@pytest.mark.parametrize("flag, text, expected", [
    ("--max-wait-ms", "-1", "expected a number >= 0, got '-1'"),
    ("--max-wait-ms", "nan", "expected a number >= 0, got 'nan'"),
    ("--threshold", "inf", "expected a finite number, got 'inf'"),
    ("--threshold", "x", "expected a finite number, got 'x'"),
    ("--max-batch", "0", "expected a positive integer, got '0'"),
    ("--keep-maps", "2.5", "expected a positive integer, got '2.5'"),
])
def test_service_number_options_say_what_they_expect(capsys, flag, text, expected):
    with pytest.raises(SystemExit):
        build_serve_parser().parse_args(["--method", "musc", flag, text])
    assert f"argument {flag}: {expected}" in capsys.readouterr().err
    args = build_serve_parser().parse_args(["--method", "musc", "--max-wait-ms", "0", "--threshold", "-2.5",
                                            "--max-batch", "3"])
    assert (args.max_wait_ms, args.threshold, args.max_batch) == (0.0, -2.5, 3)


def test_option_errors_name_the_option(tmp_path):
    from jzad.run import OptionError

    with pytest.raises(OptionError, match="--references does not apply to --method musc"):
        build_service(["--method", "musc", "--references", str(tmp_path), "--threshold", "1"])
    with pytest.raises(OptionError, match="no reference images to draw a threshold from"):
        build_service(["--method", "musc", "--demo"])
    with pytest.raises(OptionError, match="--out does not apply"):
        build_service([*TINY, "--out", str(tmp_path)])
    with pytest.raises(OptionError, match="does not stream"):
        build_service(["--method", "clip_lad", "--demo", "--threshold", "1"])
