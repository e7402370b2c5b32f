"""WinCLIP through the method seam: anomalib's float preprocessing against torch's antialiased bicubic, the
pipeline on image files against torch preprocessing + the pure WinCLIP functions (parity-tested against
anomalib in test_winclip.py), --class-name, few-shot staged == fused == sharded, and the command line."""

import json

import jax
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from jzad import data as jdata
from jzad.backbone import CLIP_MEAN, CLIP_STD, get_architecture, init_clip
from jzad.data.sources import prepare_image
from jzad.features import ImagePrep, load_backbone
from jzad.kernels import device_mesh
from jzad.methods import RunContext, get_method
from jzad.methods.winclip import (
    WinCLIPConfig,
    text_embeddings,
    winclip_features,
    winclip_memory,
    winclip_prepare,
    winclip_scores,
)
from jzad.pipeline import Scorer, run_category
from jzad.run import main
from jzad.timing import StageClock

SIZE = 32
ARCH = "tiny-text"


def torch_transform(image: np.ndarray, size: int) -> np.ndarray:
    """anomalib's WinCLIP transform on a uint8 RGB image: float [0, 1], antialiased bicubic to size, then CLIP
    mean/std -> (size, size, 3)."""
    x = torch.from_numpy(image.astype(np.float32) / 255.0).permute(2, 0, 1)[None]
    x = F.interpolate(x, size=(size, size), mode="bicubic", antialias=True, align_corners=False)[0]
    x = (x - torch.tensor(CLIP_MEAN)[:, None, None]) / torch.tensor(CLIP_STD)[:, None, None]
    return x.permute(1, 2, 0).numpy()


@pytest.mark.parametrize("shape", [(70, 50), (13, 9), (32, 32), (24, 40)])
def test_square_float_prep_is_torch_antialiased_bicubic(shape):
    rng = np.random.default_rng(shape[0])
    image = rng.integers(0, 256, shape + (3,), dtype=np.uint8)
    ours = prepare_image(Image.fromarray(image), ImagePrep("square_float"), SIZE)
    assert ours.dtype == np.float32 and ours.shape == (SIZE, SIZE, 3)
    expected = torch.from_numpy(image.astype(np.float32) / 255.0).permute(2, 0, 1)[None]
    expected = F.interpolate(expected, size=(SIZE, SIZE), mode="bicubic", antialias=True, align_corners=False)
    np.testing.assert_allclose(ours / 255.0, expected[0].permute(1, 2, 0).numpy(), atol=1e-5, rtol=0)
    uint8 = prepare_image(Image.fromarray(image), ImagePrep("square"), SIZE)
    assert np.abs(ours - uint8).max() > 0.5 or shape == (32, 32)


@pytest.fixture(scope="module")
def tiny():
    """The method, the tiny-text backbone (text tower kept) at 32 px, and its weights as a plain params dict: the
    vision tower it runs and the text tower drawn as the loader draws it (``init_clip`` of the full config)."""
    backbone = load_backbone("random-" + ARCH, image_size=SIZE, seed=3, with_text=True)
    params = {"visual": backbone.params["visual"], "text": init_clip(get_architecture(ARCH), 3)["text"]}
    return get_method("winclip"), backbone, params, get_architecture(ARCH)


@pytest.fixture(scope="module")
def widget(tmp_path_factory):
    """A synthetic MVTec tree of 48 px images (resized to 32 by the pipeline): test set and train/good."""
    root = tmp_path_factory.mktemp("winclip_tree")
    jdata.write_synthetic_mvtec(root, "widget", num_normal=4, num_anomalous=5, num_train=3, size=48, seed=2)
    test = jdata.read_dataset("mvtec", root, "widget")
    train = jdata.read_dataset("mvtec", root, "widget", split="train")
    return jdata.FileImages(test, root=root), jdata.FileImages(train, root=root), test, train


