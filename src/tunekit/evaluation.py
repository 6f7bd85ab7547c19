"""Evaluation of a model on rows: token-weighted loss, and any registered metric.

Metrics are parts (see :class:`tunekit.parts.Metric` and the ``register_metrics`` hook).
A metric ``needs`` either the loss of the rows, or the model's generated answers: for
those, every ``sft`` row (prompt/completion or chat) is answered greedily, in left-padded
batches, and the answer is compared with the row's reference (the ``completion``, or the
last assistant message).

>>> from tunekit.evaluation import MetricInputs, normalize
>>> normalize("  Paris \\n", case_fold=True)
'paris'
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pydantic import Field

from tunekit.config import DEFAULT_METRICS, ChosenMetric, build_metrics  # noqa: F401  (re-exported)
from tunekit.data.collate import IGNORE_INDEX, PadPerBatch
from tunekit.errors import DataError
from tunekit.parts import MetricInputs, PairScores, PartOptions
from tunekit.results import EvalResult, Generation
from tunekit.training.loss import trained_logits_loss, use_trained_logits
from tunekit.training.shared_prefix import use_shared_prefix

if TYPE_CHECKING:
    import torch
    from datasets import Dataset
    from transformers import PreTrainedTokenizerBase


EXTRA_NEW_TOKENS = 8
"""Generation budget beyond the longest reference answer (see :func:`generate_answers`)."""


class TextNormalization(PartOptions):
    """Options of the metrics that compare texts: how both sides are normalised first."""

    strip: bool = Field(default=True, description="Strip leading and trailing whitespace.")
    case_fold: bool = Field(default=False, description="Compare case-insensitively (str.casefold).")


def normalize(text: str, *, strip: bool = True, case_fold: bool = False) -> str:
    """``text`` stripped and/or case-folded, as the text metrics compare it."""
    if strip:
        text = text.strip()
    if case_fold:
        text = text.casefold()
    return text


# -- choosing metrics ------------------------------------------------------------------------------
# -- loss ---------------------------------------------------------------------------------------------
def evaluate_loss(
    model: torch.nn.Module,
    rows: Dataset,
    *,
    pad_token_id: int,
    batch_size: int = 8,
    trained_logits_only: bool | str = "auto",
    shared_prefix: bool | str = "auto",
) -> EvalResult:
    """Mean cross-entropy per trained token over ``rows`` (``input_ids`` + ``labels``).

    Weighted by tokens, not by batch, so the figure does not depend on the batch size
    or on how rows happen to be grouped. This is the one eval loss of tunekit: ``Tuner.evaluate``,
    the final evaluation of ``fit`` and the Trainer's evaluations during training
    (``training.eval_steps``) all call it, so one curve shows one quantity.
    ``trained_logits_only`` is ``training.trained_logits_only`` (see :mod:`tunekit.training.loss`),
    ``shared_prefix`` ``training.shared_prefix`` (see :mod:`tunekit.training.shared_prefix`).

    Under a multi-process launch each rank scores its shard of the rows and the sums are
    reduced, so every rank returns the same figure. Every rank runs the same number of
    forward passes (a rank with fewer rows scores a placeholder batch that counts for nothing),
    because a sharded module (FSDP, ZeRO-3) gathers its weights in every forward, on all ranks
    together.
    """
    import torch

    world, rank = _world()
    indices = list(range(len(rows)))[rank::world]
    collate = PadPerBatch(pad_token_id=pad_token_id)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    trained_only = use_trained_logits(model, trained_logits_only)  # the head only where a token is scored
    share = use_shared_prefix(model, shared_prefix, trained_logits=trained_only)
    batches = [indices[i : i + batch_size] for i in range(0, len(indices), batch_size)]
    total_loss, total_tokens = 0.0, 0
    try:
        with torch.no_grad():
            for batch_rows in _same_count_on_every_rank(batches, world):
                placeholder = not batch_rows
                batch = collate([rows[i] for i in (batch_rows or [0])])
                batch = {k: v.to(device) for k, v in batch.items()}
                loss = trained_logits_loss(model, batch, skip_untrained=trained_only, reduction="sum", shared_prefix=share)
                if not placeholder:
                    total_loss += float(loss)
                    total_tokens += int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    finally:
        model.train(was_training)
    if world > 1:
        sums = torch.tensor([total_loss, float(total_tokens)], dtype=torch.float64, device=_collective_device())
        torch.distributed.all_reduce(sums)
        total_loss, total_tokens = float(sums[0]), int(sums[1])
    mean = total_loss / total_tokens if total_tokens else float("nan")
    return EvalResult(
        loss=mean,
        perplexity=math.exp(min(mean, 700.0)),
        tokens=total_tokens,
        rows=len(rows),
        metrics={"loss": mean, "perplexity": math.exp(min(mean, 700.0))},
    )


def _world() -> tuple[int, int]:
    """(world size, rank) of an initialised process group, else (1, 0)."""
    import torch

    if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        return torch.distributed.get_world_size(), torch.distributed.get_rank()
    return 1, 0


def _collective_device() -> Any:
    """Where a tensor must live for a collective: NCCL reduces GPU tensors only."""
    import torch

    if torch.distributed.get_backend() == "nccl":
        from accelerate import PartialState

        return PartialState().device
    return torch.device("cpu")


def _same_count_on_every_rank(batches: list[list[int]], world: int) -> list[list[int]]:
    """``batches`` padded with empty placeholders to the largest count of any rank."""
    if world == 1:
        return batches
    import torch

    count = torch.tensor([len(batches)], dtype=torch.int64, device=_collective_device())
    torch.distributed.all_reduce(count, op=torch.distributed.ReduceOp.MAX)
    return batches + [[] for _ in range(int(count.item()) - len(batches))]


# -- preference pairs -----------------------------------------------------------------------------
def answer_logprobs(
    model: Any, prompts: list[list[int]], answers: list[list[int]], *, batch_size: int, pad_token_id: int
) -> list[tuple[float, int]]:
    """``(summed log-probability, tokens)`` of each answer given its prompt, under ``model`` (no grad)."""
    import torch

    rows = [{"input_ids": p + a, "labels": [IGNORE_INDEX] * len(p) + a} for p, a in zip(prompts, answers, strict=True)]
    collate = PadPerBatch(pad_token_id=pad_token_id)
    out: list[tuple[float, int]] = []
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(rows), batch_size):
                batch = {k: v.to(device) for k, v in collate(rows[start : start + batch_size]).items()}
                out.extend(_answer_sums(model, batch))
    finally:
        model.train(was_training)
    return out


def _answer_sums(model: Any, batch: dict[str, Any]) -> list[tuple[float, int]]:
    import torch

    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()
    labels = batch["labels"][:, 1:]
    mask = labels != IGNORE_INDEX
    picked = torch.log_softmax(logits, dim=-1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    sums = (picked * mask).sum(dim=1)
    return [(float(s), int(n)) for s, n in zip(sums, mask.sum(dim=1), strict=True)]


def score_pairs(model: Any, tokenized: Dataset, *, batch_size: int, pad_token_id: int) -> tuple[float, PairScores]:
    """The cross-entropy per token of the chosen answers, and every pair's summed log-probabilities."""
    prompts = [list(p) for p in tokenized["prompt_ids"]]
    chosen = answer_logprobs(model, prompts, [list(c) for c in tokenized["chosen_ids"]], batch_size=batch_size, pad_token_id=pad_token_id)
    rejected = answer_logprobs(model, prompts, [list(r) for r in tokenized["rejected_ids"]], batch_size=batch_size, pad_token_id=pad_token_id)
    tokens = sum(n for _, n in chosen)
    loss = -sum(s for s, _ in chosen) / tokens if tokens else float("nan")
    return loss, PairScores([s for s, _ in chosen], [s for s, _ in rejected])


