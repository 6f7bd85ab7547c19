"""Typed results returned by ``Tuner.fit`` and ``Tuner.evaluate``."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class LogPoint(BaseModel):
    """One logged training step."""

    step: int
    loss: float
    learning_rate: float | None = None
    figures: dict[str, float] = Field(default_factory=dict, description=(
        "What the objective's trainer logged beside the loss at this step: reward mean/std and KL for grpo, "
        "chosen/rejected rewards, margins and accuracy for dpo (trl's names, e.g. 'rewards/margins')."))


class EvalPoint(BaseModel):
    """One evaluation during training."""

    step: int
    loss: float


class Generation(BaseModel):
    """One generated answer next to its reference, as a generation metric compared them."""

    prompt: str | list[dict[str, str]] = Field(description="The prompt text, or the chat messages before the answer.")
    reference: str
    prediction: str


class EvalResult(BaseModel):
    """Token-weighted loss and perplexity of a model on a dataset, and the metrics asked for.

    ``metrics`` maps each requested metric's name to its value (by default ``loss`` and
    ``perplexity``); ``generations`` holds the generated answers when a metric needed them.
    """

    loss: float = Field(description="Mean cross-entropy per trained (unmasked) token.")
    perplexity: float = Field(description="exp(loss).")
    tokens: int = Field(description="Trained tokens the loss was averaged over.")
    rows: int = Field(description="Rows evaluated (after tokenization).")
    metrics: dict[str, float] = Field(default_factory=dict, description="Requested metric name -> value.")
    generations: list[Generation] = Field(
        default_factory=list, description="Prompt, reference and generated answer per row (generation metrics only)."
    )
    reports: dict[str, Any] = Field(
        default_factory=dict,
        description="Structured values of the metrics that have them, by metric name (per-class precision/recall, "
        "a confusion matrix).",
    )

    def __getitem__(self, name: str) -> float:
        """``result["exact_match"]``: a metric's value (``loss``/``perplexity`` are always there)."""
        if name in self.metrics:
            return self.metrics[name]
        if name in {"loss", "perplexity"}:
            return float(getattr(self, name))
        raise KeyError(f"{name!r} was not measured; measured: {', '.join(self.metrics) or 'loss, perplexity'}")

    def summary(self) -> str:
        """One line per metric."""
        values = {"loss": self.loss, "perplexity": self.perplexity, **self.metrics}
        return "\n".join(f"{name:<12} {value:.4f}" for name, value in values.items())


class FitResult(BaseModel):
    """What ``Tuner.fit`` measured.

    ``peak_memory_kind`` says what ``peak_memory_bytes`` is: CUDA allocations, or the
    process's resident-set peak on a CPU.
    """

    strategy: str
    objective: str
    trainable_params: int
    total_params: int
    steps: int
    best_step: int | None = Field(
        default=None, description="With training.early_stopping: the step whose checkpoint (the best eval loss) was restored."
    )
    train_loss: float = Field(description="The last logged training loss.")
    mean_train_loss: float = Field(description="Mean training loss over the whole run.")
    eval_loss: float | None = None
    eval_perplexity: float | None = None
    eval_metrics: dict[str, float] = Field(
        default_factory=dict, description="The metrics asked of fit(..., metrics=[...]) on the eval rows, at the end."
    )
    eval_generations: list[Generation] = Field(
        default_factory=list, description="Generated answers on the eval rows, when a metric needed them."
    )
    eval_reports: dict[str, Any] = Field(
        default_factory=dict, description="Structured metric values on the eval rows (a confusion matrix, per-class figures)."
    )
    base_eval_metrics: dict[str, float] = Field(default_factory=dict, description=(
        "With fit(..., baseline=True): the untrained model's eval loss and the same metrics, on the same eval rows, "
        "measured before training."))
    base_eval_generations: list[Generation] = Field(
        default_factory=list, description="With fit(..., baseline=True): the untrained model's answers, when a metric needed them."
    )
    train_figures: dict[str, float] = Field(default_factory=dict, description=(
        "The objective's own training figures (LogPoint.figures) at the last step that logged them: reward "
        "mean/std and KL for grpo, reward margins and accuracy for dpo."))
    loss_history: list[LogPoint] = Field(default_factory=list)
    eval_history: list[EvalPoint] = Field(default_factory=list)
    tokens_seen: int = Field(description="Non-padding tokens fed to the model during training (all processes).")
    world_size: int = Field(default=1, description="Processes that trained together (data parallel).")
    effective_batch_size: int = Field(
        default=0, description="Rows per optimizer step: batch_size x processes x gradient_accumulation."
    )
    wall_time_s: float
    tokens_per_second: float
    peak_memory_bytes: int
    peak_memory_kind: str
    precision: str
    output_dir: str

    @property
    def trainable_percent(self) -> float:
        return 100.0 * self.trainable_params / self.total_params if self.total_params else 0.0

    def summary(self) -> str:
        """A short human-readable summary."""
        lines = [
            f"strategy {self.strategy} ({self.objective}), precision {self.precision}",
            f"trainable params {self.trainable_params:,} / {self.total_params:,} ({self.trainable_percent:.2f}%)",
            f"steps {self.steps}, final train loss {self.train_loss:.4f}"
            + (f", eval loss {self.eval_loss:.4f} (ppl {self.eval_perplexity:.2f})" if self.eval_loss is not None else "")
            + "".join(f", {k} {v:.4f}" for k, v in self.eval_metrics.items() if k not in {"loss", "perplexity"}),
            *([", ".join(f"{k} {v:.4f}" for k, v in self.train_figures.items())] if self.train_figures else []),
            f"{self.tokens_seen:,} tokens in {self.wall_time_s:.1f}s ({self.tokens_per_second:,.0f} tok/s), "
            f"peak memory {self.peak_memory_bytes / 2**20:,.0f} MiB ({self.peak_memory_kind})",
            f"output: {self.output_dir}",
        ]
        return "\n".join(lines + self.before_after())

    def before_after(self, samples: int = 3) -> list[str]:
        """The untrained and the tuned model's eval figures side by side, and a few of their answers
        (with ``fit(..., baseline=True)``; empty otherwise)."""
        if not self.base_eval_metrics:
            return []
        tuned = {"loss": self.eval_loss, **self.eval_metrics}
        names = [n for n in self.base_eval_metrics if n != "perplexity"]
        width = max(len("eval metric"), *(len(n) for n in names))
        lines = ["", f"{'eval metric':<{width}}  {'untrained':>10}  {'tuned':>10}"]
        for name in names:
            after = tuned.get(name)
            lines.append(f"{name:<{width}}  {self.base_eval_metrics[name]:>10.4f}  " + (f"{after:>10.4f}" if after is not None else f"{'-':>10}"))
        pairs = list(zip(self.base_eval_generations, self.eval_generations, strict=False))[:samples]
        if pairs:
            lines += ["", "sample answers (reference | untrained | tuned):"]
            lines += [f"  {_one_line(b.reference)!r} | {_one_line(b.prediction)!r} | {_one_line(t.prediction)!r}" for b, t in pairs]
        return lines


def _one_line(text: str, width: int = 40) -> str:
    text = text.strip().replace("\n", "\\n")
    return text if len(text) <= width else text[: width - 1] + "…"
