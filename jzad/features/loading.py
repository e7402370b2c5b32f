"""The one loading path every backbone family plugs into (``FamilyLoader``): refuse what the family cannot do
(a text tower, an activation choice, a compute dtype), start from random weights ("random-<arch>", drawn from
the request's seed) or from a checkpoint (a packaged variant, a ported folder or name, a catalogue name, a file:
``jzad.weights.open_checkpoint``), then let the family resolve its taps and size and build the ``Backbone``.

Both kinds of start are an ``OpenedCheckpoint``, so a family's build reads the settings recorded at port time
the same way whatever the weights came from (random weights record none).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Collection

from jzad.features.backbone import Backbone
from jzad.features.types import BackboneRequest
from jzad.weights import MANIFEST, OpenedCheckpoint, open_checkpoint
from jzad.weights import weights_dir as default_weights_dir

NOT_A_VIT = "applies to ViT backbones, and {name} is {kind}"
"""``FamilyLoader.activation_refusal`` of the CNN families (the activation option is a ViT MLP's)."""


def is_local(text: str, weights_dir) -> bool:
    """Whether ``text`` is an existing file or folder, or the name of a ported folder under the weights folder
    (so no packaged variant is looked for)."""
    if Path(text).expanduser().exists():
        return True
    return "/" not in text and (default_weights_dir(weights_dir) / text / MANIFEST).is_file()


def unrecorded(config, params, origin: str, family: str) -> OpenedCheckpoint:
    """Weights with no run settings recorded (random or packaged ones): the preset and defaults apply."""
    return OpenedCheckpoint(config=config, params=params, image_size=None, activation=None, taps=None,
                            tokenizer_dir=None, origin=origin, family=family)


@dataclass(frozen=True)
class FamilyLoader:
    """How one family loads: what differs between families, around the steps they share (``load``).

    family: its checkpoint family name ("resnet"); a checkpoint of another family is refused. kind: how errors
    name one of its networks ("a ResNet"). random_config(arch) -> the config of "random-<arch>" (ValueError
    naming the known ones). init(config, seed) -> random params; None when build draws them itself (CLIP
    draws them at the run size). build(request, weights) -> the Backbone: resolves taps and size
    (``BackboneRequest.resolve``) and checks them in the family's words. packaged(name) -> (params, config,
    origin) of a variant whose weights ship in a pip package, None for other names, tried before
    ``open_checkpoint`` for names that are neither paths nor ported. dtypes: the compute dtypes it accepts
    (None: its model checks them). text_tower: whether it can embed text prompts. activation_refusal: why an
    activation argument is refused ("{name}" and "{kind}" filled in), None when the family takes one.
    """

    family: str
    kind: str
    random_config: Callable[[str], object]
    init: Callable[[object, int], dict] | None
    build: Callable[[BackboneRequest, OpenedCheckpoint], Backbone]
    packaged: Callable[[str], tuple | None] | None = None
    dtypes: Collection[str] | None = None
    text_tower: bool = False
    activation_refusal: str | None = NOT_A_VIT

    def load(self, request: BackboneRequest) -> Backbone:
        """The Backbone of request: refuse what the family cannot do, open the weights, build."""
        self.refuse_unsupported(request)
        return self.build(request, self.weights(request))

    def refuse_unsupported(self, request: BackboneRequest) -> None:
        """ValueError for a text tower, an activation or a dtype this family cannot provide."""
        if request.with_text and not self.text_tower:
            raise ValueError(f"{request.text}: {self.kind} has no text tower, and the method embeds text prompts; "
                             f"use a CLIP backbone for it")
        if request.activation is not None and self.activation_refusal is not None:
            reason = self.activation_refusal.format(name=request.text, kind=self.kind)
            raise ValueError(f"activation {request.activation}: {reason}")
        if self.dtypes is not None and request.dtype not in self.dtypes:
            raise ValueError(f"dtype must be one of {tuple(self.dtypes)}, got {request.dtype!r}")

    def weights(self, request: BackboneRequest) -> OpenedCheckpoint:
        """Random weights of "random-<arch>" (origin "random:<arch>:<seed>", nothing recorded), else the
        checkpoint the name finds."""
        arch = request.random_architecture
        if arch is None:
            return self.open(request)
        config = self.random_config(arch)
        params = None if self.init is None else self.init(config, request.seed)
        return unrecorded(config, params, f"random:{arch}:{request.seed}", self.family)

    def open(self, request: BackboneRequest) -> OpenedCheckpoint:
        """The checkpoint request names: a packaged variant when the name is neither a path nor ported and
        ``packaged`` knows it, else ``open_checkpoint``'s, which must be of this family."""
        text = request.text
        found = None
        if self.packaged is not None and not is_local(text, request.weights_dir):
            found = self.packaged(text)
        if found is not None:
            params, config, origin = found
            return unrecorded(config, params, origin, self.family)
        opened = open_checkpoint(request.name, weights_dir_override=request.weights_dir)
        if opened.family != self.family:
            raise ValueError(f"{text} is a {opened.family} checkpoint, not {self.kind}")
        return opened
