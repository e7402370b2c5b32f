"""Position-embedding resize vs torch.nn.functional.interpolate(mode="bicubic", align_corners=False)."""

import jax
import numpy as np
import pytest
import torch

from jzad.backbone import ARCHITECTURES, init_clip, resize_position_embedding, with_image_size
from jzad.backbone.posembed import bicubic_matrix, resize_grid


def torch_bicubic(grid, out_h, out_w):
    x = torch.from_numpy(np.ascontiguousarray(grid)).permute(2, 0, 1)[None]
    y = torch.nn.functional.interpolate(x, size=(out_h, out_w), mode="bicubic", align_corners=False)
    return y[0].permute(1, 2, 0).numpy()


@pytest.mark.parametrize("src,dst", [(7, 11), (24, 37), (16, 37), (37, 24), (14, 5), (2, 9), (5, 5), (3, 1)])
def test_resize_grid_matches_torch(src, dst):
    rng = np.random.default_rng(src * 100 + dst)
    grid = rng.normal(size=(src, src, 6)).astype(np.float32)
    ours = np.asarray(resize_grid(grid, dst, dst))
    np.testing.assert_allclose(ours, torch_bicubic(grid, dst, dst), atol=1e-5, rtol=0)


def test_resize_grid_rectangular_and_jit():
    rng = np.random.default_rng(0)
    grid = rng.normal(size=(6, 9, 3)).astype(np.float32)
    out = jax.jit(resize_grid, static_argnums=(1, 2))(grid, 10, 4)
    np.testing.assert_allclose(np.asarray(out), torch_bicubic(grid, 10, 4), atol=1e-5, rtol=0)


def test_bicubic_rows_sum_to_one_and_identity():
    for src, dst in [(7, 11), (24, 37), (37, 24)]:
        np.testing.assert_allclose(bicubic_matrix(src, dst).sum(axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(bicubic_matrix(8, 8), np.eye(8), atol=1e-7)


def test_resize_position_embedding_keeps_cls():
    rng = np.random.default_rng(1)
    pos = rng.normal(size=(1 + 24 * 24, 8)).astype(np.float32)
    out = np.asarray(resize_position_embedding(pos, 37))
    assert out.shape == (1 + 37 * 37, 8)
    np.testing.assert_array_equal(out[0], pos[0])
    ref = torch_bicubic(pos[1:].reshape(24, 24, 8), 37, 37).reshape(-1, 8)
    np.testing.assert_allclose(out[1:], ref, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match=r"\(1 \+ g\*g, C\)"):
        resize_position_embedding(pos[:-3], 37)


def test_with_image_size_changes_only_position_embedding():
    config = ARCHITECTURES["tiny"]
    params = init_clip(config, seed=3)
    new_params, new_config = with_image_size(params, config, 56)
    assert new_config.vision.image_size == 56 and new_config.vision.grid_size == 7
    assert new_params["visual"]["positional_embedding"].shape == (50, config.vision.width)
    assert new_params["visual"]["blocks"] is params["visual"]["blocks"]
    assert new_params["text"] is params["text"]
    assert params["visual"]["positional_embedding"].shape == (17, config.vision.width)
    with pytest.raises(ValueError, match="image_size must be an int >= patch_size=8"):
        with_image_size(params, config, 4)
