"""JAX vs the PyTorch reference of benchmarks/reference_torch.py on random features (fp32)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
reference = pytest.importorskip("benchmarks.reference_torch")

from jzad.kernels import device_mesh, kcenter_greedy  # noqa: E402
from jzad.features.types import tokens_to_grid  # noqa: E402
from jzad.kernels.resize import resize_bilinear  # noqa: E402
from jzad.methods.musc import MuScConfig, lnamd, mutual_scores, rscin, score_musc  # noqa: E402


@pytest.mark.parametrize("seed", [0, 1])
def test_musc_matches_reference(seed):
    rng = np.random.default_rng(seed)
    layers = [rng.normal(size=(7, 1 + 36, 12)).astype(np.float32) * 2 for _ in range(3)]
    embeds = rng.normal(size=(7, 10)).astype(np.float32)
    expected = reference.musc_reference(
        [torch.from_numpy(t) for t in layers], torch.from_numpy(embeds), r_list=(1, 3, 5),
        interval=(0.0, 0.3), windows=(1, 2, 3), image_size=23,
    )
    config = MuScConfig(map_size=23, image_block=3, query_tile=50, group_tile=2)
    for mesh in (None, device_mesh(8)):
        got = score_musc(tuple(layers), embeds, config, mesh)
        np.testing.assert_allclose(got.patch_scores.reshape(7, -1), expected["patch_scores"].numpy(), atol=1e-5)
        np.testing.assert_allclose(got.image_scores_raw, expected["image_scores_raw"].numpy(), atol=1e-5)
        np.testing.assert_allclose(got.image_scores, expected["image_scores"].numpy(), atol=1e-5)
    maps = resize_bilinear(got.patch_scores, 23, align_corners=True)
    np.testing.assert_allclose(maps, expected["maps"].numpy(), atol=1e-5)


def test_stages_match_reference():
    rng = np.random.default_rng(2)
    tokens = rng.normal(size=(5, 1 + 49, 9)).astype(np.float32)
    for r in (1, 3, 5):
        ours = lnamd(tokens_to_grid(tokens), r)
        theirs = reference.lnamd(torch.from_numpy(tokens), r).numpy()
        np.testing.assert_allclose(ours, theirs, atol=1e-5)
        np.testing.assert_allclose(
            mutual_scores(ours, MuScConfig(interval=(0.0, 0.5))),
            reference.mutual_scores(torch.from_numpy(theirs), interval=(0.0, 0.5)).numpy(), atol=1e-5,
        )
    scores = rng.random(9).astype(np.float32)
    embeds = rng.random((9, 5)).astype(np.float32)
    np.testing.assert_allclose(
        rscin(scores, embeds, (1, 8, 9)),
        reference.rscin(torch.from_numpy(scores), torch.from_numpy(embeds), (1, 8, 9)).numpy(), atol=1e-6,
    )
    points = rng.normal(size=(83, 6)).astype(np.float32)
    np.testing.assert_array_equal(
        np.asarray(kcenter_greedy(points, 17, 4)), reference.kcenter_greedy(torch.from_numpy(points), 17, 4).numpy()
    )
