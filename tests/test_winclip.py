"""WinCLIP scoring against a NumPy transcription of anomalib's formulas, a PyTorch/open_clip end-to-end run
of anomalib's pipeline on a narrow random ViT with the real 15 x 15 grid, and a planted-defect known answer.

The transcription (``anomalib_*`` below) follows anomalib's WinClipModel and winclip/utils.py: masks from
torch's unfold, per-patch loops for the harmonic aggregation with nan_to_num, softmax(cos / T), the
multi-scale harmonic mean, min (1 - cos) / 2 visual association, the few-shot mean and the fusions, then
F.interpolate(bilinear). Window embeddings on the PyTorch side are computed as anomalib batches them (all
windows through the transformer at once), in batch-first order as open_clip >= 2.26 expects.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import openclip_shim
from jzad.backbone import CLIPConfig, TextConfig, VisionConfig
from jzad.backbone.port import openai_to_flax
from jzad.methods.winclip import (
    ANOMALOUS_STATES,
    NORMAL_STATES,
    TEMPLATES,
    WinCLIPConfig,
    WinCLIPFeatures,
    bilinear_matrix,
    class_scores,
    few_shot_map,
    harmonic_aggregation,
    make_windows,
    prompt_ensemble,
    text_embeddings,
    upsample_maps,
    winclip_features,
    winclip_memory,
    winclip_scores,
    zero_shot_scores,
)

# ---------------------------------------------------------------- NumPy transcription of anomalib


def anomalib_masks(grid, scale, stride=1):
    """(k, n) masks as anomalib's make_masks builds them: torch unfold over the index grid."""
    index = torch.arange(grid * grid).reshape(1, grid, grid).float()
    return F.unfold(index, kernel_size=scale, stride=stride).int().numpy()


def np_normalize(x):
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def anomalib_class_scores(embeddings, text, temperature):
    logits = (np_normalize(embeddings) @ np_normalize(text).T) / temperature
    logits = logits - logits.max(axis=-1, keepdims=True)
    probs = np.exp(logits) / np.exp(logits).sum(axis=-1, keepdims=True)
    return probs[..., 1]


def anomalib_harmonic(window_scores, grid, masks):
    out = np.zeros((window_scores.shape[0], grid * grid))
    with np.errstate(divide="ignore", invalid="ignore"):
        for idx in range(grid * grid):
            covering = np.any(masks == idx, axis=0)
            out[:, idx] = covering.sum() / (1 / window_scores[:, covering]).sum(axis=1)
    return np.nan_to_num(out, nan=0.0, posinf=0.0).reshape(-1, grid, grid)


def anomalib_association(embeddings, reference):
    reference = reference.reshape(-1, embeddings.shape[-1])
    return (1 - np_normalize(embeddings) @ np_normalize(reference).T).min(axis=-1) / 2


def anomalib_forward(image, windows, patches, text, grid, scales, temperature, size, memory=None):
    """anomalib's WinClipModel.forward on given embeddings (float64). memory: (patches (R, M, W), windows)."""
    masks = [anomalib_masks(grid, s) for s in scales]
    image_scores = anomalib_class_scores(image, text, temperature)
    maps = [np.repeat(image_scores[:, None, None], grid, 1).repeat(grid, 2)]
    for embeds, mask in zip(windows, masks):
        maps.append(anomalib_harmonic(anomalib_class_scores(embeds, text, temperature), grid, mask))
    multi = (len(scales) + 1) / (1 / np.stack(maps)).sum(axis=0)
    if memory is not None:
        ref_patches, ref_windows = memory
        few = [anomalib_association(patches, ref_patches).reshape(-1, grid, grid)]
        for embeds, ref, mask in zip(windows, ref_windows, masks):
            few.append(anomalib_harmonic(anomalib_association(embeds, ref), grid, mask))
        few = np.stack(few).mean(axis=0)
        multi = (multi + few) / 2
        image_scores = (image_scores + few.max(axis=(-2, -1))) / 2
    pixels = F.interpolate(torch.from_numpy(multi)[:, None], size=(size, size), mode="bilinear")
    return image_scores, pixels[:, 0].numpy()


# ---------------------------------------------------------------- pieces


