"""The facade: ``Tuner`` composes a model, a strategy, a quantizer, data and an objective.

>>> from tunekit import Tuner
>>> tuner = Tuner(model="gpt2", strategy={"name": "lora", "rank": 16})  # nothing loads yet
>>> tuner.config.strategy.options["rank"]
16
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunekit.config import PartSpec, TuneConfig
from tunekit.errors import ConfigError, ModelLoadError, Problem, TunekitError
from tunekit.results import EvalResult, FitResult

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

    from tunekit.data.pipeline import PreparedRows

log = logging.getLogger(__name__)

SAVE_META = "tunekit.json"
SAVE_CONFIG = "tunekit.yaml"
RUN_RESULT = "result.json"


def _build_part(kind: str, spec: PartSpec, location: str) -> Any:
    from tunekit.plugins import get_registry

    reg = get_registry(kind).get(spec.name, location=location)
    return reg.cls(reg.options_model.model_validate(spec.options))


class Tuner:
    """Fine-tune a causal language model: ``Tuner(model="gpt2", strategy="lora").fit(rows)``.

    Takes a :class:`TuneConfig`, a mapping, or the same fields as keyword arguments.
    Nothing is loaded until it is needed (``fit``, ``model``, ``generate``...).
    """

    def __init__(self, config: TuneConfig | Mapping[str, Any] | None = None, /, **options: Any):
        if config is None:
            config = TuneConfig(**options)
        elif isinstance(config, TuneConfig):
            if options:
                config = TuneConfig.model_validate({**config.model_dump(), **options})
        elif isinstance(config, Mapping):
            config = TuneConfig.model_validate({**config, **options})
        else:
            raise ConfigError(f"Tuner takes a TuneConfig or a mapping, got {type(config).__name__}.")
        from tunekit.training.precision import choose_precision

        self.config: TuneConfig = config
        self.strategy = _build_part("strategy", config.strategy, "strategy")
        self.quantizer = _build_part("quantizer", config.quantizer, "quantizer")
        self.precision = choose_precision(config.training.precision)
        self._model: torch.nn.Module | None = None
        self._tokenizer: PreTrainedTokenizerBase | None = None
        self._merged = False
        self.last_result: FitResult | None = None

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def from_config(cls, path: str | os.PathLike[str], **overrides: Any) -> Tuner:
        """A Tuner from a ``.yaml``/``.toml``/``.json`` config file, with optional overrides."""
        from tunekit.config import read_config_file

        data = read_config_file(Path(path))
        section = data.get("data")
        if isinstance(section, dict):  # data files are relative to the config file, not the cwd
            for key in ("train", "eval"):
                value = section.get(key)
                if isinstance(value, str) and not Path(value).is_absolute():
                    candidate = Path(path).parent / value
                    if candidate.exists():
                        section[key] = str(candidate)
        return cls({**data, **overrides})

    @classmethod
    def load(cls, path: str | os.PathLike[str], **overrides: Any) -> Tuner:
        """Restore a tuned model saved by :meth:`save` (or the run directory of :meth:`fit`).

        The result is ready to generate, evaluate or continue training. ``overrides`` replace
        config fields, e.g. ``Tuner.load(path, quantizer="none")`` to reload on a plain base.
        """
        path = Path(path)
        if (path / "model" / SAVE_META).is_file():
            path = path / "model"
        if not (path / SAVE_META).is_file():
            raise ModelLoadError(
                f"{str(path)!r} is not a directory saved by tunekit (no {SAVE_META}); for a plain "
                "transformers model directory use Tuner(model=path)."
            )
        meta = json.loads((path / SAVE_META).read_text())
        tuner = cls.from_config(path / SAVE_CONFIG, **overrides)
        if meta["format"] == "adapter":
            tuner._load_model(adapter_path=path)
        else:
            tuner._load_model(model_path=path)
        return tuner

    # -- the underlying objects -------------------------------------------------------------
    @property
    def model(self) -> torch.nn.Module:
        """The transformers model (a peft ``PeftModel`` for adapter strategies), prepared for training."""
        if self._model is None:
            self._load_model()
        assert self._model is not None
        return self._model

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        """The tokenizer (always with a pad token, and with the configured chat template)."""
        if self._tokenizer is None:
            self._load_model()
        assert self._tokenizer is not None
        return self._tokenizer

    def _load_model(self, *, adapter_path: Path | None = None, model_path: Path | None = None) -> None:
        import torch
        from transformers import set_seed

        from tunekit.models.loading import ModelSource, load_model, load_tokenizer, resolve_source

        cfg = self.config
        base = ModelSource("local", str(model_path)) if model_path else resolve_source(cfg.model)
        tok_source = ModelSource("local", str(adapter_path)) if adapter_path else base
        revision = cfg.revision if base.kind == "hub" else None
        remote = cfg.trust_remote_code
        tokenizer = load_tokenizer(tok_source, trust_remote_code=remote, revision=revision)
        if cfg.data.chat_template:
            tokenizer.chat_template = cfg.data.chat_template
        # A frozen base can live in the compute dtype; weights that train keep fp32 master copies.
        frozen_base = self.strategy.uses_adapters
        dtype = self.precision.compute_dtype if frozen_base else torch.float32
        model: Any = load_model(
            base, dtype=dtype, extra_kwargs=self.quantizer.load_kwargs(self.precision.compute_dtype),
            trust_remote_code=remote, revision=revision,
        )
        gc = cfg.training.gradient_checkpointing
        model = self.quantizer.prepare_for_training(model, gradient_checkpointing=gc)
        set_seed(cfg.training.seed)
        if adapter_path is not None:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, str(adapter_path), is_trainable=True)
        else:
            model = self.strategy.prepare(model, quantized=self.quantizer.quantizes_base)
        if gc and hasattr(model, "enable_input_require_grads"):
            # With a frozen embedding layer, checkpointed blocks get inputs that do not require
            # grad, and the adapters/head behind them would silently receive no gradient.
            model.enable_input_require_grads()
        if getattr(model, "generation_config", None) is not None and tokenizer.pad_token_id is not None:
            model.generation_config.pad_token_id = tokenizer.pad_token_id
        self._model, self._tokenizer = model, tokenizer

    # -- data -------------------------------------------------------------------------------
    def _rows(self, train: Any, eval: Any = None) -> PreparedRows:
        from tunekit.data.pipeline import prepare_rows

        return prepare_rows(train, eval, self.config.data, seed=self.config.training.seed)

    def _tokenize(self, rows: PreparedRows) -> tuple[str, Any, Any]:
        from tunekit.data.pipeline import build_objective, choose_objective

        spec = self.config.objective
        name = choose_objective(spec.name if spec else None, rows.format)
        objective = build_objective(name, spec.options if spec else {}, rows.format)
        max_length = self.config.training.max_length
        train = objective.tokenize(rows.train, self.tokenizer, max_length=max_length)
        evals = objective.tokenize(rows.eval, self.tokenizer, max_length=max_length) if rows.eval is not None else None
        return name, train, evals

    # -- the verbs ------------------------------------------------------------------------------
    def fit(self, train: Any = None, eval: Any = None, *, overwrite: bool = False) -> FitResult:
        """Train on ``train`` (rows, a dataset, a DataFrame or a file path) and return what was measured.

        ``eval`` is evaluated at ``training.eval_steps`` and at the end; without it, a
        ``DatasetDict``'s validation split or ``data.eval_fraction`` of the rows is used.
        The run directory (``output_dir``) gets the config, ``result.json`` and the tuned
        model under ``model/``; an existing run there is refused unless ``overwrite=True``.
        """
        from tunekit.evaluation import evaluate_loss
        from tunekit.models.inspect import count_parameters
        from tunekit.plugins import get_plugins
        from tunekit.training.loop import train as run_training

        if train is None:
            train = self.config.data.train
            if train is None:
                raise ConfigError([Problem("data.train", "no training data: pass it to fit(), or set data.train to a file")])
        if eval is None:
            eval = self.config.data.eval
        rows = self._rows(train, eval)
        objective, train_rows, eval_rows = self._tokenize(rows)
        if len(train_rows) == 0:
            raise TunekitError("no training rows are left after tokenization.")
        output_dir = self._claim_output_dir(overwrite)
        self.config.to_file(output_dir / SAVE_CONFIG)
        hooks = get_plugins().manager.hook
        model = self.model
        trainable, total = count_parameters(model)
        if trainable == 0:
            raise TunekitError(f"strategy {self.strategy.name!r} left no parameter trainable.")
        hooks.on_fit_start(tuner=self)
        lr = self.config.training.learning_rate or self.strategy.default_learning_rate
        outcome = run_training(
            model,
            self.tokenizer,
            train_rows,
            eval_rows,
            options=self.config.training,
            learning_rate=lr,
            precision=self.precision,
            output_dir=str(output_dir),
            on_log=lambda step, logs: hooks.on_log(tuner=self, step=step, logs=logs),
            on_evaluate=lambda step, metrics: hooks.on_evaluate(tuner=self, step=step, metrics=metrics),
        )
        final_eval: EvalResult | None = None
        if eval_rows is not None and len(eval_rows):
            final_eval = evaluate_loss(model, eval_rows, pad_token_id=int(self.tokenizer.pad_token_id), batch_size=self.config.training.batch_size)
        last_loss = outcome.loss_history[-1].loss if outcome.loss_history else outcome.mean_loss
        result = FitResult(
            strategy=self.strategy.name,
            objective=objective,
            trainable_params=trainable,
            total_params=total,
            steps=outcome.steps,
            train_loss=last_loss,
            mean_train_loss=outcome.mean_loss,
            eval_loss=final_eval.loss if final_eval else None,
            eval_perplexity=final_eval.perplexity if final_eval else None,
            loss_history=outcome.loss_history,
            eval_history=outcome.eval_history,
            tokens_seen=outcome.tokens_seen,
            wall_time_s=outcome.wall_time_s,
            tokens_per_second=outcome.tokens_seen / outcome.wall_time_s if outcome.wall_time_s else 0.0,
            peak_memory_bytes=outcome.peak_memory_bytes,
            peak_memory_kind=outcome.peak_memory_kind,
            precision=self.precision.name,
            output_dir=str(output_dir),
        )
        self.save(output_dir / "model", overwrite=True)
        (output_dir / RUN_RESULT).write_text(result.model_dump_json(indent=2))
        self.last_result = result
        hooks.on_fit_end(tuner=self, result=result)
        return result

    def evaluate(self, data: Any) -> EvalResult:
        """Token-weighted loss and perplexity of the current model on ``data`` (before or after fit)."""
        from tunekit.evaluation import evaluate_loss

        rows = self._rows(data)
        _, tokenized, _ = self._tokenize(rows)
        return evaluate_loss(self.model, tokenized, pad_token_id=int(self.tokenizer.pad_token_id), batch_size=self.config.training.batch_size)

    def generate(self, prompt: str | list[dict[str, str]], **generate_kwargs: Any) -> str:
        """Continue a text prompt, or answer a chat (a list of messages), and return the new text.

        Greedy with at most 64 new tokens unless ``generate_kwargs`` say otherwise.
        """
        import torch

        from tunekit.data.chat import render_generation_prompt

        tokenizer, model = self.tokenizer, self.model
        text, add_special = render_generation_prompt(tokenizer, prompt)
        enc = tokenizer(text, return_tensors="pt", add_special_tokens=add_special)
        device = next(model.parameters()).device
        enc = {k: v.to(device) for k, v in enc.items()}
        kwargs: dict[str, Any] = {
            "max_new_tokens": 64,
            "do_sample": False,
            "pad_token_id": tokenizer.pad_token_id,
            "eos_token_id": tokenizer.eos_token_id,
        }
        kwargs.update(generate_kwargs)
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                out = model.generate(**enc, **kwargs)  # type: ignore[operator]
        finally:
            model.train(was_training)
        return str(tokenizer.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True))

    # -- saving ---------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Save what was tuned: a peft adapter (adapter strategies) or a full model, plus the tokenizer
        and the config. Written to a temporary directory and renamed into place, so a crash never
        leaves a half-written save; an existing non-empty ``path`` is refused unless ``overwrite``.
        """
        adapter = self.strategy.uses_adapters and not self._merged
        model, tokenizer = self.model, self.tokenizer

        def write(tmp: Path) -> None:
            model.save_pretrained(str(tmp))  # type: ignore[operator]
            tokenizer.save_pretrained(str(tmp))
            self.config.to_file(tmp / SAVE_CONFIG)
            from tunekit import __version__

            meta = {"format": "adapter" if adapter else "full", "strategy": self.strategy.name, "base_model": self.config.model, "tunekit_version": __version__}
            (tmp / SAVE_META).write_text(json.dumps(meta, indent=2))

        return _write_atomically(Path(path), write, overwrite=overwrite)

    def merge(self) -> torch.nn.Module:
        """Fold LoRA adapters into the base weights and return the plain transformers model.

        Refused on a quantized base: the merged weights would be rounded back to 4/8 bits.
        """
        if not self.strategy.uses_adapters or self._merged:
            return self.model
        if self.quantizer.quantizes_base:
            raise TunekitError(
                f"merging adapters into a {self.quantizer.name!r} base would round the merged weights "
                "to its precision. Save the adapter, then reload it on a plain base and merge there: "
                "Tuner.load(path, quantizer='none').save_merged(out)."
            )
        self._model = self.model.merge_and_unload()  # type: ignore[operator]
        self._merged = True
        return self._model

    def save_merged(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Merge (for adapters) and save a standalone transformers model that plain ``from_pretrained`` loads."""
        self.merge()
        return self.save(path, overwrite=overwrite)

    # -- helpers ----------------------------------------------------------------------------------
    def _claim_output_dir(self, overwrite: bool) -> Path:
        if self.config.output_dir:
            out = Path(self.config.output_dir)
        else:
            model_name = Path(self.config.model).name.removesuffix(".gguf") or "model"
            out = Path("runs") / f"{model_name}-{self.strategy.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        if out.exists() and any(out.iterdir()):
            if not overwrite:
                what = "a finished tunekit run" if (out / RUN_RESULT).exists() else "files"
                raise TunekitError(
                    f"output_dir {str(out)!r} already holds {what}; choose another output_dir, or "
                    "pass fit(..., overwrite=True) to replace it."
                )
            shutil.rmtree(out)
        out.mkdir(parents=True, exist_ok=True)
        return out


def _write_atomically(path: Path, write: Any, *, overwrite: bool) -> Path:
    if path.exists() and (not path.is_dir() or any(path.iterdir())) and not overwrite:
        raise TunekitError(f"{str(path)!r} already exists and is not empty; choose another path or pass overwrite=True.")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        write(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = path.parent / f".{path.name}.old-{os.getpid()}"
    if path.exists():
        path.rename(old)
    tmp.rename(path)
    if old.exists():
        shutil.rmtree(old) if old.is_dir() else old.unlink()
    return path

