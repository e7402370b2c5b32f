"""CLIP-LAD through the method seam and the command line: the registered method against the pure functions of
jzad.methods.clip_lad, its options and presets, the synthetic MVTec LOCO tree, the LOCO dataset hook (sources,
sub-types) and `python -m jzad.run --method clip_lad --dataset loco` end to end with its outputs checked
against the official layout and recomputed metrics."""

import csv
import json
from types import SimpleNamespace
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from jzad import data as jdata
from jzad.data.loco import SUBTYPE_RULES, load_loco_masks, load_loco_truth, read_loco
from jzad.data.synthetic import LOCO_SYNTHETIC_DEFECTS
from jzad.eval.spro import loco_image_metrics, loco_localization
from jzad.features import load_backbone
from jzad.features.types import BackboneRun, ImagePrep
from jzad.kernels.kmeans import kmeans
from jzad.methods import OptionError, RunContext, get_method
from jzad.methods.clip_lad import (
    GENERIC_PROMPTS,
    LOCO_PROMPTS,
    PROMPT_TEMPLATES,
    CLIPLADConfig,
    backbone_run,
    category_prompts,
    DENSE,
    prepare_grids,
    prompt_texts,
)
from jzad.run import main

SIZE = 32
JUICE = {"banana": (220, 200, 40), "cherry": (150, 20, 50), "orange": (230, 140, 30)}


@pytest.fixture(scope="module")
def tiny():
    """clip_lad, its tiny backbone with the text tower, and the run config for it."""
    method = get_method("clip_lad")
    backbone = load_backbone("random-tiny-text", backbone_run("tiny-text"), image_size=SIZE, seed=2, with_text=True)
    config = method.configure({}, RunContext("loco", SIZE, 2, backbone.taps))
    return method, backbone, config


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """A synthetic LOCO root: parts_tray and juice_bottle (three sub-types), 6 test images per category."""
    root = tmp_path_factory.mktemp("loco")
    plain = jdata.write_synthetic_loco(root, "parts_tray", num_train=3, num_validation=3, num_good=1, num_logical=3,
                                       num_structural=2, seed=1)
    juice = jdata.write_synthetic_loco(root, "juice_bottle", num_train=3, num_validation=3, num_good=2,
                                       num_logical=3, num_structural=1, seed=2, subtypes=JUICE)
    return root, plain, juice


# ---------------------------------------------------------------------------------------- the method seam


def torch_reference_scores(config, row, prompts, centres, refs, held_out, queries):
    """CLIP-LAD of one category, unpadded, from benchmarks/reference_torch_clip_lad.py (PyTorch, written from the
    paper) on the same features: N_c = row.num_clusters centres (N_c, C), the category's own prompt tables
    and fine level; fusion's mu and Sigma from NumPy -> (fused, logical, structural, maps (B, P))."""
    import torch

    from benchmarks import reference_torch_clip_lad as ref

    def tokens(features):  # grids (B, g, g, C) -> (B, 1 + g*g, C) with a zero class token, as the reference reads
        def one(grid):
            flat = np.asarray(grid).reshape(grid.shape[0], -1, grid.shape[-1])
            return torch.from_numpy(np.concatenate([np.zeros_like(flat[:, :1]), flat], axis=1))
        return [one(g) for g in features.layers], one(features.extras[DENSE])

    coarse, is_object, fine = (torch.from_numpy(np.array(a)) for a in (prompts.coarse, prompts.is_object,
                                                                         prompts.fine))
    cluster_index = [config.tap_index(t) for t in config.cluster_taps]
    structural_index = [config.tap_index(t) for t in config.structural_taps]

    def segment_and_score(features, memory=None):
        streams, dense = tokens(features)
        prep = ref.prepare(streams, dense, cluster_index, structural_index, config.upsample)
        regions = ref.assign(prep.cluster, torch.from_numpy(np.array(centres)))
        labels = ref.match(prep.dense, regions, row.num_clusters, coarse, is_object, fine, row.fine_level)
        return prep, labels

    with torch.no_grad():
        ref_prep, ref_labels = segment_and_score(refs)
        counts = torch.stack([torch.bincount(r[r >= 0], minlength=fine.shape[0]) for r in ref_labels]).float()
        memory_hist = counts / counts.sum(1, keepdim=True).clamp(min=1)

        def raw(features):
            prep, labels = segment_and_score(features)
            _, logical = ref.histogram(labels, fine.shape[0], memory_hist, config.delta)
            maps, structural = ref.memory_scores(prep.levels, ref_prep.levels)
            return logical.numpy(), structural.numpy(), maps.numpy()

        validation = np.stack(raw(held_out)[:2], axis=1).astype(np.float64)
        logical, structural, maps = raw(queries)
    mean = validation.mean(0)
    cov = np.cov(validation.T)
    cov += (config.ridge * np.trace(cov) / 2 + 1e-12) * np.eye(2)
    x = np.stack([logical, structural], axis=1) - mean
    fused = np.sqrt(np.einsum("bi,ij,bj->b", x, np.linalg.inv(cov), x))
    return fused, logical, structural, maps


