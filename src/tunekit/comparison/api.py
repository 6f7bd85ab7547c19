"""``tunekit.compare``: fit several candidates fairly, side by side, and report what each achieved."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from tunekit.comparison.budget import parse_budget, steps_for_tokens, tokens_per_row
from tunekit.comparison.candidates import Candidate, controlled_problems, merge_config, parse_candidates
from tunekit.comparison.report import (
    BUILTIN_METRICS,
    REPORT_FILE,
    CandidateResult,
    CompareReport,
    RunRecord,
    one_line,
)
from tunekit.comparison.runner import run_in_subprocess
from tunekit.comparison.staging import StagedData, stage_data
from tunekit.errors import ConfigError, Problem
from tunekit.quiet import quiet_libraries
from tunekit.run_directory import TEMP_PREFIX, Claim

MARKDOWN_FILE = "report.md"
PLOT_FILE = "compare.png"


def compare(
    model: str | None = None,
    candidates: Sequence[str | Mapping[str, Any]] = ("full", "head", "lora"),
    train: Any = None,
    eval: Any = None,
    *,
    budget: int | Mapping[str, int | float] | None = None,
    metrics: Sequence[str | Mapping[str, Any]] = BUILTIN_METRICS,
    seeds: int | Sequence[int] | None = None,
    output_dir: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    timeout_s: float | None = None,
    keep_models: bool = True,
    plugins: Sequence[str] = (),
    progress: bool | Callable[[str], None] = True,
    base: bool = False,
    **shared: Any,
) -> CompareReport:
    """Fine-tune each candidate on the same data with the same budget and seeds, and compare them.

    ``candidates`` are strategy names (``"lora"``) or mappings of :class:`~tunekit.TuneConfig`
    fields that override the shared ones (``{"strategy": {"name": "lora", "rank": 32}}``,
    ``{"strategy": "lora", "quantizer": "bnb-4bit"}``; a ``name`` key labels the row).
    ``shared`` holds the TuneConfig fields every candidate uses (``training=...``, ``objective=...``).

    Fair by construction: every candidate reads the same rows in the same order (written
    once to the report directory), gets the same ``budget`` (``{"max_steps": 50}``,
    ``{"tokens": 100_000}`` or ``{"epochs": 1}``), the same ``seeds`` and the same eval set,
    and runs in a fresh process of its own (so no state leaks and peak memory is its own).
    A candidate that fails (invalid config, out of memory, an exception) becomes a row with
    its error; the others still run. ``metrics`` beyond ``loss``/``perplexity`` (names, or
    mappings with a ``name`` and options) are asked of ``Tuner.evaluate(eval, metrics=[...])``
    where this tunekit's ``evaluate`` takes them; otherwise each is reported as an error.

    With ``base=True`` the first row, ``base``, is the model as loaded, untrained, evaluated on
    the same eval rows with the same metrics (once: evaluation does not depend on the seed); it is
    the reference the tuned rows improve on, and :meth:`CompareReport.best` never picks it.

    The report directory (``output_dir``, default ``runs/compare-<time>``) gets the data,
    one run directory per candidate and seed (with its log), ``report.json`` and ``report.md``.

    >>> report = compare("gpt2", ["head", "lora"], rows, budget={"max_steps": 20})  # doctest: +SKIP
    >>> print(report.to_markdown()); report.best("loss").name                         # doctest: +SKIP
    """
    say = _progress_printer(progress)
    if model is None:
        raise ConfigError([Problem("model", "is required: the base model every candidate starts from")])
    shared_fields = {"model": model, **{k: _plain(v) for k, v in shared.items()}}
    budget_spec = parse_budget(budget)
    metric_specs = _parse_metrics(metrics)
    metric_names = [m if isinstance(m, str) else str(m["name"]) for m in metric_specs]
    seed_list = _parse_seeds(seeds, shared_fields)
    parsed = parse_candidates(candidates)
    if base:
        parsed.insert(0, _base_candidate(parsed))
    plugin_refs = _parse_plugins(plugins)
    problems = _shared_problems(shared_fields, budget_spec, seeds)
    if problems:
        raise ConfigError(problems)
    if timeout_s is not None and timeout_s <= 0:
        raise ConfigError([Problem("timeout_s", f"must be > 0 (got {timeout_s!r})")])
    if not isinstance(base, bool):
        raise ConfigError([Problem("base", f"must be true or false (got {base!r})")])

    from tunekit.config import TuneConfig

    _register_in_parent(plugin_refs)
    shared_config = TuneConfig(**shared_fields)  # a mistake every candidate shares fails now
    run = _claim_directory(output_dir, overwrite)
    out = run.path
    with run:  # any failure: a new report directory is removed, a replaced one left as it was
        # The data is read and checked before anything of a previous report is removed.
        incoming = run.work / f"{TEMP_PREFIX}new-data"
        staged = stage_data(
            train if train is not None else shared_config.data.train,
            eval if eval is not None else shared_config.data.eval,
            shared_config.data,
            seed=seed_list[0],
            directory=incoming,
        )
        run.clear(keep=(incoming.name,))
        if incoming.is_dir():
            incoming.rename(out / "data")
            staged = _moved(staged, incoming, out / "data")
            run.record("data")
        run.keep = True  # from here on a partial report (report.json after each run) is worth keeping

        report = CompareReport(
            tunekit_version=_version(),
            created=time.strftime("%Y-%m-%dT%H:%M:%S"),
            model=model,
            budget=budget_spec,
            max_steps=budget_spec.get("max_steps"),  # type: ignore[arg-type]
            metrics=metric_names,
            seeds=seed_list,
            shared=shared_fields,
            train_data=staged.train,
            eval_data=staged.eval,
            train_rows=staged.train_rows,
            eval_rows=staged.eval_rows,
            output_dir=str(out),
        )
        planned = [_plan(c, i, shared_fields, budget_spec, staged, out, say) for i, c in enumerate(parsed)]
        steps = {c.max_steps for c, _ in planned if c.error is None}
        if "tokens" in budget_spec and len(steps) == 1:
            report.max_steps = steps.pop()
        report.candidates = [result for result, _ in planned]
        total = sum(len(_seeds_of(result, seed_list)) for result, _ in planned if result.error is None)
        say(f"compare: {len(parsed)} candidates x {len(seed_list)} seed(s) = {total} runs; report in {out}")
        for result, _ in planned:
            if result.error is not None:
                say(f"compare: {result.name}: not run: {one_line(result.error)}")
        done = 0
        for result, config in planned:
            if result.error is not None:
                continue
            for seed in _seeds_of(result, seed_list):
                done += 1
                label = f"[{done}/{total}] {result.name} (seed {seed})"
                first_failure = next((r for r in result.runs if r.seed_independent), None)
                if first_failure is not None:
                    result.runs.append(RunRecord(
                        seed=seed, ok=False, seed_independent=True,
                        error=f"not run: seed {first_failure.seed} failed in a way no seed changes: {first_failure.error}",
                    ))
                    say(f"{label}: skipped (seed {first_failure.seed} failed in a way no seed changes)")
                    continue
                run_dir = out / "runs" / config["_slug"] / f"seed-{seed}"
                job = _job(config, seed, run_dir / "fit", staged, metric_specs, plugin_refs, keep_models, result.max_steps)
                job["untrained"] = result.untrained
                say(f"{label}: starting")
                record = run_in_subprocess(job, run_dir, label=label, timeout_s=timeout_s, progress=say)
                result.runs.append(record)
                if record.ok and result.untrained:
                    say(f"{label}: evaluated in {record.process_time_s:.1f}s (untrained)")
                elif record.ok:
                    loss = f"eval loss {record.eval_loss:.4f}" if record.eval_loss is not None else f"train loss {record.train_loss:.4f}"
                    say(f"{label}: done in {record.process_time_s:.1f}s, {loss}")
                else:
                    say(f"{label}: FAILED: {one_line(record.error or 'unknown error')}")
                report.to_json(out / REPORT_FILE)  # a report so far survives an interrupted comparison
        write_report_files(report, out)
        run.record(REPORT_FILE, MARKDOWN_FILE, "runs")
        run.publish()
        failed = report.failed
        say(f"compare: done; {len(report.candidates) - len(failed)} of {len(report.candidates)} candidates ok; report in {out}")
        return report


def write_report_files(report: CompareReport, directory: Path) -> None:
    """Write ``report.json`` and ``report.md`` into the report directory."""
    report.to_json(directory / REPORT_FILE)
    text = f"# tunekit compare\n\n{report.describe()}\n\n{report.to_markdown()}"
    (directory / MARKDOWN_FILE).write_text(text, encoding="utf-8")


# -- planning ---------------------------------------------------------------------------------------
def _base_candidate(parsed: list[Candidate]) -> Candidate:
    """The untrained ``base`` row: the shared model loaded plainly (``full`` wraps nothing), never trained."""
    if any(c.name == "base" for c in parsed):
        raise ConfigError([Problem("candidates", (
            "a candidate is named 'base', which is the name of the untrained row base=True adds; rename the candidate "
            "(a 'name' key) or drop base=True"))])
    return Candidate(name="base", spec="base (untrained)", overrides={"strategy": "full"}, untrained=True)


def _seeds_of(result: CandidateResult, seeds: list[int]) -> list[int]:
    """The seeds a candidate runs with: all of them, or the first only for the untrained row."""
    return seeds[:1] if result.untrained else seeds


def _plan(
    cand: Candidate, index: int, shared: dict[str, Any], budget: dict[str, int | float], staged: StagedData,
    out: Path, say: Callable[[str], None],
) -> tuple[CandidateResult, dict[str, Any]]:
    """Validate one candidate and fix its config and step budget; an invalid one gets its error."""
    from tunekit.config import TuneConfig

    result = CandidateResult(name=cand.name, spec=cand.spec, untrained=cand.untrained)
    problems = controlled_problems(cand.overrides, where=f"candidates[{index}]")
    merged = merge_config(shared, cand.overrides)
    training = dict(merged.get("training") or {})
    data = dict(merged.get("data") or {})
    for key in ("train", "eval", "eval_fraction"):
        data.pop(key, None)  # the staged files replace them
    if staged.written:
        data.pop("adapter", None)  # tunekit wrote plain JSONL; the user's adapter already read the source
    kind, value = next(iter(budget.items()), (None, None))
    if kind == "max_steps":
        training["max_steps"] = value
    elif kind == "epochs":
        training.pop("max_steps", None)
        training["epochs"] = value
    training["progress_bar"] = False
    training["seed"] = 0  # placeholder: each run gets its own
    merged.update(training=training, data=data, output_dir=str(out / "runs"))
    if problems:
        result.error = f"ConfigError: {ConfigError(problems)}"
        return result, merged
    try:
        config = TuneConfig(**merged)
        if kind == "tokens":
            say(f"compare: {cand.name}: converting the token budget to steps")
            with quiet_libraries():
                per_row = tokens_per_row(config, staged.train)
            t = config.training
            training["max_steps"] = steps_for_tokens(
                int(value), mean_tokens_per_row=per_row, batch_size=t.batch_size, gradient_accumulation=t.gradient_accumulation  # type: ignore[arg-type]
            )
        if "logging_steps" not in training and training.get("max_steps"):
            training["logging_steps"] = max(1, int(training["max_steps"]) // 50)  # a loss curve of ~50 points
        config = TuneConfig(**{**merged, "training": training})
    except Exception as exc:  # one candidate's problem must not stop the others
        result.error = f"{type(exc).__name__}: {exc}"
        return result, merged
    dumped = config.model_dump(mode="json")
    result.max_steps = config.training.max_steps
    result.config = {k: v for k, v in dumped.items() if k != "output_dir"}
    result.config["training"] = {k: v for k, v in dumped["training"].items() if k != "seed"}
    dumped["_slug"] = f"{index + 1:02d}-{cand.slug}"
    return result, dumped


def _job(
    config: dict[str, Any], seed: int, run_dir: Path, staged: StagedData, metrics: list[str | dict[str, Any]],
    plugins: list[str], keep_model: bool, max_steps: int | None,
) -> dict[str, Any]:
    cfg = {k: v for k, v in config.items() if k != "_slug"}
    cfg["training"] = {**cfg["training"], "seed": seed}
    cfg["output_dir"] = str(run_dir)
    return {
        "config": cfg,
        "seed": seed,
        "train": staged.train,
        "eval": staged.eval,
        "metrics": metrics,
        "plugins": plugins,
        "keep_model": keep_model,
        "max_steps": max_steps,
    }


# -- argument checks ----------------------------------------------------------------------------------
def _parse_metrics(metrics: Sequence[str | Mapping[str, Any]]) -> list[str | dict[str, Any]]:
    """Metric names, or mappings with a ``name`` and the metric's options; each name once."""
    if isinstance(metrics, (str, Mapping)):
        metrics = [metrics]
    specs: dict[str, str | dict[str, Any]] = {}
    for i, spec in enumerate(metrics):
        if isinstance(spec, str) and spec:
            specs.setdefault(spec, spec)
        elif isinstance(spec, Mapping) and isinstance(spec.get("name"), str) and spec["name"]:
            if spec["name"] in specs:
                raise ConfigError([Problem(f"metrics[{i}]", f"names {spec['name']!r} a second time")])
            specs[spec["name"]] = json.loads(json.dumps(dict(spec), default=str))
        else:
            raise ConfigError([Problem(
                f"metrics[{i}]", f"must be a metric name such as 'exact_match' or a mapping with a 'name', got {spec!r}"
            )])
    return list(specs.values())


