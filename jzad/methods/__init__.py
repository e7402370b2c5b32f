"""jzad.methods: one module of pure functions per method, each registered by name (see ``jzad.methods.base``).

Importing this package registers every method; ``get_method(name)`` returns one, ``method_names()`` lists them.
"""

from jzad.methods import clip_lad, fslc, musc, patchcore, patchcore_plus, winclip, winclip_plus  # noqa: F401  (registration on import)
from jzad.methods import stream_fslc, stream_musc  # noqa: F401  (streaming registration on import)
from jzad.methods import stream_fewshot  # noqa: F401  (after the methods it streams)
from jzad.methods.base import (
    BackboneRun,
    FeatureRequest,
    Features,
    ImagePrep,
    Method,
    Option,
    OptionError,
    RunContext,
    Scores,
    StreamScores,
    Streaming,
    check_finite,
    get_method,
    get_streaming,
    method_names,
    register,
    register_streaming,
    streaming_names,
)

__all__ = [
    "BackboneRun",
    "FeatureRequest",
    "Features",
    "ImagePrep",
    "Method",
    "Option",
    "OptionError",
    "RunContext",
    "Scores",
    "StreamScores",
    "Streaming",
    "check_finite",
    "get_method",
    "get_streaming",
    "method_names",
    "register",
    "register_streaming",
    "streaming_names",
]
