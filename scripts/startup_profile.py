#!/usr/bin/env python
"""How long a ``tunekit fit`` process takes to reach its first training step, import by import.

    python scripts/startup_profile.py                      # lora and full, 3 runs each, interleaved
    python scripts/startup_profile.py --strategies lora --repeats 5 --top 25 --json out.json

Each run is a fresh ``python -X importtime`` process that calls ``tunekit.cli.main(["fit", ...])``
on a tiny GPT-2 built beforehand (outside the timed processes) and 1 training step. A plugin's
trainer callback notes the wall-clock time at the first ``on_step_begin`` and which of the heavy
optional libraries (bitsandbytes, trl, pandas, matplotlib, ...) are imported by then. The figure
reported is the time from starting the process to that step; the import profile is parsed from
``-X importtime``'s stderr: the top-level imports (their cumulative times add up to the process's
import time) and the single modules whose own import is slowest.

Our machines are shared and noisy: compare figures from the same run of this script (it
interleaves the strategies run by run), not against an absolute number from another day.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

WATCHED = (
    "torch", "transformers", "peft", "bitsandbytes", "trl", "datasets", "pandas", "pyarrow",
    "matplotlib", "tensorboard", "torch.utils.tensorboard", "accelerate", "torch._inductor",
    "torch._dynamo", "scipy", "sklearn", "yaml", "gguf",
)

MARK = "-- tunekit startup profile: first training step --"

# The child: registers a plugin whose trainer callback stamps the first step, then runs the CLI.
DRIVER = r'''
import gc, json, os, sys, time
from tunekit import hookimpl

GC = {"s": 0.0, "full": 0, "started": 0.0}
def _gc(phase, info):  # the collector's passes take time -X importtime charges to whatever was importing
    if phase == "start":
        GC["started"] = time.perf_counter()
    else:
        GC["s"] += time.perf_counter() - GC["started"]
        GC["full"] += info["generation"] == 2
gc.callbacks.append(_gc)
from tunekit.plugins import register_plugin

REPORT = os.environ["STARTUP_PROFILE_REPORT"]
WATCHED = json.loads(os.environ["STARTUP_PROFILE_WATCHED"])
MARK = os.environ["STARTUP_PROFILE_MARK"]

class StartupProbe:
    @hookimpl
    def register_trainer_callbacks(self, register):
        from transformers import TrainerCallback

        class FirstStep(TrainerCallback):
            done = False

            def on_step_begin(self, args, state, control, **kwargs):
                if not FirstStep.done:
                    FirstStep.done = True
                    report = {"first_step_at": time.time(), "modules": {m: m in sys.modules for m in WATCHED},
                              "n_modules": len(sys.modules), "gc_s": GC["s"], "gc_full_passes": GC["full"],
                              "packages": sorted({m.split(".")[0] for m in sys.modules if not m.startswith("_")})}
                    with open(REPORT, "w") as f:
                        json.dump(report, f)
                    sys.stderr.write(MARK + "\n")  # splits -X importtime's lines: before / after this step
                    sys.stderr.flush()

        register(FirstStep())

register_plugin(StartupProbe(), name="startup-probe")
from tunekit.cli import main
sys.exit(main(sys.argv[1:]))
'''

BUILD = r'''
import json, sys
from pathlib import Path
from tunekit.testing import build_tiny_model, sft_rows
root = Path(sys.argv[1])
build_tiny_model(root / "model", arch=sys.argv[2])
(root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in sft_rows(16)))
'''


# What one library adds on top of what a fit imports anyway (torch, transformers and the parts of it
# that peft itself pulls in, accelerate, datasets): a fresh process imports those, then times it.
MARGINAL = r'''
import sys, time
import torch, transformers, transformers.masking_utils, transformers.modeling_utils, accelerate, datasets
started = time.perf_counter()
__import__(sys.argv[1])
print(time.perf_counter() - started)
'''
MARGINAL_OF = ("bitsandbytes", "peft")


def parse_importtime(stderr: str) -> list[tuple[int, int, int, str]]:
    """``(self_us, cumulative_us, depth, name)`` per line of ``-X importtime`` output, in its order."""
    rows = []
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        own, cumulative, name = line.removeprefix("import time:").split("|", 2)
        own, cumulative = own.strip(), cumulative.strip()
        if not own.isdigit():  # the header line
            continue
        depth = (len(name) - len(name.lstrip())) // 2
        rows.append((int(own), int(cumulative), depth, name.strip()))
    return rows


def run_once(root: Path, strategy: str, index: int, env: dict[str, str], side: str = "") -> dict[str, Any]:
    config = root / f"{strategy}.yaml"
    report = root / f"{strategy}{side}-{index}.json"
    out_dir = root / f"run-{strategy}{side}-{index}"
    env = {**env, "STARTUP_PROFILE_REPORT": str(report), "STARTUP_PROFILE_WATCHED": json.dumps(WATCHED),
           "STARTUP_PROFILE_MARK": MARK}
    command = [sys.executable, "-X", "importtime", "-c", DRIVER, "fit", str(config), "--data", str(root / "train.jsonl"),
               "--output-dir", str(out_dir), "--no-baseline"]
    started = time.time()
    proc = subprocess.run(command, env=env, capture_output=True, text=True)
    ended = time.time()
    if proc.returncode != 0 or not report.exists():
        sys.stderr.write(proc.stdout[-3000:] + "\n".join(
            line for line in proc.stderr.splitlines() if not line.startswith("import time:"))[-5000:])
        raise SystemExit(f"the {strategy} fit failed (exit {proc.returncode})")
    probe = json.loads(report.read_text())
    before, _, after = proc.stderr.partition(MARK)
    rows = parse_importtime(before)  # only what was imported before the first step
    return {
        "strategy": strategy + side,
        "to_first_step_s": probe["first_step_at"] - started,
        "process_s": ended - started,
        "import_s": sum(c for _, c, d, _ in rows if d == 0) / 1e6,
        "modules_at_first_step": probe["modules"],
        "n_modules": probe["n_modules"],
        "gc_s": probe["gc_s"],
        "gc_full_passes": probe["gc_full_passes"],
        "packages": probe["packages"],
        "top_level": sorted(((n, c / 1e6) for _, c, d, n in rows if d == 0), key=lambda x: -x[1]),
        "slowest_own": sorted(((n, s / 1e6) for s, _, _, n in rows), key=lambda x: -x[1]),
        "cumulative": {n: c / 1e6 for _, c, _, n in rows},
        "via": {n: import_chain(rows, n) for n in WATCHED if any(r[3] == n for r in rows)},
        "imported_after_first_step": [n for _, _, d, n in parse_importtime(after) if d == 0],
    }


def import_chain(rows: list[tuple[int, int, int, str]], name: str) -> list[str]:
    """The modules whose import first imported ``name``, outermost first."""
    index = next(i for i, r in enumerate(rows) if r[3] == name)
    chain, depth = [name], rows[index][2]
    for _, _, d, parent in rows[index + 1:]:  # a parent's line comes after its children's
        if d < depth:
            chain.append(parent)
            depth = d
    return chain[::-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--strategies", default="lora,full", help="comma-separated (default: lora,full)")
    parser.add_argument("--arch", default="gpt2", choices=["gpt2", "llama"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--top", type=int, default=15, help="how many imports to list")
    parser.add_argument("--json", type=Path, help="also write every run's figures here")
    parser.add_argument("--baseline-src", type=Path, help="also run each fit with this tunekit src/ directory "
                        "(e.g. an export of an earlier commit), interleaved, and report after/before ratios")
    args = parser.parse_args()
    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "TRANSFORMERS_VERBOSITY": "error", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as benchmarks/bench.py does
    with tempfile.TemporaryDirectory(prefix="tunekit-startup-") as tmp:
        root = Path(tmp)
        subprocess.run([sys.executable, "-c", BUILD, str(root), args.arch], env=env, check=True)
        for strategy in strategies:
            (root / f"{strategy}.yaml").write_text(json.dumps({
                "model": str(root / "model"), "strategy": strategy,
                "training": {"max_steps": 1, "batch_size": 4, "progress_bar": False, "logging_steps": 1},
            }))
        # a bare interpreter, for scale: what any Python process pays before it imports anything
        started = time.time()
        subprocess.run([sys.executable, "-c", "pass"], env=env, check=True)
        bare = time.time() - started
        sides = {"": env}
        if args.baseline_src:
            sides["@baseline"] = {**env, "PYTHONPATH": os.pathsep.join(
                [str(args.baseline_src.resolve()), *[p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]])}
        for side, side_env in sides.items():  # warm-up, discarded: writes the .pyc caches
            run_once(root, strategies[0], -1, side_env, side)
        runs = [run_once(root, s, i, side_env, side)
                for i in range(args.repeats) for s in strategies for side, side_env in sides.items()]
        marginal: dict[str, list[float]] = {name: [] for name in MARGINAL_OF}
        for _ in range(args.repeats):
            for name in MARGINAL_OF:
                out = subprocess.run([sys.executable, "-c", MARGINAL, name], env=env, capture_output=True,
                                     text=True, check=True).stdout
                marginal[name].append(float(out.split()[-1]))

    print(f"python: {sys.version.split()[0]}; bare interpreter start {bare:.2f} s; {args.repeats} run(s) per strategy, "
          f"interleaved; tiny {args.arch}, 1 step, fresh process each; load average {os.getloadavg()[0]:.1f}\n")
    for strategy in [s + side for s in strategies for side in sides]:
        mine = [r for r in runs if r["strategy"] == strategy]
        first = [r["to_first_step_s"] for r in mine]
        imports = [r["import_s"] for r in mine]
        print(f"== {strategy}: time to first step median {statistics.median(first):.2f} s "
              f"(range {min(first):.2f}-{max(first):.2f}, n={len(first)}); "
              f"imports {statistics.median(imports):.2f} s of it "
              f"({statistics.median(i / f for i, f in zip(imports, first, strict=True)):.0%}); "
              f"{mine[0]['n_modules']} modules loaded")
        print(f"   garbage collection before it: {statistics.median(r['gc_s'] for r in mine):.2f} s "
              f"({mine[0]['gc_full_passes']} full passes; -X importtime charges a pass to the module being imported)")
        loaded = [m for m, present in mine[0]["modules_at_first_step"].items() if present]
        absent = [m for m, present in mine[0]["modules_at_first_step"].items() if not present]
        print(f"   imported by the first step: {', '.join(loaded)}")
        print(f"   not imported:               {', '.join(absent)}")
        best = min(mine, key=lambda r: r["to_first_step_s"])  # the least disturbed run's profile
        print(f"   top-level imports by cumulative time (run with {best['to_first_step_s']:.2f} s):")
        for name, seconds in best["top_level"][: args.top]:
            print(f"     {seconds:7.3f} s  {name}")
        print("   slowest modules by their own import time:")
        for name, seconds in best["slowest_own"][: args.top]:
            print(f"     {seconds:7.3f} s  {name}")
        print("   where the heavy optional libraries were first imported (cumulative time there includes "
              "whatever they imported first):")
        for name in ("peft", "bitsandbytes", "trl", "datasets", "pandas", "matplotlib", "tensorboard", "accelerate"):
            if name in best["via"]:
                print(f"     {best['cumulative'][name]:7.3f} s  {name}  via {' > '.join(best['via'][name])}")
        print()
    if args.baseline_src:
        print(f"this code / {args.baseline_src} (paired run by run, median and range):")
        for strategy in strategies:
            for key, what in (("to_first_step_s", "time to first step"), ("gc_s", "garbage collection")):
                ratios = [a[key] / b[key] for a, b in zip(
                    [r for r in runs if r["strategy"] == strategy],
                    [r for r in runs if r["strategy"] == strategy + "@baseline"], strict=True) if b[key] > 0]
                if ratios:
                    print(f"     {strategy}: {what} {statistics.median(ratios):.2f}x "
                          f"({min(ratios):.2f}-{max(ratios):.2f}, n={len(ratios)})")
        print()
    print("what importing one library adds once torch, transformers (with the modules peft pulls in), "
          "accelerate and datasets are imported (fresh process each):")
    for name, seconds in marginal.items():
        print(f"     {statistics.median(seconds):7.3f} s  {name}  (range {min(seconds):.3f}-{max(seconds):.3f}, "
              f"n={len(seconds)}){'  (includes bitsandbytes, which peft imports)' if name == 'peft' else ''}")
    if args.json:
        args.json.write_text(json.dumps({"bare_interpreter_s": bare, "runs": runs, "marginal_s": marginal}, indent=1))


if __name__ == "__main__":
    main()
