"""The result of :func:`tunekit.compare`: one row per candidate, as a table, Markdown, JSON or a plot.

>>> report = CompareReport.from_json("compare-report/report.json")  # doctest: +SKIP
>>> report.best("loss").name                                          # doctest: +SKIP
'lora(rank=32)'
"""

from __future__ import annotations

import math
import os
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field

from tunekit.comparison.columns import HIGHER_IS_BETTER, LOWER_IS_BETTER, METRIC_OF_COLUMN, is_higher_better  # noqa: F401
from tunekit.errors import TunekitError
from tunekit.results import EvalPoint, LogPoint

if TYPE_CHECKING:
    import pandas

REPORT_FILE = "report.json"
MIB = 2**20

# Metric names a user may pass to ``best``/``plot`` that are columns under another name.
ALIASES = {"loss": "eval_loss", "perplexity": "perplexity", "eval_perplexity": "perplexity", "memory": "peak_memory_mib"}
BUILTIN_METRICS = ("loss", "perplexity")
class RunRecord(BaseModel):
    """One candidate trained with one seed, in its own process."""

    seed: int
    ok: bool
    error: str | None = Field(default=None, description="Why the run failed ('ErrorType: message').")
    seed_independent: bool = Field(
        default=False, description="The failure cannot depend on the seed (bad config, missing model or data), "
        "so the candidate's other seeds were not run."
    )
    strategy: str | None = None
    trainable_params: int | None = None
    total_params: int | None = None
    steps: int | None = None
    tokens_seen: int | None = None
    wall_time_s: float | None = Field(default=None, description="Training time (fit's training loop).")
    process_time_s: float | None = Field(default=None, description="The whole process: start, load, train, eval, save.")
    tokens_per_second: float | None = None
    peak_memory_bytes: int | None = None
    peak_memory_kind: str | None = Field(default=None, description="What peak_memory_bytes measured (see FitResult).")
    precision: str | None = None
    train_loss: float | None = Field(default=None, description="The last logged training loss.")
    eval_loss: float | None = None
    eval_perplexity: float | None = None
    metrics: dict[str, float] = Field(default_factory=dict, description="Requested metrics beyond loss/perplexity.")
    metric_errors: dict[str, str] = Field(default_factory=dict, description="Why a requested metric has no value.")
    saved_bytes: int | None = Field(default=None, description="Size on disk of what fit saved (model/ of the run).")
    loss_history: list[LogPoint] = Field(default_factory=list)
    eval_history: list[EvalPoint] = Field(default_factory=list)
    output_dir: str | None = None
    log_path: str | None = None


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else None)


# Per-run numeric columns of the table: name -> how to read it from a successful run.
_RUN_COLUMNS: dict[str, Callable[[RunRecord], float | None]] = {
    "trainable_params": lambda r: r.trainable_params,
    "total_params": lambda r: r.total_params,
    "trainable_percent": lambda r: 100.0 * r.trainable_params / r.total_params
    if r.trainable_params is not None and r.total_params
    else None,
    "peak_memory_mib": lambda r: r.peak_memory_bytes / MIB if r.peak_memory_bytes is not None else None,
    "wall_time_s": lambda r: r.wall_time_s,
    "tokens_per_second": lambda r: r.tokens_per_second,
    "steps": lambda r: r.steps,
    "tokens_seen": lambda r: r.tokens_seen,
    "train_loss": lambda r: r.train_loss,
    "eval_loss": lambda r: r.eval_loss,
    "perplexity": lambda r: r.eval_perplexity,
    "saved_mib": lambda r: r.saved_bytes / MIB if r.saved_bytes is not None else None,
}
# Columns that are the same for every seed, so a standard deviation says nothing.
_NO_STD = {"trainable_params", "total_params", "trainable_percent", "steps"}