# -- generation -----------------------------------------------------------------------------------
def prompts_and_references(rows: Dataset, row_format: str) -> tuple[list[Any], list[str]]:
    """The prompt (text, or the messages before the answer) and reference answer of every sft row."""
    if row_format == "prompt_completion":
        return list(rows["prompt"]), list(rows["completion"])
    if row_format == "preference":  # the preferred answer is the reference
        return list(rows["prompt"]), list(rows["chosen"])
    if row_format == "prompt" and "reference" in rows.column_names:
        if any(r is None for r in rows["reference"]):
            raise DataError("generation metrics compare with a reference answer, and some prompt rows have none ('reference' is empty).")
        return list(rows["prompt"]), list(rows["reference"])
    if row_format == "chat":
        prompts: list[Any] = []
        references: list[str] = []
        for i, row in enumerate(rows):
            messages = [{"role": m["role"], "content": m["content"]} for m in row["messages"]]
            last = max((j for j, m in enumerate(messages) if m["role"] == "assistant"), default=None)
            if last is None:
                raise DataError(f"eval row {i} has no 'assistant' message to compare the generated answer with.")
            prompts.append(messages[:last])
            references.append(messages[last]["content"])
        return prompts, references
    raise DataError(
        f"generation metrics compare the model's answer with a reference answer, so they need "
        f"prompt/completion or chat rows; these rows are {row_format!r}. Use 'loss' or "
        "'perplexity' for raw text."
    )


