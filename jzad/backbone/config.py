"""CLIP architecture configs: frozen dataclasses (hashable, so they can be static jit arguments).

The named architectures are the OpenAI CLIP ViTs and OpenCLIP's ViT-B-16-plus-240. Every CLIP ViT uses
64-wide attention heads, so heads = width // 64 there; the tiny config used by tests and demos does not.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

ACTIVATIONS = ("quick_gelu", "gelu")
ATTENTIONS = ("einsum", "xla", "cudnn")
TEXT_POOLING = ("argmax", "eos")


def _check_tower(tower, positive: tuple[str, ...]) -> None:
    """The checks both towers start with: the named fields are positive ints and heads divide the width."""
    kind = type(tower).__name__
    for name in positive:
        value = getattr(tower, name)
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{kind}.{name} must be a positive int, got {value!r}")
    if tower.width % tower.heads:
        raise ValueError(f"{kind}.width={tower.width} is not divisible by heads={tower.heads}")


def _settle_mlp_dim(tower) -> None:
    """Both towers' MLP width: 0 stands for 4 * width; anything else must be a positive int."""
    if tower.mlp_dim == 0:
        object.__setattr__(tower, "mlp_dim", 4 * tower.width)
    if not isinstance(tower.mlp_dim, int) or tower.mlp_dim < 1:
        raise ValueError(f"{type(tower).__name__}.mlp_dim must be a positive int, got {tower.mlp_dim!r}")


@dataclass(frozen=True)
class VisionConfig:
    """Vision tower: a ViT on (image_size, image_size) RGB inputs cut into patch_size patches.

    image_size is the size the position embeddings are laid out for (grid = image_size // patch_size);
    ``with_image_size`` changes it together with the embeddings. mlp_dim defaults to 4 * width.
    """

    width: int
    layers: int
    heads: int
    patch_size: int
    image_size: int
    mlp_dim: int = 0

    def __post_init__(self):
        _check_tower(self, ("width", "layers", "heads", "patch_size", "image_size"))
        if self.image_size < self.patch_size:
            raise ValueError(
                f"VisionConfig.image_size={self.image_size} is smaller than patch_size={self.patch_size}"
            )
        _settle_mlp_dim(self)

    @property
    def grid_size(self) -> int:
        """Patches per side, h = w = image_size // patch_size."""
        return self.image_size // self.patch_size

    @property
    def num_tokens(self) -> int:
        """Tokens per image: CLS + grid_size ** 2."""
        return 1 + self.grid_size**2


@dataclass(frozen=True)
class TextConfig:
    """Text tower: a causal transformer over context_length token ids from a vocab_size vocabulary.

    pooling says which token's state is projected, as the checkpoint's source does it: "argmax" takes the
    position of the largest id (OpenAI / OpenCLIP: the end-of-text token has the largest id), "eos" the
    first position of eos_token_id (Hugging Face checkpoints whose config has a real eos_token_id).
    """

    width: int
    layers: int
    heads: int
    context_length: int = 77
    vocab_size: int = 49408
    mlp_dim: int = 0
    pooling: str = "argmax"
    eos_token_id: int = 49407

    def __post_init__(self):
        _check_tower(self, ("width", "layers", "heads", "context_length", "vocab_size"))
        if self.pooling not in TEXT_POOLING:
            raise ValueError(f"TextConfig.pooling must be one of {TEXT_POOLING}, got {self.pooling!r}")
        _settle_mlp_dim(self)