class CandidateResult(BaseModel):
    """One candidate: what was asked for, the config it ran with, and one record per seed."""

    name: str
    spec: str | dict[str, Any] = Field(description="The candidate as given to compare().")
    config: dict[str, Any] | None = Field(
        default=None, description="The full validated TuneConfig it ran with (seed and output_dir vary per run)."
    )
    max_steps: int | None = Field(default=None, description="The optimizer steps each of its runs was given.")
    untrained: bool = Field(default=False, description=(
        "The base model as loaded, evaluated without training (compare(..., base=True)): the reference row."))
    error: str | None = Field(default=None, description="Why the candidate could not run at all (e.g. an invalid config).")
    runs: list[RunRecord] = Field(default_factory=list)

    @property
    def ok_runs(self) -> list[RunRecord]:
        return [r for r in self.runs if r.ok]

    @property
    def status(self) -> Literal["ok", "failed", "partial"]:
        ok = len(self.ok_runs)
        if self.error is not None or ok == 0:
            return "failed"
        return "ok" if ok == len(self.runs) else "partial"

    @property
    def error_message(self) -> str | None:
        """The candidate's error, or the first failed run's (with how many seeds failed)."""
        if self.error is not None:
            return self.error
        failed = [r for r in self.runs if not r.ok]
        if not failed:
            return None
        prefix = f"{len(failed)} of {len(self.runs)} runs failed; seed {failed[0].seed}: " if len(self.runs) > 1 else ""
        return prefix + (failed[0].error or "unknown error")

    def values(self, column: str) -> list[float]:
        """The per-seed values of a column (successful runs only)."""
        column = ALIASES.get(column, column)
        out: list[float] = []
        for run in self.ok_runs:
            if column in _RUN_COLUMNS:
                value = _RUN_COLUMNS[column](run)
            else:
                value = run.metrics.get(column)
            if value is not None:
                out.append(float(value))
        return out

    def stat(self, column: str) -> tuple[float | None, float | None]:
        """``(mean, std)`` of a column over the successful seeds (std is None for one seed)."""
        return _mean_std(self.values(column))

    def metric_error(self, name: str) -> str | None:
        for run in self.runs:
            if name in run.metric_errors:
                return run.metric_errors[name]
        return None

    def row(self, metrics: list[str], with_std: bool) -> dict[str, Any]:
        """This candidate as one flat table row (means over seeds, plus ``<column>_std``)."""
        cfg = self.config or {}
        row: dict[str, Any] = {
            "candidate": self.name,
            "status": self.status,
            "error": self.error_message,
            "strategy": _part_label(cfg.get("strategy")),
            "quantizer": _part_label(cfg.get("quantizer")),
        }
        columns = list(_RUN_COLUMNS) + [m for m in metrics if m not in BUILTIN_METRICS and m not in _RUN_COLUMNS]
        for column in columns:
            mean, std = self.stat(column)
            if column in {"trainable_params", "total_params", "steps", "tokens_seen"} and mean is not None:
                mean = int(round(mean))
            row[column] = mean
            if with_std and column not in _NO_STD:
                row[f"{column}_std"] = std
        for m in metrics:
            if m not in BUILTIN_METRICS and (err := self.metric_error(m)) is not None:
                row[f"{m}_error"] = err
        row["runs_ok"] = len(self.ok_runs)
        row["runs"] = len(self.runs)
        row["config"] = self.config
        return row


def _part_label(spec: Any) -> str | None:
    if spec is None:
        return None
    if isinstance(spec, str):
        return spec
    name = spec.get("name")
    return str(name) if name is not None else None


