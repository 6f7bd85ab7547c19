"""Checkpoints that are never half-written, and finding the newest complete one.

transformers' Trainer writes ``checkpoint-N`` in place, so a crash in the middle of a save
leaves a directory that looks like the newest checkpoint and loads wrong. tunekit's
trainer writes each checkpoint under ``.staging/`` and renames it into place when it is
complete: every ``checkpoint-N`` directory in a run is whole.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
STAGING = ".staging"


def complete_checkpoints(output_dir: str | Path) -> list[Path]:
    """The run's complete checkpoints, oldest first."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := CHECKPOINT_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def newest_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of a run, or None."""
    found = complete_checkpoints(output_dir)
    return found[-1] if found else None


def publish(staged: Path, final: Path) -> None:
    """Move a fully written checkpoint from the staging area into place (a rename)."""
    if final.exists():
        shutil.rmtree(final)
    staged.rename(final)


def rotate(output_dir: str | Path, keep: int | None) -> None:
    """Delete all but the ``keep`` newest complete checkpoints."""
    if not keep:
        return
    for old in complete_checkpoints(output_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
