#!/usr/bin/env python
"""How far apart two equal ways of running a model land: the shared prefix run once against the plain forward.

    python scripts/probe_rounding.py                      # smollm2-135m LoRA, the demo's rows, 1 and 2 threads
    python scripts/probe_rounding.py --target-modules all-linear --threads 2   # the speed benchmark's LoRA
    python scripts/probe_rounding.py --model ./my-model --threads 1 4

For the shared-prefix probe's own batch (:func:`tunekit.training.shared_prefix.probe_batch`, what
decides whether ``training.shared_prefix: auto`` turns on) and for one batch of the iso-dates chat
rows (they share the template's system prompt), the logits of the trained positions are computed
with the batch's shared prefix run once and with the plain forward, at each thread count.
Printed: the largest difference, the largest logit, and whether
:func:`tunekit.training.numerics.same_logits` (the probes' tolerance) and a fixed
``allclose(rtol=1e-3, atol=1e-3)`` (the tolerance before it) accept them. docs/performance.md
("Generation for evaluation") quotes this script.
"""

from __future__ import annotations

import argparse


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--target-modules", default=None, help="LoRA's target_modules (default: the strategy's own; e.g. all-linear)")
    args = parser.parse_args()

    import torch

    from tunekit import Tuner
    from tunekit.data.collate import PadPerBatch
    from tunekit.tasks import load_task
    from tunekit.training.loss import trained_positions
    from tunekit.training.numerics import same_logits
    from tunekit.training.shared_prefix import PROBE_PREFIX, prefix_length, probe_batch, shared_prefix_logits

    strategy = {"name": "lora", **({"target_modules": args.target_modules} if args.target_modules else {})}
    tuner = Tuner(model=args.model, strategy=strategy, training={"progress_bar": False})
    tokenized = tuner._prepare(load_task("iso-dates", "test")[: args.rows], split_eval=False).train
    rows = PadPerBatch(pad_token_id=tuner.tokenizer.pad_token_id)([tokenized[i] for i in range(len(tokenized))])
    labels = rows.pop("labels")
    keep = trained_positions(labels)
    model = tuner.model.eval()
    ids, mask, probe_keep = probe_batch(int(model.config.vocab_size), next(model.parameters()).device)
    batches = {
        "the probe's batch": ({"input_ids": ids, "attention_mask": mask}, probe_keep, PROBE_PREFIX),
        f"{len(tokenized)} iso-dates rows of {labels.shape[1]} tokens": (rows, keep, prefix_length(rows["input_ids"], rows["attention_mask"], keep)),
    }
    for name, (batch, kept, prefix) in batches.items():
        print(f"{args.model}, {name}, shared prefix {prefix} tokens:")
        for threads in args.threads:
            torch.set_num_threads(threads)
            with torch.no_grad():
                plain = model(**batch, use_cache=False, logits_to_keep=kept).logits
                shared = shared_prefix_logits(model, {**batch, "use_cache": False}, kept, prefix)
            diff = float((shared - plain).abs().max())
            fixed = bool(torch.allclose(shared, plain, rtol=1e-3, atol=1e-3))
            print(f"  {threads} thread(s): largest difference {diff:.5f}, largest logit {float(plain.abs().max()):.1f}; "
                  f"same_logits: {same_logits(shared, plain)}, fixed 1e-3: {fixed}")

if __name__ == "__main__":
    main()