def _parse_seeds(seeds: int | Sequence[int] | None, shared: Mapping[str, Any]) -> list[int]:
    if seeds is None:
        training = shared.get("training") or {}
        from tunekit.config import TrainingOptions

        default = TrainingOptions.model_fields["seed"].default
        return [int(training.get("seed", default)) if isinstance(training, Mapping) else default]
    if isinstance(seeds, (int, str)) or not isinstance(seeds, Sequence):
        seeds = [seeds]  # type: ignore[list-item]  # a bool or str is refused just below
    values = list(seeds)
    from tunekit.config import MAX_SEED

    if not values or any(isinstance(s, bool) or not isinstance(s, int) or not 0 <= s <= MAX_SEED for s in values):
        raise ConfigError([Problem("seeds", f"must be a non-empty list of integers from 0 to {MAX_SEED}, got {seeds!r}")])
    if len(set(values)) != len(values):
        raise ConfigError([Problem("seeds", f"lists a seed twice: {values}")])
    return values


def _parse_plugins(plugins: Sequence[str]) -> list[str]:
    if isinstance(plugins, str):
        plugins = [plugins]
    refs = list(plugins)
    if any(not isinstance(r, str) or not r for r in refs):
        raise ConfigError([Problem("plugins", "must be import paths such as 'my_package.plugin' or 'my_package.plugin:Plugin'")])
    return refs


