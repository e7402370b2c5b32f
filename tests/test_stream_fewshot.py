"""Few-shot streams (PatchCore, PatchCore+, WinCLIP, WinCLIP+): references fitted once, each batch of arrivals
scored against them; the scores equal the method on the whole set, Online PatchCore+'s memory advances by the
real arrivals only (a padded last batch leaves no trace), and the command line streams with
--stream-references."""

import csv

import jax
import numpy as np
import pytest

from jzad import data as jdata
from jzad.features import load_backbone
from jzad.methods import RunContext, get_method, get_streaming
from jzad.pipeline import Scorer
from jzad.run import main
from jzad.stream import Streamer, decode_batch

CASES = {
    "patchcore": ({}, 64, 2),
    "patchcore_online": ({"em_iterations": 2, "online": 1, "plan_scale": "row"}, 64, 2),
    "winclip": ({}, 32, 2),
    "winclip_zero_shot": ({}, 32, 0),
}


def set_up(case: str, batch: int, seed: int = 6):
    options, size, shots = CASES[case]
    name = "patchcore_plus" if case == "patchcore_online" else case.removesuffix("_zero_shot")
    method = get_method(name)
    backbone = load_backbone(method.tiny_backbone, method.backbone_run(None), image_size=size, seed=seed,
                             with_text=method.needs_text)
    config = method.configure(options, RunContext("mvtec", size, shots=shots))
    references = jdata.make_synthetic_set(shots, 0, size=size, seed=8)[0] if shots else None
    streamer = Streamer(Scorer(method, config, backbone), get_streaming(name).configure({}, config), batch,
                        references, "widget")
    return method, config, streamer, references, size


def whole_set(method, config, streamer, references, images):
    """The method itself on the whole set: fit on the references, score every image in one call."""
    prepared = method.prepare(config, streamer.scorer.backbone, "widget")
    refs = streamer.extract(references) if references is not None else None
    state = method.fit(config, refs, None, prepared)
    return method.score(config, state, streamer.extract(images), None)


@pytest.mark.parametrize("case", list(CASES))
def test_a_stream_in_batches_scores_as_the_whole_set(case):
    method, config, streamer, references, size = set_up(case, batch=3)
    images = jdata.make_synthetic_set(4, 3, size=size, seed=3)[0]  # 7 arrivals: batches of 3, 3 and 1 + padding
    state, image_scores, patch_scores, banked = streamer.init(), [], [], []
    for first in range(0, len(images), 3):
        batch = images[first:first + 3]
        out, state = streamer.step(state, batch)
        image_scores.append(np.asarray(out.image_scores)[:len(batch)])
        patch_scores.append(np.asarray(out.patch_scores)[:len(batch)])
        banked.append(np.asarray(out.banked)[:len(batch)])
        assert not np.asarray(out.warming).any()
    whole, whole_state = whole_set(method, config, streamer, references, images)
    np.testing.assert_allclose(np.concatenate(image_scores), np.asarray(whole.image_scores), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(np.concatenate(patch_scores), np.asarray(whole.patch_scores), rtol=1e-6, atol=1e-7)
    online = case == "patchcore_online"
    assert np.concatenate(banked).all() if online else not np.concatenate(banked).any()
    if online:  # the padding rows of the last batch did not enter the memory: it equals the whole set's
        for got, want in zip(jax.tree.leaves(state), jax.tree.leaves(whole_state)):
            np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_a_stream_needs_references_only_where_the_method_does():
    method = get_method("patchcore")
    config = method.configure({}, RunContext("mvtec", 64, shots=2))
    backbone = load_backbone(method.tiny_backbone, method.backbone_run(None), image_size=64, seed=6)
    streamer = Streamer(Scorer(method, config, backbone), get_streaming("patchcore").configure({}, config), 2)
    with pytest.raises(ValueError, match="^references: patchcore streams against normal reference images, got none"):
        streamer.init()
    assert not get_streaming("musc").references and get_streaming("winclip_plus").references


def write_pngs(folder, images):
    from PIL import Image

    folder.mkdir(parents=True)
    for index, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{index:03d}.png")


def test_cli_streams_patchcore_plus_against_reference_images(tmp_path, capsys):
    method, config, streamer, _, size = set_up("patchcore_online", batch=2, seed=0)  # the CLI's random weights
    write_pngs(tmp_path / "arrivals", jdata.make_synthetic_set(3, 2, size=size, seed=5)[0])
    write_pngs(tmp_path / "refs", jdata.make_synthetic_set(2, 0, size=size, seed=9)[0])
    # What the CLI feeds the method: the files decoded with the method's preparation (PatchCore's resize + crop).
    prep = streamer.scorer.prep
    images, _ = decode_batch(sorted((tmp_path / "arrivals").iterdir()), prep, size)
    references, _ = decode_batch(sorted((tmp_path / "refs").iterdir()), prep, size)
    argv = ["--stream", "--method", "patchcore_plus", "--backbone", method.tiny_backbone, "--image-size", str(size),
            "--online", "1", "--em-iterations", "2", "--plan-scale", "row", "--quiet",
            "--data", str(tmp_path / "arrivals"), "--stream-references", str(tmp_path / "refs"),
            "--stream-batch", "2", "--out", str(tmp_path / "out")]
    assert main(argv) == 0
    assert "scores: each arrival against 2 reference images from" in capsys.readouterr().out
    with open(tmp_path / "out" / "scores_stream.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["name"] for r in rows] == [f"{i:03d}.png" for i in range(5)] and {r["banked"] for r in rows} == {"1"}
    whole, _ = whole_set(method, config, streamer, references, images)
    np.testing.assert_allclose([float(r["score"]) for r in rows], np.asarray(whole.image_scores), rtol=1e-6)


@pytest.mark.parametrize("argv, message", [
    (["--method", "patchcore"], "--method patchcore streams against normal reference images: give "
                                "--stream-references FOLDER_OR_LIST"),
    (["--method", "musc", "--stream-references", "."], "--stream-references does not apply to --method musc"),
    (["--method", "patchcore", "--stream-references", "absent"], "--stream-references: absent does not exist"),
    (["--method", "patchcore", "--shots", "2"], "--shots does not apply to --stream (a stream's references are "
                                                "every image of --stream-references)"),
])
def test_cli_few_shot_stream_option_errors(tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "arrivals").mkdir()
    assert main(["--stream", "--data", "arrivals", "--quiet", "--out", str(tmp_path / "o")] + argv) == 2
    assert message in capsys.readouterr().err
