"""Does llama.cpp run tunekit's GGUF export the way tunekit runs the tuned model?

LoRA-tunes SmolLM2-135M-Instruct (the ``smollm2-135m`` alias) on the demo's task with the demo's
settings, exports it with ``Tuner.export`` as f16 and q8_0, and answers the demo's held-out rows
greedily: with tunekit (the tuned model in transformers, as ``Tuner.evaluate`` answers), and for
each exported file with llama.cpp (``llama-cpp-python``) and with the file loaded back through
transformers' own GGUF loader (whose logits are also compared with the tuned model's). llama.cpp
is given the very prompt token ids tunekit generated from (so the comparison is of the models, not
of two chat-template renderers), and its own tokenizer is checked separately against tunekit's on
every prompt.

    python scripts/llamacpp_agreement.py --out /tmp/agreement      # prints the table, writes agreement.json

Needs ``llama_cpp`` importable: ``pip install llama-cpp-python`` compiles llama.cpp (about 7 minutes
on two cores); ``tests/test_export_llamacpp.py`` builds the wheel once into a cache and runs this.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

TYPES = ("f16", "q8_0")


def tune(out: Path, steps: int) -> Any:
    """The demo's LoRA run (same model, task, rank, learning rate and batch), ``steps`` long."""
    from tunekit import Tuner
    from tunekit.demo import BATCH_SIZE, LEARNING_RATE, MODEL, TASK
    from tunekit.tasks import load_task

    tuner = Tuner(
        model=MODEL, strategy={"name": "lora", "rank": 8, "target_modules": "all-linear"}, output_dir=str(out / "run"),
        training={"max_steps": steps, "batch_size": BATCH_SIZE, "learning_rate": LEARNING_RATE, "warmup_ratio": 0.1,
                  "max_length": 128, "progress_bar": False},
    )
    tuner.fit(load_task(TASK, "train"), overwrite=True)
    return tuner


def _llama_cpp() -> Any:
    """``llama_cpp``, with llama.cpp's CPU weight repacking turned off for every model it loads.

    llama-cpp-python 0.3.36 repacks q8_0 weights for Intel's AMX when the CPU has it, and that
    segfaults in the first decode (seen on a Xeon with AMX: f16 files ran, q8_0 crashed; with
    repacking off, the same file answers). Repacking only picks other kernels for the same weights,
    and this script checks what the file holds, so it loads without it (``llama-cli --no-repack``
    is the command-line switch).
    """
    import llama_cpp
    import llama_cpp.llama_cpp as library

    default = library.llama_model_default_params
    if not getattr(default, "_tunekit_no_repack", False):
        def without_repacking() -> Any:
            params = default()
            params.use_extra_bufts = False
            return params

        without_repacking._tunekit_no_repack = True  # type: ignore[attr-defined]
        library.llama_model_default_params = without_repacking
    return llama_cpp


def llama_answers(path: Path, prompts: list[list[int]], max_new_tokens: int, stop: list[int],
                  threads: int) -> tuple[list[str], list[list[int]]]:
    """Greedy continuations of token-id prompts by llama.cpp, and llama.cpp's own answer ids."""
    llama_cpp = _llama_cpp()

    llm = llama_cpp.Llama(model_path=str(path), n_ctx=512, n_threads=threads, n_threads_batch=threads, verbose=False, logits_all=False)
    texts, ids = [], []
    for prompt in prompts:
        llm.reset()
        got: list[int] = []
        for token in llm.generate(prompt, temp=0.0, top_k=1, repeat_penalty=1.0, reset=True):
            if token in stop or len(got) >= max_new_tokens:
                break
            got.append(int(token))
        ids.append(got)
        texts.append(llm.detokenize(got).decode("utf-8", errors="replace"))
    llm.close()
    return texts, ids


def transformers_answers(path: Path, tokenizer: Any, chats: list[Any], prompt_ids: list[list[int]], tuned: Any,
                         max_new_tokens: int) -> tuple[list[str], float]:
    """The file loaded back through transformers' own GGUF loader: its greedy answers, and its
    largest |logit - tuned model's logit| over every position of the first five prompts."""
    import torch
    from transformers import AutoModelForCausalLM

    from tunekit.evaluation import generate_answers

    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()
    answers = [a.strip() for a in generate_answers(model, tokenizer, chats, max_new_tokens=max_new_tokens)]
    worst = 0.0
    with torch.no_grad():
        for ids in prompt_ids[:5]:
            batch = torch.tensor([ids])
            worst = max(worst, float((model(batch).logits - tuned(batch).logits).abs().max()))
    return answers, worst


