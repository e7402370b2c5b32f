"""Flax CLIP port vs PyTorch (transformers CLIPModel) on tiny random models saved the way each source does.

Sources: Hugging Face folders (save_pretrained; CLIPModel, CLIPVisionModel, CLIPVisionModelWithProjection),
OpenAI-named state dicts written by this file's own converter (torch.save and a TorchScript archive), and
OpenCLIP-style dicts (module. prefix, safetensors). Every tap, the image and the text embedding must agree
with PyTorch to 1e-5 in float32.
"""

import jax
import numpy as np
import pytest
import torch
import transformers
from safetensors.torch import save_file

from jzad.backbone import (
    CLIPConfig,
    abstract_params,
    TextConfig,
    VisionConfig,
    encode_image,
    encode_text,
    flax_to_openai,
    hf_to_openai,
    load_checkpoint,
    openai_to_flax,
    openai_to_hf,
    with_image_size,
)

TOL = 1e-5


class Node(torch.nn.Module):
    """Container for the TorchScript archive: parameters laid out under OpenAI's key names."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def tiny_hf_clip(seed, *, width=32, heads=4, layers=3, patch=4, image=16, mlp=48, act="quick_gelu", eos=98):
    """A random transformers CLIPModel with every parameter perturbed (so zero biases cannot hide bugs)."""
    torch.manual_seed(seed)
    vision = dict(
        hidden_size=width, intermediate_size=mlp, num_hidden_layers=layers, num_attention_heads=heads,
        image_size=image, patch_size=patch, hidden_act=act, projection_dim=16,
    )
    text = dict(
        hidden_size=24, intermediate_size=40, num_hidden_layers=2, num_attention_heads=3, vocab_size=99,
        max_position_embeddings=12, hidden_act=act, eos_token_id=eos, bos_token_id=97, pad_token_id=0,
        projection_dim=16,
    )
    config = transformers.CLIPConfig(vision_config=vision, text_config=text, projection_dim=16)
    model = transformers.CLIPModel(config).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.05 * torch.randn_like(param))
    return model


def reference_openai_state(model):
    """Independent HF -> OpenAI key converter (the test's own, not jzad's table)."""
    sd = {k: v.detach().clone() for k, v in model.state_dict().items() if not k.endswith("position_ids")}
    out = {}

    def blocks(hf_prefix, oa_prefix, layers):
        for i in range(layers):
            h, o = f"{hf_prefix}.encoder.layers.{i}.", f"{oa_prefix}transformer.resblocks.{i}."
            out[o + "ln_1.weight"] = sd[h + "layer_norm1.weight"]
            out[o + "ln_1.bias"] = sd[h + "layer_norm1.bias"]
            out[o + "ln_2.weight"] = sd[h + "layer_norm2.weight"]
            out[o + "ln_2.bias"] = sd[h + "layer_norm2.bias"]
            for kind in ("weight", "bias"):
                out[o + f"attn.in_proj_{kind}"] = torch.cat(
                    [sd[h + f"self_attn.{n}_proj.{kind}"] for n in ("q", "k", "v")], dim=0
                )
                out[o + f"attn.out_proj.{kind}"] = sd[h + f"self_attn.out_proj.{kind}"]
                out[o + f"mlp.c_fc.{kind}"] = sd[h + f"mlp.fc1.{kind}"]
                out[o + f"mlp.c_proj.{kind}"] = sd[h + f"mlp.fc2.{kind}"]

    v = "vision_model"
    out["visual.conv1.weight"] = sd[f"{v}.embeddings.patch_embedding.weight"]
    out["visual.class_embedding"] = sd[f"{v}.embeddings.class_embedding"]
    out["visual.positional_embedding"] = sd[f"{v}.embeddings.position_embedding.weight"]
    out["visual.ln_pre.weight"] = sd[f"{v}.pre_layrnorm.weight"]
    out["visual.ln_pre.bias"] = sd[f"{v}.pre_layrnorm.bias"]
    out["visual.ln_post.weight"] = sd[f"{v}.post_layernorm.weight"]
    out["visual.ln_post.bias"] = sd[f"{v}.post_layernorm.bias"]
    out["visual.proj"] = sd["visual_projection.weight"].T.contiguous()
    blocks(v, "visual.", model.config.vision_config.num_hidden_layers)
    t = "text_model"
    out["token_embedding.weight"] = sd[f"{t}.embeddings.token_embedding.weight"]
    out["positional_embedding"] = sd[f"{t}.embeddings.position_embedding.weight"]
    out["ln_final.weight"] = sd[f"{t}.final_layer_norm.weight"]
    out["ln_final.bias"] = sd[f"{t}.final_layer_norm.bias"]
    out["text_projection"] = sd["text_projection.weight"].T.contiguous()
    out["logit_scale"] = sd["logit_scale"]
    blocks(t, "", model.config.text_config.num_hidden_layers)
    return out


def torchscript_archive(state, path):
    """Save state (OpenAI names plus OpenAI's TorchScript metadata entries) as a scripted module."""
    root = Node()
    for key, tensor in state.items():
        *parents, leaf = key.split(".")
        module = root
        for part in parents:
            if not hasattr(module, part):
                module.add_module(part, Node())
            module = getattr(module, part)
        if tensor.is_floating_point():
            module.register_parameter(leaf, torch.nn.Parameter(tensor.clone().half()))
        else:
            module.register_buffer(leaf, tensor.clone())
    torch.jit.save(torch.jit.script(root), str(path))


def reference_outputs(model, pixels, ids, taps):
    with torch.no_grad():
        vis = model.vision_model(pixel_values=torch.from_numpy(pixels).permute(0, 3, 1, 2), output_hidden_states=True)
        image = model.get_image_features(pixel_values=torch.from_numpy(pixels).permute(0, 3, 1, 2))
        text = model.get_text_features(input_ids=torch.from_numpy(ids).long())
    return [vis.hidden_states[t].numpy() for t in taps], image.pooler_output.numpy(), text.pooler_output.numpy()


def random_inputs(model, seed, batch=2, length=10):
    rng = np.random.default_rng(seed)
    size = model.config.vision_config.image_size
    pixels = rng.normal(size=(batch, size, size, 3)).astype(np.float32)
    text = model.config.text_config
    ids = rng.integers(1, text.vocab_size - 2, size=(batch, length)).astype(np.int32)
    for row, end in enumerate(rng.integers(3, length, size=batch)):
        ids[row, end] = text.eos_token_id if text.eos_token_id != 2 else text.vocab_size - 1
        ids[row, end + 1 :] = 0
    return pixels, ids


def assert_parity(loaded, model, seed, taps):
    pixels, ids = random_inputs(model, seed)
    ref_taps, ref_image, ref_text = reference_outputs(model, pixels, ids, taps)
    got_taps, got_image = encode_image(loaded.params, pixels, loaded.config, taps)
    for tap, got, ref in zip(taps, got_taps, ref_taps):
        assert got.shape == ref.shape, tap
        assert np.abs(np.asarray(got) - ref).max() <= TOL, f"tap {tap}"
    assert np.abs(np.asarray(got_image) - ref_image).max() <= TOL
    got_text = encode_text(loaded.params, ids, loaded.config)
    assert np.abs(np.asarray(got_text) - ref_text).max() <= TOL


HF_CASES = [
    dict(seed=0, width=32, heads=4, patch=4, image=16, act="quick_gelu", eos=98),
    dict(seed=1, width=48, heads=2, patch=8, image=24, act="gelu", eos=2),
    dict(seed=2, width=40, heads=5, patch=5, image=20, mlp=72, act="gelu", eos=98),
]


@pytest.mark.parametrize("case", HF_CASES, ids=lambda c: f"w{c['width']}h{c['heads']}p{c['patch']}-{c['act']}")
def test_hf_folder_parity(tmp_path, case):
    model = tiny_hf_clip(**case)
    model.save_pretrained(tmp_path / "hf")
    loaded = load_checkpoint(tmp_path / "hf")
    vision = model.config.vision_config
    assert loaded.config.vision == VisionConfig(
        width=vision.hidden_size, layers=3, heads=vision.num_attention_heads, patch_size=vision.patch_size,
        image_size=vision.image_size, mlp_dim=vision.intermediate_size,
    )
    assert loaded.config.activation == case["act"]
    assert loaded.config.text.pooling == ("argmax" if case["eos"] == 2 else "eos")
    assert loaded.source_format.startswith("huggingface-")
    assert_parity(loaded, model, case["seed"], taps=(1, 2, 3))


def test_openai_state_dicts_parity(tmp_path):
    """OpenAI names via torch.save, a TorchScript archive (fp16, with metadata entries) and OpenCLIP forms."""
    model = tiny_hf_clip(3, width=64, heads=4, patch=4, image=16)
    state = reference_openai_state(model)
    arch = load_checkpoint(_save_hf(model, tmp_path)).config.replace(activation="quick_gelu")
    torch.save(state, tmp_path / "openai.pt")
    loaded = load_checkpoint(tmp_path / "openai.pt", arch=arch)
    assert loaded.source_format == "torch"
    assert_parity(loaded, model, 3, taps=(1, 3))
    # Shapes cannot tell heads: without arch, widths that are not multiples of 64 are refused (text: 24).
    with pytest.raises(ValueError, match=r"heads of width 24 \(from 'token_embedding\.weight'\)"):
        load_checkpoint(tmp_path / "openai.pt")

    meta = {"input_resolution": torch.tensor(16), "context_length": torch.tensor(12), "vocab_size": torch.tensor(99)}
    torchscript_archive({**state, **meta}, tmp_path / "ViT-tiny.pt")
    scripted = load_checkpoint(tmp_path / "ViT-tiny.pt", arch=arch)
    assert scripted.source_format == "torchscript"
    fp16_model = tiny_hf_clip(3, width=64, heads=4, patch=4, image=16)
    fp16_model.load_state_dict(
        {k: v.half().float() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    )
    assert_parity(scripted, fp16_model, 3, taps=(2,))

    torch.save({"epoch": 3, "state_dict": {"module." + k: v for k, v in state.items()}}, tmp_path / "openclip.pt")
    wrapped = load_checkpoint(tmp_path / "openclip.pt", arch=arch)
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "open_clip_model.safetensors")
    safe = load_checkpoint(tmp_path / "open_clip_model.safetensors", arch=arch)
    for other in (wrapped, safe):
        for a, b in zip(_leaves(other.params), _leaves(loaded.params)):
            np.testing.assert_array_equal(a, b)


def _save_hf(model, tmp_path):
    model.save_pretrained(tmp_path / "hf_ref")
    return tmp_path / "hf_ref"


def _leaves(tree):
    return jax.tree.leaves(tree)


def test_vision_only_hf_models(tmp_path):
    """CLIPVisionModel (no prefix in transformers 5, no projection) and CLIPVisionModelWithProjection."""
    model = tiny_hf_clip(4)
    pixels, _ = random_inputs(model, 4)
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2)
    vision_config = model.config.vision_config

    plain = transformers.CLIPVisionModel(vision_config).eval()
    prefix = "vision_model."
    plain.load_state_dict({k.removeprefix(prefix): v for k, v in model.state_dict().items() if k.startswith(prefix)})
    plain.save_pretrained(tmp_path / "plain")
    loaded = load_checkpoint(tmp_path / "plain")
    assert loaded.config.text is None and loaded.config.embed_dim is None
    taps, embed = encode_image(loaded.params, pixels, loaded.config, (2, 3))
    with torch.no_grad():
        ref = plain(pixel_values=x, output_hidden_states=True)
    assert np.abs(np.asarray(taps[0]) - ref.hidden_states[2].numpy()).max() <= TOL
    assert np.abs(np.asarray(embed) - ref.pooler_output.numpy()).max() <= TOL

    projected = transformers.CLIPVisionModelWithProjection(vision_config).eval()
    missing = projected.load_state_dict(
        {k: v for k, v in model.state_dict().items() if k.startswith(("vision_model.", "visual_projection"))},
        strict=False,
    )
    assert not missing.missing_keys
    projected.save_pretrained(tmp_path / "projected")
    loaded = load_checkpoint(tmp_path / "projected")
    assert loaded.config.embed_dim == 16 and loaded.config.text is None
    _, embed = encode_image(loaded.params, pixels, loaded.config, (1,))
    with torch.no_grad():
        ref = projected(pixel_values=x).image_embeds.numpy()
    assert np.abs(np.asarray(embed) - ref).max() <= TOL


