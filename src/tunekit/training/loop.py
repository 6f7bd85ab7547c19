"""Training on transformers' Trainer (and so on accelerate): arguments, callbacks, progress."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunekit.config import OPTIMIZERS
from tunekit.data.collate import PackedRows, PadPerBatch
from tunekit.errors import ConfigError, Problem
from tunekit.results import EvalPoint, LogPoint
from tunekit.training.memory import PeakMemory

if TYPE_CHECKING:
    import torch
    from datasets import Dataset
    from transformers import PreTrainedTokenizerBase

    from tunekit.config import TrainingOptions
    from tunekit.parts import TrainerPlan
    from tunekit.training.precision import Precision


log = logging.getLogger(__name__)


@dataclass
class TrainOutcome:
    """What the training loop measured."""

    steps: int
    mean_loss: float
    loss_history: list[LogPoint] = field(default_factory=list)
    eval_history: list[EvalPoint] = field(default_factory=list)
    tokens_seen: int = 0
    world_size: int = 1
    effective_batch_size: int = 0
    wall_time_s: float = 0.0
    peak_memory_bytes: int = 0
    peak_memory_kind: str = ""
    final_eval: Any = None
    """The final evaluation, when it ran at the end of training (so the trackers got its figures)."""
    final_evaluated: bool = False
    best_step: int | None = None
    """With early stopping: the step of the best eval loss, whose checkpoint was restored."""


def _callbacks(outcome: TrainOutcome, on_log: Any, on_evaluate: Any, progress: bool, logged: tuple[str, ...] = ()) -> list[Any]:
    from tqdm.auto import tqdm
    from transformers import TrainerCallback

    class Recorder(TrainerCallback):  # type: ignore[misc]
        """Keeps the loss curve and forwards logs to tunekit's lifecycle hooks."""

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kw: Any) -> None:
            logs = logs or {}
            if "loss" in logs:
                figures = {k: float(logs[k]) for k in logged if isinstance(logs.get(k), (int, float))}
                outcome.loss_history.append(
                    LogPoint(step=state.global_step, loss=float(logs["loss"]), learning_rate=logs.get("learning_rate"), figures=figures)
                )
            if "eval_loss" in logs:
                outcome.eval_history.append(EvalPoint(step=state.global_step, loss=float(logs["eval_loss"])))
                on_evaluate(state.global_step, {k: float(v) for k, v in logs.items() if isinstance(v, (int, float))})
            on_log(state.global_step, {k: float(v) for k, v in logs.items() if isinstance(v, (int, float))})

    class Progress(TrainerCallback):  # type: ignore[misc]
        """A progress bar with the current loss (replaces Trainer's, which prints raw dicts)."""

        bar: Any = None

        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if state.is_world_process_zero:
                self.bar = tqdm(total=state.max_steps, desc="fit", unit="step", dynamic_ncols=True)

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if self.bar is not None:
                self.bar.update(state.global_step - self.bar.n)

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kw: Any) -> None:
            if self.bar is not None and logs:
                post = {k: f"{logs[k]:.4f}" for k in ("loss", "eval_loss") if k in logs}
                if post:
                    self.bar.set_postfix(post, refresh=True)

        def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if self.bar is not None:
                self.bar.close()

    from tunekit.plugins import trainer_callbacks

    return [Recorder()] + ([Progress()] if progress else []) + trainer_callbacks()


AUTO_LOGGING_EVERY_STEP_UP_TO = 100
"""With ``training.logging_steps: None``, runs of up to this many steps log every step; longer ones ~50 points."""


