"""One candidate, one seed, in a process of its own: ``python -m tunekit.comparison.worker JOB.json``.

The job file says what to run (a full TuneConfig, the data files, the metrics); the worker
fits, evaluates, measures what was saved and writes a :class:`RunRecord` to the job's
``record_path``. Errors become the record's ``error``. Progress goes to stdout as lines
starting with :data:`MARK`, which the parent turns into its progress display.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import shutil
import sys
import time
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tunekit.comparison.report import BUILTIN_METRICS, RunRecord
from tunekit.errors import ConfigError, DataError, HardwareError, MissingDependencyError, ModelLoadError
from tunekit.hookspecs import hookimpl

MARK = "@@tunekit-compare "
# Failures another seed cannot fix: running the candidate's other seeds would only repeat them.
SEED_INDEPENDENT = (ConfigError, DataError, ModelLoadError, MissingDependencyError, HardwareError)


def emit(event: str, **data: Any) -> None:
    """Tell the parent process how far this run is."""
    print(MARK + json.dumps({"event": event, **data}), flush=True)


class ProgressReporter:
    """A lifecycle plugin that reports each logged training step to the parent."""

    def __init__(self, max_steps: int | None):
        self.max_steps = max_steps

    @hookimpl
    def on_fit_start(self, tuner: Any) -> None:
        emit("train", max_steps=self.max_steps)

    @hookimpl
    def on_log(self, tuner: Any, step: int, logs: dict[str, float]) -> None:
        if "loss" in logs:
            emit("step", step=step, max_steps=self.max_steps, loss=logs["loss"])


def import_object(reference: str) -> Any:
    """``"package.module"`` or ``"package.module:attribute"`` -> the module or attribute."""
    module_name, _, attr = reference.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in filter(None, attr.split(".")):
        obj = getattr(obj, part)
    return obj


def directory_size(path: Path) -> int:
    """Bytes of every file under ``path``."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def describe_error(exc: BaseException) -> str:
    """``'ErrorType: message'``, with a hint for out-of-memory errors."""
    name = type(exc).__name__
    text = f"{name}: {exc}".strip()
    if isinstance(exc, MemoryError) or "out of memory" in str(exc).lower() or name == "OutOfMemoryError":
        text += " (out of memory: lower training.batch_size or max_length, use a quantizer or gradient checkpointing)"
    return text


def evaluate_metrics(
    tuner: Any, eval_source: Any, metrics: Sequence[str | Mapping[str, Any]]
) -> tuple[dict[str, float], dict[str, str]]:
    """Values of the requested metrics beyond loss/perplexity, and an error for each one that has none.

    A metric is a name or a mapping with a ``name`` and options. They are asked of
    ``Tuner.evaluate(data, metrics=[...])`` when this tunekit's ``evaluate`` takes a ``metrics``
    argument (checked at run time); otherwise each is an error.
    """
    wanted = [m for m in metrics if _name(m) not in BUILTIN_METRICS]
    names = [_name(m) for m in wanted]
    if not wanted:
        return {}, {}
    if eval_source is None:
        return {}, {n: "no eval set: pass eval=... (or data.eval_fraction) to compare()" for n in names}
    try:
        accepts = "metrics" in inspect.signature(tuner.evaluate).parameters
    except (TypeError, ValueError):
        accepts = False
    if not accepts:
        why = (
            "this tunekit's Tuner.evaluate() takes no metrics argument, so only "
            f"{' and '.join(repr(m) for m in BUILTIN_METRICS)} can be measured"
        )
        return {}, {n: why for n in names}
    try:
        return _pick(tuner.evaluate(eval_source, metrics=list(wanted)), names)
    except Exception as exc:
        if len(wanted) == 1:
            return {}, {names[0]: describe_error(exc)}
    # One failing metric must not hide the others: ask for each on its own.
    values: dict[str, float] = {}
    errors: dict[str, str] = {}
    for spec, name in zip(wanted, names, strict=True):
        try:
            got, err = _pick(tuner.evaluate(eval_source, metrics=[spec]), [name])
        except Exception as exc:
            got, err = {}, {name: describe_error(exc)}
        values.update(got)
        errors.update(err)
    return values, errors


def _name(spec: str | Mapping[str, Any]) -> str:
    return spec if isinstance(spec, str) else str(spec["name"])


