"""The GPU check behind scripts/gpu-check.sh: fit / evaluate / generate / preflight on CUDA, with
every tensor's device and the peak memory against preflight's estimate printed.

usage:
  python scripts/gpu_check.py build --out DIR          # write the check's model, print its path
  python scripts/gpu_check.py single [--model PATH]    # lora on bf16, then lora on bnb-4bit (QLoRA)
  torchrun --nproc_per_node 2 scripts/gpu_check.py ranks [--model PATH]   # one line per rank

Without ``--model`` a Llama-shaped model (hidden 512, 8 layers) is built on the fly with
:func:`tunekit.testing.build_tiny_model`, so the check needs no download. Exit status 1 (and a
``FAIL`` line) for anything that is not where it should be; ``OK`` lines otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

FAILURES: list[str] = []


def check(ok: bool, what: str) -> None:
    print(f"{'OK  ' if ok else 'FAIL'} {what}", flush=True)
    if not ok:
        FAILURES.append(what)


def where(model: Any) -> dict[str, int]:
    """How many parameters and buffers live on each device (``{"cuda:0": 123}``)."""
    counts: Counter[str] = Counter()
    for tensor in [*model.parameters(), *model.buffers()]:
        counts[str(tensor.device)] += 1
    return dict(counts)


def require_cuda() -> None:
    import torch

    if not torch.cuda.is_available():
        sys.exit("gpu_check: FAIL no CUDA device is visible (torch.cuda.is_available() is False); run this on a GPU machine.")


def tiny_model(root: Path) -> Path:
    from tunekit.testing import build_tiny_model

    return build_tiny_model(root / "llama", arch="llama", hidden=512, layers=8)


def rows() -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    from tunekit.testing import sft_rows

    return sft_rows(64), sft_rows(8, seed=5)


def run_single(model: str, out: Path, quantizer: str) -> dict[str, Any]:
    """One configuration: preflight, evaluate, generate, fit, load; devices and memory printed."""
    import torch

    from tunekit import Tuner
    from tunekit.training.distributed import process_device
    from tunekit.training.memory import PeakMemory

    device = process_device()
    label = f"lora/{quantizer}"
    print(f"\n== {label} (process device {device}) ==", flush=True)
    train, evals = rows()
    tuner = Tuner(
        model=model, strategy={"name": "lora", "rank": 8}, quantizer=quantizer, output_dir=str(out / label.replace("/", "-")),
        training={"max_steps": 10, "batch_size": 8, "precision": "bf16", "logging_steps": 5, "progress_bar": False},
    )
    before = where(tuner.model)
    print(f"   before fit: {before}")
    check(set(before) == {str(device)}, f"{label}: the model is on {device} before fit")
    check(not tuner.model.training, f"{label}: the model is in eval mode before fit")

    report = tuner.preflight(train)
    estimate = report.estimate
    check(estimate is not None and estimate.peak_memory_kind == "cuda_max_allocated", f"{label}: preflight measured CUDA memory")

    first = tuner.evaluate(evals, ["loss", "exact_match"])
    check(first.tokens > 0, f"{label}: evaluate before fit (loss {first.loss:.4f})")
    answer = tuner.generate("Reverse: cat dog bird\nAnswer:", max_new_tokens=8)
    check(isinstance(answer, str), f"{label}: generate before fit ({answer!r})")

    torch.cuda.synchronize()
    with PeakMemory(str(device)) as peak:
        result = tuner.fit(train, eval=evals)
    after = where(tuner.model)
    print(f"   after fit: {after}")
    check(set(after) == {str(device)}, f"{label}: the model is on {device} after fit")
    check(not tuner.model.training, f"{label}: the model is in eval mode after fit")
    check(result.eval_history == [] or result.eval_loss is not None, f"{label}: fit evaluated (eval loss {result.eval_loss})")
    print(
        f"   peak memory: fit {result.peak_memory_bytes / 2**20:,.1f} MiB ({result.peak_memory_kind}), "
        f"whole fit block {peak.peak_bytes / 2**20:,.1f} MiB, preflight estimate "
        f"{(estimate.peak_memory_bytes if estimate else 0) / 2**20:,.1f} MiB"
    )
    if estimate:
        ratio = result.peak_memory_bytes / max(estimate.peak_memory_bytes, 1)
        print(f"   measured / estimated = {ratio:.2f}")
        check(0.25 <= ratio <= 4.0, f"{label}: preflight's estimate is within 4x of the measured peak")

    loaded = Tuner.load(out / label.replace("/", "-"))
    on = where(loaded.model)
    print(f"   after Tuner.load: {on}")
    check(set(on) == {str(device)}, f"{label}: a loaded adapter is on {device}")
    check(not loaded.model.training, f"{label}: a loaded adapter is in eval mode")
    again = loaded.evaluate(evals)
    check(abs(again.loss - result.eval_loss) < 5e-2 if result.eval_loss is not None else True,
          f"{label}: the loaded model's eval loss {again.loss:.4f} matches fit's {result.eval_loss}")
    return {"label": label, "eval_loss": result.eval_loss, "peak": result.peak_memory_bytes,
            "estimate": estimate.peak_memory_bytes if estimate else None}


def run_ranks(model: str, out: Path) -> None:
    """Under torchrun: each rank reports its device and where its model lives, after a QLoRA fit."""
    import torch

    from tunekit import Tuner
    from tunekit.training.distributed import process_device

    rank = int(os.environ.get("RANK", "0"))
    device = process_device()
    train, evals = rows()
    quantizer = "bnb-4bit" if torch.cuda.is_available() else "none"
    tuner = Tuner(
        model=model, strategy={"name": "lora", "rank": 8}, quantizer=quantizer, output_dir=str(out / "ranks"),
        training={"max_steps": 4, "batch_size": 4, "progress_bar": False, "logging_steps": 2},
    )
    before = where(tuner.model)
    result = tuner.fit(train, eval=evals)
    after = where(tuner.model)
    line = {"rank": rank, "device": str(device), "before_fit": before, "after_fit": after, "world_size": result.world_size,
            "eval_loss": result.eval_loss}
    print("RANK " + json.dumps(line), flush=True)
    check(set(before) == set(after) == {str(device)}, f"rank {rank}: the model is on its own device {device}")
    check(result.world_size == int(os.environ.get("WORLD_SIZE", "1")), f"rank {rank}: world size {result.world_size}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["build", "single", "ranks"], help="build: write the check's model to --out and print its path")
    parser.add_argument("--model", default=os.environ.get("GPU_CHECK_MODEL"))
    parser.add_argument("--out", default=None, help="work directory (the same for every rank)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out or tmp)
        if args.mode == "build":
            print(tiny_model(out))
            return 0
        model = args.model or str(tiny_model(out))
        if args.mode == "single":
            require_cuda()
            import torch

            print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name()}", flush=True)
            results = [run_single(model, out, "none"), run_single(model, out, "bnb-4bit")]
            print("\nsummary: " + json.dumps(results))
        else:
            run_ranks(model, out)
    if FAILURES:
        print(f"\ngpu_check: {len(FAILURES)} FAILED: " + "; ".join(FAILURES), flush=True)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