def stop_token_ids(model: Any, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Where an answer ends: EOS, the generation config's EOS ids, and the chat template's
    end-of-turn token (``<|im_end|>`` where it differs from EOS), which sft trains as the end."""
    from tunekit.data.chat import end_of_turn_id

    ids: list[int] = []
    config_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in (tokenizer.eos_token_id, config_eos, end_of_turn_id(tokenizer)):
        for item in value if isinstance(value, (list, tuple)) else [value]:
            if item is not None and int(item) not in ids:
                ids.append(int(item))
    return ids


def generate_answers(
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str | list[dict[str, str]]],
    *,
    batch_size: int = 8,
    max_new_tokens: int = 64,
    progress: bool = False,
) -> list[str]:
    """Greedy answers to ``prompts`` (texts, or chats rendered with the chat template).

    Prompts are sorted by length and left-padded per batch, so a batch wastes little
    compute on padding and every answer starts right after its own prompt; the answers
    come back in the order of ``prompts``. In a single process, a model that
    :func:`tunekit.generation.supports_fast_greedy` is decoded by
    :func:`tunekit.generation.greedy_token_ids` (the same answers, fewer forward passes);
    other models, and every multi-process launch, go through ``model.generate``.
    """
    import torch

    from tunekit.data.chat import render_generation_prompt
    from tunekit.generation import greedy_token_ids, supports_fast_greedy

    if not prompts:
        return []
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    encoded = []
    for prompt in prompts:
        text, add_special = render_generation_prompt(tokenizer, prompt)
        encoded.append(list(tokenizer(text, add_special_tokens=add_special)["input_ids"]))
    from tunekit.config import check_generation_fits

    check_generation_fits(model, max(len(e) for e in encoded), max_new_tokens)  # else an IndexError inside
    world, rank = _world()
    # Under a multi-process launch each rank answers its share (every world-th prompt by length);
    # the answers are gathered at the end, so every rank returns all of them.
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))[rank::world]
    answers: list[str] = [""] * len(encoded)
    device = next(model.parameters()).device
    eos = stop_token_ids(model, tokenizer)
    batches = _same_count_on_every_rank([order[i : i + batch_size] for i in range(0, len(order), batch_size)], world)
    from tunekit.training.distributed import synced_generation

    synced = world > 1 and synced_generation(model)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(encoded), desc="evaluate (generating)", unit="row", dynamic_ncols=True)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            if world == 1 and supports_fast_greedy(model):  # a prompt prefix run once, rows refilled as they stop
                fast = greedy_token_ids(model, [encoded[i] for i in order], batch_size=batch_size, max_new_tokens=max_new_tokens,
                                        stop_ids=eos, pad_token_id=pad, on_rows=None if bar is None else bar.update)
                if fast is not None:
                    for i, tokens in zip(order, fast, strict=True):
                        answers[i] = str(tokenizer.decode(tokens, skip_special_tokens=True))
                    batches = []
            for batch in batches:
                # a placeholder on a rank with fewer batches: a sharded module generates on all ranks together
                placeholder = not batch
                batch = batch or [0]
                longest = max(len(encoded[i]) for i in batch)
                ids = torch.tensor([[pad] * (longest - len(encoded[i])) + encoded[i] for i in batch], device=device)
                mask = torch.tensor([[0] * (longest - len(encoded[i])) + [1] * len(encoded[i]) for i in batch], device=device)
                out = model.generate(
                    input_ids=ids,
                    attention_mask=mask,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    pad_token_id=pad,
                    eos_token_id=eos or None,
                    **({"synced_gpus": True} if synced else {}),
                )
                if placeholder:
                    continue
                for row, i in enumerate(batch):
                    answers[i] = str(tokenizer.decode(out[row, longest:], skip_special_tokens=True))
                if bar is not None:
                    bar.update(len(batch) * world)
    finally:
        model.train(was_training)
        if bar is not None:
            bar.close()
    if world > 1:
        import torch.distributed as dist

        shares: list[Any] = [None] * world
        dist.all_gather_object(shares, {i: answers[i] for i in order})
        for share in shares:
            for i, answer in share.items():
                answers[i] = answer
    return answers


def answer_budget(tokenizer: PreTrainedTokenizerBase, references: Sequence[str]) -> int:
    """New tokens to generate: the longest reference plus :data:`EXTRA_NEW_TOKENS`.

    A longer answer could not match the reference anyway, and a model that never stops
    (a base model often does not) would otherwise make evaluation as slow as it is long.
    """
    longest = max((len(tokenizer(r, add_special_tokens=False)["input_ids"]) for r in references), default=0)
    return longest + EXTRA_NEW_TOKENS


# -- all together -------------------------------------------------------------------------------
def evaluate(
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    rows: Dataset,
    row_format: str,
    tokenized: Dataset,
    metrics: Sequence[ChosenMetric],
    *,
    batch_size: int = 8,
    generation_batch_size: int | None = None,
    max_new_tokens: int | None = None,
    progress: bool = False,
    trained_logits_only: bool | str = "auto",
    shared_prefix: bool | str = "auto",
    objective: Any = None,
) -> EvalResult:
    """Loss over ``tokenized`` and every metric in ``metrics`` over ``rows``.

    An ``objective`` with ``evaluate_rows`` (``classify``) scores the rows itself: its loss, and a
    classification head's logits for the metrics (``MetricInputs.classes``); nothing is generated.

    ``rows`` are the canonical rows (``prompt_completion``/``chat``/``text``) and
    ``tokenized`` the same rows after the objective. Generation runs only when a metric
    needs it, in batches of ``generation_batch_size`` (default ``batch_size``);
    ``max_new_tokens`` defaults to :func:`answer_budget`.
    """
    pad = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)
    from tunekit.parts import ClassOutputs

    score_rows = getattr(objective, "evaluate_rows", None)
    classes = preferences = None
    if callable(score_rows):  # a classification head's logits, preference pairs' scores: the objective's own loss
        loss, scores = score_rows(model, tokenized, batch_size=batch_size, pad_token_id=pad)
        classes = scores if isinstance(scores, ClassOutputs) else None
        preferences = scores if isinstance(scores, PairScores) else None
        ppl = math.exp(min(loss, 700.0)) if not math.isnan(loss) else float("nan")
        base = EvalResult(loss=loss, perplexity=ppl, tokens=0, rows=len(tokenized), metrics={"loss": loss, "perplexity": ppl})
    else:
        base = evaluate_loss(model, tokenized, pad_token_id=pad, batch_size=batch_size, trained_logits_only=trained_logits_only,
                             shared_prefix=shared_prefix)
    predictions = references = None
    generations: list[Generation] = []
    if classes is None and any(m.needs == "logits" for m in metrics):
        needing = [m.name for m in metrics if m.needs == "logits"]
        raise DataError(
            f"the metrics {needing} are computed from a classification head's logits; they need a run with "
            "objective='classify' and rows with 'text' and 'label' columns."
        )
    if preferences is None and "rejected_ids" in (tokenized.column_names or []) and any(m.needs == "pairs" for m in metrics):
        _, preferences = score_pairs(model, tokenized, batch_size=batch_size, pad_token_id=pad)  # pairs evaluated as sft rows
    if preferences is None and any(m.needs == "pairs" for m in metrics):
        needing = [m.name for m in metrics if m.needs == "pairs"]
        raise DataError(f"the metrics {needing} compare each pair's chosen and rejected answers; they need rows with "
                        "'prompt', 'chosen' and 'rejected' columns.")
    if classes is None and any(m.needs == "generation" for m in metrics):
        prompts, references = prompts_and_references(rows, row_format)
        budget = max_new_tokens if max_new_tokens is not None else answer_budget(tokenizer, references)
        predictions = generate_answers(
            model, tokenizer, prompts, batch_size=generation_batch_size or batch_size, max_new_tokens=budget, progress=progress
        )
        generations = [
            Generation(prompt=p, reference=r, prediction=a) for p, r, a in zip(prompts, references, predictions, strict=True)
        ]
    inputs = MetricInputs(base.loss, base.tokens, len(rows), predictions, references, classes, preferences)
    values = {m.name: float(m.metric.compute(inputs)) for m in metrics}
    reports = {m.name: m.metric.report(inputs) for m in metrics if callable(getattr(m.metric, "report", None))}
    return base.model_copy(update={"metrics": values, "generations": generations, "reports": reports})


def generate_text(model: Any, tokenizer: PreTrainedTokenizerBase, prompt: str | list[dict[str, str]], /, **generate_kwargs: Any) -> str:
    """Greedy (unless told otherwise) continuation of a text prompt, or answer to a chat; what ``Tuner.generate`` returns."""
    import torch

    from tunekit.config import check_generation_fits
    from tunekit.config_files import check_generate_options, check_positive_int
    from tunekit.data.chat import render_generation_prompt
    from tunekit.training.distributed import inference_module, synced_generation

    if isinstance(prompt, str) and not prompt:
        # One rule for every tokenizer: with no BOS token an empty prompt has no token to start
        # from, and with one the "answer" would be unconditioned text, not a continuation.
        raise DataError(
            "generate was given an empty prompt; give the text to continue (or a chat to answer). "
            "For unconditioned text, pass the BOS token explicitly: generate(tuner.tokenizer.bos_token)."
        )
    check_positive_int("generate", max_new_tokens=generate_kwargs.get("max_new_tokens"))
    check_generate_options(model, generate_kwargs)  # a typo is a ConfigError, not transformers' ValueError
    text, add_special = render_generation_prompt(tokenizer, prompt)
    enc = tokenizer(text, return_tensors="pt", add_special_tokens=add_special)
    device = next(model.parameters()).device
    enc = {k: v.to(device) for k, v in enc.items()}
    kwargs: dict[str, Any] = {
        "max_new_tokens": 64,
        "do_sample": False,
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": stop_token_ids(model, tokenizer) or None,
    }
    kwargs.update(generate_kwargs)
    check_generation_fits(model, int(enc["input_ids"].shape[1]), kwargs.get("max_new_tokens"))
    if synced_generation(model):
        kwargs.setdefault("synced_gpus", True)
    # after a sharded (FSDP / ZeRO-3) fit, every rank calls generate together
    with inference_module(model) as module:
        was_training = module.training
        module.eval()
        try:
            with torch.no_grad():
                out = module.generate(**enc, **kwargs)
        finally:
            module.train(was_training)
    return str(tokenizer.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True))
