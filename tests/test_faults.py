"""Fault injection: SIGKILL anywhere in a run, a full disk, and what is left afterwards (docs/reliability.md).

After every kill, the run directory holds the old run or the new one (never neither, never a
mix), and finishing the job (resume, or the same overwrite again) ends on exactly the weights
of an uninterrupted run.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tests.conftest import quick

from tunekit import Tuner
from tunekit.run_directory import DiskFullError, read_marker
from tunekit.testing import sft_rows

SCRIPT = Path(__file__).parent / "scripts" / "fault_run.py"


def _start(model: Path, out: Path, mode: str, result: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), str(model), str(out), mode, str(result), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )


def _run(model: Path, out: Path, mode: str, result: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    proc = _start(model, out, mode, result, *extra)
    stdout, stderr = proc.communicate(timeout=600)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def _weights(path: Path) -> dict[str, np.ndarray]:
    tuner = Tuner.load(path)
    return {n: p.detach().numpy().ravel().copy() for n, p in tuner.model.named_parameters() if p.requires_grad}


def _same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return a.keys() == b.keys() and all(np.allclose(a[k], b[k], rtol=1e-4, atol=1e-6) for k in a)


@pytest.fixture(scope="module")
def reference(tiny_gpt2: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """An uninterrupted run (and how long its training took), and an older, shorter run to be replaced."""
    root = tmp_path_factory.mktemp("reference")
    done = _run(tiny_gpt2, root / "new", "fresh", root / "new.json")
    assert done.returncode == 0, done.stderr[-3000:]
    lines = dict(line.split() for line in done.stdout.splitlines() if line.split()[0] in {"STARTED", "DONE"})
    old = _run(tiny_gpt2, root / "old", "fresh", root / "old.json", "--max-steps", "4")
    assert old.returncode == 0, old.stderr[-3000:]
    return {"new": _weights(root / "new"), "old_dir": root / "old", "old": _weights(root / "old"),
            "duration": float(lines["DONE"]) - float(lines["STARTED"])}


def _kill_at_random(proc: subprocess.Popen[str], delay: float) -> bool:
    """SIGKILL ``delay`` seconds after the child reports STARTED; False if it finished first."""
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("STARTED"), line + (proc.stderr.read() if proc.stderr else "")
    try:
        proc.wait(timeout=delay)
        return False
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return True


def _check_and_finish(model: Path, out: Path, mode: str, reference: dict, tmp_path: Path) -> str:
    """What the kill left must load as the old or the new run; finishing the job gives the new weights."""
    state = "nothing yet"
    if (out / "model").is_dir() or mode == "overwrite":
        got = _weights(out)
        if _same(got, reference["new"]):
            state = "new"
        else:
            assert mode == "overwrite" and _same(got, reference["old"]), "neither the old nor the new run"
            state = "old"
    again = "overwrite" if mode == "overwrite" else "resume"
    if state == "new" and mode == "overwrite":
        again = "resume"  # the new run is in place: resuming it trains nothing
    finished = _run(model, out, again, tmp_path / "again.json")
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert _same(_weights(out), reference["new"])
    assert read_marker(out)["state"] == "complete"
    assert not list(out.parent.glob(".tunekit-*")) and not (out / ".staging").exists()
    return state


@pytest.mark.parametrize("point", ["checkpoint", "save", "pre-swap", "swap"])
def test_sigkill_at_each_named_point(tiny_gpt2, tmp_path, reference, point):
    out = tmp_path / "run"
    mode = "overwrite" if point in {"pre-swap", "swap"} else "fresh"
    if mode == "overwrite":
        shutil.copytree(reference["old_dir"], out)
    killed = _run(tiny_gpt2, out, mode, tmp_path / "r.json", "--fault", point)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    state = _check_and_finish(tiny_gpt2, out, mode, reference, tmp_path)
    assert state == {"checkpoint": "nothing yet", "save": "nothing yet", "pre-swap": "old", "swap": "new"}[point]


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(20))
def test_sigkill_at_a_random_moment(tiny_gpt2, tmp_path, reference, seed):
    rng = random.Random(seed)
    out = tmp_path / "run"
    mode = "overwrite" if seed % 2 else "fresh"
    if mode == "overwrite":
        shutil.copytree(reference["old_dir"], out)
    proc = _start(tiny_gpt2, out, mode, tmp_path / "r.json")
    delay = rng.uniform(0.0, 1.1 * reference["duration"])
    killed = _kill_at_random(proc, delay)
    state = _check_and_finish(tiny_gpt2, out, mode, reference, tmp_path)
    # Shown with `pytest -s`: what each kill left (finishing first is an outcome too).
    print(f"fault seed {seed}: {mode}, SIGKILL after {delay:.1f}s: {'killed' if killed else 'finished first'}, left {state}")


@pytest.fixture
def small_disk(tmp_path: Path):
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root and mount(8)")
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=160k", "tmpfs", str(mount)], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"mount is not permitted here: {made.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_is_a_clear_error_and_leaves_no_debris(tiny_gpt2, tmp_path, small_disk):
    out = small_disk / "run"
    tuner = Tuner(model=str(tiny_gpt2), output_dir=str(out), training=quick(max_steps=4, save_steps=1))
    with pytest.raises(DiskFullError, match=r"disk is full while writing .*free some space"):
        tuner.fit(sft_rows(8))
    leftovers = [str(p.relative_to(small_disk)) for p in small_disk.rglob("*")]
    assert not any(".staging/" in p or p.startswith(".tunekit-new") for p in leftovers), leftovers
    # The failed run removed what it had written; fill the disk (but 16 KiB) so the save cannot fit either.
    free = shutil.disk_usage(small_disk).free
    (small_disk / "filler.bin").write_bytes(b"\0" * max(0, free - 16 * 1024))
    with pytest.raises(DiskFullError):
        tuner.save(small_disk / "adapter")
    assert not list(small_disk.glob(".tunekit-*")) and not (small_disk / "adapter").exists()
    assert (small_disk / "filler.bin").stat().st_size == max(0, free - 16 * 1024)  # the user's file is untouched
