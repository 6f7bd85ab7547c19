"""Run a small fit in its own process; optionally SIGKILL it at a step, or resume it.

usage: fit_until.py MODEL OUTPUT_DIR RESULT_JSON [--kill-at N] [--resume] [--interrupt-at N]
"""

from __future__ import annotations

import argparse
import json
import os
import signal

from tunekit import TunekitError, Tuner, hookimpl
from tunekit.plugins import register_plugin
from tunekit.testing import sft_rows

parser = argparse.ArgumentParser()
parser.add_argument("model")
parser.add_argument("output_dir")
parser.add_argument("result")
parser.add_argument("--kill-at", type=int)
parser.add_argument("--interrupt-at", type=int)
parser.add_argument("--resume", action="store_true")
args = parser.parse_args()


class Killer:
    @hookimpl
    def on_log(self, tuner, step, logs):
        if args.kill_at and step == args.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        if args.interrupt_at and step == args.interrupt_at and "loss" in logs:
            os.kill(os.getpid(), signal.SIGINT)


register_plugin(Killer(), name="killer")
tuner = Tuner(
    model=args.model,
    strategy={"name": "lora", "rank": 4},
    output_dir=args.output_dir,
    training={"max_steps": 8, "save_steps": 2, "logging_steps": 1, "batch_size": 4, "learning_rate": 1e-2, "progress_bar": False},
)
try:
    result = tuner.fit(sft_rows(24), resume=args.resume)
except TunekitError as exc:
    print(f"STOPPED: {exc}")
    raise SystemExit(3) from None
weights = {n: p.detach().flatten().tolist() for n, p in tuner.model.named_parameters() if p.requires_grad}
with open(args.result, "w") as fh:
    json.dump({"losses": {p.step: p.loss for p in result.loss_history}, "weights": weights}, fh)
