#!/usr/bin/env python
"""tunekit's benchmark suite: every figure is a ratio against a baseline measured in the same run.

Our machines are shared and noisy, so an absolute time is only a note. Each comparison runs
its two sides interleaved (step by step where that is possible, run by run otherwise), repeats
the runs and reports the median ratio with its spread.

    python benchmarks/bench.py --quick          # tiny models only, a few minutes
    python benchmarks/bench.py                  # tiny models and the real smollm2-135m
    nox -s bench -- --quick                     # the same through nox

Cases (``--cases`` selects some):

overhead     tunekit's LoRA training step against a hand-written torch + peft + AdamW loop on the
             same model, the same batches (recorded from tunekit's collator and replayed) and the
             same precision; the two alternate step by step. Target: <= 1.10x.
utilization  achieved FLOP/s of tunekit's LoRA training step (its own fit) and of the hand-written
             step, FLOPs counted exactly per batch (torch's FlopCounterMode), against the fp32 matmul
             FLOP/s measured in the same process (square and the model's linear shape, best of a
             few). Target on smollm2-135m: >= 0.80.
classic      the widely copied recipe (trl's SFTTrainer with its defaults, an 8-bit base, every row
             padded to max_length 512; repaired just enough to run, see ``run_classic``) against
             tunekit's defaults on the same mixed-length rows: real (non-pad) tokens per second,
             and the eval loss after the same real tokens (one epoch of the same rows each).
levers       what each of tunekit's choices buys: a plain loop on tunekit's model, with one lever
             switched back to the classic choice at a time, step-interleaved, real tokens/s.
memory       peak memory of a LoRA fit on bnb-4bit and bnb-8bit bases against none, and of full
             fine-tuning against LoRA; each fit in its own subprocess so the peaks are separate.
scaling      time per training step against sequence length and batch size, next to the FLOP
             count that predicts it (counted by torch's FlopCounterMode; attention grows with the
             square of the length).
load         first load of the GGUF model alias (de-quantize and cache) against the cached load.
generation   rows/s of evaluation's greedy answers (``tunekit.evaluation.generate_answers``) against
             plain batched ``model.generate`` over the same iso-dates chat prompts in input order,
             left-padded, same batch size and budget; runs alternate; and whether the answers are identical.
compile      torch.compile of the model for the LoRA step, on and off, same batches of varying
             length, step-interleaved: the steady-state step ratio, the compile time apart (in
             eager steps) and the ratio amortised over AMORTISE_STEPS steps. CPU only.
accelerator  where CUDA exists: the overhead case on the device and the model FLOPs utilisation
             (counted FLOPs) against the device's measured bf16 matmul rate (target >= 0.40 on
             smollm2-135m). Skipped, with a note, elsewhere.

Results go to ``--out`` (default ``benchmarks/results``) as ``bench.json`` and ``bench.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import functools
import json
import logging
import math
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# libgomp's default wait policy spins at every parallel barrier; on a shared CPU a thread spinning
# for a descheduled partner stalls every op (here: a 135M-model step 5-10x slower with 2 threads).
# PASSIVE is set before torch loads; the "omp_passive" lever measures what it buys. Override by
# exporting OMP_WAIT_POLICY yourself.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")

warnings.filterwarnings("ignore", category=FutureWarning)
warnings.filterwarnings("ignore", message=".*MatMul8bitLt.*")
warnings.filterwarnings("ignore", message=".*inputs will be cast.*")

REAL = "smollm2-135m"
GPT2_SHAPE = "gpt2-124m-shape"  # the classic recipe's model, randomly initialised (full mode only)
CASES = ("overhead", "speed", "utilization", "classic", "levers", "memory", "scaling", "threads", "load", "generation", "compile", "accelerator")
BATCH = 8  # tunekit's and trl's default batch size
DEFAULT_OUT = Path(__file__).resolve().parent / "results"


# ---------------------------------------------------------------------------------------------
# settings and results
# ---------------------------------------------------------------------------------------------
@dataclass
class Settings:
    """How much of each case runs. ``quick``: tiny models only."""

    quick: bool
    smoke: bool
    repeats: int
    warmup: int
    steps: int  # timed steps per run on tiny models
    real_steps: int  # timed steps per run on the real model
    real: bool  # run the real-model rows
    real_note: str = ""
    memory_runs: tuple[str, ...] = ()  # the memory case's runs (default: all of MEMORY_RUNS)

    def steps_for(self, model: str) -> int:
        return self.real_steps if model == REAL else self.steps


@dataclass
class Row:
    """One line of the table: a ratio against a baseline measured in the same run."""

    id: str
    case: str
    model: str
    measure: str
    value: float | None = None
    unit: str = "x"
    spread: tuple[float, float] | None = None
    n: int = 0
    target: str = ""
    met: bool | None = None
    status: str = "ok"  # ok | skipped | error
    detail: str = ""
    data: dict[str, Any] = field(default_factory=dict)


class Results:
    def __init__(self, settings: Settings, argv: list[str]):
        self.settings = settings
        self.rows: list[Row] = []
        self.started = time.time()
        self.meta: dict[str, Any] = {"argv": argv, "load_average_start": _loadavg()}

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        shown = _fmt_value(row) if row.status == "ok" else row.status
        print(f"[bench] {row.id}: {shown}  {row.detail}", flush=True)
        return row

    def skip(self, id: str, case: str, model: str, measure: str, why: str) -> Row:
        return self.add(Row(id, case, model, measure, status="skipped", detail=why))


def ratio_summary(ratios: list[float]) -> tuple[float, tuple[float, float], int]:
    return statistics.median(ratios), (min(ratios), max(ratios)), len(ratios)


def _loadavg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def _fmt_value(row: Row) -> str:
    if row.value is None:
        return "-"
    v = row.value
    text = f"{v:.2f}" if abs(v) < 10 else f"{v:.1f}" if abs(v) < 100 else f"{v:.0f}"
    if row.unit == "x":
        text += "x"
    elif row.unit:
        text += f" {row.unit}"
    if row.spread and row.n > 1:
        lo, hi = row.spread
        text += f" ({lo:.2f}-{hi:.2f}, n={row.n})"
    elif row.n:
        text += f" (n={row.n})"
    return text


# ---------------------------------------------------------------------------------------------
# models and data
# ---------------------------------------------------------------------------------------------
class Workspace:
    """Tiny models built on the fly, and the real model alias (converted once, then cached)."""

    def __init__(self, root: Path):
        self.root = root
        self._built: dict[str, Path] = {}

    def model(self, name: str) -> str:
        """What to pass to ``Tuner(model=...)``."""
        return REAL if name == REAL else str(self.local_path(name))

    def local_path(self, name: str) -> Path:
        """A transformers directory for ``name`` (for the hand-written loops and trl)."""
        if name == REAL:
            from tunekit.models.loading import materialize, resolve_source

            return Path(materialize(resolve_source(REAL)).path)
        if name not in self._built:
            from tunekit.testing import build_tiny_model

            path = self.root / "models" / name
            if name == "tiny-gpt2":
                build_tiny_model(path, arch="gpt2")
            elif name == "tiny-llama":  # longer context for the scaling case (rope: no position weights)
                build_tiny_model(path, arch="llama")
                _set_config(path, max_position_embeddings=4096)
            elif name == "tiny-llama-wide":  # ~38M parameters, so weights show in memory figures
                build_tiny_model(path, arch="llama", hidden=1024, layers=4)
            elif name == GPT2_SHAPE:
                build_gpt2_shape(path)
            else:
                raise ValueError(f"unknown benchmark model {name!r}")
            self._built[name] = path
        return self._built[name]

    def run_dir(self, label: str) -> Path:
        path = self.root / "runs" / f"{label}-{time.monotonic_ns()}"
        path.parent.mkdir(parents=True, exist_ok=True)
        return path


def build_gpt2_shape(path: Path) -> None:
    """GPT-2 small's exact shape (124M parameters: 12 layers, 768 wide, 50257-token vocabulary, tied
    head), randomly initialised: the hub's weights are out of reach here, and the classic recipe's
    cost depends on the shape, not on the weights. The tiny tokenizer's ids are a subset of the
    vocabulary, so the rows are the same as for the tiny models."""
    import torch
    from transformers import AutoModelForCausalLM, GPT2Config

    from tunekit.testing import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer("gpt2")
    config = GPT2Config(vocab_size=50257, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(path)
    tokenizer.save_pretrained(path)


def _set_config(path: Path, **values: Any) -> None:
    cfg_file = path / "config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg.update(values)
    cfg_file.write_text(json.dumps(cfg, indent=2))


def mixed_rows(n: int, seed: int = 0) -> list[dict[str, str]]:
    """Prompt/completion rows of mixed length, like instruction data: mostly short, a long tail.

    The prompt holds 2 to 150 words (log-normal, median about 12); the answer is the last three
    words reversed. Words come from the tiny tokenizer's vocabulary, so tiny and real models see
    comparable lengths (a real tokenizer makes the rows about 1.3 tokens per word).
    """
    from tunekit.testing import WORDS

    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        k = min(150, 2 + int(rng.lognormvariate(2.4, 0.9)))
        words = [rng.choice(WORDS) for _ in range(k)]
        rows.append({"prompt": "Text: " + " ".join(words) + "\nLast three, reversed:", "completion": " " + " ".join(words[::-1][:3])})
    return rows


def tokenized(rows: list[dict[str, str]], tokenizer: Any, max_length: int = 512) -> list[dict[str, Any]]:
    """Rows tokenized by tunekit's ``sft`` objective (loss on the answer only), as plain dicts."""
    from datasets import Dataset

    from tunekit.builtin.objectives import SFTObjective, SFTOptions

    ds = SFTObjective(SFTOptions()).tokenize(Dataset.from_list(rows), tokenizer, max_length=max_length)
    return [ds[i] for i in range(len(ds))]


# ---------------------------------------------------------------------------------------------
# timing helpers
# ---------------------------------------------------------------------------------------------
def sync() -> None:
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


@dataclass
class Record:
    """What a training run did, step by step: its batches, real tokens and step times."""

    features: list[list[dict[str, Any]]] = field(default_factory=list)
    batches: list[dict[str, Any]] = field(default_factory=list)  # what the collator returned (same tensors)
    real_tokens: list[int] = field(default_factory=list)
    padded_tokens: list[int] = field(default_factory=list)
    step_times: list[float] = field(default_factory=list)
    t: float = 0.0


class RecordingCollator:
    """Wraps a collator and records what it batched (the features and the real-token count)."""

    def __init__(self, inner: Any, record: Record):
        self.inner, self.record = inner, record

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        out = self.inner(features)
        self.record.features.append(features)
        self.record.batches.append(dict(out))  # a shallow copy: the Trainer may pop keys from its own
        mask = out.get("attention_mask")
        ids = out["input_ids"]
        self.record.real_tokens.append(int(mask.sum()) if mask is not None else int(ids.numel()))
        self.record.padded_tokens.append(int(ids.numel()))
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def step_clock(record: Record, between: Callable[[int], None] | None = None, begin: Callable[[Any], None] | None = None) -> Any:
    """A TrainerCallback that times each step end to end (data, forward, backward, optimizer,
    scheduler, callbacks, logging): the time between consecutive step ends. ``between(i)`` runs
    after step ``i`` and is not counted; ``begin(model)`` runs before the first step."""
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):  # type: ignore[misc]
        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if begin is not None:
                begin(kw["model"])
            sync()
            record.t = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            sync()
            now = time.perf_counter()
            record.step_times.append(now - record.t)
            if between is not None:
                between(len(record.step_times) - 1)
                sync()
            record.t = time.perf_counter()

    return StepClock()