@pytest.mark.parametrize("category", ["pushpins", "juice_bottle"])
def test_seam_equals_the_unpadded_torch_reference(tiny, category):
    # pushpins: N_c 4 patch-level, 5 coarse and 2 fine classes; juice_bottle: N_c 8 region-level, 4 fine classes.
    # The seam pads both to 8 cluster slots and 8 prompt rows with masks; the reference runs each category
    # unpadded with its own sizes and fine level.
    method, backbone, config = tiny
    images, _, _, _ = jdata.make_synthetic_set(3, 3, size=SIZE, seed=4)
    refs, _, _, _ = jdata.make_synthetic_set(2, 0, size=SIZE, seed=5)
    held_out, _, _, _ = jdata.make_synthetic_set(4, 0, size=SIZE, seed=6)
    prepared = method.prepare(config, backbone, category)
    # The prompts: each class the normalised mean of its normalised template embeddings, from the text tower.
    row = LOCO_PROMPTS[category]
    assert prepared.row == row
    want = []
    for name in (*row.background, *row.objects, *row.parts):
        emb = np.asarray(backbone.encode_prompts(prompt_texts([name])[0]))
        emb = (emb / np.linalg.norm(emb, axis=1, keepdims=True)).mean(0)
        want.append(emb / np.linalg.norm(emb))
    b, o, f = len(row.background), len(row.objects), len(row.parts)
    text = jax.tree.map(np.asarray, prepared.prompts)
    assert text.coarse.shape[0] == text.fine.shape[0] == 8  # padded rows: zero, masked, not objects
    np.testing.assert_allclose(text.coarse[:b + o], np.stack(want[:b + o]), atol=1e-5)
    np.testing.assert_allclose(text.fine[:f], np.stack(want[b + o:]), atol=1e-5)
    assert np.all(text.coarse[b + o:] == 0) and np.all(text.fine[f:] == 0)
    np.testing.assert_array_equal(text.is_object, [False] * b + [True] * o + [False] * (8 - b - o))
    np.testing.assert_array_equal(text.coarse_valid, np.arange(8) < b + o)
    np.testing.assert_array_equal(text.fine_valid, np.arange(8) < f)
    assert len(PROMPT_TEMPLATES) == 8

    extract = method.extractor(config, backbone)
    ref_features, held_features, query_features = extract(refs), extract(held_out), extract(images)
    state = method.fit(config, ref_features, None, prepared)
    state = method.calibrate(config, state, held_features, None)
    scores, _ = method.score(config, state, query_features, None)
    n_c = row.num_clusters
    assert (int(state.num_clusters), bool(state.region_level)) == (n_c, row.fine_level == "region")
    assert state.centres.shape[0] == 8 and state.prompts.fine.shape[0] == 8 and state.histograms.shape == (2, 8)
    # k-means in 8 slots with N_c active = the kernel's k-means with N_c clusters on the same points; rest zero.
    points = prepare_grids(tuple(ref_features.layers), ref_features.extras[DENSE], config).cluster
    plain = kmeans(points.reshape(-1, points.shape[-1]), n_c, jax.random.key(config.seed),
                      config.kmeans_iterations)
    centres = np.asarray(state.centres)
    np.testing.assert_allclose(centres[:n_c], np.asarray(plain.centres), atol=1e-6)
    np.testing.assert_array_equal(centres[n_c:], 0.0)
    unpadded = SimpleNamespace(coarse=text.coarse[:b + o], is_object=text.is_object[:b + o], fine=text.fine[:f])
    fused, logical, structural, maps = torch_reference_scores(config, row, unpadded, centres[:n_c],
                                                              ref_features, held_features, query_features)
    np.testing.assert_allclose(np.asarray(scores.keep["logical"]), logical, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(scores.keep["structural"]), structural, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(scores.image_scores), fused, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(scores.patch_scores).reshape(6, -1), maps, atol=1e-5)
    assert scores.patch_scores.shape == (6, 8, 8)


