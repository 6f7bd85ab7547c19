"""Experiment trackers and the optimizer check: what ``training.report_to`` and ``training.optimizer`` need.

The trackers are transformers' own integration callbacks (``INTEGRATION_TO_CALLBACK``), built here
rather than by ``TrainingArguments(report_to=...)`` so that

- TensorBoard writes into the run directory (``tensorboard/``, recorded as tunekit's and moved with
  the run when an overwrite swaps it in) instead of ``<output_dir>/runs/<date>_<host>``;
- a missing package is a :class:`~tunekit.errors.TunekitError` naming the extra to install, before
  any step runs (transformers raises a bare RuntimeError from inside the Trainer's constructor);
- tunekit's own figures (trainable parameters, tokens/s, the final evaluation's metrics) reach the
  trackers: :class:`FinalFigures` logs them at the end of training, before the trackers close.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from tunekit.config import NEEDS_BITSANDBYTES
from tunekit.errors import ConfigError, Problem, TunekitError

TENSORBOARD_DIR = "tensorboard"
"""Where ``report_to: [tensorboard]`` writes its event files, inside the run directory."""

TRACKER_EXTRAS = frozenset({"tensorboard", "mlflow", "trackio", "wandb"})
"""The trackers tunekit has an extra for, named like the tracker (``pip install 'tunekit[NAME]'``)."""


def tracker_callbacks(names: list[str], output_dir: Path) -> list[Any]:
    """One transformers integration callback per tracker name, checked before training starts."""
    if not names:
        return []
    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

    unknown = [n for n in names if n not in INTEGRATION_TO_CALLBACK]
    if unknown:
        raise ConfigError([
            Problem("training.report_to", f"unknown tracker {n!r}; transformers knows {', '.join(sorted(INTEGRATION_TO_CALLBACK))}")
            for n in unknown
        ])
    callbacks = []
    for name in dict.fromkeys(names):  # each tracker once
        try:
            callback = INTEGRATION_TO_CALLBACK[name]()
        except (RuntimeError, ImportError) as exc:
            extra = f"pip install 'tunekit[{name}]'" if name in TRACKER_EXTRAS else f"install the {name!r} package"
            raise TunekitError(
                f"training.report_to names {name!r}, which is not installed ({str(exc).splitlines()[0]}): {extra}, "
                "or drop it from report_to."
            ) from exc
        if name == "tensorboard":
            callback.logging_dir = str(output_dir / TENSORBOARD_DIR)  # read by its on_train_begin
        callbacks.append(callback)
    return callbacks


def check_optimizer(name: str, device: str) -> None:
    """Refuse, before the model is wrapped, an optimizer this device cannot run."""
    if name not in NEEDS_BITSANDBYTES:
        return
    if device != "cuda":
        # bitsandbytes' 8-bit and paged optimizers step with CUDA kernels; on a CPU they fail mid-step.
        raise ConfigError([Problem(
            "training.optimizer",
            f"{name!r} keeps its state in bitsandbytes' CUDA buffers and needs a CUDA GPU (this run is on {device}); "
            "use 'adamw' or 'adafactor' (factored second moments: the least optimizer memory on a CPU)",
        )])
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:
        raise TunekitError(f"training.optimizer {name!r} needs bitsandbytes: pip install bitsandbytes")


class FinalFigures(TrainerCallback):  # type: ignore[misc]
    """At the end of training: run the final evaluation and log tunekit's figures through the trackers.

    It sits before the trackers in the Trainer's callback list, so its ``on_train_end`` logs while
    they are still open, and after early stopping has restored the best checkpoint (the Trainer does
    that just before ``on_train_end``), so the figures are those of the model fit returns. Under
    FSDP / ZeRO-3 the evaluation needs the gathered module, which exists only once ``train`` has
    returned: then fit evaluates afterwards and the trackers get the training figures only.
    """

    def __init__(self, trainer: Any, evaluate: Any, parameters: tuple[int, int], outcome: Any, interrupt: Any):
        self.trainer, self.evaluate, self.parameters = trainer, evaluate, parameters
        self.outcome, self.interrupt = outcome, interrupt
        self.started = time.perf_counter()

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.started = time.perf_counter()

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.interrupt.interrupted:
            return
        trainer = self.trainer
        figures: dict[str, float] = {}
        if self.parameters[1]:
            figures["trainable_params"], figures["total_params"] = map(float, self.parameters)
        elapsed = time.perf_counter() - self.started
        if elapsed > 0:
            figures["tokens_per_second"] = float(state.num_input_tokens_seen) / elapsed
        if self.evaluate is not None and not (trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled):
            trainer.model.eval()
            final = self.evaluate()
            self.outcome.final_eval, self.outcome.final_evaluated = final, True
            if final is not None:
                figures["final_loss"] = float(final.loss)
                figures.update({f"final_{k}": float(v) for k, v in final.metrics.items()})
        if figures:
            trainer.log(figures)
