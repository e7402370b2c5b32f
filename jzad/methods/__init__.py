"""jzad.methods: one module of pure functions per method, each registered by name (see ``jzad.methods.base``).

Importing this package registers every method; ``get_method(name)`` returns one, ``method_names()`` lists them.
"""

from jzad.methods import fslc, musc, winclip, winclip_plus  # noqa: F401  (registration on import)
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
    check_finite,
    get_method,
    method_names,
    register,
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
    "check_finite",
    "get_method",
    "method_names",
    "register",
]
