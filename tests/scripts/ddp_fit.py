"""A user script, run unchanged under `torchrun --nproc_per_node 2` by tests/test_distributed.py.

usage: torchrun --nproc_per_node 2 ddp_fit.py MODEL OUTPUT_DIR DUMP_DIR [TRAINED_LOGITS_ONLY]
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from tunekit import Tuner
from tunekit.testing import sft_rows

model, output_dir, dump = sys.argv[1], sys.argv[2], Path(sys.argv[3])
trained_logits_only = {"true": True, "false": False}.get(sys.argv[4] if len(sys.argv) > 4 else "", "auto")
tuner = Tuner(
    model=model,
    strategy={"name": "lora", "rank": 4},
    output_dir=output_dir,
    training={
        "max_steps": 3, "batch_size": 2, "gradient_accumulation": 2, "learning_rate": 1e-2, "logging_steps": 1, "seed": 0,
        "eval_steps": 3,
        "trained_logits_only": trained_logits_only,
    },
)
# 5 eval rows: the ranks hold 3 and 2 of them (uneven shards), and generate answers for their share
result = tuner.fit(sft_rows(32), eval=sft_rows(5, seed=5), metrics=["loss", "exact_match"])
rank = int(os.environ.get("RANK", "0"))
weights = {n: p.detach().flatten().tolist() for n, p in tuner.model.named_parameters() if p.requires_grad}
dump.mkdir(parents=True, exist_ok=True)
(dump / f"rank{rank}.json").write_text(
    json.dumps({"weights": weights, "result": json.loads(result.model_dump_json()), "training_mode": tuner.model.training})
)
