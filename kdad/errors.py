"""kdad's user-facing errors, at the bottom of the package (no imports from kdad).

``UserError`` marks the errors a user fixes (a config option, a dataset on disk, a weight file): the command line
reports them as their message, without a traceback. Everything else is a bug and keeps its traceback.

* ``ConfigError``: an option of the composed config is invalid (also a ``ValueError``, what the constructors that
  check options raised before).
* ``kdad.data.errors.DatasetError`` (a ``UserError`` and a ``ValueError``): a dataset on disk, or a data option.
* ``kdad.blocks.weights.WeightsUnavailableError`` (a ``UserError`` and a ``RuntimeError``): pretrained weights
  that cannot be obtained here.

``check_choice`` is the one check of an option against its allowed values, so the messages read the same
everywhere: ``unknown <option> '<value>': choose one of a, b, c``.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import TypeVar

T = TypeVar("T")


class UserError(Exception):
    """An error the user fixes (config, data, weights): reported as its message, without a traceback."""


class ConfigError(UserError, ValueError):
    """An invalid option in the composed config (or in the arguments a config instantiates)."""


def check_choice(value: T, allowed: Collection[T], option: str, error: type[Exception] = ConfigError) -> T:
    """Return ``value`` if it is one of ``allowed``, else raise ``error``.

    The message is ``unknown <option> '<value>': choose one of a, b, c`` (``allowed`` in its own order), so name
    the option as the user writes it (``map_norm``, ``distillation loss``); the data layer passes
    ``error=DatasetError``.
    """
    if value not in allowed:
        choices = ", ".join(str(choice) for choice in allowed)
        raise error(f"unknown {option} '{value}': choose one of {choices}")
    return value