def _pick(result: Any, names: Sequence[str]) -> tuple[dict[str, float], dict[str, str]]:
    found = getattr(result, "metrics", None)
    table = found if isinstance(found, Mapping) else result if isinstance(result, Mapping) else None
    values: dict[str, float] = {}
    errors: dict[str, str] = {}
    for name in names:
        value = table.get(name) if table is not None else getattr(result, name, None)
        if value is None:
            errors[name] = "Tuner.evaluate() returned no value for it"
            continue
        try:
            values[name] = float(value)
        except (TypeError, ValueError):
            errors[name] = f"Tuner.evaluate() returned {value!r}, which is not a number"
    return values, errors


def run_job(job: Mapping[str, Any]) -> RunRecord:
    """Fit one candidate with one seed and return what was measured (errors included)."""
    from tunekit.plugins import register_plugin
    from tunekit.tuner import Tuner

    start = time.perf_counter()
    seed = int(job["seed"])
    output_dir = job["config"].get("output_dir")
    try:
        for reference in job.get("plugins", []):
            register_plugin(import_object(reference), name=reference)
        register_plugin(ProgressReporter(job.get("max_steps")), name="tunekit-compare-progress")
        emit("load")
        tuner = Tuner(job["config"])
        if job.get("untrained"):
            record = _evaluate_untrained(tuner, job)
            record.process_time_s = time.perf_counter() - start
            return record
        result = tuner.fit(job["train"], job.get("eval"), overwrite=True)
        emit("evaluate")
        values, metric_errors = evaluate_metrics(tuner, job.get("eval"), job.get("metrics", []))
        model_dir = Path(result.output_dir) / "model"
        saved = directory_size(model_dir) if model_dir.is_dir() else None
        if not job.get("keep_model", True):
            shutil.rmtree(model_dir, ignore_errors=True)
        record = RunRecord(
            seed=seed,
            ok=True,
            strategy=result.strategy,
            trainable_params=result.trainable_params,
            total_params=result.total_params,
            steps=result.steps,
            tokens_seen=result.tokens_seen,
            wall_time_s=result.wall_time_s,
            tokens_per_second=result.tokens_per_second,
            peak_memory_bytes=result.peak_memory_bytes,
            peak_memory_kind=result.peak_memory_kind,
            precision=result.precision,
            train_loss=result.train_loss,
            eval_loss=result.eval_loss,
            eval_perplexity=result.eval_perplexity,
            metrics=values,
            metric_errors=metric_errors,
            saved_bytes=saved,
            loss_history=result.loss_history,
            eval_history=result.eval_history,
            output_dir=result.output_dir,
        )
    except Exception as exc:
        traceback.print_exc()
        record = RunRecord(
            seed=seed, ok=False, error=describe_error(exc), output_dir=output_dir,
            seed_independent=isinstance(exc, SEED_INDEPENDENT),
        )
    record.process_time_s = time.perf_counter() - start
    return record


def _evaluate_untrained(tuner: Any, job: Mapping[str, Any]) -> RunRecord:
    """The ``base`` row: the model as loaded, scored on the eval rows like the trained candidates."""
    if job.get("eval") is None:
        raise DataError("the untrained base row needs an eval set: pass eval=... (or data.eval_fraction) to compare().")
    emit("evaluate")
    scored = tuner.evaluate(job["eval"])
    values, metric_errors = evaluate_metrics(tuner, job["eval"], job.get("metrics", []))
    total = sum(p.numel() for p in tuner.model.parameters())
    return RunRecord(
        seed=int(job["seed"]), ok=True, strategy="none (untrained)", trainable_params=0, total_params=total, steps=0,
        tokens_seen=0, eval_loss=scored.loss, eval_perplexity=scored.perplexity, metrics=values, metric_errors=metric_errors,
        precision=tuner.precision.name, output_dir=job["config"].get("output_dir"),
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m tunekit.comparison.worker JOB.json", file=sys.stderr)
        return 2
    from tunekit.startup import import_training_libraries

    job = json.loads(Path(args[0]).read_text(encoding="utf-8"))
    import_training_libraries()  # a fresh process per candidate and seed: each pays this start
    record = run_job(job)
    path = Path(job["record_path"])
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(record.model_dump_json(indent=2), encoding="utf-8")
    tmp.replace(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
