"""What every ``fit`` leaves in its run directory besides the model: a loss plot and a model card.

The run directory holds ``tunekit.yaml`` (the config), ``result.json`` (every figure
measured), ``loss.png`` (the training loss curve, with the eval loss when there is one),
``README.md`` (a model card) and ``model/`` (the tuned model or adapter).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tunekit.config import TuneConfig
    from tunekit.results import FitResult

log = logging.getLogger(__name__)

LOSS_PLOT = "loss.png"
CONFUSION_PLOT = "confusion_matrix.png"
MODEL_CARD = "README.md"


@dataclass(frozen=True)
class DataSummary:
    """What the model card says about the data."""

    description: str
    row_format: str
    train_rows: int | None
    """None for a stream: its length is unknown."""
    eval_rows: int


def write_loss_plot(result: FitResult, path: Path, *, title: str = "") -> Path | None:
    """Plot the logged training loss (and the eval loss, when measured) against the step.

    Uses matplotlib's Agg canvas directly: no display, and no change to pyplot's global backend.
    Returns None, with a warning, when nothing was logged or matplotlib is missing.
    """
    points = [(p.step, p.loss) for p in result.loss_history if math.isfinite(p.loss)]
    evals = [(p.step, p.loss) for p in result.eval_history if math.isfinite(p.loss)]
    if result.eval_loss is not None and math.isfinite(result.eval_loss) and (not evals or evals[-1][0] != result.steps):
        evals.append((result.steps, result.eval_loss))
    if not points:
        return None
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        log.warning("tunekit: matplotlib is not installed, so no loss plot was drawn (pip install matplotlib).")
        return None
    curves = figure_curves(result)
    fig = Figure(figsize=(12 if curves else 7, 4), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 2 if curves else 1, 1)
    ax.plot([s for s, _ in points], [v for _, v in points], marker="." if len(points) < 40 else None, label="train loss")
    if evals:
        ax.plot([s for s, _ in evals], [v for _, v in evals], marker="o", label="eval loss")
    ax.set_xlabel("optimizer step")
    # an objective with its own trainer (dpo, grpo...) logs its own loss; the eval loss stays the cross-entropy
    ax.set_ylabel("loss (cross-entropy per token)" if not curves else f"loss ({result.objective}; eval: cross-entropy per token)")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(f"{title}: {result.strategy} ({result.objective}), {result.steps} steps")
    ax.grid(True, alpha=0.3)
    ax.legend()
    if curves:  # the objective's own figures beside the loss: GRPO's reward, DPO's reward margin...
        side = fig.add_subplot(1, 2, 2)
        for name, values in curves.items():
            side.plot([s for s, _ in values], [v for _, v in values], marker="." if len(values) < 40 else None, label=name)
        side.set_xlabel("optimizer step")
        side.set_title(f"{result.objective}: what the trainer logged")
        side.xaxis.set_major_locator(MaxNLocator(integer=True))
        side.grid(True, alpha=0.3)
        side.legend()
    fig.tight_layout()
    fig.savefig(path)
    return path


CURVES = ("reward", "reward_std", "kl", "rewards/margins", "rewards/accuracies", "margin", "accuracy")
"""The logged figures drawn beside the loss, where an objective's trainer logs them (trl's names)."""


def figure_curves(result: FitResult) -> dict[str, list[tuple[int, float]]]:
    """``{name: [(step, value)]}`` of the :data:`CURVES` the run's trainer logged (empty for sft and causal-lm)."""
    curves: dict[str, list[tuple[int, float]]] = {}
    for point in result.loss_history:
        for name in CURVES:
            value = point.figures.get(name)
            if value is not None and math.isfinite(value):
                curves.setdefault(name, []).append((point.step, value))
    return curves


