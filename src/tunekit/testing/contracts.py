"""Contract checks a plugin author runs in their own test suite.

Each check exercises a part through the public API, the way tunekit will use it, and raises
``ContractViolation`` with what was wrong. Example (a strategy plugin)::

    from tunekit.testing.contracts import check_strategy

    def test_bitfit_contract(tiny_gpt2):
        report = check_strategy("bitfit", tiny_gpt2)
        assert report.trained == {n for n in report.trained if n.endswith(".bias")}
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunekit.data.collate import IGNORE_INDEX
from tunekit.testing import chat_rows, sft_rows, text_rows


class ContractViolation(AssertionError):
    """A part does not do what the plugin contract requires of it."""


@dataclass
class StrategyReport:
    """What a strategy did to a model during a short fit."""

    trainable: set[str] = field(default_factory=set)
    """Parameters left with ``requires_grad=True`` by ``prepare``."""
    trained: set[str] = field(default_factory=set)
    """Parameters whose values changed during the fit."""
    trainable_params: int = 0
    total_params: int = 0


def check_strategy(
    strategy: str | dict[str, Any], model: str | Path, *, rows: list[dict[str, Any]] | None = None,
    steps: int = 3, learning_rate: float = 1e-2, quantizer: str = "none",
) -> StrategyReport:
    """Fit a few steps with ``strategy`` and check it leaves frozen exactly what it claims.

    Checks: the strategy implements the whole protocol (``prepare(model)``, ``save``, ``load``,
    ``merge``, ``trains_tied_weights``); every parameter it leaves frozen (``requires_grad=False``)
    is bit-for-bit unchanged after ``fit``; at least one trainable parameter changed; the counts
    ``fit`` reports equal the model's own; ``save`` names its format and the save reloads
    (``Tuner.load``) with equal logits; ``merge`` gives a model whose standalone save reloads with
    the same logits too.
    """
    import json

    import torch

    from tunekit.tuner import Tuner

    with tempfile.TemporaryDirectory() as tmp:
        tuner = Tuner(
            model=str(model), strategy=strategy, quantizer=quantizer, output_dir=str(Path(tmp) / "run"),
            training={"max_steps": steps, "learning_rate": learning_rate, "batch_size": 8, "progress_bar": False, "logging_steps": 1},
        )
        _check_protocol(tuner.strategy)
        net = tuner.model
        before = {n: p.detach().clone() for n, p in net.named_parameters()}
        report = StrategyReport(trainable={n for n, p in net.named_parameters() if p.requires_grad})
        if not report.trainable:
            raise ContractViolation(f"strategy {strategy!r} left no parameter trainable")
        result = tuner.fit(rows or sft_rows(16))
        after = dict(net.named_parameters())
        report.trained = {n for n, p in after.items() if not torch.equal(p.detach(), before[n])}
        report.trainable_params, report.total_params = result.trainable_params, result.total_params
        leaked = report.trained - report.trainable
        if leaked:
            raise ContractViolation(f"strategy {strategy!r} changed parameters it left frozen: {sorted(leaked)[:5]}")
        if not report.trained:
            raise ContractViolation(f"strategy {strategy!r} trained nothing in {steps} steps at lr {learning_rate}")
        counted = sum(p.numel() for n, p in net.named_parameters() if n in report.trainable)
        if counted != result.trainable_params:
            raise ContractViolation(f"fit reported {result.trainable_params} trainable parameters, the model has {counted}")
        saved = tuner.save(Path(tmp) / "saved")
        saved_format = json.loads((saved / "tunekit.json").read_text(encoding="utf-8"))["format"]
        if not isinstance(saved_format, str) or not saved_format:
            raise ContractViolation(f"strategy {strategy!r}: save must return the name of the format it wrote, got {saved_format!r}")
        reloaded = Tuner.load(saved).model.eval()
        ids = torch.tensor([[1, 2, 3, 4, 5]], device=next(net.parameters()).device)  # the process's device
        net.eval()
        with torch.no_grad():
            tuned = net(ids).logits
            if not torch.allclose(tuned, reloaded(ids).logits, atol=1e-5):
                raise ContractViolation(f"a model tuned with {strategy!r} does not reload with the same logits")
        if not quantizer or quantizer == "none":  # a merge into a quantized base is refused by design
            merged = Tuner.load(tuner.save_merged(Path(tmp) / "merged")).model.eval()
            with torch.no_grad():
                if not torch.allclose(tuned, merged(ids).logits, atol=1e-4 * max(1.0, float(tuned.abs().max()))):
                    raise ContractViolation(f"strategy {strategy!r}: the merged model's logits differ from the tuned model's")
    return report


def _check_protocol(strategy: Any) -> None:
    """The methods and attributes of :class:`tunekit.parts.Strategy` are all there, with the right shape."""
    import inspect

    missing = [n for n in ("prepare", "save", "load", "merge") if not callable(getattr(strategy, n, None))]
    if not isinstance(getattr(strategy, "trains_tied_weights", None), bool):
        missing.append("trains_tied_weights (a bool)")
    if missing:
        raise ContractViolation(
            f"strategy {strategy.name!r} lacks {', '.join(missing)} (see tunekit.parts.Strategy); a strategy that "
            "saves a peft adapter or a transformers model directory can delegate save/load/merge to "
            "tunekit.formats.PEFT_ADAPTER or tunekit.formats.MODEL_DIRECTORY"
        )
    if "quantized" in inspect.signature(strategy.prepare).parameters:
        raise ContractViolation(
            f"strategy {strategy.name!r}: prepare takes `quantized`, which tunekit no longer passes (it is the "
            "first protocol's); declare prepare(self, model) and refuse a quantized base in check_quantizer"
        )


def check_dataset_adapter(adapter: str | dict[str, Any], source: Any) -> Any:
    """Load ``source`` with ``adapter`` and check it yields non-empty rows of a known format.

    Returns the prepared rows (format, train, eval).
    """
    from tunekit.config import DataOptions
    from tunekit.data.pipeline import prepare_rows
    from tunekit.plugins import get_registry

    name = adapter if isinstance(adapter, str) else adapter["name"]
    registry = get_registry("dataset_adapter")
    reg = registry.get(name)
    instance = reg.cls(reg.options_model.model_validate({k: v for k, v in (adapter if isinstance(adapter, dict) else {}).items() if k != "name"}))
    if not instance.can_load(source):
        raise ContractViolation(f"adapter {name!r} says it cannot load {type(source).__name__} it was given")
    prepared = prepare_rows(source, None, DataOptions.model_validate({"adapter": adapter}), seed=0)
    if len(prepared.train) == 0:
        raise ContractViolation(f"adapter {name!r} yielded no rows")
    if prepared.format not in {"text", "prompt_completion", "chat", "classification"}:
        raise ContractViolation(f"adapter {name!r} yielded rows of unknown format {prepared.format!r}")
    return prepared


def check_objective(
    objective: str | dict[str, Any], tokenizer: Any, *, row_format: str = "prompt_completion",
    rows: Any = None, max_length: int = 64, masked: Any = None,
) -> Any:
    """Tokenize rows with ``objective`` and check its labels are well formed.

    Checks: ``input_ids`` and ``labels`` have equal lengths within ``max_length``; every label is
    -100 or the token at that position; every row trains at least one token. ``masked``, when
    given, is a function ``(row, input_ids) -> set of positions`` that must be exactly the
    masked (-100) positions: the objective masks what it says.
    """
    from datasets import Dataset

    from tunekit.data.pipeline import build_objective
    from tunekit.data.rows import normalise_rows

    name = objective if isinstance(objective, str) else objective["name"]
    options = {} if isinstance(objective, str) else {k: v for k, v in objective.items() if k != "name"}
    built = build_objective(name, options, row_format)
    default_rows = {"prompt_completion": sft_rows(8), "chat": chat_rows(8), "text": text_rows(8)}[row_format]
    _, source = normalise_rows(Dataset.from_list(rows or default_rows))
    out = built.tokenize(source, tokenizer, max_length=max_length)
    for i, row in enumerate(out):
        ids, labels = row["input_ids"], row["labels"]
        if len(ids) != len(labels) or len(ids) > max_length:
            raise ContractViolation(f"row {i}: input_ids ({len(ids)}) and labels ({len(labels)}) must match and fit max_length={max_length}")
        bad = [j for j, (t, lab) in enumerate(zip(ids, labels, strict=True)) if lab not in (IGNORE_INDEX, t)]
        if bad:
            raise ContractViolation(f"row {i}: labels at positions {bad[:5]} are neither -100 nor the input token")
        if all(lab == IGNORE_INDEX for lab in labels):
            raise ContractViolation(f"row {i} trains no token")
        if masked is not None and len(out) == len(source):
            expected = set(masked(source[i], ids))
            actual = {j for j, lab in enumerate(labels) if lab == IGNORE_INDEX}
            if expected != actual:
                raise ContractViolation(f"row {i}: masked positions {sorted(actual)[:8]} differ from the claimed {sorted(expected)[:8]}")
    return out


SAMPLE_COMPLETIONS = (
    " blue red cat", "blue red cap", "cat red blue", "", "BLUE RED CAT",
    "blue red cat, and then a much longer answer that goes on and on and on",
)
"""Completions :func:`check_reward` scores: a hit, a near miss, a far miss, an empty one, a shouted
one and a long one."""


def check_reward(
    reward: str | dict[str, Any], *, completions: list[str] | None = None, prompts: list[str] | None = None,
    references: list[str | None] | None = None,
) -> list[float]:
    """Build ``reward`` (a name, or a mapping of its name and options) and check how it scores.

    Checks: the reward builds through :func:`tunekit.config.build_rewards` (registered, options
    valid); ``score(completions, prompts=..., references=...)`` returns a list with one finite
    ``float`` per completion; scoring the same batch twice gives the same scores; a batch of one
    scores like the same row in the batch. By default it scores :data:`SAMPLE_COMPLETIONS` against
    the reference ``"blue red cat"`` of a reverse-three-words prompt. Returns the scores.
    """
    import math

    from tunekit.config import build_rewards

    name = reward if isinstance(reward, str) else reward.get("name", "?")
    (part,) = build_rewards([reward])
    if not callable(getattr(part, "score", None)):
        raise ContractViolation(f"reward {name!r} has no score(completions, *, prompts, references) method")
    completions = list(SAMPLE_COMPLETIONS) if completions is None else completions
    prompts = ["Reverse: cat red blue\nAnswer:"] * len(completions) if prompts is None else prompts
    references = ["blue red cat"] * len(completions) if references is None else references

    def score(c: list[str], p: list[str], r: list[str | None]) -> list[float]:
        out = part.score(c, prompts=p, references=r)
        if not isinstance(out, list):
            raise ContractViolation(f"reward {name!r}: score must return a list of floats, got {type(out).__name__}")
        if len(out) != len(c):
            raise ContractViolation(f"reward {name!r}: score returned {len(out)} values for {len(c)} completions")
        bad = [(i, v) for i, v in enumerate(out) if not isinstance(v, float) or not math.isfinite(v)]
        if bad:
            raise ContractViolation(f"reward {name!r}: scores must be finite floats; got {bad[:3]} (index, value)")
        return out

    scores = score(completions, prompts, references)
    again = score(completions, prompts, references)
    if not all(math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-5) for a, b in zip(scores, again, strict=True)):
        raise ContractViolation(f"reward {name!r} scored the same batch differently twice: {scores} then {again}")
    if completions:
        alone = score(completions[:1], prompts[:1], references[:1])
        if not math.isclose(alone[0], scores[0], rel_tol=1e-4, abs_tol=1e-4):
            raise ContractViolation(
                f"reward {name!r}: a completion scores {alone[0]} alone but {scores[0]} in a batch; a row's reward "
                "must not depend on the other rows of its batch"
            )
    return scores
