"""Deciding where a resumed run starts: an intact checkpoint of the same run, or nothing to do."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tunekit.errors import TunekitError
from tunekit.training.checkpoints import STAGING, newest_intact_checkpoint, read_fingerprint
from tunekit.training.fingerprint import changed_fields

log = logging.getLogger(__name__)


class ResumeMismatchError(TunekitError, ValueError):
    """The run being resumed was trained with another config or other data."""


def _refuse_changes(where: str, changes: list[str], accept_flag: str) -> None:
    lines = "\n".join(f"  {c}" for c in changes)
    raise ResumeMismatchError(
        f"{where} was trained with a different configuration or data than this run:\n{lines}\n"
        f"Resume with the same config and data, or pass {accept_flag} to continue with the changes anyway."
    )


def resume_point(
    run_dir: Path, fingerprint: Mapping[str, str], *, accept_changes: bool, accept_flag: str = "accept_changes=True",
    clean: bool = True,
) -> Path | None:
    """The checkpoint to resume from (None: start at step 0), checked against this run's fingerprint.

    Damaged checkpoints are skipped with a warning; a half-written ``.staging/`` left by a killed
    process is removed (``clean``: on the main process only).
    """
    if clean and (run_dir / STAGING).is_dir():
        import shutil

        shutil.rmtree(run_dir / STAGING)
    checkpoint = newest_intact_checkpoint(run_dir)
    if checkpoint is None:
        log.warning("tunekit: no intact checkpoint in %s; starting from the beginning.", run_dir)
        return None
    saved = read_fingerprint(checkpoint)
    if saved is None:
        if not accept_changes:
            raise ResumeMismatchError(
                f"{checkpoint} has no {checkpoint.name}/tunekit-fingerprint.json, so tunekit cannot check that it "
                f"belongs to this config and data; pass {accept_flag} to resume from it anyway."
            )
    else:
        changes = changed_fields(saved, fingerprint)
        if changes and not accept_changes:
            _refuse_changes(str(checkpoint), changes, accept_flag)
        if changes:
            log.warning("tunekit: resuming %s despite changes: %s", checkpoint, "; ".join(changes))
    log.warning("tunekit: resuming from %s", checkpoint)
    return checkpoint


def finished_run(marker: Mapping[str, Any] | None, fingerprint: Mapping[str, str], config: Mapping[str, Any]) -> bool:
    """Whether the run in a directory already finished what this config asks (same budget, same run)."""
    if not marker or marker.get("state") != "complete" or not isinstance(marker.get("fingerprint"), dict):
        return False
    training = config.get("training") or {}
    budget = marker.get("budget") or {}
    same_budget = budget.get("max_steps") == training.get("max_steps") and budget.get("epochs") == training.get("epochs")
    return same_budget and not changed_fields(marker["fingerprint"], fingerprint)