def test_prompt_ensemble_is_state_major_with_the_duplicate():
    normal, anomalous = prompt_ensemble("metal_plate")
    assert (len(NORMAL_STATES), len(ANOMALOUS_STATES), len(TEMPLATES)) == (7, 4, 21)
    assert (len(normal), len(anomalous)) == (147, 84)
    assert normal[0] == "a cropped photo of the metal_plate."
    assert normal[21] == "a cropped photo of the flawless metal_plate."
    assert normal[-1] == "a photo of a metal_plate without damage for anomaly detection."
    assert anomalous[0] == "a cropped photo of the damaged metal_plate."
    assert anomalous[-1] == "a photo of a metal_plate with damage for anomaly detection."
    assert normal.count("a jpeg corrupted photo of the metal_plate.") == 2
    with pytest.raises(ValueError, match="object_name"):
        prompt_ensemble(" ")


@pytest.mark.parametrize("grid,scale,stride", [(15, 2, 1), (15, 3, 1), (7, 3, 2), (9, 1, 1), (5, 5, 1)])
def test_windows_match_unfold(grid, scale, stride):
    windows = make_windows(grid, scale, stride)
    np.testing.assert_array_equal(windows, anomalib_masks(grid, scale, stride).T)
    if (grid, scale) == (15, 2):
        assert windows.shape == (196, 4)
    if (grid, scale) == (15, 3):
        assert windows.shape == (169, 9)
    with pytest.raises(ValueError, match="window scale"):
        make_windows(grid, grid + 1)


@pytest.mark.parametrize("grid,scale,stride", [(15, 2, 1), (15, 3, 1), (7, 3, 2), (11, 4, 1)])
def test_harmonic_aggregation_matches_numpy(grid, scale, stride):
    rng = np.random.default_rng(grid * 10 + scale)
    windows = make_windows(grid, scale, stride)
    scores = rng.uniform(0.01, 1.0, size=(3, len(windows))).astype(np.float32)
    scores[1, 5] = 0.0  # a zero score zeroes its patches (inf in the harmonic sum)
    ours = np.asarray(harmonic_aggregation(scores, windows, grid))
    expected = anomalib_harmonic(scores.astype(np.float64), grid, anomalib_masks(grid, scale, stride))
    np.testing.assert_allclose(ours, expected, rtol=2e-6, atol=1e-7)
    if stride > 1:
        assert (expected == 0).any()  # uncovered patches are 0, as anomalib's nan_to_num makes them


@pytest.mark.parametrize("size,grid", [(240, 15), (50, 7), (16, 15), (31, 4)])
def test_upsample_is_torch_bilinear(size, grid):
    maps = np.random.default_rng(size).random((2, grid, grid)).astype(np.float32)
    expected = F.interpolate(torch.from_numpy(maps)[:, None], size=(size, size), mode="bilinear")[:, 0].numpy()
    np.testing.assert_allclose(np.asarray(upsample_maps(maps, size)), expected, atol=2e-6)
    assert np.allclose(bilinear_matrix(size, grid).sum(axis=1), 1.0)


def random_features(rng, batch, grid=15, dim=20, width=28, scales=(2, 3)):
    windows = tuple(
        rng.standard_normal((batch, len(make_windows(grid, s)), dim)).astype(np.float32) for s in scales
    )
    return WinCLIPFeatures(
        rng.standard_normal((batch, dim)).astype(np.float32),
        windows,
        rng.standard_normal((batch, grid * grid, width)).astype(np.float32),
    )


@pytest.mark.parametrize("seed,scales,temperature", [(1, (2, 3), 0.07), (2, (2, 3, 4), 0.07), (3, (3,), 0.5)])
def test_scores_match_anomalib_formulas(seed, scales, temperature):
    rng = np.random.default_rng(seed)
    config = WinCLIPConfig(scales=scales, temperature=temperature, map_size=240)
    query = random_features(rng, 3, scales=scales)
    reference = random_features(rng, 2, scales=scales)
    text = rng.standard_normal((2, 20)).astype(np.float32)
    f64 = lambda a: np.asarray(a, np.float64)  # noqa: E731

    image, maps = winclip_scores(query, text, None, config)
    exp_image, exp_maps = anomalib_forward(
        f64(query.image), [f64(w) for w in query.windows], f64(query.patches), f64(text), 15, scales, temperature, 240
    )
    np.testing.assert_allclose(np.asarray(image), exp_image, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.asarray(maps), exp_maps, rtol=1e-5, atol=1e-7)

    memory = winclip_memory(reference)
    image, maps = winclip_scores(query, text, memory, config)
    exp_image, exp_maps = anomalib_forward(
        f64(query.image), [f64(w) for w in query.windows], f64(query.patches), f64(text), 15, scales, temperature,
        240, memory=(f64(reference.patches), [f64(w) for w in reference.windows]),
    )
    np.testing.assert_allclose(np.asarray(image), exp_image, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.asarray(maps), exp_maps, rtol=1e-5, atol=1e-7)


