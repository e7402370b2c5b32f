"""Command line: score image sets with a training-free method, report metrics, timings, maps.

    python -m jzad.run                                   # built-in demo: synthetic set, random-weight ViT
    python -m jzad.run --method musc --data DIR --dataset mvtec --category all --backbone vit-l-14-336 \\
        --image-size 518 --shards 8

Per category: decode -> extract (Flax CLIP taps + image embedding) -> method stages -> metrics. Prints a
per-category metrics table with the mean and a per-image timing table by stage (device synchronised before
every clock read; compile time listed apart), and writes results.json, scores.csv and heatmap overlays
under --out.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from jzad import data as jdata
from jzad.progress import Progress
from jzad.timing import StageClock

METHODS = ("musc", "fslc")
DEMO_BACKBONE = "random-vit-b-16"
DEMO_CATEGORY = "synthetic"
DEMO_IMAGE_SIZE = 224
VISA_WINDOWS = (1, 8, 9)
DEFAULT_WINDOWS = (1, 2, 3)
METRIC_COLUMNS = ("image_auroc", "image_ap", "image_f1_max", "pixel_auroc", "pixel_ap", "pixel_f1_max", "pro")


@dataclass(frozen=True)
class CategoryData:
    """One category's images ready for a backbone: uint8 (N, S, S, 3) plus labels/masks when known."""

    name: str
    images: np.ndarray
    image_names: tuple[str, ...]
    labels: np.ndarray | None
    defect_types: tuple[str, ...]
    masks: np.ndarray | None
    references: np.ndarray | None


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from err
    if not values:
        raise argparse.ArgumentTypeError(f"expected at least one integer, got {text!r}")
    return values


