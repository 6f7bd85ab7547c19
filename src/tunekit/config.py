"""The run configuration: one pydantic model, ``TuneConfig``, with a nested model per section.

Parts (strategy, quantizer, objective, dataset adapter) are named by a string or by a mapping
with their options; each part's options are validated by that part's own ``Options`` model,
and every problem in a configuration is reported together, with dotted locations::

    >>> from tunekit import TuneConfig, ConfigError
    >>> try:
    ...     TuneConfig(model="gpt2", strategy={"name": "lora", "rank": 0},
    ...                training={"learning_rate": -1})
    ... except ConfigError as err:
    ...     print(err)
    Invalid tunekit configuration (2 problems):
      training.learning_rate: must be > 0.0 (got -1)
      strategy.rank: must be >= 1 (got 0)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveInt,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from tunekit.errors import ConfigError, Problem, UnknownPartError

if TYPE_CHECKING:
    from tunekit.parts import Reward

MAX_CPU_THREADS = 1024
"""The most ``training.cpu_threads`` accepts."""

# Floats must be finite: epochs=inf would train forever, and nan compares false with every bound.
_STRICT = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

MAX_SEED = 2**32 - 1
"""numpy seeds with 32-bit values; a bigger seed would fail deep inside set_seed."""


class PartSpec(BaseModel):
    """A part named by a string (``"lora"``) or a mapping (``{"name": "lora", "rank": 16}``).

    Dumps to the flat mapping form with every option filled in, so a saved configuration
    says exactly what ran.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="Registered name of the part.")
    options: dict[str, Any] = Field(default_factory=dict, description="The part's own options.")

    @model_validator(mode="before")
    @classmethod
    def _from_name_or_mapping(cls, value: Any) -> Any:
        if isinstance(value, PartSpec):
            return value
        if isinstance(value, str):
            return {"name": value, "options": {}}
        if isinstance(value, Mapping):
            data = dict(value)
            if "name" not in data:
                raise ValueError(
                    "a part given as a mapping needs a 'name' key, e.g. {'name': 'lora', 'rank': 16}"
                )
            name = data.pop("name")
            options = data.pop("options", {}) or {}
            if not isinstance(options, Mapping):
                raise ValueError(
                    f"'options' must be a mapping of the part's options, got {type(options).__name__}; "
                    "or give the options next to 'name', e.g. {'name': 'lora', 'rank': 16}"
                )
            options = dict(options)
            options.update(data)
            return {"name": name, "options": options}
        raise ValueError(
            f"must be a part name (a string) or a mapping with a 'name' key, got {type(value).__name__}"
        )

    @model_serializer(mode="plain")
    def _flat(self) -> dict[str, Any]:
        return {"name": self.name, **self.options}


CHAT_TEMPLATE_MODES = ("auto", "always", "never")
"""``data.chat_template`` keywords; any other value is a Jinja template."""


def is_template_text(value: str | None) -> bool:
    """Whether ``data.chat_template`` holds a Jinja template (not None, not a mode keyword)."""
    return bool(value) and value not in CHAT_TEMPLATE_MODES


class DatasetSource(BaseModel):
    """A dataset loaded with ``datasets.load_dataset``: from the Hugging Face hub (``org/name``),
    a loader with local files (``path: json, data_files: ...``), or a local folder of data files."""

    model_config = _STRICT

    path: str = Field(
        min_length=1,
        description="What datasets.load_dataset is given: a hub id (org/name), a builder with data_files "
        "(json, csv, parquet, text), or a local folder of data files.",
    )
    split: str = Field(
        default="train",
        description="The split to read, with datasets' slicing: 'train', 'train[:90%]', 'test[:200]'.",
    )
    name: str | None = Field(default=None, description="The dataset's configuration name, if it has several.")
    data_files: str | list[str] | dict[str, str | list[str]] | None = Field(
        default=None, description="Files (or glob patterns) for a builder such as json or csv."
    )
    revision: str | None = Field(default=None, description="A git revision (branch, tag, commit) of a hub dataset.")
    streaming: bool = Field(
        default=False,
        description="Read rows lazily as training consumes them (an IterableDataset): for data too large "
        "to download first. Needs training.max_steps.",
    )

    def describe(self) -> str:
        parts = [self.path] + [f"{k}={v}" for k, v in (("name", self.name), ("split", self.split), ("revision", self.revision)) if v]
        return " ".join(parts) + (" (streaming)" if self.streaming else "")