@contextlib.contextmanager
def instrument_tunekit(between: Callable[[Record, int], None] | None = None, begin: Callable[[Any], None] | None = None) -> Iterator[Record]:
    """Record tunekit's batches and time its steps, by wrapping the collator ``fit`` hands to
    ``tunekit.training.loop.train`` (the objective's) and adding a callback there (its only two
    seams; nothing else changes)."""
    import tunekit.training.loop as loop

    record = Record()
    original_callbacks, original_train = loop._callbacks, loop.train

    def callbacks(*args: Any, **kwargs: Any) -> list[Any]:
        hook = (lambda i: between(record, i)) if between else None
        return [*original_callbacks(*args, **kwargs), step_clock(record, hook, begin)]

    def train(model: Any, tokenizer: Any, *args: Any, **kwargs: Any) -> Any:
        inner = kwargs.get("collator") or loop.PadPerBatch(pad_token_id=int(tokenizer.pad_token_id))
        kwargs["collator"] = RecordingCollator(inner, record)
        return original_train(model, tokenizer, *args, **kwargs)

    loop._callbacks, loop.train = callbacks, train  # type: ignore[assignment]
    try:
        yield record
    finally:
        loop._callbacks, loop.train = original_callbacks, original_train  # type: ignore[assignment]


def tokens_per_second(record: Record, skip: int) -> float:
    tokens = sum(record.real_tokens[skip : len(record.step_times)])
    seconds = sum(record.step_times[skip:])
    return tokens / seconds if seconds > 0 else float("nan")


def tunekit_fit(
    ws: Workspace, model: str, rows: list[dict[str, Any]], *, label: str, between: Any = None, begin: Any = None, **config: Any
) -> tuple[Any, Any, Record]:
    """``Tuner(model=..., **config).fit(rows)`` with its steps timed and its batches recorded."""
    from tunekit import Tuner

    tuner = Tuner(model=ws.model(model), output_dir=str(ws.run_dir(label)), **config)
    with instrument_tunekit(between, begin) as record:
        result = tuner.fit(rows, overwrite=True)
    return tuner, result, record


# ---------------------------------------------------------------------------------------------
# hand-written loops
# ---------------------------------------------------------------------------------------------
def hand_collate(features: list[dict[str, Any]], pad_id: int, pad_to: int | None = None) -> dict[str, Any]:
    """Pad a batch to its longest row (or to ``pad_to``), written out by hand."""
    import torch

    n = pad_to or max(len(f["input_ids"]) for f in features)
    ids = torch.full((len(features), n), pad_id, dtype=torch.long)
    labels = torch.full((len(features), n), -100, dtype=torch.long)
    mask = torch.zeros((len(features), n), dtype=torch.long)
    for i, f in enumerate(features):
        k = len(f["input_ids"])
        ids[i, :k] = torch.tensor(f["input_ids"])
        labels[i, :k] = torch.tensor(f["labels"])
        mask[i, :k] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def flat_collate(features: list[dict[str, Any]]) -> dict[str, Any]:
    """Padding-free batch: tunekit's ``training.packing`` collator (rows side by side, positions restarting)."""
    from tunekit.data.collate import PackedRows

    return PackedRows()(features)


class PlainLoop:
    """forward, backward, clip, AdamW step, linear schedule: what one writes by hand."""

    def __init__(self, model: Any, *, lr: float, total_steps: int, device: str, autocast: Any = None, trained_logits: bool = False):
        import torch

        self.model, self.device, self.autocast, self.trained_logits = model, device, autocast, trained_logits
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=lr, weight_decay=0.0)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: max(0.0, 1.0 - s / max(1, total_steps)))
        model.train()

    def step(self, batch: dict[str, Any], *, autocast: Any = "default", metrics: bool = False, trained_logits: bool | None = None) -> float:
        """One step. ``trained_logits``: the loss tunekit's Trainer uses (head only on trained positions)."""
        import torch

        from tunekit.training.loss import trained_logits_loss

        dtype = self.autocast if autocast == "default" else autocast
        trained_logits = self.trained_logits if trained_logits is None else trained_logits
        batch = {k: v.to(self.device) if hasattr(v, "to") else v for k, v in batch.items()}
        with torch.autocast(self.device, dtype=dtype or torch.float32, enabled=dtype is not None):
            if trained_logits and not metrics:
                loss = trained_logits_loss(self.model, batch)
            else:
                out = self.model(**batch)
                loss = out.loss
        if metrics:  # what trl's SFTTrainer computes every step: entropy and token accuracy over the vocabulary
            logits = out.logits[:, :-1].float()
            labels = batch["labels"][:, 1:]
            valid = labels != -100
            logp = torch.log_softmax(logits.detach(), dim=-1)
            entropy = -(logp.exp() * logp).sum(-1)[valid].mean()
            accuracy = (logits.detach().argmax(-1) == labels)[valid].float().mean()
            _ = (entropy.item(), accuracy.item())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.opt.step()
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        return float(loss.detach())


def load_lora_by_hand(ws: Workspace, model: str, tuner: Any) -> Any:
    """The same base and the same LoRA configuration as ``tuner``, built with plain transformers + peft."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    dtype = tuner.precision.compute_dtype  # tunekit keeps a frozen base in the compute dtype
    base = AutoModelForCausalLM.from_pretrained(str(ws.local_path(model)), dtype=dtype)
    base = base.to(tuner.precision.device)
    return get_peft_model(base, tuner.strategy.peft_config(base))


def autocast_dtype(precision: Any) -> Any:
    return precision.compute_dtype if precision.name in {"bf16", "fp16"} else None


# ---------------------------------------------------------------------------------------------
# FLOPs counted, and the matmul rate they are measured against
# ---------------------------------------------------------------------------------------------
ATTENTION_OPS = ("bmm", "baddbmm")
"""Counted ops that are attention when no fused attention kernel runs: eager attention's
``q @ k^T`` and ``p @ v`` are batched matmuls; the linear layers run as ``mm``/``addmm``."""


def _cpu_sdpa_formulas() -> dict[Any, Any]:
    """FLOP formulas for the CPU flash-attention kernels, which torch's counter does not know (so a
    CPU step's attention would count as zero): the same formulas torch uses for the CUDA kernels
    (the full L x L square, causal or not)."""
    import torch
    from torch.utils import flop_counter

    aten = torch.ops.aten
    formulas: dict[Any, Any] = {}

    def forward(query: Any, key: Any, value: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
        return int(flop_counter.sdpa_flop_count(query, key, value))

    def backward(grad_out: Any, query: Any, key: Any, value: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
        return int(flop_counter.sdpa_backward_flop_count(grad_out, query, key, value))

    for name, formula in (("_scaled_dot_product_flash_attention_for_cpu", forward), ("_scaled_dot_product_flash_attention_for_cpu_backward", backward)):
        op = getattr(aten, name, None)
        if op is not None and op not in flop_counter.flop_registry:  # a later torch may count it itself
            formulas[op] = formula
    return formulas


def default_loss(model: Any, batch: dict[str, Any]) -> Any:
    """The model's own loss (transformers' ``forward(labels=...)``: the head on every position)."""
    return model(**batch).loss


def tunekit_loss(model: Any, setting: bool | str = "auto") -> Callable[[Any, dict[str, Any]], Any]:
    """The loss tunekit's Trainer trains ``model`` on for ``training.trained_logits_only=setting``
    (with ``training.shared_prefix`` at its default, so a batch sharing a prefix is counted as it runs)."""
    from tunekit.training.loss import trained_logits_loss, use_trained_logits
    from tunekit.training.shared_prefix import use_shared_prefix

    if not use_trained_logits(model, setting):
        return default_loss
    shared = use_shared_prefix(model, "auto", trained_logits=True)

    def tunekit_trained_logits_loss(model: Any, batch: dict[str, Any]) -> Any:
        return trained_logits_loss(model, batch, shared_prefix=shared)

    return tunekit_trained_logits_loss


def counted_step_flops(model: Any, batch: dict[str, Any], loss_fn: Callable[[Any, dict[str, Any]], Any] | None = None) -> dict[str, Any]:
    """The FLOPs of one training step's forward and backward on ``batch``, counted op by op by
    ``torch.utils.flop_counter.FlopCounterMode`` (matmuls and attention, forward and backward; the
    CPU attention kernels added, see ``_cpu_sdpa_formulas``). Elementwise work and the optimizer
    are not counted, by the usual convention. The gradients the step leaves are put back as they
    were, so counting does not change training.

    Returns ``total``, ``by_op`` (op name -> FLOPs), ``attention`` (the attention kernels, or the
    batched matmuls of eager attention) and ``other`` (the rest: the linear layers and the head).
    """
    from torch.utils.flop_counter import FlopCounterMode

    loss_fn = loss_fn or default_loss
    device = next(model.parameters()).device
    batch = {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}
    saved = {p: p.grad for p in model.parameters() if p.requires_grad}
    counter = FlopCounterMode(display=False, custom_mapping=_cpu_sdpa_formulas())
    try:
        with counter:
            loss_fn(model, batch).backward()
    finally:
        for p, g in saved.items():
            p.grad = g
    by_op = {str(op).removeprefix("aten."): int(n) for op, n in counter.get_flop_counts().get("Global", {}).items()}
    total = int(counter.get_total_flops())
    attention = sum(n for op, n in by_op.items() if "attention" in op or op in ATTENTION_OPS)
    return {"total": total, "by_op": by_op, "attention": attention, "other": total - attention}


def _matmul_rate_of(shape: tuple[int, int, int], dtype: Any, device: str, *, repeats: int, min_seconds: float) -> float:
    """Best FLOP/s of ``(m x k) @ (k x n)`` over ``repeats`` timings of at least ``min_seconds`` each."""
    import torch

    m, k, n = shape
    a = torch.randn(m, k, device=device, dtype=dtype)
    b = torch.randn(k, n, device=device, dtype=dtype)
    c = torch.empty(m, n, device=device, dtype=dtype)
    for _ in range(2):
        torch.mm(a, b, out=c)
    sync()
    iters, best = 1, 0.0
    for _ in range(repeats + 1):  # the first timing only sizes the others
        t = time.perf_counter()
        for _ in range(iters):
            torch.mm(a, b, out=c)
        sync()
        elapsed = time.perf_counter() - t
        if elapsed >= min_seconds:
            best = max(best, 2 * m * k * n * iters / elapsed)
        else:
            iters = max(iters + 1, math.ceil(iters * min_seconds * 1.2 / max(elapsed, 1e-9)))
    return best or 2 * m * k * n * iters / elapsed


def matmul_rates(shapes: dict[str, tuple[int, int, int]], dtype: Any, device: str, *, repeats: int = 3, min_seconds: float = 0.2) -> dict[str, Any]:
    """Measured matmul FLOP/s of each ``(m, k, n)`` shape on ``device``; ``rate`` is the best of them
    and ``shape`` names it."""
    rates = {name: _matmul_rate_of(shape, dtype, device, repeats=repeats, min_seconds=min_seconds) for name, shape in shapes.items()}
    best = max(rates, key=lambda name: rates[name])
    return {"rate": rates[best], "shape": best, "rates": rates, "shapes": {k: list(v) for k, v in shapes.items()}, "dtype": str(dtype).removeprefix("torch.")}


def linear_shape(model: Any, tokens: int) -> tuple[int, int, int]:
    """The step's typical linear layer as a matmul: (tokens x hidden) @ (hidden x intermediate)."""
    cfg = model.config
    hidden = int(cfg.hidden_size)
    inner = getattr(cfg, "intermediate_size", None) or getattr(cfg, "n_inner", None) or 4 * hidden
    return (max(1, tokens), hidden, int(inner))


def matmul_rate(dtype: Any, n: int = 8192) -> float:
    """The CUDA device's measured matmul FLOP/s at ``dtype`` (square ``n``)."""
    return float(matmul_rates({f"{n}^3": (n, n, n)}, dtype, "cuda", repeats=3, min_seconds=0.5)["rate"])


def cpu_matmul_rate(dtype: Any = None, threads: int | None = None, model: Any = None, tokens: int = 0, *, repeats: int = 3) -> dict[str, Any]:
    """This process's measured CPU matmul FLOP/s at ``dtype`` (default float32) on ``threads``
    torch threads (default: the current count): square 1024 and 2048, and, given ``model`` and
    ``tokens``, the model's linear-layer shape (see ``linear_shape``). ``rate``: the best of them."""
    import torch

    dtype = dtype or torch.float32
    before = torch.get_num_threads()
    threads = threads or before
    shapes = {"1024^3": (1024, 1024, 1024), "2048^3": (2048, 2048, 2048)}
    if model is not None and tokens:
        m, k, n = linear_shape(model, tokens)
        shapes[f"({m}x{k})@({k}x{n})"] = (m, k, n)
    torch.set_num_threads(threads)
    try:
        out = matmul_rates(shapes, dtype, "cpu", repeats=repeats)
    finally:
        torch.set_num_threads(before)
    out["threads"] = threads
    return out


