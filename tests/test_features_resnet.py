"""The ResNet backbone family: uint8 in, ImageNet-normalised inside jit, layer2/layer3 out, against the PyTorch
module with torchvision's structure; porting torchvision / timm files with the family recorded; dispatch by name."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from benchmarks.reference_torch_resnet import TorchResNet
from jzad.backbone.resnet import IMAGENET_MEAN, IMAGENET_STD, get_resnet_config, init_resnet
from jzad.backbone.resnet_port import resnet_to_torch
from jzad.features import BACKBONE_FAMILIES, FeatureRequest, backbone_architecture, backbone_family, load_backbone
from jzad.features.types import BackboneRun
from jzad.weights import checkpoint_family, load_ported, open_checkpoint, port, read_manifest
from jzad.weights.__main__ import main as weights_cli

SIZE = 64


@pytest.fixture(scope="module")
def tiny_torch():
    """A tiny torchvision-layout ResNet with random weights (and running statistics) and its state dict."""
    config = get_resnet_config("tiny")
    params = init_resnet(config, seed=5)
    model = TorchResNet(config.layers, config.width_per_group, config.groups, config.base_width, 7).eval()
    state = {k: torch.from_numpy(v.copy()) for k, v in resnet_to_torch(params, config).items()}
    torch.manual_seed(0)
    state["fc.weight"], state["fc.bias"] = torch.randn(7, 4 * 8 * 8) * 0.01, torch.zeros(7)
    model.load_state_dict(state)
    return model, model.state_dict()


def torch_taps(model, images: np.ndarray, taps=("layer2", "layer3")):
    """torchvision's ToTensor + Normalize on uint8 NHWC, then the module's taps, as NHWC numpy."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    x = (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        return [t.permute(0, 2, 3, 1).numpy() for t in model.features(x, taps)]


def assert_matches(backbone, model, seed=0, taps=("layer2", "layer3")):
    images = np.random.default_rng(seed).integers(0, 256, (3, SIZE, SIZE, 3), dtype=np.uint8)
    out = backbone(images)
    expected = torch_taps(model, images, taps)
    assert len(out.layers) == len(expected) and out.embeds is None
    for o, e in zip(out.layers, expected):
        assert o.shape == e.shape
        assert float(np.abs(np.asarray(o) - e).max() / np.abs(e).max()) <= 1e-5


def test_random_names_dispatch_to_the_resnet_family():
    assert backbone_family("random-wide-resnet50-2") is BACKBONE_FAMILIES["resnet"]
    assert backbone_family("random-vit-b-16") is BACKBONE_FAMILIES["clip"]
    assert backbone_architecture("random-resnet50") == "resnet50"
    assert backbone_architecture("wide-resnet50-2") == "wide-resnet50-2"
    with pytest.raises(ValueError, match=r"unknown architecture 'resnet9'.*random-vit-b-16.*random-tiny-resnet"):
        load_backbone("random-resnet9")
    backbone = load_backbone("random-tiny-resnet", BackboneRun(image_size=SIZE), taps=(2, 3, 4), seed=2)
    assert backbone.family == "resnet" and backbone.architecture == "tiny-resnet"
    assert backbone.taps == ("layer2", "layer3", "layer4") and backbone.patch_size == 32
    assert backbone.info["grid"] == {"layer2": 8, "layer3": 4, "layer4": 2} and backbone.random_weights
    # Random weights are drawn from the seed, as the CLIP family's are.
    params = init_resnet("tiny", seed=2)
    np.testing.assert_array_equal(np.asarray(backbone.params["conv1"]["kernel"]), np.asarray(params["conv1"]["kernel"]))


def test_random_backbone_bad_settings_are_named():
    with pytest.raises(ValueError, match="^activation gelu: applies to ViT backbones"):
        load_backbone("random-tiny-resnet", activation="gelu")
    with pytest.raises(ValueError, match="multiple of 32"):
        load_backbone("random-tiny-resnet", image_size=40)
    with pytest.raises(ValueError, match="no text tower"):
        load_backbone("random-tiny-resnet", with_text=True)
    with pytest.raises(ValueError, match=r"ResNet stages are 1\.\.4"):
        load_backbone("random-tiny-resnet", taps=(2, 5))
    backbone = load_backbone("random-tiny-resnet", image_size=SIZE)
    with pytest.raises(ValueError, match="no image embedding"):
        backbone(np.zeros((1, SIZE, SIZE, 3), np.uint8), FeatureRequest(embedding=True))