def test_zero_shot_pieces():
    rng = np.random.default_rng(4)
    query = random_features(rng, 2)
    text = rng.standard_normal((2, 20)).astype(np.float32)
    image, grid_map = zero_shot_scores(query, text)
    np.testing.assert_allclose(np.asarray(image), anomalib_class_scores(query.image.astype(np.float64), text, 0.07),
                               rtol=1e-5)
    window_maps = [
        anomalib_harmonic(anomalib_class_scores(w.astype(np.float64), text, 0.07), 15, anomalib_masks(15, s))
        for s, w in zip((2, 3), query.windows)
    ]
    expected = 3 / (1 / np.asarray(image, np.float64)[:, None, None] + sum(1 / m for m in window_maps))
    np.testing.assert_allclose(np.asarray(grid_map), expected, rtol=1e-5)
    scores = np.asarray(class_scores(query.image, text))
    assert scores.shape == (2,) and np.all((scores > 0) & (scores < 1))


def test_config_and_input_errors():
    with pytest.raises(ValueError, match="scales"):
        WinCLIPConfig(scales=())
    with pytest.raises(ValueError, match="temperature"):
        WinCLIPConfig(temperature=0.0)
    with pytest.raises(ValueError, match="map_size"):
        WinCLIPConfig(map_size=0)
    with pytest.raises(ValueError, match="dtype"):
        WinCLIPConfig(dtype="float16")
    with pytest.raises(ValueError, match="precision"):
        WinCLIPConfig(precision="tf32")
    assert WinCLIPConfig(scales=[2, 3]) == WinCLIPConfig()
    with pytest.raises(ValueError, match="windows must be"):
        harmonic_aggregation(np.ones((1, 5), np.float32), make_windows(15, 2), 15)


# ---------------------------------------------------------------- with a model


@pytest.fixture(scope="module")
def narrow():
    """A narrow random open_clip ViT on 60 px with patch 4 (the real 15 x 15 grid) and a 1-block text tower
    over the real 49,408-token vocabulary; every parameter perturbed. Returns (torch model, params, config)."""
    model_module = openclip_shim.load()[0]
    torch.manual_seed(13)
    model = model_module.CLIP(
        24, dict(image_size=60, layers=2, width=48, head_width=16, patch_size=4),
        dict(context_length=77, vocab_size=49408, width=32, heads=4, layers=1), quick_gelu=False,
    ).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.05 * torch.randn_like(param))
    config = CLIPConfig(
        vision=VisionConfig(width=48, layers=2, heads=3, patch_size=4, image_size=60),
        text=TextConfig(width=32, layers=1, heads=4),
        embed_dim=24,
        activation="gelu",
    )
    params = openai_to_flax({k: v.numpy() for k, v in model.state_dict().items()}, config)
    return model, params, config


def torch_encode(model, images, scales=(2, 3), grid=15):
    """anomalib's encode_image: image embeddings, window embeddings (all windows batched through the
    transformer, batch first) and ln_post'ed patch tokens."""
    captured = {}
    visual = model.visual
    handle = visual.patch_dropout.register_forward_hook(lambda m, i, o: captured.setdefault("x", i[0]))
    visual.output_tokens = True
    with torch.no_grad():
        image, patches = visual(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous())
        handle.remove()
        windows = []
        for scale in scales:
            masks = torch.from_numpy(anomalib_masks(grid, scale)).long()
            rows = torch.cat([torch.zeros(1, masks.shape[1], dtype=torch.long), masks + 1]).T
            seqs = torch.cat([torch.index_select(captured["x"], 1, r) for r in rows])
            x = visual.ln_post(visual.transformer(visual.ln_pre(visual.patch_dropout(seqs))))
            pooled = x[:, 0] @ visual.proj
            windows.append(pooled.reshape(masks.shape[1], len(images), -1).permute(1, 0, 2).numpy())
    return image.numpy(), windows, patches.numpy()