def _shared_problems(shared: Mapping[str, Any], budget: Mapping[str, Any], seeds: Any) -> list[Problem]:
    problems = []
    training = shared.get("training")
    if isinstance(training, Mapping):
        if budget and ({"max_steps", "epochs"} & set(training)):
            problems.append(Problem("training", "sets max_steps/epochs as well as budget=; give the budget once, with budget="))
        if seeds is not None and "seed" in training:
            problems.append(Problem("training.seed", "is given as well as seeds=; give the seeds once, with seeds="))
    if "output_dir" in shared and shared["output_dir"] is not None:
        problems.append(Problem("output_dir", "is the report directory here; each run gets its own directory inside it"))
    return problems


def _register_in_parent(refs: list[str]) -> None:
    """Make plugin parts known here too, so candidates naming them validate before they run."""
    if not refs:
        return
    from tunekit.comparison.worker import import_object
    from tunekit.plugins import get_plugins, register_plugin

    manager = get_plugins().manager
    for ref in refs:
        obj = import_object(ref)
        if not manager.is_registered(obj):
            register_plugin(obj, name=ref)


def _claim_directory(output_dir: str | os.PathLike[str] | None, overwrite: bool) -> Claim:
    """The report directory: new, or (``overwrite``) a tunekit compare report holding only tunekit's files."""
    from tunekit.run_directory import claim

    out = Path(output_dir) if output_dir is not None else Path("runs") / f"compare-{time.strftime('%Y%m%d-%H%M%S')}"
    return claim(Path(os.path.abspath(out)), "compare", overwrite=overwrite, in_place=True, what="report directory")


def _moved(staged: StagedData, old: Path, new: Path) -> StagedData:
    """``staged`` with its files' paths under ``new`` instead of ``old``."""
    def move(path: str | None) -> str | None:
        return str(new / Path(path).relative_to(old.resolve())) if path and staged.written else path

    return dataclasses.replace(staged, train=move(staged.train) or staged.train, eval=move(staged.eval))


def _progress_printer(progress: bool | Callable[[str], None]) -> Callable[[str], None]:
    if callable(progress):
        return progress
    if progress:
        return lambda line: print(line, file=sys.stderr, flush=True)
    return lambda line: None


def _plain(value: Any) -> Any:
    """Shared fields as plain JSON-able data (a pydantic model becomes its mapping)."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return json.loads(json.dumps(value, default=str)) if isinstance(value, (Mapping, list, tuple)) else value


def _version() -> str:
    from tunekit.version import __version__

    return __version__