def _interval(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected LO,HI such as 0,0.3, got {text!r}") from err
    return lo, hi


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; every option is documented in --help."""
    p = argparse.ArgumentParser(
        prog="python -m jzad.run",
        description="Training-free anomaly detection: score a test set, print metrics and per-stage timings, "
        "write results.json, scores.csv and heatmap overlays. Without --data it runs the built-in demo "
        "(a synthetic industrial set with planted defects, random-weight ViT-B/16: no downloads, no weights).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--method", choices=METHODS, default="musc", help="scoring method")
    p.add_argument("--data", type=Path, default=None, help="dataset root; omitted = built-in synthetic demo")
    p.add_argument("--dataset", choices=jdata.DATASETS, default="mvtec", help="layout of --data")
    p.add_argument("--category", default="all", help="category name, or 'all' for every category")
    p.add_argument("--backbone", default=None,
                   help=f"catalogue name of a ported CLIP (see `python -m jzad.weights list`), or "
                   f"'{DEMO_BACKBONE}' / 'random-vit-l-14-336' for random weights of the real shape; "
                   f"default: {DEMO_BACKBONE} for the demo, vit-l-14-336 otherwise")
    p.add_argument("--weights", type=Path, default=None,
                   help="a CLIP checkpoint file or Hugging Face directory to load directly (ported in memory)")
    p.add_argument("--image-size", type=int, default=None,
                   help="model input side; default: the backbone's recommended run size (MuSc: 518 for ViT-L)")
    p.add_argument("--taps", type=_int_list, default=None,
                   help="1-based ViT blocks to tap, e.g. 6,12,18,24; default: the catalogue's MuSc taps")
    p.add_argument("--activation", choices=("gelu", "quick_gelu"), default=None,
                   help="MLP activation; default: the catalogue's run setting (erf GELU at a resized input)")
    p.add_argument("--shards", type=int, default=1, help="devices to split the scoring over")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="matmul precision")
    p.add_argument("--batch-size", type=int, default=8, help="images per backbone forward")
    p.add_argument("--r-list", type=_int_list, default=(1, 3, 5), help="LNAMD aggregation degrees")
    p.add_argument("--interval", type=_interval, default=(0.0, 0.3), help="MSM rank interval LO,HI")
    p.add_argument("--windows", type=_int_list, default=None,
                   help=f"RsCIN windows; default {VISA_WINDOWS} for VisA, {DEFAULT_WINDOWS} otherwise; 0 = off")
    p.add_argument("--subsets", type=int, default=1, help="MuSc divide_num: stratified subsets scored apart")
    p.add_argument("--mode", choices=("zero_shot", "few_shot", "plus"), default="zero_shot",
                   help="MuSc variant: zero-shot, few-shot (references join the pool), MuSc+ (references only)")
    p.add_argument("--shots", type=int, default=0, help="normal reference images from the train split")
    p.add_argument("--schedule", choices=("auto", "rows", "pairs"), default="auto", help="MSM work order")
    p.add_argument("--aupro", choices=("mvtec", "musc"), default="mvtec", help="AUPRO convention")
    p.add_argument("--out", type=Path, default=None, help="output folder; default runs/<date-time>")
    p.add_argument("--no-heatmaps", action="store_true", help="skip writing overlay PNGs")
    p.add_argument("--heatmap-size", type=int, default=256, help="side of the written overlays")
    p.add_argument("--seed", type=int, default=0, help="seed for random weights and the demo set")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _check_args(args: argparse.Namespace) -> None:
    if args.shards < 1 or args.shards > len(jax.devices()):
        raise SystemExit(
            f"--shards: expected 1..{len(jax.devices())} (devices here: {jax.devices()[0].platform} x "
            f"{len(jax.devices())}); on CPU set XLA_FLAGS=--xla_force_host_platform_device_count=N"
        )
    if args.data is not None and not args.data.is_dir():
        raise SystemExit(f"--data: {args.data} is not a directory")
    if args.subsets < 1:
        raise SystemExit(f"--subsets: expected >= 1, got {args.subsets}")
    if args.mode != "zero_shot" and args.shots < 1:
        raise SystemExit(f"--mode {args.mode} needs --shots R >= 1 normal reference images")
    if args.batch_size < 1:
        raise SystemExit(f"--batch-size: expected >= 1, got {args.batch_size}")


def demo_category(size: int, seed: int) -> CategoryData:
    """The built-in synthetic set: 16 normal and 12 defective images with exact masks."""
    images, masks, labels, types = jdata.make_synthetic_set(16, 12, size=size, seed=seed)
    refs, _, _, _ = jdata.make_synthetic_set(4, 0, size=size, seed=seed + 1)
    names = tuple(f"{t}_{i:03d}" for i, t in enumerate(types))
    return CategoryData(DEMO_CATEGORY, images, names, np.asarray(labels), tuple(types), masks, refs)


def load_category(args: argparse.Namespace, category: str, size: int, clock: StageClock) -> CategoryData:
    """Read one category of --data at the model size (images, labels, masks, references)."""
    start = time.perf_counter()
    image_set = jdata.read_dataset(args.dataset, args.data, category)
    images = jdata.load_images(image_set.paths, size)
    masks = jdata.load_set_masks(image_set, size) if image_set.has_masks else None
    references = None
    if args.shots > 0:
        train = jdata.read_dataset(args.dataset, args.data, category, split="train")
        if len(train) < args.shots:
            raise SystemExit(f"--shots {args.shots}: {category} has only {len(train)} train images")
        references = jdata.load_images(train.paths[: args.shots], size)
    clock.add("decode", time.perf_counter() - start)
    root = Path(args.data).resolve()
    names = tuple(str(Path(p).resolve().relative_to(root)) for p in image_set.paths)
    labels = None if image_set.labels is None else np.asarray(image_set.labels)
    return CategoryData(category, images, names, labels, image_set.defect_types, masks, references)


def extract_features(encoder, images: np.ndarray, batch_size: int, clock: StageClock, progress: Progress):
    """Run the backbone over uint8 images batch by batch (``ImageEncoder.encode_batches`` pads the last one,
    so one shape is compiled), timing each batch and advancing the progress bar.

    Returns (taps: tuple of (N, 1 + h*w, C) arrays, embeds (N, D)).
    """
    from jzad.backbone import preprocess_images

    n = images.shape[0]
    if images.shape[1] != encoder.image_size:
        raise ValueError(f"images are {images.shape[1]} px, the encoder expects {encoder.image_size}")
    batch = min(batch_size, n)
    tap_parts, embed_parts = [], []
    for first in range(0, n, batch):
        pixels = preprocess_images(list(images[first:first + batch]), images.shape[1])
        taps, embeds = clock.run("extract", encoder.encode_batches, pixels, batch)
        tap_parts.append(taps)
        embed_parts.append(embeds)
        progress.update(len(pixels), "extract")
    taps = tuple(jnp.concatenate([part[i] for part in tap_parts]) for i in range(len(tap_parts[0])))
    return taps, jnp.concatenate(embed_parts)


def musc_stages(layer_tokens, embeds, ref_tokens, config, mesh, windows, clock: StageClock):
    """MuSc stage by stage (the same arithmetic as ``score_musc``), each stage timed apart.

    One (layer, r) feature set is alive at a time, so memory stays at one layer's features.
    Returns (patch_scores (N, h, w), image_scores (N,)).
    """
    from jzad.methods import musc

    total = None
    for index, tokens in enumerate(layer_tokens):
        for r in config.r_list:
            feats = clock.run("lnamd", lambda t, rr: musc.lnamd(musc.tokens_to_grid(t), rr), tokens, r)
            refs = None
            if ref_tokens is not None:
                refs = clock.run("lnamd", lambda t, rr: musc.lnamd(musc.tokens_to_grid(t), rr), ref_tokens[index], r)
            scores = clock.run("msm", musc.mutual_scores, feats, config, mesh, refs)
            total = scores if total is None else total + scores
            del feats, refs
    n, count = total.shape
    side = int(round(count ** 0.5))
    patch = (total / (len(layer_tokens) * len(config.r_list))).reshape(n, side, side)
    raw = clock.run("upsample", musc.max_of_upsampled, patch, config.map_size)
    image_scores = clock.run("rscin", musc.rscin, raw, embeds, windows) if windows else raw
    return patch, image_scores


def full_maps(patch_scores, size: int, clock: StageClock, chunk: int = 32) -> np.ndarray:
    """Upsample (N, h, w) patch maps to (N, size, size) on device in chunks; float32 on host."""
    from jzad.methods.musc import upsample

    parts = []
    n = patch_scores.shape[0]
    for first in range(0, n, chunk):
        block = patch_scores[first:first + chunk]
        real = block.shape[0]
        if real < chunk and n > chunk:
            block = jnp.concatenate([block, jnp.repeat(block[-1:], chunk - real, axis=0)])
        parts.append(np.asarray(clock.run("upsample", upsample, block, size))[:real])
    return np.concatenate(parts)


def category_metrics(cat: CategoryData, image_scores: np.ndarray, maps: np.ndarray, aupro_convention: str) -> dict:
    """Image metrics when labels are known, pixel metrics and PRO when masks are; nan otherwise."""
    from jzad.eval import metrics

    out = {name: float("nan") for name in METRIC_COLUMNS}
    if cat.labels is not None and 0 < int(cat.labels.sum()) < len(cat.labels):
        image = metrics.image_metrics(image_scores, cat.labels)
        out.update(image_auroc=image["auroc"], image_ap=image["ap"], image_f1_max=image["f1_max"])
    if cat.masks is not None and cat.masks.any():
        pixel = metrics.pixel_metrics(maps, cat.masks)
        out.update(pixel_auroc=pixel["auroc"], pixel_ap=pixel["ap"], pixel_f1_max=pixel["f1_max"])
        out["pro"] = metrics.aupro(maps, cat.masks, convention=aupro_convention)
    return out


def build_encoder(args: argparse.Namespace):
    """The image encoder the options name, and a description of it for the report.

    "random-<arch>" gives random weights of the real shapes (the demo default, benchmarks); anything else is
    a catalogue name, a ported name under weights/, or --weights (a checkpoint file or folder).
    """
    from jzad.backbone import init_random_encoder, load_image_encoder

    dtype = "bfloat16" if args.precision == "bf16" else "float32"
    demo = args.data is None
    name = args.backbone or (DEMO_BACKBONE if demo and args.weights is None else "vit-l-14-336")
    if args.weights is None and name.startswith("random-"):
        arch = name[len("random-"):]
        size = args.image_size or (DEMO_IMAGE_SIZE if demo else None)
        encoder = init_random_encoder(arch, image_size=size, taps=args.taps, seed=args.seed,
                                      activation=args.activation, dtype=dtype)
        description = (f"{arch} with RANDOM weights (seed {args.seed}; not pretrained, so scores on real photos "
                       "are weak)")
    else:
        source = args.weights if args.weights is not None else name
        try:
            encoder = load_image_encoder(source, image_size=args.image_size, taps=args.taps,
                                         activation=args.activation, dtype=dtype)
        except (FileNotFoundError, ConnectionError, ValueError) as err:
            raise SystemExit(
                f"--backbone/--weights: could not load {source!r}: {err}\n"
                "Port a checkpoint you have with `python -m jzad.weights port FILE --name vit-l-14-336`, pass "
                f"--weights FILE, or use --backbone {DEMO_BACKBONE} (random weights)."
            ) from err
        description = f"{name} ({encoder.origin}, {encoder.config.activation})"
    info = {"name": name, "description": description, "origin": encoder.origin, "image_size": encoder.image_size,
            "taps": list(encoder.taps), "activation": encoder.config.activation, "width": encoder.width,
            "grid": encoder.grid_size, "dtype": dtype}
    return encoder, info


def method_config(args: argparse.Namespace, size: int):
    """The frozen method config the CLI options describe."""
    if args.method == "musc":
        from jzad.methods.musc import MuScConfig

        windows = args.windows if args.windows is not None else (
            VISA_WINDOWS if args.dataset == "visa" else DEFAULT_WINDOWS)
        active = tuple(w for w in windows if w > 0)
        return MuScConfig(
            r_list=args.r_list, interval=args.interval, windows=active or (1,),
            mode=args.mode, precision=args.precision, map_size=size, schedule=args.schedule,
        ), active
    from jzad.methods.fslc import FSLCConfig

    return FSLCConfig(precision=args.precision), ()


def fit_fslc_config(config, num_images: int, patches: int):
    """FSLC defaults shrunk to a small set: at most N init images and S * M init coreset patches."""
    import dataclasses

    images = min(config.num_init_images, num_images)
    return dataclasses.replace(
        config, num_init_images=images, init_coreset_size=min(config.init_coreset_size, images * patches)
    )


def score_category(args, cat: CategoryData, encoder, size: int, mesh, clock: StageClock, show: bool) -> dict:
    """Features, method stages and metrics of one category; returns its report entry."""
    n = len(cat.images)
    refs = 0 if cat.references is None or args.mode == "zero_shot" else len(cat.references)
    progress = Progress(n + refs + args.subsets, f"{cat.name:>14}", enabled=show)
    taps, embeds = extract_features(encoder, cat.images, args.batch_size, clock, progress)
    ref_taps = None
    if refs:
        ref_taps, _ = extract_features(encoder, cat.references, args.batch_size, clock, progress)
    config, windows = method_config(args, size)
    subsets = [np.arange(n)]
    if args.subsets > 1:
        labelled = jdata.ImageSet(
            dataset="in-memory", category=cat.name, paths=cat.image_names,
            labels=None if cat.labels is None else tuple(int(v) for v in cat.labels),
            defect_types=cat.defect_types, mask_paths=(None,) * n, has_masks=False,
        )
        subsets = jdata.stratified_subsets(labelled, args.subsets)
    patch_scores, image_scores = None, np.zeros(n, np.float32)
    for indices in subsets:
        index = jnp.asarray(indices)
        sub_taps = tuple(t[index] for t in taps)
        if args.method == "musc":
            patch, scores = musc_stages(sub_taps, embeds[index], ref_taps, config, mesh, windows, clock)
        else:
            from jzad.methods import fslc

            patch, scores = fslc.score_fslc_staged(
                sub_taps, embeds[index], fit_fslc_config(config, len(indices), sub_taps[0].shape[1] - 1), mesh, clock
            )
        patch = np.asarray(patch)
        if patch_scores is None:
            patch_scores = np.zeros((n,) + patch.shape[1:], np.float32)
        patch_scores[indices] = patch
        image_scores[indices] = np.asarray(scores)
        progress.update(1, args.method)
    progress.close()
    maps = full_maps(jnp.asarray(patch_scores), size, clock)
    return {"category": cat.name, "metrics": category_metrics(cat, image_scores, maps, args.aupro),
            "image_scores": image_scores, "maps": maps, "num_images": n}


def write_outputs(args, out: Path, cat: CategoryData, entry: dict) -> None:
    """scores.csv rows and heatmap overlays of one category."""
    from jzad.eval import heatmaps, report

    report.write_scores_csv(
        out / f"scores_{cat.name}.csv", cat.image_names,
        None if cat.labels is None else cat.labels, entry["image_scores"], cat.defect_types,
    )
    if not args.no_heatmaps:
        size = args.heatmap_size
        images = np.stack([_resize(img, size, Image.BICUBIC) for img in cat.images])
        maps = np.stack([_resize(m, size, Image.BILINEAR) for m in entry["maps"]])
        masks = None
        if cat.masks is not None:
            masks = np.stack([_resize(m.astype(np.float32), size, Image.NEAREST) > 0.5 for m in cat.masks])
        heatmaps.save_overlays(out / "heatmaps" / cat.name, list(cat.image_names), images, maps, masks)


def _resize(array: np.ndarray, size: int, resample) -> np.ndarray:
    """Resize a uint8 RGB image or a float32 map to (size, size) with PIL."""
    if array.shape[0] == size and array.shape[1] == size:
        return array
    image = Image.fromarray(array if array.dtype == np.uint8 else array.astype(np.float32))
    return np.asarray(image.resize((size, size), resample))


def timing_rows(clock: StageClock, num_images: int) -> list[dict]:
    """Per-image steady-state ms and total compile seconds for each stage, in pipeline order."""
    order = ["decode", "extract", "lnamd", "msm", "init", "expand", "filter", "score", "rscin", "upsample"]
    stages = [s for s in order if s in clock.run_seconds] + [s for s in clock.run_seconds if s not in order]
    per_image = clock.per_image_ms(num_images)
    rows = [{"stage": s, "ms_per_image": per_image[s], "compile_s": clock.compile_seconds.get(s, 0.0)}
            for s in stages]
    rows.append({"stage": "total", "ms_per_image": sum(per_image.values()),
                 "compile_s": sum(clock.compile_seconds.values())})
    return rows


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m jzad.run``; returns the process exit status."""
    args = build_parser().parse_args(argv)
    _check_args(args)
    from jzad.eval import report
    from jzad.kernels import device_mesh

    show = not args.quiet
    demo = args.data is None
    encoder, backbone_info = build_encoder(args)
    size = backbone_info["image_size"]
    mesh = device_mesh(args.shards)
    out = args.out or Path("runs") / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    if demo:
        categories = [DEMO_CATEGORY]
        data_text = (f"built-in synthetic demo set ({size}px images, 16 normal + 12 with planted "
                     f"scratches/spots/missing pieces, seed {args.seed})")
    else:
        categories = (jdata.list_categories(args.dataset, args.data) if args.category == "all"
                      else [args.category])
        data_text = f"{args.dataset} at {args.data}"
    print(f"method: {args.method} | backbone: {backbone_info['description']} | data: {data_text}")
    print(f"device: {jax.devices()[0].device_kind} x {args.shards} shard(s) | precision: {args.precision} | "
          f"image size: {size} | taps: {backbone_info['taps']}")

    total_clock, rows, entries, total_images = StageClock(), [], [], 0
    for category in categories:
        clock = StageClock()
        if demo:
            cat = demo_category(size, args.seed)
        else:
            cat = load_category(args, category, size, clock)
        entry = score_category(args, cat, encoder, size, mesh, clock, show)
        start = time.perf_counter()
        write_outputs(args, out, cat, entry)
        clock.add("write", time.perf_counter() - start)
        total_clock.merge(clock)
        total_images += entry["num_images"]
        rows.append({"category": category, **entry["metrics"]})
        entries.append({
            "category": category, "num_images": entry["num_images"], "metrics": entry["metrics"],
            "timing_ms_per_image": clock.per_image_ms(entry["num_images"]),
            "compile_s": dict(clock.compile_seconds),
        })

    print()
    print(report.format_table(rows, ("category",) + METRIC_COLUMNS, title=f"{args.method} metrics"))
    print()
    timing = timing_rows(total_clock, total_images)
    print(report.format_table(timing, ("stage", "ms_per_image", "compile_s"),
                              title=f"timing per image over {total_images} images (compile time apart)",
                              mean_row=False))
    payload = {
        "method": args.method,
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "backbone": backbone_info,
        "data": data_text,
        "environment": report.environment_info(),
        "categories": entries,
        "mean": {c: float(np.nanmean([r[c] for r in rows])) if any(np.isfinite(r[c]) for r in rows)
                 else float("nan") for c in METRIC_COLUMNS},
        "timing": timing,
    }
    report.write_results_json(out / "results.json", payload)
    print(f"\nwrote {out / 'results.json'}, scores_*.csv" + ("" if args.no_heatmaps else ", heatmaps/"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