def test_mapping_tables_both_ways(tmp_path):
    """HF -> OpenAI -> Flax -> OpenAI -> HF reproduces every tensor exactly; the Flax-exported HF dict loads
    strictly into a fresh transformers model with identical outputs."""
    model = tiny_hf_clip(5)
    hf_state = {k: v.numpy() for k, v in model.state_dict().items() if not k.endswith("position_ids")}
    openai_state = hf_to_openai(hf_state)
    reference = {k: v.numpy() for k, v in reference_openai_state(model).items()}
    assert set(openai_state) == set(reference)
    for key, value in reference.items():
        np.testing.assert_array_equal(openai_state[key], value, err_msg=key, strict=True)
    config = load_checkpoint(_save_hf(model, tmp_path)).config
    params = openai_to_flax(openai_state, config)
    abstract = abstract_params(config)
    assert jax.tree.structure(params) == jax.tree.structure(abstract)
    assert [np.shape(x) for x in jax.tree.leaves(params)] == [a.shape for a in jax.tree.leaves(abstract)]
    back = flax_to_openai(params, config)
    assert set(back) == set(openai_state)
    for key in back:
        np.testing.assert_array_equal(back[key], openai_state[key], err_msg=key, strict=True)
    hf_back = openai_to_hf(back)
    assert set(hf_back) == set(hf_state)
    fresh = transformers.CLIPModel(model.config).eval()
    fresh.load_state_dict({k: torch.from_numpy(v) for k, v in hf_back.items()}, strict=False)
    for key, value in fresh.state_dict().items():
        if not key.endswith("position_ids"):
            np.testing.assert_array_equal(value.numpy(), hf_state[key], err_msg=key, strict=True)
    # The Flax layout is what the table says: fused q|k|v kernel is the transposed in_proj, conv is HWIO.
    block = params["visual"]["blocks"][1]
    np.testing.assert_array_equal(
        block["attn"]["qkv"]["kernel"][:, : config.vision.width],
        hf_state["vision_model.encoder.layers.1.self_attn.q_proj.weight"].T,
    )
    np.testing.assert_array_equal(
        params["visual"]["conv1"]["kernel"][1, 2, 0],
        hf_state["vision_model.embeddings.patch_embedding.weight"][:, 0, 1, 2],
    )