def llama_tokenizes_alike(path: Path, texts: list[str], expected: list[list[int]]) -> float:
    """The share of prompts llama.cpp's tokenizer (from the file's metadata) encodes to tunekit's ids."""
    llama_cpp = _llama_cpp()

    llm = llama_cpp.Llama(model_path=str(path), n_ctx=64, vocab_only=True, verbose=False)
    same = sum(llm.tokenize(t.encode("utf-8"), add_bos=False, special=True) == e for t, e in zip(texts, expected, strict=True))
    llm.close()
    return same / len(texts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="a new or tunekit-owned directory for the run and the exports")
    parser.add_argument("--steps", type=int, default=None, help="LoRA steps (default: the demo's)")
    parser.add_argument("--rows", type=int, default=100, help="held-out rows to answer (the demo's test split has 100)")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    args = parser.parse_args(argv)
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        print("llama_cpp is not importable: pip install llama-cpp-python (it compiles llama.cpp)", file=sys.stderr)
        return 2

    import torch

    from tunekit.data.chat import render_generation_prompt
    from tunekit.demo import STEPS, TASK
    from tunekit.evaluation import generate_answers, stop_token_ids
    from tunekit.tasks import load_task
    from tunekit.training.threads import choose_threads

    threads = choose_threads()  # on busy cores, fewer threads: two that wait on each other are far slower than one
    torch.set_num_threads(threads)
    start = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    tuner = tune(args.out, args.steps or STEPS)
    rows = load_task(TASK, "test")[: args.rows]
    chats = [r["messages"][:-1] for r in rows]
    references = [r["messages"][-1]["content"] for r in rows]
    tokenizer = tuner.tokenizer
    rendered = [render_generation_prompt(tokenizer, chat) for chat in chats]
    prompt_ids = [list(tokenizer(text, add_special_tokens=special)["input_ids"]) for text, special in rendered]
    timings = {"tune_s": time.perf_counter() - start}
    tick = time.perf_counter()
    tunekit = [a.strip() for a in generate_answers(tuner.model, tokenizer, chats, max_new_tokens=args.max_new_tokens)]
    timings["tunekit_answers_s"] = time.perf_counter() - tick
    stop = stop_token_ids(tuner.model, tokenizer)

    report: dict[str, Any] = {"rows": len(rows), "threads": threads, "steps": args.steps or STEPS, "max_new_tokens": args.max_new_tokens,
                              "tunekit_exact_match": sum(a == r for a, r in zip(tunekit, references, strict=True)) / len(rows),
                              "types": {}}
    for gguf_type in TYPES:
        tick = time.perf_counter()
        path = tuner.export(args.out / f"tuned.{gguf_type}.gguf", type=gguf_type, overwrite=True)
        timings[f"export_{gguf_type}_s"] = time.perf_counter() - tick
        tick = time.perf_counter()
        texts, _ = llama_answers(path, prompt_ids, args.max_new_tokens, stop, threads)
        timings[f"llama_{gguf_type}_answers_s"] = time.perf_counter() - tick
        print(f"{gguf_type}: exported in {timings[f'export_{gguf_type}_s']:.0f} s, answered in {timings[f'llama_{gguf_type}_answers_s']:.0f} s", flush=True)
        answers = [t.strip() for t in texts]
        differing = [
            {"prompt": chats[i][-1]["content"], "tunekit": tunekit[i], "llama.cpp": answers[i]}
            for i in range(len(rows)) if answers[i] != tunekit[i]
        ]
        tick = time.perf_counter()
        reloaded, logit_gap = transformers_answers(path, tokenizer, chats, prompt_ids, tuner.model, args.max_new_tokens)
        timings[f"transformers_{gguf_type}_answers_s"] = time.perf_counter() - tick
        report["types"][gguf_type] = {
            "file_mib": round(path.stat().st_size / 2**20, 1),
            "transformers_agreement": sum(a == b for a, b in zip(reloaded, tunekit, strict=True)) / len(rows),
            "transformers_max_logit_difference": round(logit_gap, 5),
            "agreement": 1 - len(differing) / len(rows),
            "llama_exact_match": sum(a == r for a, r in zip(answers, references, strict=True)) / len(rows),
            "tokenizer_agreement": llama_tokenizes_alike(path, [t for t, _ in rendered], prompt_ids),
            "differing": differing[:10],
        }
    report["seconds"] = round(time.perf_counter() - start, 1)
    report["timings"] = {k: round(v, 1) for k, v in timings.items()}
    (args.out / "agreement.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    print(f"{len(rows)} held-out {TASK} rows, greedy, at most {args.max_new_tokens} new tokens; "
          f"tunekit's exact match {report['tunekit_exact_match']:.2f}")
    print("type   file (MiB)  llama.cpp: same answer  exact match  same prompt tokens  "
          "transformers' GGUF loader: same answer  max |logit difference|")
    for gguf_type, t in report["types"].items():
        print(f"{gguf_type:<6} {t['file_mib']:>10} {t['agreement']:>23.2f} {t['llama_exact_match']:>12.2f} "
              f"{t['tokenizer_agreement']:>19.2f} {t['transformers_agreement']:>40.2f} {t['transformers_max_logit_difference']:>23.4f}")
    print(f"({report['seconds']:.0f} s; details in {args.out / 'agreement.json'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