def gflops(rate: float) -> str:
    return f"{rate / 1e9:.1f} GFLOP/s"


# ---------------------------------------------------------------------------------------------
# case 1: overhead
# ---------------------------------------------------------------------------------------------
def overhead_once(
    ws: Workspace, s: Settings, model: str, rows: list[dict[str, Any]], steps: int, seed: int, strategy: Any = "lora",
    training: dict[str, Any] | None = None,
) -> tuple[Any, Record, list[float], PlainLoop]:
    """One tunekit fit with a hand-written step on the same batch after each of its steps (the
    tuner, tunekit's record, the hand-written steps' times and the hand-written loop)."""
    from tunekit import Tuner
    from tunekit.models.loading import load_tokenizer, resolve_source

    probe = Tuner(model=ws.model(model), strategy=strategy)  # nothing loads: for its choices only
    pad_id = int(load_tokenizer(resolve_source(ws.model(model))).pad_token_id)
    hand = PlainLoop(
        load_lora_by_hand(ws, model, probe), lr=probe.strategy.default_learning_rate, total_steps=steps,
        device=probe.precision.device, autocast=autocast_dtype(probe.precision),
    )
    hand_times: list[float] = []

    def between(record: Record, i: int) -> None:
        t = time.perf_counter()
        hand.step(hand_collate(record.features[i], pad_id))
        sync()
        hand_times.append(time.perf_counter() - t)

    def same_start(model: Any) -> None:  # the hand-written model starts from tunekit's initial adapter
        import torch

        mine = {n: p for n, p in model.named_parameters() if p.requires_grad}
        theirs = {n: p for n, p in hand.model.named_parameters() if p.requires_grad}
        if mine.keys() != theirs.keys():
            raise AssertionError(f"the hand-written model trains other parameters: {sorted(mine.keys() ^ theirs.keys())[:4]}")
        with torch.no_grad():
            for name, p in theirs.items():
                p.copy_(mine[name])

    tuner, _, rec = tunekit_fit(
        ws, model, rows, label=f"overhead-{model}", between=between, begin=same_start, strategy=strategy,
        training={"max_steps": steps, "seed": seed, **(training or {})},
    )
    return tuner, rec, hand_times, hand


def overhead_runs(ws: Workspace, s: Settings, model: str) -> dict[str, Any]:
    """Interleaved tunekit / hand-written steps on the same batches; per-repeat medians."""
    steps = s.warmup + s.steps_for(model)
    rows = mixed_rows(BATCH * steps, seed=1)
    ratios, tk_all, hand_all, real_tokens, feats_all, batches_all = [], [], [], [], [], []
    precision = ""
    for r in range(s.repeats):
        tuner, rec, hand_times, _ = overhead_once(ws, s, model, rows, steps, seed=42 + r)
        precision = tuner.precision.name
        tk, hd = rec.step_times[s.warmup :], hand_times[s.warmup :]
        ratios.append(statistics.median(tk) / statistics.median(hd))
        tk_all += tk
        hand_all += hd
        real_tokens += rec.real_tokens[s.warmup : len(rec.step_times)]
        feats_all += rec.features[s.warmup : len(rec.step_times)]
        batches_all += rec.batches[s.warmup : len(rec.step_times)]
    return {
        "ratios": ratios, "tunekit_s": tk_all, "hand_s": hand_all, "real_tokens": real_tokens, "features": feats_all, "batches": batches_all,
        "precision": precision, "steps": s.steps_for(model),
    }


def case_overhead(res: Results, ws: Workspace, s: Settings, models: list[str]) -> None:
    for model in models:
        out = overhead_runs(ws, s, model)
        value, spread, n = ratio_summary(out["ratios"])
        res.add(Row(
            f"overhead/{model}", "overhead", model, "tunekit LoRA step / hand-written torch+peft+AdamW step",
            value, spread=spread, n=n, target="<= 1.10", met=value <= 1.10,
            detail=f"median step {statistics.median(out['tunekit_s']) * 1e3:.0f} ms vs {statistics.median(out['hand_s']) * 1e3:.0f} ms; "
            f"{out['precision']}; same batches, step-interleaved; {out['steps']} timed steps x {n} runs",
            data={k: out[k] for k in ("ratios", "tunekit_s", "hand_s", "real_tokens", "precision")},
        ))


# ---------------------------------------------------------------------------------------------
# case: speed on the demo's data
# ---------------------------------------------------------------------------------------------
SPEED_STRATEGY = {"name": "lora", "target_modules": "all-linear"}
SPEED_EVAL_ROWS = 48


@contextlib.contextmanager
def counting_shared_prefixes() -> Iterator[list[int]]:
    """The prefix length of every batch whose shared prefix ran once (``training.shared_prefix``), while the block runs."""
    import tunekit.training.loss as loss

    calls: list[int] = []
    real = loss.shared_prefix_logits

    def counted(model: Any, inputs: dict[str, Any], keep: Any, prefix: int) -> Any:
        calls.append(prefix)
        return real(model, inputs, keep, prefix)

    loss.shared_prefix_logits = counted  # type: ignore[assignment]
    try:
        yield calls
    finally:
        loss.shared_prefix_logits = real  # type: ignore[assignment]


SPEED_VARIANTS = {
    "defaults": ({}, "tunekit's defaults"),
    "no-shared-prefix": ({"shared_prefix": False}, "tunekit with training.shared_prefix=false (the lever switched back)"),
    "packing": ({"packing": True}, "tunekit with training.packing=true (padding-free rows; then no shared prefix)"),
}


def case_speed(res: Results, ws: Workspace, s: Settings, models: list[str]) -> None:
    """tunekit's LoRA step against the hand-written loop, on the demo's chat rows: with its defaults,
    and with the shared prefix switched off or packing switched on.

    The same batches, step-interleaved (the overhead case's harness); then the eval loss of both
    tuned models on the task's held-out rows, after the same rows and steps from the same start.
    """
    from tunekit.models.loading import load_tokenizer, resolve_source
    from tunekit.tasks import load_task

    train, test = load_task("iso-dates", "train"), load_task("iso-dates", "test")[:SPEED_EVAL_ROWS]
    for model in models:
        measure = "speed-up of a LoRA step (all-linear, the demo's rows): hand-written torch+peft+AdamW step / tunekit's"
        if not load_tokenizer(resolve_source(ws.model(model))).chat_template:
            res.skip(f"speed/{model}", "speed", model, measure, "the tokenizer has no chat template for the demo's chat rows")
            continue
        steps = s.warmup + s.steps_for(model)
        rows = [train[i % len(train)] for i in range(BATCH * steps)]
        for variant, (training, label) in SPEED_VARIANTS.items():
            ratios, tk_all, hand_all, losses = [], [], [], []
            shared = 0
            for r in range(s.repeats if variant == "defaults" else max(1, s.repeats - 1)):
                with counting_shared_prefixes() as calls:
                    tuner, rec, hand_times, hand = overhead_once(
                        ws, s, model, rows, steps, seed=42 + r, strategy=SPEED_STRATEGY, training=training
                    )
                shared += len(calls)
                tk, hd = rec.step_times[s.warmup :], hand_times[s.warmup :]
                ratios.append(statistics.median(hd) / statistics.median(tk))
                tk_all += tk
                hand_all += hd
                if r == 0 and variant == "defaults":  # both models have now trained on the same rows in the same batches
                    losses = [eval_loss(tuner.model, tuner.tokenizer, test), eval_loss(hand.model, tuner.tokenizer, test)]
                del tuner, hand
            value, spread, n = ratio_summary(ratios)
            res.add(Row(
                f"speed/{model}" + ("" if variant == "defaults" else f"/{variant}"), "speed", model,
                measure if variant == "defaults" else f"the same, {label}", value, spread=spread, n=n,
                target=">= 1.5" if variant == "defaults" else "", met=value >= 1.5 if variant == "defaults" else None,
                detail=f"median step {statistics.median(hand_all) * 1e3:.0f} ms hand-written vs {statistics.median(tk_all) * 1e3:.0f} ms tunekit; "
                f"batch {BATCH}, same batches, step-interleaved; {s.steps_for(model)} timed steps x {n} runs; {label} "
                f"(the shared prefix ran once per batch in {shared} of {steps * n} steps); the hand-written loop: model(**batch).loss",
                data={"ratios": ratios, "tunekit_s": tk_all, "hand_s": hand_all},
            ))
            if losses:
                tk_loss, hand_loss = losses
                res.add(Row(
                    f"speed/{model}/eval-loss", "speed", model, "eval loss on held-out rows after the same rows: tunekit / hand-written",
                    tk_loss / hand_loss, n=1, target="<= 1.0", met=tk_loss <= hand_loss * (1 + 1e-4),
                    detail=f"{tk_loss:.4f} vs {hand_loss:.4f} on {len(test)} held-out rows, after {steps} steps of {BATCH} rows, from the "
                    "same initial adapter (tunekit's defaults: AdamW, linear decay, no warm-up, clip 1.0, as the hand-written loop); "
                    "'met' allows 1e-4 of float rounding",
                ))
# utilization: achieved FLOP/s of a training step against the process's measured matmul rate
# ---------------------------------------------------------------------------------------------
UTILIZATION_TARGET = 0.80  # on the real model, on CPU (the accelerator case has its own)


def case_utilization(res: Results, ws: Workspace, s: Settings, models: list[str]) -> None:
    """tunekit's LoRA step (its own fit, instrumented as in the overhead case) and a hand-written
    step after each of its steps on the same batch: each step's FLOPs counted exactly (each batch
    once, after the fit, outside the timed steps, with the loss that side trains on), divided by
    that step's time, against the fp32 matmul rate measured in this process right after the fit."""
    import torch

    if torch.cuda.is_available():
        for model in models:
            res.skip(f"utilization/{model}/tunekit", "utilization", model, "achieved FLOP/s of a training step / measured fp32 matmul FLOP/s (same process)",
                     "a CUDA run: see the accelerator case's MFU")
        return
    for model in models:
        real = model == REAL
        steps = s.warmup + s.steps_for(model)
        rows = mixed_rows(BATCH * steps, seed=1)
        threads = torch.get_num_threads()
        tuner, rec, hand_times, hand = overhead_once(ws, s, model, rows, steps, seed=42)
        done = len(rec.step_times)
        timed = range(s.warmup, done)
        tokens = int(statistics.median(int(rec.batches[i]["input_ids"].numel()) for i in timed))
        started = time.perf_counter()
        # measured twice (the machine is shared), each the best of a few timings per shape; the better one counts
        rates = [cpu_matmul_rate(threads=threads, model=tuner.model, tokens=tokens) for _ in range(2)]
        matmul_s = time.perf_counter() - started
        best = max(rates, key=lambda r: float(r["rate"]))
        peak = float(best["rate"])
        model_shape = next(k for k in best["rates"] if k.startswith("("))
        pad = int(tuner.tokenizer.pad_token_id)
        tk_loss = tunekit_loss(tuner.model)
        tuner.model.train()
        tk_flops = [counted_step_flops(tuner.model, rec.batches[i], tk_loss) for i in timed]
        hand_flops = [counted_step_flops(hand.model, hand_collate(rec.features[i], pad), default_loss) for i in timed]
        sides = {
            "tunekit": ("tunekit's LoRA step (its own fit)", rec.step_times[s.warmup :], tk_flops, tk_loss),
            "hand": ("hand-written torch+peft+AdamW step", hand_times[s.warmup :], hand_flops, default_loss),
        }
        for key, (what, times, flops, loss_fn) in sides.items():
            per_step = [f["total"] / t / peak for f, t in zip(flops, times, strict=True)]
            value, spread, n = ratio_summary(per_step)
            achieved = sum(f["total"] for f in flops) / sum(times)
            attention = sum(f["attention"] for f in flops) / sum(f["total"] for f in flops)
            ops: dict[str, int] = {}
            for f in flops:
                for op, c in f["by_op"].items():
                    ops[op] = ops.get(op, 0) + c
            shape_rate = best["rates"][model_shape]
            met = (value >= UTILIZATION_TARGET) if real else None
            res.add(Row(
                f"utilization/{model}/{key}", "utilization", model,
                f"achieved FLOP/s of a training step / measured fp32 matmul FLOP/s (same process): {what}",
                value, unit="", spread=spread, n=n, target=f">= {UTILIZATION_TARGET:.2f}" if real else "", met=met,
                detail=f"{gflops(achieved)} achieved (counted FLOPs / step time; {statistics.median(f['total'] for f in flops) / 1e9:.2f} GFLOP "
                f"per step, attention {attention * 100:.0f}%, loss {loss_fn.__name__}) vs {gflops(peak)} fp32 matmul ({best['shape']}; "
                f"{model_shape}, the model's linear shape: {gflops(shape_rate)}, {achieved / shape_rate:.2f} of it); {threads} torch threads; "
                f"median of {n} steps' ratios; matmul measured twice after the fit ({', '.join(gflops(r['rate']) for r in rates)})",
                data={
                    "step_s": times, "flops": [f["total"] for f in flops], "by_op": ops, "matmul": rates,
                    "threads": threads, "loss": loss_fn.__name__, "matmul_seconds": round(matmul_s, 2),
                },
            ))
        del tuner, hand


