"""Greedy decoding for evaluation: the prompts' shared prefix runs once, finished rows make room for waiting ones.

Evaluation prompts rendered with a chat template share a long head (the system prompt and the
template's markers). :func:`greedy_token_ids` runs that head once, copies its KV cache into
every batch, and feeds each batch only the rest of its prompts; a row that produced a stop token
leaves the batch and waiting prompts take its place, so the steps go to rows still generating
(docs/performance.md, "Generation for evaluation", has the figures). The answers are the
greedy answers of ``model.generate(do_sample=False)`` (tests/test_generation.py compares them).
Models it cannot drive this way (see :func:`supports_fast_greedy`) go through ``model.generate``.

>>> from tunekit.generation import shared_prefix_length
>>> shared_prefix_length([[1, 2, 3, 4], [1, 2, 5]])
2
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

from tunekit.models.kv_cache import base_model, cache_keyword, forward_params, new_cache, plain_layers, takes_cache

# Generation-config fields whose non-default value changes greedy decoding (a logits processor or a
# stopping rule ``generate`` would apply): with any of them set, the model goes through ``generate``.
_GREEDY_CHANGERS = (
    "repetition_penalty", "no_repeat_ngram_size", "encoder_no_repeat_ngram_size", "bad_words_ids",
    "min_length", "min_new_tokens", "suppress_tokens", "begin_suppress_tokens", "forced_bos_token_id",
    "forced_eos_token_id", "sequence_bias", "exponential_decay_length_penalty", "renormalize_logits",
    "stop_strings", "max_time", "num_beams", "penalty_alpha", "prompt_lookup_num_tokens", "watermarking_config",
    "assistant_model", "diversity_penalty", "constraints", "force_words_ids", "epsilon_cutoff", "eta_cutoff",
)


def shared_prefix_length(prompts: Sequence[Sequence[int]]) -> int:
    """How many leading tokens all ``prompts`` share (at most the shortest prompt's length)."""
    if not prompts:
        return 0
    first, n = prompts[0], min(len(p) for p in prompts)
    for p in prompts[1:]:
        k = 0
        while k < n and p[k] == first[k]:
            k += 1
        n = k
    return n


def supports_fast_greedy(model: Any) -> bool:
    """Whether :func:`greedy_token_ids` can drive ``model``: a decoder-only transformers model with a
    dynamic KV cache and position ids, whose generation config changes nothing in greedy decoding."""
    base = base_model(model)
    config = getattr(base, "config", None)
    if config is None or getattr(config, "is_encoder_decoder", False) or not callable(getattr(base, "generate", None)):
        return False
    if not takes_cache(model):
        return False
    from transformers import GenerationConfig

    defaults = GenerationConfig()
    gen = getattr(model, "generation_config", None) or getattr(base, "generation_config", None)
    if gen is not None:
        for name in _GREEDY_CHANGERS:
            if getattr(gen, name, None) != getattr(defaults, name, None):
                return False
    return True


def greedy_token_ids(
    model: Any,
    prompts: Sequence[Sequence[int]],
    *,
    batch_size: int,
    max_new_tokens: int,
    stop_ids: Sequence[int],
    pad_token_id: int,
    on_rows: Callable[[int], None] | None = None,
) -> list[list[int]] | None:
    """The greedy continuation of every prompt (token ids, a stop token included), in the prompts' order;
    None where the model's cache is not one this loop can splice (use ``model.generate``).

    At most ``batch_size`` rows are in flight. The prefix all prompts share (up to the shortest
    prompt's last token) runs once; a row leaves the batch at its stop token or its
    ``max_new_tokens``-th token, and the next prompt takes its place (its own tokens run, and its
    KV rows join the batch's cache, aligned by masked padding between the prefix and its tokens).
    Prompts enter longest first, so a newcomer always fits the batch's cache. Call with the
    model in eval mode. ``on_rows(k)`` is called as k rows finish.
    """
    import torch

    if not prompts:
        return []
    with torch.no_grad():
        return _greedy(model, prompts, batch_size, max_new_tokens, stop_ids, pad_token_id, on_rows)


def _greedy(
    model: Any, prompts: Sequence[Sequence[int]], batch_size: int, max_new_tokens: int, stop_ids: Sequence[int],
    pad_token_id: int, on_rows: Callable[[int], None] | None,
) -> list[list[int]] | None:
    import torch

    device = next(model.parameters()).device
    keep_logits = "logits_to_keep" in forward_params(model)
    extra: dict[str, Any] = {"logits_to_keep": 1} if keep_logits else {}
    cache_kw = cache_keyword(model)
    prefix_len = max(0, min(shared_prefix_length(prompts), min(len(p) for p in prompts) - 1))
    prefix_cache = new_cache(model)
    if not plain_layers(prefix_cache):
        return None
    if prefix_len > 0:
        model(input_ids=torch.tensor([list(prompts[0][:prefix_len])], device=device), use_cache=True, **{cache_kw: prefix_cache}, **extra)
    stops = torch.tensor(sorted(set(stop_ids)) or [-1], device=device)
    queue = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    answers: list[list[int]] = [[] for _ in prompts]
    state: _Batch | None = None
    # a batch that keeps taking newcomers grows its cache by a position per step; past this length it drains first
    longest = max(len(p) for p in prompts) - prefix_len
    limit = prefix_len + 2 * (longest + max_new_tokens)
    while queue or state is not None:
        room = batch_size - (0 if state is None else len(state.rows))
        # newcomers join in groups of half a batch: a prefill costs about the same for one row as for several
        wanted = 1 if state is None else min(len(queue), max(1, batch_size // 2))
        if queue and room >= wanted and (state is None or state.length <= limit):
            taken, queue = queue[:room], queue[room:]
            fresh = _start_rows(model, [list(prompts[i][prefix_len:]) for i in taken], taken, prefix_len, prefix_cache, pad_token_id, extra, cache_kw)
            done = fresh.record(answers, stops, max_new_tokens)
            if fresh.rows:
                state = fresh if state is None else state.merge(fresh)
        elif state is not None:
            state.step(model, cache_kw)
            done = state.record(answers, stops, max_new_tokens)
            if not state.rows:
                state = None
        if on_rows is not None and done:
            on_rows(done)
    return answers


class _Batch:
    """The rows in flight: their KV cache, attention mask, last position and the token each feeds next."""

    def __init__(self, rows: list[int], cache: Any, mask: Any, last: Any, logits: Any):
        self.rows, self.cache, self.mask, self.last = rows, cache, mask, last
        self.next = logits[:, -1].argmax(dim=-1)

    @property
    def length(self) -> int:
        return int(self.mask.shape[1])

    def step(self, model: Any, cache_kw: str) -> None:
        import torch

        self.mask = torch.cat([self.mask, self.mask.new_ones(self.mask.shape[0], 1)], dim=1)
        self.last = self.last + 1
        logits = model(input_ids=self.next[:, None], attention_mask=self.mask, position_ids=self.last[:, None],
                       use_cache=True, **{cache_kw: self.cache}).logits
        self.next = logits[:, -1].argmax(dim=-1)

    def record(self, answers: list[list[int]], stops: Any, max_new_tokens: int) -> int:
        """Append each row's new token; drop the rows that finished; how many did."""
        import torch

        going = []
        for line, (row, token) in enumerate(zip(self.rows, self.next.tolist(), strict=True)):
            answers[row].append(token)
            if len(answers[row]) < max_new_tokens:
                going.append(line)
        if going:
            on = torch.tensor(going, device=self.mask.device)
            going = [g for g, stop in zip(going, torch.isin(self.next[on], stops).tolist(), strict=True) if not stop]
        done = len(self.rows) - len(going)
        if done:
            keep = torch.tensor(going, dtype=torch.long, device=self.mask.device)
            self.cache.batch_select_indices(keep)
            self.rows = [self.rows[g] for g in going]
            self.mask, self.last, self.next = self.mask[keep], self.last[keep], self.next[keep]
        return done

    def merge(self, fresh: _Batch) -> _Batch:
        """``fresh``'s rows join this batch; their cache is padded (masked) after the prefix to this batch's length."""
        import torch

        gap = self.length - fresh.length
        if gap < 0:
            raise AssertionError("a newcomer longer than the batch (prompts enter longest first)")
        at = fresh.prefix_len
        for mine, theirs in zip(self.cache.layers, fresh.cache.layers, strict=True):
            for name in ("keys", "values"):
                new = getattr(theirs, name)
                pad = new.new_zeros(new.shape[0], new.shape[1], gap, new.shape[3])
                setattr(mine, name, torch.cat([getattr(mine, name), torch.cat([new[:, :, :at], pad, new[:, :, at:]], dim=2)], dim=0))
        fresh_mask = torch.cat([fresh.mask[:, :at], fresh.mask.new_zeros(fresh.mask.shape[0], gap), fresh.mask[:, at:]], dim=1)
        self.mask = torch.cat([self.mask, fresh_mask])
        self.last = torch.cat([self.last, fresh.last])
        self.next = torch.cat([self.next, fresh.next])
        self.rows = self.rows + fresh.rows
        return self

    prefix_len = 0


def _start_rows(
    model: Any, rows: list[list[int]], ids_of: list[int], prefix_len: int, prefix_cache: Any, pad: int, extra: dict[str, Any], cache_kw: str
) -> _Batch:
    """Run ``rows`` (the prompts after the shared prefix) on a copy of the prefix's cache."""
    import torch

    device = next(model.parameters()).device
    width, n = max(len(r) for r in rows), len(rows)
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=device)
    # the padding sits between the shared prefix and each row's own tokens; masked, it changes nothing
    mask = torch.cat([
        torch.ones(n, prefix_len, dtype=torch.long, device=device),
        torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device),
    ], dim=1)
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)[:, prefix_len:]
    cache = copy.deepcopy(prefix_cache)
    cache.batch_repeat_interleave(n)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, **{cache_kw: cache}, **extra).logits
    batch = _Batch(list(ids_of), cache, mask, positions[:, -1], logits)
    batch.prefix_len = prefix_len
    return batch
