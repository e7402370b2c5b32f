"""jzad.methods: one module of pure functions per method, each registered by name (see ``jzad.methods.base``).

Importing this package is light (no jax): the names, summaries and options of the methods come from the lazy
table (``jzad.methods.table``), and ``get_method(name)`` imports the one module that registers that method,
with its dependencies, when it is first asked for. ``method_names()`` lists the table's methods, then any
method registered at run time with ``register``; the stream counterparts work the same way. The contract
types (``Method``, ``Scores``, ``RunContext``, ...) are loaded from ``jzad.methods.base`` on first use.
"""

from __future__ import annotations

import importlib
import sys

from jzad.methods.options import Option, OptionError
from jzad.methods.table import METHODS, STREAMS, MethodEntry, StreamEntry

_BASE = "jzad.methods.base"
_FROM_BASE = ("BackboneRun", "FeatureRequest", "Features", "ImagePrep", "Method", "RunContext", "Scores",
              "StreamScores", "Streaming", "check_finite", "register", "register_streaming")
_METHODS = {entry.name: entry for entry in METHODS}
_STREAMS = {entry.name: entry for entry in STREAMS}


def __getattr__(name: str):
    if name in _FROM_BASE:
        return getattr(importlib.import_module(_BASE), name)
    raise AttributeError(f"module 'jzad.methods' has no attribute {name!r}")


def _registered(kind: str) -> tuple[str, ...]:
    """Names registered so far in ``jzad.methods.base`` ("methods" or "streaming"), none when it is not
    imported yet (then nothing can have been registered at run time)."""
    base = sys.modules.get(_BASE)
    if base is None:
        return ()
    return base.method_names() if kind == "methods" else base.streaming_names()


def method_names() -> tuple[str, ...]:
    """Names of every method: the table's, in registration order, then any registered at run time."""
    return tuple(_METHODS) + tuple(n for n in _registered("methods") if n not in _METHODS)


def streaming_names() -> tuple[str, ...]:
    """Names of the methods that stream: the table's, in registration order, then any registered at run time."""
    return tuple(_STREAMS) + tuple(n for n in _registered("streaming") if n not in _STREAMS)


def method_entry(name: str) -> MethodEntry:
    """The name, module, summary and options of a method, without importing a table method's module."""
    if name in _METHODS:
        return _METHODS[name]
    method = get_method(name)
    return MethodEntry(method.name, method.body.__module__, method.summary, method.options)


def stream_entry(name: str) -> StreamEntry:
    """The module and stream options of a method's streaming, without importing a table streaming's module."""
    if name in _STREAMS:
        return _STREAMS[name]
    streaming = get_streaming(name)
    return StreamEntry(name, streaming.step.__module__, streaming.options)


def get_method(name: str):
    """The registered ``Method`` called name, importing the module that registers it; unknown names raise
    ValueError listing the known ones."""
    if name in _METHODS:
        importlib.import_module(_METHODS[name].module)
    elif name not in _registered("methods"):
        raise ValueError(f"unknown method {name!r}; registered: {', '.join(sorted(method_names()))}")
    return importlib.import_module(_BASE).get_method(name)


def get_streaming(name: str):
    """The ``Streaming`` of method ``name``, importing the modules that register it (a streaming module
    registers its methods' streaming on import, so every method it streams is imported first); a method
    without streaming raises ValueError naming those that have it."""
    if name in _STREAMS:
        module = _STREAMS[name].module
        for streamed in (entry.name for entry in STREAMS if entry.module == module):
            get_method(streamed)
        importlib.import_module(module)
    elif name not in _registered("streaming"):
        raise ValueError(f"method {name!r} does not stream; methods that do: {', '.join(sorted(streaming_names()))}")
    return importlib.import_module(_BASE).get_streaming(name)


__all__ = [
    "BackboneRun",
    "FeatureRequest",
    "Features",
    "ImagePrep",
    "Method",
    "MethodEntry",
    "Option",
    "OptionError",
    "RunContext",
    "Scores",
    "StreamEntry",
    "StreamScores",
    "Streaming",
    "check_finite",
    "get_method",
    "get_streaming",
    "method_entry",
    "method_names",
    "register",
    "register_streaming",
    "stream_entry",
    "streaming_names",
]