# ---------------------------------------------------------------------------------------------
# case 2: the classic recipe
# ---------------------------------------------------------------------------------------------
CLASSIC_REPAIRS = [
    "from_pretrained(load_in_8bit=True) -> quantization_config=BitsAndBytesConfig(load_in_8bit=True) (transformers 5 removed the argument)",
    "SFTTrainer(tokenizer=...) -> processing_class=... (renamed in trl)",
    "max_seq_length=512 -> SFTConfig(max_length=512) (renamed in trl)",
    "use_cpu=True on a machine without a GPU (SFTConfig's bf16 default refuses to start otherwise)",
]
CLASSIC_SETTINGS = [
    "padding='max_length' (512) expressed as SFTConfig(pad_to_multiple_of=512)",
    "num_train_epochs=1 instead of trl's 3, so both sides see the same real tokens",
]


def run_classic(path: Path, rows: list[dict[str, str]], out: Path, seed: int) -> tuple[Any, Any, Record]:
    """The recipe as widely copied (LoRA on an 8-bit GPT-2 with trl's SFTTrainer), repaired to run:

        model = AutoModelForCausalLM.from_pretrained("gpt2", load_in_8bit=True)
        tokenizer.pad_token = tokenizer.eos_token
        model = prepare_model_for_kbit_training(model)
        trainer = SFTTrainer(model=model, train_dataset=ds, tokenizer=tokenizer, max_seq_length=512,
                             peft_config=LoraConfig(task_type="CAUSAL_LM"), args=SFTConfig(...defaults))

    with every row padded to 512. trl's defaults then add bf16 autocast, gradient checkpointing and
    per-step entropy / token-accuracy metrics. See ``CLASSIC_REPAIRS`` for what had to change.
    """
    import torch
    from datasets import Dataset
    from peft import LoraConfig, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig
    from trl import SFTConfig, SFTTrainer

    tokenizer = AutoTokenizer.from_pretrained(str(path))
    tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(str(path), quantization_config=BitsAndBytesConfig(load_in_8bit=True))
    model = prepare_model_for_kbit_training(model)
    args = SFTConfig(
        output_dir=str(out), max_length=512, pad_to_multiple_of=512, num_train_epochs=1, seed=seed,
        report_to="none", disable_tqdm=True, use_cpu=not torch.cuda.is_available(),
    )
    record = Record()
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
        peft_config=LoraConfig(task_type="CAUSAL_LM"), callbacks=[step_clock(record)],
    )
    trainer.data_collator = RecordingCollator(trainer.data_collator, record)
    trainer.train()
    return trainer.model, tokenizer, record


def eval_loss(model: Any, tokenizer: Any, rows: list[dict[str, str]]) -> float:
    """Mean loss per answer token on ``rows``, in fp32, the same way for every model."""
    import torch
    import torch.nn.functional as F

    feats = tokenized(rows, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    total, count = 0.0, 0
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for i in range(0, len(feats), BATCH):
            b = hand_collate(feats[i : i + BATCH], pad)
            logits = model(input_ids=b["input_ids"].to(device), attention_mask=b["attention_mask"].to(device)).logits.float()
            labels = b["labels"][:, 1:].to(device)
            total += float(F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100, reduction="sum"))
            count += int((labels != -100).sum())
    model.train(was_training)
    return total / count


def case_classic(res: Results, ws: Workspace, s: Settings, models: list[str]) -> None:
    import torch

    for model in models:
        if torch.cuda.is_available():
            why = "the classic recipe is measured on CPUs only"
            res.skip(f"classic/{model}/tokens_per_s", "classic", model, "real tokens/s: tunekit defaults / classic recipe", why)
            res.skip(f"classic/{model}/eval_loss", "classic", model, "eval loss after one epoch of the same rows: tunekit / classic", why)
            continue
        real = model in (REAL, GPT2_SHAPE)
        # On a real-sized model a classic step takes minutes on our CPU: one step (8 rows) each, timed
        # whole (after the untimed warm-up fit below, which is not on the classic side: its
        # one-time costs are small next to its step).
        warm = 0 if real else 1
        timed = 1 if real or s.smoke else 2
        repeats = 1 if real else max(1, min(s.repeats, 2))
        rows = mixed_rows(BATCH * (warm + timed), seed=2)
        eval_rows = mixed_rows(16, seed=3)
        # Untimed: the process's first training steps on this model pay one-time costs (allocator,
        # oneDNN primitives) that would otherwise land on whichever side runs first.
        tunekit_fit(ws, model, mixed_rows(BATCH, seed=8), label=f"classic-warm-{model}", training={"max_steps": 1, "progress_bar": False})
        ratios, tk_tps, cl_tps, tk_loss, cl_loss, tk_tokens, cl_tokens, pad_frac = [], [], [], [], [], [], [], []
        step_times: dict[str, list[list[float]]] = {"tunekit": [], "classic": []}
        for r in range(repeats):
            # tunekit on both sides of the classic run (alternating which comes first), so drifting
            # machine load shows up in both figures
            order = ["tunekit", "classic", "tunekit"] if r % 2 == 0 else ["classic", "tunekit"]
            if s.smoke:
                order = ["tunekit", "classic"]
            tk_run: list[float] = []
            cl_run = float("nan")
            for side in order:
                if side == "tunekit":
                    tuner, _, rec = tunekit_fit(ws, model, rows, label=f"classic-tk-{model}", training={"seed": 42 + r})
                    tk_run.append(tokens_per_second(rec, warm))
                    step_times["tunekit"].append(rec.step_times)
                    tk_loss.append(eval_loss(tuner.model, tuner.tokenizer, eval_rows))
                    tk_tokens.append(sum(rec.real_tokens))
                    del tuner
                else:
                    cmodel, ctok, rec = run_classic(ws.local_path(model), rows, ws.run_dir(f"classic-{model}"), seed=42 + r)
                    cl_run = tokens_per_second(rec, warm)
                    step_times["classic"].append(rec.step_times)
                    cl_loss.append(eval_loss(cmodel, ctok, eval_rows))
                    cl_tokens.append(sum(rec.real_tokens))
                    pad_frac.append(1 - sum(rec.real_tokens) / sum(rec.padded_tokens))
                    del cmodel
            tk = statistics.median(tk_run)
            tk_tps.append(tk)
            cl_tps.append(cl_run)
            ratios.append(tk / cl_run)
        value, spread, n = ratio_summary(ratios)
        res.add(Row(
            f"classic/{model}/tokens_per_s", "classic", model, "real tokens/s: tunekit defaults / classic recipe (trl SFTTrainer, 8-bit, pad to 512)",
            # The target is the issue's, for LoRA on GPT-2 (124M); on a toy model per-step fixed
            # costs dominate both sides, so its ratio is shown without one.
            value, spread=spread, n=n, target=">= 50" if real else "", met=value >= 50 if real else None,
            detail=f"{statistics.median(tk_tps):.0f} vs {statistics.median(cl_tps):.1f} real tokens/s; classic batches are "
            f"{statistics.median(pad_frac) * 100:.0f}% padding; {timed} timed step(s) per run"
            + (f" after {warm} warm-up" if warm else " (no warm-up: first step timed on both sides)"),
            data={"ratios": ratios, "tunekit_tps": tk_tps, "classic_tps": cl_tps, "step_times": step_times, "repairs": CLASSIC_REPAIRS, "settings": CLASSIC_SETTINGS},
        ))
        lv = statistics.median(tk_loss) / statistics.median(cl_loss)
        res.add(Row(
            f"classic/{model}/eval_loss", "classic", model, "eval loss after one epoch of the same rows: tunekit / classic",
            lv, n=len(tk_loss), target="<= 1.0", met=lv <= 1.0,
            detail=f"eval loss {statistics.median(tk_loss):.3f} vs {statistics.median(cl_loss):.3f}; real tokens trained "
            f"{statistics.median(tk_tokens):.0f} vs {statistics.median(cl_tokens):.0f}",
            data={"tunekit_loss": tk_loss, "classic_loss": cl_loss, "tunekit_tokens": tk_tokens, "classic_tokens": cl_tokens},
        ))


# ---------------------------------------------------------------------------------------------
# levers: one of tunekit's choices switched back at a time
# ---------------------------------------------------------------------------------------------
LEVERS = {
    "baseline": "tunekit's choices: fp32 on this CPU, per-batch padding, length-grouped batches, no checkpointing, no per-step metrics, LoRA dropout 0, LM head on trained positions only for a real-sized head",
    "bf16": "precision from the hardware (fp32 here) vs bf16 autocast",
    "pad512": "per-batch padding vs every row padded to 512",
    "random_order": "length-grouped batches vs random batches (both padded per batch)",
    "checkpointing": "no gradient checkpointing vs checkpointing",
    "metrics": "no per-step work vs entropy + token accuracy over the vocabulary every step (trl's default; needs every position's logits)",
    "head_positions": "LM head where tunekit's 'auto' puts it (trained positions only when the head has >= 2^20 weights, else every position) vs the other way",
    "int8_base": "plain base vs an 8-bit (bnb) base",
    "padding_free": "per-batch padding vs padding-free rows (one flattened sequence, block-diagonal attention)",
    "lora_dropout": "LoRA dropout 0 (tunekit's default) vs 0.05 (a common recipe's)",
}
# measured in subprocesses by omp_lever, after the others: "omp_passive"


def case_levers(res: Results, ws: Workspace, s: Settings, models: list[str]) -> None:
    for model in models:
        levers_for(res, ws, s, model)


