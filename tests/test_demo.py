"""``tunekit demo``'s closing lines: the export and run commands it prints work as printed.

(The demo itself runs on the real model: ``nox -s demo``; its path is covered by tests/test_smollm2.py.)
"""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
from tests.conftest import quick

from tunekit import Tuner
from tunekit.cli import main
from tunekit.demo import TASK, export_hint
from tunekit.testing import sft_rows


def test_the_printed_export_command_exports_the_run(tmp_path: Path, tiny_llama: Path, monkeypatch, capsys):
    pytest.importorskip("gguf")
    run = tmp_path / "demo output" / "run"  # a space in the path: the printed command must quote it
    Tuner(model=str(tiny_llama), strategy={"name": "lora", "rank": 4}, output_dir=str(run),
          training=quick(max_steps=2)).fit(sft_rows(8))
    lines = export_hint(run)
    export = next(shlex.split(line.strip()) for line in lines if line.strip().startswith("tunekit export"))
    llama = next(shlex.split(line.strip()) for line in lines if line.strip().startswith("llama-cli"))
    assert export[:3] == ["tunekit", "export", str(run)] and "--type" in export
    gguf = Path(llama[llama.index("-m") + 1])
    assert export[3] == str(gguf) and gguf.name == f"{TASK}.q8_0.gguf"  # llama-cli runs the file export writes
    assert any(f"FROM ./{gguf.name}" in line for line in lines)  # the Ollama Modelfile names it too

    monkeypatch.chdir(tmp_path)  # as printed, from where the demo ran (the paths are the demo's own)
    assert main(export[1:]) == 0
    assert gguf.read_bytes()[:4] == b"GGUF"
    assert str(gguf) in capsys.readouterr().out
