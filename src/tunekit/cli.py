"""The ``tunekit`` command line: ``fit``, ``plugins``, ``config`` and ``demo``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from tunekit.errors import TunekitError


def _cmd_fit(args: argparse.Namespace) -> int:
    from tunekit.tuner import Tuner

    overrides = {"output_dir": args.output_dir} if args.output_dir else {}
    tuner = Tuner.from_config(args.config, **overrides)
    result = tuner.fit(args.data, args.eval, overwrite=args.overwrite)
    print(result.summary())
    return 0


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

    run_demo(output_dir=args.output_dir, steps=args.steps)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tunekit", description="Fine-tune causal language models.")
    sub = parser.add_subparsers(dest="command", required=True)

    fit = sub.add_parser("fit", help="train from a YAML/TOML/JSON config")
    fit.add_argument("config", help="the run configuration file")
    fit.add_argument("--data", help="training data file (default: data.train in the config)")
    fit.add_argument("--eval", help="evaluation data file (default: data.eval in the config)")
    fit.add_argument("--output-dir", help="override output_dir")
    fit.add_argument("--overwrite", action="store_true", help="replace an existing run in output_dir")
    fit.set_defaults(func=_cmd_fit)

    plugins = sub.add_parser("plugins", help="list every installed part by kind, with its plugin")
    plugins.add_argument("-v", "--verbose", action="store_true", help="also list each part's options")
    plugins.set_defaults(func=_cmd_plugins)

    config = sub.add_parser("config", help="print the configuration reference (Markdown)")
    config.add_argument("--markdown", action="store_true", help="Markdown output (the default)")
    config.set_defaults(func=_cmd_config)

    demo = sub.add_parser("demo", help="fine-tune end to end and show before/after")
    demo.add_argument("--output-dir", default="tunekit-demo-output")
    demo.add_argument("--steps", type=int, default=None, help="training steps (default: the demo's own)")
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