def write_confusion_plot(report: dict[str, Any], path: Path, *, title: str = "") -> Path | None:
    """Draw a confusion matrix (``EvalResult.reports["confusion_matrix"]``: rows are the reference class,
    columns the predicted one; one 2x2 panel per class for multi-label) as a PNG; None without matplotlib."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        log.warning("tunekit: matplotlib is not installed, so no confusion matrix was drawn (pip install matplotlib).")
        return None
    labels = [str(x) for x in report.get("labels", [])]
    panels = list(report["per_class"].items()) if report.get("multi_label") else [("", report.get("matrix", []))]
    if not labels or not panels:
        return None
    fig = Figure(figsize=(min(4.5 * len(panels), 18), 4.5) if report.get("multi_label") else (2 + 0.7 * len(labels), 1.6 + 0.6 * len(labels)), dpi=110)
    FigureCanvasAgg(fig)
    for k, (name, matrix) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), k + 1)
        names = ["no", "yes"] if report.get("multi_label") else labels
        ax.imshow(matrix, cmap="Blues")
        for i, row in enumerate(matrix):
            for j, value in enumerate(row):
                ax.text(j, i, str(value), ha="center", va="center")
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
        ax.set_yticks(range(len(names)), names)
        ax.set_xlabel("predicted")
        ax.set_ylabel("reference")
        if name:
            ax.set_title(name)
    fig.suptitle(f"{title}: confusion matrix" if title else "confusion matrix")
    fig.tight_layout()
    fig.savefig(path)
    return path


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if math.isfinite(value) else str(value)


def model_card(
    result: FitResult, config: TuneConfig, data: DataSummary, *, plot: str | None, learning_rate: float | None = None,
    saved_format: str | None = None,
) -> str:
    """The run's ``README.md``: base model, strategy, data, training settings and metrics."""
    lr = learning_rate if learning_rate is not None else config.training.learning_rate
    rows_per_step = getattr(result, "effective_batch_size", 0) or config.training.batch_size * config.training.gradient_accumulation
    t = config.training
    options = ", ".join(f"{k}={v!r}" for k, v in config.strategy.options.items()) or "defaults"
    metrics: list[tuple[str, float | None]] = [
        ("final train loss (last logged)", result.train_loss),
        ("mean train loss", result.mean_train_loss),
    ]
    if result.eval_loss is not None:
        metrics += [("eval loss", result.eval_loss), ("eval perplexity", result.eval_perplexity)]
    metrics += [(f"eval {k}", v) for k, v in result.eval_metrics.items() if k not in {"loss", "perplexity"}]
    metrics += [(f"train {k} (last logged)", v) for k, v in result.train_figures.items()]
    lines = [
        f"# {config.model}, tuned with {result.strategy}",
        "",
        f"A causal language model fine-tuned with tunekit from **{config.model}**.",
        "",
        "| | |",
        "|---|---|",
        f"| base model | `{config.model}` |",
        f"| strategy | `{result.strategy}` ({options}) |",
        f"| quantizer | `{config.quantizer.name}` |",
        f"| objective | `{result.objective}` |",
        f"| data | {data.description}: {'streamed' if data.train_rows is None else data.train_rows} training rows "
        f"({data.row_format}), {data.eval_rows} eval rows |",
        f"| trainable parameters | {result.trainable_params:,} of {result.total_params:,} ({result.trainable_percent:.2f}%) |",
        f"| steps | {result.steps} x {rows_per_step} rows = {result.steps * rows_per_step:,} rows seen (batch size {t.batch_size} x {t.gradient_accumulation} accumulation, "
        f"learning rate {lr if lr is not None else 'the strategy default'}, {t.scheduler} schedule) |",
        f"| max length / seed | {t.max_length} tokens / {t.seed} |",
        f"| precision | {result.precision} |",
        f"| tokens seen | {result.tokens_seen:,} in {result.wall_time_s:.0f} s ({result.tokens_per_second:,.0f} tokens/s) |",
        "",
        "## Metrics",
        "",
        "| metric | value |",
        "|---|---|",
        *[f"| {name} | {_fmt(value)} |" for name, value in metrics],
        "",
    ]
    if plot:
        lines += [f"![loss curve]({plot})", ""]
    lines += [
        "## Files",
        "",
        "- `tunekit.yaml`: the full configuration (every default filled in)",
        "- `result.json`: every figure measured during the run",
        *([f"- `{plot}`: the loss curve"] if plot else []),
        f"- `model/`: {_saved_as(saved_format, config.strategy.name)}",
        "",
        "## Use it",
        "",
        "```python",
        "from tunekit import Tuner",
        "",
        f'tuner = Tuner.load("{result.output_dir}")',
        'print(tuner.generate("..."))',
        "```",
        "",
    ]
    return "\n".join(lines)


