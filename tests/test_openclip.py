"""OpenCLIP ViT-B-16-plus-240: port, text prompts and WinCLIP window passes against open_clip's own model.

open_clip is loaded through tests/openclip_shim.py (no torchvision here). The full architecture's tensor
table is checked against open_clip's model built on the meta device (no memory); numerical parity runs on
a reduced-depth model with the same widths (vision 896 wide, 14 heads of 64, patch 16, 240 px -> 15 x 15,
exact GELU, embed 640; text 640 wide, 10 heads, context 77, the real 49,408-token vocabulary): 2 vision
and 2 text blocks instead of 12 each, which keeps this file well under a minute on two CPU cores. Every
parameter is perturbed so zero biases and unit norms cannot hide a transposed or misplaced tensor.
"""

import numpy as np
import pytest
import torch

import openclip_shim
from jzad.backbone import ARCHITECTURES, CLIPConfig, TextConfig, VisionConfig, encode_image, load_checkpoint
from jzad.backbone.clip import embed_patches, encode_text, encode_tokens, encode_windows, vision_head
from jzad.backbone.config import architecture_name
from jzad.backbone.port import _expected_torch_shapes, infer_config, openai_to_flax
from jzad.methods.winclip import WinCLIPConfig, make_windows, prompt_ensemble, winclip_features

TOL = 1e-5
FULL = ARCHITECTURES["ViT-B-16-plus-240"]
VISION_CFG = dict(image_size=240, layers=12, width=896, patch_size=16)
TEXT_CFG = dict(context_length=77, vocab_size=49408, width=640, heads=10, layers=12)
REDUCED_LAYERS = 2


def openclip_model(layers, seed):
    model_module = openclip_shim.load()[0]
    torch.manual_seed(seed)
    model = model_module.CLIP(
        640, dict(VISION_CFG, layers=layers), dict(TEXT_CFG, layers=layers), quick_gelu=False
    ).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.02 * torch.randn_like(param))
    return model


@pytest.fixture(scope="module")
def ported(tmp_path_factory):
    """(open_clip model, jzad params, jzad config) of one reduced-depth random model, saved as OpenCLIP's
    training checkpoints are ({"state_dict": {"module." + name: tensor}} in a .pt file)."""
    model = openclip_model(REDUCED_LAYERS, seed=31)
    path = tmp_path_factory.mktemp("openclip") / "vit_b_16_plus_240-random.pt"
    torch.save({"epoch": 31, "state_dict": {"module." + k: v for k, v in model.state_dict().items()}}, path)
    reduced = FULL.replace(
        vision=VisionConfig(width=896, layers=REDUCED_LAYERS, heads=14, patch_size=16, image_size=240),
        text=TextConfig(width=640, layers=REDUCED_LAYERS, heads=10),
    )
    loaded = load_checkpoint(path, arch=reduced)
    assert loaded.config == reduced and loaded.config.activation == "gelu"
    return model, loaded.params, loaded.config


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(7)
    return rng.standard_normal((2, 240, 240, 3), dtype=np.float32)


def torch_images(images):
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()


def pre_ln_tokens(model, images):
    """open_clip's token sequence before ln_pre (the input of its patch_dropout, where anomalib hooks)."""
    captured = {}
    handle = model.visual.patch_dropout.register_forward_hook(lambda m, i, o: captured.setdefault("x", i[0]))
    model.visual.output_tokens = True
    with torch.no_grad():
        pooled, tokens = model.visual(torch_images(images))
    handle.remove()
    return captured["x"], pooled, tokens


def test_full_architecture_matches_openclip_tensors():
    model_module = openclip_shim.load()[0]
    with torch.device("meta"):
        model = model_module.CLIP(640, VISION_CFG, TEXT_CFG, quick_gelu=False)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes == _expected_torch_shapes(FULL)
    assert (model.visual.transformer.resblocks[0].attn.num_heads, model.transformer.resblocks[0].attn.num_heads) == (
        FULL.vision.heads,
        FULL.text.heads,
    )
    assert isinstance(model.visual.transformer.resblocks[0].mlp.gelu, torch.nn.GELU)
    assert model.visual.transformer.resblocks[0].mlp.gelu.approximate == "none" and FULL.activation == "gelu"
    inferred = infer_config({k: _Shape(s) for k, s in shapes.items()})
    assert architecture_name(inferred) == "ViT-B-16-plus-240"
    assert inferred.replace(activation="gelu") == FULL


