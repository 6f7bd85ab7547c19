"""Executes docs/plugins-tutorial.md step by step: files are written, bash blocks run."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

TUTORIAL = Path(__file__).resolve().parents[1] / "docs" / "plugins-tutorial.md"
BLOCK = re.compile(r"(?P<marker><!-- (?P<what>file: (?P<path>\S+)|not run) -->\n)?```(?P<lang>\w+)\n(?P<body>.*?)```", re.S)


def steps() -> list[tuple[str, str, str | None]]:
    """(kind, body, path) for each block: ('file', text, path), ('bash', script, None) or ('skip', ...)."""
    out = []
    for m in BLOCK.finditer(TUTORIAL.read_text()):
        if m["path"]:
            out.append(("file", m["body"], m["path"]))
        elif m["what"] == "not run":
            out.append(("skip", m["body"], None))
        elif m["lang"] == "bash":
            out.append(("bash", m["body"], None))
    return out


def test_tutorial_has_files_and_commands():
    kinds = [k for k, _, _ in steps()]
    assert kinds.count("file") >= 5 and kinds.count("bash") >= 3 and "skip" in kinds


@pytest.mark.slow
def test_tutorial_steps_run(tmp_path):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "PYTHONDONTWRITEBYTECODE": "1"}
    cwd = tmp_path
    try:
        for kind, body, path in steps():
            if kind == "file":
                target = tmp_path / path
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(body)
            elif kind == "bash":
                # `cd` in one block carries to the next, as in a terminal
                script = f"set -euo pipefail\n{body}\npwd > {tmp_path / '.cwd'}\n"
                proc = subprocess.run(["bash", "-c", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
                assert proc.returncode == 0, f"step failed:\n{body}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
                cwd = Path((tmp_path / ".cwd").read_text().strip())
        assert (tmp_path / "tunekit-layernorm" / "dist" / "tunekit_layernorm-0.1.0-py3-none-any.whl").is_file()
    finally:
        subprocess.run([sys.executable, "-m", "pip", "uninstall", "-y", "-q", "tunekit-layernorm"], capture_output=True)