@pytest.mark.parametrize("size", [24, 12])
def test_non_native_size_matches_interpolate_pos_encoding(tmp_path, size):
    model = tiny_hf_clip(6, width=32, heads=4, patch=4, image=16, act="gelu")
    loaded = load_checkpoint(_save_hf(model, tmp_path))
    params, config = with_image_size(loaded.params, loaded.config, size)
    assert config.vision.grid_size == size // 4 and config.vision.image_size == size
    rng = np.random.default_rng(size)
    pixels = rng.normal(size=(2, size, size, 3)).astype(np.float32)
    taps, embed = encode_image(params, pixels, config, (1, 3))
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2)
    with torch.no_grad():
        ref = model.vision_model(pixel_values=x, interpolate_pos_encoding=True, output_hidden_states=True)
        ref_embed = model.get_image_features(pixel_values=x, interpolate_pos_encoding=True).pooler_output
    assert np.abs(np.asarray(taps[0]) - ref.hidden_states[1].numpy()).max() <= TOL
    assert np.abs(np.asarray(taps[1]) - ref.hidden_states[3].numpy()).max() <= TOL
    assert np.abs(np.asarray(embed) - ref_embed.numpy()).max() <= TOL
    with pytest.raises(ValueError, match="with_image_size"):
        encode_image(loaded.params, pixels, loaded.config, (1,))