def auto_logging_steps(options: TrainingOptions, train_rows: Any) -> int:
    """How often to log when the config leaves it to tunekit: every step on short runs, ~50 points on long ones."""
    try:
        steps = options.planned_steps(len(train_rows)) if options.max_steps is None else options.max_steps
    except TypeError:  # a stream has no length (and then max_steps is set anyway)
        return 1
    return 1 if steps <= AUTO_LOGGING_EVERY_STEP_UP_TO else max(1, steps // 50)


def train(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    train_rows: Dataset,
    eval_rows: Dataset | None,
    *,
    options: TrainingOptions,
    learning_rate: float,
    precision: Precision,
    output_dir: str,
    on_log: Any,
    on_evaluate: Any,
    resume_from: str | None = None,
    fingerprint: dict[str, str] | None = None,
    collator: Any = None,
    loss: Any = None,
    score_rows: Any = None,
    final_evaluation: Any = None,
    parameters: tuple[int, int] = (0, 0),
    trainer_plan: TrainerPlan | None = None,
) -> TrainOutcome:
    """Train ``model`` on tokenized rows with transformers' Trainer and return what was measured.

    ``collator`` batches the rows: the objective's own (``tunekit.data.collate.collator_for(objective, tokenizer)``);
    without one, rows are padded per batch. ``final_evaluation`` (a callable returning an ``EvalResult``) runs
    when training ends, after early stopping restored the best checkpoint and before the trackers close, so
    they get its figures too; ``parameters`` (trainable, total) are logged with them. ``trainer_plan`` (the
    objective's ``trainer()``) trains with another trainer class (trl's) and its arguments instead of tunekit's.
    """
    from transformers import TrainingArguments
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    from tunekit.training.distributed import is_distributed_launch
    from tunekit.training.tracking import FinalFigures, check_optimizer, tracker_callbacks
    from tunekit.training.trainer import InterruptCallback, TrainingInterrupted, TunekitTrainer

    o = options
    check_optimizer(o.optimizer, precision.device)
    if o.early_stopping is not None and eval_rows is None:
        raise ConfigError([Problem("training.early_stopping", "needs eval data: pass eval= to fit(), set data.eval, or set data.eval_fraction")])
    # Early stopping restores the best evaluation's checkpoint: one is written at every evaluation unless told otherwise.
    save_steps = o.save_steps or (o.eval_steps if o.early_stopping is not None else None)
    from tunekit.data.pipeline import is_stream

    group_by_length = o.group_by_length
    if is_stream(train_rows) and group_by_length:
        # Grouping sorts rows by length, which needs them all; a stream is read in its own order.
        log.info("tunekit: training.group_by_length does not apply to a stream; its rows are batched in the order read.")
        group_by_length = False
    arguments: dict[str, Any] = dict(
        output_dir=output_dir,
        per_device_train_batch_size=o.batch_size,
        per_device_eval_batch_size=o.batch_size,
        gradient_accumulation_steps=o.gradient_accumulation,
        num_train_epochs=o.epochs,
        max_steps=o.max_steps if o.max_steps is not None else -1,
        learning_rate=learning_rate,
        lr_scheduler_type=o.scheduler,
        warmup_steps=o.warmup_ratio,
        weight_decay=o.weight_decay,
        max_grad_norm=o.max_grad_norm,
        bf16=precision.bf16,
        fp16=precision.fp16,
        use_cpu=precision.device == "cpu",
        seed=o.seed,
        data_seed=o.seed,
        logging_steps=o.logging_steps or auto_logging_steps(o, train_rows),
        logging_first_step=True,
        eval_strategy="steps" if (o.eval_steps and eval_rows is not None) else "no",
        eval_steps=o.eval_steps,
        save_strategy="steps" if save_steps else "no",
        save_steps=save_steps or 500,
        report_to="none",  # the trackers' callbacks are built by tunekit (see tunekit.training.tracking)
        run_name=o.run_name or Path(output_dir).name,
        optim=OPTIMIZERS[o.optimizer],
        neftune_noise_alpha=o.neftune_alpha,
        load_best_model_at_end=o.early_stopping is not None,
        metric_for_best_model="eval_loss" if o.early_stopping is not None else None,
        greater_is_better=False if o.early_stopping is not None else None,
        remove_unused_columns=False,
        disable_tqdm=True,
        activation_checkpointing=o.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False} if o.gradient_checkpointing else None,
        train_sampling_strategy="group_by_length" if group_by_length else "random",
        length_column_name="length",
        # a packed batch has no padding and no attention mask (the Trainer would count pad-id tokens out, EOS too where pad = EOS)
        include_num_input_tokens_seen="all" if isinstance(collator, PackedRows) else "non_padding",
        dataloader_pin_memory=precision.device == "cuda",
        log_level="warning",
        logging_nan_inf_filter=False,
        ddp_backend="gloo" if precision.device == "cpu" and is_distributed_launch() else None,
    )
    outcome = TrainOutcome(steps=0, mean_loss=float("nan"))
    interrupt = InterruptCallback()
    callbacks = [*_callbacks(outcome, on_log, on_evaluate, o.progress_bar, trainer_plan.logged if trainer_plan else ()), interrupt]
    if trainer_plan is None:
        args = TrainingArguments(**arguments)
        trainer = TunekitTrainer(
            model=model,
            args=args,
            train_dataset=train_rows,
            eval_dataset=eval_rows,
            data_collator=collator if collator is not None else PadPerBatch(pad_token_id=int(tokenizer.pad_token_id)),
            callbacks=callbacks,
        )
    else:
        args, trainer = _plan_trainer(trainer_plan, arguments, model, tokenizer, train_rows, eval_rows, callbacks)
    from transformers import EarlyStoppingCallback

    if o.early_stopping is not None:
        trainer.add_callback(EarlyStoppingCallback(o.early_stopping.patience, o.early_stopping.min_delta))
    trackers = tracker_callbacks(o.report_to, Path(output_dir))
    # Before the trackers in the callback list: its on_train_end logs through them while they are still open.
    figures = FinalFigures(trainer, final_evaluation, parameters, outcome, interrupt)
    trainer.callback_handler.callbacks[:0] = [figures, *trackers]
    trainer.keep_checkpoints = o.keep_checkpoints
    trainer.run_fingerprint = fingerprint
    trainer.objective_loss = loss  # the objective's own loss (Objective.loss), or None for tunekit's
    trainer.score_rows = score_rows  # the objective's own eval loss (Objective.evaluate_rows), or None
    trainer.pad_token_id = int(tokenizer.pad_token_id)
    from tunekit.training.loss import use_trained_logits
    from tunekit.training.shared_prefix import use_shared_prefix

    trainer.trained_logits_only = use_trained_logits(model, o.trained_logits_only)
    trainer.shared_prefix = use_shared_prefix(
        model, o.shared_prefix, trained_logits=trainer.trained_logits_only, gradient_checkpointing=o.gradient_checkpointing
    )
    if trainer.shared_prefix:
        log.info("tunekit: a batch's shared prompt prefix runs once per batch (training.shared_prefix)")
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    start = time.perf_counter()
    interrupt.install()
    try:
        with PeakMemory(args.device) as peak:  # this rank's own GPU (cuda:<local rank>), or the CPU
            output = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    except RuntimeError as exc:
        if resume_from and "state_dict" in str(exc):
            from tunekit.training.resume import ResumeMismatchError

            raise ResumeMismatchError(
                f"the checkpoint {resume_from} does not fit this model ({str(exc).splitlines()[0]}); it was written "
                "with another strategy, rank or base model. Resume with the run's own config, or start a new run."
            ) from exc
        raise
    finally:
        interrupt.uninstall()
        # What fit hands back is for inference (dropout off); the Trainer set train mode for its steps.
        model.eval()
    if trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled:
        from tunekit.training.distributed import remember_sharded

        remember_sharded(model, trainer.model_wrapped, trainer.accelerator)
    if interrupt.interrupted:
        raise TrainingInterrupted(
            f"training was interrupted at step {trainer.state.global_step}; a checkpoint was saved in "
            f"{output_dir}/checkpoint-{trainer.state.global_step}. Resume with fit(..., resume=True) "
            "or `tunekit fit CONFIG --resume`."
        )
    outcome.wall_time_s = time.perf_counter() - start
    outcome.peak_memory_bytes, outcome.peak_memory_kind = peak.peak_bytes, peak.kind
    outcome.steps = int(trainer.state.global_step)
    outcome.best_step = trainer.state.best_global_step if o.early_stopping is not None else None
    outcome.mean_loss = float(output.training_loss)
    outcome.tokens_seen = int(trainer.state.num_input_tokens_seen)
    outcome.world_size = int(args.world_size)
    outcome.effective_batch_size = int(args.per_device_train_batch_size * args.world_size * args.gradient_accumulation_steps)
    return outcome


