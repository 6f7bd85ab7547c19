"""The start of a training process: its libraries imported with the garbage collector paused.

>>> from tunekit.startup import import_training_libraries
>>> import_training_libraries()  # doctest: +SKIP

torch, transformers' Trainer and datasets (which every fit imports anyway) allocate about half a
million long-lived objects. With the cyclic garbage collector on, it walks all of them again in
every full pass it starts while they are being imported: 8-9 passes, 1.4-1.7 s of a tiny fit's
7 s to its first step on our machine (``scripts/startup_profile.py``; docs/performance.md,
"Start-up"). Pausing it for these imports and then freezing what they allocated
(:func:`gc.freeze`: later passes skip those objects) removes that time; module-level objects
live as long as the process anyway.

Only processes that tunekit starts for training call this (``tunekit fit``, ``tunekit
preflight``, a ``compare`` worker): it changes the process's collector, which a library imported
into someone else's program must not do.
"""

from __future__ import annotations

import gc
import sys

# transformers.trainer imports peft whenever it is installed, and peft imports bitsandbytes
# whenever that is installed: both come in with it, as they would later in the fit.
LIBRARIES = ("torch", "transformers.trainer", "datasets")


def import_training_libraries() -> None:
    """Import torch, ``transformers.trainer`` and datasets with the collector paused, then
    :func:`gc.freeze` what exists. A missing library is left for the code that needs it to
    report (with the extra to install).

    Does nothing where they are imported already (a second fit in one process, a test calling
    ``tunekit.cli.main``): there is nothing left to save, and what a process made since is not
    frozen, so a cycle it lets go of is still collected."""
    if all(name in sys.modules for name in LIBRARIES):
        return
    enabled = gc.isenabled()
    gc.disable()
    try:
        for name in LIBRARIES:
            try:
                __import__(name)
            except ImportError:
                pass
    finally:
        gc.freeze()
        if enabled:
            gc.enable()
