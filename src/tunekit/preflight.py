"""Pre-flight audit: what a run will learn from, what it trains, and what it will cost, before it runs.

>>> report = tuner.preflight(rows)   # doctest: +SKIP
>>> print(report.summary())          # doctest: +SKIP
"""

from __future__ import annotations

import re
import statistics
import tempfile
import time
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field

from tunekit.data.collate import IGNORE_INDEX, PadPerBatch
from tunekit.errors import TunekitError

if TYPE_CHECKING:
    import torch
    from datasets import Dataset
    from transformers import PreTrainedTokenizerBase

    from tunekit.config import TuneConfig
    from tunekit.data.pipeline import PreparedRows
    from tunekit.data.preparation import TokenizationCache

NO_LIMIT = 10**9
MARK_OPEN, MARK_CLOSE = "⟦", "⟧"


class Finding(BaseModel):
    """One problem or note. ``error`` stops ``fit`` unless overridden; ``warning`` is printed once."""

    severity: Literal["error", "warning", "info"]
    code: str
    message: str


class TokenStats(BaseModel):
    rows: int
    tokens: int
    trained_tokens: int
    trained_per_row_min: int
    trained_per_row_median: float
    trained_per_row_max: int
    rows_over_max_length: int = Field(description="Rows longer than training.max_length (truncated by sft, split by causal-lm).")
    rows_without_trained_tokens: int = Field(description="Rows with no trained token inside max_length (sft drops them).")
    max_length: int


class ParamGroup(BaseModel):
    name: str
    trainable: int
    total: int


class Estimate(BaseModel):
    """Peak memory and time per optimizer step, from a measured forward+backward of real batches."""

    peak_memory_bytes: int
    peak_memory_kind: str
    seconds_per_step: float
    batch_size: int
    sequence_length: int
    method: str
    total_steps: int | None = Field(default=None, description="The optimizer steps the fit would take (max_steps, or the epochs' worth).")
    total_seconds: float | None = Field(default=None, description=(
        "total_steps x seconds_per_step: the training time, before evaluation and saving. The step is timed on the "
        "longest batch, so shorter batches make the real run faster."))


class PreflightReport(BaseModel):
    objective: str
    row_format: str
    findings: list[Finding] = Field(default_factory=list)
    token_stats: TokenStats | None = None
    label_samples: list[str] = Field(default_factory=list)
    params_by_block: list[ParamGroup] = Field(default_factory=list)
    estimate: Estimate | None = None

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "warning"]

    def summary(self) -> str:
        """A readable multi-line summary."""
        out = [f"preflight: objective {self.objective} on {self.row_format} rows"]
        if s := self.token_stats:
            out += [
                f"  rows {s.rows}, tokens {s.tokens:,}, trained tokens {s.trained_tokens:,}",
                f"  trained tokens per row: min {s.trained_per_row_min}, median {s.trained_per_row_median:g}, max {s.trained_per_row_max}",
                f"  rows over max_length={s.max_length}: {s.rows_over_max_length}; rows with nothing to train: {s.rows_without_trained_tokens}",
            ]
        if self.label_samples:
            out.append(f"  what the model learns from ({MARK_OPEN}trained{MARK_CLOSE}):")
            out += ["    " + _cut_sample(sample) for sample in self.label_samples]
        if self.params_by_block:
            out.append("  trainable parameters by block (trainable / total):")
            out += [f"    {name:<18} {line}" for name, line in _collapsed_blocks(self.params_by_block)]
        if e := self.estimate:
            out.append(
                f"  estimate: peak memory {e.peak_memory_bytes / 2**20:,.0f} MiB ({e.peak_memory_kind}), "
                f"{e.seconds_per_step:.3f} s/step at batch {e.batch_size} x {e.sequence_length} tokens ({e.method})"
            )
            if e.total_steps is not None and e.total_seconds is not None:
                out.append(
                    f"  estimate: the whole fit, {e.total_steps:,} steps x {e.seconds_per_step:.3f} s = at most about "
                    f"{_duration(e.total_seconds)} of training (before evaluation and saving)"
                )
        for f in self.findings:
            out.append(f"  {f.severity.upper()} [{f.code}] {f.message}")
        if not self.findings:
            out.append("  no problems found")
        return "\n".join(out)


