"""One PNG a person can read at a glance: every candidate's loss curve, and bars for the metric,
the trainable parameters and the peak memory. Drawn with matplotlib's Agg canvas directly, so
it works without a display and never changes the caller's matplotlib backend.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunekit.comparison.columns import is_higher_better
from tunekit.errors import MissingDependencyError

if TYPE_CHECKING:
    # The plot reads a report's fields; it is drawn for ``CompareReport.plot``, which imports this
    # module, so the report's classes are named here only as what they are: any report.
    CandidateResult = Any
    CompareReport = Any

LABELS = {
    "eval_loss": "eval loss",
    "perplexity": "eval perplexity",
    "train_loss": "final training loss",
    "peak_memory_mib": "peak memory (MiB)",
    "wall_time_s": "training time (s)",
    "tokens_per_second": "tokens / second",
    "saved_mib": "saved size (MiB)",
    "trainable_params": "trainable parameters",
}


def default_metric(report: CompareReport) -> str:
    """The first requested metric, falling back to the final training loss without an eval set."""
    for metric in report.metrics:
        column = report.column_for(metric)
        if any(c.stat(column)[0] is not None for c in report.candidates):
            return column
    return "train_loss"


def _mean_curve(candidate: CandidateResult) -> tuple[list[int], list[float], list[float], list[float]]:
    """Steps logged by every seed, with the mean, min and max loss over seeds at each."""
    by_step: dict[int, list[float]] = {}
    runs = candidate.ok_runs
    for run in runs:
        for point in run.loss_history:
            by_step.setdefault(point.step, []).append(point.loss)
    steps = sorted(s for s, values in by_step.items() if len(values) == len(runs))
    return (
        steps,
        [statistics.fmean(by_step[s]) for s in steps],
        [min(by_step[s]) for s in steps],
        [max(by_step[s]) for s in steps],
    )


def _bars(
    ax: Any, report: CompareReport, column: str, ylabel: str, title: str, fmt: str, *, log: bool = False, zoom: bool = False
) -> None:
    names = [c.name for c in report.candidates]
    x = list(range(len(names)))
    means, stds = [], []
    for c in report.candidates:
        mean, std = c.stat(column)
        means.append(mean)
        stds.append(std or 0.0)
    heights = [m if m is not None else 0.0 for m in means]
    colors = [f"C{i % 10}" for i in x]
    ax.bar(x, heights, yerr=stds if any(stds) else None, color=colors, capsize=4, edgecolor="black", linewidth=0.6)
    positive = [h for h in heights if h > 0]
    log = log and bool(positive) and max(positive) / min(positive) > 20  # a log axis only where linear hides bars
    if log:
        ax.set_yscale("log")
        ylabel += " (log scale)"
    top = max((h for h in heights if h > 0), default=1.0)
    values = [m for m in means if m is not None]
    low = 0.0
    if zoom and values and min(values) > 0 and max(values) - min(values) < 0.25 * max(values):
        # Candidates often differ in the second decimal of a loss: from zero the bars would look equal.
        spread = max(values) - min(values) or 0.02 * max(values)
        low = max(0.0, min(values) - 1.5 * spread - max(stds))
        ax.set_ylim(bottom=low, top=max(values) + max(stds) + 1.0 * spread)
        ylabel += f" (axis from {low:.3g})"
    for xi, mean, c in zip(x, means, report.candidates, strict=True):
        if mean is None:
            text = "failed" if c.status == "failed" else "n/a"
            ax.text(xi, low + (top - low) * 0.05 if not log else top, text, ha="center", va="bottom", color="firebrick", rotation=90)
            continue
        label = format(mean, fmt)
        if column == "trainable_params" and (pct := c.stat("trainable_percent")[0]) is not None:
            label += f"\n({pct:.3g}%)"
        ax.annotate(label, (xi, mean), ha="center", va="bottom", fontsize=8, xytext=(0, 2), textcoords="offset points")
    ax.set_xticks(x, names, rotation=25, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.margins(y=0.18)
    ax.grid(axis="y", alpha=0.3)


def plot_report(report: CompareReport, path: Path, *, metric: str | None = None) -> Path:
    """Draw ``report`` into a PNG at ``path`` (see :meth:`CompareReport.plot`)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.lines import Line2D
        from matplotlib.ticker import MaxNLocator
    except ImportError as exc:
        raise MissingDependencyError(f"report.plot() needs matplotlib: pip install matplotlib ({exc})") from exc

    column = report.column_for(metric) if metric is not None else default_metric(report)
    fig = Figure(figsize=(14, 9), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(2, 3, height_ratios=[1.1, 1])

    ax = fig.add_subplot(grid[0, :])
    handles: list[Any] = []
    for i, cand in enumerate(report.candidates):
        color = f"C{i % 10}"
        steps, mean, low, high = _mean_curve(cand)
        if not steps:
            handles.append(Line2D([], [], color=color, linestyle="none", marker="x", label=f"{cand.name} (failed)"))
            continue
        (line,) = ax.plot(steps, mean, color=color, marker="o" if len(steps) <= 30 else None, markersize=3,
                          linewidth=1.6, label=cand.name)
        if len(cand.ok_runs) > 1:
            ax.fill_between(steps, low, high, color=color, alpha=0.15, linewidth=0)
        handles.append(line)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss")
    seeds = len(report.seeds)
    ax.set_title("Training loss" + (f" (mean of {seeds} seeds; band: min–max)" if seeds > 1 else ""), fontsize=11)
    ax.grid(alpha=0.3)
    if handles:
        ax.legend(handles=handles, loc="upper right", fontsize=9, title="candidate")

    name = next((m for m in report.metrics if report.column_for(m) == column), column)
    higher = is_higher_better(column)
    metric_label = LABELS.get(column, name)
    direction = "" if higher is None else f" ({'higher' if higher else 'lower'} is better)"
    _bars(fig.add_subplot(grid[1, 0]), report, column, metric_label, f"{metric_label}{direction}", ".4g",
          zoom=True)
    _bars(fig.add_subplot(grid[1, 1]), report, "trainable_params", "trainable parameters",
          "Trainable parameters", ",.0f", log=True)
    kinds = {r.peak_memory_kind for c in report.candidates for r in c.ok_runs if r.peak_memory_kind}
    _bars(fig.add_subplot(grid[1, 2]), report, "peak_memory_mib", "peak memory (MiB)",
          "Peak memory during training" + (f"\n[{', '.join(sorted(kinds))}]" if kinds else ""), ",.0f")

    budget = ", ".join(f"{k} {v}" for k, v in report.budget.items()) or "shared training options"
    model = Path(report.model).name or report.model
    fig.suptitle(f"tunekit compare: {model} — budget {budget}, seed{'s' if seeds > 1 else ''} "
                 f"{', '.join(map(str, report.seeds))}", fontsize=13, fontweight="bold")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path
