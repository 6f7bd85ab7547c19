"""``tunekit evaluate``, ``generate``, ``chat``, ``merge`` and ``export`` on one tiny trained LoRA run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from tests.conftest import quick

from tunekit import Tuner
from tunekit.cli import CHAT_HELP, main, run_chat
from tunekit.testing import sft_rows

PROMPT = "Reverse: cat dog bird\nAnswer:"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli-run")
    data = root / "eval.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in sft_rows(6, seed=1)))
    run = root / "run"
    Tuner(
        model=str(tiny_llama), strategy={"name": "lora", "rank": 4}, output_dir=str(run),
        training=quick(max_steps=3, learning_rate=5e-3),
    ).fit(sft_rows(16))
    return {"run": run, "data": data, "root": root}


@pytest.fixture(scope="module")
def loaded(trained: dict[str, Path]) -> Tuner:
    return Tuner.load(trained["run"])


@pytest.mark.parametrize("command", ["fit", "evaluate", "generate", "chat", "merge", "export"])
def test_help_has_an_example(command: str, capsys: pytest.CaptureFixture[str]):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "example:" in out and f"tunekit {command} " in out


def test_evaluate_json_is_the_facades_result(trained, loaded, capsys):
    assert main(["evaluate", str(trained["run"]), str(trained["data"]), "--metrics", "exact_match,f1", "--json", "--max-new-tokens", "6"]) == 0
    printed = json.loads(capsys.readouterr().out)
    expected = loaded.evaluate(trained["data"], ["exact_match", "f1"], max_new_tokens=6)
    assert printed == expected.model_dump(mode="json")
    assert set(printed["metrics"]) == {"exact_match", "f1"} and len(printed["generations"]) == 6


def test_evaluate_table_and_base(trained, loaded, tiny_llama, capsys):
    assert main(["evaluate", str(trained["run"]), str(trained["data"]), "--batch-size", "2"]) == 0
    table = capsys.readouterr().out.splitlines()
    tuned = loaded.evaluate(trained["data"])
    assert table[0].split() == ["metric", "value"]
    # batches of 2 and of 8 pad differently: the same token-weighted mean up to float rounding
    assert table[2].split()[0] == "loss" and float(table[2].split()[1]) == pytest.approx(tuned.loss, rel=1e-5)
    assert table[3].split()[0] == "perplexity" and float(table[3].split()[1]) == pytest.approx(tuned.perplexity, rel=1e-5)

    assert main(["evaluate", str(trained["run"]), str(trained["data"]), "--base", "--json"]) == 0
    base = json.loads(capsys.readouterr().out)
    untrained = Tuner.from_config(trained["run"] / "tunekit.yaml").evaluate(trained["data"])
    assert base["loss"] == untrained.loss != tuned.loss

    config = trained["root"] / "base.yaml"  # a config file is its untrained base
    config.write_text(yaml.safe_dump({"model": str(tiny_llama), "strategy": "lora"}))
    assert main(["evaluate", str(config), str(trained["data"]), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["loss"] == pytest.approx(untrained.loss, abs=1e-6)


def test_errors_are_reported_like_fit(trained, tmp_path, capsys):
    assert main(["evaluate", str(tmp_path / "missing"), str(trained["data"])]) == 2
    assert capsys.readouterr().err.startswith("tunekit: error: ")
    assert main(["evaluate", str(tmp_path), str(trained["data"]), "--base"]) == 2  # a folder with no run in it
    assert "is not a tunekit run directory" in capsys.readouterr().err
    assert main(["evaluate", str(trained["run"]), str(trained["data"]), "--metrics", "exact_macth"]) == 2
    assert capsys.readouterr().err.startswith("tunekit: error: ")
    assert main(["generate", str(trained["run"]), PROMPT, "--max-new-tokens", "0"]) == 2
    assert "max_new_tokens" in capsys.readouterr().err


def test_generate_streams_what_the_facade_returns(trained, loaded, capsys):
    streamed: list[str] = []
    from tunekit.cli import _streamer

    expected = loaded.generate(PROMPT, max_new_tokens=8)
    assert loaded.generate(PROMPT, max_new_tokens=8, streamer=_streamer(loaded.tokenizer, streamed.append)) == expected
    assert len(streamed) >= 1 and "".join(streamed) == expected  # handed over piece by piece, as decoded

    assert main(["generate", str(trained["run"]), PROMPT, "--max-new-tokens", "8"]) == 0
    assert capsys.readouterr().out == expected + "\n"

    assert main(["generate", str(trained["run"]), "hello there", "--chat", "--max-new-tokens", "6"]) == 0
    chat_answer = loaded.generate([{"role": "user", "content": "hello there"}], max_new_tokens=6)
    assert capsys.readouterr().out == chat_answer + "\n"


def test_run_chat_keeps_the_conversation(loaded):
    out: list[str] = []
    lines = ["hello\n", "/system Be brief.\n", "again\n", "/reset\n", "\n", "/nope\n", "fresh\n", "/exit\n", "never read\n"]
    assert run_chat(loaded, iter(lines), out.append, max_new_tokens=5) == 0
    text = "".join(out)

    def answer(messages):
        return loaded.generate(messages, max_new_tokens=5)

    first = answer([{"role": "user", "content": "hello"}])
    second = answer([
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello"},
        {"role": "assistant", "content": first}, {"role": "user", "content": "again"},
    ])
    third = answer([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "fresh"}])  # /reset keeps the system prompt
    assert text == (
        f"> {first}\n> (system prompt set: Be brief.)\n> {second}\n> (conversation cleared)\n> "
        f"> unknown command '/nope'; {CHAT_HELP}> {third}\n> "
    )

    out.clear()
    assert run_chat(loaded, iter(["hi\n"]), out.append, max_new_tokens=3) == 0  # the end of the input leaves too
    assert "".join(out) == "> " + loaded.generate([{"role": "user", "content": "hi"}], max_new_tokens=3) + "\n> \n"


def test_run_chat_survives_a_turn_it_cannot_answer(loaded):
    out: list[str] = []
    assert run_chat(loaded, iter(["hello\n", "/exit\n"]), out.append, max_new_tokens=10**6) == 0
    assert "tunekit: error: " in "".join(out)


def test_merge_writes_a_plain_transformers_model(trained, loaded, tmp_path, capsys):
    import torch
    from transformers import AutoModelForCausalLM

    out = tmp_path / "merged"
    assert main(["merge", str(trained["run"]), str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    plain = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    ids = loaded.tokenizer(PROMPT, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        want = loaded.model(input_ids=ids).logits
        got = plain(input_ids=ids).logits
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)

    assert main(["merge", str(trained["run"]), str(out)]) == 2  # refused without --overwrite
    assert "tunekit: error: " in capsys.readouterr().err
    assert main(["merge", str(trained["run"]), str(out), "--overwrite"]) == 0


@pytest.mark.parametrize("gguf_type", ["f16", "q8_0"])
def test_export_writes_a_gguf_that_transformers_runs(trained, loaded, tmp_path, capsys, gguf_type):
    pytest.importorskip("gguf")
    import torch
    from gguf import GGMLQuantizationType, GGUFReader
    from transformers import AutoModelForCausalLM

    out = tmp_path / f"tiny.{gguf_type}.gguf"
    assert main(["export", str(trained["run"]), str(out), "--format", "gguf", "--type", gguf_type]) == 0
    printed = capsys.readouterr().out
    assert str(out) in printed and f"llama-cli -m {out}" in printed
    tensors = {t.name: t.tensor_type for t in GGUFReader(out).tensors}
    assert tensors["blk.0.attn_q.weight"] == GGMLQuantizationType[gguf_type.upper()]  # --type reached the file
    plain = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=out.name, dtype=torch.float32).eval()
    ids = loaded.tokenizer(PROMPT, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        want = loaded.model.eval()(input_ids=ids).logits
        got = plain(input_ids=ids).logits
    # the adapter was merged in: the tuned logits, within the type's rounding (see tests/test_export_gguf.py)
    assert (got - want).abs().max().item() <= {"f16": 2e-3, "q8_0": 2e-2}[gguf_type]


def test_export_refusals_are_one_line_errors(trained, tmp_path, capsys):
    out = tmp_path / "model.gguf"
    out.write_text("someone else's file")
    assert main(["export", str(trained["run"]), str(out)]) == 2  # refused without --overwrite, before loading
    err = capsys.readouterr().err
    assert err.startswith("tunekit: error: ") and "--overwrite" in err and err.count("\n") == 1
    assert out.read_text() == "someone else's file"
    assert main(["export", str(trained["run"]), str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "missing"), str(tmp_path / "x.gguf")]) == 2
    assert "is not a run directory" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:  # argparse's own usage error for an unknown type
        main(["export", str(trained["run"]), str(tmp_path / "x.gguf"), "--type", "q5_k"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'q5_k'" in capsys.readouterr().err
    assert not (tmp_path / "x.gguf").exists()
    pytest.importorskip("gguf")
    assert main(["export", str(trained["run"]), str(out), "--overwrite"]) == 0
    assert out.read_bytes()[:4] == b"GGUF"


def test_merge_refuses_a_quantized_base_before_loading_it(trained, tmp_path, capsys):
    pytest.importorskip("bitsandbytes")
    save = tmp_path / "quantized-save"
    shutil.copytree(trained["run"] / "model", save)
    config = yaml.safe_load((save / "tunekit.yaml").read_text())
    config["quantizer"] = {"name": "bnb-4bit"}
    (save / "tunekit.yaml").write_text(yaml.safe_dump(config))
    assert main(["merge", str(save), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tunekit: error: ") and "quantizer='none'" in err
    assert not (tmp_path / "out").exists()


def test_chat_in_a_real_terminal(trained, loaded, tmp_path):
    tmux = shutil.which("tmux")
    if tmux is None:
        pytest.skip("tmux is not installed (apt-get install -y tmux)")
    socket = f"tunekit-test-{os.getpid()}"
    rc_file = tmp_path / "rc"
    tunekit = Path(sys.executable).with_name("tunekit")
    command = f"{tunekit} chat {trained['run']} --max-new-tokens 6; echo $? > {rc_file}"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}

    def tm(*args: str) -> str:
        return subprocess.run([tmux, "-L", socket, *args], check=True, capture_output=True, text=True, env=env).stdout

    def pane() -> str:
        return tm("capture-pane", "-p", "-J", "-t", "chat")

    def wait_for(predicate, what: str, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = pane()
            if predicate(text):
                return text
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what}; the pane shows:\n{pane()}")

    def prompts(text: str) -> int:
        return sum(1 for line in text.splitlines() if line.startswith(">"))

    def waiting(text: str) -> bool:  # the last non-empty line is the bare prompt
        lines = [line for line in text.splitlines() if line.strip()]
        return bool(lines) and lines[-1].rstrip() == ">"

    tm("new-session", "-d", "-s", "chat", "-x", "200", "-y", "50", command)
    try:
        wait_for(lambda t: waiting(t) and "/reset" in t, "the first prompt", timeout=90)
        tm("send-keys", "-t", "chat", "hello", "Enter")
        text = wait_for(lambda t: prompts(t) >= 2 and waiting(t), "the answer")
        expected = loaded.generate([{"role": "user", "content": "hello"}], max_new_tokens=6)
        after = text.split("> hello", 1)[1]
        assert expected.strip() and expected.strip().splitlines()[0] in after
        tm("send-keys", "-t", "chat", "/reset", "Enter")
        wait_for(lambda t: "(conversation cleared)" in t and waiting(t), "/reset")
        tm("send-keys", "-t", "chat", "/exit", "Enter")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not rc_file.exists():
            time.sleep(0.2)
        assert rc_file.read_text().strip() == "0"
    finally:
        subprocess.run([tmux, "-L", socket, "kill-server"], capture_output=True)


def test_fit_preflight_refusal_names_the_cli_switch(tiny_gpt2, tmp_path, capsys):
    rows = [*sft_rows(6), {"prompt": "Reverse: red cat dog\nAnswer:", "completion": ""}]
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({
        "model": str(tiny_gpt2), "output_dir": str(tmp_path / "run"), "training": quick(max_steps=1),
        "data": {"train": str(data)},
    }))
    assert main(["fit", str(config)]) == 2
    err = capsys.readouterr().err
    assert "rows-with-empty-answers" in err and "--ignore-preflight-errors" in err and "ignore_preflight_errors=True" not in err
    assert main(["fit", str(config), "--ignore-preflight-errors"]) == 0
    assert json.loads((tmp_path / "run" / "result.json").read_text())["steps"] == 1


def test_fit_prints_the_untrained_and_tuned_model_side_by_side(tiny_llama, tmp_path, capsys, monkeypatch):
    """`tunekit fit` with a generating metric scores the untrained model first (on the same eval rows)."""
    for name, rows in (("train.jsonl", sft_rows(16)), ("eval.jsonl", sft_rows(4, seed=1))):
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = {
        "model": str(tiny_llama), "metrics": ["exact_match"], "data": {"train": "train.jsonl", "eval": "eval.jsonl"},
        "training": quick(max_steps=3, learning_rate=5e-3),
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    monkeypatch.chdir(tmp_path)
    assert main(["fit", "run.yaml", "--output-dir", "with"]) == 0
    out = capsys.readouterr().out
    saved = json.loads((tmp_path / "with" / "result.json").read_text())
    untrained = Tuner(model=str(tiny_llama), training=quick()).evaluate(tmp_path / "eval.jsonl", ["exact_match"])
    assert saved["base_eval_metrics"]["loss"] == pytest.approx(untrained.loss, rel=1e-4)
    assert saved["base_eval_metrics"]["exact_match"] == untrained["exact_match"]
    assert [g["prediction"] for g in saved["base_eval_generations"]] == [g.prediction for g in untrained.generations]
    assert "untrained" in out and "tuned" in out and "sample answers (reference | untrained | tuned):" in out
    row = next(line for line in out.splitlines() if line.startswith("loss "))
    assert row.split()[1:] == [f"{untrained.loss:.4f}", f"{saved['eval_loss']:.4f}"]
    assert main(["fit", "run.yaml", "--output-dir", "without", "--no-baseline"]) == 0
    assert "untrained" not in capsys.readouterr().out
    assert json.loads((tmp_path / "without" / "result.json").read_text())["base_eval_metrics"] == {}
