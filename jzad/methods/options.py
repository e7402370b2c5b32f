"""Command-line options of methods, in a module that imports nothing heavy (no jax, no numpy).

The command line builds its parser, and ``--help`` lists every method's options, from these declarations
alone (``jzad.methods.table``), so neither needs a method module or its dependencies imported. A method's own
module declares the same ``Option`` values when it builds its ``Method``.
"""

from __future__ import annotations

import importlib
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class Option:
    """A command-line option of a method, mapped to a field of its config.

    flag: "--r-list". field: the config field it sets (None: the method's ``configure`` reads it from the
    option values by dest). parse: str -> value (argparse type). choices: allowed values or None.
    """

    flag: str
    field: str | None
    help: str
    parse: Callable[[str], Any] = str
    choices: tuple | None = None
    metavar: str | None = None

    @property
    def dest(self) -> str:
        """The argparse destination name ("--r-list" -> "r_list")."""
        return self.flag.lstrip("-").replace("-", "_")


class OptionError(ValueError):
    """A command-line option that is misplaced or malformed; the message names the option."""


@dataclass(frozen=True)
class DeferredParse:
    """A parse function that lives in a method's module, named rather than imported: calling it imports
    ``module`` (only when a value for the option is given) and calls its ``attribute``. Lets the lazy table
    declare an option whose parser would pull in the method's dependencies."""

    module: str
    attribute: str

    def resolve(self) -> Callable[[str], Any]:
        """The parse function itself (imports its module)."""
        return getattr(importlib.import_module(self.module), self.attribute)

    def __call__(self, text: str) -> Any:
        return self.resolve()(text)


def option_fields(options, values: dict, common: tuple[str, ...] = ()) -> dict:
    """{option.field: value} for every option of ``options`` that sets a config field and whose value (by
    argparse dest, as ``configure`` receives them) is given and not None, plus the given ``common`` values
    (options every method has, such as "precision", whose dest is the field). Configure functions read declared
    fields through this, so a flag whose dest differs from its field still reaches the field."""
    fields = {o.field: values[o.dest] for o in options if o.field is not None and values.get(o.dest) is not None}
    fields.update({name: values[name] for name in common if values.get(name) is not None})
    return fields


@contextmanager
def option_errors(what: str):
    """Re-raise the ValueError a config's own checks raise inside the block as an OptionError prefixed with
    ``what`` ("musc options"), so a bad value is reported as a bad option."""
    try:
        yield
    except ValueError as err:
        raise OptionError(f"{what}: {err}") from err


def int_list(text: str) -> tuple[int, ...]:
    """"1,3,5" -> (1, 3, 5) (argparse type)."""
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError as err:
        raise ValueError(f"expected comma-separated integers, got {text!r}") from err
    if not values:
        raise ValueError(f"expected at least one integer, got {text!r}")
    return values


def float_pair(text: str) -> tuple[float, float]:
    """"0,0.3" -> (0.0, 0.3) (argparse type)."""
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError as err:
        raise ValueError(f"expected LO,HI such as 0,0.3, got {text!r}") from err
    return lo, hi