def test_maps_are_half_pixel_bilinear(tiny):
    import torch
    import torch.nn.functional as F

    method, _, config = tiny
    patch = np.random.default_rng(0).normal(size=(2, 8, 8)).astype(np.float32)
    got = np.asarray(method.maps(config, jnp.asarray(patch), (32, 32)))
    want = F.interpolate(torch.from_numpy(patch)[:, None], size=(32, 32), mode="bilinear", align_corners=False)
    np.testing.assert_allclose(got, want[:, 0].numpy(), atol=1e-6)


def test_configure_presets_and_errors(tiny):
    method, backbone, config = tiny
    assert config.taps == (1, 2, 3) and config.cluster_taps == (1, 2) and config.structural_taps == (1, 2, 3)
    assert config.num_clusters is None and config.fine_level is None and config.image_size == SIZE
    assert backbone_run("ViT-L-14") == BackboneRun(448, "gelu", (6, 12, 18))
    assert backbone_run("ViT-B-16") == BackboneRun(taps=(3, 6, 9)) and backbone_run(None) == BackboneRun()
    assert method.default_backbone == "vit-l-14-datacomp" and method.demo_backbone == "random-vit-b-16"
    assert (method.few_shot, method.pools, method.needs_text, method.calibration) == ("required", False, True,
                                                                                     "validation")
    chosen = method.configure({"clusters": 3, "fine_level": "region", "precision": "bf16"},
                              RunContext("loco", SIZE, 1, (1, 2, 3)))
    assert chosen.for_category(LOCO_PROMPTS["juice_bottle"]).num_clusters == 3 and chosen.precision == "bf16"
    juice = config.for_category(category_prompts("juice_bottle-banana"))
    assert (juice.num_clusters, juice.fine_level) == (8, "region")
    assert category_prompts("parts_tray") == GENERIC_PROMPTS
    assert category_prompts("pushpins") == LOCO_PROMPTS["pushpins"]
    with pytest.raises(OptionError, match="clip_lad options: num_clusters"):
        method.configure({"clusters": 0}, RunContext("loco", SIZE, 1, (1, 2, 3)))
    with pytest.raises(ValueError, match=r"^taps 1,2,4: NACLIP replaces the last block \(4\)"):
        method.extractor(CLIPLADConfig(image_size=SIZE, taps=(1, 2, 4), cluster_taps=(1, 2),
                                       structural_taps=(1, 2)), backbone)
    with pytest.raises(ValueError, match=r"^references: clip_lad needs normal reference images \(k >= 1\), got none"):
        method.fit(config, None, None, None)
    text_less = load_backbone("random-tiny-text", backbone_run("tiny-text"), image_size=SIZE)
    with pytest.raises(ValueError, match="loaded without its text tower"):
        method.prepare(config, text_less, "pushpins")
    features = method.extractor(config, backbone)(np.zeros((2, SIZE, SIZE, 3), np.uint8))
    state = method.fit(config, features, None, method.prepare(config, backbone, "pushpins"))
    with pytest.raises(ValueError, match="has no fusion; calibrate"):
        method.score(config, state, features)


# ------------------------------------------------------------------------------------ the synthetic tree


