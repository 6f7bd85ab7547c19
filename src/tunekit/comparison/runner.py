"""Run one candidate-and-seed job in a fresh Python process and collect its :class:`RunRecord`.

A process per run means every candidate loads the base model afresh, nothing (weights,
optimizer state, allocator caches, RNG) leaks from one to the next, and its peak memory
cannot be inflated by an earlier candidate. A run that crashes, is killed (out of memory)
or times out still yields a record, with the reason as its error.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import tunekit
from tunekit.comparison.report import RunRecord
from tunekit.comparison.worker import MARK

Progress = Callable[[str], None]


def child_env() -> dict[str, str]:
    """The parent's environment, with this tunekit importable and output unbuffered."""
    env = dict(os.environ)
    package_root = str(Path(tunekit.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def _death(returncode: int | None, timeout_s: float | None, tail: list[str]) -> str:
    last = " ".join(line.strip() for line in tail if line.strip())[-600:]
    if returncode is None:
        return f"TimeoutError: the run did not finish within timeout_s={timeout_s:g} s and was stopped"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        why = ", most likely by the operating system for running out of memory" if name == "SIGKILL" else ""
        return f"ProcessKilled: the run's process was killed by {name}{why}" + (f"; last output: {last}" if last else "")
    return f"ProcessError: the run's process exited with status {returncode} without a result" + (
        f"; last output: {last}" if last else ""
    )


def run_in_subprocess(
    job: dict[str, Any], job_dir: Path, *, label: str, timeout_s: float | None, progress: Progress | None
) -> RunRecord:
    """Write ``job`` to ``job_dir/job.json``, run the worker on it, and return its record.

    The worker's output goes to ``job_dir/log.txt``; its progress lines go to ``progress``.
    """
    job_dir.mkdir(parents=True, exist_ok=True)
    record_path, log_path, job_path = job_dir / "record.json", job_dir / "log.txt", job_dir / "job.json"
    record_path.unlink(missing_ok=True)
    job = {**job, "record_path": str(record_path)}
    job_path.write_text(json.dumps(job, indent=2), encoding="utf-8")
    cmd = [sys.executable, "-m", "tunekit.comparison.worker", str(job_path)]
    tail: deque[str] = deque(maxlen=20)
    start = time.perf_counter()
    with log_path.open("w", encoding="utf-8") as log:
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            text=True, errors="replace", bufsize=1, env=child_env(),
        )

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                if line.startswith(MARK):
                    if progress is not None:
                        try:
                            progress(_progress_line(label, json.loads(line[len(MARK):])))
                        except Exception:  # a broken progress callback must not stall the run
                            pass
                    continue
                log.write(line)
                tail.append(line)

        reader = threading.Thread(target=pump, name=f"compare-{label}", daemon=True)
        reader.start()
        returncode: int | None
        try:
            returncode = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            returncode = None
        except BaseException:  # KeyboardInterrupt: never leave a training process behind
            proc.kill()
            proc.wait()
            raise
        reader.join()
    elapsed = time.perf_counter() - start
    if returncode is not None and record_path.is_file():
        record = RunRecord.model_validate_json(record_path.read_text(encoding="utf-8"))
    else:
        record = RunRecord(seed=int(job["seed"]), ok=False, error=_death(returncode, timeout_s, list(tail)),
                           output_dir=job["config"].get("output_dir"))
    record.process_time_s = elapsed
    record.log_path = str(log_path)
    return record


def _progress_line(label: str, event: dict[str, Any]) -> str:
    kind = event.get("event")
    if kind == "load":
        return f"{label}: loading the base model"
    if kind == "train":
        total = event.get("max_steps")
        return f"{label}: training" + (f" for {total} steps" if total else "")
    if kind == "step":
        total = event.get("max_steps")
        return f"{label}: step {event['step']}" + (f"/{total}" if total else "") + f", loss {event['loss']:.4f}"
    if kind == "evaluate":
        return f"{label}: evaluating and measuring the saved model"
    return f"{label}: {kind}"