class CompareReport(BaseModel):
    """What :func:`tunekit.compare` measured: one :class:`CandidateResult` per candidate.

    ``table`` holds one flat row per candidate; ``to_pandas``, ``to_markdown``, ``to_json``
    and ``plot`` present it; ``best(metric)`` picks a winner; ``from_json`` reads it back.
    """

    tunekit_version: str
    created: str = Field(description="When the comparison started (local time, ISO 8601).")
    model: str
    budget: dict[str, float | int] = Field(default_factory=dict, description="The shared budget, as given.")
    max_steps: int | None = Field(default=None, description="The budget in optimizer steps (a token budget is converted).")
    metrics: list[str] = Field(default_factory=lambda: list(BUILTIN_METRICS))
    seeds: list[int]
    shared: dict[str, Any] = Field(default_factory=dict, description="The TuneConfig fields shared by every candidate.")
    train_data: str = Field(description="The training data file every candidate read.")
    eval_data: str | None = Field(default=None, description="The eval data file every candidate was evaluated on.")
    train_rows: int | None = None
    eval_rows: int | None = None
    output_dir: str
    candidates: list[CandidateResult] = Field(default_factory=list)

    # -- looking things up -------------------------------------------------------------------
    @property
    def table(self) -> list[dict[str, Any]]:
        """One flat row per candidate: means over seeds, ``<column>_std`` with several seeds, the config."""
        with_std = len(self.seeds) > 1
        return [c.row(self.metrics, with_std) for c in self.candidates]

    @property
    def failed(self) -> list[CandidateResult]:
        """The candidates with at least one failed run (or an invalid config)."""
        return [c for c in self.candidates if c.status != "ok"]

    def candidate(self, name: str) -> CandidateResult:
        """The candidate called ``name``."""
        for c in self.candidates:
            if c.name == name:
                return c
        raise KeyError(f"no candidate {name!r}; the candidates are {[c.name for c in self.candidates]}")

    def column_for(self, metric: str) -> str:
        """The table column a metric name refers to (``loss`` is the eval loss)."""
        column = ALIASES.get(metric, metric)
        known = set(_RUN_COLUMNS) | {m for m in self.metrics if m not in BUILTIN_METRICS}
        if column not in known:
            raise TunekitError(
                f"no column {metric!r} in this report; use one of: {', '.join(sorted(known | set(ALIASES)))}."
            )
        return column

    def best(self, metric: str = "loss", *, higher_is_better: bool | None = None) -> CandidateResult:
        """The candidate with the best mean ``metric`` over its successful runs (the untrained
        ``base`` row is a reference, never picked).

        Memory, time, size and parameter counts are better lower, ``tokens_per_second``
        higher; a metric (``loss``, ``exact_match``, a plugin's) goes the way its registered
        part's ``higher_is_better`` says, unless ``higher_is_better`` is given here.
        """
        column = self.column_for(metric)
        if higher_is_better is None:
            higher_is_better = is_higher_better(column)
        if higher_is_better is None:
            raise TunekitError(
                f"metric {metric!r} is not registered here (is the plugin that provides it installed?), so "
                "which way is better is unknown; pass best(..., higher_is_better=True or False)."
            )
        scored = [
            (mean, c) for c in self.candidates
            if not c.untrained and (mean := c.stat(column)[0]) is not None and math.isfinite(mean)
        ]
        if not scored:
            raise TunekitError(f"no candidate has a value for {metric!r}; see the errors in the report.")
        pick = max if higher_is_better else min
        return pick(scored, key=lambda pair: pair[0])[1]

    # -- presenting it ---------------------------------------------------------------------------
    def to_pandas(self) -> pandas.DataFrame:
        """The table as a DataFrame, one row per candidate, indexed by candidate name."""
        import pandas as pd

        return pd.DataFrame(self.table).set_index("candidate")

    def to_markdown(self) -> str:
        """The table as GitHub Markdown (``mean ± std`` with several seeds), then the failures."""
        extra = [m for m in self.metrics if m not in BUILTIN_METRICS]
        header = ["candidate", "trainable params", "peak mem (MiB)", "train time (s)", "tokens/s",
                  "train loss", "eval loss", "perplexity", *extra, "saved (MiB)", "status"]
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 2) + [":---"]) + "|"]
        for c in self.candidates:
            def cell(column: str, fmt: str, c: CandidateResult = c) -> str:
                mean, std = c.stat(column)
                if mean is None:
                    return "error" if column in extra and c.metric_error(column) and c.ok_runs else "–"
                text = format(mean, fmt)
                return text + (f" ± {format(std, fmt)}" if std is not None and column not in _NO_STD else "")

            params = "–"
            if (n := c.stat("trainable_params")[0]) is not None:
                params = f"{int(n):,} ({c.stat('trainable_percent')[0]:.2f}%)"
            cells = [c.name, params, cell("peak_memory_mib", ",.0f"), cell("wall_time_s", ".2f"),
                     cell("tokens_per_second", ",.0f"), cell("train_loss", ".4f"), cell("eval_loss", ".4f"),
                     cell("perplexity", ",.2f"), *(cell(m, ".4g") for m in extra), cell("saved_mib", ",.2f"), c.status]
            lines.append("| " + " | ".join(x.replace("|", "\\|") for x in cells) + " |")
        notes = []
        for c in self.candidates:
            if (message := c.error_message) is not None:
                notes.append(f"- **{c.name}** {c.status}: {one_line(message)}")
            for m in extra:
                if (err := c.metric_error(m)) is not None and c.ok_runs:
                    notes.append(f"- **{c.name}** `{m}`: {one_line(err)}")
        return "\n".join(lines + ([""] + notes if notes else [])) + "\n"

    def describe(self) -> str:
        """What was compared, in one Markdown paragraph: model, budget, seeds, data."""
        budget = ", ".join(f"{k}={v}" for k, v in self.budget.items()) or "the shared training options"
        if "max_steps" not in self.budget and self.max_steps is not None:
            budget += f" (= {self.max_steps} steps)"
        rows = f"same {self.train_rows} training rows" if self.train_rows is not None else "same training rows"
        if self.eval_data is None:
            evals = ", no eval set"
        else:
            evals = f", evaluated on the same {self.eval_rows} rows" if self.eval_rows is not None else ", evaluated on the same rows"
        seeds = ", ".join(map(str, self.seeds))
        return (
            f"Model `{self.model}`, budget {budget}, seed{'s' if len(self.seeds) > 1 else ''} {seeds}; "
            f"every candidate trained on the {rows} in the same order{evals}, each in its own process."
        )

    def __str__(self) -> str:
        return self.to_markdown()

    def to_json(self, path: str | os.PathLike[str] | None = None) -> str:
        """The whole report (every run, every loss curve) as JSON; written to ``path`` when given."""
        text = self.model_dump_json(indent=2)
        if path is not None:
            Path(path).write_text(text + "\n", encoding="utf-8")
        return text

    @classmethod
    def from_json(cls, source: str | os.PathLike[str]) -> CompareReport:
        """Read a report written by :meth:`to_json`: a file, a report directory, or the JSON text."""
        text = str(source) if isinstance(source, str) and source.lstrip().startswith("{") else None
        if text is None:
            path = Path(source)
            if path.is_dir():
                path = path / REPORT_FILE
            if not path.is_file():
                raise TunekitError(f"no comparison report at {str(path)!r}; give the report.json that compare wrote.")
            text = path.read_text(encoding="utf-8")
        return cls.model_validate_json(text)

    def plot(self, path: str | os.PathLike[str], *, metric: str | None = None) -> Path:
        """Draw the loss curves and bar charts of ``metric`` (default: the first requested), trainable
        parameters and peak memory into one PNG at ``path``; returns the path."""
        from tunekit.comparison.plot import plot_report

        return plot_report(self, Path(path), metric=metric)


def one_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return " ".join(lines)


def load_report(path: str | os.PathLike[str]) -> CompareReport:
    """Read a comparison report back from its ``report.json`` (or the directory holding it)."""
    return CompareReport.from_json(path)
