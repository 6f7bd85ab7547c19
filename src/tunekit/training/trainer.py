"""tunekit's Trainer: transformers' Trainer with what it gets wrong for us fixed.

1. Checkpoints are staged and renamed into place (see :mod:`tunekit.training.checkpoints`).
2. A non-finite loss stops the run at once, naming the step and the last good checkpoint;
   the stock Trainer silently replaces it by an average (``logging_nan_inf_filter``) and
   trains on.
3. Ctrl-C (SIGINT) finishes the current step, saves a checkpoint and stops cleanly.
4. The training loss projects only the trained positions onto the vocabulary
   (see :mod:`tunekit.training.loss`); the stock loss computes every position's logits.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from types import FrameType
from typing import Any

import torch
from transformers import Trainer, TrainerCallback

from tunekit.errors import TunekitError
from tunekit.training.checkpoints import STAGING, newest_checkpoint, publish, rotate
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


class TunekitTrainer(Trainer):  # type: ignore[misc]
    """``transformers.Trainer`` with staged checkpoints and a hard stop on a non-finite loss."""

    keep_checkpoints: int | None = None
    trained_logits_only: bool = False
    """Set (after :func:`tunekit.training.loss.supports_trained_logits`) to use the trained-positions loss."""

    def compute_loss(
        self, model: torch.nn.Module, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
    ) -> Any:
        if not (self.trained_logits_only and model.training and not return_outputs and "labels" in inputs):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        loss = trained_logits_loss(model, inputs, num_items_in_batch)
        # Scaled as Trainer.compute_loss scales a model's own loss: divided by the items of the whole
        # accumulated batch when the Trainer counted them (it does for models that take loss
        # kwargs, and then does not divide by the accumulation steps again), and multiplied back by
        # the processes whose token counts were summed into it.
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * (self.accelerator.num_processes // self.get_tp_size() if self.args.n_gpu <= 1 else self.args.n_gpu)
        return loss

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
        finally:
            self.args.output_dir = real
        if self.args.should_save:
            publish(Path(staging) / name, Path(real) / name)
            rotate(real, self.keep_checkpoints)
