"""The benchmark suite (benchmarks/bench.py) runs in quick mode and writes its JSON and Markdown table.

Only the shape of the output is checked: timings on shared machines are noise, so no figure is
asserted. ``--smoke`` is quick mode at its smallest (tiny models, one run, two steps).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks" / "bench.py"

EXPECTED_ROWS = [
    "overhead/tiny-gpt2",
    *(f"utilization/{model}/{side}" for model in ("tiny-gpt2", "tiny-llama") for side in ("tunekit", "hand")),
    "classic/tiny-gpt2/tokens_per_s",
    "classic/tiny-gpt2/eval_loss",
    *(
        f"levers/tiny-gpt2/{lever}"
        for lever in (
            "baseline", "bf16", "pad512", "random_order", "checkpointing", "metrics", "int8_base", "padding_free", "lora_dropout", "head_positions",
            "omp_passive",
        )
    ),
    "memory/tiny-llama/bnb-4bit",
    "memory/tiny-llama/bnb-8bit",
    "memory/tiny-llama/full",
    "memory/tiny-llama/lora-dropout",
    "memory/tiny-llama/all-logits",
    "memory/tiny-llama/optimizer-adafactor",
    "memory/tiny-llama/optimizer-adamw_8bit",  # skipped without CUDA, but listed
    *(f"scaling/tiny-llama/L{length}xB1" for length in (128, 256, 512, 1024)),
    *(f"scaling/tiny-llama/L128xB{batch}" for batch in (2, 4, 8)),
    *(f"scaling/tiny-llama/L{length}xB8" for length in (256, 512, 1024)),
    "load/smollm2-135m",  # skipped in quick mode, but listed
    *(f"generation/{model}{row}" for model in ("tiny-gpt2", "tiny-llama") for row in ("", "/generation-only", "/same-batch")),
    *(f"compile/tiny-gpt2/{what}" for what in ("step", "compile_time", "amortised-1000")),  # ok, or skipped saying why
]


def test_quick_benchmark_writes_json_and_markdown_table(tmp_path: Path) -> None:
    import torch

    proc = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--smoke", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    data = json.loads((tmp_path / "bench.json").read_text())
    rows = {row["id"]: row for row in data["rows"]}
    expected = [*EXPECTED_ROWS, "accelerator/tiny-gpt2/mfu" if torch.cuda.is_available() else "accelerator/mfu"]
    missing = [row_id for row_id in expected if row_id not in rows]
    threads = {"threads/tiny-llama"} if "threads/tiny-llama" in rows else {"threads/tiny-llama/step-busy1", "threads/tiny-llama/generate-busy1"}
    missing += sorted(threads - set(rows))  # one row id when the machine has a single core (skipped), else two
    assert not missing, f"rows missing from bench.json: {missing}"
    assert not [r for r in data["rows"] if r["status"] == "error"]
    for row in data["rows"]:
        assert row["status"] in {"ok", "skipped"}
        if row["status"] == "ok":  # a ratio or a rate was computed (its size is not checked)
            # sgd without momentum keeps no state at all: its ratio to AdamW is exactly 0
            assert isinstance(row["value"], float) and math.isfinite(row["value"]), row
            assert row["value"] > 0 or row["id"].endswith("optimizer-sgd"), row
    assert rows["load/smollm2-135m"]["status"] == "skipped"  # quick mode: tiny models only
    for side in ("tunekit", "hand"):  # counted FLOPs against the matmul rate measured in the same process
        row = rows[f"utilization/tiny-gpt2/{side}"]
        assert row["status"] == ("skipped" if torch.cuda.is_available() else "ok"), row
        if row["status"] == "ok":
            assert row["target"] == "" and row["met"] is None  # the target is for smollm2-135m only
            assert all(f > 0 for f in row["data"]["flops"]) and row["data"]["by_op"], row
            assert "GFLOP/s achieved" in row["detail"] and "fp32 matmul" in row["detail"], row
    assert data["meta"]["command"].startswith("python benchmarks/bench.py --quick")
    assert data["classic_repairs"]  # what the classic recipe needed to run is recorded

    table = (tmp_path / "bench.md").read_text()
    assert "| case | model | measurement | value | target | met | detail |" in table
    for row in data["rows"]:
        assert f"| {row['case']} | {row['model']} | {row['measure']} |" in table, row["id"]
