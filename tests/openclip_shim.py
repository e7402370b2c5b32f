"""Test-only loader for open_clip's model and tokenizer modules on a machine without torchvision.

Why: open_clip_torch is installed here without torchvision (the registry only offers CUDA builds of
torchvision, which fail to import beside the CPU torch 2.13), so ``import open_clip`` fails. Two things
need torchvision at import time: the package ``__init__`` (it imports ``transform.py``, which uses
``torchvision.transforms``) and ``utils.py`` (``from torchvision.ops.misc import FrozenBatchNorm2d``,
used only to freeze ResNet batch norms). The CLIP ViT towers and the BPE tokenizer the tests compare
against use neither.

How: ``load()`` first imports what open_clip's ``hf_model.py`` takes from transformers (transformers
probes for torchvision with ``find_spec`` and must see the real absence), then registers a fake
``torchvision`` holding only ``torchvision.ops.misc.FrozenBatchNorm2d`` (a class that refuses to be
built) and an empty ``open_clip`` package object whose ``__path__`` is the installed package directory
(so its ``__init__`` never runs), imports ``open_clip.model`` and ``open_clip.tokenizer`` through the
normal import system, and removes the fake torchvision again so later imports elsewhere in the test
session see the machine as it is. Nothing is downloaded; the tokenizer reads the vocabulary file
shipped inside open_clip_torch.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from pathlib import Path


class _FrozenBatchNorm2d:
    """Stands in for torchvision.ops.misc.FrozenBatchNorm2d; only ResNet towers would build one."""

    def __init__(self, *args, **kwargs):
        raise RuntimeError("FrozenBatchNorm2d is not available in the open_clip test shim (no torchvision)")


_FAKE = ("torchvision", "torchvision.ops", "torchvision.ops.misc")


def _fake_torchvision() -> None:
    root = types.ModuleType("torchvision")
    ops = types.ModuleType("torchvision.ops")
    misc = types.ModuleType("torchvision.ops.misc")
    misc.FrozenBatchNorm2d = _FrozenBatchNorm2d
    root.ops, ops.misc = ops, misc
    root.__path__, ops.__path__ = [], []
    sys.modules.update(dict(zip(_FAKE, (root, ops, misc))))


def _package_dir() -> Path:
    if "open_clip" in sys.modules:
        return Path(next(iter(sys.modules["open_clip"].__path__)))
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "open_clip_torch is not installed; the OpenCLIP reference tests need it without its torchvision/timm "
            "requirements: pip install --no-deps open_clip_torch==3.3.0"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def load() -> tuple[types.ModuleType, types.ModuleType]:
    """(open_clip.model, open_clip.tokenizer) imported without the package __init__ and without torchvision."""
    if "open_clip.model" not in sys.modules:
        import transformers  # noqa: F401  (before the fake torchvision: transformers probes for the real one)
        import transformers.modeling_outputs  # noqa: F401
        from transformers import AutoConfig, AutoModel, AutoTokenizer, PretrainedConfig  # noqa: F401

        package = types.ModuleType("open_clip")
        package.__path__ = [str(_package_dir())]
        package.__package__ = "open_clip"
        sys.modules["open_clip"] = package
        _fake_torchvision()
        try:
            importlib.import_module("open_clip.model")
            importlib.import_module("open_clip.tokenizer")
        finally:
            for name in _FAKE:
                sys.modules.pop(name, None)
    return sys.modules["open_clip.model"], sys.modules["open_clip.tokenizer"]


def tokenizer_file() -> Path:
    """The BPE vocabulary file shipped inside the installed open_clip_torch."""
    return _package_dir() / "bpe_simple_vocab_16e6.txt.gz"
