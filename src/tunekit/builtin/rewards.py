"""Rewards (GRPO's reward functions): ``exact_match``, ``regex``, ``length`` and ``model``.

Each scores a batch of completions, one float per completion, higher is better (see
:class:`tunekit.parts.Reward`). ``exact_match`` compares with the row's reference answer;
``regex`` and ``length`` read the completion alone; ``model`` asks a sequence-classification
reward model (such as one trained by a ``reward-model`` run) to score ``prompt + completion``.
"""

from __future__ import annotations

import difflib
import json
import re
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field, field_validator

from tunekit.data.chat import adds_special_tokens
from tunekit.errors import DataError, ModelLoadError
from tunekit.evaluation import normalize
from tunekit.hookspecs import Register, hookimpl
from tunekit.parts import PartOptions

REFERENCE_COLUMNS = "the row's `completion` column (prompt/completion rows) or its `reference` column"


def check_batch(reward: str, completions: list[str], prompts: list[str], references: list[str | None]) -> None:
    """A ``DataError`` unless ``prompts`` and ``references`` have one entry per completion."""
    if not (len(completions) == len(prompts) == len(references)):
        raise DataError(
            f"reward {reward!r} was given {len(completions)} completions, {len(prompts)} prompts and "
            f"{len(references)} references; give one prompt and one reference (or None) per completion."
        )


def needed_references(reward: str, references: list[str | None]) -> list[str]:
    """The references, or a ``DataError`` naming the first row that has none."""
    for i, reference in enumerate(references):
        if reference is None:
            raise DataError(
                f"reward {reward!r} compares each completion with the row's reference answer, but row {i} "
                f"has none; give every row a reference in {REFERENCE_COLUMNS}, or use a reward that needs "
                "no reference (regex, length, model)."
            )
    return [r for r in references if r is not None]


class ExactMatchOptions(PartOptions):
    strip: bool = Field(default=True, description="Strip leading and trailing whitespace of both sides first.")
    case_fold: bool = Field(default=False, description="Compare case-insensitively (str.casefold).")
    partial_credit: bool = Field(
        default=False,
        description="A wrong answer scores half its similarity to the reference (difflib ratio * 0.5): a near "
        "miss above a far one, both below a hit (1.0). False: a wrong answer scores 0.",
    )


class ExactMatchReward:
    """1.0 where the completion equals the reference answer, else 0.0 (or partial credit)."""

    name: ClassVar[str] = "exact_match"
    description: ClassVar[str] = "1.0 when the completion equals the row's reference answer (after strip/case-fold), else 0."
    Options: ClassVar[type[ExactMatchOptions]] = ExactMatchOptions

    def __init__(self, options: ExactMatchOptions):
        self.options = options

    def score(self, completions: list[str], *, prompts: list[str], references: list[str | None]) -> list[float]:
        check_batch(self.name, completions, prompts, references)
        o = self.options
        scores = []
        for completion, reference in zip(completions, needed_references(self.name, references), strict=True):
            answer = normalize(completion, strip=o.strip, case_fold=o.case_fold)
            expected = normalize(reference, strip=o.strip, case_fold=o.case_fold)
            if answer == expected:
                scores.append(1.0)
            elif o.partial_credit:
                scores.append(0.5 * difflib.SequenceMatcher(None, answer, expected).ratio())
            else:
                scores.append(0.0)
        return scores


class RegexOptions(PartOptions):
    pattern: str = Field(description="The regular expression (Python `re` syntax) a good completion matches.")
    full_match: bool = Field(
        default=True, description="The whole completion must match (re.fullmatch); False: anywhere in it (re.search)."
    )
    strip: bool = Field(default=True, description="Strip leading and trailing whitespace of the completion first.")

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"invalid regular expression {value!r}: {exc}; give a Python `re` pattern") from None
        return value


