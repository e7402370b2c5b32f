"""CLIP-LAD in PyTorch, written from the paper (003, Secs. 3-4) as a timing and parity reference for
jzad.methods.clip_lad: the same stages on the same weights, batched the way a PyTorch user would write them.

- ``naclip_forward``: an OpenAI-layout CLIP ViT (state dict as ``jzad.backbone.port.flax_to_openai`` writes it)
  with torch's scaled-dot-product attention in the plain blocks and NACLIP's last block (key-key logits plus
  the Gaussian neighbourhood term, no residual, no MLP; ln_post and proj on every token).
- ``prepare``: drop the class token, bilinear x2 (align_corners=False), L2-normalise; cluster features are the
  normalised concatenation of the normalised shallow taps.
- ``assign``: nearest k-means centre (``torch.cdist``). ``match``: region means (``index_add_``), nearest
  coarse prompt -> foreground, nearest fine prompt per patch (or per region). ``histogram``: ``bincount`` shares
  and s_log against the memory histograms. ``memory``: ``torch.cdist`` to every memory patch, min, mean over
  levels, max over patches. ``fusion``: Mahalanobis distance by a triangular solve.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F


def neighbourhood(grid: int, sigma: float) -> torch.Tensor:
    """(1 + g*g, 1 + g*g) Gaussian of the squared patch distance, 0 on the class token's row and column."""
    rows = torch.arange(grid * grid) // grid
    cols = torch.arange(grid * grid) % grid
    sq = (rows[:, None] - rows[None, :]) ** 2 + (cols[:, None] - cols[None, :]) ** 2
    out = torch.zeros(grid * grid + 1, grid * grid + 1)
    out[1:, 1:] = torch.exp(-sq.float() / (2.0 * sigma**2))
    return out


def _layer_norm(x, state, prefix):
    return F.layer_norm(x, (x.shape[-1],), state[prefix + ".weight"], state[prefix + ".bias"], 1e-5)


def naclip_forward(state: dict, pixels: torch.Tensor, heads: int, patch: int, layers: int, taps, sigma: float,
                   activation: str = "quick_gelu"):
    """pixels (B, S, S, 3) CLIP-normalised -> (taps' residual streams, each (B, 1 + g*g, W); dense (B, 1 + g*g, D))."""
    x = F.conv2d(pixels.permute(0, 3, 1, 2), state["visual.conv1.weight"], stride=patch)
    grid = x.shape[-1]
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([state["visual.class_embedding"].expand(x.shape[0], 1, -1), x], 1)
    x = _layer_norm(x + state["visual.positional_embedding"], state, "visual.ln_pre")
    act = (lambda z: z * torch.sigmoid(1.702 * z)) if activation == "quick_gelu" else F.gelu
    batch, tokens, width = x.shape
    head_dim = width // heads
    streams = {}
    for i in range(layers):
        p = f"visual.transformer.resblocks.{i}."
        h = _layer_norm(x, state, p + "ln_1")
        q, k, v = (t.reshape(batch, tokens, heads, head_dim).transpose(1, 2)
                   for t in F.linear(h, state[p + "attn.in_proj_weight"], state[p + "attn.in_proj_bias"]).chunk(3, -1))
        if i < layers - 1:
            attn = F.scaled_dot_product_attention(q, k, v)
        else:
            logits = k @ k.transpose(-1, -2) * head_dim**-0.5 + neighbourhood(grid, sigma)
            attn = logits.softmax(-1) @ v
        out = F.linear(attn.transpose(1, 2).reshape(batch, tokens, width), state[p + "attn.out_proj.weight"],
                       state[p + "attn.out_proj.bias"])
        if i == layers - 1:
            dense = _layer_norm(out, state, "visual.ln_post") @ state["visual.proj"]
            return tuple(streams[t] for t in taps), dense
        x = x + out
        h = _layer_norm(x, state, p + "ln_2")
        x = x + F.linear(act(F.linear(h, state[p + "mlp.c_fc.weight"], state[p + "mlp.c_fc.bias"])),
                         state[p + "mlp.c_proj.weight"], state[p + "mlp.c_proj.bias"])
        streams[i + 1] = x
    raise ValueError("layers must be >= 1")


