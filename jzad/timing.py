"""Per-stage wall-clock timing with device synchronisation and compile time kept apart.

``StageClock.run(stage, fn, *args)`` calls fn, waits for every array it returns (``jax.block_until_ready``)
before reading the clock, and subtracts the seconds JAX spent tracing, lowering and compiling during the
call (read from ``jax.monitoring`` compile events), so steady-state time and compile time are reported
separately even on the first call.
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any, Callable

import jax

BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"
"""jax.monitoring's event for one XLA compilation (its ``fun_name`` names the jitted function)."""
_COMPILE_EVENTS = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    BACKEND_COMPILE,
)
_compile_seconds = [0.0]
_listening = [False]


def _on_event(name: str, seconds: float, **_: Any) -> None:
    if name in _COMPILE_EVENTS:
        _compile_seconds[0] += seconds


def _listen() -> None:
    if not _listening[0]:
        jax.monitoring.register_event_duration_secs_listener(_on_event)
        _listening[0] = True


class StageClock:
    """Accumulates run seconds and compile seconds per named stage.

    on_start(stage), when given, is called as each timed call begins (a progress display shows the stage that
    is running, including long device calls that report nothing until they finish).
    """

    def __init__(self, on_start: Callable[[str], None] | None = None) -> None:
        _listen()
        self.run_seconds: dict[str, float] = defaultdict(float)
        self.compile_seconds: dict[str, float] = defaultdict(float)
        self.on_start = on_start

    def run(self, stage: str, fn: Callable, *args, **kwargs):
        """fn(*args, **kwargs) timed as ``stage``; the result is ready on device when this returns."""
        if self.on_start is not None:
            self.on_start(stage)
        compiled_before = _compile_seconds[0]
        start = time.perf_counter()
        result = jax.block_until_ready(fn(*args, **kwargs))
        elapsed = time.perf_counter() - start
        compile_s = _compile_seconds[0] - compiled_before
        self.compile_seconds[stage] += compile_s
        self.run_seconds[stage] += max(elapsed - compile_s, 0.0)
        return result

    def add(self, stage: str, seconds: float) -> None:
        """Record host-side work (decoding, file writing) measured by the caller."""
        self.run_seconds[stage] += seconds

    def merge(self, other: "StageClock") -> None:
        """Add another clock's totals into this one."""
        for stage, seconds in other.run_seconds.items():
            self.run_seconds[stage] += seconds
        for stage, seconds in other.compile_seconds.items():
            self.compile_seconds[stage] += seconds

    def per_image_ms(self, num_images: int) -> dict[str, float]:
        """Steady-state milliseconds per image for each stage."""
        return {stage: 1e3 * s / max(num_images, 1) for stage, s in self.run_seconds.items()}


class CompileLog:
    """The XLA programs compiled while it is open, as (function name, seconds), from jax.monitoring's
    backend-compile events: how compile-count tests and benchmarks see what a run compiled."""

    def __init__(self) -> None:
        self.compiles: list[tuple[str, float]] = []

    def _on_event(self, name: str, seconds: float, **kwargs: Any) -> None:
        if name == BACKEND_COMPILE:
            self.compiles.append((str(kwargs.get("fun_name", "?")), seconds))

    def __enter__(self) -> "CompileLog":
        jax.monitoring.register_event_duration_secs_listener(self._on_event)
        return self

    def __exit__(self, *exc) -> bool:
        jax.monitoring.unregister_event_duration_listener(self._on_event)
        return False

    @property
    def count(self) -> int:
        return len(self.compiles)

    @property
    def seconds(self) -> float:
        return sum(seconds for _, seconds in self.compiles)

    def take(self) -> list[tuple[str, float]]:
        """The compilations since the last ``take`` (and forget them)."""
        taken, self.compiles = self.compiles, []
        return taken