def levers_for(res: Results, ws: Workspace, s: Settings, model: str) -> None:
    import torch
    from transformers.trainer_pt_utils import get_length_grouped_indices

    from tunekit import Tuner
    from tunekit.training.loss import use_trained_logits

    real = model == REAL
    timed = 2 if real else s.steps
    warm = 1
    lr = 2e-4
    main = Tuner(model=ws.model(model), strategy="lora")
    device = main.precision.device
    base_autocast = autocast_dtype(main.precision)
    tok = main.tokenizer
    pad = int(tok.pad_token_id)
    trained_logits = use_trained_logits(main.model, "auto")  # tunekit's loss on this model
    mine = {"lr": lr, "total_steps": 100, "device": device, "trained_logits": trained_logits}
    loops = {"main": PlainLoop(main.model, autocast=base_autocast, **mine)}
    gc = Tuner(model=ws.model(model), strategy="lora").model
    gc.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    loops["gc"] = PlainLoop(gc, autocast=base_autocast, **mine)
    dropout = Tuner(model=ws.model(model), strategy={"name": "lora", "dropout": 0.05}).model
    loops["dropout"] = PlainLoop(dropout, autocast=base_autocast, **mine)
    variants = list(LEVERS)
    if not torch.cuda.is_available():
        loops["int8"] = PlainLoop(Tuner(model=ws.model(model), strategy="lora", quantizer="bnb-8bit").model, **mine)
    else:
        variants.remove("int8_base")
    if base_autocast is not None:
        variants.remove("bf16")  # bf16 is already the choice on this device

    # the timed rows: one epoch, grouped the way a large data set's mega-batches group them
    feats = tokenized(mixed_rows(BATCH * timed, seed=4), tok)
    warm_feats = tokenized(mixed_rows(BATCH * warm, seed=5), tok)
    lengths = [len(f["input_ids"]) for f in feats]
    grouped = get_length_grouped_indices(lengths, BATCH, mega_batch_mult=timed, generator=torch.Generator().manual_seed(0))
    shuffled = torch.randperm(len(feats), generator=torch.Generator().manual_seed(1)).tolist()

    def batches(order: list[int]) -> list[list[dict[str, Any]]]:
        return [[warm_feats[j] for j in range(i * BATCH, (i + 1) * BATCH)] for i in range(warm)] + [
            [feats[j] for j in order[i * BATCH : (i + 1) * BATCH]] for i in range(timed)
        ]

    by_order = {"grouped": batches(grouped), "random": batches(shuffled)}

    # padding-free is only a lever if rows really do not see each other: check the loss matches
    check = by_order["grouped"][warm][:4]
    main.model.eval()
    with torch.no_grad():
        padded = main.model(**{k: v.to(device) for k, v in hand_collate(check, pad).items()}).loss
        flat = main.model(**{k: v.to(device) if hasattr(v, "to") else v for k, v in flat_collate(check).items()}).loss
    main.model.train()
    flat_ok = abs(float(padded) - float(flat)) < 1e-3 * max(1.0, abs(float(padded)))
    if not flat_ok:
        variants.remove("padding_free")

    def run(variant: str, batch: list[dict[str, Any]]) -> tuple[float, int]:
        loop = {"checkpointing": loops["gc"], "int8_base": loops.get("int8"), "lora_dropout": loops["dropout"]}.get(variant) or loops["main"]
        if variant == "pad512":
            b = hand_collate(batch, pad, pad_to=512)
        elif variant == "padding_free":
            b = flat_collate(batch)
        else:
            b = hand_collate(batch, pad)
        kwargs: dict[str, Any] = {}
        if variant == "bf16":
            kwargs["autocast"] = torch.bfloat16
        if variant == "metrics":
            kwargs["metrics"] = True
        if variant == "head_positions":
            kwargs["trained_logits"] = not trained_logits
        t = time.perf_counter()
        loop.step(b, **kwargs)
        sync()
        return time.perf_counter() - t, sum(len(f["input_ids"]) for f in batch)

    times: dict[str, list[float]] = {v: [] for v in variants}
    tokens: dict[str, list[int]] = {v: [] for v in variants}
    for i in range(warm + timed):
        for k in range(len(variants)):  # rotate who goes first, so no variant always follows another
            v = variants[(i + k) % len(variants)]
            dt_, n = run(v, by_order["random" if v == "random_order" else "grouped"][i])
            if i >= warm:
                times[v].append(dt_)
                tokens[v].append(n)
    tps = {v: sum(tokens[v]) / sum(times[v]) for v in variants}

    def paired(v: str) -> list[float]:
        """Per step: the variant's time per real token / the baseline's, in the same round."""
        return [(t / n) / (tb / nb) for t, n, tb, nb in zip(times[v], tokens[v], times["baseline"], tokens["baseline"], strict=True)]

    base = tps["baseline"]
    res.add(Row(
        f"levers/{model}/baseline", "levers", model, "baseline real tokens/s (plain loop on tunekit's model)",
        base, unit="tokens/s", n=timed, detail=LEVERS["baseline"], data={"times": times["baseline"], "tokens": tokens["baseline"]},
    ))
    for v in LEVERS:
        if v == "baseline":
            continue
        if v not in variants:
            why = {
                "padding_free": f"rows attended to each other (loss {float(padded):.4f} padded vs {float(flat):.4f} flattened)",
                "bf16": "bf16 is this device's own precision",
                "int8_base": "measured on CPUs only",
            }[v]
            res.skip(f"levers/{model}/{v}", "levers", model, LEVERS[v], why)
            continue
        value, spread, n = ratio_summary(paired(v))
        res.add(Row(
            f"levers/{model}/{v}", "levers", model, LEVERS[v], value, spread=spread, n=n,
            detail=f"time per real token, switched back / tunekit's choice (paired per step); {base:.0f} vs {tps[v]:.1f} real tokens/s",
            data={"times": times[v], "tokens": tokens[v], "tokens_per_s": tps[v]},
        ))
    omp = "OMP_WAIT_POLICY=PASSIVE vs libgomp's spinning default (ACTIVE)"
    if torch.cuda.is_available():
        res.skip(f"levers/{model}/omp_passive", "levers", model, omp, "measured on CPUs only")
    elif s.smoke:
        res.skip(f"levers/{model}/omp_passive", "levers", model, omp, "not run in smoke mode (two fresh processes)")
    else:
        omp_lever(res, ws, model, omp, warm=1, timed=2 if real else s.steps, pairs=1 if real else max(1, min(s.repeats, 2)))


def worker_steps(spec: dict[str, Any]) -> dict[str, Any]:
    """In a fresh process (so OpenMP settings apply): plain-loop steps on tunekit's LoRA model."""
    import torch

    from tunekit import Tuner
    from tunekit.training.loss import use_trained_logits

    tuner = Tuner(model=spec["model"], strategy="lora")
    loop = PlainLoop(tuner.model, lr=2e-4, total_steps=100, device=tuner.precision.device, trained_logits=use_trained_logits(tuner.model, "auto"))
    feats = tokenized(mixed_rows(BATCH * (spec["warm"] + spec["steps"]), seed=7), tuner.tokenizer)
    pad = int(tuner.tokenizer.pad_token_id)
    times, tokens = [], []
    for i in range(spec["warm"] + spec["steps"]):
        batch = feats[i * BATCH : (i + 1) * BATCH]
        t = time.perf_counter()
        loop.step(hand_collate(batch, pad))
        if i >= spec["warm"]:
            times.append(time.perf_counter() - t)
            tokens.append(sum(len(f["input_ids"]) for f in batch))
    return {"times": times, "tokens": tokens, "threads": torch.get_num_threads(), "policy": os.environ.get("OMP_WAIT_POLICY")}


def omp_lever(res: Results, ws: Workspace, model: str, measure: str, *, warm: int, timed: int, pairs: int) -> None:
    """libgomp's default (ACTIVE, spinning) wait policy against PASSIVE, each in its own process,
    alternating; same batches, same thread count."""
    spec = {"model": ws.model(model), "warm": warm, "steps": timed}
    active, passive, ratios = [], [], []
    for p in range(pairs):
        runs = {}
        for policy in (("ACTIVE", "PASSIVE") if p % 2 == 0 else ("PASSIVE", "ACTIVE")):
            runs[policy] = run_worker("steps", spec, {"OMP_WAIT_POLICY": policy})
        a, b = statistics.median(runs["ACTIVE"]["times"]), statistics.median(runs["PASSIVE"]["times"])
        active.append(a)
        passive.append(b)
        ratios.append(a / b)
    value, spread, n = ratio_summary(ratios)
    threads = runs["ACTIVE"]["threads"]
    res.add(Row(
        f"levers/{model}/omp_passive", "levers", model, measure, value, spread=spread, n=n,
        detail=f"median step {statistics.median(active) * 1e3:.0f} ms ACTIVE vs {statistics.median(passive) * 1e3:.0f} ms PASSIVE, "
        f"{threads} torch threads, fresh process each, alternating; tunekit does not set this itself yet",
        data={"active_s": active, "passive_s": passive},
    ))


# ---------------------------------------------------------------------------------------------
# case 3: memory (each fit in its own subprocess)
# ---------------------------------------------------------------------------------------------
# glibc keeps freed blocks below its (self-raising) mmap threshold in the heap, so the RSS of a
# process that de-quantized or converted weights stays high after they are freed. Serving every
# allocation of 64 KiB or more by mmap returns it to the system when freed: RSS then tracks live
# memory. Same setting for every run of the memory case.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "65536"}
MEMORY_RUNS: dict[str, tuple[Any, str, dict[str, Any]]] = {  # strategy, quantizer, training options
    "lora-none": ("lora", "none", {}),
    "lora-bnb-8bit": ("lora", "bnb-8bit", {}),
    "lora-bnb-4bit": ("lora", "bnb-4bit", {}),
    "full-none": ("full", "none", {}),
    "lora-none-dropout": ({"name": "lora", "dropout": 0.05}, "none", {}),
    "lora-none-all-logits": ("lora", "none", {"trained_logits_only": False}),
    "lora-none-trained-logits": ("lora", "none", {"trained_logits_only": True}),
    "dpo-lora-disabled-adapter": ("lora", "none", {"objective": "dpo"}),
    "dpo-lora-copied-reference": ("lora", "none", {"objective": {"name": "dpo", "reference": "copy"}}),
}
"""Training options may name an ``objective`` (a TuneConfig field, not a training option): it trains on preference pairs."""


def _vm_field(name: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1]) * 1024
    return 0


def unmap_weights(model: Any) -> None:
    """Copy plain weights out of the safetensors file mapping into process memory.

    transformers maps the checkpoint file: plain weights stay file-backed pages, which RSS counts
    only once touched, and a quantized load keeps every page it read for quantizing mapped. After
    this, RSS counts what the model holds, the same way for every run (quantized weights are
    already in process memory and are left alone).
    """
    import gc

    import torch

    seen: set[int] = set()
    with torch.no_grad():
        for module in model.modules():
            for t in [*module.parameters(recurse=False), *module.buffers(recurse=False)]:
                if id(t) in seen or type(t).__name__ not in {"Parameter", "Tensor"}:
                    continue
                seen.add(id(t))
                t.data = t.data.clone()
    gc.collect()


def worker_memory(spec: dict[str, Any]) -> dict[str, Any]:
    """In a fresh process: import, load, fit a few steps; report the peaks."""
    import accelerate  # noqa: F401
    import bitsandbytes  # noqa: F401
    import datasets  # noqa: F401
    import matplotlib.pyplot  # noqa: F401
    import peft  # noqa: F401
    import torch  # noqa: F401
    import transformers.trainer  # noqa: F401
    import trl  # noqa: F401  (in the baseline of every run: the DPO runs compare training, not imports)

    import tunekit.training.loop  # noqa: F401
    from tunekit import Tuner

    rss_imports = _vm_field("VmRSS")
    training = dict(spec["training"])
    objective = training.pop("objective", None)
    tuner = Tuner(
        model=spec["model"], strategy=spec["strategy"], quantizer=spec["quantizer"], output_dir=spec["output_dir"],
        training={"max_steps": spec["steps"], "progress_bar": False, **training}, objective=objective,
    )
    unmap_weights(tuner.model)
    rss_loaded = _vm_field("VmRSS")
    if objective is not None:
        from tunekit.testing import pair_rows

        rows = pair_rows(BATCH * spec["steps"], seed=6)
    else:
        rows = mixed_rows(BATCH * spec["steps"], seed=6)
    result = tuner.fit(rows, overwrite=True)
    return {
        "rss_imports": rss_imports, "rss_loaded": rss_loaded, "train_peak": result.peak_memory_bytes,
        "peak_kind": result.peak_memory_kind, "process_hwm": _vm_field("VmHWM") if result.peak_memory_kind != "cuda_max_allocated" else 0,
        "trainable": result.trainable_params, "total": result.total_params,
    }