# ------------------------------------------------------------------ bad checkpoints


@pytest.fixture(scope="module")
def good_state():
    model = tiny_hf_clip(7)
    return {k: v.clone() for k, v in reference_openai_state(model).items()}, model


def test_missing_key_is_named(tmp_path, good_state):
    state, _ = good_state
    broken = dict(state)
    del broken["visual.transformer.resblocks.1.mlp.c_fc.bias"]
    torch.save(broken, tmp_path / "missing.pt")
    with pytest.raises(ValueError, match=r"missing keys \['visual\.transformer\.resblocks\.1\.mlp\.c_fc\.bias'\]"):
        load_checkpoint(tmp_path / "missing.pt", arch=_tiny_arch(good_state))


def test_unexpected_key_is_named(tmp_path, good_state):
    state, _ = good_state
    torch.save({**state, "visual.extra_head.weight": torch.zeros(3)}, tmp_path / "extra.pt")
    with pytest.raises(ValueError, match=r"unexpected keys \['visual\.extra_head\.weight'\]"):
        load_checkpoint(tmp_path / "extra.pt", arch=_tiny_arch(good_state))


def test_wrong_shape_names_key_and_shapes(tmp_path, good_state):
    state, _ = good_state
    arch = _tiny_arch(good_state)
    wider = CLIPConfig(
        vision=VisionConfig(width=32, layers=3, heads=4, patch_size=4, image_size=16, mlp_dim=64),
        text=arch.text,
        embed_dim=16,
    )
    torch.save(state, tmp_path / "tiny.pt")
    key = r"'visual\.transformer\.resblocks\.0\.mlp\.c_fc\.weight'"
    with pytest.raises(ValueError, match=key + r" has shape \(48, 32\).*\(64, 32\)"):
        load_checkpoint(tmp_path / "tiny.pt", arch=wider)
    with pytest.raises(ValueError, match=r"'visual\.conv1\.weight' has shape \(32, 3, 4, 4\).*\(768, 3, 16, 16\)"):
        load_checkpoint(tmp_path / "tiny.pt", arch="ViT-B/16")


