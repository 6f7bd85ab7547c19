"""One fit in its own process, for fault injection: killed (SIGKILL) at a moment or at a named point.

usage: fault_run.py MODEL OUTPUT_DIR MODE RESULT_JSON [--fault POINT]

MODE: ``fresh`` (a new run), ``overwrite`` (replace the run there), ``resume``.
POINT: ``checkpoint`` (before a staged checkpoint is renamed into place), ``save`` (the final
model written, before it is published), ``swap`` (the new run swapped in, the old not yet
deleted), ``pre-swap`` (everything written, before the swap). Prints ``STARTED <time>`` once
imports are done, so the test can kill it at a random moment of the run itself.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import time

from tunekit import Tuner
from tunekit.testing import sft_rows

CONFIG = {
    "strategy": {"name": "lora", "rank": 4},
    "training": {"max_steps": 8, "save_steps": 2, "logging_steps": 1, "batch_size": 4, "learning_rate": 1e-2,
                 "progress_bar": False, "keep_checkpoints": 2},
}


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def install(point: str, output_dir: str) -> None:
    from pathlib import Path

    from tunekit import run_directory
    from tunekit.training import checkpoints, trainer

    if point == "checkpoint":
        trainer.publish = lambda staged, final: die()
    elif point == "swap":
        original = run_directory.swap_in

        def swap_then_die(new, path):
            displaced = original(new, path)
            if Path(path) == Path(output_dir):  # the run itself (the model save inside it swaps too)
                die()
            return displaced

        run_directory.swap_in = swap_then_die
    elif point == "pre-swap":
        original_swap = run_directory.swap_in
        run_directory.swap_in = lambda new, path: die() if Path(path) == Path(output_dir) else original_swap(new, path)
    elif point == "save":
        original_publish = run_directory.Claim.publish

        def publish(self):
            if self.kind == "save":
                die()
            return original_publish(self)

        run_directory.Claim.publish = publish
    del checkpoints


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("output_dir")
    parser.add_argument("mode", choices=["fresh", "overwrite", "resume"])
    parser.add_argument("result")
    parser.add_argument("--fault")
    parser.add_argument("--max-steps", type=int, default=8)
    args = parser.parse_args()
    if args.fault:
        install(args.fault, args.output_dir)
    config = json.loads(json.dumps(CONFIG))
    config["training"]["max_steps"] = args.max_steps
    tuner = Tuner(model=args.model, output_dir=args.output_dir, **config)
    print(f"STARTED {time.time()}", flush=True)
    tuner.fit(sft_rows(24), overwrite=args.mode == "overwrite", resume=args.mode == "resume")
    weights = {n: p.detach().flatten().tolist() for n, p in tuner.model.named_parameters() if p.requires_grad}
    with open(args.result, "w") as fh:
        json.dump(weights, fh)
    print(f"DONE {time.time()}", flush=True)


if __name__ == "__main__":
    main()
