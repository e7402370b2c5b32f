"""Runs the original amazon-science/patchcore-inspection code itself (a local copy; nothing of it is in this
repository) and saves its image scores and maps: the oracle of ``benchmarks/patchcore_original_parity.py``.

    python benchmarks/patchcore_original_oracle.py --copy PATH --data MVTEC_ROOT --category hazelnut \\
        --weights WRN.pt --shots 1,4 --test N --out ORACLE.npz [--make-weights]

Run in its own process (the parity driver starts it), so the original's imports (torchvision, timm, faiss) never
enter the process that runs jzad. What runs is the original's: ``patchcore.datasets.mvtec.MVTecDataset`` (its
file order and torchvision transforms: Resize(256), CenterCrop(224), ToTensor, Normalize),
``patchcore.patchcore.PatchCore.load / fit / predict`` with ``patchcore.common.FaissNN`` (faiss-cpu),
``patchcore.sampler.IdentitySampler`` and the settings of the issue's ``bin/run_patchcore.py`` call (layer2 +
layer3, pretrain and target embedding 1024, patch size 3, 1 nearest neighbour). Substitutions, all outside the
original's code:
- the backbone is torchvision's own ``wide_resnet50_2(weights=None)`` with the state dict of ``--weights``
  (``patchcore.backbones.load`` would download ImageNet weights, which cannot reach this machine);
- BatchNorm setting "checkpoint" puts that backbone in eval mode before ``PatchCore.load`` (the original leaves it
  in train mode, which is setting "original");
- where torchvision's C extension cannot load beside the installed torch (STACK.md: a CUDA wheel beside CPU torch
  2.13), the schemas of the two operators its Python import registers fake kernels for (``torchvision::nms``,
  ``torchvision::qnms``) are declared first, so its pure-Python transforms and models import; PatchCore calls
  neither operator. ``--make-weights`` writes a random torchvision WRN-50-2 state dict (torch.manual_seed 0).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

BN_STATS = ("original", "checkpoint")


def import_torchvision() -> str:
    """Import torchvision; declare the two operator schemas first where its C extension cannot load. Returns
    what was done (for the results file)."""
    probe = subprocess.run([sys.executable, "-c", "import torchvision"], capture_output=True, text=True)
    if probe.returncode != 0:
        if "torchvision::nms" not in probe.stderr:
            raise RuntimeError(f"torchvision does not import: {probe.stderr.strip().splitlines()[-1]}")
        library = torch.library.Library("torchvision", "DEF")
        for name in ("nms", "qnms"):
            library.define(f"{name}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        import_torchvision.library = library
        note = "torchvision C extension not loadable: schemas of torchvision::nms and ::qnms declared before import"
    else:
        note = "torchvision imported as installed"
    import torchvision

    return f"{note}; torchvision {torchvision.__version__}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--copy", type=Path, required=True, help="the patchcore-inspection copy (holds src/patchcore)")
    parser.add_argument("--data", type=Path, required=True, help="MVTec-layout root")
    parser.add_argument("--category", default="hazelnut")
    parser.add_argument("--weights", type=Path, required=True, help="torchvision wide_resnet50_2 state dict (.pt)")
    parser.add_argument("--make-weights", action="store_true", help="write random torchvision weights to --weights")
    parser.add_argument("--shots", default="1,4")
    parser.add_argument("--test", type=int, default=0, help="first N test images (0: all)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--exact", action="store_true", help="also the image scores from the original's own "
                        "embedding and memory bank with float64 nearest distances (how much faiss's float32 "
                        "distance arithmetic contributes)")
    args = parser.parse_args(argv)
    source = args.copy / "src"
    if not (source / "patchcore" / "patchcore.py").is_file():
        raise SystemExit(f"--copy {args.copy}: expected the patchcore-inspection repository (src/patchcore/patchcore.py)")
    note = import_torchvision()
    import torchvision

    sys.path.insert(0, str(source))
    import patchcore.common
    import patchcore.patchcore
    import patchcore.sampler
    from patchcore.datasets import mvtec

    if args.make_weights:
        torch.manual_seed(0)
        torch.save(torchvision.models.wide_resnet50_2(weights=None).state_dict(), args.weights)
    state = torch.load(args.weights, map_location="cpu")
    train = mvtec.MVTecDataset(str(args.data), args.category, resize=256, imagesize=224, split=mvtec.DatasetSplit.TRAIN)
    test = mvtec.MVTecDataset(str(args.data), args.category, resize=256, imagesize=224, split=mvtec.DatasetSplit.TEST)
    test_count = args.test or len(test)
    test_subset = torch.utils.data.Subset(test, range(test_count))
    out = {"note": np.array(note), "test_paths": np.array([test.data_to_iterate[i][2] for i in range(test_count)])}
    torch.set_num_threads(max(1, torch.get_num_threads()))
    for shots in (int(k) for k in args.shots.split(",")):
        out[f"train_paths_{shots}"] = np.array([train.data_to_iterate[i][2] for i in range(shots)])
        for bn_stats in BN_STATS:
            backbone = torchvision.models.wide_resnet50_2(weights=None)
            backbone.load_state_dict(state)
            if bn_stats == "checkpoint":
                backbone.eval()
            model = patchcore.patchcore.PatchCore(torch.device("cpu"))
            model.load(backbone=backbone, layers_to_extract_from=["layer2", "layer3"], device=torch.device("cpu"),
                       input_shape=(3, 224, 224), pretrain_embed_dimension=1024, target_embed_dimension=1024,
                       patchsize=3, anomaly_score_num_nn=1, featuresampler=patchcore.sampler.IdentitySampler(),
                       nn_method=patchcore.common.FaissNN(False, 1))
            loader = torch.utils.data.DataLoader
            model.fit(loader(torch.utils.data.Subset(train, range(shots)), batch_size=4, shuffle=False))
            scores, maps, _, _ = model.predict(loader(test_subset, batch_size=4, shuffle=False))
            out[f"scores_{shots}_{bn_stats}"] = np.asarray(scores, np.float64)
            out[f"maps_{shots}_{bn_stats}"] = np.stack([np.asarray(m, np.float32) for m in maps])
            if args.exact:
                bank = np.asarray(model.anomaly_scorer.detection_features, np.float64)
                exact = []
                for item in test_subset:
                    with torch.no_grad():
                        features = np.asarray(model._embed(item["image"][None]), np.float64)
                    cross = features @ bank.T
                    sq = (features**2).sum(1)[:, None] + (bank**2).sum(1)[None, :] - 2 * cross
                    nearest = bank[np.argmin(sq, axis=1)]
                    exact.append(((features - nearest) ** 2).sum(1).max())
                out[f"exact_scores_{shots}_{bn_stats}"] = np.asarray(exact)
            print(f"original PatchCore: {shots} shot(s), BatchNorm {bn_stats}: {test_count} images scored",
                  file=sys.stderr, flush=True)
    np.savez(args.out, **out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