def test_unknown_architecture(tmp_path, good_state):
    state, _ = good_state
    torch.save(state, tmp_path / "tiny.pt")
    with pytest.raises(ValueError, match=r"unknown architecture 'ViT-H-99'.*ViT-L-14-336"):
        load_checkpoint(tmp_path / "tiny.pt", arch="ViT-H-99")
    with pytest.raises(ValueError, match=r"cannot infer the attention heads of width 32"):
        load_checkpoint(tmp_path / "tiny.pt")


def test_truncated_and_missing_files(tmp_path, good_state):
    state, model = good_state
    torch.save(state, tmp_path / "full.pt")
    data = (tmp_path / "full.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"cut\.pt"):
        load_checkpoint(tmp_path / "cut.pt", arch=_tiny_arch(good_state))
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "full.safetensors")
    data = (tmp_path / "full.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) - 100])
    with pytest.raises(ValueError, match=r"cut\.safetensors"):
        load_checkpoint(tmp_path / "cut.safetensors", arch=_tiny_arch(good_state))
    with pytest.raises(FileNotFoundError, match=r"nothere\.pt"):
        load_checkpoint(tmp_path / "nothere.pt")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no weights in .*empty_dir"):
        load_checkpoint(tmp_path / "empty_dir")


def _tiny_arch(good_state):
    _, model = good_state
    vision, text = model.config.vision_config, model.config.text_config
    return CLIPConfig(
        vision=VisionConfig(width=32, layers=3, heads=4, patch_size=4, image_size=16, mlp_dim=48),
        text=TextConfig(
            width=24, layers=2, heads=3, context_length=12, vocab_size=99, mlp_dim=40, pooling="eos",
            eos_token_id=text.eos_token_id,
        ),
        embed_dim=16,
        activation=vision.hidden_act,
    )


def test_hf_heads_must_agree_with_arch(tmp_path):
    """Heads do not show in tensor shapes; a HF config.json that disagrees with --arch is an error."""
    model = tiny_hf_clip(8, layers=1)
    folder = _save_hf(model, tmp_path)
    config = load_checkpoint(folder).config
    two_heads = config.replace(vision=VisionConfig(**{**config.vision.__dict__, "heads": 2}))
    with pytest.raises(ValueError, match=r"config\.json: vision num_attention_heads=4 but the architecture has 2"):
        load_checkpoint(folder, arch=two_heads)