def run_worker(kind: str, spec: dict[str, Any], env: dict[str, str] | None = None, timeout: int = 1800) -> dict[str, Any]:
    """Run ``worker_<kind>(spec)`` in a fresh process, with ``env`` added to the environment."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", kind, "--spec", json.dumps(spec)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=timeout)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"worker {kind} failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
    return json.loads(lines[-1])  # type: ignore[no-any-return]


def case_memory(res: Results, ws: Workspace, s: Settings, models: list[str]) -> None:
    from concurrent.futures import ThreadPoolExecutor

    for model in models:
        steps = 1 if s.smoke else 3
        repeats = 1
        chosen = {k: v for k, v in MEMORY_RUNS.items() if not s.memory_runs or k in s.memory_runs}
        runs: dict[str, list[dict[str, Any]]] = {k: [] for k in chosen}
        specs = [
            (key, {"model": ws.model(model), "strategy": st, "quantizer": q, "training": tr, "steps": steps, "output_dir": str(ws.run_dir(f"mem-{key}"))})
            for _ in range(repeats) for key, (st, q, tr) in chosen.items()
        ]
        if s.smoke:  # in this process, one after another: checks the code path, the peaks are not separate
            for key, spec in specs:
                runs[key].append(worker_memory(spec))
        else:
            # Peaks are per process, so the fits may run side by side (nothing here is timed).
            with ThreadPoolExecutor(max_workers=2 if model == REAL else 4) as pool:
                for key, out in zip([k for k, _ in specs], pool.map(lambda ks: run_worker("memory", ks[1], MALLOC_ENV), specs), strict=True):
                    runs[key].append(out)

        def above_imports(key: str, runs: dict[str, list[dict[str, Any]]] = runs) -> float:
            return statistics.median(r["train_peak"] - (0 if r["peak_kind"] == "cuda_max_allocated" else r["rss_imports"]) for r in runs[key])

        def loaded(key: str, runs: dict[str, list[dict[str, Any]]] = runs) -> float:
            return statistics.median(r["rss_loaded"] - r["rss_imports"] for r in runs[key])

        def mib(x: float) -> str:
            return f"{x / 2**20:.0f} MiB"

        kind = next(iter(runs.values()))[0]["peak_kind"]
        what = "CUDA peak allocated" if kind == "cuda_max_allocated" else "peak RSS during fit minus RSS after imports; weights copied out of the file mapping"
        pairs = [
            ("bnb-4bit", "lora-bnb-4bit", "lora-none", "peak memory: LoRA on bnb-4bit / LoRA on none", "< 0.9"),
            ("bnb-8bit", "lora-bnb-8bit", "lora-none", "peak memory: LoRA on bnb-8bit / LoRA on none", "< 1.0"),
            ("full", "full-none", "lora-none", "peak memory: full fine-tuning / LoRA", ""),
            ("lora-dropout", "lora-none-dropout", "lora-none", "peak memory: LoRA dropout 0.05 / tunekit's default 0", ""),
            ("all-logits", "lora-none-all-logits", "lora-none-trained-logits", "peak memory: LM head on every position / on trained positions only", ""),
            ("dpo-reference", "dpo-lora-disabled-adapter", "dpo-lora-copied-reference",
             "peak memory: DPO with LoRA, the adapter-disabled base as reference / a frozen copy of the model as reference", "< 1.0"),
        ]
        for name, num, den, measure, target in pairs:
            if num not in runs or den not in runs:  # --memory-runs left one of them out
                continue
            a, b = above_imports(num), above_imports(den)
            if a <= 0 or b <= 0:  # smoke mode runs every fit in one process: peaks need not rise above the first
                res.skip(f"memory/{model}/{name}", "memory", model, measure, "no memory measured above the import baseline (fits shared one process)")
                continue
            value = a / b
            met = None
            if target:
                met = value < float(target.split()[-1])
            res.add(Row(
                f"memory/{model}/{name}", "memory", model, measure, value, n=repeats, target=target, met=met,
                detail=f"{mib(a)} vs {mib(b)} ({what}); held after loading {mib(loaded(num))} vs {mib(loaded(den))}; "
                f"{steps} steps, batch {BATCH}, own subprocess each",
                data={"runs": {k: runs[k] for k in (num, den)}},
            ))
        if not s.memory_runs:  # a chosen subset of runs is about those runs
            optimizer_rows(res, ws, model)


OPTIMIZER_CHOICES = ("adamw", "adafactor", "sgd", "adamw_8bit", "paged_adamw", "paged_adamw_8bit")


def optimizer_state_bytes(ws: Workspace, model: str, optimizer: str) -> int:
    """Bytes of the optimizer's state after one full fine-tuning step with ``training.optimizer``.

    Read off the optimizer the Trainer built (every tensor in ``optimizer.state``), so it is exact,
    not a noisy process peak: 8 bytes per parameter for AdamW, about 2 for 8-bit AdamW, ...
    """
    import torch
    from transformers import TrainerCallback

    from tunekit import Tuner, hookimpl
    from tunekit.plugins import get_plugins, register_plugin

    seen: list[int] = []

    class StateSize(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, optimizer: Any = None, **kw: Any) -> None:
            inner = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps the torch optimizer
            seen.append(sum(
                t.numel() * t.element_size() for values in inner.state.values() for t in values.values() if torch.is_tensor(t)
            ))

    class Plugin:
        @hookimpl
        def register_trainer_callbacks(self, register: Any) -> None:
            register(StateSize())

    plugin = Plugin()
    register_plugin(plugin, name=f"bench-optimizer-{optimizer}")
    try:
        Tuner(
            model=ws.model(model), strategy="full", output_dir=str(ws.run_dir(f"opt-{optimizer}")),
            training={"max_steps": 1, "batch_size": 2, "optimizer": optimizer, "progress_bar": False, "max_length": 256},
        ).fit(mixed_rows(4), overwrite=True)
    finally:
        get_plugins().manager.unregister(plugin)
    return seen[-1]


def optimizer_rows(res: Results, ws: Workspace, model: str) -> None:
    """One row per ``training.optimizer``: its state's bytes against AdamW's, on full fine-tuning."""
    import torch

    baseline = optimizer_state_bytes(ws, model, "adamw")
    for name in OPTIMIZER_CHOICES[1:]:
        measure = f"optimizer state: {name} / adamw (full fine-tuning, bytes in optimizer.state)"
        if name.startswith(("adamw_8bit", "paged")) and not torch.cuda.is_available():
            res.skip(f"memory/{model}/optimizer-{name}", "memory", model, measure, "bitsandbytes optimizers need a CUDA GPU")
            continue
        size = optimizer_state_bytes(ws, model, name)
        res.add(Row(
            f"memory/{model}/optimizer-{name}", "memory", model, measure, size / baseline, n=1,
            detail=f"{size:,} bytes vs {baseline:,} bytes for AdamW",
            data={"bytes": size, "adamw_bytes": baseline},
        ))


# ---------------------------------------------------------------------------------------------
# case 4: scaling
# ---------------------------------------------------------------------------------------------
def case_scaling(res: Results, ws: Workspace, s: Settings, models: list[str]) -> None:
    import torch

    from tunekit import Tuner

    for model in models:
        real = model == REAL
        target_model = "tiny-llama" if model == "tiny" else model
        timed = 2 if real else s.steps // 2 or 1
        tuner = Tuner(model=ws.model(target_model), strategy="lora", training={"max_length": 1024})
        m = tuner.model
        device = tuner.precision.device
        loop = PlainLoop(m, lr=2e-4, total_steps=100, device=device, autocast=autocast_dtype(tuner.precision))
        vocab = m.config.vocab_size
        configs = [(L, 1) for L in (128, 256, 512, 1024)] + [(128, B) for B in (2, 4, 8)]
        if not real:
            configs += [(L, 8) for L in (256, 512, 1024)]
        gen = torch.Generator().manual_seed(0)
        data = {c: torch.randint(0, vocab, (c[1], c[0]), generator=gen) for c in configs}
        times: dict[tuple[int, int], list[float]] = {c: [] for c in configs}
        for i in range(1 + timed):
            for k in range(len(configs)):
                c = configs[(i + k) % len(configs)]
                x = data[c]
                t = time.perf_counter()
                loop.step({"input_ids": x, "labels": x})
                sync()
                if i >= 1:
                    times[c].append(time.perf_counter() - t)
        base = (128, 1)
        t0 = statistics.median(times[base])
        # counted once per shape, outside the timed steps, with the loss the timed steps used
        counted = {c: counted_step_flops(m, {"input_ids": data[c], "labels": data[c]}) for c in configs}
        f0 = counted[base]
        for c in configs:
            L, B = c
            t = statistics.median(times[c])
            f = counted[c]
            share = f["attention"] / f["total"]
            res.add(Row(
                f"scaling/{target_model}/L{L}xB{B}", "scaling", target_model, f"time per step, length {L} x batch {B} / length 128 x batch 1",
                t / t0, n=timed,
                detail=f"tokens x{L * B // 128}; counted FLOPs x{f['total'] / f0['total']:.1f} (attention {share * 100:.0f}%); "
                f"time per token x{(t / (L * B)) / (t0 / 128):.2f}; {t * 1e3:.0f} ms/step",
                data={"times": times[c], "flops": f, "baseline_s": times[base]},
            ))
        del loop, tuner, m


# ---------------------------------------------------------------------------------------------
# case 5: GGUF load
# ---------------------------------------------------------------------------------------------
def worker_load(spec: dict[str, Any]) -> dict[str, Any]:
    """In a fresh process: import the libraries (timed apart: the same on both sides, and not part
    of loading a model), then load the model and tokenizer. ``full`` adds no adapter, so what is
    timed is the load itself, not peft's injection (about 1 s here, the same on both sides)."""
    t = time.perf_counter()
    import bitsandbytes  # noqa: F401
    import peft  # noqa: F401
    import torch  # noqa: F401
    import transformers  # noqa: F401
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: F401

    from tunekit import Tuner

    imports = time.perf_counter() - t
    t = time.perf_counter()
    tuner = Tuner(model=spec["model"], strategy="full")
    _ = tuner.model, tuner.tokenizer
    return {"seconds": time.perf_counter() - t, "imports": imports}


@contextlib.contextmanager
def busy_cores(count: int) -> Iterator[None]:
    """``count`` other processes, each spinning on one core: the shared machine ``cpu_threads`` is for."""
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        time.sleep(0.5)
        yield
    finally:
        for p in spinners:
            p.kill()
        for p in spinners:
            p.wait()


