"""Roofline of MuSc (and FSLC) stages: FLOPs and bytes from the shapes, measured device ceilings, floors.

Counts are for a whole set of N images; divide by N for per-image numbers. FLOPs count multiply-adds as 2.
Bytes are the compulsory traffic of a good implementation (every input read once, every output written
once, plus the intermediate a stage cannot avoid materialising), in the element width of the data.

- CLIP forward (``vit_forward_flops``): patch embedding, per block the q|k|v projection, the two attention
  products (2 T^2 W each, summed over heads), the output projection and the MLP; ln_post + projection of CLS.
  Elementwise work (layer norms, softmax, GELU) is left out: under 2% of the matmul FLOPs for ViT-B and up.
- LNAMD per (layer, r): joint layer norm (6 per element), r x r pool (r^2 per element for r > 1), L2
  normalisation (3 per element); read the tokens, write the features.
- MSM per (layer, r): ``2 C M^2 N (N - 1)`` for the ordered schedule (each image against every other image,
  what the reference runs); the symmetric schedule (one M x M block serves both directions) needs half.
  Bytes: the features once, the (N, M, N - 1) nearest-distance matrix written and read once for the
  interval mean (the min over the other image's patches is fused into the GEMM), the (N, M) scores.
- Upsample: bilinear interpolation to H x W (4 multiplies + 3 adds per output pixel) and the max (1).
- RsCIN: the (N, N) cosine Gram matrix of the embeddings, normalisation, per window a k-term weighted sum.
- FSLC: k-center greedy (init), nearest-coreset distances of each expanded image, filter (coreset against
  every image), score (every image against the final coreset), each a GEMM of the stated sizes.

Floor of a stage = max(FLOPs / matmul rate, bytes / copy bandwidth), with the measured device ceilings
(``measure_ceilings``): the best of a large JAX and a large PyTorch matmul in fp32 and bf16, and the JAX
streaming bandwidth of y = 2 x. Using the matmul rate for elementwise stages makes their floor optimistic,
which is the point of a floor.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

FP32_BYTES = 4


@dataclass(frozen=True)
class VitShape:
    """The shape of a ViT image tower: width W, blocks L, MLP width F, patch p, input side S, embedding D."""

    width: int
    layers: int
    mlp_dim: int
    patch_size: int
    image_size: int
    embed_dim: int | None = None

    def __post_init__(self):
        for name in ("width", "layers", "mlp_dim", "patch_size", "image_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"VitShape.{name}: expected a positive int, got {value!r}")
        if self.image_size % self.patch_size:
            raise ValueError(
                f"VitShape: image_size {self.image_size} is not a multiple of patch_size {self.patch_size}"
            )

    @property
    def grid(self) -> int:
        """Patches per side g = S / p."""
        return self.image_size // self.patch_size

    @property
    def tokens(self) -> int:
        """Tokens per image T = 1 + g^2 (CLS first)."""
        return 1 + self.grid**2

    @property
    def parameters(self) -> int:
        """Weight count of the vision tower (patch conv, CLS, positions, blocks, layer norms, projection)."""
        w, f = self.width, self.mlp_dim
        block = (3 * w * w + 3 * w) + (w * w + w) + (w * f + f) + (f * w + w) + 4 * w
        proj = 0 if self.embed_dim is None else w * self.embed_dim
        return 3 * self.patch_size**2 * w + w + self.tokens * w + 2 * w + self.layers * block + 2 * w + proj


def vit_forward_flops(shape: VitShape) -> float:
    """Matmul FLOPs of one image through the whole tower (every block, ln_post(CLS) @ proj).

    patch embedding 2 g^2 (3 p^2) W; per block 2 T (3 W^2 + W^2 + 2 W F) + 4 T^2 W; projection 2 W D.
    """
    w, t, f = shape.width, shape.tokens, shape.mlp_dim
    patch_embed = 2.0 * shape.grid**2 * 3 * shape.patch_size**2 * w
    block = 2.0 * t * (4 * w * w + 2 * w * f) + 4.0 * t * t * w
    proj = 0.0 if shape.embed_dim is None else 2.0 * w * shape.embed_dim
    return patch_embed + shape.layers * block + proj


def vit_forward_bytes(shape: VitShape, batch: int, heads: int, elem_bytes: int = FP32_BYTES) -> float:
    """Compulsory bytes of one image in a batch of ``batch``: weights / batch + per-block activations.

    Per block: the residual stream read and written (2 T W), q|k|v written and read (6 T W), the attention
    probabilities written and read (2 heads T^2, not fused), the MLP hidden state written and read (2 T F).
    Plus the input image (3 S^2).
    """
    if batch < 1 or heads < 1:
        raise ValueError(f"vit_forward_bytes: batch and heads must be >= 1, got {batch}, {heads}")
    w, t, f = shape.width, shape.tokens, shape.mlp_dim
    block = 2 * t * w + 6 * t * w + 2 * heads * t * t + 2 * t * f
    return elem_bytes * (shape.parameters / batch + shape.layers * block + 3 * shape.image_size**2)


def lnamd_flops(n: int, m: int, c: int, r: int) -> float:
    """LNAMD of one (layer, r) over N images of M patches, C channels: N M C (9 + r^2 [r > 1])."""
    return float(n) * m * c * (9 + (r * r if r > 1 else 0))


def lnamd_bytes(n: int, m: int, c: int, elem_bytes: int = FP32_BYTES) -> float:
    """Read the (N, M, C) tokens, write the (N, M, C) features."""
    return 2.0 * n * m * c * elem_bytes


def msm_flops(n: int, m: int, c: int, symmetric: bool = False) -> float:
    """Distance GEMM FLOPs of one (layer, r): 2 C M^2 N (N - 1) ordered; half of it symmetric."""
    ordered = 2.0 * c * m * m * n * (n - 1)
    return ordered / 2 if symmetric else ordered


def msm_bytes(n: int, m: int, c: int, feature_bytes: int = FP32_BYTES) -> float:
    """Features once, the (N, M, N - 1) nearest distances written and read, (N, M) scores written (fp32)."""
    return float(n) * m * c * feature_bytes + FP32_BYTES * (2.0 * n * m * (n - 1) + n * m)


def upsample_flops(n: int, out_h: int, out_w: int) -> float:
    """Bilinear maps (7 per output pixel) and their max (1 per pixel): 8 N H W."""
    return 8.0 * n * out_h * out_w


def upsample_bytes(n: int, m: int, out_h: int, out_w: int) -> float:
    """Read (N, M) patch scores, write the (N, H, W) maps."""
    return FP32_BYTES * float(n) * (m + out_h * out_w)


def rscin_flops(n: int, d: int, windows: tuple[int, ...]) -> float:
    """Gram matrix 2 N^2 D, L2 normalisation 3 N D, per window k: 3 N k (normalise + weighted sum)."""
    return 2.0 * n * n * d + 3.0 * n * d + sum(3.0 * n * min(k, n) for k in windows)


def rscin_bytes(n: int, d: int, windows: tuple[int, ...]) -> float:
    """Embeddings read once, the (N, N) similarity written once and read once per window."""
    return FP32_BYTES * (float(n) * d + float(n) * n * (1 + len(windows)))


@dataclass(frozen=True)
class MuscShape:
    """Sizes of one MuSc run: N images, M = h*w patches, C channels, L taps, r values, embed D, map H x W."""

    n: int
    m: int
    c: int
    layers: int
    r_list: tuple[int, ...]
    embed_dim: int
    map_h: int
    map_w: int
    windows: tuple[int, ...]


def musc_stage_costs(shape: MuscShape, vit: VitShape | None, batch: int = 1, heads: int = 1,
                     precision: str = "fp32") -> dict[str, dict]:
    """{stage: {"flops", "bytes", "rate"}} for the MuSc stages of a whole set (N images).

    ``rate`` names the ceiling the stage's FLOPs run at ("fp32" or "bf16" matmul). MSM also carries
    "flops_ordered" (what the per-image reference computes) and "flops" = the symmetric count (the floor).
    ``vit`` None leaves out the feature extraction stage.
    """
    elem = 2 if precision == "bf16" else FP32_BYTES
    n, m, c = shape.n, shape.m, shape.c
    combos = shape.layers * len(shape.r_list)
    costs = {}
    if vit is not None:
        costs["extract"] = {
            "flops": n * vit_forward_flops(vit),
            "bytes": n * vit_forward_bytes(vit, batch, heads, elem),
            "rate": precision,
        }
    costs["lnamd"] = {
        "flops": shape.layers * sum(lnamd_flops(n, m, c, r) for r in shape.r_list),
        "bytes": combos * lnamd_bytes(n, m, c),
        "rate": "fp32",
    }
    costs["msm"] = {
        "flops": combos * msm_flops(n, m, c, symmetric=True),
        "flops_ordered": combos * msm_flops(n, m, c),
        "bytes": combos * msm_bytes(n, m, c, elem),
        "rate": precision,
    }
    costs["upsample"] = {
        "flops": upsample_flops(n, shape.map_h, shape.map_w),
        "bytes": upsample_bytes(n, m, shape.map_h, shape.map_w),
        "rate": "fp32",
    }
    costs["rscin"] = {
        "flops": rscin_flops(n, shape.embed_dim, shape.windows),
        "bytes": rscin_bytes(n, shape.embed_dim, shape.windows),
        "rate": "fp32",
    }
    return costs


def kcenter_flops(points: int, c: int, k: int) -> float:
    """k-center greedy over (points, C): per pick one distance row (2 points C) and a running min (points)."""
    return float(k) * points * (2 * c + 1)


def fslc_stage_costs(n: int, m: int, c: int, embed_dim: int, init_images: int, init_coreset: int,
                     per_image: int, final_coreset: int) -> dict[str, dict]:
    """{stage: {"flops", "bytes", "rate"}} of FSLC over N images (fp32).

    init: k-center over the N embeddings (S picks) and over the S M chosen patches (M0 picks).
    expand: each of the N - S remaining images against the growing coreset (size M0 + i per_image).
    filter: the expanded coreset (K = M0 + (N - S) per_image) against every image: 2 K N M C.
    score: every image's patches against the final coreset: 2 N M K_final C.
    """
    remaining = n - init_images
    expanded = init_coreset + remaining * per_image
    grow = sum(init_coreset + i * per_image for i in range(remaining))
    return {
        "init": {
            "flops": kcenter_flops(n, embed_dim, init_images) + kcenter_flops(init_images * m, c, init_coreset),
            "bytes": FP32_BYTES * (init_images * float(m) * c + float(n) * embed_dim),
            "rate": "fp32",
        },
        "expand": {
            "flops": 2.0 * m * c * grow,
            "bytes": FP32_BYTES * (remaining * float(m) * c + expanded * float(c)),
            "rate": "fp32",
        },
        "filter": {
            "flops": 2.0 * expanded * n * m * c,
            "bytes": FP32_BYTES * (n * float(m) * c + expanded * float(c) + 2.0 * expanded * n),
            "rate": "fp32",
        },
        "score": {
            "flops": 2.0 * n * m * final_coreset * c,
            "bytes": FP32_BYTES * (n * float(m) * c + final_coreset * float(c) + n * float(m)),
            "rate": "fp32",
        },
    }


def floor_seconds(flops: float, nbytes: float, flop_rate: float, bandwidth: float) -> float:
    """Roofline floor max(flops / flop_rate, bytes / bandwidth) in seconds."""
    if flop_rate <= 0 or bandwidth <= 0:
        raise ValueError(f"floor_seconds: ceilings must be positive, got {flop_rate}, {bandwidth}")
    return max(flops / flop_rate, nbytes / bandwidth)


def _best_seconds(fn, repeats: int) -> float:
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - start)
    return min(runs)


def measure_ceilings(matmul_size: int, copy_mib: int, repeats: int = 5, torch_device=None) -> dict:
    """Measured device ceilings: matmul FLOP/s (fp32, bf16; JAX and PyTorch) and JAX copy bandwidth.

    matmul: (n, n) @ (n, n) = 2 n^3 FLOPs, JAX with Precision.HIGHEST for fp32 (true fp32) and bf16 inputs;
    PyTorch on ``torch_device`` (None: skipped) with TF32 off. copy: y = 2 x over ``copy_mib`` MiB of fp32,
    read + write. The device ceiling is the best rate either framework reached. Each timing synchronises
    the device before reading the clock (block_until_ready / cuda.synchronize); the best of ``repeats``
    after one warm-up call (a ceiling is the best rate the device reaches, so the fastest run counts).
    """
    import jax
    import jax.numpy as jnp

    if matmul_size < 16 or copy_mib < 1 or repeats < 1:
        raise ValueError(f"measure_ceilings: bad sizes matmul_size={matmul_size}, copy_mib={copy_mib}")
    n = matmul_size
    key_a, key_b = jax.random.split(jax.random.key(0))
    out: dict = {"matmul_size": n, "copy_mib": copy_mib, "repeats": repeats}
    for precision, dtype in (("fp32", jnp.float32), ("bf16", jnp.bfloat16)):
        a = jax.random.normal(key_a, (n, n), jnp.float32).astype(dtype)
        b = jax.random.normal(key_b, (n, n), jnp.float32).astype(dtype)
        prec = jax.lax.Precision.HIGHEST if precision == "fp32" else jax.lax.Precision.DEFAULT
        matmul = jax.jit(lambda x, y, p=prec: jnp.matmul(x, y, precision=p)).lower(a, b).compile()
        jax.block_until_ready(matmul(a, b))
        seconds = _best_seconds(lambda: jax.block_until_ready(matmul(a, b)), repeats)
        out[f"jax_matmul_{precision}_flop_s"] = 2.0 * n**3 / seconds
        del a, b
    elements = copy_mib * (1 << 20) // FP32_BYTES
    x = jnp.ones((elements,), jnp.float32)
    copy = jax.jit(lambda v: v * 2.0).lower(x).compile()
    jax.block_until_ready(copy(x))
    seconds = _best_seconds(lambda: jax.block_until_ready(copy(x)), repeats)
    out["jax_copy_bytes_s"] = 2.0 * elements * FP32_BYTES / seconds
    del x
    if torch_device is not None:
        out.update(_torch_matmul_rates(n, repeats, torch_device))
    for precision in ("fp32", "bf16"):
        rates = [out[k] for k in (f"jax_matmul_{precision}_flop_s", f"torch_matmul_{precision}_flop_s") if k in out]
        out[f"matmul_{precision}_flop_s"] = max(rates)
    out["copy_bytes_s"] = out["jax_copy_bytes_s"]
    return out


def _torch_matmul_rates(n: int, repeats: int, device) -> dict:
    import torch

    device = torch.device(device)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    allow_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    out = {}
    try:
        generator = torch.Generator().manual_seed(0)
        for precision, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            a = torch.randn(n, n, generator=generator).to(device=device, dtype=dtype)
            b = torch.randn(n, n, generator=generator).to(device=device, dtype=dtype)
            with torch.no_grad():
                torch.matmul(a, b)
                sync()

                def run():
                    torch.matmul(a, b)
                    sync()

                seconds = _best_seconds(run, repeats)
            out[f"torch_matmul_{precision}_flop_s"] = 2.0 * n**3 / seconds
            del a, b
    finally:
        torch.backends.cuda.matmul.allow_tf32 = allow_tf32
    return out


def stage_floors(costs: dict[str, dict], ceilings: dict) -> dict[str, float]:
    """{stage: floor seconds} of ``musc_stage_costs`` / ``fslc_stage_costs`` under the measured ceilings."""
    return {
        stage: floor_seconds(c["flops"], c["bytes"], ceilings[f"matmul_{c['rate']}_flop_s"], ceilings["copy_bytes_s"])
        for stage, c in costs.items()
    }
