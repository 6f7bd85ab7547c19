"""One fit, step by step, inside a claimed run directory: where to start, train, record the run.

``Tuner.fit`` claims the directory (:mod:`tunekit.run_directory`), prepares the data
(:mod:`tunekit.data.preparation`) and hands the rest to the three steps here:

1. :func:`start_point`: the run's fingerprint, and where a resume starts (or that the run
   already finished what is asked).
2. :func:`train_run`: parameters counted, lifecycle hooks, the Trainer, the final evaluation,
   and the :class:`~tunekit.results.FitResult`.
3. :func:`record_run`: the model (gathered first under FSDP / ZeRO-3), ``result.json``, the
   model card and the loss plot, each recorded as tunekit's in the run's marker.

The facade passes plain objects and callables (how to evaluate, how to save), so this module
never imports it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunekit.errors import TunekitError
from tunekit.results import EvalResult, FitResult

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

    from tunekit.config import TuneConfig
    from tunekit.data.preparation import PreparedData
    from tunekit.run_directory import Claim
    from tunekit.training.precision import Precision

log = logging.getLogger(__name__)

RUN_CONFIG = "tunekit.yaml"
"""The run's configuration, every default filled in (also what a save holds)."""
RUN_RESULT = "result.json"
"""Every figure the run measured (a :class:`~tunekit.results.FitResult`)."""


@dataclass
class FitPlan:
    """What one fit trains: the config, the prepared data, and the parts as the facade built them."""

    config: TuneConfig
    data: PreparedData
    model: torch.nn.Module
    tokenizer: PreTrainedTokenizerBase
    strategy_name: str
    learning_rate: float
    precision: Precision
    collator: Any
    loss: Any = None
    """The objective's own training loss (``Objective.loss``), or None for tunekit's cross-entropy."""
    score_rows: Any = None
    """The objective's own scoring of eval rows (``Objective.evaluate_rows``), or None for tunekit's eval loss."""
    trainer: Any = None
    """The objective's own trainer (``Objective.trainer``, a :class:`tunekit.parts.TrainerPlan`), or None for tunekit's."""


@dataclass
class StartPoint:
    """Where training starts: a checkpoint to resume (or None), and the run's fingerprint."""

    fingerprint: dict[str, str]
    checkpoint: Path | None = None
    finished: bool = False
    """The run in the directory already finished this config, data and budget: nothing to train."""


@dataclass
class FitHooks:
    """The lifecycle hooks a fit calls (the facade binds them to its plugins)."""

    on_fit_start: Callable[[], None]
    on_log: Callable[[int, Mapping[str, float]], None]
    on_evaluate: Callable[[int, Mapping[str, float]], None]


def start_point(run: Claim, plan: FitPlan, *, resume: bool, accept_changes: bool, accept_flag: str) -> StartPoint:
    """The fingerprint of this run, and where it starts (see :mod:`tunekit.training.resume`)."""
    from tunekit.training.fingerprint import run_fingerprint
    from tunekit.training.resume import finished_run, resume_point

    config = plan.config.model_dump(mode="json")
    fingerprint = run_fingerprint(config, plan.data.train, plan.data.eval)
    if not resume:
        return StartPoint(fingerprint)
    if finished_run(run.previous, fingerprint, config):
        return StartPoint(fingerprint, finished=True)
    checkpoint = resume_point(run.work, fingerprint, accept_changes=accept_changes, accept_flag=accept_flag, clean=run.main)
    return StartPoint(fingerprint, checkpoint)