def write_run_report(
    output_dir: Path, result: FitResult, config: TuneConfig, data: DataSummary, *, learning_rate: float | None = None
) -> None:
    """Write the loss plot and the model card into ``output_dir``."""
    try:
        plot = write_loss_plot(result, output_dir / LOSS_PLOT, title=config.model)
    except Exception as exc:  # a plotting failure must not lose a finished run
        log.warning("tunekit: could not draw the loss plot: %s", exc)
        plot = None
    if "confusion_matrix" in result.eval_reports:
        try:
            write_confusion_plot(result.eval_reports["confusion_matrix"], output_dir / CONFUSION_PLOT, title=config.model)
        except Exception as exc:  # a plotting failure must not lose a finished run
            log.warning("tunekit: could not draw the confusion matrix: %s", exc)
    saved_format = None
    try:  # what the strategy wrote into model/ (written before the card)
        saved_format = json.loads((output_dir / "model" / "tunekit.json").read_text(encoding="utf-8")).get("format")
    except (OSError, ValueError, AttributeError):
        pass
    card = model_card(result, config, data, plot=plot.name if plot else None, learning_rate=learning_rate, saved_format=saved_format)
    (output_dir / MODEL_CARD).write_text(card, encoding="utf-8")


def _saved_as(saved_format: str | None, strategy: str) -> str:
    """What ``model/`` holds, from the format its strategy wrote (``tunekit.json``), not from names."""
    if saved_format == "adapter":
        return "the tuned adapter, in peft's format (`adapter_config.json` + `adapter_model.safetensors`)"
    if saved_format == "full":
        return "the tuned model, a transformers model directory (`config.json` + `model.safetensors`)"
    if saved_format:
        return f"the tuned weights, in the {strategy!r} strategy's own format ({saved_format!r})"
    return "the tuned model"


def save_card(config: TuneConfig, strategy: str, saved_format: str, result: FitResult | None = None) -> str:
    """The ``README.md`` of a save (``Tuner.save``, a run's ``model/``), in place of peft's empty template."""
    lines = [
        f"# {config.model}, tuned with {strategy}",
        "",
        f"Saved by tunekit: {_saved_as(saved_format, strategy)}.",
        "",
        "| | |",
        "|---|---|",
        f"| base model | `{config.model}` (as named in the config: a hub id, a tunekit alias or a path) |",
        f"| strategy / quantizer | `{strategy}` / `{config.quantizer.name}` |",
        f"| objective | `{config.objective.name if config.objective else 'chosen from the rows'}` |",
    ]
    if result is not None:
        lines.append(f"| steps / trainable parameters | {result.steps} / {result.trainable_params:,} of {result.total_params:,} |")
        lines += [f"| eval {k} | {_fmt(v)} |" for k, v in ({"loss": result.eval_loss, **result.eval_metrics}).items() if v is not None]
    lines += ["", "## Load it", "", "With tunekit (resolves the base model again, aliases included):", "", "```python",
              "from tunekit import Tuner", "", 'tuner = Tuner.load("path/to/this/folder")', "```", ""]
    if saved_format == "adapter":
        lines += ["With peft, on the base model loaded yourself (`base_model_name_or_path` in `adapter_config.json` "
                  "names the base as the config did):", "", "```python",
                  "from peft import PeftModel", "from transformers import AutoModelForCausalLM", "",
                  "base = AutoModelForCausalLM.from_pretrained(...)  # the base model above",
                  'model = PeftModel.from_pretrained(base, "path/to/this/folder")', "```", ""]
    else:
        lines += ["With transformers:", "", "```python", "from transformers import AutoModelForCausalLM", "",
                  'model = AutoModelForCausalLM.from_pretrained("path/to/this/folder")', "```", ""]
    return "\n".join(lines)