class RegexReward:
    """1.0 where the completion matches ``pattern``, else 0.0 (a format reward)."""

    name: ClassVar[str] = "regex"
    description: ClassVar[str] = "1.0 when the completion matches the regular expression `pattern`, else 0."
    Options: ClassVar[type[RegexOptions]] = RegexOptions

    def __init__(self, options: RegexOptions):
        self.options = options
        self._pattern = re.compile(options.pattern)

    def score(self, completions: list[str], *, prompts: list[str], references: list[str | None]) -> list[float]:
        check_batch(self.name, completions, prompts, references)
        match = self._pattern.fullmatch if self.options.full_match else self._pattern.search
        return [1.0 if match(c.strip() if self.options.strip else c) else 0.0 for c in completions]


class LengthOptions(PartOptions):
    max_chars: int = Field(ge=1, description="Completions up to this many characters are not penalised.")
    weight: float = Field(
        default=1.0, ge=0.0, allow_inf_nan=False,
        description="The penalty of a completion twice max_chars long or longer (it grows linearly from 0 at max_chars).",
    )


class LengthReward:
    """0 within ``max_chars``; beyond it, ``-weight * min(1, excess / max_chars)``."""

    name: ClassVar[str] = "length"
    description: ClassVar[str] = "0 for completions within `max_chars` characters, down to -weight for ones twice as long."
    Options: ClassVar[type[LengthOptions]] = LengthOptions

    def __init__(self, options: LengthOptions):
        self.options = options

    def score(self, completions: list[str], *, prompts: list[str], references: list[str | None]) -> list[float]:
        check_batch(self.name, completions, prompts, references)
        limit, weight = self.options.max_chars, self.options.weight
        return [-weight * min(1.0, (len(c) - limit) / limit) if len(c) > limit else 0.0 for c in completions]


class ModelRewardOptions(PartOptions):
    path: str = Field(
        description="A local sequence-classification model: a `reward-model` run (or its `model/` save, LoRA "
        "adapters included) or any transformers AutoModelForSequenceClassification directory."
    )
    batch_size: int = Field(default=8, ge=1, description="Completions scored per forward pass.")
    max_length: int = Field(
        default=512, ge=1, description="Tokens of prompt + completion scored; longer texts lose their start."
    )


_PATH_HELP = (
    "pass a `reward-model` run directory (or its `model/` save), or any transformers sequence-classification "
    "model directory (with config.json)"
)


def _adapter_format(folder: Path) -> str | None:
    """The format of a tunekit save that is not a standalone model (a LoRA adapter...), else None."""
    meta_path = folder / "tunekit.json"
    if not meta_path.is_file():
        return None
    try:
        fmt = json.loads(meta_path.read_text(encoding="utf-8")).get("format")
    except (OSError, UnicodeDecodeError, ValueError, AttributeError) as exc:
        raise ModelLoadError(f"reward 'model': {str(meta_path)!r} is not readable tunekit metadata ({exc}); {_PATH_HELP}.") from exc
    return None if fmt == "full" else str(fmt)


def reward_model_directory(path: str) -> Path:
    """The model directory ``path`` names, or a ``ModelLoadError`` saying what to pass.

    A tunekit run directory stands for its ``model/`` save; a tunekit save of an adapter (a LoRA reward
    model) is loaded onto its base as ``Tuner.load`` would."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise ModelLoadError(f"reward 'model': path {path!r} is not a directory; {_PATH_HELP}.")
    if (folder / "model" / "tunekit.json").is_file() and not (folder / "tunekit.json").is_file():
        folder = folder / "model"  # a run directory: its final save
    if _adapter_format(folder) is not None:
        return folder  # a tunekit save of an adapter: loaded onto its base by tunekit (see ModelReward._load)
    if not (folder / "config.json").is_file():
        raise ModelLoadError(f"reward 'model': {str(folder)!r} has no config.json, so it is not a model directory; {_PATH_HELP}.")
    try:
        architectures = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("architectures") or []
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        architectures = []
    if architectures and not any("SequenceClassification" in str(a) for a in architectures):
        # loading a language model as a classifier gives it a random score head: every reward would be noise
        raise ModelLoadError(
            f"reward 'model': {str(folder)!r} holds a {', '.join(map(str, architectures))}, not a sequence "
            f"classifier, so its score head would be random; {_PATH_HELP}."
        )
    return folder


def _load_tunekit_save(folder: Path) -> tuple[Any, Any]:
    """A tunekit save in a strategy's own format (a LoRA adapter) restored onto its base, as ``Tuner.load`` does."""
    from tunekit.config import TuneConfig, build_part
    from tunekit.config_files import read_config_file
    from tunekit.models.setup import load_for_run
    from tunekit.training.precision import choose_precision

    config = TuneConfig.model_validate(read_config_file(folder / "tunekit.yaml"))
    if getattr(config.objective, "name", None) != "reward-model":
        raise ModelLoadError(f"reward 'model': {str(folder)!r} was not trained by the reward-model objective; {_PATH_HELP}.")
    strategy, quantizer = build_part("strategy", config.strategy, "strategy"), build_part("quantizer", config.quantizer, "quantizer")
    model, tokenizer, _ = load_for_run(config, strategy, quantizer, choose_precision(config.training.precision), saved=folder)
    return model, tokenizer