def test_synthetic_loco_tree(tree):
    root, plain, juice = tree
    loco = read_loco(root, "parts_tray")
    assert [d.defect_name for d in loco.defects] == [d["defect_name"] for d in LOCO_SYNTHETIC_DEFECTS]
    truth = load_loco_truth(loco)
    kinds = [plain["kinds"][Path(p).relative_to(root).as_posix()] for p in loco.images.paths]
    assert kinds == ["good", "missing_part", "extra_part", "wrong_colour", "scratch", "scratch2"]
    assert [len(f) for f in loco.mask_files] == [0, 1, 1, 1, 1, 2]
    assert truth.names == ("missing_part", "extra_part", "wrong_colour", "scratch", "scratch", "scratch")
    images = [np.asarray(Image.open(p).convert("RGB")).astype(int) for p in loco.images.paths]
    assert images[0].shape == (48, 96, 3)
    colour = {name: images[i][truth.masks[j]].mean(0) for j, (i, name) in
              enumerate(zip(truth.image_index, truth.names))}
    # A missing part shows the tray where it should be; the extra part is red, the wrong colour blue, a
    # scratch dark (noise sigma 3 around the painted colours).
    np.testing.assert_allclose(colour["missing_part"], (200, 200, 190), atol=4)
    np.testing.assert_allclose(colour["extra_part"], (200, 35, 35), atol=4)
    np.testing.assert_allclose(colour["wrong_colour"], (40, 70, 210), atol=4)
    np.testing.assert_allclose(colour["scratch"], (15, 15, 15), atol=4)
    # Scratch saturation is absolute (60 px); the others relative 1.0.
    assert truth.saturation[3] == min(60, truth.masks[3].sum()) and truth.saturation[0] == truth.masks[0].sum()
    # Sub-types cycle per split.
    juice_test = read_loco(root, "juice_bottle")
    structural = [len(f) for f, t in zip(juice_test.mask_files, juice_test.images.defect_types)
                  if t == "structural_anomalies"]
    assert structural == [1, 1, 1] and len(juice_test) == 18
    assert sorted(set(juice["subtypes"].values())) == sorted(JUICE)
    with pytest.raises(FileExistsError):
        jdata.write_synthetic_loco(root, "parts_tray")


# --------------------------------------------------------------------------------------- the dataset hook


def test_loco_categories_and_subtype_sources(tree, tmp_path):
    root, _, juice = tree
    names = SUBTYPE_RULES["juice_bottle"].names
    assert jdata.dataset_categories("loco", root) == [f"juice_bottle-{n}" for n in names] + ["parts_tray"]
    assert jdata.dataset_categories("loco", root, "juice_bottle") == [f"juice_bottle-{n}" for n in names]
    assert jdata.dataset_categories("loco", root, "juice_bottle-cherry") == ["juice_bottle-cherry"]
    assert jdata.dataset_categories("loco", root, subtypes="off") == ["juice_bottle", "parts_tray"]
    with pytest.raises(jdata.DataError, match="'juice_bottle-lime' is not a sub-type category"):
        jdata.dataset_categories("loco", root, "juice_bottle-lime")
    with pytest.raises(jdata.DataNotFoundError, match="unknown category 'screw_bag'"):
        jdata.dataset_categories("loco", root, "screw_bag")

    listing = tmp_path / "subtypes.txt"
    listing.write_text("# category/path sub-type\n" + "\n".join(f"{p} {s}" for p, s in juice["subtypes"].items()))
    # The rule reads real bottles (test_loco_subtypes_real.py); these synthetic trays take the list file.
    for mode in (str(listing),):
        sources = jdata.category_sources("loco", root, "juice_bottle-orange", shots=2, seed=3,
                                         calibration="validation", subtypes=mode)
        for part, split, count in ((sources.source, "test", 6), (sources.references, "train", 2),
                                   (sources.calibration, "validation", 3)):
            assert len(part) == count
            for path in part.image_set.paths:
                relative = Path(path).relative_to(root).as_posix()
                assert relative.startswith(f"juice_bottle/{split}/") and juice["subtypes"][relative] == "orange"
        assert sources.maps_folder == "juice_bottle" and sources.source.names[0] == "test/good/002.png"
    picked = [Path(p).name for p in sources.references.image_set.paths]
    train = [p for p, s in juice["subtypes"].items() if s == "orange" and "/train/" in p]
    assert picked == [Path(train[i]).name for i in jdata.reference_draw(3, 2, 3)]
    # Masks: the union of each image's files at the model geometry, as load_loco_masks makes them.
    masks, report = sources.source.masks(ImagePrep(), 24)
    np.testing.assert_array_equal(masks, load_loco_masks(sources.source.loco, 24))
    assert report["masks_read"] == 4 and sources.source.has_masks
    bad = tmp_path / "bad.txt"
    bad.write_text("juice_bottle/test/good/000.png lime\n")
    with pytest.raises(ValueError, match="bad.txt line 1: unknown juice_bottle sub-type 'lime'"):
        jdata.category_sources("loco", root, "juice_bottle-orange", subtypes=str(bad))


