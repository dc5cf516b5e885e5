"""Errors a user causes end a run with one message: printed once (global rank 0), no traceback, exit status 2.

A user error is one the command line or the files it names can fix: the recipe (Hydra composition, schema
values, layout rules), data sources (data.strict's malformed lines too), checkpoint paths, a run directory
another live run holds. Each already says what is wrong and how to fix it, so a traceback adds ~40 lines of
noise per rank and hides the message. Anything else is a bug and keeps its traceback; HYDRA_FULL_ERROR=1
(Hydra's own switch) re-raises user errors too. An entry point run by @hydra.main goes through run_hydra_app, so
Hydra's composition errors (an unknown key or recipe) end the same way.

Under torchrun, any worker exiting non-zero makes the launcher print a ChildFailedError report with its own
traceback (33 lines for 2 ranks, torch 2.13) after our message, and torchrun has no switch to silence it. So
local rank 0 ends its launcher with SIGUSR1, which torch installs no handler for: the launcher exits at once
and the shell reports one line ("User defined signal 1", exit status 138). The other local ranks wait a moment
so that the launcher is gone before it could see them exit. Every rank raises the same user error at the same
point (they check the same recipe, files and paths), and the checks run before the process group exists; when
one comes later (a checkpoint that cannot be resumed), the ranks meet in a barrier first, since the launcher
hosts the rendezvous store the process group was built on. Not done when the launcher is PID 1, as in a
Kubernetes pod: the kernel drops unhandled signals to PID 1, torchrun exits 1 with its report, and the
operator's ExitCode restart policy treats that as permanent instead of retrying a bad recipe.
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from typing import Callable

import torch
from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from data.datasets import DataValidationError
from data.report import BadInputError
from recipes.validate import RecipeError
from train.checkpoint import CheckpointError
from train.run_lock import RunLockedError

USER_ERRORS = (HydraException, OmegaConfBaseException, RecipeError, DataValidationError, BadInputError,
               CheckpointError, RunLockedError)
EXIT_STATUS = 2
_GRACE_SECONDS = 2.0  # time for local rank 0 to stop the launcher before the other ranks exit
_FULL_ERROR = "HYDRA_FULL_ERROR"
_TRACEBACK_WANTED = os.environ.get(_FULL_ERROR) == "1"  # the user's choice, before run_hydra_app sets it for Hydra


def _launcher_pid():
    """The torchrun launcher's pid when this process is one of its workers (and it is not PID 1), else None."""
    if "TORCHELASTIC_RUN_ID" not in os.environ:
        return None
    parent = os.getppid()
    try:
        with open(f"/proc/{parent}/cmdline", "rb") as f:
            cmdline = f.read()
    except OSError:
        return None
    is_torchrun = b"torchrun" in cmdline or b"torch.distributed.run" in cmdline
    return parent if is_torchrun and parent != 1 else None


def exit_with(error: BaseException) -> None:
    """Print `error` once (global rank 0) and end this process, quietly ending torchrun too (see above)."""
    if os.environ.get("RANK", "0") == "0":
        print(f"error: {error}", file=sys.stderr, flush=True)
    launcher = _launcher_pid()
    if launcher is not None and torch.distributed.is_initialized():
        torch.distributed.barrier()  # every rank is here (user errors are raised by all): none still needs the
        # launcher's rendezvous store, which ends with it
    if launcher is not None:
        if os.environ.get("LOCAL_RANK", "0") == "0":
            os.kill(launcher, signal.SIGUSR1)
        else:
            time.sleep(_GRACE_SECONDS)
    sys.exit(EXIT_STATUS)


@contextlib.contextmanager
def user_errors_reported(extra=()):
    """Turn USER_ERRORS (and `extra` exception types) raised inside the block into exit_with(error)."""
    try:
        yield
    except (*USER_ERRORS, *extra) as error:
        if _TRACEBACK_WANTED:
            raise
        exit_with(error)


def run_hydra_app(main: Callable[[], None]) -> None:
    """Run a @hydra.main entry point (argv from sys.argv) with its composition errors reported as above; the
    entry's own function reports the errors it raises itself (user_errors_reported), before Hydra's job runner
    would add an "Error executing job" line.

    Hydra reports a composition error itself (several lines, exit status 1) unless HYDRA_FULL_ERROR=1, with which
    it re-raises: so it is set for Hydra, and the user's own setting still decides whether we show a traceback.
    """
    os.environ[_FULL_ERROR] = "1"
    with user_errors_reported():
        main()