class _Shape:
    """Stands in for a tensor in infer_config (which reads shapes only), so the full model needs no memory."""

    def __init__(self, shape):
        self.shape = shape


def test_port_parity_image_tokens_and_prompts(ported, images):
    model, params, config = ported
    before, pooled, tokens = pre_ln_tokens(model, images)
    ours_before = np.asarray(embed_patches(params, images, config))
    np.testing.assert_allclose(ours_before, before.numpy(), atol=TOL, rtol=0)
    _, embeds = encode_image(params, images, config)
    np.testing.assert_allclose(np.asarray(embeds), pooled.numpy(), atol=TOL, rtol=0)
    out = encode_tokens(params, ours_before, config)
    np.testing.assert_allclose(np.asarray(vision_head(params, out[:, 0], config)), pooled.numpy(), atol=TOL, rtol=0)
    ours_tokens = np.asarray(vision_head(params, out[:, 1:], config, project=False))
    np.testing.assert_allclose(ours_tokens, tokens.numpy(), atol=TOL, rtol=0)

    tokenizer_module = openclip_shim.load()[1]
    normal, anomalous = prompt_ensemble("metal_plate")
    prompts = normal[:5] + anomalous[-4:] + ["", "Ünïcödé 🙂 " * 30, "a photo of a pcb1 with a scratch."]
    with torch.no_grad():
        expected = model.encode_text(tokenizer_module.tokenize(prompts)).numpy()
    ours_text = np.asarray(encode_text(params, prompts, config))
    np.testing.assert_allclose(ours_text, expected, atol=TOL, rtol=0)
    print(
        f"\nViT-B-16-plus-240 widths, {REDUCED_LAYERS}+{REDUCED_LAYERS} blocks: max abs diff "
        f"tokens-before-ln_pre {np.abs(ours_before - before.numpy()).max():.2e}, "
        f"image {np.abs(np.asarray(embeds) - pooled.numpy()).max():.2e}, "
        f"patch tokens {np.abs(ours_tokens - tokens.numpy()).max():.2e}, "
        f"text {np.abs(ours_text - expected).max():.2e}"
    )


def torch_window(model, before, rows):
    """One window alone through open_clip: [CLS, window tokens] -> ln_pre, blocks, ln_post, CLS @ proj."""
    visual = model.visual
    with torch.no_grad():
        x = visual.ln_pre(visual.patch_dropout(before[:, rows]))
        x = visual.ln_post(visual.transformer(x))
        pooled, _ = visual._global_pool(x)
        return (pooled @ visual.proj).numpy()


def check_windows(model, images, features, windows_per_scale):
    """Each listed window of each scale, run alone through open_clip, against the batched embeddings."""
    before, _, _ = pre_ln_tokens(model, images)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny sequences: one thread is faster than many on a shared machine
    worst, grid = 0.0, 15
    try:
        for scale, embeds, picked in zip((2, 3), features.windows, windows_per_scale):
            embeds = np.asarray(embeds)
            windows = make_windows(grid, scale)
            for index in picked:
                rows = torch.from_numpy(np.concatenate([[0], windows[index] + 1]).astype(np.int64))
                diff = float(np.abs(embeds[:, index] - torch_window(model, before, rows)).max())
                worst = max(worst, diff)
                assert diff <= TOL, (scale, index, diff)
    finally:
        torch.set_num_threads(threads)
    return worst