# ------------------------------------------------------------------------------------------- the CLI


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_cli_end_to_end_on_a_synthetic_loco_tree(tree, tmp_path, capsys):
    root, plain, juice = tree
    out = tmp_path / "run"
    listing = tmp_path / "subtypes.txt"
    listing.write_text("".join(f"{p} {s}\n" for p, s in juice["subtypes"].items()))
    args = ["--method", "clip_lad", "--dataset", "loco", "--data", str(root), "--shots", "2", "--loco-subtypes",
            str(listing), "--backbone",
            "random-tiny-text", "--image-size", str(SIZE), "--save-maps", "--maps-at-image-size", "--no-heatmaps",
            "--quiet", "--profile", "stages", "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    for column in ("image_auroc_logical", "image_auroc_structural", "spro_05", "spro_30"):
        assert column in printed
    for stage in ("extract", "features", "assign", "match", "histogram", "memory", "fusion", "calibrate"):
        assert f"| {stage}" in printed
    results = json.loads((out / "results.json").read_text())
    categories = {entry["category"]: entry for entry in results["categories"]}
    assert sorted(categories) == sorted(jdata.dataset_categories("loco", root)) and results["status"] == "complete"
    assert categories["parts_tray"]["subtypes"] is None
    assert categories["juice_bottle-orange"]["subtypes"]["rule"] == f"list file {listing}"
    assert categories["juice_bottle-orange"]["subtypes"]["splits"]["test"]["counts"] == {
        n: 6 for n in SUBTYPE_RULES["juice_bottle"].names}
    written = set(plain["kinds"]) | set(juice["subtypes"])
    for name, entry in categories.items():
        rows = read_rows(out / f"scores_{name}.csv")
        base = name.split("-")[0]
        assert len(rows) == entry["num_images"] == 6
        types = [r["name"].split("/")[1] for r in rows]
        scores = np.array([float(r["score"]) for r in rows])
        # The official layout at the original size; the metrics recomputed from the CSV and the TIFFs.
        tiffs = [out / "maps" / base / Path(r["name"]).with_suffix(".tiff") for r in rows]
        maps = np.stack([np.asarray(Image.open(t)) for t in tiffs])
        assert maps.shape == (6, 48, 96) and maps.dtype == np.float32
        assert all(f"{base}/{r['name']}" in written for r in rows)
        image = loco_image_metrics(scores, types)
        metrics = entry["metrics"]
        assert metrics["image_auroc_logical"] == pytest.approx(image["logical_anomalies"], abs=1e-9)
        assert metrics["image_auroc_structural"] == pytest.approx(image["structural_anomalies"], abs=1e-9)
        assert metrics["image_auroc"] == pytest.approx(image["all"], abs=1e-9)
        loco = read_loco(root, base).select([i for i, p in enumerate(read_loco(root, base).images.paths)
                                            if Path(p).relative_to(root / base).as_posix() in
                                            {r["name"] for r in rows}])
        localization = loco_localization(maps, load_loco_truth(loco), types, (0.05, 0.3))
        assert metrics["spro_05"] == pytest.approx(localization["mean"][0.05], abs=1e-9)
        assert metrics["spro_30_structural"] == pytest.approx(localization["structural_anomalies"][0.3], abs=1e-9)
    assert len(list((out / "maps" / "juice_bottle").rglob("*.tiff"))) == 18


def test_cli_rejects_misplaced_loco_options(tmp_path, capsys):
    for args, fragment in ((["--loco-subtypes", "off"], "--loco-subtypes applies to --dataset loco only"),
                           (["--method", "musc", "--clusters", "3"], "--clusters does not apply to --method musc"),
                           (["--method", "clip_lad", "--data", str(tmp_path)], "--method clip_lad needs --shots K >= 1"),
                           (["--method", "clip_lad", "--shots", "1", "--dataset", "loco", "--data", str(tmp_path),
                             "--loco-subtypes", "absent.txt"], "--loco-subtypes: expected rule, off or a sub-type")):
        assert main(args + ["--quiet", "--out", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err
        assert fragment in err and len(err.strip().splitlines()) == 1
