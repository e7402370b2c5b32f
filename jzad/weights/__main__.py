"""Command line: ``python -m jzad.weights port SRC --name NAME [...]`` and ``python -m jzad.weights list``.

Ports CLIP checkpoints, torchvision / timm ResNets (``--name wide-resnet50-2``), EfficientNet-Lite state dicts
and DINO / DINOv2 (torch hub .pth, Hugging Face folders, ONNX graphs of a Hugging Face Dinov2); the family comes from the
catalogue entry of the name, else from the source's tensor names (``jzad.weights.families``)."""

from __future__ import annotations

import argparse
import sys

from jzad.backbone.config import ACTIVATIONS

WEIGHTS_FLAGS = {"arch": "--arch", "force": "--force", "weights_dir": "--weights-dir"}
"""Argument names the porting library's errors use -> this command's flags (``jzad.cli.in_flag_terms``)."""


def _port(args) -> int:
    from jzad.weights import get_family, manifest_family, port, read_manifest

    taps = None
    if args.taps:
        parts = [t.strip() for t in args.taps.split(",") if t.strip()]
        taps = tuple(int(t) if t.isdigit() else t for t in parts)
    target = port(
        args.src,
        args.name,
        arch=args.arch,
        activation=args.activation,
        image_size=args.image_size,
        taps=taps,
        weights_dir_override=args.weights_dir,
        force=args.force,
    )
    manifest = read_manifest(target)
    family = get_family(manifest_family(manifest))
    config = family.from_dict(manifest["config"])
    print(f"ported {manifest['source']['path']} -> {target}")
    print(f"  {family.name} architecture {manifest['architecture'] or 'custom'}: {family.describe(config)}")
    recorded = {k: manifest[k] for k in ("image_size", "activation", "taps") if manifest[k] is not None}
    print(
        f"  run settings recorded: {recorded or 'none (each method uses its preset)'}; "
        f"tokenizer {'copied' if manifest['tokenizer'] else 'absent'}"
    )
    return 0


def _list(args) -> int:
    """The catalogue with each entry usable or not here (and the command that makes it usable), then ported
    checkpoints that are not in the catalogue."""
    from jzad.weights import list_ported, load_catalogue, manifest_family, weights_dir
    from jzad.weights.availability import catalogue_availability

    folder = weights_dir(args.weights_dir)
    catalogue = load_catalogue()
    states = catalogue_availability(folder)
    print(f"weights folder: {folder}")
    print(f"{'name':<20} {'family':<12} {'architecture':<20} {'native':<7} {'usable':<7} from / to make it usable")
    for name, entry in catalogue.items():
        state = states[name]
        print(f"{name:<20} {entry.family:<12} {entry.architecture:<20} {entry.native_image_size:<7} "
              f"{'yes' if state.usable else 'no':<7} {state.where if state.usable else state.how}")
    for name, manifest in list_ported(folder).items():
        if name not in catalogue:
            print(f"{name:<20} {manifest_family(manifest):<12} {manifest.get('architecture') or 'custom':<20} "
                  f"{manifest['native_image_size'] or '-'!s:<7} {'yes':<7} ported from {manifest['source']['path']}")
    usable = [n for n, s in states.items() if s.usable]
    print(f"usable now: {', '.join(usable) or 'none'} ({len(usable)} of {len(catalogue)} catalogue entries)")
    return 0


def main(argv=None) -> int:
    """Parse argv and run the sub-command; errors print one line and exit 2."""
    parser = argparse.ArgumentParser(prog="python -m jzad.weights",
                                     description="Port and list checkpoints (CLIP, ResNet, EfficientNet-Lite, "
                                                 "DINO / DINOv2).")
    sub = parser.add_subparsers(dest="command", required=True)
    port = sub.add_parser("port", help="port a PyTorch checkpoint (CLIP, torchvision/timm ResNet) to <weights folder>/<name>/")
    port.add_argument("src", help="OpenAI .pt, OpenCLIP/HF state dict, HF folder, torchvision/timm ResNet .pth, "
                      "or HF id (needs the hub)")
    port.add_argument("--name", required=True, help="folder name under the weights dir (catalogue names get defaults)")
    port.add_argument("--arch", help="named architecture to check the tensors against (e.g. ViT-L-14-336, "
                      "wide-resnet50-2)")
    port.add_argument("--activation", choices=ACTIVATIONS,
                      help="run activation recorded in the manifest (overrides a method's preset)")
    port.add_argument("--image-size", type=int,
                      help="run image size recorded in the manifest (overrides a method's preset)")
    port.add_argument("--taps", help="run taps recorded in the manifest, comma-separated: 1-based blocks (CLIP) "
                      "or stage names such as layer2,layer3 (ResNet), 1-based blocks (DINO / DINOv2)")
    port.add_argument("--weights-dir", help="weights folder (default $JZAD_WEIGHTS_DIR, else the user data folder's jzad/weights)")
    port.add_argument("--force", action="store_true", help="replace an existing ported folder")
    listing = sub.add_parser("list", help="list the catalogue: which checkpoints are usable here, and the "
                             "command that makes each of the others usable")
    listing.add_argument("--weights-dir", help="weights folder (default $JZAD_WEIGHTS_DIR, else the user data folder's jzad/weights)")
    args = parser.parse_args(argv)
    from jzad.backbone.port import MissingDependencyError
    from jzad.cli import in_flag_terms

    try:
        return _port(args) if args.command == "port" else _list(args)
    except (ValueError, FileNotFoundError, FileExistsError, ConnectionError, MissingDependencyError) as err:
        print(f"python -m jzad.weights: error: {in_flag_terms(str(err), WEIGHTS_FLAGS)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