def _duration(seconds: float) -> str:
    """``42 s``, ``12.5 min`` or ``3.2 h``."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


MAX_SAMPLE_CHARS = 2000
"""A label sample longer than this is cut in the summary (a single row can be megabytes)."""


def _cut_sample(sample: str) -> str:
    """One line of the summary: newlines shown as ``\\n``, cut to MAX_SAMPLE_CHARS with the count cut."""
    if len(sample) > MAX_SAMPLE_CHARS:
        cut = len(sample) - MAX_SAMPLE_CHARS
        return sample[:MAX_SAMPLE_CHARS].replace("\n", "\\n") + f" ... [{cut:,} more characters cut]"
    return sample.replace("\n", "\\n")


def _collapsed_blocks(groups: list[ParamGroup]) -> list[tuple[str, str]]:
    """Rows for the summary; runs of identical transformer blocks are shown once ("blocks 0-29")."""
    rows: list[tuple[str, str]] = []
    i = 0
    while i < len(groups):
        g, j = groups[i], i
        while (
            g.name.startswith("block ") and j + 1 < len(groups) and groups[j + 1].name.startswith("block ")
            and (groups[j + 1].trainable, groups[j + 1].total) == (g.trainable, g.total)
        ):
            j += 1
        if j > i:
            first, last = g.name.split()[1], groups[j].name.split()[1]
            rows.append((f"blocks {first}-{last}", f"{g.trainable:>12,} / {g.total:>12,} each"))
        else:
            rows.append((g.name, f"{g.trainable:>12,} / {g.total:>12,}"))
        i = j + 1
    return rows


class PreflightError(TunekitError):
    """``fit`` was stopped by pre-flight errors (pass ``fit(..., ignore_preflight_errors=True)`` to go on)."""


def _without_packing(objective: Any) -> Any:
    options = getattr(objective, "options", None)
    if options is not None and getattr(options, "packing", False):
        return type(objective)(options.model_copy(update={"packing": False}))
    return objective


def token_stats(objective: Any, rows: Dataset, tokenizer: PreTrainedTokenizerBase, max_length: int) -> tuple[TokenStats, Dataset]:
    """Per-row statistics of the objective's output, measured without truncation."""
    full = _without_packing(objective).tokenize(rows, tokenizer, max_length=NO_LIMIT)
    no_answer = set(_rows_with_empty_answers(full, tokenizer))
    trained_all, over, empty, tokens = [], 0, 0, 0
    for j, (ids, labels) in enumerate(zip(full["input_ids"], full["labels"], strict=True)):
        tokens += len(ids)
        trained_all.append(sum(1 for x in labels if x != IGNORE_INDEX))
        over += len(ids) > max_length
        empty += j in no_answer or not any(x != IGNORE_INDEX for x in labels[:max_length])
    dropped = max(0, len(rows) - len(full))  # rows the objective dropped: nothing to train in them either
    stats = TokenStats(
        rows=len(full) + dropped, tokens=tokens, trained_tokens=sum(trained_all),
        trained_per_row_min=min(trained_all, default=0) if not dropped else 0,
        trained_per_row_median=statistics.median(trained_all + [0] * dropped) if trained_all or dropped else 0,
        trained_per_row_max=max(trained_all, default=0), rows_over_max_length=over,
        rows_without_trained_tokens=empty + dropped, max_length=max_length,
    )
    return stats, full


def marked_text(tokenizer: PreTrainedTokenizerBase, ids: list[int], labels: list[int]) -> str:
    """The row's text with the trained spans wrapped in ⟦ ⟧."""
    parts: list[str] = []
    run: list[int] = []
    trained_run = False
    for tok, label in [*zip(ids, labels, strict=True), (None, None)]:
        is_trained = label is not None and label != IGNORE_INDEX
        if tok is None or is_trained != trained_run:
            if run:
                text = str(tokenizer.decode(run, skip_special_tokens=False))
                parts.append(f"{MARK_OPEN}{text}{MARK_CLOSE}" if trained_run else text)
            run, trained_run = [], is_trained
        if tok is not None:
            run.append(tok)
    return "".join(parts)


