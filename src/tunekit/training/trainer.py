"""tunekit's Trainer: transformers' Trainer with what it gets wrong for us fixed.

1. Checkpoints are staged and renamed into place (see :mod:`tunekit.training.checkpoints`).
2. A non-finite loss stops the run at once, naming the step and the last good checkpoint;
   the stock Trainer silently replaces it by an average (``logging_nan_inf_filter``) and
   trains on.
3. Ctrl-C (SIGINT) finishes the current step, saves a checkpoint and stops cleanly.
4. The training loss projects only the trained positions onto the vocabulary
   (see :mod:`tunekit.training.loss`); the stock loss computes every position's logits.
5. With early stopping, the best checkpoint is never rotated away, and is named by its published path.
6. Evaluation during training reports the token-weighted mean over trained tokens, computed by
   :func:`tunekit.evaluation.evaluate_loss` exactly as ``Tuner.evaluate`` and fit's final
   evaluation compute it; the stock loop averages per-batch means, another quantity.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import torch
from transformers import Trainer, TrainerCallback

from tunekit.errors import TunekitError
from tunekit.run_directory import disk_error
from tunekit.training.checkpoints import FINGERPRINT, STAGING, newest_checkpoint, publish, rotate
from tunekit.training.loss import trained_logits_loss


class NonFiniteLossError(TunekitError, FloatingPointError):
    """The training loss became NaN or infinite."""


class TrainingInterrupted(TunekitError, KeyboardInterrupt):  # type: ignore[misc]
    """Training was interrupted (Ctrl-C) after a checkpoint was saved."""


class InterruptCallback(TrainerCallback):  # type: ignore[misc]
    """Turns a SIGINT into "save a checkpoint and stop" at the end of the current step."""

    def __init__(self) -> None:
        self.interrupted = False
        self._previous: Any = None

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        if self.interrupted:  # a second Ctrl-C: give up at once
            raise KeyboardInterrupt
        self.interrupted = True

    def install(self) -> None:
        try:
            self._previous = signal.signal(signal.SIGINT, self._handler)
        except ValueError:  # not the main thread: leave signals alone
            self._previous = None

    def uninstall(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.interrupted:
            control.should_save = True
            control.should_training_stop = True

    # The Trainer logs after on_step_end and saves after logging: a signal that arrives while
    # logging still stops at the step that just finished.
    on_log = on_step_end


if TYPE_CHECKING:  # a mixin for any Trainer subclass: typed as one, a plain class at run time
    _TrainerBase = Trainer
else:
    _TrainerBase = object


class StagedCheckpoints(_TrainerBase):  # type: ignore[misc]
    """What tunekit changes in any transformers ``Trainer``, tunekit's own or one of trl's (DPO, GRPO...).

    Mixed in before the trainer class (:func:`with_tunekit`): staged checkpoints that never rotate
    the best one away, a hard stop on a non-finite loss, and evaluation by the objective's own
    measure (:meth:`evaluation_loop`), so the eval curve of every objective is the quantity
    ``Tuner.evaluate`` reports.
    """

    keep_checkpoints: int | None = None
    run_fingerprint: dict[str, str] | None = None
    """Written into every checkpoint (:data:`tunekit.training.checkpoints.FINGERPRINT`) so a resume can check it."""
    score_rows: Any = None
    """The objective's own ``evaluate_rows(model, rows, batch_size=, pad_token_id=)``, when it has one: the eval loss."""
    trained_logits_only: bool = False
    """Set (after :func:`tunekit.training.loss.supports_trained_logits`) to use the trained-positions loss."""
    shared_prefix: bool = False
    """Set (after :func:`tunekit.training.shared_prefix.use_shared_prefix`) to run a batch's shared prefix once."""
    pad_token_id: int | None = None
    """The tokenizer's pad id, for tunekit's evaluation (trl's collators do not all carry it)."""

    def evaluation_loop(
        self, dataloader: Any, description: str, prediction_loss_only: bool | None = None, ignore_keys: Any = None,
        metric_key_prefix: str = "eval",
    ) -> Any:
        """``{prefix}_loss``: tunekit's eval loss (token weighted, over trained tokens) of the dataset."""
        from transformers.trainer_utils import EvalLoopOutput

        from tunekit.evaluation import evaluate_loss

        dataset = getattr(dataloader, "dataset", None)
        pad = self.pad_token_id if self.pad_token_id is not None else getattr(self.data_collator, "pad_token_id", None)
        unprepared = (self.is_deepspeed_enabled and self.deepspeed is None) or (self.is_fsdp_enabled and not self.accelerator._models)
        if dataset is None or pad is None or unprepared:
            return super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix)
        # A sharded module (FSDP, ZeRO-3) gathers its weights in forward: use the wrapper, on every rank.
        model: Any = self.model_wrapped if (self.is_fsdp_enabled or self.is_deepspeed_enabled) else self.model
        if self.score_rows is not None:  # a classification head, preference pairs: the objective's own measure
            loss, scores = self.score_rows(model, dataset, batch_size=self.args.eval_batch_size, pad_token_id=int(pad))
            metrics = {f"{metric_key_prefix}_loss": loss, **{f"{metric_key_prefix}_{k}": v for k, v in _headline(scores).items()}}
            return EvalLoopOutput(predictions=None, label_ids=None, metrics=metrics, num_samples=len(dataset))  # type: ignore[arg-type]
        result = evaluate_loss(
            model, dataset, pad_token_id=int(pad), batch_size=self.args.eval_batch_size,
            trained_logits_only=self.trained_logits_only, shared_prefix=self.shared_prefix,
        )
        metrics = {f"{metric_key_prefix}_loss": result.loss, f"{metric_key_prefix}_tokens": float(result.tokens)}
        return EvalLoopOutput(predictions=None, label_ids=None, metrics=metrics, num_samples=len(dataset))  # type: ignore[arg-type]

    def training_step(self, model: torch.nn.Module, inputs: dict[str, Any], num_items_in_batch: Any = None) -> torch.Tensor:
        loss: torch.Tensor = super().training_step(model, inputs, num_items_in_batch)
        if not torch.isfinite(loss).all():
            last = newest_checkpoint(str(self.args.output_dir))
            where = f"the last good checkpoint is {last}" if last else "no checkpoint was saved yet"
            raise NonFiniteLossError(
                f"the training loss became {loss.item()} at step {self.state.global_step + 1}; "
                f"{where}. Lower training.learning_rate, check the data, or use fp32."
            )
        return loss

    def _save_checkpoint(self, model: torch.nn.Module, trial: Any) -> None:
        real = str(self.args.output_dir)
        staging = os.path.join(real, STAGING)
        name = f"checkpoint-{self.state.global_step}"
        self.args.output_dir = staging
        try:
            super()._save_checkpoint(model, trial)
            if self.args.should_save and self.run_fingerprint is not None:  # written last: the run it belongs to
                (Path(staging) / name / FINGERPRINT).write_text(json.dumps(self.run_fingerprint, indent=1))
        except Exception as exc:  # a full disk surfaces as OSError, RuntimeError or the Rust libraries' Exception
            # torch.save on a full disk raises RuntimeError("... unexpected pos ..."): leave no half checkpoint
            shutil.rmtree(Path(staging) / name, ignore_errors=True)
            error = disk_error(exc, Path(staging) / name)
            if error is exc:
                raise
            raise error from exc
        finally:
            self.args.output_dir = real
        if self.args.should_save and self.state.best_global_step:
            self._point_best_at(Path(real), Path(staging) / name)
        # Every rank writes its own RNG state into the staged checkpoint: all must be done before it moves.
        self.accelerator.wait_for_everyone()
        if self.args.should_save:  # the main process only
            publish(Path(staging) / name, Path(real) / name)
            with contextlib.suppress(OSError):
                os.rmdir(staging)  # empty again: leave no staging area behind a finished checkpoint
            rotate(real, self.keep_checkpoints, keep_also=self.state.best_model_checkpoint)

    def _point_best_at(self, real: Path, staged: Path) -> None:
        """The best checkpoint (early stopping) named by where it lives once published, not the staging path.

        The Trainer finds it under ``output_dir``, which was the staging area while it saved; an older best
        lives in the run directory already. The staged trainer state is written again with the real path so a
        resumed run keeps its best checkpoint.
        """
        best = f"checkpoint-{self.state.best_global_step}"
        if staged.name == best or (real / best).is_dir():
            self.state.best_model_checkpoint = str(real / best)
            self.state.save_to_json(str(staged / "trainer_state.json"))