def case_threads(res: Results, ws: Workspace, s: Settings, models: list[str]) -> None:
    """Step and generation time with the thread count ``training.cpu_threads: auto`` settles on,
    against torch's default (one thread per core), while other processes keep some cores busy.

    Each model is timed in a fresh process with libgomp's default wait policy (what a tunekit user
    gets; the bench itself sets PASSIVE). ``auto`` reads the one-minute load average, which lags a
    load that just started, so the case sets the count auto arrives at (the cores the spinners
    leave free) rather than reading it.
    """
    import torch

    from tunekit.training.threads import available_cores

    cores = available_cores()
    for model in models:
        if cores < 2 or torch.cuda.is_available():
            why = "one core: nothing to choose" if cores < 2 else "an accelerator run: auto leaves torch's threads alone"
            res.skip(f"threads/{model}", "threads", model, "cpu_threads auto's choice / torch's default", why)
            continue
        timed = 2 if model == REAL else max(2, s.steps // 4)
        for busy in sorted({1, cores // 2}):
            free = cores - busy
            spec = {"model": ws.model(model), "cores": cores, "free": free, "busy": busy, "timed": timed}
            times = run_worker("threads", spec, env={"OMP_WAIT_POLICY": ""})  # "": libgomp's default
            for what, label in (("step", "a LoRA step"), ("generate", f"greedy answers to {BATCH} prompts (16 tokens)")):
                default, chosen = statistics.median(times[f"{what}-{cores}"]), statistics.median(times[f"{what}-{free}"])
                res.add(Row(
                    f"threads/{model}/{what}-busy{busy}", "threads", model,
                    f"time of {label}: cpu_threads auto's choice / torch's default (all cores), {busy} of {cores} cores busy",
                    chosen / default, n=timed,
                    detail=f"{free} thread(s) {chosen:.3f} s vs {cores} threads {default:.3f} s (medians, alternating; "
                    f"batch {BATCH}; fresh process, OMP_WAIT_POLICY unset)",
                    data={"times": times},
                ))


def worker_threads(spec: dict[str, Any]) -> dict[str, list[float]]:
    """Time LoRA steps and greedy answers at ``cores`` and at ``free`` threads, alternating, while
    ``busy`` spinning processes run."""
    import torch

    from tunekit import Tuner
    from tunekit.evaluation import generate_answers

    tuner = Tuner(model=spec["model"], strategy="lora")
    loop = PlainLoop(tuner.model, lr=2e-4, total_steps=100, device="cpu")
    batch = hand_collate(tokenized(mixed_rows(BATCH, seed=6), tuner.tokenizer), int(tuner.tokenizer.pad_token_id))
    prompts = [r["prompt"] for r in mixed_rows(BATCH, seed=7)]
    cores, free = spec["cores"], spec["free"]
    times: dict[str, list[float]] = {f"{what}-{n}": [] for what in ("step", "generate") for n in (cores, free)}
    with busy_cores(spec["busy"]):
        for i in range(1 + spec["timed"]):  # the first round warms up
            for n in ((cores, free) if i % 2 else (free, cores)):  # ABBA: drift hits both alike
                torch.set_num_threads(n)
                for what in ("step", "generate"):
                    t = time.perf_counter()
                    if what == "step":
                        loop.step(batch)
                    else:
                        generate_answers(tuner.model, tuner.tokenizer, prompts, max_new_tokens=16)
                    if i:
                        times[f"{what}-{n}"].append(time.perf_counter() - t)
    return times


def case_load(res: Results, ws: Workspace, s: Settings) -> None:
    repeats = max(1, min(s.repeats, 2))
    firsts, seconds, ratios, imports = [], [], [], []
    for _ in range(repeats):
        cache = Path(tempfile.mkdtemp(prefix="tunekit-bench-cache-"))
        try:
            env = {"TUNEKIT_CACHE": str(cache)}
            runs = [run_worker("load", {"model": REAL}, env) for _ in range(2)]
            first, second = runs[0]["seconds"], runs[1]["seconds"]
            imports += [r["imports"] for r in runs]
        finally:
            shutil.rmtree(cache, ignore_errors=True)
        firsts.append(first)
        seconds.append(second)
        ratios.append(first / second)
    value, spread, n = ratio_summary(ratios)
    res.add(Row(
        f"load/{REAL}", "load", REAL, "first GGUF load (de-quantize + cache) / cached load", value, spread=spread, n=n,
        target=">= 10", met=value >= 10,
        detail=f"{statistics.median(firsts):.1f} s vs {statistics.median(seconds):.1f} s (Tuner(model, strategy='full').model and "
        f".tokenizer, fresh process each, empty cache per pair; the libraries' imports before it took {statistics.median(imports):.1f} s "
        "and are not counted on either side)",
        data={"first_s": firsts, "second_s": seconds, "imports_s": imports},
    ))


# ---------------------------------------------------------------------------------------------
# case: generation for evaluation
# ---------------------------------------------------------------------------------------------
def generation_rows(tokenizer: Any, n: int) -> list[dict[str, Any]]:
    """The iso-dates test rows as evaluation rows: chats where the tokenizer has a chat template
    (they share the template's system prompt), else prompt/completion rows with the same instruction
    as a text prefix."""
    from tunekit.tasks import load_task

    rows = load_task("iso-dates", "test")[:n]
    if getattr(tokenizer, "chat_template", None):
        return rows
    return [{"prompt": f"{r['messages'][0]['content']}\nDate: {r['messages'][1]['content']}\nAnswer:", "completion": r["messages"][-1]["content"]}
            for r in rows]


def plain_generate_answers(model: Any, tokenizer: Any, prompts: list[Any], *, batch_size: int, max_new_tokens: int) -> list[str]:
    """The baseline: ``model.generate`` (greedy) over the prompts in their order, left-padded per batch."""
    from tunekit.data.chat import render_generation_prompt
    from tunekit.testing import plain_greedy_answers

    encoded = []
    for prompt in prompts:
        text, special = render_generation_prompt(tokenizer, prompt)
        encoded.append(list(tokenizer(text, add_special_tokens=special)["input_ids"]))
    return plain_greedy_answers(model, tokenizer, encoded, batch_size=batch_size, max_new_tokens=max_new_tokens)


def evaluated_answers(tuner: Any, rows: list[dict[str, Any]]) -> list[str]:
    """What ``Tuner.evaluate(rows, metrics=["exact_match"])`` answered, row by row."""
    return [g.prediction for g in tuner.evaluate(rows, metrics=["exact_match"]).generations]


def case_generation(res: Results, ws: Workspace, s: Settings, models: list[str]) -> None:
    """``Tuner.evaluate(metrics=["exact_match"])`` with its defaults against plain batched ``generate``
    at the training batch size, and tunekit's decoding loop against ``generate`` at one batch size,
    on one torch thread (the ratios are about decoding, not about threads on a shared machine)."""
    import torch
    from datasets import Dataset

    from tunekit import Tuner
    from tunekit.evaluation import answer_budget, generate_answers, prompts_and_references
    from tunekit.tuner import GENERATION_BATCH_FACTOR

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    wide = GENERATION_BATCH_FACTOR * BATCH  # what evaluate generates with by default
    try:
        for model_name in models:
            tuner = Tuner(model=ws.model(model_name), strategy="lora", training={"cpu_threads": 1, "progress_bar": False})
            model, tokenizer = tuner.model, tuner.tokenizer
            n = 8 if s.smoke else 64 if model_name == REAL else 128
            rows = generation_rows(tokenizer, n)
            n = len(rows)
            prompts, refs = prompts_and_references(Dataset.from_list(rows), "chat" if "messages" in rows[0] else "prompt_completion")
            budget = answer_budget(tokenizer, refs)

            sides: dict[str, Callable[[], list[str]]] = {
                "plain": functools.partial(plain_generate_answers, model, tokenizer, prompts, batch_size=BATCH, max_new_tokens=budget),
                "evaluate": functools.partial(evaluated_answers, tuner, rows),
                "plain-wide": functools.partial(plain_generate_answers, model, tokenizer, prompts, batch_size=wide, max_new_tokens=budget),
                "loop-wide": functools.partial(generate_answers, model, tokenizer, prompts, batch_size=wide, max_new_tokens=budget),
            }
            answers = {name: side() for name, side in sides.items()}  # warm-up, and the answers compared
            times: dict[str, list[float]] = {name: [] for name in sides}
            names = list(sides)
            for i in range(s.repeats):
                for name in (names if i % 2 == 0 else names[::-1]):  # alternating: drift hits every side
                    t = time.perf_counter()
                    sides[name]()
                    times[name].append(time.perf_counter() - t)
            for row_id, (baseline, ours), measure, target in (
                ("", ("plain", "evaluate"), f"rows/s: Tuner.evaluate(metrics=['exact_match']), defaults / plain batched model.generate at batch {BATCH}", ">= 2"),
                ("/generation-only", ("plain", "loop-wide"),
                 f"rows/s: generate_answers at evaluate's batch ({wide}) / plain batched model.generate at batch {BATCH}", ""),
                ("/same-batch", ("plain-wide", "loop-wide"), f"rows/s: generate_answers / plain batched model.generate, both at batch {wide}", ""),
            ):
                ratios = [p / t for p, t in zip(times[baseline], times[ours], strict=True)]
                value, spread, count = ratio_summary(ratios)
                same = sum(a == b for a, b in zip(answers[baseline], answers[ours], strict=True))
                res.add(Row(
                    f"generation/{model_name}{row_id}", "generation", model_name, measure,
                    value, spread=spread, n=count, target=target, met=(value >= 2) if target else None,
                    detail=f"{n / statistics.median(times[ours]):.2f} vs {n / statistics.median(times[baseline]):.2f} rows/s; "
                    f"answers identical: {same}/{n}; iso-dates test rows, {budget} new tokens at most, 1 torch thread"
                    + (f"; evaluate also computes the eval loss, and generates at batch {wide}" if not row_id else ""),
                    data={"times": times, "identical": same, "rows": n},
                ))
    finally:
        torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------------
# compile: torch.compile of the model for the LoRA training step, on and off
# ---------------------------------------------------------------------------------------------
AMORTISE_STEPS = 1000  # a short fine-tuning run: the compile time is spread over this many steps


def _dynamo_graphs() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def case_compile(res: Results, ws: Workspace, s: Settings, models: list[str]) -> None:
    """A plain LoRA step on tunekit's model (tunekit's loss on it) with the model eager and with
    ``torch.compile(model)`` (default ``dynamic=None``: the first new batch length recompiles with
    dynamic shapes), on the same batches of varying length, step-interleaved. Steps in which
    dynamo compiled a graph are the compile time; the rest the steady state."""
    import torch
    import torch._dynamo

    from tunekit import Tuner

    ids = ("step", "compile_time", f"amortised-{AMORTISE_STEPS}")
    measures = (
        "LoRA step time, steady state: torch.compile'd model / eager (same batches)",
        "compile time (steps that compiled a graph, less a steady compiled step), in eager steps",
        f"LoRA step time over {AMORTISE_STEPS} steps, compile time included: compiled / eager",
    )
    if torch.cuda.is_available():
        for id_, measure in zip(ids, measures, strict=True):
            for model in models:
                res.skip(f"compile/{model}/{id_}", "compile", model, measure, "measured on CPUs only")
        return
    for model in models:
        real = model == REAL
        steps = 4 if s.smoke else (6 if real else 10)
        eager_tuner, compiled_tuner = Tuner(model=ws.model(model), strategy="lora"), Tuner(model=ws.model(model), strategy="lora")
        loss_fn = tunekit_loss(eager_tuner.model)
        trained = loss_fn is not default_loss
        pad = int(eager_tuner.tokenizer.pad_token_id)
        feats = tokenized(mixed_rows(BATCH * steps, seed=9), eager_tuner.tokenizer)
        batches = [hand_collate(feats[i * BATCH : (i + 1) * BATCH], pad) for i in range(steps)]
        torch._dynamo.reset()
        torch._dynamo.utils.counters.clear()
        # cold caches: what a first fit pays (inductor's on-disk cache would make a second run compile faster)
        cache_env = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(ws.root / f"inductor-{model}-{time.monotonic_ns()}")
        mine: dict[str, Any] = {"lr": 2e-4, "total_steps": 100, "device": "cpu", "trained_logits": trained}
        eager = PlainLoop(eager_tuner.model, **mine)
        compiled = PlainLoop(torch.compile(compiled_tuner.model), **mine)
        times: dict[str, list[float]] = {"eager": [], "compiled": []}
        new_graphs: list[int] = []
        failed = ""
        for i, batch in enumerate(batches):
            for side in (("eager", "compiled") if i % 2 == 0 else ("compiled", "eager")):
                loop = eager if side == "eager" else compiled
                before = _dynamo_graphs()
                t = time.perf_counter()
                try:
                    loop.step(batch)
                except Exception as exc:  # inductor needs a C compiler and more: say why, do not stop the bench
                    failed = f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:300]}"
                    break
                times[side].append(time.perf_counter() - t)
                if side == "compiled":
                    new_graphs.append(_dynamo_graphs() - before)
            if failed:
                break
        break_reasons = dict(torch._dynamo.utils.counters["graph_break"].most_common(5))  # each break splits the model into one more graph
        breaks = int(sum(torch._dynamo.utils.counters["graph_break"].values()))
        torch._dynamo.reset()
        if cache_env is None:
            os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
        else:
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache_env
        if failed:
            for id_, measure in zip(ids, measures, strict=True):
                res.skip(f"compile/{model}/{id_}", "compile", model, measure, f"torch.compile failed here: {failed}")
            continue
        lengths = [int(b["input_ids"].shape[1]) for b in batches]
        steady = [i for i, g in enumerate(new_graphs) if g == 0]
        compiling = [i for i, g in enumerate(new_graphs) if g > 0]
        if not steady:
            why = f"every one of the {steps} compiled steps compiled a graph (batch lengths {lengths}): no steady state to compare"
            for id_, measure in zip(ids, measures, strict=True):
                res.skip(f"compile/{model}/{id_}", "compile", model, measure, why)
            continue
        eager_s = statistics.median(times["eager"][i] for i in steady)
        compiled_s = statistics.median(times["compiled"][i] for i in steady)
        ratios = [times["compiled"][i] / times["eager"][i] for i in steady]
        value, spread, n = ratio_summary(ratios)
        compile_s = sum(times["compiled"][i] - compiled_s for i in compiling)
        saved = eager_s - compiled_s
        even = f"breaks even after {math.ceil(compile_s / saved)} steps" if saved > 0 else "never breaks even (the compiled step is not faster)"
        recompiles = max(0, len(compiling) - 1)  # the steps after the first that compiled: a new batch length (dynamic=None)
        where = (f"graphs compiled at steps {[i + 1 for i in compiling]} ({sum(new_graphs)} graphs, {breaks} graph breaks; "
                 f"{recompiles} recompile(s) for a new batch length; batch lengths {lengths})")
        if break_reasons:
            where += f"; most frequent graph break: {next(iter(break_reasons)).splitlines()[0][:120]}"
        common = f"dynamic=None, inductor, cold caches; tunekit's loss ({loss_fn.__name__}); {torch.get_num_threads()} torch threads"
        res.add(Row(
            f"compile/{model}/step", "compile", model, measures[0], value, spread=spread, n=n,
            detail=f"median step {compiled_s * 1e3:.0f} ms compiled vs {eager_s * 1e3:.0f} ms eager over the {n} steps that compiled nothing; {common}",
            data={"times": times, "new_graphs": new_graphs, "lengths": lengths},
        ))
        res.add(Row(
            f"compile/{model}/compile_time", "compile", model, measures[1], compile_s / eager_s, unit="eager steps", n=len(compiling),
            detail=f"{compile_s:.1f} s of compiling (cold caches); {where}; {even}",
            data={"compile_s": compile_s, "recompiles": recompiles, "graph_breaks": breaks, "graph_break_reasons": break_reasons, "compiling_steps": compiling},
        ))
        amortised = (compile_s + AMORTISE_STEPS * compiled_s) / (AMORTISE_STEPS * eager_s)
        res.add(Row(
            f"compile/{model}/amortised-{AMORTISE_STEPS}", "compile", model, measures[2], amortised, n=n,
            detail=f"({compile_s:.1f} s + {AMORTISE_STEPS} x {compiled_s * 1e3:.0f} ms) / ({AMORTISE_STEPS} x {eager_s * 1e3:.0f} ms); {even}",
        ))
        del eager, compiled, eager_tuner, compiled_tuner


# ---------------------------------------------------------------------------------------------
# case 6: accelerator
# ---------------------------------------------------------------------------------------------
def case_accelerator(res: Results, ws: Workspace, s: Settings, models: list[str]) -> None:
    import torch

    if not torch.cuda.is_available():
        res.skip("accelerator/mfu", "accelerator", "-", "model FLOPs utilisation vs measured bf16 matmul rate", "no CUDA device on this machine; runs where one exists")
        return
    peak = matmul_rate(torch.bfloat16)
    name = torch.cuda.get_device_name()
    for model in models:
        out = overhead_runs(ws, s, model)
        value, spread, n = ratio_summary(out["ratios"])
        res.add(Row(
            f"accelerator/{model}/overhead", "accelerator", model, f"tunekit LoRA step / hand-written step on {name}", value, spread=spread, n=n,
            target="<= 1.10", met=value <= 1.10, detail=f"{out['precision']}; median {statistics.median(out['tunekit_s']) * 1e3:.1f} ms/step",
        ))
        from tunekit import Tuner

        m = Tuner(model=ws.model(model), strategy="lora").model
        m.train()
        loss_fn = tunekit_loss(m)  # the loss tunekit's fit trained on: its FLOPs, counted exactly per batch
        counted = [counted_step_flops(m, b, loss_fn) for b in out["batches"]]
        flops = float(sum(f["total"] for f in counted))
        seconds = sum(out["tunekit_s"])
        achieved = flops / seconds
        res.add(Row(
            f"accelerator/{model}/mfu", "accelerator", model, "model FLOP/s / measured bf16 matmul FLOP/s (MFU)", achieved / peak, unit="",
            target=">= 0.40" if model == REAL else "", met=(achieved / peak >= 0.40) if model == REAL else None,
            detail=f"{achieved / 1e12:.2f} TFLOP/s achieved (counted FLOPs, loss {loss_fn.__name__}, "
            f"attention {sum(f['attention'] for f in counted) / max(flops, 1) * 100:.0f}%) vs {peak / 1e12:.0f} TFLOP/s bf16 matmul (8192^3) on {name}",
            data={"flops": [f["total"] for f in counted], "step_s": out["tunekit_s"], "peak": peak},
        ))
        del m


# ---------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "platform": platform.platform(), "python": platform.python_version(), "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        flags = Path("/proc/cpuinfo").read_text()
        info["cpu_bf16"] = "avx512_bf16" in flags or "amx_bf16" in flags
    with contextlib.suppress(OSError, ValueError):
        info["memory_gib"] = round(int(Path("/proc/meminfo").read_text().split()[1]) / 2**20, 1)
    from importlib.metadata import version

    for pkg in ("transformers", "peft", "trl", "bitsandbytes", "accelerate"):
        with contextlib.suppress(Exception):
            info[pkg] = version(pkg)
    return info


def markdown(res: Results) -> str:
    m = res.meta
    lines = [
        "# tunekit benchmark",
        "",
        f"Command: `{m['command']}`  ",
        f"Mode: {'smoke (smallest quick run; figures mean little)' if res.settings.smoke else 'quick (tiny models only)' if res.settings.quick else 'full (tiny models, ' + GPT2_SHAPE + ' and ' + REAL + ')'}; "
        f"{res.settings.repeats} repeats; finished {m['finished']} after {m['duration_s'] / 60:.1f} min  ",
        f"Machine: {m['machine'].get('cpu', '?')}, {m['machine']['cpu_count']} CPUs, torch threads {m['machine']['torch_threads']}, "
        f"CUDA: {m['machine']['cuda'] or 'none'}; load average {m['load_average_start']} at start, {m['load_average_end']} at end  ",
    ]
    if res.settings.real_note:
        lines.append(f"Real model: {res.settings.real_note}  ")
    lines += [
        "",
        "Every value is a ratio against a baseline measured in the same run (median over runs, range and n in brackets), "
        "except the levers baseline (absolute, for scale).",
        "",
        "| case | model | measurement | value | target | met | detail |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in res.rows:
        value = _fmt_value(r) if r.status == "ok" else r.status
        met = "" if r.met is None else ("yes" if r.met else "**no**")
        lines.append(f"| {r.case} | {r.model} | {r.measure} | {value} | {r.target} | {met} | {r.detail.replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def write(res: Results, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    res.meta["finished"] = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    res.meta["duration_s"] = round(time.time() - res.started, 1)
    res.meta["load_average_end"] = _loadavg()
    payload = {
        "meta": res.meta,
        "settings": res.settings.__dict__,
        "classic_repairs": CLASSIC_REPAIRS,
        "classic_settings": CLASSIC_SETTINGS,
        "rows": [
            {**r.__dict__, "spread": list(r.spread) if r.spread else None, "value": (None if r.value is None or math.isnan(r.value) else r.value)}
            for r in res.rows
        ],
    }
    (out / "bench.json").write_text(json.dumps(payload, indent=2, default=str))
    (out / "bench.md").write_text(markdown(res))
    print(f"[bench] wrote {out / 'bench.json'} and {out / 'bench.md'}", flush=True)


# ---------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------
def check_real() -> tuple[bool, str]:
    """Whether ``Tuner(model="smollm2-135m")`` can load here, converting the GGUF once if needed."""
    try:
        from tunekit.models.gguf_cache import cached_conversion
        from tunekit.models.loading import materialize, resolve_source

        source = resolve_source(REAL)
        if source.kind == "gguf" and cached_conversion(Path(source.path) / str(source.gguf_file)) is not None:
            note = "alias resolved; conversion already cached"
        else:
            t = time.perf_counter()
            materialize(source)
            note = f"alias resolved; GGUF converted and cached now ({time.perf_counter() - t:.0f} s, not part of any figure)"
        return True, note
    except Exception as exc:  # the alias is optional: say why its rows are skipped
        return False, f"skipped: Tuner(model={REAL!r}) does not work here ({type(exc).__name__}: {exc})"


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny models only (a few minutes)")
    p.add_argument("--smoke", action="store_true", help="quick mode at its smallest (one run, two steps): checks that every case runs; its figures mean little")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where bench.json and bench.md go (default: benchmarks/results)")
    p.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of {','.join(CASES)}")
    p.add_argument("--repeats", type=int, default=None, help="runs per comparison (default 3)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per run on tiny models (default 16)")
    p.add_argument("--no-real", action="store_true", help="skip the real-model rows even in full mode")
    p.add_argument("--real-only", action="store_true", help="only the real-model rows (full mode)")
    p.add_argument("--memory-runs", default="", help=f"comma-separated subset of the memory case's runs: {','.join(MEMORY_RUNS)}")
    p.add_argument("--worker", choices=["memory", "load", "steps", "threads"], help=argparse.SUPPRESS)
    p.add_argument("--spec", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse(argv)
    if args.worker:
        spec = json.loads(args.spec)
        logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
        out = {"memory": worker_memory, "load": worker_load, "steps": worker_steps, "threads": worker_threads}[args.worker](spec)
        print(json.dumps(out), flush=True)
        return 0
    import datasets

    datasets.disable_progress_bars()
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = sorted(set(cases) - set(CASES))
    if unknown:
        raise SystemExit(f"unknown case(s) {unknown}; choose from {CASES}")
    if args.smoke:
        args.quick = True
    s = Settings(
        quick=args.quick, smoke=args.smoke, repeats=args.repeats or (1 if args.smoke else 3), warmup=1 if args.smoke else 2,
        steps=args.steps or (2 if args.smoke else 16), real_steps=4, real=False,
        memory_runs=tuple(r.strip() for r in args.memory_runs.split(",") if r.strip()),
    )
    if set(s.memory_runs) - set(MEMORY_RUNS):
        raise SystemExit(f"unknown memory run(s) {sorted(set(s.memory_runs) - set(MEMORY_RUNS))}; choose from {list(MEMORY_RUNS)}")
    if not args.quick and not args.no_real:
        s.real, s.real_note = check_real()
    elif args.quick:
        s.real_note = "not run (quick mode: tiny models only)"
    else:
        s.real_note = "not run (--no-real)"
    res = Results(s, argv)
    res.meta["command"] = "python benchmarks/bench.py " + " ".join(argv)
    res.meta["machine"] = machine()
    real = [REAL] if s.real else []

    def tiny(name: str) -> list[str]:
        return [] if args.real_only else [name]

    root = Path(tempfile.mkdtemp(prefix="tunekit-bench-"))
    ws = Workspace(root)
    plan: dict[str, Callable[[], None]] = {
        "overhead": lambda: case_overhead(res, ws, s, [*tiny("tiny-gpt2"), *real]),
        "speed": lambda: case_speed(res, ws, s, [*tiny("tiny-llama"), *real]),
        "utilization": lambda: case_utilization(res, ws, s, [*tiny("tiny-gpt2"), *tiny("tiny-llama"), *real]),
        "classic": lambda: case_classic(res, ws, s, [*tiny("tiny-gpt2"), *([] if s.quick else [GPT2_SHAPE]), *real]),
        "levers": lambda: case_levers(res, ws, s, [*tiny("tiny-gpt2"), *real]),
        "memory": lambda: case_memory(res, ws, s, [*tiny("tiny-llama" if s.smoke else "tiny-llama-wide"), *real]),
        "scaling": lambda: case_scaling(res, ws, s, [*tiny("tiny"), *real]),
        "threads": lambda: case_threads(res, ws, s, [*tiny("tiny-llama" if s.smoke else "tiny-llama-wide"), *real]),
        "load": lambda: case_load(res, ws, s) if s.real else res.skip(f"load/{REAL}", "load", REAL, "first GGUF load / cached load", s.real_note),
        "generation": lambda: case_generation(res, ws, s, [*tiny("tiny-gpt2"), *tiny("tiny-llama"), *real]),
        "compile": lambda: case_compile(res, ws, s, [*tiny("tiny-gpt2"), *real]),
        "accelerator": lambda: case_accelerator(res, ws, s, real or ["tiny-gpt2"]),
    }
    try:
        for case in CASES:
            if case not in cases:
                continue
            print(f"[bench] --- {case} ---", flush=True)
            started = time.perf_counter()
            try:
                plan[case]()
            except Exception as exc:  # one broken case must not hide the others' figures
                traceback.print_exc()
                res.add(Row(f"{case}/error", case, "-", "case failed", status="error", detail=f"{type(exc).__name__}: {exc}"))
            res.meta.setdefault("case_seconds", {})[case] = round(time.perf_counter() - started, 1)
    finally:
        shutil.rmtree(root, ignore_errors=True)
        write(res, args.out)
    return 1 if any(r.status == "error" for r in res.rows) else 0


if __name__ == "__main__":
    sys.exit(main())
