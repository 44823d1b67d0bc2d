"""What a user sees when a kdad command stops: the shared front of the Hydra entry points (``python -m kdad.run``).

A problem the user can fix (a missing dataset, a bad option, weights unavailable offline, a config that does not
compose) ends the command with ``kdad: error: <message>`` on stderr and exit status 2, the usage-error status of
argparse and most Unix tools, instead of a traceback that buries the message. Anything else is a bug and keeps
its traceback; ``HYDRA_FULL_ERROR=1`` shows the full traceback of every error, as Hydra documents.

Hydra catches exceptions itself, so the report sits in two places:

* in the task function: a run prints the message and exits before Hydra adds "Error executing job with
  overrides" and a traceback. In a multirun (``-m``) job the message is logged and the error re-raised, so Hydra
  still runs the sweep's other jobs;
* around Hydra's ``run_and_report`` (hydra/_internal/utils.py, the function that prints Hydra's tracebacks):
  composition errors (an unknown option, an override of a missing key) happen before any task runs, and a
  multirun re-raises the first failed job's error after all jobs ran. Both get the same one-message report.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn, TypeVar

import hydra
from omegaconf import DictConfig

from kdad.errors import UserError

log = logging.getLogger("kdad")

EXIT_USER_ERROR = 2
PREFIX = "kdad: error: "
FULL_ERROR_ENV = "HYDRA_FULL_ERROR"

T = TypeVar("T")
Task = Callable[[DictConfig], T]


def hydra_cli(config_name: str, config_path: str = "../conf") -> Callable[[Task[T]], Callable[..., T | None]]:
    """``@hydra.main`` for kdad's entry points, with kdad's error report (see the module docstring).

    ``config_path`` is relative to the decorated function's file, as with ``hydra.main``. Called without a config,
    the decorated function runs the command line (and returns None); called with one, it runs the task on it.
    """

    def decorate(task: Task[T]) -> Callable[..., T | None]:
        hydra_main = hydra.main(version_base="1.3", config_path=config_path, config_name=config_name)(
            _report_in_job(task)
        )

        @functools.wraps(task)
        def main(cfg: DictConfig | None = None) -> T | None:
            with _hydra_reports_user_errors():
                return hydra_main(cfg)

        return main

    return decorate


def user_error_message(exc: BaseException) -> str | None:
    """The message to show for an error the user can fix; None for anything else (a bug keeps its traceback).

    Hydra wraps errors raised while it instantiates a config node (a data module's constructor, a teacher's
    weights) in an InstantiationException: the error inside decides.
    """
    from hydra.errors import CompactHydraException, InstantiationException
    from omegaconf.errors import OmegaConfBaseException

    error: BaseException | None = exc
    while isinstance(error, InstantiationException):
        error = error.__cause__
    if error is None:
        return None
    if isinstance(error, (UserError, OmegaConfBaseException)):
        return str(error)
    if isinstance(error, CompactHydraException):  # composition: unknown option, bad override
        cause = error.__cause__
        return f"{error}\n{cause}" if isinstance(cause, OmegaConfBaseException) else str(error)
    return None


def full_error_requested() -> bool:
    """Hydra's switch for complete tracebacks (hydra/_internal/utils.py reads it the same way)."""
    return os.environ.get(FULL_ERROR_ENV) == "1"


def _exit_with(message: str) -> NoReturn:
    print(PREFIX + message, file=sys.stderr, flush=True)
    sys.exit(EXIT_USER_ERROR)


def _in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _report_in_job(task: Task[T]) -> Task[T]:
    """The task function, reporting user errors: exit at once in a run; log and re-raise in a multirun job."""

    @functools.wraps(task)  # Hydra unwraps to the task's file to find config_path and name the job
    def job(cfg: DictConfig) -> T:
        try:
            return task(cfg)
        except Exception as exc:
            message = user_error_message(exc)
            if message is None or full_error_requested():
                raise
            if _in_multirun():
                log.error("%s%s", PREFIX, message)
                raise
            _exit_with(message)

    return job


def _exit_on_user_error(func: Callable[[], Any]) -> Any:
    try:
        return func()
    except Exception as exc:
        message = user_error_message(exc)
        if message is None or full_error_requested():
            raise
        _exit_with(message)


@contextmanager
def _hydra_reports_user_errors() -> Iterator[None]:
    """Route what Hydra's ``run_and_report`` catches through kdad's report first (a Hydra without that private
    function keeps its own report: only composition errors and multirun failures then show Hydra's output)."""
    from hydra._internal import utils as hydra_internal

    original = getattr(hydra_internal, "run_and_report", None)
    if original is None:
        yield
        return
    hydra_internal.run_and_report = lambda func: original(functools.partial(_exit_on_user_error, func))
    try:
        yield
    finally:
        hydra_internal.run_and_report = original