def _headline(scores: Any) -> dict[str, float]:
    """The figures an objective's eval scores log beside the loss (``headline()``, e.g. preference accuracy)."""
    headline = getattr(scores, "headline", None)
    return dict(headline()) if callable(headline) else {}


class TunekitTrainer(StagedCheckpoints, Trainer):  # type: ignore[misc]
    """``transformers.Trainer`` with tunekit's checkpoints and evaluation, trained on tunekit's cross-entropy
    (over the trained positions only) or on the objective's own ``loss``."""

    objective_loss: Any = None
    """The objective's own ``loss(model, inputs, num_items_in_batch)``, when it has one (``Objective.loss``)."""

    def compute_loss(
        self, model: torch.nn.Module, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
    ) -> Any:
        if self.objective_loss is not None and model.training and not return_outputs:
            loss = self.objective_loss(model, inputs, num_items_in_batch)
        elif not (self.trained_logits_only and model.training and not return_outputs and "labels" in inputs):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        else:
            loss = trained_logits_loss(model, inputs, num_items_in_batch, shared_prefix=self.shared_prefix)
        # Scaled as Trainer.compute_loss scales a model's own loss: divided by the items of the whole
        # accumulated batch when the Trainer counted them (it does for models that take loss
        # kwargs, and then does not divide by the accumulation steps again), and multiplied back by
        # the processes whose token counts were summed into it.
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * (self.accelerator.num_processes // self.get_tp_size() if self.args.n_gpu <= 1 else self.args.n_gpu)
        return loss

    def prediction_step(
        self, model: torch.nn.Module, inputs: dict[str, Any], prediction_loss_only: bool, ignore_keys: Any = None
    ) -> Any:
        """With only the loss wanted: the mean over the batch's trained tokens, by tunekit's loss."""
        if not (prediction_loss_only and "labels" in inputs):
            return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = trained_logits_loss(model, inputs, skip_untrained=self.trained_logits_only, shared_prefix=self.shared_prefix)
        return loss.detach(), None, None


_MIXED: dict[type[Any], type[Any]] = {}


def with_tunekit(trainer: type[Any]) -> type[Any]:
    """``trainer`` (a ``transformers.Trainer`` subclass, e.g. trl's ``DPOTrainer``) with :class:`StagedCheckpoints` mixed in."""
    if issubclass(trainer, StagedCheckpoints):
        return trainer
    if trainer not in _MIXED:
        _MIXED[trainer] = type(f"Tunekit{trainer.__name__}", (StagedCheckpoints, trainer), {"__module__": __name__})
    return _MIXED[trainer]
