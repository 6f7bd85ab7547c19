"""Which process this is, under ``torchrun`` / ``accelerate launch`` or alone."""

from __future__ import annotations

import os


def is_distributed_launch() -> bool:
    """Whether this process was started by a multi-process launcher (torchrun, accelerate launch)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def is_main_process() -> bool:
    """True in a single process, and on global rank 0 of a multi-process launch.

    Only the main process writes files (run directory, saved models) and prints the progress bar.
    """
    return int(os.environ.get("RANK", "0")) == 0


def wait_for_everyone() -> None:
    """A barrier across processes (a no-op in a single process)."""
    if is_distributed_launch():
        from accelerate import PartialState

        PartialState().wait_for_everyone()
