"""Plain PyTorch reference of WinCLIP (as anomalib computes it) and WinCLIP+ (FastRef Sec. 5.2, Eqs. 8-9);
the parity oracle and the timing baseline for jzad.methods.winclip / winclip_plus.

- ``TorchCLIP``: an OpenAI-layout CLIP (the state dict ``jzad.backbone.port.flax_to_openai`` writes) in plain
  torch: conv patches, class token, position embeddings, ln_pre, pre-norm blocks with explicit attention,
  ln_post, proj; the causal text tower with end-of-text pooling. ``encode_windows`` runs each window's
  [class token + window tokens] sequence through the blocks as its own batch row, the per-window pass
  anomalib intends (see ``jzad.methods.winclip``).
- ``winclip_reference``: anomalib's WinClipModel steps: prompt means, softmax(cos / T), masks from
  ``F.unfold`` of the index grid, harmonic aggregation by a loop over patches with ``nan_to_num``, the
  multi-scale harmonic mean, min (1 - cos) / 2 visual association, the few-shot mean and fusions, then
  ``F.interpolate`` bilinear.
- ``winclip_plus_reference``: the patch memory's coreset by PatchCore's sampler on unit tokens
  (``reference_torch_patchcore.memory_bank_reference``, the JAX code's draws replayed), each query refined by
  ``reference_torch_fastref.refine_reference`` (one query at a time, torch autograd M-step), the refined
  scores in place of WinCLIP's patch association, maps bilinear then scipy's Gaussian.
Each stage is timed on a ``StageTimer`` ("text", "full_pass", "window_passes", "zero_shot", "coreset",
"few_shot", "refine", "upsample").
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.reference_torch import StageTimer, maybe_stage
from benchmarks.reference_torch_fastref import refine_reference
from benchmarks.reference_torch_patchcore import maps_reference, memory_bank_reference


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


class TorchCLIP:
    """CLIP from an OpenAI-named state dict (name -> array): vision heads, text heads, activation, eps."""

    def __init__(self, state: dict, vision_heads: int, text_heads: int | None, activation: str, eps: float = 1e-5,
                 device: str = "cpu"):
        self.w = {k: torch.as_tensor(np.asarray(v), dtype=torch.float32, device=device) for k, v in state.items()}
        self.vision_heads, self.text_heads, self.eps = vision_heads, text_heads, eps
        self.activation = activation

    def _ln(self, x, name):
        return F.layer_norm(x, x.shape[-1:], self.w[f"{name}.weight"], self.w[f"{name}.bias"], self.eps)

    def _block(self, x, prefix, heads, mask=None):
        w = self.w
        y = self._ln(x, f"{prefix}.ln_1")
        q, k, v = F.linear(y, w[f"{prefix}.attn.in_proj_weight"], w[f"{prefix}.attn.in_proj_bias"]).chunk(3, -1)
        batch, tokens, width = y.shape
        split = [t.reshape(batch, tokens, heads, width // heads).transpose(1, 2) for t in (q, k, v)]
        logits = (split[0] / (width // heads) ** 0.5) @ split[1].transpose(-1, -2)
        if mask is not None:
            logits = logits + mask
        attended = (logits.softmax(-1) @ split[2]).transpose(1, 2).reshape(batch, tokens, width)
        x = x + F.linear(attended, w[f"{prefix}.attn.out_proj.weight"], w[f"{prefix}.attn.out_proj.bias"])
        hidden = F.linear(self._ln(x, f"{prefix}.ln_2"), w[f"{prefix}.mlp.c_fc.weight"], w[f"{prefix}.mlp.c_fc.bias"])
        hidden = F.gelu(hidden) if self.activation == "gelu" else hidden * torch.sigmoid(1.702 * hidden)
        return x + F.linear(hidden, w[f"{prefix}.mlp.c_proj.weight"], w[f"{prefix}.mlp.c_proj.bias"])

    def _blocks(self, x, tower, heads, mask=None):
        index = 0
        while f"{tower}resblocks.{index}.ln_1.weight" in self.w:
            x = self._block(x, f"{tower}resblocks.{index}", heads, mask)
            index += 1
        return x

    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised images (B, 3, S, S) -> tokens (B, 1 + g*g, W) before ln_pre (class token first)."""
        w = self.w
        patches = F.conv2d(images, w["visual.conv1.weight"], stride=w["visual.conv1.weight"].shape[-1])
        patches = patches.flatten(2).transpose(1, 2)
        cls = w["visual.class_embedding"].expand(len(images), 1, -1)
        return torch.cat([cls, patches], dim=1) + w["visual.positional_embedding"]

    @torch.no_grad()
    def transform(self, tokens: torch.Tensor) -> torch.Tensor:
        """ln_pre and every vision block over (B, T, W)."""
        return self._blocks(self._ln(tokens, "visual.ln_pre"), "visual.transformer.", self.vision_heads)

    @torch.no_grad()
    def encode_image(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens from ``embed`` -> (image embeddings (B, D), ln_post'ed patch tokens (B, g*g, W))."""
        out = self._ln(self.transform(tokens), "visual.ln_post")
        return out[:, 0] @ self.w["visual.proj"], out[:, 1:]

    @torch.no_grad()
    def encode_windows(self, tokens: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """Window embeddings (B, n, D): masks (k, n) patch indices as ``F.unfold`` gives them; every window's
        [class token, its k tokens] is one sequence of the batch."""
        rows = torch.cat([torch.zeros(1, masks.shape[1], dtype=torch.long), masks.long() + 1]).T  # (n, 1 + k)
        sequences = tokens[:, rows].reshape(-1, rows.shape[1], tokens.shape[-1])
        out = self._ln(self.transform(sequences)[:, 0], "visual.ln_post") @ self.w["visual.proj"]
        return out.reshape(len(tokens), masks.shape[1], -1)

    @torch.no_grad()
    def encode_text(self, ids: torch.Tensor) -> torch.Tensor:
        """Token ids (P, L) -> (P, D): causal blocks, ln_final at the end-of-text (largest id) @ projection."""
        w = self.w
        length = ids.shape[1]
        x = w["token_embedding.weight"][ids] + w["positional_embedding"][:length]
        mask = torch.full((length, length), float("-inf")).triu(1)
        x = self._ln(self._blocks(x, "transformer.", self.text_heads, mask), "ln_final")
        return x[torch.arange(len(ids)), ids.argmax(-1)] @ w["text_projection"]


def unfold_masks(grid: int, scale: int) -> torch.Tensor:
    """anomalib's make_masks: (scale*scale, n) patch indices, ``F.unfold`` of the index grid, stride 1."""
    index = torch.arange(grid * grid, dtype=torch.float32).reshape(1, grid, grid)
    return F.unfold(index, kernel_size=scale, stride=1).long()


def class_scores(embeddings: torch.Tensor, text: torch.Tensor, temperature: float) -> torch.Tensor:
    """softmax(cos / T) toward the anomalous class: (..., D), (2, D) -> (...)."""
    return ((_unit(embeddings) @ _unit(text).T) / temperature).softmax(-1)[..., 1]


def harmonic_aggregation(window_scores: torch.Tensor, grid: int, masks: torch.Tensor) -> torch.Tensor:
    """anomalib's loop: per patch, count / sum(1 / s) over the windows covering it, nan_to_num -> (B, g, g)."""
    scores = torch.zeros(window_scores.shape[0], grid * grid)
    for idx in range(grid * grid):
        covering = (masks == idx).any(dim=0)
        scores[:, idx] = covering.sum() / (1.0 / window_scores[:, covering]).sum(dim=1)
    return torch.nan_to_num(scores, nan=0.0, posinf=0.0).reshape(-1, grid, grid)


def visual_association(embeddings: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """min over the reference rows of (1 - cos) / 2: (B, M, C), (R, C) -> (B, M)."""
    return (1.0 - _unit(embeddings) @ _unit(reference).T).min(dim=-1).values / 2.0


def text_embeddings(model: TorchCLIP, normal_ids: torch.Tensor, anomalous_ids: torch.Tensor) -> torch.Tensor:
    """(2, D): the mean raw embedding of the normal, then the anomalous prompts."""
    return torch.stack([model.encode_text(normal_ids).mean(0), model.encode_text(anomalous_ids).mean(0)])


def encode(model: TorchCLIP, images: torch.Tensor, grid: int, scales, timer=None, device="cpu"):
    """(image (B, D), windows [(B, n_s, D)], patches (B, g*g, W)) timed as "full_pass" and "window_passes"."""
    with maybe_stage(timer, "full_pass", device):
        tokens = model.embed(images)
        image, patches = model.encode_image(tokens)
    with maybe_stage(timer, "window_passes", device):
        windows = [model.encode_windows(tokens, unfold_masks(grid, s)) for s in scales]
    return image, windows, patches


def zero_shot(image, windows, text, grid, scales, temperature):
    """anomalib's zero-shot: (image scores (B,), map (B, g, g)), the harmonic mean of the image score and
    the per-scale window maps."""
    image_scores = class_scores(image, text, temperature)
    maps = [image_scores[:, None, None].expand(-1, grid, grid)]
    for embeds, scale in zip(windows, scales):
        maps.append(harmonic_aggregation(class_scores(embeds, text, temperature), grid, unfold_masks(grid, scale)))
    return image_scores, len(maps) / (1.0 / torch.stack(maps)).sum(dim=0)


def window_maps(windows, memories, grid, scales):
    """Per scale, the harmonic aggregation of the window associations to the window memory (B, g, g)."""
    return [harmonic_aggregation(visual_association(w, m), grid, unfold_masks(grid, s))
            for w, m, s in zip(windows, memories, scales)]


def fuse(zero, few_map):
    """(image, map) fusion: ((s0 + max few) / 2, (zero-shot map + few-shot map) / 2)."""
    image, maps = zero
    return (image + few_map.amax(dim=(-2, -1))) / 2.0, (maps + few_map) / 2.0


def winclip_reference(model: TorchCLIP, queries: torch.Tensor, text_ids, references: torch.Tensor | None, grid: int,
                      scales=(2, 3), temperature: float = 0.07, size: int = 240, timer: StageTimer | None = None,
                      device: str = "cpu"):
    """WinCLIP: normalised query images (N, 3, S, S), prompt ids (normal (P0, L), anomalous (P1, L)), normalised
    references (R, 3, S, S) or None -> (image scores (N,), maps (N, size, size)) as torch tensors."""
    with maybe_stage(timer, "text", device):
        text = text_embeddings(model, *text_ids)
    memory = None
    if references is not None:
        _, ref_windows, ref_patches = encode(model, references, grid, scales)
        memory = (ref_patches.reshape(-1, ref_patches.shape[-1]), [w.reshape(-1, w.shape[-1]) for w in ref_windows])
    image, windows, patches = encode(model, queries, grid, scales, timer, device)
    with maybe_stage(timer, "zero_shot", device):
        result = zero_shot(image, windows, text, grid, scales, temperature)
    if memory is not None:
        with maybe_stage(timer, "few_shot", device):
            maps = [visual_association(patches, memory[0]).reshape(-1, grid, grid)]
            maps += window_maps(windows, memory[1], grid, scales)
            result = fuse(result, torch.stack(maps).mean(dim=0))
    with maybe_stage(timer, "upsample", device):
        up = F.interpolate(result[1][:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    return result[0], up


def winclip_plus_reference(model: TorchCLIP, queries: torch.Tensor, text_ids, references: torch.Tensor, grid: int,
                           draws, ratio: float, refine_kwargs: dict, refine_windows: bool = False, scales=(2, 3),
                           temperature: float = 0.07, size: int = 240, sigma: float = 4.0,
                           timer: StageTimer | None = None, device: str = "cpu"):
    """WinCLIP+ -> (image scores (N,), maps (N, size, size) numpy, refined patch scores (N, g, g)).

    draws: the coreset's (projection or None, start points) per memory (patches first, then each scale's
    windows when refine_windows), as ``jzad.methods.patchcore.coreset_draws`` makes them. refine_kwargs:
    ``reference_torch_fastref.refine_reference``'s keywords (distance "cosine")."""
    with maybe_stage(timer, "text", device):
        text = text_embeddings(model, *text_ids)
    _, ref_windows, ref_patches = encode(model, references, grid, scales)
    with maybe_stage(timer, "coreset", device):
        prototypes = memory_bank_reference(_unit(ref_patches.reshape(-1, ref_patches.shape[-1])), ratio, *draws[0])
        memories = [w.reshape(-1, w.shape[-1]) for w in ref_windows]
        if refine_windows:
            memories = [memory_bank_reference(_unit(m), ratio, *d) for m, d in zip(memories, draws[1:])]
    image, windows, patches = encode(model, queries, grid, scales, timer, device)
    with maybe_stage(timer, "zero_shot", device):
        zero = zero_shot(image, windows, text, grid, scales, temperature)
    if not refine_windows:
        with maybe_stage(timer, "few_shot", device):
            maps = window_maps(windows, memories, grid, scales)
    with maybe_stage(timer, "refine", device):
        refined = torch.stack([refine_reference(f, prototypes, **refine_kwargs)[0] for f in patches])
        refined = refined.reshape(-1, grid, grid)
        if refine_windows:
            maps = [harmonic_aggregation(torch.stack([refine_reference(f, m, **refine_kwargs)[0] for f in w]), grid,
                                         unfold_masks(grid, s)) for w, m, s in zip(windows, memories, scales)]
        image_scores, fused = fuse(zero, torch.stack([refined] + maps).mean(dim=0))
    with maybe_stage(timer, "upsample", device):
        out = maps_reference(fused, size, sigma)
    return image_scores, out, refined
