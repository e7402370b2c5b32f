"""PatchCore+ and WinCLIP+ defaults: the transport term acts (scores differ from --lam 0, the W0 projection,
by more than 1e-3 of their spread on the built-in demo), "printed" is the projection to ~1/m, and the run
presets (PatchCore+ at 256 x 256 without a crop; PatchCore kept at 256 -> 224)."""

import numpy as np
import pytest

from jzad.features import load_backbone
from jzad.methods import ImagePrep, RunContext, get_method
from jzad.pipeline import Scorer, run_category
from jzad.experiment import demo_sources
from jzad.run import DEMO_SHOTS

SIZES = {"patchcore_plus": 64, "winclip_plus": 32}


def demo_scores(name: str, options: dict) -> tuple[np.ndarray, np.ndarray]:
    """Image (28,) and patch scores of the built-in demo set through the driver, on the method's tiny backbone."""
    method = get_method(name)
    size = SIZES[name]
    backbone = load_backbone(method.tiny_backbone, method.backbone_run(None), image_size=size, seed=0,
                             with_text=method.needs_text)
    config = method.configure(options, RunContext("synthetic", size, DEMO_SHOTS))
    sources = demo_sources(size, 0, DEMO_SHOTS, 0)
    result = run_category(Scorer(method, config, backbone), sources.source, "synthetic", sources.references)
    return np.asarray(result.image_scores_raw, np.float64), np.asarray(result.patch_scores, np.float64)


@pytest.mark.parametrize("name", ["patchcore_plus", "winclip_plus"])
def test_defaults_refine_measurably_beyond_the_projection(name):
    config = get_method(name).configure({}, RunContext("synthetic", SIZES[name], DEMO_SHOTS))
    assert (config.refine.plan_scale, config.refine.lam) == ("row", 0.3 if name == "patchcore_plus" else 0.1)
    image, patch = demo_scores(name, {})
    image0, patch0 = demo_scores(name, {"lam": 0.0})
    printed, printed_patch = demo_scores(name, {"plan_scale": "printed"})
    spread = patch0.max() - patch0.min()
    assert np.abs(patch - patch0).max() > 1e-3 * spread
    assert np.abs(image - image0).max() > 1e-3 * (image0.max() - image0.min())
    # Under the printed scaling the OT term is ~1/m of the data term: the refinement is the projection.
    assert np.abs(printed_patch - patch0).max() < 1e-4 * spread


def test_run_presets():
    plus, base = get_method("patchcore_plus"), get_method("patchcore")
    for arch in ("wide-resnet50-2", "efficientnet-lite0"):
        assert plus.backbone_run(arch).image_size == 256
        assert plus.backbone_run(arch).taps == base.backbone_run(arch).taps
    assert plus.prep(None, 256) == ImagePrep("resize_crop", resize_to=256)
    assert base.backbone_run("wide-resnet50-2").image_size == 224
    assert base.prep(None, 224) == ImagePrep("resize_crop", resize_to=256)
    configured = plus.configure({"plan_scale": "printed", "lam": 0.0}, RunContext("mvtec", 256, 1))
    assert (configured.refine.plan_scale, configured.refine.lam) == ("printed", 0.0)
    winclip = get_method("winclip_plus").configure({"plan_scale": "printed"}, RunContext("mvtec", 240, 1))
    assert winclip.refine.plan_scale == "printed"