class ModelReward:
    """A reward model's score of ``prompt + completion``, loaded on first use."""

    name: ClassVar[str] = "model"
    description: ClassVar[str] = "The score a sequence-classification reward model (at `path`) gives prompt + completion."
    Options: ClassVar[type[ModelRewardOptions]] = ModelRewardOptions

    def __init__(self, options: ModelRewardOptions):
        self.options = options
        self.directory = reward_model_directory(options.path)  # a wrong path fails when the run is set up
        self._model: Any = None
        self._tokenizer: Any = None

    def _load(self) -> None:
        from accelerate import PartialState
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        try:
            if _adapter_format(self.directory) is not None:
                model, tokenizer = _load_tunekit_save(self.directory)
            else:
                tokenizer = AutoTokenizer.from_pretrained(self.directory)
                model = AutoModelForSequenceClassification.from_pretrained(self.directory)
        except Exception as exc:  # a broken or incomplete directory: say which, not a deep traceback
            raise ModelLoadError(
                f"reward 'model': could not load {str(self.directory)!r} ({type(exc).__name__}: {str(exc)[:300]}); {_PATH_HELP}."
            ) from exc
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token if tokenizer.eos_token is not None else tokenizer.unk_token
        if tokenizer.pad_token_id is not None:
            # the classifier pools at the last token that is not padding: it must know which id pads
            model.config.pad_token_id = tokenizer.pad_token_id
        tokenizer.padding_side = "right"
        tokenizer.truncation_side = "left"  # a long text keeps its end: the completion being scored
        self._tokenizer = tokenizer
        self._model = model.to(PartialState().device).eval()

    def score(self, completions: list[str], *, prompts: list[str], references: list[str | None]) -> list[float]:
        check_batch(self.name, completions, prompts, references)
        import torch

        if self._model is None:
            self._load()
        model, tokenizer = self._model, self._tokenizer
        texts = [p + c for p, c in zip(prompts, completions, strict=True)]
        device = next(model.parameters()).device
        scores: list[float] = []
        step = self.options.batch_size
        for start in range(0, len(texts), step):
            chunk = texts[start : start + step]
            batch = tokenizer(
                chunk, padding=True, truncation=True, max_length=self.options.max_length, return_tensors="pt",
                add_special_tokens=adds_special_tokens(tokenizer, chunk[0]),  # no second BOS after a chat template's
            ).to(device)
            with torch.no_grad():
                logits = model(**batch).logits.float()
            # trl's RewardTrainer trains one output; a two-class head scores its last class against its first
            values = logits[:, 0] if logits.shape[-1] == 1 else logits[:, -1] - logits[:, 0]
            scores.extend(float(v) for v in values.cpu())
        return scores


@hookimpl
def register_rewards(register: Register) -> None:
    register(ExactMatchReward)
    register(RegexReward)
    register(LengthReward)
    register(ModelReward)
