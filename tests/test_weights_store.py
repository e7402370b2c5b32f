"""Ported checkpoints: orbax round trip, manifest checks (sha256, tree), the CLI, the catalogue, name
resolution and the offline hub error. No network: HF_HUB_OFFLINE=1 (conftest)."""

import json

import jax
import numpy as np
import pytest
import torch
import transformers

from jzad.backbone import encode_image, load_checkpoint
from jzad.features import load_clip, load_image_encoder
from jzad.weights import (
    HubUnavailableError,
    catalogue_entry,
    load_catalogue,
    load_ported,
    open_checkpoint,
    port,
    read_manifest,
    sha256_file,
    weights_dir,
)
from jzad.weights.__main__ import main as weights_cli
from jzad.weights.catalogue import CATALOGUE

TINY_VOCAB = 99


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    """A tiny random CLIPModel saved with save_pretrained, plus a CLIP tokenizer of matching size."""
    folder = tmp_path_factory.mktemp("hf_tiny")
    torch.manual_seed(11)
    config = transformers.CLIPConfig(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=16, patch_size=4, projection_dim=16),
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         vocab_size=TINY_VOCAB, max_position_embeddings=12, eos_token_id=98, bos_token_id=97,
                         projection_dim=16),
        projection_dim=16,
    )
    model = transformers.CLIPModel(config).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.05 * torch.randn_like(param))
    model.save_pretrained(folder)
    # A CLIP BPE vocabulary of TINY_VOCAB tokens: 97 single characters, then the two special tokens.
    chars = [chr(c) for c in range(ord("!"), ord("!") + 97)]
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({"<|startoftext|>": 97, "<|endoftext|>": 98})
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return folder, model


