"""The juice_bottle sub-type rule on the 40 real MVTec LOCO photos in ../shared/data/mvtec_loco_sample, against
labels read off the photos by eye (the fruit icon and the liquid agree on every one of them; kept in
tests/fixtures/juice_bottle_sample_subtypes.csv). Beyond the 40 files as they are: changed exposure, gamma,
colour cast, crops, padding, scale, mirror and noise; planted logical anomalies (a label from another juice, no
label, an empty bottle, two liquids); the ambiguity report through the dataset hook and results.json."""

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jzad import data as jdata
from jzad.data.loco import SUBTYPE_RULES, assign_subtypes, hsv, read_loco

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
SAMPLE = SHARED / "mvtec_loco_sample" / "juice_bottle"
LABELS = Path(__file__).resolve().parent / "fixtures" / "juice_bottle_sample_subtypes.csv"
RULE = SUBTYPE_RULES["juice_bottle"]


def read_labels() -> dict[str, str]:
    with open(LABELS, newline="") as f:
        return {row["file"]: row["subtype"] for row in csv.DictReader(f)}


@pytest.fixture(scope="module")
def photos():
    """{file name: (uint8 RGB photo, hand label)} of the 40 real train/good photos."""
    folder = SAMPLE / "train" / "good"
    if not folder.is_dir():
        pytest.skip(f"the real MVTec LOCO juice_bottle sample is not at {folder}")
    labels = read_labels()
    assert sorted(labels) == sorted(p.name for p in folder.glob("*.png")) and len(labels) == 40
    return {name: (np.asarray(Image.open(folder / name).convert("RGB")), label) for name, label in labels.items()}


def clip(array) -> np.ndarray:
    return np.clip(np.rint(array), 0, 255).astype(np.uint8)


def test_every_real_photo_gets_its_hand_label(photos):
    counts = {}
    for name, (image, label) in photos.items():
        vote = RULE.decide(image)
        assert vote.name == label, (name, vote)
        # Clear-cut by a wide margin, not by a hair.
        assert vote.votes[label] >= 0.78 * sum(vote.votes.values()), (name, vote.votes)
        counts[label] = counts.get(label, 0) + 1
    assert counts == {"orange": 15, "banana": 14, "cherry": 11}