def test_text_embeddings_equal_openclip_prompt_means(narrow):
    model, params, config = narrow
    tokenizer_module = openclip_shim.load()[1]
    normal, anomalous = prompt_ensemble("pipe_fryum")
    with torch.no_grad():
        expected = np.stack(
            [model.encode_text(tokenizer_module.tokenize(p)).mean(dim=0).numpy() for p in (normal, anomalous)]
        )
    ours = np.asarray(text_embeddings(params, config, "pipe_fryum"))
    assert ours.shape == (2, 24)
    np.testing.assert_allclose(ours, expected, atol=1e-5, rtol=0)


def test_end_to_end_equals_anomalib_pipeline(narrow):
    model, params, config = narrow
    rng = np.random.default_rng(17)
    queries = rng.standard_normal((3, 60, 60, 3)).astype(np.float32)
    references = rng.standard_normal((2, 60, 60, 3)).astype(np.float32)
    wconfig = WinCLIPConfig(map_size=60)
    text = text_embeddings(params, config, "screw")
    features = winclip_features(params, queries, config, wconfig)
    memory = winclip_memory(winclip_features(params, references, config, wconfig))
    image, maps = winclip_scores(features, text, memory, wconfig)

    q_image, q_windows, q_patches = torch_encode(model, queries)
    _, r_windows, r_patches = torch_encode(model, references)
    for ours, theirs in zip(features.windows, q_windows):
        np.testing.assert_allclose(np.asarray(ours), theirs, atol=1e-5, rtol=0)
    f64 = lambda a: np.asarray(a, np.float64)  # noqa: E731
    exp_image, exp_maps = anomalib_forward(
        f64(q_image), [f64(w) for w in q_windows], f64(q_patches), f64(text), 15, (2, 3), 0.07, 60,
        memory=(f64(r_patches), [f64(w) for w in r_windows]),
    )
    np.testing.assert_allclose(np.asarray(image), exp_image, atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.asarray(maps), exp_maps, atol=1e-5, rtol=0)
    print(
        f"\nnarrow ViT end to end vs anomalib pipeline (open_clip + NumPy): image max abs diff "
        f"{np.abs(np.asarray(image) - exp_image).max():.2e}, map {np.abs(np.asarray(maps) - exp_maps).max():.2e}"
    )


def textured(rng, count):
    """Normal images: the same smooth stripes and blobs, each with its own small noise and brightness."""
    y, x = np.mgrid[0:60, 0:60] / 60.0
    base = np.stack([np.sin(9 * x + 2 * y), np.cos(7 * y - 3 * x), np.sin(5 * (x + y))], axis=-1)
    noise = 0.05 * rng.standard_normal((count, 60, 60, 3))
    return (base[None] * rng.uniform(0.9, 1.1, (count, 1, 1, 1)) + noise).astype(np.float32)


def test_few_shot_finds_a_planted_defect(narrow):
    _, params, config = narrow
    rng = np.random.default_rng(23)
    wconfig = WinCLIPConfig(map_size=60)
    memory = winclip_memory(winclip_features(params, textured(rng, 3), config, wconfig))
    queries = textured(rng, 4)
    cells = [(3, 11), (9, 4), (12, 12)]
    for image, (row, col) in zip(queries[1:], cells):
        image[row * 4 : row * 4 + 6, col * 4 : col * 4 + 6] = rng.uniform(-2.5, 2.5, (6, 6, 3))
    few = np.asarray(few_shot_map(winclip_features(params, queries, config, wconfig), memory, wconfig))
    for grid_map, (row, col) in zip(few[1:], cells):
        peak = np.unravel_index(np.argmax(grid_map), grid_map.shape)
        assert abs(peak[0] - row) <= 1 and abs(peak[1] - col) <= 1, (peak, (row, col))
        assert grid_map.max() > 5 * few[0].max()