class Prepared(NamedTuple):
    """cluster (B, P, C), dense (B, P, D), levels: per structural tap (B, P, W); all unit rows."""

    cluster: torch.Tensor
    dense: torch.Tensor
    levels: tuple


def _patches(tokens: torch.Tensor, factor: int) -> torch.Tensor:
    b, t, c = tokens.shape
    g = int(round(math.sqrt(t - 1)))
    grid = tokens[:, 1:].transpose(1, 2).reshape(b, c, g, g)
    up = F.interpolate(grid, scale_factor=factor, mode="bilinear", align_corners=False)
    return up.flatten(2).transpose(1, 2)


def prepare(streams, dense, cluster_index, structural_index, factor: int = 2) -> Prepared:
    """Upsample and normalise (module docstring); *_index: positions in streams."""
    shallow = [F.normalize(_patches(streams[i], factor), dim=-1) for i in cluster_index]
    cluster = F.normalize(torch.cat(shallow, -1), dim=-1)
    levels = tuple(F.normalize(_patches(streams[i], factor), dim=-1) for i in structural_index)
    return Prepared(cluster, F.normalize(_patches(dense, factor), dim=-1), levels)


def assign(cluster: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """(B, P, C), (N_c, C) -> (B, P) nearest centre."""
    return torch.cdist(cluster, centres[None].expand(cluster.shape[0], -1, -1)).argmin(-1)


def match(dense, regions, num_regions: int, coarse, is_object, fine, fine_level: str = "patch") -> torch.Tensor:
    """(B, P) fine class of every foreground patch, -1 on the background."""
    b, p, d = dense.shape
    flat = (regions + num_regions * torch.arange(b)[:, None]).reshape(-1)
    sums = torch.zeros(b * num_regions, d).index_add_(0, flat, dense.reshape(-1, d)).reshape(b, num_regions, d)
    counts = torch.zeros(b * num_regions).index_add_(0, flat, torch.ones(b * p)).reshape(b, num_regions)
    means = sums / counts.clamp(min=1)[..., None]
    region_object = is_object[(F.normalize(means, dim=-1) @ coarse.T).argmax(-1)] & (counts > 0)
    fg = torch.gather(region_object, 1, regions)
    if fine_level == "patch":
        classes = (dense @ fine.T).argmax(-1)
    else:
        classes = torch.gather((F.normalize(means, dim=-1) @ fine.T).argmax(-1), 1, regions)
    return torch.where(fg, classes, torch.full_like(classes, -1))


def histogram(labels: torch.Tensor, num_classes: int, memory: torch.Tensor, delta: float):
    """Part shares (B, Tf) and s_log (B,) = min over memory rows of sum |(h + delta) / (m + delta) - 1|."""
    counts = torch.stack([torch.bincount(row[row >= 0], minlength=num_classes) for row in labels]).float()
    hist = counts / counts.sum(1, keepdim=True).clamp(min=1)
    ratio = (hist[:, None] + delta) / (memory[None] + delta)
    return hist, (ratio - 1).abs().sum(-1).min(1).values


def memory_scores(levels, memory):
    """Structural maps (B, P) (nearest memory patch, mean over levels) and s_str (B,) (their max)."""
    total = 0
    for queries, bank in zip(levels, memory):
        flat = bank.reshape(-1, bank.shape[-1])
        total = total + torch.stack([torch.cdist(q, flat).min(-1).values for q in queries])
    maps = total / len(levels)
    return maps, maps.max(-1).values


def fusion(logical, structural, mean, cholesky):
    """sqrt((x - mu)^T Sigma^-1 (x - mu)) with Sigma = L L^T: (B,), (B,) -> (B,)."""
    x = torch.stack([logical, structural], 1) - mean
    z = torch.linalg.solve_triangular(cholesky, x.T, upper=False)
    return z.pow(2).sum(0).sqrt()