def _rows_with_empty_answers(full: Dataset, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Positions in ``full`` of rows with a prompt that train nothing but end tokens: an empty or
    blank answer. (Rows without a masked prompt are raw text, trained whole.)"""
    from tunekit.data.chat import answer_is_empty, special_ids

    specials = special_ids(tokenizer)
    return [
        j for j, (ids, labels) in enumerate(zip(full["input_ids"], full["labels"], strict=True))
        if IGNORE_INDEX in labels
        and answer_is_empty(tokenizer, [t for t, x in zip(ids, labels, strict=True) if x != IGNORE_INDEX], specials)
    ]


def has_token_labels(full: Dataset) -> bool:
    """Whether tokenized rows label tokens (``labels`` as long as ``input_ids``), not whole rows (``classify``)."""
    if "labels" not in full.column_names or not len(full):
        return False
    first = full[0]
    return isinstance(first["labels"], list) and len(first["labels"]) == len(first["input_ids"])


def label_findings(objective_name: str, full: Dataset, tokenizer: PreTrainedTokenizerBase) -> list[Finding]:
    from tunekit.data.chat import end_of_turn_id

    findings: list[Finding] = []
    if not has_token_labels(full):  # a classification head's rows: one label per row, no tokens to check
        return findings
    eos = tokenizer.eos_token_id
    empty = _rows_with_empty_answers(full, tokenizer)
    if empty:
        first = full[empty[0]]["row"] if "row" in full.column_names else empty[0]
        findings.append(Finding(severity="error", code="rows-with-empty-answers", message=(
            f"{len(empty)} of {len(full)} rows have an empty answer (first: row {first}): they train only the "
            "end token, so their loss is near 0 and they teach the model to answer nothing; fill in or drop them.")))
    if objective_name == "sft" and eos is not None:
        # A turn closed by the template's own end-of-turn token (<|im_end|>, <|eot_id|>) ends the answer too.
        ends = {eos} | ({eot} if (eot := end_of_turn_id(tokenizer)) is not None else set())
        missing = sum(1 for labels in full["labels"] if not ends & {x for x in labels if x != IGNORE_INDEX})
        if missing == len(full) and len(full):
            findings.append(Finding(severity="error", code="eos-not-trained", message=(
                f"no row trains the EOS token {tokenizer.eos_token!r}, so the tuned model will not learn to "
                "stop; keep the sft option append_eos=true, or end answers with the end-of-turn token.")))
        elif missing:
            findings.append(Finding(severity="warning", code="eos-not-trained", message=f"{missing} of {len(full)} rows do not train the EOS token."))
    if tokenizer.pad_token_id is not None and tokenizer.pad_token_id == eos:
        findings.append(Finding(severity="info", code="pad-equals-eos", message=(
            "the pad token equals EOS; tunekit masks padding by position (attention mask), not by token id, "
            "so EOS is still trained. A collator that masks the pad id would untrain it.")))
    return findings


def template_findings(tokenizer: PreTrainedTokenizerBase, row_format: str) -> list[Finding]:
    """Check that the chat template used in training is the one saved with the tokenizer."""
    if row_format != "chat" and not getattr(tokenizer, "chat_template", None):
        return []
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        saved = AutoTokenizer.from_pretrained(tmp).chat_template
    if saved != tokenizer.chat_template:
        return [Finding(severity="error", code="template-mismatch", message=(
            "the chat template used for training differs from the one saved with the tokenizer; set "
            "data.chat_template so both are the same."))]
    return []


def boundary_findings(rows: Dataset, row_format: str) -> list[Finding]:
    """A warning when prompt/completion rows run straight into their answer (``"2+2="`` then ``"4"``):
    concatenated with nothing between, the model cannot tell where a prompt ends, and at inference
    it is prompted with text that never ended there in training. Chat rows have the template's turn
    boundary; wrapped prompt/completion rows are chat rows by now."""
    if row_format != "prompt_completion" or "prompt" not in rows.column_names:
        return []
    glued = [
        i for i, (prompt, completion) in enumerate(zip(rows["prompt"], rows["completion"], strict=True))
        if prompt and completion and not prompt[-1].isspace() and not completion[0].isspace()
    ]
    if not glued:
        return []
    first = rows[glued[0]]
    return [Finding(severity="warning", code="prompt-glued-to-answer", message=(
        f"{len(glued)} of {len(rows)} prompt/completion rows run straight into their answer with no space, newline "
        f"or turn boundary between them (row {glued[0]}: ...{first['prompt'][-30:]!r} + {first['completion'][:30]!r}...). "
        "End each prompt with a separator (a newline, or 'Answer:' and a space) or start each completion with a "
        "space; or train an instruct model with its chat template (data.chat_template='auto' or 'always', or a "
        "template string), which renders each row as a user turn and an assistant turn."))]


def _prompt_text(prompt: Any) -> str:
    """A prompt's text: itself, or its chat messages' contents joined."""
    return prompt if isinstance(prompt, str) else "".join(str(m.get("content") or "") for m in prompt or [])


def pair_findings(rows: Dataset, row_format: str) -> list[Finding]:
    """Errors for preference pairs that teach nothing, or the wrong thing: a chosen answer identical to the
    rejected one (no preference to learn), an empty answer (the model is pushed toward or away from
    saying nothing) and an empty prompt (an answer to no question)."""
    if row_format != "preference" or "chosen" not in rows.column_names:
        return []
    checks = {
        "identical-pair": ("have the same chosen and rejected answer, so there is no preference to learn; fix or drop them",
                           lambda r: r["chosen"].strip() == r["rejected"].strip()),
        "empty-answer-in-pair": ("have an empty chosen or rejected answer; give both answers",
                                 lambda r: not r["chosen"].strip() or not r["rejected"].strip()),
        "empty-prompt-in-pair": ("have an empty prompt, so their answers answer nothing; give each pair its prompt",
                                 lambda r: not _prompt_text(r["prompt"]).strip()),
    }
    findings = []
    for code, (what, bad) in checks.items():
        found = [i for i, row in enumerate(rows) if bad(row)]
        if found:
            findings.append(Finding(severity="error", code=code, message=(
                f"{len(found)} of {len(rows)} preference pairs (first: row {found[0]}) {what}.")))
    return findings


_BLOCK_RE = re.compile(r"\.(\d+)\.")


def params_by_block(model: torch.nn.Module) -> tuple[list[ParamGroup], list[Finding]]:
    """Trainable/total parameters per block: embeddings, each transformer block, head, other."""
    from tunekit.models.inspect import decoder_blocks, output_head_names, weight_count

    blocks_name, _ = decoder_blocks(model)
    heads = output_head_names(model)
    get_embed = getattr(model, "get_input_embeddings", None)
    embed = get_embed() if callable(get_embed) else None
    embed_names = {n for n, m in model.named_modules() if m is embed and embed is not None}
    groups: dict[str, list[int]] = {}
    seen: dict[int, str] = {}
    findings: list[Finding] = []
    for name, param in model.named_parameters(remove_duplicate=False):
        key = param.data_ptr()
        if key in seen:  # a tied parameter: counted once, under its first name
            if param.requires_grad:
                findings.append(Finding(severity="warning", code="tied-weights-trained", message=(
                    f"{name} is tied to {seen[key]} and trains: updating one updates the other.")))
            continue
        seen[key] = name
        if any(name.startswith(h + ".") for h in heads):
            group = "head"
        elif any(name.startswith(e + ".") for e in embed_names) or "embed" in name or ".wpe." in name:
            group = "embeddings"
        elif blocks_name and name.startswith(blocks_name + ".") and (m := _BLOCK_RE.match(name[len(blocks_name):])):
            group = f"block {int(m.group(1))}"
        else:
            group = "other"
        counts = groups.setdefault(group, [0, 0])
        counts[1] += weight_count(param)  # the count fit and compare report (4-bit weights unpacked)
        if param.requires_grad:
            counts[0] += weight_count(param)

    def order(item: tuple[str, list[int]]) -> tuple[int, int]:
        name = item[0]
        if name == "embeddings":
            return (0, 0)
        if name.startswith("block "):
            return (1, int(name.split()[1]))
        return (2, 0) if name == "head" else (3, 0)

    return [ParamGroup(name=n, trainable=c[0], total=c[1]) for n, c in sorted(groups.items(), key=order)], findings


def estimate_step(
    model: torch.nn.Module,
    tokenized: Dataset,
    *,
    pad_token_id: int,
    batch_size: int,
    accumulation: int,
    device: str,
    repeats: int = 2,
    trained_logits: bool = False,
) -> Estimate:
    """Measure forward+backward on the longest real batch and add what the optimizer will hold.

    Nothing is updated: gradients are computed and dropped. Peak memory = the measured peak of
    forward+backward (which already holds the gradients) + AdamW's two fp32 moments per
    trainable parameter; time per step = measured forward+backward x accumulation.
    ``trained_logits``: the loss is computed as fit computes it then
    (:func:`tunekit.training.loss.trained_logits_loss`).
    """
    import torch

    from tunekit.training.loss import trained_logits_loss
    from tunekit.training.memory import PeakMemory

    order = sorted(range(len(tokenized)), key=lambda i: -len(tokenized[i]["input_ids"]))[:batch_size]
    batch = PadPerBatch(pad_token_id)([tokenized[i] for i in order])
    dev = next(model.parameters()).device
    if str(device).split(":")[0] != dev.type:  # measuring one device while the model runs on another measures nothing
        raise TunekitError(f"estimate_step: the model is on {dev}, but the memory of {device!r} would be measured.")
    batch = {k: v.to(dev) for k, v in batch.items()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    was_training = model.training
    model.train()
    timings = []
    try:
        with PeakMemory(device) as peak:
            for _ in range(repeats):
                start = time.perf_counter()
                loss = trained_logits_loss(model, batch) if trained_logits else model(**batch).loss
                loss.backward()
                if dev.type == "cuda":
                    torch.cuda.synchronize(dev)
                timings.append(time.perf_counter() - start)
    finally:
        for p in trainable:
            p.grad = None
        model.train(was_training)
    optimizer_state = sum(2 * p.numel() * 4 for p in trainable)
    return Estimate(
        peak_memory_bytes=peak.peak_bytes + optimizer_state, peak_memory_kind=peak.kind,
        seconds_per_step=min(timings[1:] or timings) * accumulation, batch_size=len(order),
        sequence_length=int(batch["input_ids"].shape[1]),
        method=f"measured forward+backward on the longest batch (best of {repeats}) + AdamW state",
    )


def audit(
    config: TuneConfig, model: Any, tokenizer: PreTrainedTokenizerBase, rows: PreparedRows, *, estimate: bool = True,
    sample_rows: int = 2000, trains_tied_weights: bool = False, tokenization: TokenizationCache | None = None,
) -> PreflightReport:
    """The report ``Tuner.preflight`` returns: token statistics, the label audit, the chat-template
    check, trainable parameters by block and (``estimate``) a measured step, on up to
    ``sample_rows`` of ``rows``. ``trains_tied_weights``: the strategy trains tied weights on
    purpose (full fine-tuning), so tying is reported as information, not a warning."""
    from tunekit.data.preparation import TokenizationCache, choose
    from tunekit.training.loss import use_trained_logits

    train = rows.train.select(range(min(len(rows.train), sample_rows)))
    name, objective = choose(config, rows.format)
    if getattr(objective, "task", "causal-lm") != "causal-lm":
        from tunekit.errors import ConfigError, Problem

        raise ConfigError([Problem("objective", (
            f"preflight audits objectives that label tokens; {name!r} trains a "
            f"{getattr(objective, 'task', '?')} head, which it does not audit yet. fit checks the rows and "
            "labels itself"))])
    if callable(getattr(objective, "trainer", None)):
        # trained by its own (trl's) trainer on pairs or sampled answers, not on token labels: the data checks and
        # the parameter table; its step (two passes and a reference for dpo, generation for grpo) is not estimated
        report = PreflightReport(objective=name, row_format=rows.format)
        report.findings += template_findings(tokenizer, rows.format) + pair_findings(train, rows.format)
        report.params_by_block, tied = params_by_block(model)
        report.findings += [f.model_copy(update={"severity": "info"}) for f in tied] if trains_tied_weights else tied
        return report
    max_length = config.training.max_length
    stats, full = token_stats(objective, train, tokenizer, max_length)
    report = PreflightReport(objective=name, row_format=rows.format, token_stats=stats)
    report.label_samples = [marked_text(tokenizer, full[i]["input_ids"], full[i]["labels"]) for i in range(min(3, len(full)))]
    report.findings += label_findings(name, full, tokenizer)
    report.findings += template_findings(tokenizer, rows.format)
    report.findings += boundary_findings(train, rows.format)
    report.findings += pair_findings(train, rows.format)
    if stats.rows_without_trained_tokens:
        severity: Literal["error", "warning"] = "error" if stats.rows_without_trained_tokens == stats.rows else "warning"
        report.findings.append(Finding(severity=severity, code="rows-without-trained-tokens", message=(
            f"{stats.rows_without_trained_tokens} of {stats.rows} rows have no trained token inside "
            f"max_length={max_length}; raise training.max_length or shorten the prompts.")))
    if stats.rows_over_max_length:
        report.findings.append(Finding(severity="warning", code="rows-over-max-length", message=(
            f"{stats.rows_over_max_length} of {stats.rows} rows are longer than max_length={max_length} "
            f"(the {name!r} objective truncates or splits them).")))
    report.params_by_block, tied = params_by_block(model)
    if trains_tied_weights:
        tied = [f.model_copy(update={"severity": "info"}) for f in tied]
    report.findings += tied
    if estimate and not report.errors:
        tokenized = (tokenization or TokenizationCache(size=1)).tokenize(config, name, objective, rows.format, train, tokenizer)
        t = config.training
        step = estimate_step(
            model, tokenized, pad_token_id=int(tokenizer.pad_token_id), batch_size=t.batch_size,
            accumulation=t.gradient_accumulation, device=str(next(model.parameters()).device),
            trained_logits=use_trained_logits(model, t.trained_logits_only),
        )
        steps = t.planned_steps(len(rows.train))
        report.estimate = step.model_copy(update={"total_steps": steps, "total_seconds": steps * step.seconds_per_step})
    return report
