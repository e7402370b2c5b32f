"""jzad.backbone: CLIP in Flax (vision + text towers), preprocessing, tokenizer and PyTorch weight porting.

Pure entry points (params in, arrays out, jitted with static configs):
``encode_image(params, images, config, taps, dtype)`` -> (taps tuple of (B, 1 + h*w, C), embeds (B, D));
``encode_text(params, ids, config, dtype)`` -> (B, D). ``with_image_size`` resizes the position
embeddings once (PyTorch bicubic). ``ImageEncoder`` bundles a vision tower at a run size for the methods.
torch / transformers are imported lazily, only by the porting and tokenizer functions.
"""

from jzad.backbone.bpe import BPETokenizer
from jzad.backbone.clip import (
    CLIP,
    abstract_params,
    embed_patches,
    encode_image,
    encode_text,
    encode_tokens,
    encode_windows,
    init_clip,
    vision_head,
)
from jzad.backbone.config import (
    ARCHITECTURES,
    CLIPConfig,
    TextConfig,
    VisionConfig,
    architecture_name,
    default_taps,
    get_architecture,
)
from jzad.backbone.encoder import ImageEncoder, init_random_encoder
from jzad.backbone.port import flax_to_openai, hf_to_openai, load_checkpoint, openai_to_flax, openai_to_hf
from jzad.backbone.posembed import resize_position_embedding, with_image_size
from jzad.backbone.preprocess import CLIP_MEAN, CLIP_STD, preprocess_images
from jzad.backbone.tokenizer import Tokenizer, clip_tokenizer, load_tokenizer, tokenize
from jzad.backbone.imagenet import normalize_imagenet, resize_center_crop
from jzad.backbone.resnet import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    RESNET_CONFIGS,
    ResNetConfig,
    encode_resnet,
    get_resnet_config,
    init_resnet,
)
from jzad.backbone.resnet_port import resnet_from_torch, resnet_to_torch
from jzad.backbone.naclip import naclip_encode, neighbourhood_bias
from jzad.backbone.efficientnet import (
    CONFIGS as EFFICIENTNET_CONFIGS,
    MEAN as EFFICIENTNET_MEAN,
    STD as EFFICIENTNET_STD,
    EfficientNetConfig,
    classify,
    encode_efficientnet,
    init_efficientnet,
    preprocess_efficientnet,
)
from jzad.backbone.efficientnet_port import (
    efficientnet_from_torch,
    efficientnet_to_torch,
    load_efficientnet,
    packaged_checkpoint,
)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "RESNET_CONFIGS",
    "ResNetConfig",
    "encode_resnet",
    "get_resnet_config",
    "init_resnet",
    "normalize_imagenet",
    "resize_center_crop",
    "resnet_from_torch",
    "resnet_to_torch",
    "EFFICIENTNET_CONFIGS",
    "EFFICIENTNET_MEAN",
    "EFFICIENTNET_STD",
    "EfficientNetConfig",
    "classify",
    "encode_efficientnet",
    "init_efficientnet",
    "preprocess_efficientnet",
    "efficientnet_from_torch",
    "efficientnet_to_torch",
    "load_efficientnet",
    "packaged_checkpoint",
    "BPETokenizer",
    "clip_tokenizer",
    "embed_patches",
    "encode_tokens",
    "encode_windows",
    "naclip_encode",
    "neighbourhood_bias",
    "vision_head",
    "ARCHITECTURES",
    "CLIP",
    "CLIPConfig",
    "CLIP_MEAN",
    "CLIP_STD",
    "ImageEncoder",
    "TextConfig",
    "Tokenizer",
    "VisionConfig",
    "abstract_params",
    "architecture_name",
    "default_taps",
    "encode_image",
    "encode_text",
    "flax_to_openai",
    "get_architecture",
    "hf_to_openai",
    "init_clip",
    "init_random_encoder",
    "load_checkpoint",
    "load_tokenizer",
    "openai_to_flax",
    "openai_to_hf",
    "preprocess_images",
    "resize_position_embedding",
    "tokenize",
    "with_image_size",
]