def test_window_pass_equals_each_window_alone():
    """Every window (196 + 169) of 3 images on a narrow open_clip ViT with the same 15 x 15 grid."""
    model_module = openclip_shim.load()[0]
    torch.manual_seed(5)
    model = model_module.CLIP(
        24, dict(image_size=60, layers=2, width=64, head_width=16, patch_size=4),
        dict(context_length=8, vocab_size=50, width=32, heads=4, layers=1), quick_gelu=False,
    ).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.05 * torch.randn_like(param))
    config = CLIPConfig(
        vision=VisionConfig(width=64, layers=2, heads=4, patch_size=4, image_size=60),
        text=TextConfig(width=32, layers=1, heads=4, context_length=8, vocab_size=50),
        embed_dim=24,
        activation="gelu",
    )
    params = openai_to_flax({k: v.numpy() for k, v in model.state_dict().items()}, config)
    images = np.random.default_rng(11).standard_normal((3, 60, 60, 3), dtype=np.float32)
    features = winclip_features(params, images, config, WinCLIPConfig(map_size=60))
    assert [w.shape for w in features.windows] == [(3, 196, 24), (3, 169, 24)]
    _, pooled, tokens = pre_ln_tokens(model, images)
    np.testing.assert_allclose(np.asarray(features.image), pooled.numpy(), atol=TOL, rtol=0)
    np.testing.assert_allclose(np.asarray(features.patches), tokens.numpy(), atol=TOL, rtol=0)
    worst = check_windows(model, images, features, (range(196), range(169)))
    print(f"\nnarrow ViT, 3 images x 365 windows vs open_clip one window at a time: max abs diff {worst:.2e}")


def test_window_pass_at_full_width(ported, images):
    """ViT-B-16-plus-240 widths: corner, edge and random windows of both scales against open_clip."""
    model, params, config = ported
    features = winclip_features(params, images[:1], config, WinCLIPConfig())
    assert [w.shape for w in features.windows] == [(1, 196, 640), (1, 169, 640)]
    rng = np.random.default_rng(3)
    picked = (
        [0, 13, 182, 195, *rng.choice(196, 4, replace=False)],
        [0, 12, 156, 168, *rng.choice(169, 4, replace=False)],
    )
    worst = check_windows(model, images[:1], features, picked)
    print(f"\nViT-B-16-plus-240 widths, 16 windows vs open_clip one at a time: max abs diff {worst:.2e}")


def test_encode_windows_bad_input(ported, images):
    _, params, config = ported
    tokens = embed_patches(params, images, config)
    with pytest.raises(ValueError, match="outside"):
        encode_windows(params, tokens, np.array([[0, 225]]), config)
    with pytest.raises(ValueError, match=r"\(n, k\) integer"):
        encode_windows(params, tokens, np.array([0.5, 1.0]), config)
    with pytest.raises(ValueError, match="from embed_patches"):
        encode_windows(params, tokens[:, :50], np.array([[0, 1]]), config)
    with pytest.raises(ValueError, match="tokenizer has 49408 tokens"):
        encode_text(params, ["a"], config.replace(text=TextConfig(width=640, layers=2, heads=10, vocab_size=1000)))


def test_pt_checkpoints_get_the_shipped_tokenizer(tmp_path):
    """A .pt state dict without tokenizer files: CLIP's 49,408-token vocabulary gets the shipped BPE (prompts
    then encode as from ids), any other vocabulary gets no tokenizer."""
    from jzad.backbone import flax_to_openai, init_clip
    from jzad.backbone.tokenizer import clip_tokenizer, tokenize
    from jzad.features import load_clip

    for vocab, expect in ((49408, True), (300, False)):
        config = CLIPConfig(
            vision=VisionConfig(width=64, layers=1, heads=1, patch_size=8, image_size=16),
            text=TextConfig(width=64, layers=1, heads=1, vocab_size=vocab, eos_token_id=vocab - 1),
            embed_dim=16,
            activation="gelu",
        )
        state = {k: torch.from_numpy(v) for k, v in flax_to_openai(init_clip(config, seed=vocab), config).items()}
        path = tmp_path / f"clip-{vocab}.pt"
        torch.save(state, path)
        params, loaded, tokenizer = load_clip(path)
        assert (tokenizer is clip_tokenizer()) == expect and (tokenizer is None) != expect
        if expect:
            prompts = ["a photo of a damaged bottle.", "tile"]
            ids, _ = tokenize(tokenizer, prompts, 77, truncate=True)
            np.testing.assert_array_equal(
                np.asarray(encode_text(params, prompts, loaded)), np.asarray(encode_text(params, ids, loaded))
            )
