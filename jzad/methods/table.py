"""The lazy table of methods: each registered method's name, the module that registers it, its --help summary
and its command-line options, and each streaming's module and options, without importing any method.

``jzad.methods`` answers ``method_names()``, ``method_entry(name)`` and the stream counterparts from here, and
imports a method's module (with jax, flax, optax or ott behind it) only when ``get_method`` asks for that
method, so building the command line's parser, ``--help`` and option errors cost no method imports. The table
is where a built-in method's summary and options are written, once: each method module registers with its row
(``method_row``, ``stream_row``), and a parse function that lives in a method module is named here by a
``DeferredParse``. ``tests/test_method_table.py`` checks that every module registers its row and that every
choice an option offers is one its method's configure accepts.
"""

from __future__ import annotations

from dataclasses import dataclass

from jzad.methods.options import DeferredParse, Option, float_pair, int_list


@dataclass(frozen=True)
class MethodEntry:
    """A method as the command line sees it before it is imported: name (--method), module (registers it on
    import), summary (one line of --help), options (its ``Method.options``)."""

    name: str
    module: str
    summary: str
    options: tuple[Option, ...]


@dataclass(frozen=True)
class StreamEntry:
    """A method's streaming as the command line sees it: the method's name, the module that registers its
    ``Streaming`` on import (after the methods it streams) and the stream options (its ``Streaming.options``)."""

    name: str
    module: str
    options: tuple[Option, ...]


BN_STATS = Option(
    "--bn-stats", None, "ResNet BatchNorm statistics: original (default; the original PatchCore code's load-time "
    "train-mode forward of a constant image of the input size moves every BatchNorm's running statistics towards "
    "it by momentum 0.1, as the published numbers were made) or checkpoint (the stored statistics: the clean "
    "eval-mode network)", str, choices=("original", "checkpoint"))
PLAN_SCALE_HELP = ("how the plan enters the M-step loss: row (m T^T, rows sum to 1: the data term per position; "
                   "default) or printed (T as Eq. 5 prints it: the OT term is then ~1/m of the data term and the "
                   "result is the W0 projection)")
CLASS_NAME_HELP = "object word of the text prompts (default: the category folder name verbatim, as anomalib)"
CLASS_NAME_PARSE = DeferredParse("jzad.methods.winclip", "class_name")
W0_NOTE = "0 is the W0 projection onto the span of the prototypes alone, with no transport term"

