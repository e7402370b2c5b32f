"""The README's "Using the scorers from JAX" snippets run as written, on tiny inputs, and give what the
registered method's one scoring program gives."""

import re
from pathlib import Path

import jax
import numpy as np

from jzad.methods import get_method
from jzad.methods.musc import MuScConfig, score_musc

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_snippets(section: str) -> list[str]:
    """The ```python blocks of a README section (up to the next "## " heading)."""
    text = README.read_text()
    start = text.index(f"## {section}\n")
    end = text.find("\n## ", start + 1)
    return re.findall(r"```python\n(.*?)```", text[start:end if end > 0 else None], re.S)


def test_readme_scorer_snippets_run_and_agree_with_the_method():
    first, second = readme_snippets("Using the scorers from JAX")
    rng = np.random.default_rng(0)
    names = {
        "layer_tokens": tuple(rng.normal(size=(4, 1 + 9, 8)).astype(np.float32) for _ in range(2)),
        "image_embeds": rng.normal(size=(4, 5)).astype(np.float32),
    }
    exec(first, names)  # noqa: S102 (the README's own code)
    result = names["result"]
    assert names["maps"].shape == (4, 518, 518)
    np.testing.assert_allclose(np.asarray(names["maps"]).max(axis=(1, 2)), np.asarray(result.image_scores_raw),
                               rtol=1e-6)
    inside = jax.jit(lambda t, e: score_musc(t, e, MuScConfig(map_size=518)).image_scores)
    np.testing.assert_allclose(np.asarray(inside(names["layer_tokens"], names["image_embeds"])),
                               np.asarray(result.image_scores), rtol=1e-6)

    images = rng.integers(0, 256, size=(3, 224, 224, 3), dtype=np.uint8)
    names = {"images_uint8": images}
    exec(second, names)  # noqa: S102
    scores = names["scores"]
    assert scores.patch_scores.shape == (3, 14, 14) and scores.image_scores.shape == (3,)
    method, config, features = get_method("musc"), names["config"], names["features"]
    from jzad.timing import StageClock

    staged, _ = method.staged(config, method.fit(config, None), features, None, StageClock())
    np.testing.assert_allclose(np.asarray(method.finalize(config, staged).image_scores),
                               np.asarray(scores.image_scores), rtol=1e-5, atol=1e-6)
