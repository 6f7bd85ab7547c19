"""The documentation stays true: every Python sample in docs/ runs, and the generated reference is current.

The ```python blocks of one Markdown file run in order, in one namespace, in a fresh temporary
working directory. Blocks fenced with another language (```bash, ```yaml, ```text, ```toml)
are shown, not run. Tracebacks point at the line of the Markdown file.
"""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
DOC_FILES = sorted(DOCS.glob("*.md"))
RUNNABLE = {"python", "py"}
REGENERATE = "tunekit config --markdown > docs/configuration.md"

_FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})(?P<info>[^`\n]*)$")


@dataclass
class Block:
    language: str
    code: str
    line: int
    """1-based line of the Markdown file where the code starts (after the opening fence)."""


def code_blocks(text: str) -> list[Block]:
    """Every fenced code block of a Markdown text, with its language and first line."""
    blocks: list[Block] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        fence, indent = match["fence"], len(match["indent"])
        language = (match["info"].strip().split() or [""])[0].lower()
        body: list[str] = []
        j = i + 1
        while j < len(lines) and not re.match(rf"^ {{0,3}}{fence[0]}{{{len(fence)},}}\s*$", lines[j]):
            body.append(lines[j][indent:] if lines[j][:indent].isspace() else lines[j])
            j += 1
        blocks.append(Block(language, "\n".join(body) + "\n", i + 2))
        i = j + 1
    return blocks


# The tutorial's python blocks are files of a package it builds; tests/test_plugins_tutorial.py
# writes them out and runs the tutorial's commands instead.
EXECUTED_ELSEWHERE = {"plugins-tutorial.md"}


def _runnable(path: Path) -> list[Block]:
    if path.name in EXECUTED_ELSEWHERE:
        return []
    return [b for b in code_blocks(path.read_text(encoding="utf-8")) if b.language in RUNNABLE]


def test_docs_exist():
    names = {p.name for p in DOC_FILES}
    assert {"index.md", "concepts.md", "configuration.md"} <= names


@pytest.mark.parametrize("path", DOC_FILES, ids=lambda p: p.name)
def test_every_code_block_names_its_language(path: Path):
    """An unlabelled fence would silently never run; say ```python, ```bash, ```text..."""
    unlabelled = [b.line - 1 for b in code_blocks(path.read_text(encoding="utf-8")) if not b.language]
    assert not unlabelled, f"{path.name}: code blocks without a language at lines {unlabelled}"


@pytest.mark.parametrize("path", [p for p in DOC_FILES if _runnable(p)], ids=lambda p: p.name)
def test_python_samples_run(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    saved_env = dict(os.environ)
    namespace: dict[str, object] = {"__name__": f"docs.{path.stem}"}
    try:
        for block in _runnable(path):
            # Pad with blank lines so a traceback names the Markdown file and its line.
            source = "\n" * (block.line - 1) + block.code
            exec(compile(source, str(path), "exec"), namespace)
    finally:
        os.environ.clear()
        os.environ.update(saved_env)


def test_configuration_reference_is_current():
    from tunekit.reference import configuration_markdown

    on_disk = (DOCS / "configuration.md").read_text(encoding="utf-8")
    assert on_disk == configuration_markdown(), f"docs/configuration.md is stale; regenerate it: {REGENERATE}"


def test_cli_prints_the_configuration_reference(capsys: pytest.CaptureFixture[str]):
    from tunekit.cli import main

    assert main(["config", "--markdown"]) == 0
    assert capsys.readouterr().out == (DOCS / "configuration.md").read_text(encoding="utf-8")


def test_configuration_reference_does_not_depend_on_installed_plugins():
    from tunekit import hookimpl
    from tunekit.parts import NoOptions
    from tunekit.plugins import register_plugin
    from tunekit.reference import configuration_markdown

    class ExtraStrategy:
        name = "docs-test-extra"
        description = "A third-party strategy."
        Options = NoOptions
        default_learning_rate = 1e-3
        uses_adapters = False

    class Plugin:
        @hookimpl
        def register_strategies(self, register):
            register(ExtraStrategy)

    before = configuration_markdown()
    register_plugin(Plugin(), name="docs-test-plugin")
    assert configuration_markdown() == before
    with_plugins = configuration_markdown(include_plugins=True)
    assert "`docs-test-extra`" in with_plugins and "docs-test-plugin" in with_plugins


def _readme_commands() -> list[str]:
    commands = []
    for block in code_blocks(README.read_text(encoding="utf-8")):
        if block.language in {"bash", "sh", "shell", "console"}:
            commands += [line.strip() for line in block.code.splitlines() if line.strip()]
    return commands


def test_readme_commands_are_in_the_index():
    commands = _readme_commands()
    assert len(commands) == 2, f"the README should give exactly two commands, found {commands}"
    index_commands = {
        line.strip()
        for block in code_blocks((DOCS / "index.md").read_text(encoding="utf-8"))
        if block.language in {"bash", "sh", "shell", "console"}
        for line in block.code.splitlines()
    }
    for command in commands:
        assert command in index_commands, f"docs/index.md does not give the README's command: {command}"


def _installs_tunekit_from_an_index(line: str) -> bool:
    """Whether a shell line runs ``pip install`` with a bare ``tunekit`` requirement (PyPI's, not ours)."""
    for command in re.split(r"&&|\|\||;|\|", line):
        try:
            words = shlex.split(command, comments=True)
        except ValueError:  # a continuation backslash or an unclosed quote: words are enough here
            words = command.split("#", 1)[0].split()
        if "install" not in words or not any(w == "pip" or w.endswith("/pip") or w == "pip3" for w in words):
            continue
        for word in words[words.index("install") + 1 :]:
            if re.fullmatch(r"tunekit(\[[^\]]*\])?([<>=!~].*)?", word):
                return True
    return False


def test_install_docs_never_install_tunekit_from_pypi():
    assert _installs_tunekit_from_an_index("pip install tunekit")
    assert _installs_tunekit_from_an_index("python -m pip install -U 'tunekit[test]>=0.1'")
    assert not _installs_tunekit_from_an_index("pip install torch==2.13.0 -e . && tunekit demo")
    assert not _installs_tunekit_from_an_index("pip install --no-deps ./plugins/tunekit-bitfit")
    for path in [README, *DOC_FILES]:
        for block in code_blocks(path.read_text(encoding="utf-8")):
            if block.language not in {"bash", "sh", "shell", "console", "text"}:
                continue
            for line in block.code.replace("\\\n", " ").splitlines():  # join continued lines
                assert not _installs_tunekit_from_an_index(line), (
                    f"{path.name}:{block.line}: `{line.strip()}` would install the unrelated PyPI project"
                )


# The kinds of parts docs/concepts.md explains; a kind added later gets its own section (and entry here).
CONCEPT_KINDS = ("strategy", "quantizer", "dataset_adapter", "objective")
LIFECYCLE_HOOKS = ("on_fit_start", "on_log", "on_evaluate", "on_fit_end")


def test_concepts_cover_every_builtin_part_and_hook():
    from tunekit.plugins import BUILTIN_PLUGIN, get_registry

    text = (DOCS / "concepts.md").read_text(encoding="utf-8")
    for kind in CONCEPT_KINDS:
        for reg in get_registry(kind):
            if reg.plugin == BUILTIN_PLUGIN:
                assert f"`{reg.name}`" in text, f"docs/concepts.md does not mention the {kind} `{reg.name}`"
    hooks = ["register_strategies", "register_quantizers", "register_dataset_adapters", "register_objectives"]
    missing = [h for h in [*hooks, *LIFECYCLE_HOOKS] if not re.search(rf"`{h}[`(]", text)]
    assert not missing, f"docs/concepts.md does not document the hooks {missing}"
    for var in ("TUNEKIT_DISABLE_PLUGIN_AUTOLOAD", "TUNEKIT_PLUGINS", "TUNEKIT_BLOCK_PLUGINS"):
        assert var in text


def test_code_blocks_parser():
    text = "x\n```python\na = 1\n```\n\n```bash\nls\n```\n````text\n```python\nnot code\n```\n````\n"
    blocks = code_blocks(text)
    assert [(b.language, b.code, b.line) for b in blocks] == [
        ("python", "a = 1\n", 3),
        ("bash", "ls\n", 7),
        ("text", "```python\nnot code\n```\n", 10),
    ]
