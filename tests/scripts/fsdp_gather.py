"""Run by tests/test_distributed.py under `torchrun --nproc_per_node 2` on CPUs (gloo).

usage: torchrun --nproc_per_node 2 fsdp_gather.py MODEL_DIR OUT_DIR [FSDP_VERSION (2, or 1)]

accelerate runs FSDP on accelerators only (on CPUs its state stays MULTI_CPU and ``prepare`` wraps
in DDP, even with an FSDP plugin), so this shards the model with torch's FSDP2 (``fully_shard``)
directly (or with FSDP1's ``FullyShardedDataParallel`` wrapper, recorded as the Trainer's
``model_wrapped`` is): the same sharded modules the Trainer trains under FSDP on GPUs. It trains a few steps,
then checks what tunekit does after a sharded fit: the whole state dict gathered for the save
(rank 0 writes it; plain transformers loads it), the eval loss on the sharded module with uneven
shards per rank, and greedy answers generated across ranks.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard
from transformers import AutoModelForCausalLM, AutoTokenizer

from tunekit.evaluation import evaluate_loss, generate_answers
from tunekit.testing import sft_rows
from tunekit.training.distributed import (
    gathered_state_dict,
    inference_module,
    is_sharded,
    remember_sharded,
    saving_state_dict,
)

model_dir, out = sys.argv[1], Path(sys.argv[2])
version = int(sys.argv[3]) if len(sys.argv) > 3 else 2
dist.init_process_group("gloo")
rank = dist.get_rank()
torch.manual_seed(0)

tokenizer = AutoTokenizer.from_pretrained(model_dir)
tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
if version == 2:
    for block in model.transformer.h:
        fully_shard(block)
    fully_shard(model)
    train_module = model
else:
    from torch.distributed.fsdp import FullyShardedDataParallel
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy
    from transformers.models.gpt2.modeling_gpt2 import GPT2Block

    train_module = FullyShardedDataParallel(
        model, auto_wrap_policy=ModuleWrapPolicy({GPT2Block}), use_orig_params=True, device_id=torch.device("cpu")
    )
    remember_sharded(model, train_module, None)  # as tunekit's training loop records the Trainer's model_wrapped
assert is_sharded(model)

# a few steps, each rank on its own rows, so the weights are no longer the ones on disk
optimizer = torch.optim.AdamW(train_module.parameters(), lr=1e-2)
texts = [r["prompt"] + r["completion"] for r in sft_rows(8, seed=rank)]
train_module.train()
for step in range(3):
    batch = tokenizer(texts[step * 2 : step * 2 + 2], return_tensors="pt", padding=True)
    loss = train_module(**batch, labels=batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
train_module.eval()

# 1. the whole weights, gathered on every rank's call, saved by rank 0 with save_pretrained
state = gathered_state_dict(model)
assert state is not None
probe = torch.tensor([[1, 5, 9, 13, 17, 21]])
with torch.no_grad():
    sharded_logits = train_module(input_ids=probe).logits  # a collective forward
if rank == 0:
    with saving_state_dict(model, state):
        model.save_pretrained(str(out / "model"), safe_serialization=True)
    tokenizer.save_pretrained(str(out / "model"))
dist.barrier()

# 2. the eval loss on the sharded module, 5 rows in batches of 1: rank 0 runs 3 batches, rank 1 runs 2
from datasets import Dataset  # noqa: E402

enc = [tokenizer(r["prompt"] + r["completion"])["input_ids"] for r in sft_rows(5, seed=9)]
rows = Dataset.from_dict({"input_ids": enc, "labels": enc})
with inference_module(model) as m:
    loss = evaluate_loss(m, rows, pad_token_id=int(tokenizer.pad_token_id), batch_size=1, trained_logits_only=False)
    # 3. greedy answers, each rank answering its share, every rank gets them all
    prompts = [r["prompt"] for r in sft_rows(3, seed=4)]
    answers = generate_answers(m, tokenizer, prompts, batch_size=1, max_new_tokens=4)

if rank == 0:
    full = {k: v.tolist() for k, v in state.items() if k in ("transformer.wte.weight", "lm_head.weight")}
    (out / "rank0.json").write_text(json.dumps({
        "logits": sharded_logits.tolist(), "eval_loss": loss.loss, "eval_tokens": loss.tokens, "answers": answers,
        "keys": sorted(state), "sample": {k: v[:2] for k, v in full.items()},
    }))
else:
    (out / "rank1.json").write_text(json.dumps({"eval_loss": loss.loss, "answers": answers}))
dist.barrier()
dist.destroy_process_group()
os._exit(0)