@pytest.mark.parametrize("few_shot", [False, True])
def test_pipeline_on_files_equals_torch_transform_and_the_pure_functions(tiny, widget, few_shot):
    method, backbone, params, arch = tiny
    source, train, test_set, train_set = widget
    config = method.configure({}, RunContext("mvtec", SIZE, 3 if few_shot else 0))
    assert method.prep(config, SIZE) == ImagePrep("square_float")
    result = run_category(Scorer(method, config, backbone, None, batch_size=4), source, "widget",
                          train if few_shot else None)

    def inputs(image_set):
        return np.stack([torch_transform(np.asarray(jdata.load_image(p)), SIZE) for p in image_set.paths])

    wconfig = WinCLIPConfig(map_size=SIZE)
    text = text_embeddings(params, arch, "widget")
    memory = winclip_memory(winclip_features(params, inputs(train_set), arch, wconfig)) if few_shot else None
    image, maps = winclip_scores(winclip_features(params, inputs(test_set), arch, wconfig), text, memory, wconfig)
    np.testing.assert_allclose(result.image_scores, np.asarray(image), atol=1e-5, rtol=0)
    np.testing.assert_allclose(result.maps, np.asarray(maps), atol=1e-5, rtol=0)
    assert result.masks.shape == (len(source), SIZE, SIZE) and result.patch_scores.shape == (len(source), 4, 4)


def test_class_name_overrides_the_object_word(tiny):
    method, backbone, params, arch = tiny
    named = method.configure({"class_name": "metal nut"}, RunContext("mvtec", SIZE))
    ours = np.asarray(winclip_prepare(named, backbone, "metal_nut"))
    np.testing.assert_allclose(ours, np.asarray(text_embeddings(params, arch, "metal nut")), atol=1e-6, rtol=0)
    plain = np.asarray(winclip_prepare(method.configure({}, RunContext("mvtec", SIZE)), backbone, "metal_nut"))
    np.testing.assert_allclose(plain, np.asarray(text_embeddings(params, arch, "metal_nut")), atol=1e-6, rtol=0)
    assert np.abs(ours - plain).max() > 1e-4


def test_few_shot_staged_equals_fused_and_shards_exactly(tiny):
    method, backbone, _, _ = tiny
    images, _, _, _ = jdata.make_synthetic_set(6, 5, size=SIZE, seed=4)
    refs, _, _, _ = jdata.make_synthetic_set(3, 0, size=SIZE, seed=9)
    config = method.configure({}, RunContext("synthetic", SIZE, 3))
    extract = method.extractor(config, backbone)
    prepared = method.prepare(config, backbone, "synthetic")
    state = method.fit(config, extract(refs), None, prepared)
    features = extract(images)
    fused, _ = jax.jit(lambda f: method.score(config, state, f, None))(features)
    clock = StageClock()
    staged, _ = method.staged(config, state, features, None, clock)
    assert set(clock.run_seconds) == {"zero_shot", "few_shot"}
    np.testing.assert_allclose(np.asarray(staged.patch_scores), np.asarray(fused.patch_scores), atol=2e-6, rtol=0)
    np.testing.assert_allclose(np.asarray(staged.image_scores), np.asarray(fused.image_scores), atol=2e-6, rtol=0)
    for shards in (8,):
        sharded, _ = method.staged(config, state, features, device_mesh(shards), StageClock())
        np.testing.assert_array_equal(np.asarray(sharded.patch_scores), np.asarray(staged.patch_scores))
        np.testing.assert_array_equal(np.asarray(sharded.image_scores), np.asarray(staged.image_scores))


def test_prepare_needs_the_text_tower(tiny):
    method = tiny[0]
    vision_only = load_backbone("random-" + ARCH, image_size=SIZE, seed=3)
    with pytest.raises(ValueError, match="text tower"):
        method.prepare(method.configure({}, RunContext("mvtec", SIZE)), vision_only, "widget")


CLI = ["--method", "winclip", "--backbone", "random-" + ARCH, "--image-size", str(SIZE), "--quiet"]


def test_command_line_demo_few_shot_with_class_name(tmp_path, capsys):
    assert main(CLI + ["--shots", "2", "--class-name", "widget", "--profile", "stages", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "method: winclip" in printed and "shots: 2" in printed
    for stage in ("extract", "prepare", "zero_shot", "few_shot", "upsample"):
        assert f"| {stage}" in printed
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["status"] == "complete" and results["method_config"]["class_name"] == "widget"
    assert len(list((tmp_path / "heatmaps" / "synthetic").glob("*.png"))) == 28


@pytest.mark.parametrize("args,fragment", [
    (["--class-name", " "], "--class-name"),
    (["--method", "musc", "--class-name", "x"], "--class-name"),
    (["--seeds", "0,1"], "--seeds"),
])
def test_command_line_errors(tmp_path, capsys, args, fragment):
    argv = CLI + ["--out", str(tmp_path / "o")] + args
    if "--method" in args:
        argv = argv[2:]
    code = None
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2 and fragment in err and "Traceback" not in err