def train_run(
    run: Claim, plan: FitPlan, start: StartPoint, *, hooks: FitHooks, evaluate: Callable[[], EvalResult | None]
) -> FitResult:
    """Train in ``run.work`` from ``start`` and measure the run; ``evaluate`` is the final evaluation."""
    from tunekit.models.inspect import count_parameters
    from tunekit.training.loop import train
    from tunekit.training.trainer import TrainingInterrupted

    if run.main:
        with run.writing(RUN_CONFIG) as file:
            plan.config.to_file(file)
    trainable, total = count_parameters(plan.model)
    if trainable == 0:
        raise TunekitError(f"strategy {plan.strategy_name!r} left no parameter trainable.")
    hooks.on_fit_start()
    from tunekit.training.tracking import TENSORBOARD_DIR

    # Recorded as tunekit's before the tracker writes into it, so a crash mid-run still leaves it ours.
    tensorboard = run.writing(TENSORBOARD_DIR) if "tensorboard" in plan.config.training.report_to else contextlib.nullcontext()
    try:
        with tensorboard:
            outcome = train(
                plan.model,
                plan.tokenizer,
                plan.data.train,
                plan.data.eval,
                options=plan.config.training,
                learning_rate=plan.learning_rate,
                precision=plan.precision,
                output_dir=str(run.work),
                on_log=hooks.on_log,
                on_evaluate=hooks.on_evaluate,
                resume_from=str(start.checkpoint) if start.checkpoint else None,
                fingerprint=start.fingerprint,
                collator=plan.collator,
                loss=plan.loss,
                score_rows=plan.score_rows,
                trainer_plan=plan.trainer,
                final_evaluation=evaluate,
                parameters=(trainable, total),
            )
    except TrainingInterrupted as exc:
        if not run.staged:
            raise
        raise TrainingInterrupted(
            f"training was interrupted; the run in {str(run.path)!r} that this one was to replace is "
            "unchanged, and the new run was discarded."
        ) from exc
    final = outcome.final_eval if outcome.final_evaluated else evaluate()
    return FitResult(
        strategy=plan.strategy_name,
        objective=plan.data.objective_name,
        trainable_params=trainable,
        total_params=total,
        steps=outcome.steps,
        best_step=outcome.best_step,
        train_loss=outcome.loss_history[-1].loss if outcome.loss_history else outcome.mean_loss,
        mean_train_loss=outcome.mean_loss,
        eval_loss=final.loss if final else None,
        eval_perplexity=final.perplexity if final else None,
        eval_metrics=final.metrics if final else {},
        eval_generations=final.generations if final else [],
        eval_reports=final.reports if final else {},
        train_figures=next((point.figures for point in reversed(outcome.loss_history) if point.figures), {}),
        loss_history=outcome.loss_history,
        eval_history=outcome.eval_history,
        tokens_seen=outcome.tokens_seen,
        world_size=outcome.world_size,
        effective_batch_size=outcome.effective_batch_size,
        wall_time_s=outcome.wall_time_s,
        tokens_per_second=outcome.tokens_seen / outcome.wall_time_s if outcome.wall_time_s else 0.0,
        peak_memory_bytes=outcome.peak_memory_bytes,
        peak_memory_kind=outcome.peak_memory_kind,
        precision=plan.precision.name,
        output_dir=str(run.path),
    )


def record_run(run: Claim, plan: FitPlan, result: FitResult, start: StartPoint, *, save: Callable[[Path], Any]) -> None:
    """Write the model (``save`` into ``model/``), ``result.json``, the model card and the loss plot."""
    from tunekit.model_card import CONFUSION_PLOT, LOSS_PLOT, MODEL_CARD, DataSummary, write_run_report
    from tunekit.training.distributed import gathered_state_dict, saving_state_dict

    full_weights = gathered_state_dict(plan.model)  # every rank: a collective under FSDP / ZeRO-3; None otherwise
    if not run.main:  # under torchrun every rank holds the same weights (or gathered them); one writes
        return
    with saving_state_dict(plan.model, full_weights):
        save(run.work / "model")
    run.record("model")
    with run.writing(RUN_RESULT) as file:
        file.write_text(result.model_dump_json(indent=2))
    rows, data = plan.data.rows, plan.data
    from tunekit.data.pipeline import is_stream

    train_rows = None if is_stream(data.train) else len(data.train)
    summary = DataSummary(rows.description, rows.format, train_rows, len(data.eval) if data.eval is not None else 0)
    write_run_report(run.work, result, plan.config, summary, learning_rate=plan.learning_rate)
    run.record(MODEL_CARD, LOSS_PLOT)
    if (run.work / CONFUSION_PLOT).is_file():
        run.record(CONFUSION_PLOT)
    t = plan.config.training
    run.set_state("writing", fingerprint=start.fingerprint, budget={"max_steps": t.max_steps, "epochs": t.epochs})
