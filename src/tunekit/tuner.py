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
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunekit.config import TuneConfig, build_part
from tunekit.errors import ConfigError, ModelLoadError, Problem, TunekitError
from tunekit.results import EvalResult, FitResult
from tunekit.run_directory import PYTHON_FLAGS
from tunekit.training.recipe import RUN_CONFIG, RUN_RESULT

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

    from tunekit.data.preparation import PreparedData
    from tunekit.run_directory import Claim
    from tunekit.training.recipe import FitHooks, FitPlan

log = logging.getLogger(__name__)

SAVE_META = "tunekit.json"
SAVE_CONFIG = RUN_CONFIG  # a save holds the config under the same name as a run
GENERATION_BATCH_FACTOR = 4
"""Evaluation generates in batches this many times ``training.batch_size`` unless told otherwise."""


class Tuner:
    """Fine-tune a causal language model: ``Tuner(model="gpt2", strategy="lora").fit(rows)``.

    Takes a :class:`TuneConfig`, a mapping, or the same fields as keyword arguments.
    Nothing is loaded until it is needed (``fit``, ``model``, ``generate``...).
    """

    def __init__(self, config: TuneConfig | Mapping[str, Any] | None = None, /, **options: Any):
        from tunekit.config_merge import merge_overrides

        if config is None:
            config = TuneConfig(**options)
        elif isinstance(config, TuneConfig):
            if options:  # key by key: training={"max_steps": 3} keeps the other training fields
                config = TuneConfig.model_validate(merge_overrides(config.model_dump(), options))
        elif isinstance(config, Mapping):
            config = TuneConfig.model_validate(merge_overrides(config, options))
        else:
            raise ConfigError(f"Tuner takes a TuneConfig or a mapping, got {type(config).__name__}.")
        from tunekit.training.precision import choose_precision

        self.config: TuneConfig = config
        self.strategy = build_part("strategy", config.strategy, "strategy")
        self.quantizer = build_part("quantizer", config.quantizer, "quantizer")
        self.precision = choose_precision(config.training.precision)
        self._model: torch.nn.Module | None = None
        self._tokenizer: PreTrainedTokenizerBase | None = None
        self._merged = False
        self.last_result: FitResult | None = None
        from tunekit.data.preparation import TokenizationCache

        self._tokenization = TokenizationCache()

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
        from tunekit.config_merge import merge_overrides

        return cls(merge_overrides(data, overrides))

    @classmethod
    def load(cls, path: str | os.PathLike[str], **overrides: Any) -> Tuner:
        """Restore a tuned model saved by :meth:`save` (or the run directory of :meth:`fit`).

        The result is ready to generate, evaluate or continue training. ``overrides`` replace
        config fields key by key (see :mod:`tunekit.config_merge`), e.g. ``Tuner.load(path, quantizer="none")``
        to reload on a plain base, or ``training={"max_steps": 100}`` keeping the other training fields.
        """
        from tunekit.config_files import read_saved_meta
        from tunekit.run_directory import recover

        path = Path(path)
        recover(path)  # a replacement cut between its two renames is finished (or undone) first
        if (path / "model" / SAVE_META).is_file():
            path = path / "model"
        if not (path / SAVE_META).is_file():
            raise ModelLoadError(
                f"{str(path)!r} is not a directory saved by tunekit (no {SAVE_META}); for a plain "
                "transformers model directory use Tuner(model=path)."
            )
        meta = read_saved_meta(path, SAVE_META, SAVE_CONFIG)  # a ModelLoadError for a corrupt save
        from tunekit.formats import STANDALONE

        if meta["format"] == STANDALONE:
            # a full or merged save is its own base: continuing from it must not go back to the original
            overrides = {"model": str(path), **overrides}
        tuner = cls.from_config(path / SAVE_CONFIG, **overrides)
        tuner._restore(path, meta["format"])
        return tuner

    def _restore(self, saved: Path, fmt: str) -> None:
        """Load what ``save`` wrote: a standalone model is its own base; any other format is the
        strategy's own (a peft adapter, ...), restored onto the original base."""
        from tunekit.formats import STANDALONE

        if fmt == STANDALONE:
            self._load_model(model_path=saved)
        else:
            self._load_model(adapter_path=saved)

    # -- the underlying objects -------------------------------------------------------------
    @property
    def model(self) -> torch.nn.Module:
        """The transformers model (a peft ``PeftModel`` for adapter strategies), prepared for training.

        It lives on this process's device (``accelerate.PartialState().device``: its own GPU under
        torchrun) and is in eval mode (dropout off) until ``fit`` trains it, and again after.
        """
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
        """Load the model and tokenizer (see :func:`tunekit.models.setup.load_for_run`); a saved
        strategy format at ``adapter_path`` is restored onto the base, a standalone save at ``model_path`` is the base."""
        from tunekit.models.setup import load_for_run

        self._model, self._tokenizer, self.config = load_for_run(
            self.config, self.strategy, self.quantizer, self.precision, saved=adapter_path, base_path=model_path
        )

    # -- data -------------------------------------------------------------------------------
    def _prepare(self, train: Any, eval: Any = None, *, split_eval: bool = True, training: bool = False) -> PreparedData:
        """Rows loaded, the objective chosen and the rows tokenized (see :mod:`tunekit.data.preparation`).

        ``training``: ``train`` is what fit trains on (an objective completes its options from it)."""
        from tunekit.data.preparation import complete_objective, learns_from_rows, load_data, tokenize_data

        if learns_from_rows(self.config):
            # An objective that reads its options from the rows (classify: the labels) decides the model
            # that loads, so the rows come first; they need no prompt wrapping (text/label rows).
            rows = load_data(self.config, train, eval, split_eval=split_eval, tokenizer=self._tokenizer)
            config = complete_objective(self.config, rows, training=training)
            if config.objective != self.config.objective:
                self.config = config
                self._model = None  # a model loaded before the labels were known has the wrong head
            tokenizer = self.tokenizer
        else:
            tokenizer = self.tokenizer  # first: loading the model clamps config.training.max_length to its positions
            rows = load_data(self.config, train, eval, split_eval=split_eval, tokenizer=tokenizer)
        return tokenize_data(self.config, rows, tokenizer, self._tokenization)

    # -- the verbs ------------------------------------------------------------------------------
    def fit(
        self,
        train: Any = None,
        eval: Any = None,
        *,
        overwrite: bool = False,
        resume: bool = False,
        accept_changes: bool = False,
        ignore_preflight_errors: bool = False,
        metrics: Sequence[str | Mapping[str, Any]] | None = None,
        baseline: bool = False,
        flags: tuple[str, str] = PYTHON_FLAGS,
    ) -> FitResult:
        """Train on ``train`` (rows, a dataset, a DataFrame or a file path) and return what was measured.

        ``eval`` is evaluated at ``training.eval_steps`` and at the end; without it, a
        ``DatasetDict``'s validation split or ``data.eval_fraction`` of the rows is used.
        The run directory (``output_dir``) gets the config, ``result.json`` and the tuned
        model under ``model/``, and is marked as tunekit's (see :mod:`tunekit.run_directory`).
        An existing run there is refused unless ``overwrite=True``, which trains the new run
        beside it and swaps it in only once it has finished and been saved; a directory tunekit
        did not write, or a run holding files tunekit did not write, is never replaced.
        Pre-flight errors found in the data (EOS never trained, a chat template that would not
        be saved as used) stop ``fit`` unless ``ignore_preflight_errors=True``; warnings are
        logged once. With ``resume=True`` training continues from the newest intact checkpoint in
        ``output_dir`` (adapter or weights, optimizer, scheduler, RNG and data position); a
        checkpoint written with another config or other data is refused, naming the differences,
        unless ``accept_changes=True``; a run that already finished the same budget trains nothing.
        ``flags`` name the overwrite/resume switches in error messages (the CLI passes its own).
        ``metrics`` (as for :meth:`evaluate`; default: the config's ``metrics``) are measured on the eval rows at the end and
        land in ``result.eval_metrics``, ``result.json`` and the run's model card
        (``README.md``, next to ``loss.png``). With ``baseline=True`` the untrained model is scored
        first, on the same eval rows with the same metrics: ``result.base_eval_metrics`` and
        ``result.summary()``'s before/after table (``tunekit fit`` does this when a metric generates).
        """
        from tunekit.config import build_metrics
        from tunekit.plugins import get_plugins
        from tunekit.quiet import quiet_libraries
        from tunekit.run_directory import CLI_FLAGS
        from tunekit.training import recipe
        from tunekit.training.distributed import wait_for_everyone
        from tunekit.training.threads import cpu_threads

        train = train if train is not None else self.config.data.train
        if train is None:
            raise ConfigError([Problem("data.train", "no training data: pass it to fit(), or set data.train to a file")])
        eval = eval if eval is not None else self.config.data.eval
        chosen_metrics = build_metrics(metrics if metrics is not None else self.config.metrics)
        with (
            quiet_libraries(not self.config.training.progress_bar),
            cpu_threads(self.config.training.cpu_threads, self.precision.device),
            self._claim_run(overwrite, resume, flags) as run,
        ):
            plan = self._plan(self._prepare(train, eval, training=True), ignore_preflight_errors, flags)
            accept_flag = "--accept-changes" if flags == CLI_FLAGS else "accept_changes=True"
            start = recipe.start_point(run, plan, resume=resume, accept_changes=accept_changes, accept_flag=accept_flag)
            if start.finished:
                return self._finished(run)
            base = self._final_evaluation(plan, chosen_metrics) if baseline else None  # the model is still untrained
            result = recipe.train_run(run, plan, start, hooks=self._fit_hooks(), evaluate=lambda: self._final_evaluation(plan, chosen_metrics))
            if base is not None:
                result.base_eval_metrics = {"loss": base.loss, **base.metrics}
                result.base_eval_generations = base.generations
            recipe.record_run(run, plan, result, start, save=lambda path: self.save(path, overwrite=True))
            wait_for_everyone()  # every rank is done with the work directory before it moves
            run.publish()
        self.last_result = result
        get_plugins().manager.hook.on_fit_end(tuner=self, result=result)
        return result

    def _plan(self, data: PreparedData, ignore_preflight_errors: bool, flags: tuple[str, str] = PYTHON_FLAGS) -> FitPlan:
        """What this fit trains, once the data passed the pre-flight checks."""
        from tunekit.data.collate import collator_for
        from tunekit.data.pipeline import is_stream
        from tunekit.training.recipe import FitPlan

        if is_stream(data.train) and self.config.training.max_steps is None:
            raise ConfigError([Problem("training.max_steps", (
                "the training data is a stream (an IterableDataset, or streaming: true), whose length is unknown, "
                "so training.epochs cannot say when to stop; set training.max_steps"))])
        # An objective with its own trainer (dpo, grpo) does not train on token labels: they are not audited.
        labelled = data.train if not callable(getattr(data.objective, "trainer", None)) else None
        self._check_before_fit(data.objective_name, data.format, labelled, ignore_preflight_errors, flags, raw=data.rows.train)
        if not is_stream(data.train) and len(data.train) == 0:
            raise TunekitError("no training rows are left after tokenization.")
        trainer = getattr(data.objective, "trainer", None)  # an objective trained by trl's machinery says which
        collator = collator_for(data.objective, self.tokenizer)
        if self.config.training.packing:
            from tunekit.data.collate import PackedRows, PadPerBatch
            from tunekit.training.packing import check_packing

            # an objective with its own batches, loss or trainer would see one flattened row it does not expect
            own = not isinstance(collator, PadPerBatch) or callable(trainer) or callable(getattr(data.objective, "loss", None))
            check_packing(self.model, data.objective_name, batches_itself=own)
            collator = PackedRows()
        return FitPlan(
            config=self.config, data=data, model=self.model, tokenizer=self.tokenizer, strategy_name=self.strategy.name,
            learning_rate=self.config.training.learning_rate or self.strategy.default_learning_rate,
            precision=self.precision, collator=collator,
            loss=getattr(data.objective, "loss", None),  # what the objective needs from training is asked of it
            score_rows=getattr(data.objective, "evaluate_rows", None),
            trainer=trainer(self.model, self.tokenizer) if callable(trainer) else None,
        )

    def _fit_hooks(self) -> FitHooks:
        """The lifecycle hooks of the installed plugins, bound to this Tuner."""
        from tunekit.plugins import get_plugins
        from tunekit.training.recipe import FitHooks

        hook = get_plugins().manager.hook
        return FitHooks(
            on_fit_start=lambda: hook.on_fit_start(tuner=self),
            on_log=lambda step, logs: hook.on_log(tuner=self, step=step, logs=logs),
            on_evaluate=lambda step, metrics: hook.on_evaluate(tuner=self, step=step, metrics=metrics),
        )

    def _final_evaluation(self, plan: FitPlan, chosen_metrics: Any) -> EvalResult | None:
        data = plan.data
        if data.eval is None or not len(data.eval) or data.rows.eval is None:
            return None
        return self._evaluate_rows(data.rows.eval, data.format, data.eval, chosen_metrics, objective=data.objective)

    def _claim_run(self, overwrite: bool, resume: bool, flags: tuple[str, str]) -> Claim:
        """Claim ``output_dir`` (see :mod:`tunekit.run_directory`): the main process first, then the others."""
        from tunekit.run_directory import claim
        from tunekit.training.distributed import is_main_process, wait_for_everyone

        if self.config.output_dir:
            out = Path(self.config.output_dir)
        else:
            model_name = Path(self.config.model).name.removesuffix(".gguf") or "model"
            out = Path("runs") / f"{model_name}-{self.strategy.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        kwargs: dict[str, Any] = {"overwrite": overwrite, "resume": resume, "flags": flags}
        run = claim(out, "fit", **kwargs) if is_main_process() else None
        wait_for_everyone()
        return run if run is not None else claim(out, "fit", main=False, **kwargs)

    def _finished(self, run: Claim) -> FitResult:
        """The result of a run that already finished what was asked: nothing is trained again."""
        log.warning("tunekit: %s already finished this run (same config, data and budget); nothing to train.", run.path)
        result = FitResult.model_validate_json((run.path / RUN_RESULT).read_text(encoding="utf-8"))
        from tunekit.config_files import read_saved_meta

        saved = run.path / "model"
        self._restore(saved, read_saved_meta(saved, SAVE_META, SAVE_CONFIG)["format"])
        self.last_result = result
        return result

    def evaluate(
        self,
        data: Any,
        metrics: Sequence[str | Mapping[str, Any]] | None = None,
        *,
        batch_size: int | None = None,
        max_new_tokens: int | None = None,
    ) -> EvalResult:
        """Score the current model on ``data``, before or after ``fit``.

        ``metrics`` are names of registered metrics, or mappings with options:
        ``["exact_match", {"name": "accuracy", "case_fold": True}]``; by default ``loss`` and
        ``perplexity``. Generation metrics (``exact_match``, ``accuracy``, ``f1``) answer each
        sft row greedily, with at most ``max_new_tokens`` (default: the longest reference + 8).
        ``batch_size`` defaults to ``training.batch_size`` for the loss and to 4 times that for
        generation (which keeps no activations for a backward pass, so it fits where training
        did). Every row of ``data`` is evaluated (``data.eval_fraction`` does not apply).
        """
        from tunekit.config import build_metrics
        from tunekit.config_files import check_positive_int
        from tunekit.quiet import quiet_libraries
        from tunekit.training.threads import cpu_threads

        check_positive_int("evaluate", batch_size=batch_size, max_new_tokens=max_new_tokens)
        chosen = build_metrics(metrics)
        with quiet_libraries(not self.config.training.progress_bar), cpu_threads(self.config.training.cpu_threads, self.precision.device):
            prepared = self._prepare(data, split_eval=False)
            return self._evaluate_rows(
                prepared.rows.train, prepared.format, prepared.train, chosen, batch_size=batch_size, max_new_tokens=max_new_tokens,
                objective=prepared.objective,
            )

    def _evaluate_rows(
        self, rows: Any, row_format: str, tokenized: Any, chosen: Any, *, batch_size: int | None = None, max_new_tokens: int | None = None,
        objective: Any = None,
    ) -> EvalResult:
        from tunekit.evaluation import evaluate as run_evaluation
        from tunekit.training.distributed import inference_module

        # After a sharded (FSDP / ZeRO-3) fit every rank evaluates its share on the sharded module.
        with inference_module(self.model) as model:
            return run_evaluation(
                model,
                self.tokenizer,
                rows,
                row_format,
                tokenized,
                chosen,
                batch_size=batch_size or self.config.training.batch_size,
                generation_batch_size=batch_size or GENERATION_BATCH_FACTOR * self.config.training.batch_size,
                max_new_tokens=max_new_tokens,
                progress=self.config.training.progress_bar,
                trained_logits_only=self.config.training.trained_logits_only,
                shared_prefix=self.config.training.shared_prefix,
                objective=objective,
            )

    def predict(self, texts: str | Sequence[str], *, text_pairs: Sequence[str] | None = None, batch_size: int | None = None) -> list[Any]:
        """Classify ``texts`` with a classification run (``objective='classify'``): one prediction per text,
        with its ``label`` (a list of labels with ``multi_label``) and every class's ``probabilities``.

        >>> # tuner.predict(["what a lovely film"])[0].label -> 'positive'

        Asks the objective (``Objective.predict``); a run whose objective does not classify is a ``ConfigError``.
        """
        from tunekit.config import build_part
        from tunekit.config_files import check_positive_int

        check_positive_int("predict", batch_size=batch_size)
        spec = self.config.objective
        objective = build_part("objective", spec, "objective") if spec is not None else None
        predict = getattr(objective, "predict", None)
        if not callable(predict):
            name = spec.name if spec is not None else "none (sft / causal-lm by the rows)"
            raise ConfigError([Problem("objective", (
                f"predict needs a classification run (objective='classify'); this run's objective is {name}. "
                "Use generate() for a generative model"))])
        from tunekit.training.distributed import inference_module

        with inference_module(self.model) as model:
            return list(predict(
                model, self.tokenizer, [texts] if isinstance(texts, str) else list(texts),
                text_pairs=list(text_pairs) if text_pairs is not None else None,
                batch_size=batch_size or GENERATION_BATCH_FACTOR * self.config.training.batch_size,
                max_length=self.config.training.max_length,
            ))

    def generate(self, prompt: str | list[dict[str, str]], **generate_kwargs: Any) -> str:
        """Continue a text prompt, or answer a chat (a list of messages), and return the new text.

        Greedy with at most 64 new tokens unless ``generate_kwargs`` say otherwise. An empty
        prompt is a ``DataError`` (pass ``tokenizer.bos_token`` for unconditioned text).
        """
        from tunekit.evaluation import generate_text

        return generate_text(self.model, self.tokenizer, prompt, **generate_kwargs)

    # -- saving ---------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Save what was tuned in the strategy's own format (``Strategy.save``: a peft adapter for
        ``lora``, a transformers model directory for ``full`` and ``head``; after :meth:`merge`, always
        a standalone model directory), plus the tokenizer and the config.

        Written to a staging directory beside ``path`` and swapped into place when complete, so
        a crash never leaves a half-written save. An existing save is replaced only with
        ``overwrite=True`` and only if it is a tunekit save holding nothing but what tunekit
        wrote; any other non-empty directory is refused.
        """
        from tunekit.formats import MODEL_DIRECTORY, as_strategy
        from tunekit.run_directory import LOCK, MARKER, claim, disk_error

        # a merged model is a plain transformers model, whatever trained it
        writer = MODEL_DIRECTORY if self._merged else as_strategy(self.strategy)
        model, tokenizer = self.model, self.tokenizer
        with claim(path, "save", overwrite=overwrite, stage=True, what="save path") as target:
            work = target.work
            try:
                saved_format = writer.save(model, work)
                tokenizer.save_pretrained(str(work))
                self.config.to_file(work / SAVE_CONFIG)
                from tunekit.version import __version__

                meta = {"format": saved_format, "strategy": self.strategy.name, "base_model": self.config.model, "tunekit_version": __version__}
                (work / SAVE_META).write_text(json.dumps(meta, indent=2))
                self._make_portable(work, saved_format)
            except Exception as exc:  # a full disk surfaces as OSError, RuntimeError or the Rust libraries' Exception
                error = disk_error(exc, work)
                if error is exc:
                    raise
                raise error from exc
            target.record(*(p.name for p in work.iterdir() if p.name not in (MARKER, LOCK)))
            return target.publish()

    def _make_portable(self, work: Path, saved_format: str) -> None:
        """Name the base in ``adapter_config.json`` as the config does (a hub id or alias, not this machine's
        cache path of a converted GGUF) and write a real model card over peft's empty template."""
        from tunekit.model_card import MODEL_CARD, save_card

        adapter_config = work / "adapter_config.json"
        if adapter_config.is_file():
            data = json.loads(adapter_config.read_text(encoding="utf-8"))
            data["base_model_name_or_path"] = self.config.model
            adapter_config.write_text(json.dumps(data, indent=2, sort_keys=True), encoding="utf-8")
        card = save_card(self.config, self.strategy.name, saved_format, self.last_result)
        (work / MODEL_CARD).write_text(card, encoding="utf-8")

    def preflight(self, data: Any = None, *, estimate: bool = True, sample_rows: int = 2000) -> Any:
        """Audit a run before it starts; returns a :class:`tunekit.preflight.PreflightReport`.

        Token statistics after the objective (on up to ``sample_rows`` rows), a label audit with
        the trained text marked, the chat-template check, trainable parameters by block, and,
        with ``estimate``, peak memory and time per step measured on the longest real batch.
        Nothing is trained and no weight changes.
        """
        from tunekit.data.preparation import load_data
        from tunekit.formats import as_strategy
        from tunekit.preflight import audit

        data = data if data is not None else self.config.data.train
        if data is None:
            raise ConfigError([Problem("data.train", "no data to audit: pass it to preflight(), or set data.train")])
        model, tokenizer = self.model, self.tokenizer  # first: loading clamps max_length to the model's positions
        return audit(
            self.config, model, tokenizer, load_data(self.config, data, tokenizer=tokenizer), estimate=estimate, sample_rows=sample_rows,
            trains_tied_weights=as_strategy(self.strategy).trains_tied_weights, tokenization=self._tokenization,
        )

    def _check_before_fit(
        self, objective: str, row_format: str, train_rows: Any, ignore_errors: bool, flags: tuple[str, str] = PYTHON_FLAGS,
        raw: Any = None,
    ) -> None:
        from tunekit import preflight as pf
        from tunekit.data.pipeline import head
        from tunekit.run_directory import CLI_FLAGS

        findings = pf.template_findings(self.tokenizer, row_format)
        if train_rows is not None:  # of a stream: its first rows, read (and tokenized) once more
            findings += pf.label_findings(objective, head(train_rows, 200), self.tokenizer)
        if raw is not None:
            findings += pf.boundary_findings(head(raw, 200), row_format) + pf.pair_findings(head(raw, 200), row_format)
        for finding in findings:
            if finding.severity == "warning":
                log.warning("tunekit preflight: %s", finding.message)
        errors = [f for f in findings if f.severity == "error"]
        if errors and not ignore_errors:
            raise pf.PreflightError(
                "pre-flight checks found problems that would waste this run:\n"
                + "\n".join(f"  [{f.code}] {f.message}" for f in errors)
                + "\nFix them, or "
                + ("pass --ignore-preflight-errors" if flags == CLI_FLAGS else "pass fit(..., ignore_preflight_errors=True)")
                + " to train anyway."
            )

    def merge(self) -> torch.nn.Module:
        """Fold what was tuned into the model (``Strategy.merge``) and return the plain transformers model.

        For LoRA adapters the merge is verified: the merged model's logits must match the adapter
        model's on probe inputs (see :mod:`tunekit.merging` for the tolerance), or
        ``MergeVerificationError`` is raised and the adapter model is left intact; a strategy that
        trains the model's own weights (``full``, ``head``) returns it unchanged. Refused on a
        quantized base: the merged weights would be rounded back to 4/8 bits.
        """
        if self._merged:
            return self.model
        if self.quantizer.quantizes_base:
            raise TunekitError(
                f"merging what {self.strategy.name!r} trained into a {self.quantizer.name!r} base would round "
                "the merged weights to its precision. Save it, then reload it on a plain base and merge there: "
                "Tuner.load(path, quantizer='none').save_merged(out)."
            )
        from tunekit.formats import as_strategy

        self._model = as_strategy(self.strategy).merge(self.model, self.tokenizer)
        self._merged = True
        return self._model

    def save_merged(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Merge (:meth:`merge`) and save a standalone transformers model that plain ``from_pretrained`` loads."""
        self.merge()
        return self.save(path, overwrite=overwrite)

    def export(
        self, path: str | os.PathLike[str], *, type: str = "f16", overwrite: bool = False  # noqa: A002
    ) -> Path:
        """Merge (:meth:`merge`) and write one GGUF file for llama.cpp / Ollama (``f32``, ``f16``, ``q8_0``, ``q4_0``).

        Llama, Mistral and Qwen2 models with byte-level BPE tokenizers; see docs/export.md.
        """
        from tunekit.export import export_gguf

        return export_gguf(self.merge(), self.tokenizer, path, type=type, overwrite=overwrite)  # type: ignore[arg-type]
