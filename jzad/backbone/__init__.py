"""jzad.backbone: CLIP in Flax (vision + text towers), preprocessing, tokenizer and PyTorch weight porting.

Pure entry points (params in, arrays out, jitted with static configs):
``encode_image(params, images, config, taps, dtype)`` -> (taps tuple of (B, 1 + h*w, C), embeds (B, D));
``encode_text(params, ids, config, dtype)`` -> (B, D). ``with_image_size`` resizes the position
embeddings once (PyTorch bicubic). ``ImageEncoder`` bundles a vision tower at a run size for the methods.
torch / transformers are imported lazily, only by the porting and tokenizer functions.
"""

from jzad.backbone.clip import CLIP, abstract_params, encode_image, encode_text, init_clip
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
from jzad.backbone.tokenizer import Tokenizer, load_tokenizer, tokenize

__all__ = [
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