def test_torchvision_file_ports_with_its_family_and_matches_torch(tiny_torch, tmp_path, capsys):
    model, state = tiny_torch
    file = tmp_path / "tiny_resnet.pth"
    torch.save(state, file)
    assert checkpoint_family(file) == "resnet"
    # --weights FILE: ported in memory, features equal the PyTorch module's on the same uint8 images.
    assert_matches(load_backbone(file, BackboneRun(image_size=SIZE)), model)
    # python -m jzad.weights port FILE --name NAME records the family; list shows it.
    folder = tmp_path / "weights"
    assert weights_cli(["port", str(file), "--name", "tiny-rn", "--taps", "layer3,layer4", "--weights-dir",
                        str(folder)]) == 0
    out = capsys.readouterr().out
    assert "resnet architecture tiny-resnet: blocks [1, 2, 1, 1], width_per_group 16" in out
    manifest = read_manifest(folder / "tiny-rn")
    assert (manifest["family"], manifest["architecture"], manifest["taps"]) == ("resnet", "tiny-resnet",
                                                                                 ["layer3", "layer4"])
    assert manifest["config"]["layers"] == [1, 2, 1, 1] and manifest["native_image_size"] is None
    ported = load_ported(folder / "tiny-rn")
    assert ported.family == "resnet" and ported.config == get_resnet_config("tiny")
    assert weights_cli(["list", "--weights-dir", str(folder)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.split()[:5] == ["tiny-rn", "resnet", "tiny-resnet", "-", "yes"] for line in lines)
    assert any(line.split()[:5] == ["wide-resnet50-2", "resnet", "wide-resnet50-2", "224", "no"] for line in lines)
    assert any(line.split()[:3] == ["vit-b-16", "clip", "ViT-B-16"] for line in lines)
    # The ported name loads with its recorded taps (explicit taps override them).
    backbone = load_backbone("tiny-rn", BackboneRun(image_size=SIZE), weights_dir=folder)
    assert backbone.taps == ("layer3", "layer4") and backbone.origin == str((folder / "tiny-rn").resolve())
    assert_matches(backbone, model, seed=1, taps=("layer3", "layer4"))
    assert_matches(load_backbone("tiny-rn", image_size=SIZE, taps=("layer2", "layer3"), weights_dir=folder), model)


def test_timm_style_safetensors_with_prefix_and_classifier(tiny_torch, tmp_path):
    model, state = tiny_torch
    file = tmp_path / "model.safetensors"
    save_file({f"model.{k}": v.contiguous() for k, v in state.items() if "num_batches" not in k}, str(file))
    assert checkpoint_family(file) == "resnet"
    opened = open_checkpoint(file)
    assert opened.family == "resnet" and opened.config == get_resnet_config("tiny")
    assert_matches(load_backbone(file, image_size=SIZE), model, seed=2)


def test_port_errors_name_the_key_and_both_shapes(tiny_torch, tmp_path, capsys):
    _, state = tiny_torch
    folder = tmp_path / "weights"
    # A catalogue name brings its architecture: the tiny tensors do not fit WideResNet-50-2's.
    file = tmp_path / "tiny.pth"
    torch.save(state, file)
    assert weights_cli(["port", str(file), "--name", "wide-resnet50-2", "--weights-dir", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "'conv1.weight' has shape (8, 3, 7, 7), the config expects (64, 3, 7, 7)" in err and str(file) in err
    missing = {k: v for k, v in state.items() if k != "layer3.0.downsample.1.running_mean"}
    torch.save(missing, file)
    with pytest.raises(ValueError, match=r"missing key 'layer3\.0\.downsample\.1\.running_mean' \(expected shape "
                                         r"\(128,\)\)"):
        port(file, "broken", weights_dir_override=folder)
    reshaped = dict(state, **{"layer2.0.conv1.weight": torch.zeros(16, 32, 3, 3)})
    torch.save(reshaped, file)
    with pytest.raises(ValueError, match=r"'layer2\.0\.conv1\.weight' has shape \(16, 32, 3, 3\), the config "
                                         r"expects \(4, 32, 1, 1\)"):
        port(file, "broken", weights_dir_override=folder)
    assert not (folder / "broken").exists()


def test_catalogue_resnet_not_ported_names_the_port_command(tmp_path):
    assert checkpoint_family("wide-resnet50-2", tmp_path) == "resnet"
    with pytest.raises(FileNotFoundError, match=r"python -m jzad\.weights port /path/to/wide_resnet50_2-95faca4d\.pth "
                                                r"--name wide-resnet50-2"):
        load_backbone("wide-resnet50-2", weights_dir=tmp_path)


def test_clip_manifests_without_a_family_still_load_as_clip(tmp_path):
    """Manifests written before families were recorded are CLIP's."""
    from jzad.weights.store import manifest_family

    assert manifest_family({"format_version": 1}) == "clip"
    manifest = {"format_version": 1, "family": "mobilenet", "config": {}, "params": {}, "activation": None,
                "image_size": None, "taps": None}
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="unknown checkpoint family 'mobilenet'"):
        read_manifest(tmp_path / "odd")