def _plan_trainer(
    plan: TrainerPlan, arguments: dict[str, Any], model: Any, tokenizer: Any, train_rows: Any, eval_rows: Any, callbacks: list[Any]
) -> tuple[Any, Any]:
    """The arguments and the trainer of an objective that trains with its own trainer class (trl's)."""
    from tunekit.training.trainer import with_tunekit

    clash = sorted(set(plan.settings) & set(arguments))
    if clash:  # an objective may not silently override what training.* decides
        raise ConfigError([Problem("objective", f"the objective's trainer settings {clash} are set by training.* already")])
    # trl's configs default to gradient checkpointing on and bf16 on; the explicit activation_checkpointing, bf16 and
    # fp16 above (training.*, the hardware) win over them (TrainingArguments reads the old name only when the new is unset).
    try:
        args = plan.arguments(**{**arguments, **plan.overrides}, **plan.settings)
    except ValueError as exc:  # e.g. GRPO: a batch that is not whole groups of num_generations answers
        raise ConfigError([Problem("objective", f"{plan.arguments.__name__} refused these settings: {exc}")]) from exc
    trainer = with_tunekit(plan.trainer)(
        model=model, args=args, train_dataset=train_rows, eval_dataset=eval_rows, processing_class=tokenizer,
        callbacks=callbacks, **plan.trainer_kwargs,
    )
    return args, trainer
