"""NACLIP's last block (jzad.backbone.naclip) against a PyTorch version of the same modification.

The PyTorch model is written here from the OpenAI state dict (``flax_to_openai`` of random Flax params):
torch's own nn.MultiheadAttention for the plain blocks, and for the last block NACLIP's recipe as its public
code builds it: the Gaussian window of size (2g - 1) x (2g - 1) convolved over one-hot images of every patch
position ('same' padding) gives the additive term, padded with a zero row and column for the class token.
"""

import math

import jax
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from jzad.backbone import encode_image, init_clip
from jzad.backbone.config import CLIPConfig, VisionConfig
from jzad.backbone.naclip import naclip_encode, neighbourhood_bias
from jzad.backbone.port import flax_to_openai


def torch_gaussian_addition(grid: int, sigma: float) -> torch.Tensor:
    """NACLIP's construction: window exp(-(d / (sigma sqrt 2))^2), conv2d over one-hot position images."""
    size = 2 * grid - 1
    scale = 1.0 / (sigma * math.sqrt(2.0))
    axis = torch.linspace(-(size - 1) / 2.0 * scale, (size - 1) / 2.0 * scale, size, dtype=torch.float64)
    window = torch.exp(-(axis[:, None] ** 2 + axis[None, :] ** 2))
    onehots = torch.eye(grid * grid, dtype=torch.float64).reshape(grid * grid, 1, grid, grid)
    spread = F.conv2d(onehots, window[None, None], padding="same").reshape(grid * grid, grid * grid)
    out = torch.zeros(grid * grid + 1, grid * grid + 1, dtype=torch.float64)
    out[1:, 1:] = spread
    return out.float()


def torch_layer_norm(x, state, prefix, eps=1e-5):
    return F.layer_norm(x, (x.shape[-1],), state[prefix + ".weight"], state[prefix + ".bias"], eps)


def torch_forward(state, images, config: CLIPConfig, taps, sigma):
    """OpenAI ViT forward in torch with NACLIP in the last block -> (taps, dense)."""
    v = config.vision
    prefix = "visual.transformer.resblocks."
    x = F.conv2d(images.permute(0, 3, 1, 2), state["visual.conv1.weight"], stride=v.patch_size)
    x = x.flatten(2).transpose(1, 2)
    cls = state["visual.class_embedding"].expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], 1) + state["visual.positional_embedding"]
    x = torch_layer_norm(x, state, "visual.ln_pre")
    if config.activation == "quick_gelu":
        act = lambda z: z * torch.sigmoid(1.702 * z)  # noqa: E731
    else:
        act = F.gelu
    outputs = {}
    for i in range(v.layers - 1):
        p = f"{prefix}{i}."
        mha = torch.nn.MultiheadAttention(v.width, v.heads, batch_first=True)
        mha.load_state_dict(
            {
                "in_proj_weight": state[p + "attn.in_proj_weight"],
                "in_proj_bias": state[p + "attn.in_proj_bias"],
                "out_proj.weight": state[p + "attn.out_proj.weight"],
                "out_proj.bias": state[p + "attn.out_proj.bias"],
            }
        )
        h = torch_layer_norm(x, state, p + "ln_1")
        x = x + mha(h, h, h, need_weights=False)[0]
        h = torch_layer_norm(x, state, p + "ln_2")
        h = F.linear(act(F.linear(h, state[p + "mlp.c_fc.weight"], state[p + "mlp.c_fc.bias"])),
                     state[p + "mlp.c_proj.weight"], state[p + "mlp.c_proj.bias"])
        x = x + h
        outputs[i + 1] = x
    p = f"{prefix}{v.layers - 1}."
    h = torch_layer_norm(x, state, p + "ln_1")
    batch, tokens, width = h.shape
    head_dim = width // v.heads
    q, k, val = F.linear(h, state[p + "attn.in_proj_weight"], state[p + "attn.in_proj_bias"]).chunk(3, dim=-1)
    k = k.reshape(batch, tokens, v.heads, head_dim).transpose(1, 2)
    val = val.reshape(batch, tokens, v.heads, head_dim).transpose(1, 2)
    logits = k @ k.transpose(-1, -2) * head_dim**-0.5 + torch_gaussian_addition(v.grid_size, sigma)
    out = (logits.softmax(-1) @ val).transpose(1, 2).reshape(batch, tokens, width)
    out = F.linear(out, state[p + "attn.out_proj.weight"], state[p + "attn.out_proj.bias"])
    dense = torch_layer_norm(out, state, "visual.ln_post") @ state["visual.proj"]
    return tuple(outputs[t] for t in taps), dense


