#!/usr/bin/env python
"""Where a LoRA training step's time goes, by kind of operator (torch.profiler, CPU).

    python scripts/step_profile.py                         # smollm2-135m, the demo's rows, batch 8, 3 profiled steps
    python scripts/step_profile.py --model ./my-model --steps 5 --top 20

The step is tunekit's own (its Trainer's loss: the LM head on trained positions, the shared
prefix where the batch has one) on the iso-dates chat rows, with AdamW, after 2 warm-up steps.
Each operator's *self* time (excluding the operators it calls) is put in one group: matrix
products (the frozen weights' and LoRA's, split by whether a dimension is LoRA's rank), attention,
the optimizer, and elementwise/normalisation/copies (everything else). The groups' shares are
what a faster kernel, fusion (torch.compile) or a larger LoRA rank could change; the figures
in docs/performance.md ("Hardware utilisation") come from this script.
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from typing import Any

MATMUL = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::matmul", "aten::linear"}
ATTENTION = ("scaled_dot_product", "flash_attention", "efficient_attention")


def _group(name: str, shapes: Any, rank: int) -> str:
    if name in MATMUL:
        dims = [d for shape in shapes or [] for d in (shape or [])]
        return "matmul (LoRA, rank dims)" if rank in dims else "matmul (frozen and head)"
    if any(a in name for a in ATTENTION):
        return "attention"
    if "adam" in name.lower() or "_foreach" in name:
        return "optimizer"
    return "elementwise, norms, copies, other"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--top", type=int, default=12)
    args = p.parse_args(argv)

    import torch
    from datasets import Dataset
    from torch.profiler import ProfilerActivity, profile

    from tunekit import Tuner
    from tunekit.builtin.objectives import SFTObjective, SFTOptions
    from tunekit.data.collate import PadPerBatch
    from tunekit.tasks import load_task
    from tunekit.training.loss import trained_logits_loss, use_trained_logits
    from tunekit.training.shared_prefix import use_shared_prefix
    from tunekit.training.threads import choose_threads

    torch.set_num_threads(choose_threads())
    tuner = Tuner(model=args.model, strategy={"name": "lora", "rank": args.rank, "target_modules": "all-linear"})
    model = tuner.model
    rows = load_task("iso-dates", "train")[: args.batch * (args.steps + 2)]
    tokenized = SFTObjective(SFTOptions()).tokenize(Dataset.from_list(rows), tuner.tokenizer, max_length=128)
    collate = PadPerBatch(int(tuner.tokenizer.pad_token_id))
    batches = [collate([tokenized[i] for i in range(k, k + args.batch)]) for k in range(0, len(tokenized) - args.batch + 1, args.batch)]
    trained = use_trained_logits(model, "auto")
    shared = use_shared_prefix(model, "auto", trained_logits=trained)
    params = [q for q in model.parameters() if q.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    model.train()

    def step(batch: dict[str, Any]) -> None:
        loss = trained_logits_loss(model, batch, shared_prefix=shared) if trained else model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for batch in batches[:2]:
        step(batch)
    started = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for batch in batches[2 : 2 + args.steps]:
            step(batch)
    wall = time.perf_counter() - started
    groups: dict[str, float] = collections.defaultdict(float)
    ops: dict[str, float] = collections.defaultdict(float)
    for event in prof.key_averages(group_by_input_shape=True):
        us = float(event.self_cpu_time_total)
        groups[_group(event.key, event.input_shapes, args.rank)] += us
        ops[event.key] += us
    total = sum(groups.values())
    print(f"{args.model}: {args.steps} LoRA steps (rank {args.rank}, batch {args.batch}, demo rows), {torch.get_num_threads()} torch "
          f"thread(s), {wall / args.steps * 1e3:.0f} ms per step under the profiler; trained positions only: {trained}, shared prefix: {shared}")
    print(f"{'group':<40} {'self time share':>16}")
    for name, us in sorted(groups.items(), key=lambda kv: -kv[1]):
        print(f"{name:<40} {us / total:>15.1%}")
    print(f"\ntop {args.top} operators by self time")
    for name, us in sorted(ops.items(), key=lambda kv: -kv[1])[: args.top]:
        print(f"{name:<40} {us / total:>15.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