class DataOptions(BaseModel):
    """How user data is read and split."""

    model_config = _STRICT

    train: str | DatasetSource | None = Field(
        default=None,
        description="The training data, used when fit() is given none (and by `tunekit fit`): a data "
        "file (.jsonl/.json/.csv/.parquet/.txt), a folder written by datasets' save_to_disk, or a "
        "mapping {path, split, name, data_files, revision, streaming} for datasets.load_dataset.",
    )
    eval: str | DatasetSource | None = Field(
        default=None, description="Evaluation data, in the same forms as data.train, used when fit() is given none."
    )
    adapter: PartSpec | None = Field(
        default=None,
        description="Dataset adapter to use; None picks the first installed adapter that "
        "understands the data source.",
    )
    columns: dict[str, str] = Field(
        default_factory=dict,
        description="Rename columns before the row format is detected: {'question': 'prompt', "
        "'answer': 'completion'}.",
    )
    eval_fraction: float | None = Field(
        default=None,
        gt=0,
        lt=1,
        description="Hold out this fraction of the training rows for evaluation when no eval "
        "data is given (the split is seeded by training.seed).",
    )
    add_tokens: list[str] = Field(
        default_factory=list,
        description="New special tokens (e.g. ['<|tool|>']) added to the tokenizer; the embeddings are resized "
        "for them and, under LoRA, just their rows of the input embedding are trained as well "
        "(peft's trainable_token_indices). Saved with the tokenizer and restored on load.",
    )
    chat_template: str = Field(
        default="auto",
        min_length=1,
        description="How rows meet the chat template. 'auto': when the tokenizer has a chat template (an "
        "instruct model), prompt/completion rows are rendered as a user turn and an assistant turn, as at "
        "inference; 'always': the same, an error without a template; 'never': prompt and completion are "
        "concatenated as they are. Any other value is a Jinja template that replaces the tokenizer's own "
        "(saved with it) and wraps prompt/completion rows as 'auto' does. Chat rows always use the template; "
        "a run's saved config records 'always' or 'never', as resolved.",
    )

    @field_validator("chat_template")
    @classmethod
    def _mode_or_template(cls, value: str) -> str:
        # A misspelt keyword ("Auto", "nevr") would otherwise become a template that renders itself.
        if value not in CHAT_TEMPLATE_MODES and "{{" not in value and "{%" not in value:
            raise ValueError(
                f"{value[:40]!r} is neither one of {', '.join(CHAT_TEMPLATE_MODES)} nor a Jinja chat template "
                "(one with {{ ... }} or {% ... %}); use 'auto' to follow the tokenizer."
            )
        return value


OPTIMIZERS: dict[str, str] = {
    "adamw": "adamw_torch",
    "adamw_8bit": "adamw_bnb_8bit",
    "paged_adamw": "paged_adamw_32bit",
    "paged_adamw_8bit": "paged_adamw_8bit",
    "adafactor": "adafactor",
    "sgd": "sgd",
}
"""tunekit's optimizer names and transformers' ``TrainingArguments.optim`` names they stand for."""

NEEDS_BITSANDBYTES = ("adamw_8bit", "paged_adamw", "paged_adamw_8bit")
"""Optimizers whose state lives in bitsandbytes' 8-bit or paged buffers (CUDA only)."""


class EarlyStopping(BaseModel):
    """Stop when the eval loss has not improved for ``patience`` evaluations; the best checkpoint is restored."""

    model_config = _STRICT

    patience: int = Field(default=3, ge=1, description="Evaluations without improvement before training stops.")
    min_delta: float = Field(
        default=0.0, ge=0, description="The least drop of the eval loss that counts as an improvement."
    )
    metric: Literal["loss"] = Field(
        default="loss",
        description="What is watched: the eval loss (the only metric computed at every evaluation during training).",
    )