@dataclass(frozen=True)
class CLIPConfig:
    """A CLIP model: vision tower, optional text tower, shared embedding size and MLP activation.

    embed_dim: width of the joint image/text embedding (the projections' output); None for checkpoints that
    carry no projection (Hugging Face CLIPVisionModel), where the image embedding is ln_post(CLS) itself.
    activation: "quick_gelu" (x * sigmoid(1.702 x), what OpenAI trained with) or "gelu" (exact erf GELU,
    OpenCLIP models and what MuSc runs at 518).
    attention: how self-attention is computed (the same function; a speed choice, static under jit): "einsum"
    (explicit logits, float32 softmax: the default), or ``jax.nn.dot_product_attention`` with implementation
    "xla" or "cudnn" (cuDNN's fused kernel: CUDA GPUs, bfloat16/float16 compute only).
    """

    vision: VisionConfig
    text: TextConfig | None = None
    embed_dim: int | None = None
    activation: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    attention: str = "einsum"

    def __post_init__(self):
        if not isinstance(self.vision, VisionConfig):
            raise ValueError(f"CLIPConfig.vision must be a VisionConfig, got {type(self.vision).__name__}")
        if self.text is not None and not isinstance(self.text, TextConfig):
            raise ValueError(f"CLIPConfig.text must be a TextConfig or None, got {type(self.text).__name__}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"CLIPConfig.activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        if self.attention not in ATTENTIONS:
            raise ValueError(f"CLIPConfig.attention must be one of {ATTENTIONS}, got {self.attention!r}")
        if self.embed_dim is not None and (not isinstance(self.embed_dim, int) or self.embed_dim < 1):
            raise ValueError(f"CLIPConfig.embed_dim must be a positive int or None, got {self.embed_dim!r}")

    def replace(self, **changes) -> "CLIPConfig":
        """A copy with some fields changed (dataclasses.replace)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """Plain nested dict (for manifest.json)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "CLIPConfig":
        """Inverse of ``to_dict``; unknown or missing fields raise ValueError."""
        try:
            fields = dict(data)
            fields["vision"] = VisionConfig(**fields["vision"])
            if fields.get("text") is not None:
                fields["text"] = TextConfig(**fields["text"])
            return cls(**fields)
        except (KeyError, TypeError) as err:
            raise ValueError(f"not a valid CLIPConfig dict ({err}): {data!r}") from err


def _openai(width, layers, patch, image, embed, text_width, text_layers=12, activation="quick_gelu"):
    return CLIPConfig(
        vision=VisionConfig(width=width, layers=layers, heads=width // 64, patch_size=patch, image_size=image),
        text=TextConfig(width=text_width, layers=text_layers, heads=text_width // 64),
        embed_dim=embed,
        activation=activation,
    )


ARCHITECTURES: dict[str, CLIPConfig] = {
    "ViT-B-32": _openai(768, 12, 32, 224, 512, 512),
    "ViT-B-16": _openai(768, 12, 16, 224, 512, 512),
    "ViT-L-14": _openai(1024, 24, 14, 224, 768, 768),
    "ViT-L-14-336": _openai(1024, 24, 14, 336, 768, 768),
    "ViT-B-16-plus-240": _openai(896, 12, 16, 240, 640, 640, activation="gelu"),
    "tiny": CLIPConfig(
        vision=VisionConfig(width=64, layers=4, heads=4, patch_size=8, image_size=32),
        text=TextConfig(width=32, layers=2, heads=4, context_length=16, vocab_size=520, eos_token_id=519),
        embed_dim=32,
        activation="quick_gelu",
    ),
    "tiny-text": CLIPConfig(
        vision=VisionConfig(width=64, layers=4, heads=4, patch_size=8, image_size=32),
        text=TextConfig(width=64, layers=2, heads=4, context_length=77, vocab_size=49408),
        embed_dim=32,
        activation="quick_gelu",
    ),
}
"""Named architectures: OpenAI ViT-B/32, B/16, L/14, L/14-336 (QuickGELU), OpenCLIP ViT-B-16-plus-240 (GELU),
"tiny" (4 layers of width 64 on 32x32 inputs) for tests and demos, and "tiny-text": tiny's vision tower with a
text tower over CLIP's real 49,408-token vocabulary and 77-token context, so methods that embed prompts run
the shipped BPE tokenizer in tests."""


def _normalise_name(name: str) -> str:
    return name.lower().replace("/", "-").replace("@", "-").replace("_", "-").replace("px", "")


_ALIASES = {_normalise_name(key): key for key in ARCHITECTURES}


def get_architecture(name: str | CLIPConfig) -> CLIPConfig:
    """The CLIPConfig of a named architecture ("ViT-L/14-336", "vit-l-14-336", "ViT-L/14@336px" all work).

    A CLIPConfig passes through unchanged. Unknown names raise ValueError listing the known ones.
    """
    if isinstance(name, CLIPConfig):
        return name
    if not isinstance(name, str):
        raise ValueError(f"architecture must be a name or a CLIPConfig, got {type(name).__name__}")
    key = _ALIASES.get(_normalise_name(name))
    if key is None:
        raise ValueError(f"unknown architecture {name!r}; known: {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[key]


def _shape_signature(config: CLIPConfig) -> tuple:
    vision = config.vision
    text = config.text
    text_sig = None
    if text is not None:
        text_sig = (text.width, text.layers, text.heads, text.context_length, text.vocab_size, text.mlp_dim)
    vision_sig = (vision.width, vision.layers, vision.heads, vision.patch_size, vision.image_size, vision.mlp_dim)
    return vision_sig, text_sig, config.embed_dim


def architecture_name(config: CLIPConfig) -> str | None:
    """The name of the architecture with config's tensor shapes (activation and text pooling ignored), or None.

    A text-less config matches an architecture by its vision tower and embedding size alone.
    """
    vision_sig, text_sig, embed = _shape_signature(config)
    for name, arch in ARCHITECTURES.items():
        arch_vision, arch_text, arch_embed = _shape_signature(arch)
        if vision_sig == arch_vision and embed == arch_embed and text_sig in (None, arch_text):
            return name
    return None


def default_taps(config: CLIPConfig | VisionConfig | int) -> tuple[int, ...]:
    """The 1-based blocks at each quarter of the depth (ViT-L: 6, 12, 18, 24; ViT-B: 3, 6, 9, 12).

    Accepts a config or the number of layers.
    """
    if isinstance(config, CLIPConfig):
        layers = config.vision.layers
    elif isinstance(config, VisionConfig):
        layers = config.layers
    else:
        layers = int(config)
    return tuple(sorted({max(1, (layers * k) // 4) for k in range(1, 5)}))