METHODS = (
    MethodEntry("clip_lad", "jzad.methods.clip_lad", "CLIP-LAD: few-shot logical + structural anomalies (NACLIP, "
                "k-means regions, prompts, histograms)", (
                    Option("--clusters", "num_clusters", "N_c, k-means regions (default: the category's value in "
                           "LOCO_PROMPTS)", int),
                    Option("--fine-level", "fine_level", "fine prompts per patch or per region (default: the "
                           "category's)", str, choices=("patch", "region")),
                    Option("--sigma", "sigma", "NACLIP neighbourhood width in patches", float),
                    Option("--delta", "delta", "histogram smoothing of the logical score (Eq. 2)", float),
                    Option("--kmeans-iterations", "kmeans_iterations", "Lloyd steps after k-means++", int),
                )),
    MethodEntry("musc", "jzad.methods.musc", "MuSc: zero-shot mutual scoring of the unlabeled test images (LNAMD, "
                "MSM, RsCIN)", (
                    Option("--r-list", "r_list", "LNAMD aggregation degrees (odd window sizes)", int_list,
                           metavar="1,3,5"),
                    Option("--interval", "interval", "MSM rank interval LO,HI of the other images' distances",
                           float_pair, metavar="0,0.3"),
                    Option("--windows", "windows", "RsCIN windows (default 1,8,9 for VisA, 1,2,3 otherwise); 0 = "
                           "RsCIN off", int_list, metavar="1,2,3"),
                    Option("--mode", "mode", "zero_shot; few_shot (R references join the pool); plus (MuSc+: "
                           "nearest reference)", str, choices=("zero_shot", "few_shot", "plus")),
                    Option("--schedule", "schedule", "MSM work order (auto: pairs when its buffer fits, else rows)",
                           str, choices=("auto", "rows", "pairs")),
                )),
    MethodEntry("fslc", "jzad.methods.fslc", "FSLC: zero-shot scoring against a coreset learned from the test set "
                "(k-center, expand, filter)", (
                    Option("--r-list", "r_list", "LNAMD aggregation degrees (odd window sizes)", int_list,
                           metavar="3"),
                    Option("--combine", "combine", "concat: (layer, r) features joined (the paper); per_layer: "
                           "scored apart", str, choices=("concat", "per_layer")),
                    Option("--init-images", "num_init_images", "S, images picked by k-center on the embeddings",
                           int),
                    Option("--init-coreset", "init_coreset_size", "M_0, initial coreset patches", int),
                    Option("--expand-per-image", "expand_per_image", "patches each remaining image adds to the "
                           "coreset", int),
                    Option("--filter-fraction", "filter_fraction", "X, fraction of images whose lowest distances "
                           "are summed", float),
                    Option("--n-wanted", "n_wanted", "final coreset size, or 'otsu'",
                           DeferredParse("jzad.methods.fslc", "_n_wanted")),
                    Option("--b", "b", "coreset neighbours of the image-score weight (>= 2)", int),
                )),
    MethodEntry("patchcore", "jzad.methods.patchcore", "PatchCore: nearest distance to a coreset memory bank of "
                "the normal reference patches", (
                    Option("--coreset-ratio", "coreset_ratio", "share of the reference patches kept in the memory "
                           "bank (default 0.05 with <= 16 shots, else 0.1; 1 keeps every patch)", float),
                    Option("--reweight-b", "num_neighbors", "b of the paper's image-score reweighting (anomalib's; "
                           "9 in the paper); default: the plain max of the original code", int),
                    BN_STATS,
                )),
    MethodEntry("patchcore_plus", "jzad.methods.patchcore_plus", "PatchCore+: PatchCore's coreset prototypes "
                "refined per query image by a Sinkhorn-EM (FastRef)", (
                    Option("--coreset-ratio", None, "share of the reference patches kept as prototypes (default "
                           "0.05, the paper's PatchCore+ setting; 1 keeps every patch)", float),
                    Option("--em-update", None, "M-step: gradient (optax steps, Algorithm 1) or closed (the exact "
                           "minimiser, the CVPR version)", str, choices=("gradient", "closed")),
                    Option("--em-iterations", None, "N, EM rounds (paper 10; the CVPR closed form uses 2)", int),
                    Option("--lam", None, f"lambda, weight of the OT term (paper 0.3); {W0_NOTE}", float),
                    Option("--plan-scale", None, PLAN_SCALE_HELP, str, choices=("printed", "row")),
                    Option("--score", None, "nearest (Eq. 6: min over the refined prototypes) or residual "
                           "(||f_j - (W M)_j||^2)", str, choices=("nearest", "residual")),
                    BN_STATS,
                    Option("--online", "online_images", "Online PatchCore+: the refined prototypes of the last K "
                           "scored images join the memory (0: off)",
                           DeferredParse("jzad.methods.patchcore_plus", "_non_negative_int"), metavar="K"),
                )),
    MethodEntry("winclip", "jzad.methods.winclip", "WinCLIP: zero-shot (--shots 0) or few-shot CLIP prompts and "
                "window embeddings, as anomalib", (
                    Option("--class-name", "class_name", CLASS_NAME_HELP, CLASS_NAME_PARSE, metavar="NAME"),
                )),
    MethodEntry("winclip_plus", "jzad.methods.winclip_plus", "WinCLIP+: WinCLIP with its few-shot patch memory "
                "refined per query image (FastRef EM)", (
                    Option("--class-name", None, CLASS_NAME_HELP, CLASS_NAME_PARSE, metavar="NAME"),
                    Option("--coreset-ratio", "coreset_ratio", "share of the reference patches kept as prototypes "
                           "(default: WinCLIP+ 0.5 MVTec, 0.3 VisA, 0.2 MPDD, 0.5 other layouts)",
                           DeferredParse("jzad.methods.winclip_plus", "_ratio"), metavar="ALPHA"),
                    Option("--lam", None, "lambda, the weight of the refinement's optimal-transport term (WinCLIP+ "
                           f"0.1); {W0_NOTE}", DeferredParse("jzad.methods.winclip_plus", "_non_negative")),
                    Option("--plan-scale", None, PLAN_SCALE_HELP, str, choices=("printed", "row")),
                    Option("--em-iterations", None, "EM rounds of the refinement (10)",
                           DeferredParse("jzad.methods.winclip_plus", "_positive_int")),
                    Option("--em-update", None, "M-step of the refinement: gradient (the paper) or closed (closed "
                           "form)", str, choices=("gradient", "closed")),
                    Option("--refine-memories", "refine_memories", "WinCLIP+ memories refined per query: patches "
                           "(the paper's reading) or all (the window memories too)", str, choices=("patches", "all")),
                )),
)
"""Every built-in method, in registration order (the order of --method's choices and of the options in --help)."""

STREAMS = (
    StreamEntry("fslc", "jzad.methods.stream_fslc", (
        Option("--coreset-capacity", "capacity", "rows of the streaming coreset buffer (K)", int),
        Option("--window", "window", "recent arrivals the streaming filter is computed over (W)", int),
        Option("--init-per-image", "init_per_image", "patches each of the first S arrivals adds by k-center "
               "(default M_0 / S)", int),
        Option("--warmup", "warmup", "arrivals before scores stop being flagged as warming up (default S)", int),
    )),
    StreamEntry("musc", "jzad.methods.stream_musc", (
        Option("--bank-size", "capacity", "images the streaming bank holds (B)", int),
        Option("--bank-policy", "replacement", "which image leaves a full bank: fifo (oldest) or reservoir "
               "(uniform sample of all admitted)", str, choices=("fifo", "reservoir")),
        Option("--admit-quantile", "admit_quantile", "admit an arrival to the bank only when its score is at most "
               "this quantile of the bank's scores (normal-only admission); default: admit all",
               DeferredParse("jzad.methods.stream_musc", "_quantile")),
        Option("--warmup", "warmup", "bank images before scores stop being flagged as warming up", int),
    )),
    StreamEntry("patchcore", "jzad.methods.stream_fewshot", ()),
    StreamEntry("patchcore_plus", "jzad.methods.stream_fewshot", ()),
    StreamEntry("winclip", "jzad.methods.stream_fewshot", ()),
    StreamEntry("winclip_plus", "jzad.methods.stream_fewshot", ()),
)
"""Every built-in streaming, in registration order (the order of the stream options in --help)."""


def method_row(name: str) -> MethodEntry:
    """The table's row of the built-in method ``name`` (what its module registers: summary and options)."""
    for entry in METHODS:
        if entry.name == name:
            return entry
    raise KeyError(f"no built-in method {name!r} in jzad.methods.table")


def stream_row(name: str) -> StreamEntry:
    """The table's row of the built-in streaming of method ``name`` (its stream options)."""
    for entry in STREAMS:
        if entry.name == name:
            return entry
    raise KeyError(f"no built-in streaming {name!r} in jzad.methods.table")
