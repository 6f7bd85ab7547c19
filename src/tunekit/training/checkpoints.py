"""Checkpoints that are never half-written, checked before they are used, and tied to their run.

transformers' Trainer writes ``checkpoint-N`` in place, so a crash in the middle of a save
leaves a directory that looks like the newest checkpoint and loads wrong. tunekit's
trainer writes each checkpoint under ``.staging/`` and renames it into place when it is
complete, with :data:`FINGERPRINT` (what the run was: config and data hashes) written last.
Before a resume every candidate is still checked (:func:`checkpoint_problem`): a disk can
lie, a user can copy half a folder. A damaged checkpoint is skipped with a warning and the
newest intact one is used.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import struct
import zipfile
from pathlib import Path

log = logging.getLogger(__name__)

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
STAGING = ".staging"
FINGERPRINT = "tunekit-fingerprint.json"
"""Written into each checkpoint: the config fields and data hashes of the run that wrote it."""
_WEIGHT_FILES = ("adapter_model.safetensors", "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


def checkpoints(output_dir: str | Path) -> list[Path]:
    """The run's ``checkpoint-N`` directories, oldest first (not yet checked)."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := CHECKPOINT_RE.match(p.name))]
    return [p for _, p in sorted(found)]



def newest_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest checkpoint directory of a run, or None (not checked: see :func:`newest_intact_checkpoint`)."""
    found = checkpoints(output_dir)
    return found[-1] if found else None


def safetensors_problem(path: Path) -> str | None:
    """Why a ``.safetensors`` file is unusable (truncated, bad header), or None."""
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                return f"{path.name} is truncated ({size} bytes)"
            (length,) = struct.unpack("<Q", head)
            if length > size - 8 or length > 100 * 2**20:
                return f"{path.name} is truncated or not safetensors (a header of {length} bytes in a file of {size})"
            header = json.loads(fh.read(length))
    except (OSError, ValueError) as exc:
        return f"{path.name} cannot be read ({exc})"
    if not isinstance(header, dict):
        return f"{path.name} has no tensor table"
    end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)), default=0)
    if 8 + length + end > size:
        return f"{path.name} is truncated ({size} bytes, its header needs {8 + length + end})"
    return None


def torch_file_problem(path: Path) -> str | None:
    """Why a ``torch.save`` file (a zip archive) is unusable, or None; reads every member's CRC."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (OSError, zipfile.BadZipFile, EOFError, ValueError) as exc:
        return f"{path.name} is not a complete torch file ({exc})"
    return f"{path.name} is damaged (member {bad} fails its checksum)" if bad else None


def checkpoint_problem(checkpoint: Path) -> str | None:
    """Why ``checkpoint`` cannot be resumed from, or None when every file it needs is intact."""
    state = checkpoint / "trainer_state.json"
    try:
        json.loads(state.read_text(encoding="utf-8"))["global_step"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"trainer_state.json is missing or unreadable ({type(exc).__name__})"
    weights = [checkpoint / n for n in _WEIGHT_FILES if (checkpoint / n).is_file()]
    weights += sorted(checkpoint.glob("model-*-of-*.safetensors"))
    if not weights:
        return "it holds no model weights"
    for file in [*weights, *sorted(checkpoint.glob("*.safetensors"))]:
        if file.suffix == ".safetensors" and (why := safetensors_problem(file)):
            return why
    for file in sorted(checkpoint.glob("*.pt")) + sorted(checkpoint.glob("*.pth")) + sorted(checkpoint.glob("*.bin")):
        if why := torch_file_problem(file):
            return why
    if not (checkpoint / "optimizer.pt").is_file() and not any(checkpoint.glob("global_step*")):
        return "optimizer.pt is missing"
    return None


def newest_intact_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest checkpoint that passes :func:`checkpoint_problem`; damaged newer ones are logged and skipped."""
    for candidate in reversed(checkpoints(output_dir)):
        why = checkpoint_problem(candidate)
        if why is None:
            return candidate
        log.warning("tunekit: skipping the damaged checkpoint %s: %s", candidate, why)
    return None


def read_fingerprint(checkpoint: Path) -> dict[str, str] | None:
    """The fingerprint a checkpoint was written with (None for one written without tunekit)."""
    try:
        data = json.loads((checkpoint / FINGERPRINT).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def publish(staged: Path, final: Path) -> None:
    """Move a fully written checkpoint from the staging area into place (a rename)."""
    if final.exists():
        shutil.rmtree(final)
    staged.rename(final)


def rotate(output_dir: str | Path, keep: int | None, *, keep_also: str | Path | None = None) -> None:
    """Delete all but the ``keep`` newest checkpoints, and never ``keep_also`` (the best one, for early stopping)."""
    if not keep:
        return
    for old in checkpoints(output_dir)[:-keep]:
        if keep_also is None or Path(old).resolve() != Path(keep_also).resolve():
            shutil.rmtree(old, ignore_errors=True)
