"""torch's CPU threads for a run: ``training.cpu_threads``.

torch starts with one thread per core. On a machine whose cores other processes also keep busy,
those threads wait on each other at every operation, and a step gets several times slower than
with fewer threads (measured by the benchmark's ``threads`` case). ``"auto"`` picks the count from
the load, as ``tunekit demo`` always has; the setting holds for the duration of ``fit`` or
``evaluate`` and the process's own setting comes back after.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator

THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
"""Variables by which a user (or a launcher such as torchrun) already chose the thread count."""


def available_cores() -> int:
    """The cores this process may run on (its affinity, not the machine's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def choose_threads(processes: int = 1) -> int:
    """CPU threads for torch: all cores on an idle machine, fewer when other processes keep them busy.

    Two threads on two cores that other processes also use wait on each other at every
    operation, which made a forward pass several times slower here than one thread. With
    ``processes`` ranks of one launch on the machine, each gets its share of the free cores.
    """
    cores = available_cores()
    try:
        busy = os.getloadavg()[0]
    except OSError:
        busy = 0.0
    free = max(1, min(cores, math.floor(cores - busy + 0.5)))
    return max(1, free // max(1, processes))


def threads_for(setting: int | str | None, device: str) -> int | None:
    """The thread count ``training.cpu_threads`` asks for on ``device``, or ``None`` to leave torch alone.

    ``"auto"`` leaves torch alone on an accelerator (the CPU only feeds it) and when
    ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` already say how many.
    """
    if setting is None:
        return None
    if isinstance(setting, int):
        return setting
    if device != "cpu" or any(os.environ.get(name) for name in THREAD_ENV):
        return None
    return choose_threads(int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))


@contextlib.contextmanager
def cpu_threads(setting: int | str | None, device: str) -> Iterator[int]:
    """Run the block with torch's thread count set per ``training.cpu_threads``; restore it after.

    Yields the thread count in effect.
    """
    import torch

    before = torch.get_num_threads()
    wanted = threads_for(setting, device)
    if wanted is None or wanted == before:
        yield before
        return
    torch.set_num_threads(wanted)
    try:
        yield wanted
    finally:
        torch.set_num_threads(before)
