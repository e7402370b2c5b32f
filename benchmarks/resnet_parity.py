"""Parity of the Flax WideResNet-50-2 and PatchCore embedding against their PyTorch references, per input size.

    python benchmarks/resnet_parity.py [--sizes 224x224,256x256,77x93] [--batch 1] [--seed 0]

Random weights of WideResNet-50-2's real shapes (``init_resnet``, every BN statistic random) are fed to both
the Flax model and ``reference_torch_resnet.TorchResNet`` (torchvision's structure and names) through
``resnet_to_torch``; inputs are random normal (already-normalised) images. For each size: max abs diff of
layer2 / layer3 and that diff over the reference's max |value| ("relative to scale"). Then the PatchCore
embedding of those taps (closed form) against the literal unfold / interpolate / adaptive-pool steps.
Writes benchmarks/results/resnet_parity_<platform>.json with the device and versions.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import jax
import numpy as np
import torch

from benchmarks import harness
from benchmarks.reference_torch_patchcore import embed_reference
from benchmarks.reference_torch_resnet import TorchResNet
from jzad.backbone.resnet import encode_resnet, get_resnet_config, init_resnet
from jzad.backbone.resnet_port import resnet_to_torch
from jzad.methods.patchcore import patchcore_embed

RESULTS = Path(__file__).resolve().parent / "results"


def parse_sizes(text: str) -> list[tuple[int, int]]:
    sizes = []
    for part in text.split(","):
        height, width = part.lower().split("x")
        sizes.append((int(height), int(width)))
    return sizes


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="224x224,256x256,77x93")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    config = get_resnet_config("wide-resnet50-2")
    params = init_resnet(config, args.seed)
    model = TorchResNet(config.layers, config.width_per_group).eval()
    state = {k: torch.from_numpy(v.copy()) for k, v in resnet_to_torch(params, config).items()}
    model.load_state_dict(state, strict=False)
    rng = np.random.default_rng(args.seed)
    cases = []
    for height, width in parse_sizes(args.sizes):
        images = rng.normal(size=(args.batch, height, width, 3)).astype(np.float32)
        with torch.no_grad():
            reference = model.features(torch.from_numpy(images).permute(0, 3, 1, 2))
        taps = encode_resnet(params, images, config)
        case = {"size": [height, width], "batch": args.batch}
        for name, ref, out in zip(("layer2", "layer3"), reference, taps):
            ref_nhwc = ref.permute(0, 2, 3, 1).numpy()
            diff = float(np.abs(np.asarray(out) - ref_nhwc).max())
            scale = float(np.abs(ref_nhwc).max())
            case[name] = {"shape": list(out.shape), "max_abs_diff": diff, "scale": scale, "relative": diff / scale}
        embedded = np.asarray(patchcore_embed(*taps, 1024))
        literal = embed_reference(*reference, 1024).numpy()
        case["patchcore_embed"] = {
            "shape": list(embedded.shape),
            "max_abs_diff": float(np.abs(embedded - literal).max()),
            "scale": float(np.abs(literal).max()),
        }
        cases.append(case)
        print(json.dumps(case))
    result = {
        "benchmark": "resnet_parity",
        "arch": "wide-resnet50-2",
        **harness.environment("torch"),
        "weights": "random (init_resnet), BN statistics random",
        "cases": cases,
    }
    path = harness.write_json(RESULTS / f"resnet_parity_{jax.default_backend()}.json", result)
    print(f"wrote {path}")
    return result


if __name__ == "__main__":
    main()