def _equal_trees(a, b):
    leaves_a, tree_a = jax.tree_util.tree_flatten(a)
    leaves_b, tree_b = jax.tree_util.tree_flatten(b)
    assert tree_a == tree_b
    for x, y in zip(leaves_a, leaves_b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_round_trip_and_manifest(hf_folder, tmp_path):
    folder, model = hf_folder
    target = port(folder, "tiny-test", image_size=24, activation="gelu", taps=(1, 2), weights_dir_override=tmp_path)
    assert target == (tmp_path / "tiny-test").resolve()
    manifest = read_manifest(target)
    source_file = folder / "model.safetensors"
    assert manifest["source_sha256"] == sha256_file(source_file)
    assert manifest["source"]["files"][0]["path"] == str(source_file)
    assert (manifest["image_size"], manifest["native_image_size"], manifest["activation"]) == (24, 16, "gelu")
    assert manifest["source"]["activation"] == "quick_gelu" and manifest["taps"] == [1, 2]
    assert manifest["config"]["vision"]["width"] == 32 and manifest["tokenizer"] == "tokenizer"
    assert "created" in manifest and manifest["architecture"] is None
    ported = load_ported(target)
    _equal_trees(ported.params, load_checkpoint(folder).params)
    assert ported.config == load_checkpoint(folder).config
    with pytest.raises(FileExistsError, match="already exists"):
        port(folder, "tiny-test", weights_dir_override=tmp_path)


def test_tampered_params_file_is_refused(hf_folder, tmp_path):
    folder, _ = hf_folder
    target = port(folder, "tamper", weights_dir_override=tmp_path)
    manifest = read_manifest(target)
    data_files = sorted((target / "params").rglob("*"), key=lambda f: f.stat().st_size if f.is_file() else -1)
    victim = data_files[-1]
    raw = bytearray(victim.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    victim.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=rf"{victim.name}: sha256 .* does not match the manifest"):
        load_ported(target)
    assert manifest["params"]["files"][str(victim.relative_to(target / "params"))] != sha256_file(victim)


def test_manifest_tree_mismatch_is_refused(hf_folder, tmp_path):
    folder, _ = hf_folder
    target = port(folder, "tree", weights_dir_override=tmp_path)
    manifest = json.loads((target / "manifest.json").read_text())
    manifest["config"]["vision"]["layers"] = 3
    (target / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=r"params tree does not match its config.*visual/blocks/2"):
        load_ported(target)


def test_image_encoder_from_ported_name(hf_folder, tmp_path, monkeypatch):
    folder, model = hf_folder
    port(folder, "tiny-enc", image_size=24, taps=(1, 2), weights_dir_override=tmp_path)
    monkeypatch.setenv("JZAD_WEIGHTS_DIR", str(tmp_path))
    assert weights_dir() == tmp_path.resolve()
    encoder = load_image_encoder("tiny-enc")
    assert encoder.image_size == 24 and encoder.taps == (1, 2) and encoder.config.activation == "quick_gelu"
    assert encoder.config.text is None and set(encoder.params) == {"visual"}
    pixels = np.random.default_rng(0).normal(size=(2, 24, 24, 3)).astype(np.float32)
    taps, embeds = encoder(pixels)
    with torch.no_grad():
        ref = model.vision_model(
            pixel_values=torch.from_numpy(pixels).permute(0, 3, 1, 2), interpolate_pos_encoding=True,
            output_hidden_states=True,
        )
    assert np.abs(np.asarray(taps[1]) - ref.hidden_states[2].numpy()).max() <= 1e-5
    # The raw HF folder loads the same way (ported in memory), with explicit overrides.
    direct = load_image_encoder(folder, image_size=24, taps=(1, 2))
    np.testing.assert_allclose(np.asarray(direct(pixels)[1]), np.asarray(embeds), atol=1e-6)
    params, config, tokenizer = load_clip("tiny-enc", image_size=16)
    assert config.text is not None and tokenizer is not None and tokenizer.vocab_size == TINY_VOCAB
    assert encode_image(params, pixels[:, :16, :16], config, (2,))[0][0].shape == (2, 17, 32)


def test_cli_port_and_list(hf_folder, tmp_path, capsys):
    folder, _ = hf_folder
    args = ["port", str(folder), "--name", "cli-tiny", "--image-size", "20", "--weights-dir", str(tmp_path)]
    assert weights_cli(args) == 0
    out = capsys.readouterr().out
    assert "cli-tiny" in out and "width 32, layers 2, heads 4, patch 4, native 16px" in out
    assert load_ported(tmp_path / "cli-tiny").image_size == 20
    assert weights_cli(["list", "--weights-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "vit-l-14-336" in out and "openai/clip-vit-large-patch14-336" in out
    assert any(line.startswith("cli-tiny") and " yes " in line for line in out.splitlines())
    assert any(line.startswith("vit-b-16 ") and " no " in line for line in out.splitlines())
    assert weights_cli(["port", str(tmp_path / "absent.pt"), "--name", "x", "--weights-dir", str(tmp_path)]) == 2
    assert "absent.pt" in capsys.readouterr().err


def test_catalogue_entries_and_lookup():
    catalogue = load_catalogue()
    assert set(catalogue) == {"vit-b-32", "vit-b-16", "vit-l-14", "vit-l-14-336", "vit-b-16-plus-240",
                              "vit-l-14-datacomp", "wide-resnet50-2", "efficientnet-lite0", "efficientnet-lite1",
                              "efficientnet-lite2", "dinov2-vits14", "dinov2-vitb14", "dinov2-vitl14", "dinov2-vitg14",
                              "dino-vitb16"}
    musc = catalogue_entry("ViT-L-14-336")
    assert musc.native_image_size == 336 and musc.activation == "quick_gelu"
    assert musc.hf_id == "openai/clip-vit-large-patch14-336"
    assert catalogue_entry("vit-b-16-plus-240").source["pretrained"] == "laion400m_e31"
    with pytest.raises(ValueError, match="unknown checkpoint name 'vit-z'.*vit-l-14-336"):
        catalogue_entry("vit-z")
    assert CATALOGUE.is_file() and CATALOGUE.parent.name == "weights" and CATALOGUE.parent.parent.name == "jzad"


def test_offline_hub_errors_name_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    fix = r"python -m jzad\.weights port /path/to/ViT-L-14-336px\.pt --name vit-l-14-336"
    with pytest.raises(HubUnavailableError, match=r"HF_HUB_OFFLINE.*" + fix) as caught:
        open_checkpoint("vit-l-14-336", weights_dir_override=tmp_path)
    assert isinstance(caught.value, ConnectionError) and isinstance(caught.value, FileNotFoundError)
    with pytest.raises(ConnectionError, match=r"cannot download openai/clip-vit-base-patch16"):
        port("openai/clip-vit-base-patch16", "b16", weights_dir_override=tmp_path)
    with pytest.raises(ValueError, match=r"unknown checkpoint 'no-such-model'"):
        open_checkpoint("no-such-model", weights_dir_override=tmp_path)
    assert not any(tmp_path.iterdir())


def test_hub_file_choice():
    """Which files a hub download asks for: safetensors first, shard patterns, a clear error otherwise."""
    from jzad.weights.hub import _pick_weights, looks_like_hf_id

    assert _pick_weights(["config.json", "pytorch_model.bin", "model.safetensors"]) == ["model.safetensors"]
    assert _pick_weights(["pytorch_model.bin.index.json", "pytorch_model-00001-of-00002.bin"]) == [
        "pytorch_model.bin.index.json",
        "pytorch_model-*.bin",
    ]
    with pytest.raises(ValueError, match="no CLIP weights file"):
        _pick_weights(["config.json", "tf_model.h5"])
    assert looks_like_hf_id("openai/clip-vit-large-patch14-336")
    assert not looks_like_hf_id("/abs/file.pt") and not looks_like_hf_id("vit-l-14-336")
