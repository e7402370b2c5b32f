"""WinCLIP+ through the method seam against the plain PyTorch reference (benchmarks/reference_torch_winclip.py:
a torch CLIP from the same weights, anomalib's WinCLIP steps, PatchCore's coreset sampler with the JAX draws
replayed, FastRef's refinement one query at a time with torch autograd), and the WinCLIP reference against
the JAX WinCLIP."""

import dataclasses

import jax
import numpy as np
import pytest
import torch

from benchmarks.reference_torch_winclip import TorchCLIP, winclip_plus_reference, winclip_reference
from jzad import data as jdata
from jzad.backbone import CLIP_MEAN, CLIP_STD, clip_tokenizer, get_architecture, init_clip, tokenize
from jzad.backbone.port import flax_to_openai
from jzad.features import load_backbone
from jzad.methods import OptionError, RunContext, get_method
from jzad.methods.patchcore import coreset_draws
from jzad.methods.winclip import prompt_ensemble
from jzad.timing import StageClock

SIZE, GRID, ARCH = 32, 4, "tiny-text"


@pytest.fixture(scope="module")
def setup():
    """Tiny-text backbone at 32 px (text tower kept), the torch CLIP with its weights, prompt ids, images."""
    backbone = load_backbone("random-" + ARCH, image_size=SIZE, seed=5, with_text=True)
    arch = get_architecture(ARCH)
    params = {**init_clip(arch, 5), "visual": backbone.params["visual"]}
    model = TorchCLIP(flax_to_openai(params, arch), arch.vision.heads, arch.text.heads, arch.activation)
    ids = tuple(torch.from_numpy(np.asarray(tokenize(clip_tokenizer(), p, 77)[0])).long()
                for p in prompt_ensemble("widget"))
    queries, _, _, _ = jdata.make_synthetic_set(3, 3, size=SIZE, seed=1)
    references, _, _, _ = jdata.make_synthetic_set(3, 0, size=SIZE, seed=8)
    return backbone, model, ids, queries, references


def normalised(images: np.ndarray) -> torch.Tensor:
    x = (images.astype(np.float32) / 255.0 - np.asarray(CLIP_MEAN, np.float32)) / np.asarray(CLIP_STD, np.float32)
    return torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()


def run_method(name, values, backbone, queries, references):
    method = get_method(name)
    config = method.configure(values, RunContext("mvtec", SIZE, 0 if references is None else len(references)))
    extract = method.extractor(config, backbone)
    state = method.fit(config, None if references is None else extract(references), None,
                       method.prepare(config, backbone, "widget"))
    scores, _ = method.staged(config, state, extract(queries), None, StageClock())
    maps = np.asarray(method.maps(config, scores.patch_scores, (SIZE, SIZE)))
    return config, np.asarray(scores.image_scores), maps


@pytest.mark.parametrize("few_shot", [False, True])
def test_winclip_equals_the_torch_reference(setup, few_shot):
    backbone, model, ids, queries, references = setup
    refs = references if few_shot else None
    _, image, maps = run_method("winclip", {}, backbone, queries, refs)
    expected_image, expected_maps = winclip_reference(model, normalised(queries), ids,
                                                      None if refs is None else normalised(refs), GRID, size=SIZE)
    np.testing.assert_allclose(image, expected_image.numpy(), atol=2e-5, rtol=0)
    np.testing.assert_allclose(maps, expected_maps.numpy(), atol=2e-5, rtol=0)


@pytest.mark.parametrize("values", [{}, {"refine_memories": "all", "em_update": "closed", "coreset_ratio": 0.4}])
def test_winclip_plus_equals_the_torch_reference(setup, values):
    backbone, model, ids, queries, references = setup
    config, image, maps = run_method("winclip_plus", values, backbone, queries, references)
    keys = jax.random.split(jax.random.key(config.seed), 1 + len(config.winclip.scales))
    rows = [len(references) * GRID * GRID] + [len(references) * (GRID - s + 1) ** 2 for s in config.winclip.scales]
    widths = [backbone.config.vision.width] + [backbone.config.embed_dim] * len(config.winclip.scales)
    draws = []
    for key, count, width in zip(keys, rows, widths):
        projection, starts = coreset_draws(key, count, width, config.projection_dim, config.num_starts)
        draws.append((None if projection is None else torch.from_numpy(np.array(projection)), np.asarray(starts)))
    refine = {f.name: getattr(config.refine, f.name) for f in dataclasses.fields(config.refine)}
    expected_image, expected_maps, _ = winclip_plus_reference(
        model, normalised(queries), ids, normalised(references), GRID, draws, config.coreset_ratio, refine,
        config.refine_memories == "all", size=SIZE, sigma=config.sigma)
    np.testing.assert_allclose(image, expected_image.numpy(), atol=1e-5, rtol=0)
    np.testing.assert_allclose(maps, expected_maps, atol=1e-5, rtol=0)
    print(f"\nWinCLIP+ {values or 'defaults'} vs torch reference: image max abs diff "
          f"{np.abs(image - expected_image.numpy()).max():.1e}, maps {np.abs(maps - expected_maps).max():.1e}")


def test_configure_presets_and_errors():
    method = get_method("winclip_plus")
    ratios = {d: method.configure({}, RunContext(d, SIZE, 2)).coreset_ratio for d in ("mvtec", "visa", "mpdd", "btad")}
    assert ratios == {"mvtec": 0.5, "visa": 0.3, "mpdd": 0.2, "btad": 0.5}
    config = method.configure({"lam": 0.3, "em_iterations": 2, "coreset_ratio": 0.1, "class_name": "nut"},
                              RunContext("visa", SIZE, 2))
    assert (config.refine.lam, config.refine.iterations, config.refine.distance) == (0.3, 2, "cosine")
    assert config.coreset_ratio == 0.1 and config.winclip.class_name == "nut" and config.winclip.map_size == SIZE
    with pytest.raises(OptionError, match="lam"):
        method.configure({"lam": -1.0}, RunContext("mvtec", SIZE, 2))
    with pytest.raises(ValueError, match=r"^references: WinCLIP\+ refines a few-shot memory of normal reference"):
        method.fit(config, None, None, np.zeros((2, 32), np.float32))