class TrainingOptions(BaseModel):
    """Optimisation and bookkeeping options."""

    model_config = _STRICT

    epochs: float = Field(default=1.0, gt=0, description="Passes over the training data.")
    max_steps: int | None = Field(
        default=None, ge=1, description="Stop after this many optimizer steps (overrides epochs)."
    )
    batch_size: int = Field(default=8, ge=1, description="Rows per device per step.")
    gradient_accumulation: int = Field(
        default=1, ge=1, description="Micro-batches accumulated per optimizer step."
    )
    learning_rate: float | None = Field(
        default=None,
        gt=0,
        description="Peak learning rate; None uses the strategy's default (LoRA 2e-4, full 2e-5, "
        "head 5e-4).",
    )
    scheduler: Literal[
        "linear", "cosine", "constant", "constant_with_warmup", "cosine_with_restarts", "polynomial"
    ] = Field(default="linear", description="Learning-rate schedule after warmup.")
    warmup_ratio: float = Field(
        default=0.0, ge=0, lt=1, description="Fraction of the steps spent warming up."
    )
    weight_decay: float = Field(default=0.0, ge=0, description="AdamW weight decay.")
    max_grad_norm: float = Field(default=1.0, gt=0, description="Gradient clipping norm.")
    max_length: int = Field(
        default=512, ge=8, description="Longest sequence in tokens; longer rows are truncated "
        "(sft) or split into blocks (causal-lm)."
    )
    seed: int = Field(
        default=42, ge=0, le=MAX_SEED, description="Seed for weights init, shuffling and dropout (0 to 2^32 - 1)."
    )
    logging_steps: int | None = Field(
        default=None,
        ge=1,
        description="Log the loss every N steps; None: every step on runs of up to 100 steps, then about 50 "
        "points over the run (steps // 50), so the progress bar and loss.png follow short runs step by step.",
    )
    eval_steps: int | None = Field(
        default=None, ge=1, description="Evaluate every N steps (None: once at the end)."
    )
    save_steps: int | None = Field(
        default=None, ge=1, description="Write a checkpoint every N steps (None: no checkpoints)."
    )
    keep_checkpoints: int | None = Field(
        default=2, ge=1, description="Keep only the N newest checkpoints (None: keep all)."
    )
    gradient_checkpointing: bool = Field(
        default=False, description="Recompute activations in the backward pass to save memory."
    )
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        default="auto",
        description="'auto' picks bf16 on GPUs that support it, fp16 on other GPUs, fp32 on "
        "CPUs (bf16 autocast on a CPU without native support is an order of magnitude slower).",
    )
    group_by_length: bool = Field(
        default=True,
        description="Batch rows of similar length together so little compute goes to padding.",
    )
    trained_logits_only: bool | Literal["auto"] = Field(
        default="auto",
        description="Project onto the vocabulary only the positions whose next token is trained "
        "(not the masked prompt, not the padding): the same loss and gradients with less memory and "
        "time. 'auto': when the output head has at least 2^20 weights (any real LLM; on toy models "
        "it saves nothing measurable). Models whose forward cannot skip positions keep "
        "their own loss.",
    )
    shared_prefix: bool | Literal["auto"] = Field(
        default="auto",
        description="Run the tokens every row of a batch starts with (a chat template's system prompt) once "
        "per batch, not once per row: the same loss and gradients with fewer positions through the model. "
        "'auto': where the model's KV cache allows it, in single-process runs without gradient checkpointing, "
        "for batches where it saves at least 10% of the positions. true: the same, but an error where it "
        "cannot apply.",
    )
    packing: bool = Field(
        default=False,
        description="Padding-free batches: a batch's rows side by side in one sequence, positions restarting at "
        "each row, attention kept within each row (checked once per model: packed logits must equal the rows' "
        "own, else an error). For sft and causal-lm. Off by default: length-grouped batches leave little padding.",
    )
    progress_bar: bool = Field(default=True, description="Show a progress bar during fit.")
    cpu_threads: PositiveInt | Literal["auto"] | None = Field(
        default="auto",
        description="torch's CPU threads during fit and evaluate. 'auto': on a CPU run, all cores on an idle "
        "machine and fewer when other processes keep them busy (threads that wait on each other at every "
        "operation make a step several times slower); it leaves torch alone on a GPU and when OMP_NUM_THREADS "
        "is set. A number sets it; null leaves torch's own setting. The process's setting is restored after.",
    )
    optimizer: Literal["adamw", "adamw_8bit", "paged_adamw", "paged_adamw_8bit", "adafactor", "sgd"] = Field(
        default="adamw",
        description="'adamw' (torch's AdamW, fp32 state), 'adamw_8bit' (bitsandbytes' 8-bit state, a quarter of "
        "the memory), 'paged_adamw' / 'paged_adamw_8bit' (bitsandbytes, state paged to CPU memory under "
        "pressure), 'adafactor' (factored second moments, no first moment), 'sgd'. The bitsandbytes ones need a "
        "CUDA GPU.",
    )
    report_to: list[str] = Field(
        default_factory=list,
        description="Experiment trackers that get the training logs and tunekit's own figures: any of "
        "transformers' integrations ('tensorboard', 'mlflow', 'trackio', 'wandb', ...), each installed "
        "separately (pip install 'tunekit[tensorboard]'). TensorBoard writes into the run directory's "
        "'tensorboard/' folder; the others use their own settings (MLFLOW_TRACKING_URI, ...).",
    )
    run_name: str | None = Field(
        default=None, description="The run's name in the trackers; None: the output directory's name."
    )
    early_stopping: EarlyStopping | None = Field(
        default=None,
        description="Stop when the eval loss stops improving, e.g. {patience: 3}; needs eval data and "
        "training.eval_steps; checkpoints are saved at every evaluation and the best one is restored at the end.",
    )
    neftune_alpha: float | None = Field(
        default=None,
        gt=0,
        description="NEFTune: add uniform noise of this scale (alpha / sqrt(length x width)) to the input "
        "embeddings while training (5 is the paper's usual value); None: off.",
    )

    @field_validator("report_to", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        if value in (None, "none"):
            return []
        return [value] if isinstance(value, str) else value

    @field_validator("cpu_threads", mode="before")
    @classmethod
    def _no_bool_threads(cls, value: Any) -> Any:
        if isinstance(value, bool):  # pydantic would read True as 1 thread
            raise ValueError("give a number of threads, 'auto' or null, not a boolean")
        if isinstance(value, int) and value > MAX_CPU_THREADS:  # torch would try to start them all
            raise ValueError(f"{value} threads is past any machine's cores; give at most {MAX_CPU_THREADS}, or 'auto'")
        return value

    @model_validator(mode="after")
    def _check_early_stopping(self) -> TrainingOptions:
        if self.early_stopping is None:
            return self
        if self.eval_steps is None:
            raise ValueError(
                "early_stopping needs training.eval_steps (how often the eval loss is measured), e.g. eval_steps: 20"
            )
        if self.save_steps is not None and self.save_steps % self.eval_steps:
            raise ValueError(
                f"with early_stopping, training.save_steps ({self.save_steps}) must be a multiple of "
                f"training.eval_steps ({self.eval_steps}) so the best evaluation has a checkpoint; or leave "
                "save_steps unset (a checkpoint at every evaluation)"
            )
        return self

    def planned_steps(self, train_rows: int) -> int:
        """The optimizer steps a fit on ``train_rows`` rows takes: ``max_steps``, or the epochs' worth
        (the Trainer's count: every partial batch of an epoch is a step)."""
        if self.max_steps is not None:
            return self.max_steps
        per_step = self.batch_size * self.gradient_accumulation
        return max(1, math.ceil(math.ceil(train_rows / per_step) * self.epochs))


class TuneConfig(BaseModel):
    """Everything that defines a fine-tuning run.

    >>> cfg = TuneConfig(model="gpt2", strategy={"name": "lora", "rank": 16})
    >>> cfg.strategy.options["rank"]
    16
    >>> TuneConfig.model_validate(cfg.model_dump()) == cfg
    True
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=False)

    model: str = Field(
        description="A hub id ('gpt2'), a local model directory, or a .gguf file.",
        min_length=1,
    )
    strategy: PartSpec = Field(
        default_factory=lambda: PartSpec(name="lora"),
        description="Which parameters train: 'full', 'head', 'lora' or a plugin's.",
    )
    quantizer: PartSpec = Field(
        default_factory=lambda: PartSpec(name="none"),
        description="How the base is loaded: 'none', 'bnb-8bit', 'bnb-4bit' or a plugin's.",
    )
    objective: PartSpec | None = Field(
        default=None,
        description="'sft' (loss on the answer only), 'causal-lm' (loss on every token) or 'classify' (a "
        "classification head on text/label rows); None picks 'sft' for prompt/completion or chat rows and "
        "'causal-lm' for raw text.",
    )
    data: DataOptions = Field(default_factory=DataOptions, description="How data is read.")
    metrics: list[PartSpec] | None = Field(
        default=None,
        description="What fit measures on the eval rows at the end, as names or mappings with "
        "options, e.g. ['loss', 'exact_match'] or [{name: exact_match, case_fold: true}]; "
        "None: loss and perplexity. fit(metrics=...) overrides it.",
    )
    training: TrainingOptions = Field(
        default_factory=TrainingOptions, description="Optimisation options."
    )
    output_dir: str | None = Field(
        default=None,
        description="Where fit writes checkpoints and the final model; None uses "
        "runs/<model>-<strategy>-<time>.",
    )
    trust_remote_code: bool = Field(
        default=False, description="Allow model repositories to run their own Python code."
    )
    revision: str | None = Field(default=None, description="Hub revision (branch, tag, commit).")

    @model_validator(mode="wrap")
    @classmethod
    def _validate_with_parts(cls, data: Any, handler: Any) -> TuneConfig:
        problems: list[Problem] = []
        try:
            cfg: TuneConfig | None = handler(data)
        except ValidationError as exc:
            # model_validate() runs our __init__, whose own pass already validated the parts and
            # raised a complete ConfigError: take its problems as they are.
            nested = [e["ctx"]["error"] for e in exc.errors() if isinstance((e.get("ctx") or {}).get("error"), ConfigError)]
            if nested:
                raise _Problems(nested[0].problems) from None
            problems.extend(problems_from_validation(exc, cls))
            cfg = None
        if isinstance(data, Mapping) or cfg is not None:
            problems.extend(_validate_parts(data if cfg is None else cfg, fill=cfg is not None))
        if problems:
            raise _Problems(problems)
        assert cfg is not None
        return cfg

    # Wrap pydantic's entry points so a user's mistake is a ConfigError, never a raw ValidationError.
    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise config_error(exc) from None

    @classmethod
    def model_validate(cls, obj: Any, **kwargs: Any) -> TuneConfig:  # type: ignore[override]
        if isinstance(obj, Mapping) and any(not isinstance(k, str) for k in obj):
            # pydantic would pass them on as keyword arguments: a TypeError, not a located problem
            raise ConfigError([
                Problem(repr(k), f"option names are strings; got the {type(k).__name__} {k!r} (a YAML key "
                        "such as true: or 1: is read as a bool or a number: quote it)")
                for k in obj if not isinstance(k, str)
            ])
        try:
            return super().model_validate(obj, **kwargs)
        except ValidationError as exc:
            raise config_error(exc) from None

    @classmethod
    def from_file(cls, path: str | Path) -> TuneConfig:
        """Read a configuration from a ``.yaml``/``.yml``, ``.toml`` or ``.json`` file."""
        return cls.model_validate(read_config_file(path))

    def to_file(self, path: str | Path) -> Path:
        """Write the configuration (every default filled in) as YAML, TOML-free and round-trippable."""
        import yaml

        path = Path(path)
        path.write_text(yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False))
        return path


class _Problems(ValueError):
    """Carries collected problems out of a validator (pydantic wraps it in a ValidationError)."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("; ".join(map(str, problems)))


def model_max_positions(model: Any) -> tuple[int, str] | None:
    """The longest sequence ``model`` can embed, with the config field that says so
    (``max_position_embeddings`` or ``n_positions``), or None when its config names none."""
    config = getattr(model, "config", None)
    for field in ("max_position_embeddings", "n_positions"):
        value = getattr(config, field, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value, field
    return None


def clamp_max_length(config: TuneConfig, model: Any) -> TuneConfig:
    """``config`` with ``training.max_length`` lowered to the model's position limit (logging a
    warning), or ``config`` itself when it fits. Longer sequences would index past the position
    embeddings inside the forward pass. The caller's config object is never changed."""
    import logging

    found = model_max_positions(model)
    if found is None or config.training.max_length <= found[0]:
        return config
    limit, field = found
    logging.getLogger(__name__).warning(
        "tunekit: training.max_length=%d is longer than the model's %d positions (config.%s); "
        "using max_length=%d. Set training.max_length to at most %d to silence this warning.",
        config.training.max_length, limit, field, limit, limit,
    )
    training = config.training.model_copy(update={"max_length": limit})
    return config.model_copy(update={"training": training})


def check_generation_fits(model: Any, prompt_tokens: int, max_new_tokens: Any) -> None:
    """A ``DataError`` when a prompt of ``prompt_tokens`` plus ``max_new_tokens`` new tokens runs past
    the model's positions (a model with learned position embeddings fails there with an IndexError)."""
    from tunekit.errors import DataError

    found = model_max_positions(model)
    if found is None or not isinstance(max_new_tokens, int) or prompt_tokens + max_new_tokens <= found[0]:
        return
    limit, field = found
    room = limit - prompt_tokens
    fix = f"lower max_new_tokens to at most {room}" if room > 0 else "shorten the prompt"
    raise DataError(
        f"the prompt is {prompt_tokens} tokens and max_new_tokens={max_new_tokens}, but the model has only "
        f"{limit} positions (config.{field}); {fix}."
    )


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Parse a YAML, TOML or JSON config file into a mapping, with clear errors for bad syntax.

    Reading is bounded and strict (see :mod:`tunekit.config_files`): a size cap, limited YAML
    aliases, string keys only, no key given twice, and no ``overwrite`` key.
    """
    from tunekit.config_files import read_config_file as read

    return read(path)


def _validate_parts(source: Any, *, fill: bool) -> list[Problem]:
    """Validate each part's options with its own model; with ``fill``, store the validated options."""
    from tunekit.plugins import get_registry

    problems: list[Problem] = []
    specs: dict[str, tuple[str, PartSpec | None]] = {}
    for field, kind in (("strategy", "strategy"), ("quantizer", "quantizer"), ("objective", "objective")):
        specs[field] = (kind, _get_spec(source, field))
    adapter_spec = None
    data_section = source.data if isinstance(source, TuneConfig) else (source.get("data") if isinstance(source, Mapping) else None)
    if isinstance(data_section, DataOptions):
        adapter_spec = data_section.adapter
    elif isinstance(data_section, Mapping) and data_section.get("adapter") is not None:
        adapter_spec = _try_spec(data_section["adapter"])
    specs["data.adapter"] = ("dataset_adapter", adapter_spec)

    instances: dict[str, Any] = {}
    for location, (kind, spec) in specs.items():
        if spec is None:
            continue
        found = validated_options(get_registry(kind), spec, location, problems)
        if found is None:
            continue
        reg, options = found
        instances[location] = reg.cls(options)
        if fill and isinstance(source, TuneConfig):
            filled = PartSpec(name=spec.name, options=options.model_dump(mode="python"))
            owner, attr = (source.data, "adapter") if location == "data.adapter" else (source, location)
            object.__setattr__(owner, attr, filled)
    metric_specs = source.metrics if isinstance(source, TuneConfig) else (source.get("metrics") if isinstance(source, Mapping) else None)
    # Names and mappings are checked against the metric registry; anything else is reported by
    # pydantic's own pass.
    if isinstance(metric_specs, list) and all(isinstance(m, (str, Mapping, PartSpec)) for m in metric_specs):
        try:
            build_metrics(metric_specs)
        except ConfigError as exc:
            problems.extend(exc.problems)
    if "strategy" in instances and "quantizer" in instances:
        why = instances["strategy"].check_quantizer(instances["quantizer"])
        if why:
            problems.append(Problem("strategy", why))
    return problems


def validated_options(registry: Any, spec: PartSpec, location: str, problems: list[Problem]) -> tuple[Any, Any] | None:
    """``(registration, options)`` for a spec, or None with its problem added (unknown part, bad options)."""
    if spec.name not in registry:
        problems.append(Problem(location, registry.unknown_message(spec.name), "unknown_part"))
        return None
    reg = registry.get(spec.name)
    try:
        return reg, reg.options_model.model_validate(spec.options)
    except ValidationError as exc:
        problems.extend(problems_from_validation(exc, reg.options_model, prefix=location))
        return None


def _get_spec(source: Any, field: str) -> PartSpec | None:
    if isinstance(source, TuneConfig):
        return getattr(source, field)  # type: ignore[no-any-return]
    if not isinstance(source, Mapping):
        return None
    if field not in source:
        default = TuneConfig.model_fields[field].get_default(call_default_factory=True)
        return default if isinstance(default, PartSpec) else None
    return _try_spec(source[field])


def _try_spec(value: Any) -> PartSpec | None:
    if value is None:
        return None
    try:
        return PartSpec.model_validate(value)
    except ValidationError:
        return None  # reported by the main validation


_MESSAGES = {
    "greater_than_equal": "must be >= {ge}",
    "greater_than": "must be > {gt}",
    "less_than_equal": "must be <= {le}",
    "less_than": "must be < {lt}",
    "missing": "is required",
}


def problems_from_validation(
    exc: ValidationError, model: type[BaseModel] | None = None, *, prefix: str = ""
) -> list[Problem]:
    """Turn a pydantic ``ValidationError`` into problems with dotted locations and plain messages."""
    problems: list[Problem] = []
    for err in exc.errors():
        ctx = err.get("ctx") or {}
        inner = ctx.get("error")
        if isinstance(inner, (_Problems, ConfigError)):
            problems.extend(inner.problems)
            continue
        loc_parts = [str(p) for p in err["loc"] if not str(p).startswith("function-")]
        location = ".".join(([prefix] if prefix else []) + loc_parts)
        kind = err["type"]
        if kind in _MESSAGES:
            message = _MESSAGES[kind].format(**ctx) + _got(err)
        elif kind == "extra_forbidden":
            valid = _fields_at(model, loc_parts[:-1])
            message = f"unknown option {loc_parts[-1]!r}" + (
                f"; valid options here: {', '.join(valid)}" if valid else ""
            )
        elif kind == "value_error" and isinstance(inner, Exception):
            message = str(inner)
        else:
            message = err["msg"][0].lower() + err["msg"][1:] + _got(err)
        problems.append(Problem(location, message))
    return problems


def _got(err: Any) -> str:
    if err["type"] == "missing":
        return ""
    value = err.get("input")
    text = repr(value)
    return f" (got {text if len(text) <= 60 else text[:57] + '...'})"


def _fields_at(model: type[BaseModel] | None, path: list[str]) -> list[str]:
    current: Any = model
    for name in path:
        field = getattr(current, "model_fields", {}).get(name)
        if field is None:
            return []
        annotation = field.annotation
        current = next(
            (a for a in (annotation, *getattr(annotation, "__args__", ())) if hasattr(a, "model_fields")),
            None,
        )
        if current is None or current is PartSpec:
            return []
    return list(getattr(current, "model_fields", {}))


def config_error(exc: ValidationError) -> ConfigError:
    """The ``ConfigError`` for a pydantic ``ValidationError`` raised while validating a TuneConfig."""
    problems = problems_from_validation(exc, TuneConfig)
    if any(p.code == "unknown_part" for p in problems):
        return UnknownPartError(problems)
    return ConfigError(problems)


# -- building parts from their specs ---------------------------------------------------------------
def build_part(kind: str, spec: PartSpec, location: str) -> Any:
    """The part a spec names, built from the registry with its validated options."""
    from tunekit.plugins import get_registry

    reg = get_registry(kind).get(spec.name, location=location)
    return reg.cls(reg.options_model.model_validate(spec.options))


DEFAULT_METRICS = ("loss", "perplexity")
"""What ``Tuner.evaluate`` measures when it is given no ``metrics``."""


@dataclass(frozen=True)
class ChosenMetric:
    """A metric part, built with its validated options, under the name it is reported as."""

    name: str
    metric: Any

    @property
    def needs(self) -> str:
        return str(getattr(self.metric, "needs", "loss"))


def build_metrics(specs: Sequence[str | Mapping[str, Any] | PartSpec] | str | Mapping[str, Any] | None) -> list[ChosenMetric]:
    """Metric parts for ``specs``: names (``"exact_match"``), mappings with options
    (``{"name": "exact_match", "case_fold": True}``) or ``PartSpec``s (a config's ``metrics``).
    Every problem is reported at once."""
    if specs is None:
        specs = DEFAULT_METRICS
    if isinstance(specs, (str, Mapping)):
        specs = [specs]
    built, problems = _built_parts("metric", specs, lambda i: f"metrics.{i}")
    chosen: list[ChosenMetric] = []
    for name, part, where in built:
        if any(c.name == name for c in chosen):
            problems.append(Problem(where, f"metric {name!r} is asked for twice; ask for each metric once"))
            continue
        chosen.append(ChosenMetric(name, part))
    if problems:
        _raise_problems(problems)
    if not chosen:
        raise ConfigError([Problem("metrics", "ask for at least one metric, e.g. ['loss', 'exact_match']")])
    return chosen


def _built_parts(kind: str, specs: Sequence[Any], where_of: Any) -> tuple[list[tuple[str, Any, str]], list[Problem]]:
    """``(name, part, location)`` of every spec that validates as a registered part of ``kind``, and the
    problems of the others (each located by ``where_of(index)``)."""
    from tunekit.plugins import get_registry

    registry = get_registry(kind)
    built: list[tuple[str, Any, str]] = []
    problems: list[Problem] = []
    for i, spec in enumerate(specs):
        where = where_of(i)
        try:
            part = PartSpec.model_validate(spec)
        except ValidationError as exc:
            problems.extend(problems_from_validation(exc, prefix=where))
            continue
        found = validated_options(registry, part, where, problems)
        if found is not None:
            reg, options = found
            built.append((part.name, reg.cls(options), where))
    return built, problems


def _raise_problems(problems: list[Problem]) -> None:
    raise (UnknownPartError if any(p.code == "unknown_part" for p in problems) else ConfigError)(problems)


def build_rewards(
    specs: Sequence[str | Mapping[str, Any] | PartSpec] | str | Mapping[str, Any], *, location: str = "rewards"
) -> list[Reward]:
    """Reward parts (:class:`tunekit.parts.Reward`) for ``specs``: names (``"exact_match"``), mappings
    with options (``{"name": "regex", "pattern": "[0-9]+"}``) or ``PartSpec``s, in order.

    Every problem is reported at once, located under ``location`` (``objective.rewards[1].pattern``
    for ``location="objective.rewards"``); an unknown name lists the installed rewards. A reward may
    be asked for more than once (with different options).

    >>> [r.name for r in build_rewards(["exact_match", {"name": "length", "max_chars": 200}])]
    ['exact_match', 'length']
    """
    if isinstance(specs, (str, Mapping, PartSpec)):
        specs = [specs]
    built, problems = _built_parts("reward", specs, lambda i: f"{location}[{i}]")
    if problems:
        _raise_problems(problems)
    chosen: list[Reward] = [part for _, part, _ in built]
    if not chosen:
        raise ConfigError([Problem(location, "ask for at least one reward, e.g. ['exact_match']")])
    return chosen
