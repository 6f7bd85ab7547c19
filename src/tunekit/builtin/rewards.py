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
        description="A local sequence-classification model directory: the `model/` of a `reward-model` run (a full "
        "or merged save) or any transformers AutoModelForSequenceClassification directory."
    )
    batch_size: int = Field(default=8, ge=1, description="Completions scored per forward pass.")
    max_length: int = Field(
        default=512, ge=1, description="Tokens of prompt + completion scored; longer texts lose their start."
    )


_PATH_HELP = (
    "pass a directory saved by a `reward-model` run (its `model/` folder, a full or merged save), or any "
    "transformers sequence-classification model directory (with config.json)"
)


def reward_model_directory(path: str) -> Path:
    """The transformers model directory ``path`` names, or a ``ModelLoadError`` saying what to pass.

    A tunekit run directory stands for its ``model/`` save; a tunekit save of an adapter is refused
    (it needs its base and strategy: merge it first)."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise ModelLoadError(f"reward 'model': path {path!r} is not a directory; {_PATH_HELP}.")
    if (folder / "model" / "tunekit.json").is_file() and not (folder / "tunekit.json").is_file():
        folder = folder / "model"  # a run directory: its final save
    meta_path = folder / "tunekit.json"
    if meta_path.is_file():
        try:
            fmt = json.loads(meta_path.read_text(encoding="utf-8")).get("format")
        except (OSError, UnicodeDecodeError, ValueError, AttributeError):
            fmt = None
        if fmt != "full":
            raise ModelLoadError(
                f"reward 'model': {str(folder)!r} is a tunekit save in format {fmt!r} (an adapter or a plugin "
                "format), which needs its base model and strategy to load. Merge it into a standalone model "
                "first: `Tuner.load(path).save_merged(out)` (or `tunekit merge`), and point `path` at `out`."
            )
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
            batch = tokenizer(
                texts[start : start + step], padding=True, truncation=True, max_length=self.options.max_length,
                return_tensors="pt",
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
