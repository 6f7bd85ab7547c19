"""The errors tunekit raises for anything a user can get wrong.

Every message says what was wrong, where, and what to do about it. Catch
:class:`TunekitError` to handle them all.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass


class TunekitError(Exception):
    """Base class of every error tunekit raises for a user's mistake or environment."""


@dataclass(frozen=True)
class Problem:
    """One problem found while validating: a dotted location and a message."""

    location: str
    message: str
    code: str = ""
    """A machine-readable kind, e.g. ``unknown_part``."""

    def __str__(self) -> str:
        return f"{self.location}: {self.message}" if self.location else self.message


class ConfigError(TunekitError, ValueError):
    """The configuration is invalid. ``problems`` lists every problem found, not only the first.

    >>> err = ConfigError([Problem("strategy.rank", "must be >= 1")])
    >>> print(err)
    Invalid tunekit configuration (1 problem):
      strategy.rank: must be >= 1
    """

    def __init__(self, problems: Sequence[Problem] | str):
        if isinstance(problems, str):
            problems = [Problem("", problems)]
        self.problems: list[Problem] = list(problems)
        count = len(self.problems)
        lines = "\n".join(f"  {p}" for p in self.problems)
        noun = "problem" if count == 1 else "problems"
        super().__init__(f"Invalid tunekit configuration ({count} {noun}):\n{lines}")


class UnknownPartError(ConfigError):
    """A part (strategy, quantizer, ...) was named that no installed plugin provides."""


class PluginError(TunekitError):
    """A plugin is broken: it failed to import, registered a duplicate name, or misspelt a hook."""


class DataError(TunekitError, ValueError):
    """The training or evaluation data cannot be used as given."""


class ModelLoadError(TunekitError, OSError):
    """A model or tokenizer could not be found or loaded."""


class HardwareError(TunekitError, RuntimeError):
    """The configuration asks for something this machine cannot do (a precision, a device)."""


class MissingDependencyError(TunekitError, ImportError):
    """An optional dependency is not installed; the message names what to install."""


def join_names(names: Iterable[str]) -> str:
    """Render names as ``'a', 'b', 'c'`` for error messages."""
    return ", ".join(repr(n) for n in sorted(names)) or "(none)"