CHANGES = {
    "exposure x0.6": lambda a: clip(a * 0.6),
    "exposure x0.8": lambda a: clip(a * 0.8),
    "exposure x1.15": lambda a: clip(a * 1.15),
    "gamma 0.8": lambda a: clip(255 * (a / 255.0) ** 0.8),
    "cool cast": lambda a: clip(a * np.array([0.94, 1.0, 1.06])),
    "cropped": lambda a: a[30:380, 25:],
    "shifted": lambda a: np.pad(a, ((0, 0), (60, 0), (0, 0)), mode="edge"),
    "half size": lambda a: np.asarray(Image.fromarray(a).resize((a.shape[1] // 2, a.shape[0] // 2), Image.BILINEAR)),
    "mirrored": lambda a: a[:, ::-1].copy(),
    "noise": lambda a: clip(a + np.random.default_rng(0).normal(0, 4, a.shape)),
}
HARSH = {  # Banana's pale liquid gains saturation here: it may turn ambiguous, never another juice.
    "warm cast": lambda a: clip(a * np.array([1.06, 1.0, 0.94])),
    "gamma 1.25": lambda a: clip(255 * (a / 255.0) ** 1.25),
}


def test_rule_holds_under_lighting_and_framing_changes(photos):
    for change, apply in CHANGES.items():
        found = {name: RULE.decide(apply(image)).name for name, (image, _) in photos.items()}
        wrong = [(name, found[name]) for name, (_, label) in photos.items() if found[name] != label]
        assert not wrong, (change, wrong)
    for change, apply in HARSH.items():
        for name, (image, label) in photos.items():
            assert RULE.decide(apply(image)).name in (label, None), (change, name)


def bottle_centre(image):
    top, bottom, left, right = RULE.body(image)
    return top, bottom, (left + right) // 2


def label_band(image):
    """Rows of the top label (42-64 % down the body) and the 80 columns around the bottle's axis."""
    top, bottom, centre = bottle_centre(image)
    height = bottom - top
    return int(top + 0.42 * height), int(top + 0.64 * height), centre - 40, centre + 40


def with_label_of(image, donor):
    """image with donor's top label (and fruit icon) pasted over its own: a wrong_juice_type-like anomaly."""
    out = image.copy()
    r0, r1, c0, c1 = label_band(donor)
    s0, _, t0, t1 = label_band(image)
    out[s0:s0 + r1 - r0, t0:t1] = donor[r0:r1, c0:c1]
    return out


def without_label(image):
    """image with its top label painted over by the liquid just below it: a missing_top_label-like anomaly."""
    out = image.copy()
    r0, r1, c0, c1 = label_band(image)
    top, bottom, _ = bottle_centre(image)
    below = image[int(top + 0.68 * (bottom - top)):int(top + 0.74 * (bottom - top)), c0:c1]
    for row in range(r0, r1):
        out[row, c0:c1] = below[(row - r0) % len(below)]
    return out


def emptied(image):
    """image with every liquid pixel of the bottle turned into dim glass over the dark background."""
    top, bottom, left, right = RULE.body(image)
    _, _, value = hsv(image)
    liquid = np.zeros(value.shape, bool)
    liquid[top:bottom, left:right] = value[top:bottom, left:right] < 0.8 * np.percentile(value, 99.5)
    out = image.copy()
    out[liquid] = (40, 42, 52)
    return out


def test_logical_anomalies_go_by_the_liquid_or_are_reported(photos):
    names = sorted(photos)
    for index, name in enumerate(names[::2]):  # every other photo: each juice, at half the cost
        image, label = photos[name]
        donors = [n for n in names if photos[n][1] != label]
        donor = photos[donors[index % len(donors)]][0]
        assert RULE.decide(with_label_of(image, donor)).name == label, name
        assert RULE.decide(without_label(image)).name == label, name
        empty = RULE.decide(emptied(image))
        assert empty.name is None and empty.reason.startswith("too few deciding pixels"), (name, empty)
    # Two liquids side by side (cherry | orange): a split vote, reported, not a guess.
    cherry = next(photos[n][0] for n in names if photos[n][1] == "cherry")
    orange = next(photos[n][0] for n in names if photos[n][1] == "orange")
    _, _, cx = bottle_centre(cherry)
    _, _, ox = bottle_centre(orange)
    mixed = cherry.copy()
    mixed[:, cx:] = np.roll(orange, cx - ox, axis=1)[:, cx:]
    split = RULE.decide(mixed)
    assert split.name is None and split.reason.startswith("split vote"), split
    assert split.votes["cherry"] > 1000 and split.votes["orange"] > 1000
    dark = RULE.decide(np.full((400, 200, 3), 8, np.uint8))
    assert dark.name is None and dark.reason.startswith("no bottle found")


@pytest.fixture(scope="module")
def real_tree(photos, tmp_path_factory):
    """A LOCO root built from the real photos: train/good 29 of them, validation/good 7 (2 orange), test/good 4 (orange,
    orange, cherry, orange) and three logical anomalies with ground truth: an empty bottle (ambiguous), a cherry
    bottle with an orange label, an orange bottle with a cherry label. No banana test image."""
    root = tmp_path_factory.mktemp("loco_real")
    cat = root / "juice_bottle"
    cat.mkdir()
    shutil.copy(SAMPLE / "defects_config.json", cat / "defects_config.json")
    names = sorted(photos)
    splits = {"train/good": [n for n in names[:30] if n != "025.png"],
              "validation/good": ["025.png"] + names[30:36], "test/good": names[36:]}
    for folder, files in splits.items():
        (cat / folder).mkdir(parents=True)
        for name in files:
            shutil.copy(SAMPLE / "train" / "good" / name, cat / folder / name)
    planted = [(emptied(photos["000.png"][0]), "000.png"),
               (with_label_of(photos["038.png"][0], photos["036.png"][0]), "038.png"),
               (with_label_of(photos["036.png"][0], photos["038.png"][0]), "036.png")]
    for index, (image, source) in enumerate(planted):
        (cat / "test" / "logical_anomalies").mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(cat / "test" / "logical_anomalies" / f"{index:03d}.png")
        top, bottom, left, right = RULE.body(photos[source][0])
        channel = np.zeros(image.shape[:2], np.uint8)
        channel[top:bottom, left:right] = 247 if index == 0 else 240  # empty_bottle, wrong_juice_type
        (cat / "ground_truth" / "logical_anomalies" / f"{index:03d}").mkdir(parents=True)
        Image.fromarray(channel).save(cat / "ground_truth" / "logical_anomalies" / f"{index:03d}" / "000.png")
    return root, {folder: [photos[n][1] for n in files] for folder, files in splits.items()}


def test_ambiguous_images_are_reported_and_scored_in_no_subtype(real_tree):
    root, labels = real_tree
    assignment = assign_subtypes(read_loco(root, "juice_bottle"), root)
    assert list(assignment.names) == labels["test/good"] + [None, "cherry", "orange"]
    assert assignment.validated_on_real_photos is True and assignment.rule == RULE.describe()
    (entry,) = assignment.ambiguous
    assert entry["image"] == "test/logical_anomalies/000.png" and entry["reason"].startswith("too few deciding")
    assert set(entry["votes"]) == {"banana", "cherry", "orange"}

    sources = jdata.category_sources("loco", root, "juice_bottle-orange", shots=2, seed=0,
                                     calibration="validation")
    assert list(sources.source.names) == ["test/good/036.png", "test/good/037.png", "test/good/039.png",
                                    "test/logical_anomalies/002.png"]
    report = sources.subtypes
    assert report["rule"] == RULE.describe() and report["validated_on_real_photos"] is True
    assert report["splits"]["test"]["counts"] == {"cherry": 2, "orange": 4, "banana": 0}
    assert report["splits"]["test"]["ambiguous"] == [entry]
    assert report["splits"]["train"]["counts"] == {n: labels["train/good"].count(n) for n in RULE.names}
    assert report["splits"]["validation"]["ambiguous"] == []
    assert "test/logical_anomalies/000.png votes {" in sources.summary and "scored in no sub-type" in sources.summary
    cherry = jdata.category_sources("loco", root, "juice_bottle-cherry")
    assert list(cherry.source.names) == ["test/good/038.png", "test/logical_anomalies/001.png"]
    # References but no test images: an error naming the sub-type and the two ways out.
    with pytest.raises(jdata.DataError, match=r"sub-type 'juice_bottle-banana' has no test images .*"
                                              r"subtypes=off.*subtypes=FILE"):
        jdata.category_sources("loco", root, "juice_bottle-banana", shots=2)
    # A list file decides instead (nothing ambiguous, no rule validation to report).
    listing = root / "subtypes.txt"
    listing.write_text("".join(f"juice_bottle/{p} {s}\n" for p, s in zip(
        ["test/good/036.png", "test/good/037.png", "test/good/038.png", "test/good/039.png",
         "test/logical_anomalies/000.png", "test/logical_anomalies/001.png", "test/logical_anomalies/002.png"],
        labels["test/good"] + ["orange", "cherry", "orange"])))
    listed = jdata.category_sources("loco", root, "juice_bottle-orange", subtypes=str(listing))
    assert list(listed.source.names[-2:]) == ["test/logical_anomalies/000.png", "test/logical_anomalies/002.png"]
    assert listed.subtypes["validated_on_real_photos"] is None and listed.subtypes["rule"].startswith("list file")


def test_cli_reports_the_ambiguous_image_in_the_log_and_results_json(real_tree, tmp_path, capsys):
    from jzad.run import main

    root, _ = real_tree
    out = tmp_path / "run"
    args = ["--method", "clip_lad", "--dataset", "loco", "--data", str(root), "--category", "juice_bottle-orange",
            "--shots", "2", "--backbone", "random-tiny-text", "--image-size", "32", "--no-heatmaps", "--quiet",
            "--out", str(out)]
    with pytest.warns(RuntimeWarning, match="no structural_anomalies images"):
        assert main(args) == 0
    log = capsys.readouterr().err
    warning = [line for line in log.splitlines() if "ambiguous" in line]
    assert len(warning) == 1 and warning[0].startswith("warning: loco/juice_bottle-orange: 1 test images")
    assert "test/logical_anomalies/000.png votes {'cherry': " in warning[0]
    (entry,) = json.loads((out / "results.json").read_text())["categories"]
    assert entry["num_images"] == 4
    report = entry["subtypes"]
    assert report["rule"] == RULE.describe() and report["validated_on_real_photos"] is True
    (ambiguous,) = report["splits"]["test"]["ambiguous"]
    assert ambiguous["image"] == "test/logical_anomalies/000.png" and set(ambiguous["votes"]) == set(RULE.names)
