"""MVTec LOCO reader (jzad.data.loco) on a small fake tree written here: non-square images, several ground-truth
channels per image, the defects config; the cable sub-type rule on synthetic splicing connectors and the sub-type
list file (the juice rule is tested on real photos in test_loco_subtypes_real.py)."""

import colorsys
import dataclasses
import json

import numpy as np
import pytest
from PIL import Image

from jzad.data.loco import (
    SUBTYPE_RULES,
    HueRule,
    LocoSet,
    LocoTruths,
    assign_subtypes,
    hsv,
    load_loco_masks,
    load_loco_truth,
    loco_categories,
    read_defects_config,
    read_loco,
    read_subtype_list,
    select_subtype,
    subtype_of,
    subtype_votes,
)
from jzad.eval.spro import loco_localization

H, W = 18, 31  # not square, like LOCO's 1600 x 800
CONFIG = [
    {"defect_name": "missing_part", "pixel_value": 255, "saturation_threshold": 1.0, "relative_saturation": True},
    {"defect_name": "extra_part", "pixel_value": 254, "saturation_threshold": 20, "relative_saturation": False},
    {"defect_name": "scratch", "pixel_value": 253, "saturation_threshold": 1.0, "relative_saturation": True},
]


def save(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def box(value, top, bottom, left, right):
    out = np.zeros((H, W), np.uint8)
    out[top:bottom, left:right] = value
    return out


def make_tree(root, category="breakfast_box"):
    """2 train, 1 validation, test: 2 good, 2 logical (one with two channels), 1 structural."""
    rng = np.random.default_rng(0)
    cat = root / category
    cat.mkdir(parents=True)
    (cat / "defects_config.json").write_text(json.dumps(CONFIG))
    for split, count in (("train", 2), ("validation", 1)):
        for i in range(count):
            save(cat / split / "good" / f"{i:03d}.png", rng.integers(0, 255, (H, W, 3), dtype=np.uint8))
    for i in range(2):
        save(cat / "test" / "good" / f"{i:03d}.png", rng.integers(0, 255, (H, W, 3), dtype=np.uint8))
    channels = {
        ("logical_anomalies", "000"): [box(255, 2, 6, 3, 9), box(254, 4, 12, 7, 20)],  # overlapping channels
        ("logical_anomalies", "001"): [box(254, 10, 16, 20, 29)],
        ("structural_anomalies", "000"): [box(253, 1, 3, 1, 30)],
    }
    for (kind, stem), chans in channels.items():
        save(cat / "test" / kind / f"{stem}.png", rng.integers(0, 255, (H, W, 3), dtype=np.uint8))
        for j, c in enumerate(chans):
            save(cat / "ground_truth" / kind / stem / f"{j:03d}.png", c)
    return channels


def test_read_test_split_and_truth(tmp_path):
    channels = make_tree(tmp_path)
    loco = read_loco(tmp_path, "breakfast_box")
    names = [p.split("breakfast_box/")[1] for p in loco.images.paths]
    assert names == [
        "test/good/000.png", "test/good/001.png", "test/logical_anomalies/000.png",
        "test/logical_anomalies/001.png", "test/structural_anomalies/000.png",
    ]
    assert loco.images.labels == (0, 0, 1, 1, 1)
    assert loco.images.defect_types == (
        "good", "good", "logical_anomalies", "logical_anomalies", "structural_anomalies"
    )
    assert loco.images.dataset == "loco" and not loco.images.has_masks
    assert [len(f) for f in loco.mask_files] == [0, 0, 2, 1, 1]
    assert loco.mask_files[2][1].endswith("ground_truth/logical_anomalies/000/001.png")
    assert [d.defect_name for d in loco.defects] == ["missing_part", "extra_part", "scratch"]
    assert loco.has_truth

    truth = load_loco_truth(loco)
    assert truth.masks.shape == (4, H, W)
    np.testing.assert_array_equal(truth.image_index, [2, 2, 3, 4])
    assert truth.names == ("missing_part", "extra_part", "extra_part", "scratch")
    want = [channels[("logical_anomalies", "000")][0] > 0, channels[("logical_anomalies", "000")][1] > 0,
            channels[("logical_anomalies", "001")][0] > 0, channels[("structural_anomalies", "000")][0] > 0]
    np.testing.assert_array_equal(truth.masks, np.stack(want))
    # missing_part relative 1.0 -> its area 24; extra_part absolute 20 -> min(20, 104) and min(20, 54); scratch 58.
    np.testing.assert_array_equal(truth.saturation, [24, 20, 20, 58])

    # A perfect map reaches AUC-sPRO 1 everywhere through the files.
    maps = np.zeros((5, H, W), np.float32)
    for mask, i in zip(truth.masks, truth.image_index):
        maps[i][mask] = 1.0
    result = loco_localization(maps, truth, loco.images.defect_types)
    assert result["mean"][0.05] == pytest.approx(1.0)
    # The same channels decoded one image at a time (what the CLI's sPRO streams over) give the same numbers.
    noisy = maps + np.random.default_rng(0).normal(0, 0.6, maps.shape).astype(np.float32)
    assert loco_localization(list(noisy), LocoTruths(loco), loco.images.defect_types) == \
        loco_localization(noisy, truth, loco.images.defect_types)


def test_union_masks_resized(tmp_path):
    channels = make_tree(tmp_path)
    loco = read_loco(tmp_path, "breakfast_box")
    masks = load_loco_masks(loco, (9, 16), rule="nonzero")
    assert masks.shape == (5, 9, 16) and not masks[:2].any()
    union = (channels[("logical_anomalies", "000")][0] > 0) | (channels[("logical_anomalies", "000")][1] > 0)
    resized = np.asarray(Image.fromarray(np.where(union, 255, 0).astype(np.uint8)).resize((16, 9), Image.BILINEAR))
    np.testing.assert_array_equal(masks[2], resized > 0)


def test_train_and_validation_splits(tmp_path):
    make_tree(tmp_path)
    make_tree(tmp_path, "pushpins")
    assert loco_categories(tmp_path) == ["breakfast_box", "pushpins"]
    train = read_loco(tmp_path, "breakfast_box", "train")
    assert len(train) == 2 and train.images.labels == (0, 0) and train.mask_files == ((), ())
    validation = read_loco(tmp_path, "breakfast_box", "validation")
    assert len(validation) == 1 and validation.images.defect_types == ("good",)
    picked = read_loco(tmp_path, "breakfast_box").select([4, 0])
    assert picked.images.defect_types == ("structural_anomalies", "good") and len(picked.mask_files[0]) == 1


def test_reader_errors(tmp_path):
    make_tree(tmp_path)
    cat = tmp_path / "breakfast_box"
    with pytest.raises(ValueError, match="unknown split 'val'"):
        read_loco(tmp_path, "breakfast_box", "val")
    with pytest.raises(FileNotFoundError, match="category folder not found"):
        read_loco(tmp_path, "pushpins")
    with pytest.raises(FileNotFoundError, match="no <category>/test folders"):
        loco_categories(cat / "test")
    for f in (cat / "ground_truth" / "logical_anomalies" / "001").iterdir():
        f.unlink()
    with pytest.raises(FileNotFoundError, match=r"no ground-truth channels for .*logical_anomalies/001.png"):
        read_loco(tmp_path, "breakfast_box")
    partial = read_loco(tmp_path, "breakfast_box", allow_missing_masks=True)
    assert not partial.has_truth
    with pytest.raises(ValueError, match="some anomalous images have no ground-truth channels"):
        load_loco_truth(partial)
    (cat / "test" / "misc").mkdir()
    with pytest.raises(ValueError, match=r"unexpected folders \['misc'\]"):
        read_loco(tmp_path, "breakfast_box", allow_missing_masks=True)
    (cat / "defects_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_defects_config(cat / "defects_config.json")
    (cat / "defects_config.json").unlink()
    with pytest.raises(FileNotFoundError, match="defects config not found"):
        read_loco(tmp_path, "breakfast_box", allow_missing_masks=True)
    assert len(read_loco(tmp_path, "breakfast_box", "train")) == 2  # normal splits need no config


def test_channel_with_two_values_is_an_error(tmp_path):
    make_tree(tmp_path)
    bad = box(255, 0, 2, 0, 2)
    bad[5, 5] = 254
    save(tmp_path / "breakfast_box" / "ground_truth" / "logical_anomalies" / "001" / "000.png", bad)
    with pytest.raises(ValueError, match="logical_anomalies/001/000.png: a channel must hold 0 and exactly one"):
        load_loco_truth(read_loco(tmp_path, "breakfast_box"))


# ------------------------------------------------------------------------------------------------ sub-types

JUICE = {"cherry": (110, 15, 30), "orange": (235, 130, 25), "banana": (232, 212, 110)}
CABLE = {"red": (200, 30, 35), "yellow": (230, 200, 40), "blue": (40, 85, 205)}


def juice_bottle(liquid, icon, seed, h=160, w=80):
    """Black background, a glass bottle of liquid in the middle, a white label with a fruit icon."""
    rng = np.random.default_rng(seed)
    image = np.full((h, w, 3), 12, np.float64)
    image[int(0.2 * h):int(0.95 * h), int(0.28 * w):int(0.72 * w)] = JUICE[liquid]
    image[int(0.45 * h):int(0.7 * h), int(0.3 * w):int(0.7 * w)] = (238, 238, 232)  # label
    image[int(0.52 * h):int(0.62 * h), int(0.42 * w):int(0.58 * w)] = JUICE[icon]  # fruit icon
    image += rng.normal(0, 6, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def connectors(cable, seed, h=85, w=170):
    """Light background, two grey connectors with orange levers, a cable between them."""
    rng = np.random.default_rng(seed)
    image = np.full((h, w, 3), 205, np.float64)
    for left in (int(0.1 * w), int(0.62 * w)):
        image[int(0.25 * h):int(0.75 * h), left:left + int(0.28 * w)] = (150, 150, 155)
        image[int(0.25 * h):int(0.4 * h), left:left + int(0.28 * w)] = (240, 125, 30)  # levers, into the region
    image[int(0.45 * h):int(0.56 * h), int(0.2 * w):int(0.8 * w)] = CABLE[cable]
    image += rng.normal(0, 6, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def test_hsv_matches_colorsys():
    rng = np.random.default_rng(5)
    pixels = rng.integers(0, 256, (7, 9, 3), dtype=np.uint8)
    pixels[0, 0] = (40, 40, 40)  # gray: hue 0 by convention
    hue, sat, val = hsv(pixels)
    for (y, x) in np.ndindex(7, 9):
        h, s, v = colorsys.rgb_to_hsv(*(pixels[y, x] / 255.0))
        assert hue[y, x] == pytest.approx(h * 360.0 % 360.0, abs=1e-9)
        assert (sat[y, x], val[y, x]) == pytest.approx((s, v), abs=1e-12)


@pytest.mark.parametrize("seed", [3, 4])
def test_cable_subtype_rule_ignores_orange_levers(seed):
    rule = SUBTYPE_RULES["splicing_connectors"]
    for cable in CABLE:
        image = connectors(cable, seed)
        votes = subtype_votes(image, rule)
        assert subtype_of(image, rule) == cable
        assert votes[cable] > 5 * max(v for k, v in votes.items() if k != cable)


def test_rule_refuses_without_colour():
    gray = np.full((40, 40, 3), 128, np.uint8)
    with pytest.raises(ValueError, match=r"no clear-cut sub-type \(no bottle found"):
        subtype_of(gray, SUBTYPE_RULES["juice_bottle"])
    with pytest.raises(ValueError, match=r"no clear-cut sub-type \(too few deciding pixels: red has 0"):
        subtype_of(gray, SUBTYPE_RULES["splicing_connectors"])
    with pytest.raises(ValueError, match="region must be fractions"):
        HueRule(region=(0.5, 0.2, 0.0, 1.0), hues=(("a", 0, 10),))


def test_subtypes_from_a_list(tmp_path):
    cat = tmp_path / "juice_bottle"
    cat.mkdir()
    (cat / "defects_config.json").write_text(json.dumps(CONFIG))
    kinds = {"train/good/000.png": "banana", "train/good/001.png": "cherry", "train/good/002.png": "orange"}
    for k, (relative, liquid) in enumerate(kinds.items()):
        save(cat / relative, juice_bottle(liquid, liquid, k))
    loco = read_loco(tmp_path, "juice_bottle", "train")

    listing = tmp_path / "subtypes.txt"
    listing.write_text("# verified by hand\ntrain/good/000.png orange\n\ntrain/good/001.png cherry  # ok\n"
                       "train/good/002.png banana\n")
    assignment = assign_subtypes(loco, tmp_path, list_file=listing)
    listed = assignment.names
    assert listed == ("orange", "cherry", "banana") and assignment.ambiguous == ()
    assert assignment.rule == f"list file {listing}" and assignment.validated_on_real_photos is None
    banana = select_subtype(loco, listed, "banana")
    assert isinstance(banana, LocoSet) and banana.images.category == "juice_bottle-banana"
    assert banana.images.paths == (loco.images.paths[2],)
    # An ambiguous image (None) belongs to no sub-type.
    assert select_subtype(loco, ("banana", None, "banana"), "banana").images.paths == loco.images.paths[::2]
    with pytest.raises(ValueError, match=r"no image of sub-type 'cherry'; found \['banana'\]"):
        select_subtype(loco, ("banana", None, "banana"), "cherry")

    listing.write_text("train/good/000.png apple\n")
    with pytest.raises(ValueError, match="line 1: unknown sub-type 'apple'"):
        read_subtype_list(listing, SUBTYPE_RULES["juice_bottle"].names)
    listing.write_text("train/good/000.png banana\n")
    with pytest.raises(ValueError, match="no sub-type listed for train/good/001.png"):
        assign_subtypes(loco, tmp_path, list_file=listing)
    pushpins = LocoSet(dataclasses.replace(loco.images, category="pushpins"), loco.mask_files, ())
    with pytest.raises(ValueError, match="loco/pushpins has no sub-types"):
        assign_subtypes(pushpins, tmp_path)


def test_subtypes_from_a_root_relative_list(tmp_path):
    from jzad.data.datasets import loco_subtypes, read_subtype_listing

    cat = tmp_path / "juice_bottle"
    cat.mkdir()
    (cat / "defects_config.json").write_text(json.dumps(CONFIG))
    for k, relative in enumerate(("train/good/000.png", "train/good/001.png")):
        save(cat / relative, juice_bottle("banana", "banana", k))
    loco = read_loco(tmp_path, "juice_bottle", "train")
    listing = tmp_path / "all.txt"
    listing.write_text("# by hand\njuice_bottle/train/good/000.png orange\n\nsplicing_connectors/t/1.png red  # ok\n"
                       "juice_bottle/train/good/001.png cherry\n")
    assert read_subtype_listing(str(listing)) == {
        "juice_bottle": {"train/good/000.png": "orange", "train/good/001.png": "cherry"},
        "splicing_connectors": {"t/1.png": "red"}}
    assignment = loco_subtypes(loco, tmp_path, str(listing))
    assert assignment.names == ("orange", "cherry") and assignment.rule == f"list file {listing}"
    # read_subtype_listing is cached by path: each case gets its own file
    for case, (text, message) in enumerate((
            ("juice_bottle/a.png banana extra", "line 1: expected '<category>/<path in the category>"),
            ("a.png banana", "line 1: expected '<category>/<path in the category> <sub-type>'"),
            ("pushpins/a.png red", "line 1: 'pushpins' has no sub-types"),
            ("juice_bottle/a.png apple", "line 1: unknown juice_bottle sub-type 'apple'"),
            ("# x\njuice_bottle/a.png banana\njuice_bottle/./a.png orange",
             "line 3: juice_bottle/a.png is listed twice"))):
        bad = tmp_path / f"bad{case}.txt"
        bad.write_text(text + "\n")
        with pytest.raises(ValueError, match=message):
            read_subtype_listing(str(bad))
    short = tmp_path / "short.txt"
    short.write_text("juice_bottle/train/good/000.png orange\n")
    with pytest.raises(ValueError, match="^subtypes .*short.txt: no sub-type listed for juice_bottle/train/good/001"):
        loco_subtypes(loco, tmp_path, str(short))