@pytest.mark.parametrize(
    "seed,width,heads,layers,patch,image,activation,taps,sigma",
    [
        (7, 48, 4, 3, 4, 28, "quick_gelu", (1, 2), 5.0),  # 7 x 7 grid, the paper's sigma
        (19, 40, 5, 4, 5, 45, "gelu", (3, 1), 1.3),  # 9 x 9 grid, a sharp neighbourhood, taps out of order
    ],
)
def test_naclip_matches_torch(seed, width, heads, layers, patch, image, activation, taps, sigma):
    config = CLIPConfig(
        vision=VisionConfig(width=width, layers=layers, heads=heads, patch_size=patch, image_size=image),
        embed_dim=24,
        activation=activation,
    )
    params = init_clip(config, seed=seed)
    state = {k: torch.from_numpy(v) for k, v in flax_to_openai(params, config).items()}
    images = np.random.default_rng(seed + 1).normal(size=(3, image, image, 3)).astype(np.float32)

    got_taps, got_dense = naclip_encode(params, images, config, taps=taps, sigma=sigma)
    with torch.no_grad():
        want_taps, want_dense = torch_forward(state, torch.from_numpy(images), config, taps, sigma)

    grid = image // patch
    assert got_dense.shape == (3, 1 + grid * grid, 24)
    dense_diff = float(np.max(np.abs(np.asarray(got_dense) - want_dense.numpy())))
    assert dense_diff <= 1e-5, dense_diff
    for got, want in zip(got_taps, want_taps):
        assert got.shape == (3, 1 + grid * grid, width)
        assert float(np.max(np.abs(np.asarray(got) - want.numpy()))) <= 1e-5
    # The taps are CLIP's own residual stream: identical to the plain encoder's.
    plain, _ = encode_image(params, images, config, taps=taps, with_embedding=False)
    for got, want in zip(got_taps, plain):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_neighbourhood_bias_closed_form():
    omega = neighbourhood_bias(3, 2.0)
    # Patches 0 = (0, 0) and 5 = (1, 2): squared distance 1 + 4 = 5.
    assert omega[1 + 0, 1 + 5] == pytest.approx(math.exp(-5 / 8), rel=1e-6)
    assert np.all(omega[0] == 0) and np.all(omega[:, 0] == 0)
    np.testing.assert_allclose(np.diag(omega)[1:], 1.0)
    np.testing.assert_allclose(omega, torch_gaussian_addition(3, 2.0).numpy(), atol=1e-6)


def test_naclip_jits_and_validates():
    config = CLIPConfig(vision=VisionConfig(width=32, layers=2, heads=4, patch_size=4, image_size=12), embed_dim=8)
    params = init_clip(config, seed=2)
    images = np.zeros((2, 12, 12, 3), np.float32)
    jitted = jax.jit(lambda p, x: naclip_encode(p, x, config, taps=(1,)))
    taps, dense = jitted(params, images)
    assert taps[0].shape == (2, 10, 32) and dense.shape == (2, 10, 8)
    with pytest.raises(ValueError, match=r"taps must be distinct 1-based block indices in \[1, 1\]"):
        naclip_encode(params, images, config, taps=(2,))
    with pytest.raises(ValueError, match="sigma must be positive"):
        naclip_encode(params, images, config, sigma=0.0)
    with pytest.raises(ValueError, match=r"images must be \(B, 12, 12, 3\)"):
        naclip_encode(params, np.zeros((2, 16, 16, 3), np.float32), config)
