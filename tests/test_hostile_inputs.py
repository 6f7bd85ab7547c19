"""Hostile inputs: every one gets a TunekitError that names the problem, and nothing on disk changes.

Each case of the table prepares its inputs (files under ``tmp_path``, a model fixture), then the
user folders it involves are hashed (:func:`tests.conftest.snapshot`), the hostile action runs,
and the test checks that it raised the expected :class:`~tunekit.TunekitError` subclass (never a
raw Python exception), that the message names the problem, and that every file is as it was.

Hypothesis then feeds random configs (mappings and config files), random rows and random file
bytes to the same doors.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.conftest import quick, snapshot

from tunekit import ConfigError, DataError, ModelLoadError, TuneConfig, TunekitError, Tuner, UnknownPartError
from tunekit.config import DataOptions, read_config_file
from tunekit.data.pipeline import prepare_rows
from tunekit.testing import chat_rows, sft_rows, text_rows

# -- the context a case runs in --------------------------------------------------------------------


class Ctx:
    """A case's user folder (``tmp``) and lazily built model fixtures; models used are watched too."""

    def __init__(self, tmp: Path, request: pytest.FixtureRequest):
        self.tmp = tmp
        self._request = request
        self.watched: list[Path] = [tmp]

    def _model(self, name: str) -> Path:
        path = Path(self._request.getfixturevalue(name))
        if path not in self.watched:
            self.watched.append(path)
        return path

    @property
    def gpt2(self) -> Path:
        return self._model("tiny_gpt2")

    @property
    def llama(self) -> Path:
        return self._model("tiny_llama")

    @property
    def short(self) -> Path:
        return self._model("short_gpt2")

    def write(self, name: str, content: str | bytes) -> Path:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
        return path


Action = Callable[[Ctx], Callable[[], Any]]
"""Prepares the inputs (before the snapshot) and returns the hostile call (after it)."""


@pytest.fixture(scope="session")
def short_gpt2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny GPT-2 with only 32 positions: the default max_length 512 does not fit it."""
    from transformers import AutoModelForCausalLM, GPT2Config

    from tunekit.testing import build_tiny_tokenizer

    path = tmp_path_factory.mktemp("models") / "gpt2-32pos"
    tokenizer = build_tiny_tokenizer("gpt2")
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=32, n_embd=32, n_layer=1, n_head=2,
                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    AutoModelForCausalLM.from_config(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


# -- action builders ---------------------------------------------------------------------------------


def cfg(**kw: Any) -> Action:
    return lambda ctx: lambda: TuneConfig(model="gpt2", **kw)


def tuner(**kw: Any) -> Action:
    return lambda ctx: lambda: Tuner(model="gpt2", **kw)


def config_file(name: str, text: str | bytes, *, via: str = "tuner") -> Action:
    def prep(ctx: Ctx) -> Callable[[], Any]:
        path = ctx.write(name, text)
        if via == "read":
            return lambda: read_config_file(path)
        if via == "compare":
            from tunekit.comparison.config_file import compare_from_file

            return lambda: compare_from_file(path)
        return lambda: Tuner.from_config(path)

    return prep


def rows(source: Any, *, eval: Any = None, **options: Any) -> Action:
    def prep(ctx: Ctx) -> Callable[[], Any]:
        src = source(ctx) if callable(source) else source
        return lambda: prepare_rows(src, eval, DataOptions(**options), seed=0)

    return prep


def data_file(name: str, content: str | bytes, **options: Any) -> Action:
    return rows(lambda ctx: str(ctx.write(name, content)), **options)


def on_model(call: Callable[[Tuner, Ctx], Any], model: str = "gpt2", **kw: Any) -> Action:
    """``call(tuner, ctx)`` on a Tuner of a tiny model, loaded before the snapshot."""

    def prep(ctx: Ctx) -> Callable[[], Any]:
        t = Tuner(model=str(getattr(ctx, model)), output_dir=str(ctx.tmp / "out"), training=quick(), **kw)
        t.model  # noqa: B018 - load it now, outside the measured call
        return lambda: call(t, ctx)

    return prep


def fit(source: Any, model: str = "gpt2", *, fit_kw: dict[str, Any] | None = None, **kw: Any) -> Action:
    """``Tuner(model=..., output_dir=tmp/out, training=quick(...)).fit(data)``; the model loads inside."""

    def prep(ctx: Ctx) -> Callable[[], Any]:
        training = quick(**kw.pop("training", {}))
        path = str(getattr(ctx, model))
        src = source(ctx) if callable(source) else source
        return lambda: Tuner(model=path, output_dir=str(ctx.tmp / "out"), training=training, **kw).fit(src, **(fit_kw or {}))

    return prep


def load(model: str = "gpt2", **kw: Any) -> Action:
    """``Tuner(model=<tiny model>, **kw).model``: the model loads inside the measured call."""
    return lambda ctx: (lambda p: lambda: Tuner(model=str(p), **kw).model)(getattr(ctx, model))


def saved(meta: str | bytes | None, yaml_text: str | None = "model: gpt2\n") -> Action:
    """``Tuner.load`` of a folder with this tunekit.json (None: none) and tunekit.yaml."""

    def prep(ctx: Ctx) -> Callable[[], Any]:
        folder = ctx.tmp / "saved"
        folder.mkdir(exist_ok=True)
        if meta is not None:
            ctx.write("saved/tunekit.json", meta)
        if yaml_text is not None:
            ctx.write("saved/tunekit.yaml", yaml_text)
        return lambda: Tuner.load(folder)

    return prep


def gguf(content: bytes, name: str = "model.gguf") -> Action:
    def prep(ctx: Ctx) -> Callable[[], Any]:
        path = ctx.write(name, content)
        return lambda: Tuner(model=str(path)).model

    return prep


def billion_laughs() -> str:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, name in zip("abcdefgh", "bcdefghi", strict=True):
        lines.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    return "\n".join(lines) + "\n"


BOMB = billion_laughs()
OWNERSHIP = pytest.mark.xfail(reason="lead: ownership", strict=False)
"""For a case in the lead's area (output dirs, overwrite, resume, save, compare's directory) that does not pass yet."""
MiB = 2**20


def case(id: str, action: Action, error: type[TunekitError], *fragments: str, marks: Any = ()) -> Any:
    return pytest.param(action, error, list(fragments), id=id, marks=marks)


# (id, action, expected error class, fragments the message must contain)
CASES = [
    # -- numbers that used to end in a traceback, or pass silently -----------------------------------
    case("seed-2**32", cfg(training={"seed": 2**32}), ConfigError, "training.seed", "4294967295"),
    case("seed-10**30", cfg(training={"seed": 10**30}), ConfigError, "training.seed", "4294967295"),
    case("seed-negative", cfg(training={"seed": -1}), ConfigError, "training.seed", ">= 0"),
    case("seed-float", cfg(training={"seed": 1.5}), ConfigError, "training.seed", "integer"),
    case("epochs-inf", cfg(training={"epochs": math.inf}), ConfigError, "training.epochs", "finite"),
    case("epochs-nan", cfg(training={"epochs": math.nan}), ConfigError, "training.epochs", "finite"),
    case("epochs-minus-inf", cfg(training={"epochs": -math.inf}), ConfigError, "training.epochs"),
    case("epochs-zero", cfg(training={"epochs": 0}), ConfigError, "training.epochs", "> 0"),
    case("epochs-string-inf", cfg(training={"epochs": "inf"}), ConfigError, "training.epochs", "finite"),
    case("lr-inf", cfg(training={"learning_rate": math.inf}), ConfigError, "training.learning_rate", "finite"),
    case("lr-nan", cfg(training={"learning_rate": math.nan}), ConfigError, "training.learning_rate"),
    case("weight-decay-inf", cfg(training={"weight_decay": math.inf}), ConfigError, "training.weight_decay", "finite"),
    case("weight-decay-nan", cfg(training={"weight_decay": math.nan}), ConfigError, "training.weight_decay"),
    case("grad-norm-inf", cfg(training={"max_grad_norm": math.inf}), ConfigError, "training.max_grad_norm", "finite"),
    case("grad-norm-nan", cfg(training={"max_grad_norm": math.nan}), ConfigError, "training.max_grad_norm"),
    case("warmup-nan", cfg(training={"warmup_ratio": math.nan}), ConfigError, "training.warmup_ratio"),
    case("lora-alpha-inf", cfg(strategy={"name": "lora", "alpha": math.inf}), ConfigError, "strategy.alpha", "finite"),
    case("lora-alpha-nan", cfg(strategy={"name": "lora", "alpha": math.nan}), ConfigError, "strategy.alpha"),
    case("lora-dropout-nan", cfg(strategy={"name": "lora", "dropout": math.nan}), ConfigError, "strategy.dropout"),
    case("eval-fraction-nan", cfg(data={"eval_fraction": math.nan}), ConfigError, "data.eval_fraction"),
    case("eval-fraction-inf", cfg(data={"eval_fraction": math.inf}), ConfigError, "data.eval_fraction"),
    case("max-steps-zero", cfg(training={"max_steps": 0}), ConfigError, "training.max_steps", ">= 1"),
    case("grad-accum-zero", cfg(training={"gradient_accumulation": 0}), ConfigError, "training.gradient_accumulation"),
    case("logging-steps-zero", cfg(training={"logging_steps": 0}), ConfigError, "training.logging_steps"),
    case("eval-steps-zero", cfg(training={"eval_steps": 0}), ConfigError, "training.eval_steps"),
    case("save-steps-negative", cfg(training={"save_steps": -5}), ConfigError, "training.save_steps"),
    case("keep-checkpoints-zero", cfg(training={"keep_checkpoints": 0}), ConfigError, "training.keep_checkpoints"),
    case("max-length-tiny", cfg(training={"max_length": 2}), ConfigError, "training.max_length", ">= 8"),
    case("batch-size-string", cfg(training={"batch_size": "eight"}), ConfigError, "training.batch_size", "integer"),
    case("lora-rank-zero", cfg(strategy={"name": "lora", "rank": 0}), ConfigError, "strategy.rank", ">= 1"),
    case("lora-rank-float", cfg(strategy={"name": "lora", "rank": 4.5}), ConfigError, "strategy.rank"),
    # -- the shape of a config --------------------------------------------------------------------------
    case("model-empty", lambda ctx: lambda: TuneConfig(model=""), ConfigError, "model"),
    case("model-int", lambda ctx: lambda: TuneConfig(model=5), ConfigError, "model", "string"),
    case("model-missing", lambda ctx: lambda: TuneConfig(), ConfigError, "model", "required"),
    case("output-dir-int", cfg(output_dir=5), ConfigError, "output_dir"),
    case("part-options-not-mapping", cfg(strategy={"name": "lora", "options": 5}), ConfigError, "strategy", "options"),
    case("part-options-list", cfg(strategy={"name": "lora", "options": [1, 2]}), ConfigError, "strategy", "options"),
    case("part-name-int", cfg(strategy={"name": 5}), ConfigError, "strategy.name"),
    case("part-name-empty", cfg(strategy={"name": ""}), UnknownPartError, "strategy"),
    case("part-is-list", cfg(strategy=["lora"]), ConfigError, "strategy", "part name"),
    case("part-is-int", cfg(quantizer=4), ConfigError, "quantizer"),
    case("unknown-strategy", cfg(strategy="loar"), UnknownPartError, "strategy", "'lora'"),
    case("unknown-training-key", cfg(training={"lr": 1e-4}), ConfigError, "training.lr", "learning_rate"),
    case("training-not-mapping", cfg(training=[1, 2]), ConfigError, "training"),
    case("data-not-mapping", cfg(data="train.jsonl"), ConfigError, "data"),
    case("columns-not-mapping", cfg(data={"columns": ["a", "b"]}), ConfigError, "data.columns"),
    case("columns-value-int", cfg(data={"columns": {"q": 1}}), ConfigError, "data.columns.q"),
    case("metrics-int", cfg(metrics=5), ConfigError, "metrics"),
    case("metrics-empty", cfg(metrics=[]), ConfigError, "metrics", "at least one"),
    case("metrics-twice", cfg(metrics=["loss", "loss"]), ConfigError, "metrics.1", "twice"),
    case("metrics-unknown", cfg(metrics=["bleu"]), UnknownPartError, "metrics.0", "exact_match"),
    case("metric-option-typo", cfg(metrics=[{"name": "exact_match", "casefold": True}]), ConfigError, "metrics.0.casefold"),
    case("overwrite-as-config-field", cfg(overwrite=True), ConfigError, "overwrite", "unknown option"),
    case("mapping-int-key", lambda ctx: lambda: TuneConfig.model_validate({"model": "gpt2", 1: "x"}), ConfigError, "1", "strings"),
    case("tuner-mapping-bool-key", lambda ctx: lambda: Tuner({"model": "gpt2", True: "x"}), ConfigError, "True", "quote it"),
    case("tuner-not-mapping", lambda ctx: lambda: Tuner(["gpt2"]), ConfigError, "TuneConfig or a mapping"),
    case("tuner-kw-typo", tuner(strategy="lora", trainig={}), ConfigError, "trainig", "unknown option"),
    case("tuner-seed-huge", tuner(training={"seed": 2**40}), ConfigError, "training.seed"),
    # -- config files -----------------------------------------------------------------------------------
    case("yaml-billion-laughs", config_file("bomb.yaml", BOMB), ConfigError, "bomb.yaml", "alias"),
    case("yaml-billion-laughs-in-a-field", config_file("bomb.yaml", "model: gpt2\n" + BOMB + "strategy: {name: lora, target_modules: *i}\n"), ConfigError, "bomb.yaml", "alias"),
    case("yaml-billion-laughs-read", config_file("bomb.yml", BOMB, via="read"), ConfigError, "bomb.yml", "alias"),
    case("yaml-recursive-alias", config_file("loop.yaml", "model: gpt2\ntraining: &t {x: *t}\n"), ConfigError, "loop.yaml", "alias"),
    case("yaml-many-aliases", config_file("many.yaml", "a: &a x\nb: [" + ", ".join(["*a"] * 500) + "]\n"), ConfigError, "many.yaml", "alias"),
    case("yaml-too-big", config_file("big.yaml", "model: gpt2\n#" + "x" * (2 * MiB) + "\n"), ConfigError, "big.yaml", "MiB"),
    case("json-too-big", config_file("big.json", '{"model": "' + "x" * (2 * MiB) + '"}'), ConfigError, "big.json", "MiB"),
    case("toml-too-big", config_file("big.toml", 'model = "' + "x" * (2 * MiB) + '"\n'), ConfigError, "big.toml", "MiB"),
    case("yaml-key-true", config_file("k.yaml", "model: gpt2\ntrue: 1\n"), ConfigError, "k.yaml", "True", "line 2"),
    case("yaml-key-int", config_file("k.yaml", "model: gpt2\n1: x\n"), ConfigError, "k.yaml", "1", "line 2", "string"),
    case("yaml-key-null", config_file("k.yaml", "model: gpt2\n~: x\n"), ConfigError, "k.yaml", "None", "line 2"),
    case("yaml-key-float", config_file("k.yaml", "model: gpt2\n1.5: x\n"), ConfigError, "k.yaml", "1.5"),
    case("yaml-key-nested-bool", config_file("k.yaml", "model: gpt2\ntraining:\n  max_steps: 3\n  yes: 1\n"), ConfigError, "k.yaml", "line 4"),
    case("yaml-key-list", config_file("k.yaml", "model: gpt2\n? [a, b]\n: 1\n"), ConfigError, "k.yaml", "line 2"),
    case("yaml-key-columns-int", config_file("k.yaml", "model: gpt2\ndata:\n  columns: {1: prompt}\n"), ConfigError, "k.yaml", "line 3"),
    case("yaml-duplicate-key", config_file("d.yaml", "model: gpt2\nmodel: llama\n"), ConfigError, "d.yaml", "'model'", "line 2", "twice"),
    case("yaml-duplicate-nested", config_file("d.yaml", "model: gpt2\ntraining:\n  seed: 1\n  seed: 2\n"), ConfigError, "d.yaml", "'seed'", "line 4"),
    case("yaml-duplicate-in-list", config_file("d.yaml", "model: gpt2\nmetrics:\n  - {name: exact_match, strip: true, strip: false}\n"), ConfigError, "'strip'", "line 3"),
    case("json-duplicate-key", config_file("d.json", '{"model": "gpt2",\n "model": "llama"}'), ConfigError, "d.json", "'model'", "line 2", "twice"),
    case("json-duplicate-nested", config_file("d.json", '{"model": "gpt2", "training": {\n"seed": 1,\n"seed": 2}}'), ConfigError, "d.json", "'seed'", "line 3"),
    case("toml-duplicate-key", config_file("d.toml", 'model = "gpt2"\nmodel = "llama"\n'), ConfigError, "d.toml", "line 2"),
    case("toml-duplicate-table", config_file("d.toml", 'model = "gpt2"\n[training]\nseed = 1\n[training]\nseed = 2\n'), ConfigError, "d.toml"),
    case("yaml-overwrite", config_file("o.yaml", "model: gpt2\noverwrite: true\n"), ConfigError, "overwrite", "--overwrite", "command line"),
    case("json-overwrite", config_file("o.json", '{"model": "gpt2", "overwrite": false}'), ConfigError, "overwrite", "--overwrite"),
    case("toml-overwrite", config_file("o.toml", 'model = "gpt2"\noverwrite = true\n'), ConfigError, "overwrite", "--overwrite"),
    case("compare-overwrite", config_file("c.yaml", "model: gpt2\ncandidates: [lora]\noverwrite: true\n", via="compare"), ConfigError, "overwrite", "--overwrite"),
    case("compare-no-candidates", config_file("c.yaml", "model: gpt2\n", via="compare"), ConfigError, "candidates", "required"),
    case("compare-duplicate-key", config_file("c.yaml", "model: gpt2\ncandidates: [lora]\ncandidates: [full]\n", via="compare"), ConfigError, "'candidates'", "line 3"),
    case("yaml-syntax", config_file("s.yaml", "model: gpt2\nstrategy: [lora\n"), ConfigError, "s.yaml", "could not be parsed"),
    case("yaml-tabs", config_file("s.yaml", "model: gpt2\ntraining:\n\tseed: 1\n"), ConfigError, "s.yaml", "could not be parsed"),
    case("json-syntax", config_file("s.json", '{"model": "gpt2",}'), ConfigError, "s.json", "could not be parsed"),
    case("toml-syntax", config_file("s.toml", "model = 'gpt2\n"), ConfigError, "s.toml", "could not be parsed"),
    case("yaml-empty", config_file("e.yaml", ""), ConfigError, "e.yaml", "empty"),
    case("yaml-only-comment", config_file("e.yaml", "# nothing\n"), ConfigError, "e.yaml", "empty"),
    case("json-empty", config_file("e.json", ""), ConfigError, "e.json"),
    case("yaml-list-top", config_file("l.yaml", "- gpt2\n"), ConfigError, "l.yaml", "mapping"),
    case("json-list-top", config_file("l.json", '["gpt2"]'), ConfigError, "l.json", "mapping"),
    case("json-scalar-top", config_file("l.json", "5"), ConfigError, "l.json", "mapping"),
    case("yaml-python-tag", config_file("p.yaml", "model: !!python/object/apply:os.system ['echo hi']\n"), ConfigError, "p.yaml", "could not be parsed"),
    case("yaml-date-model", config_file("p.yaml", "model: 2024-01-01\n"), ConfigError, "model", "string"),
    case("yaml-set-model", config_file("p.yaml", "model: !!set {a, b}\n"), ConfigError, "model", "string"),
    case("yaml-deep-nesting", config_file("n.yaml", "model: " + "[" * 5000 + "]" * 5000 + "\n"), ConfigError, "n.yaml"),
    case("json-deep-nesting", config_file("n.json", '{"model": ' + "[" * 100_000 + "]" * 100_000 + "}"), ConfigError, "n.json"),
    case("json-nan-epochs", config_file("n.json", '{"model": "gpt2", "training": {"epochs": NaN}}'), ConfigError, "training.epochs", "finite"),
    case("yaml-inf-epochs", config_file("n.yaml", "model: gpt2\ntraining: {epochs: .inf}\n"), ConfigError, "training.epochs", "finite"),
    case("toml-inf-epochs", config_file("n.toml", 'model = "gpt2"\n[training]\nepochs = inf\n'), ConfigError, "training.epochs", "finite"),
    case("yaml-huge-seed", config_file("n.yaml", "model: gpt2\ntraining: {seed: 99999999999999999999}\n"), ConfigError, "training.seed"),
    case("config-not-utf8", config_file("u.yaml", b"model: caf\xe9\n"), ConfigError, "u.yaml", "UTF-8"),
    case("config-utf16", config_file("u.json", '{"model": "gpt2"}'.encode("utf-16")), ConfigError, "u.json"),
    case("config-unsupported", config_file("c.ini", "model=gpt2\n"), ConfigError, "c.ini", ".yaml"),
    case("config-missing", lambda ctx: lambda: Tuner.from_config(ctx.tmp / "nope.yaml"), ConfigError, "nope.yaml", "not found"),
    case("config-is-directory", lambda ctx: (ctx.tmp / "dir.yaml").mkdir() or (lambda: Tuner.from_config(ctx.tmp / "dir.yaml")), ConfigError, "dir.yaml", "directory"),
    case("config-bad-value", config_file("v.yaml", "model: gpt2\ntraining:\n  max_steps: 0\n"), ConfigError, "training.max_steps"),
    # -- rows and columns -------------------------------------------------------------------------------
    case("columns-two-onto-one", rows([{"q": "a", "a": "b"}], columns={"q": "prompt", "a": "prompt"}), DataError, "data.columns", "'prompt'"),
    case("columns-onto-existing", rows([{"q": "a", "prompt": "p", "completion": "c"}], columns={"q": "prompt"}), DataError, "data.columns", "'prompt'", "already"),
    case("columns-onto-existing-chat", rows(chat_rows(2), columns={"messages": "text"}, eval=[{"messages": [], "text": "x"}]), DataError, "'text'"),
    case("columns-empty-name", rows([{"q": "a"}], columns={"q": ""}), DataError, "data.columns", "empty"),
    case("columns-missing", rows(sft_rows(2), columns={"q": "prompt"}), DataError, "data.columns", "'q'"),
    case("columns-eval-missing", rows([{"q": "a", "completion": "b"}], eval=sft_rows(2), columns={"q": "prompt"}), DataError, "eval data", "'q'"),
    case("eval-fraction-no-train-row", rows(text_rows(3), eval_fraction=0.9), DataError, "data.eval_fraction", "training row"),
    case("eval-fraction-one-row", rows(text_rows(1), eval_fraction=0.5), DataError, "data.eval_fraction", "2 training rows"),
    case("adapter-files-given-rows", rows(sft_rows(2), adapter="files"), DataError, "data.adapter 'files'", "list"),
    case("adapter-pandas-given-path", rows("x.csv", adapter="pandas"), DataError, "DataFrame"),
    case("adapter-records-given-path", rows("x.jsonl", adapter="records"), DataError, "row 0 is a str"),
    case("adapter-hf-given-rows", rows(sft_rows(2), adapter="hf-dataset"), DataError, "'hf-dataset'", "datasets.Dataset"),
    case("rows-empty", rows([]), DataError, "empty"),
    case("rows-empty-dicts", rows([{}, {}]), DataError, "empty"),
    case("rows-prompt-none", rows([{"prompt": None, "completion": "c"}]), DataError, "row 0", "'prompt'", "string"),
    case("rows-text-int", rows([{"text": 5}]), DataError, "row 0", "'text'", "string"),
    case("rows-mixed-types", rows([{"text": "a"}, {"text": 5}]), DataError, "same type"),
    case("rows-mixed-formats", rows([{"text": "a"}, {"prompt": "p", "completion": "c"}]), DataError, "row 1", "string"),
    case("rows-not-dicts", rows([["prompt", "completion"]]), DataError, "row 0", "dict"),
    case("rows-set", rows({1, 2}), DataError, "set"),
    case("rows-bytes", rows(b"prompt,completion"), DataError, "bytes"),
    case("rows-generator", rows(r for r in sft_rows(2)), DataError, "generator"),
    case("rows-dict-unequal", rows({"text": ["a", "b"], "x": ["c"]}), DataError, "equal lengths"),
    case("rows-dict-of-strings", rows({"text": "abc"}), DataError, "dict"),
    case("chat-empty-messages", rows([{"messages": []}]), DataError, "row 0", "non-empty list"),
    case("chat-role-missing", rows([{"messages": [{"content": "x"}]}]), DataError, "message 0", "'role'"),
    case("chat-role-unknown", rows([{"messages": [{"role": "narrator", "content": "x"}]}]), DataError, "'narrator'"),
    case("chat-content-none", rows([{"messages": [{"role": "user", "content": None}]}]), DataError, "message 0", "string"),
    case("instruction-output-int", rows([{"instruction": "i", "output": 3}]), DataError, "row 0", "'output'"),
    case("eval-format-differs", rows(sft_rows(2), eval=text_rows(2)), DataError, "'text'", "'prompt_completion'"),
    case("eval-empty", rows(sft_rows(2), eval=[]), DataError, "empty"),
    # -- data files ---------------------------------------------------------------------------------------
    case("file-missing", rows("nowhere.jsonl"), DataError, "nowhere.jsonl", "does not exist"),
    case("file-is-directory", rows(lambda ctx: (ctx.tmp / "d.jsonl").mkdir() or str(ctx.tmp / "d.jsonl")), DataError, "d.jsonl"),
    case("file-no-suffix", rows(lambda ctx: str(ctx.tmp)), DataError, "not a data file"),
    case("file-empty", data_file("e.jsonl", b""), DataError, "e.jsonl", "empty"),
    case("file-whitespace", data_file("w.jsonl", b"\n\n  \n"), DataError, "w.jsonl"),
    case("jsonl-truncated", data_file("t.jsonl", b'{"text": "a"}\n{"text": '), DataError, "t.jsonl", "could not read"),
    case("jsonl-null-line", data_file("n.jsonl", b'{"text": "a"}\nnull\n'), DataError, "row 1", "string"),
    case("jsonl-scalar-lines", data_file("n.jsonl", b"1\n2\n"), DataError, "n.jsonl"),
    case("jsonl-bad-utf8", data_file("u.jsonl", b'{"text": "caf\xe9"}\n'), DataError, "u.jsonl", "UTF-8", "line 1"),
    case("jsonl-wrong-columns", data_file("c.jsonl", b'{"question": "q", "answer": "a"}\n'), DataError, "'question'", "data.columns"),
    case("jsonl-data-duplicate-key", data_file("d.jsonl", b'{"text": "a", "text": "b"}\n'), DataError, "d.jsonl", "twice"),
    case("json-scalar", data_file("s.json", b"5"), DataError, "s.json"),
    case("json-object-of-scalars", data_file("s.json", b'{"a": 1}'), DataError, "row format"),
    case("csv-header-only", data_file("h.csv", b"prompt,completion\n"), DataError, "h.csv"),
    case("csv-ragged", data_file("r.csv", b"prompt,completion\na,b,c,d\n"), DataError, "more fields than its header", "quote"),
    case("csv-bad-utf8", data_file("u.csv", b"prompt,completion\ncaf\xe9,x\n"), DataError, "u.csv", "line 2"),
    case("csv-columns-collide", data_file("r.csv", b"q,a,prompt\nx,y,z\n", columns={"q": "prompt"}), DataError, "'prompt'"),
    case("parquet-garbage", data_file("g.parquet", b"PAR1 not really"), DataError, "g.parquet"),
    case("file-unsupported", data_file("d.xlsx", b"x"), DataError, "d.xlsx", ".jsonl"),
    # -- models and saved folders -----------------------------------------------------------------------
    case("gguf-garbage", gguf(b"this is not a gguf file at all" * 10), ModelLoadError, "model.gguf"),
    case("gguf-magic-then-garbage", gguf(b"GGUF\x03\x00\x00\x00" + b"\xff" * 64), ModelLoadError, "model.gguf"),
    case("gguf-empty", gguf(b""), ModelLoadError, "model.gguf"),
    case("gguf-missing", lambda ctx: lambda: Tuner(model=str(ctx.tmp / "x.gguf")).model, ModelLoadError, "x.gguf", "does not exist"),
    case("model-dir-no-config", lambda ctx: (ctx.tmp / "d").mkdir() or (lambda: Tuner(model=str(ctx.tmp / "d")).model), ModelLoadError, "config.json"),
    case("model-config-garbage", lambda ctx: ctx.write("m/config.json", "{not json") and (lambda: Tuner(model=str(ctx.tmp / "m")).model), ModelLoadError, "m"),
    case("model-is-a-text-file", lambda ctx: ctx.write("m.bin", "x") and (lambda: Tuner(model=str(ctx.tmp / "m.bin")).model), ModelLoadError, "m.bin", "not a .gguf"),
    case("load-tunekit-json-garbage", saved("{not json"), ModelLoadError, "tunekit.json", "saved"),
    case("load-tunekit-json-list", saved("[1, 2]"), ModelLoadError, "tunekit.json"),
    case("load-tunekit-json-no-format", saved('{"strategy": "lora"}'), ModelLoadError, "tunekit.json", "format"),
    case("load-tunekit-json-odd-format", saved('{"format": "zip"}'), ModelLoadError, "tunekit.json", "'zip'"),
    case("load-tunekit-json-binary", saved(b"\x00\xff\xfe garbage"), ModelLoadError, "tunekit.json"),
    case("load-tunekit-yaml-missing", saved('{"format": "adapter"}', yaml_text=None), ModelLoadError, "tunekit.yaml"),
    case("load-adapter-files-missing", saved('{"format": "adapter"}'), ModelLoadError, "adapter_config.json"),
    case("load-full-model-files-missing", saved('{"format": "full"}'), ModelLoadError, "config.json", "full model"),
    case("load-tunekit-yaml-garbage", lambda ctx: ctx.write("saved/adapter_config.json", "{}") and saved('{"format": "adapter"}', yaml_text="model: [gpt2\n")(ctx), ConfigError, "tunekit.yaml", "could not be parsed"),
    case("load-a-file", lambda ctx: ctx.write("f.txt", "x") and (lambda: Tuner.load(ctx.tmp / "f.txt")), ModelLoadError, "f.txt"),
    case("load-not-a-save", lambda ctx: (lambda p: lambda: Tuner.load(p))(ctx.gpt2), ModelLoadError, "not a directory saved by tunekit"),
    case("lora-rank-above-width", load(strategy={"name": "lora", "rank": 1000}), ConfigError, "strategy.rank", "1000", "'transformer.h.0.attn.c_attn'", "64"),
    case("lora-rank-above-width-llama", load("llama", strategy={"name": "lora", "rank": 65}), ConfigError, "strategy.rank", "most 64"),
    case("lora-rank-above-k-proj-only", load("llama", strategy={"name": "lora", "rank": 33, "target_modules": ["k_proj", "v_proj"]}), ConfigError, "strategy.rank", "32"),
    case("lora-rank-above-mlp-only", load(strategy={"name": "lora", "rank": 65, "target_modules": "mlp"}), ConfigError, "strategy.rank", "mlp", "64"),
    case("lora-rank-above-width-preflight", lambda ctx: (lambda p: lambda: Tuner(model=str(p), strategy={"name": "lora", "rank": 999}).preflight(sft_rows(2)))(ctx.gpt2), ConfigError, "strategy.rank"),
    case("lora-rank-huge-fit", fit(sft_rows(4), strategy={"name": "lora", "rank": 10**9}), ConfigError, "strategy.rank"),
    case("evaluate-max-new-tokens-zero", on_model(lambda t, ctx: t.evaluate(sft_rows(2), ["exact_match"], max_new_tokens=0)), ConfigError, "max_new_tokens", ">= 1"),
    case("evaluate-max-new-tokens-negative", on_model(lambda t, ctx: t.evaluate(sft_rows(2), ["exact_match"], max_new_tokens=-3)), ConfigError, "max_new_tokens"),
    case("evaluate-batch-size-negative", on_model(lambda t, ctx: t.evaluate(sft_rows(2), batch_size=-1)), ConfigError, "batch_size", ">= 1"),
    case("evaluate-batch-size-zero", on_model(lambda t, ctx: t.evaluate(sft_rows(2), batch_size=0)), ConfigError, "batch_size"),
    case("evaluate-batch-size-float", on_model(lambda t, ctx: t.evaluate(sft_rows(2), batch_size=2.5)), ConfigError, "batch_size"),
    case("evaluate-no-data", on_model(lambda t, ctx: t.evaluate(None)), DataError, "no"),
    case("evaluate-metric-unknown", on_model(lambda t, ctx: t.evaluate(sft_rows(2), ["bleu"])), UnknownPartError, "metrics.0"),
    case("evaluate-generation-on-text", on_model(lambda t, ctx: t.evaluate(text_rows(2), ["exact_match"])), DataError, "'text'", "loss"),
    case("generate-empty-gpt2", on_model(lambda t, ctx: t.generate("")), DataError, "empty prompt"),
    case("generate-empty-llama", on_model(lambda t, ctx: t.generate(""), "llama"), DataError, "empty prompt"),
    case("generate-int", on_model(lambda t, ctx: t.generate(5)), DataError, "int"),
    case("generate-empty-chat", on_model(lambda t, ctx: t.generate([]), "llama"), DataError, "non-empty list"),
    case("generate-bad-role", on_model(lambda t, ctx: t.generate([{"role": "god", "content": "x"}]), "llama"), DataError, "'god'"),
    case("generate-past-positions", on_model(lambda t, ctx: t.generate("red " * 40), "short"), DataError, "32 positions", "shorten the prompt"),
    case("generate-new-tokens-past-positions", on_model(lambda t, ctx: t.generate("red blue", max_new_tokens=40), "short"), DataError, "max_new_tokens=40", "at most"),
    case("evaluate-generation-past-positions", on_model(lambda t, ctx: t.evaluate([{"prompt": "red " * 26, "completion": " blue"}], ["exact_match"]), "short"), DataError, "32 positions"),
    case("generate-option-typo", on_model(lambda t, ctx: t.generate("red", max_new_token=3)), ConfigError, "max_new_token=", "did you mean 'max_new_tokens'"),
    case("generate-option-unknown", on_model(lambda t, ctx: t.generate("red", frobnicate=True)), ConfigError, "frobnicate"),
    case("compare-seed-huge", lambda ctx: (lambda p: lambda: __import__("tunekit").compare(model=str(p), candidates=["lora"], train=sft_rows(4), budget={"max_steps": 1}, seeds=[2**40], output_dir=str(ctx.tmp / "report"), progress=False))(ctx.gpt2), ConfigError, "seeds", "4294967295"),
    case("generate-max-new-tokens-zero", on_model(lambda t, ctx: t.generate("red", max_new_tokens=0)), ConfigError, "max_new_tokens"),
    # -- fit: every refusal comes before anything is written -------------------------------------------
    case("fit-eval-fraction-no-train-row", fit(sft_rows(3), data={"eval_fraction": 0.9}), DataError, "data.eval_fraction"),
    case("fit-columns-collide", fit([{"q": "x", "prompt": "p", "completion": "c"}], data={"columns": {"q": "prompt"}}), DataError, "'prompt'"),
    case("fit-metric-unknown", fit(sft_rows(4), fit_kw={"metrics": ["bleu"]}), UnknownPartError, "metrics.0"),
    case("fit-no-data", fit(None), ConfigError, "data.train"),
    case("fit-file-missing", fit("missing.jsonl"), DataError, "missing.jsonl"),
    case("fit-sft-on-text", fit(text_rows(4), objective="sft"), ConfigError, "objective", "causal-lm"),
    case("fit-rows-over-max-length", fit([{"prompt": "red " * 300, "completion": " blue"}], training={"max_length": 16}), DataError, "max_length"),
    case("fit-output-dir-is-file", lambda ctx: ctx.write("out", "user data") and (lambda p: lambda: Tuner(model=str(p), output_dir=str(ctx.tmp / "out"), training=quick()).fit(sft_rows(4)))(ctx.gpt2), TunekitError, "out"),
    case("fit-overwrite-user-folder", lambda ctx: ctx.write("out/notes.txt", "mine") and fit(sft_rows(4), fit_kw={"overwrite": True})(ctx), TunekitError, "out"),
    case("fit-resume-user-folder", lambda ctx: ctx.write("out/notes.txt", "mine") and fit(sft_rows(4), fit_kw={"resume": True})(ctx), TunekitError, "out"),
    case("compare-overwrite-user-folder", lambda ctx: ctx.write("report/notes.txt", "mine") and (lambda p: lambda: __import__("tunekit").compare(model=str(p), candidates=["lora"], train=sft_rows(4), budget={"max_steps": 1}, output_dir=str(ctx.tmp / "report"), overwrite=True, progress=False))(ctx.gpt2), TunekitError, "report"),
    case("save-onto-user-file", lambda ctx: ctx.write("keep.txt", "mine") and on_model(lambda t, ctx: t.save(ctx.tmp / "keep.txt", overwrite=True))(ctx), TunekitError, "keep.txt"),
    case("save-onto-user-folder", lambda ctx: ctx.write("mine/notes.txt", "mine") and on_model(lambda t, ctx: t.save(ctx.tmp / "mine", overwrite=True))(ctx), TunekitError, "mine"),
]


def _ids() -> list[str]:
    return [p.id for p in CASES]


@pytest.mark.parametrize(("action", "error", "fragments"), CASES)
def test_hostile_input_gets_a_clear_error_and_changes_nothing(action, error, fragments, tmp_path, request, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cache = tmp_path.parent / f"{tmp_path.name}-tunekit-cache"  # tunekit's own cache, not the user's folder
    monkeypatch.setenv("TUNEKIT_CACHE", str(cache))
    ctx = Ctx(tmp_path, request)
    call = action(ctx)
    before = {str(p): snapshot(p) for p in ctx.watched}
    with pytest.raises(Exception) as info:
        call()
    err = info.value
    assert isinstance(err, TunekitError), f"raw {type(err).__name__}: {err}"
    assert isinstance(err, error), f"{type(err).__name__} is not a {error.__name__}: {err}"
    message = str(err)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in: {message}"
    assert "Traceback" not in message
    assert len(message) < 4000, f"the message is {len(message)} characters long"
    assert len(ctx.watched) == len(before), "the case must load its model fixtures before the hostile call"
    after = {str(p): snapshot(p) for p in ctx.watched}
    assert after == before, "files changed on disk"


def test_the_table_has_at_least_120_cases():
    assert len(CASES) >= 120
    assert len(set(_ids())) == len(CASES)


# -- inputs that are fine, pinned ----------------------------------------------------------------------


def test_yaml_with_a_few_aliases_and_merge_keys_still_loads(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text(
        "base: &base {max_steps: 3, seed: 1}\nmodel: gpt2\ntraining:\n  <<: *base\n  seed: 2\n"
        "metrics: &m [loss]\n"
    )
    data = read_config_file(path)
    assert data["training"] == {"max_steps": 3, "seed": 2}
    assert data["metrics"] == ["loss"]


def test_json_and_toml_without_duplicates_load(tmp_path):
    (tmp_path / "a.json").write_text('{"model": "gpt2", "training": {"seed": 1}, "data": {"columns": {"q": "prompt"}}}')
    (tmp_path / "a.toml").write_text('model = "gpt2"\n[training]\nseed = 1\n')
    assert read_config_file(tmp_path / "a.json")["training"] == {"seed": 1}
    assert read_config_file(tmp_path / "a.toml")["training"] == {"seed": 1}


def test_largest_seed_is_accepted():
    assert TuneConfig(model="gpt2", training={"seed": 2**32 - 1}).training.seed == 2**32 - 1


def test_eval_fraction_small_keeps_one_eval_row():
    prepared = prepare_rows(text_rows(3), None, DataOptions(eval_fraction=0.01), seed=0)
    assert (len(prepared.train), len(prepared.eval)) == (2, 1)


def test_rename_to_itself_is_a_no_op():
    prepared = prepare_rows(sft_rows(2), None, DataOptions(columns={"prompt": "prompt"}), seed=0)
    assert prepared.format == "prompt_completion"


def test_max_length_above_the_models_positions_is_clamped_with_a_warning(short_gpt2, tmp_path, caplog):
    before = snapshot(short_gpt2)
    t = Tuner(model=str(short_gpt2), strategy="full", output_dir=str(tmp_path / "out"), training=quick(max_steps=2))
    assert t.config.training.max_length == 512  # the default, longer than the model's 32 positions
    with caplog.at_level("WARNING"):
        result = t.fit(text_rows(8) + [{"text": "red " * 200}])
    assert t.config.training.max_length == 32
    assert "32" in caplog.text and "max_length" in caplog.text
    assert math.isfinite(result.train_loss)
    assert snapshot(short_gpt2) == before


def test_max_length_clamp_leaves_the_users_config_alone(short_gpt2):
    config = TuneConfig(model=str(short_gpt2), training={"max_length": 100})
    t = Tuner(config)
    t.tokenizer  # noqa: B018
    assert t.config.training.max_length == 32
    assert config.training.max_length == 100


def test_evaluate_on_a_model_shorter_than_max_length(short_gpt2):
    t = Tuner(model=str(short_gpt2), strategy="full", training=quick())
    result = t.evaluate([{"prompt": "red " * 100, "completion": " blue"}, *sft_rows(2)])
    assert math.isfinite(result.loss)


def test_preflight_summary_cuts_a_huge_sample():
    from tunekit.preflight import PreflightReport

    report = PreflightReport(objective="sft", row_format="text", label_samples=["x" * (50 * MiB), "short"])
    summary = report.summary()
    assert len(summary) < 10_000
    assert "short" in summary
    cut = 50 * MiB - 2000
    assert f"{cut:,}" in summary and "characters" in summary


# -- property-based ------------------------------------------------------------------------------------

FIELDS = ["model", "strategy", "quantizer", "objective", "data", "training", "metrics", "output_dir",
          "trust_remote_code", "revision", "name", "options", "rank", "alpha", "dropout", "seed", "epochs",
          "max_length", "columns", "eval_fraction", "train", "overwrite", "batch_size", "learning_rate"]
scalars = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
           | st.sampled_from(["lora", "full", "head", "none", "sft", "causal-lm", "gpt2", "exact_match", "loss"]))
keys = st.sampled_from(FIELDS) | st.text(max_size=6) | st.integers(-3, 3) | st.booleans() | st.none()
json_values = st.recursive(scalars, lambda children: st.lists(children, max_size=3) | st.dictionaries(keys, children, max_size=4), max_leaves=12)
configs = st.dictionaries(keys, json_values, max_size=6)


def _quiet(call: Callable[[], Any]) -> None:
    try:
        call()
    except TunekitError as exc:
        assert str(exc)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(configs)
def test_random_mappings_only_raise_tunekit_errors(raw):
    _quiet(lambda: TuneConfig.model_validate(raw))
    _quiet(lambda: Tuner(raw))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(configs, st.sampled_from([".yaml", ".json"]))
def test_random_config_files_only_raise_tunekit_errors(tmp_path, raw, suffix):
    path = tmp_path / f"random{suffix}"
    if suffix == ".yaml":
        path.write_text(yaml.safe_dump(raw))
    else:
        path.write_text(json.dumps(raw))
    before = snapshot(tmp_path)
    _quiet(lambda: read_config_file(path))
    _quiet(lambda: Tuner.from_config(path))
    assert snapshot(tmp_path) == before


row_values = st.one_of(
    st.text(max_size=10), st.integers(), st.none(), st.floats(), st.lists(st.text(max_size=4), max_size=2),
    st.lists(st.dictionaries(st.sampled_from(["role", "content", "x"]), st.text(max_size=8) | st.integers() | st.sampled_from(["user", "assistant"]), max_size=3), max_size=3),
)
row_keys = st.sampled_from(["text", "prompt", "completion", "messages", "instruction", "output", "input", "q", "a"])
random_rows = st.lists(st.dictionaries(row_keys, row_values, max_size=3), max_size=5)
data_options = st.fixed_dictionaries({}, optional={
    "columns": st.dictionaries(row_keys, row_keys | st.just(""), max_size=2),
    "eval_fraction": st.floats(min_value=0.01, max_value=0.99),
    "adapter": st.sampled_from(["records", "files", "pandas", "hf-dataset"]),
})


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_rows, data_options)
def test_random_rows_only_raise_tunekit_errors(source, options):
    _quiet(lambda: prepare_rows(source, None, DataOptions(**options), seed=0))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=96), st.sampled_from([".jsonl", ".json", ".csv", ".txt", ".yaml", ".toml", ".json-config"]))
def test_random_file_bytes_only_raise_tunekit_errors(tmp_path, content, suffix):
    is_config = suffix in {".yaml", ".toml", ".json-config"}
    path = tmp_path / ("random" + (".json" if suffix == ".json-config" else suffix))
    path.write_bytes(content)
    before = snapshot(tmp_path)
    if is_config:
        _quiet(lambda: read_config_file(path))
    else:
        _quiet(lambda: prepare_rows(str(path), None, DataOptions(), seed=0))
    assert snapshot(tmp_path) == before


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=64) | st.binary(max_size=64).map(lambda b: b"GGUF\x03\x00\x00\x00" + b))
def test_random_gguf_bytes_are_a_model_load_error(tmp_path, monkeypatch, content):
    monkeypatch.setenv("TUNEKIT_CACHE", str(tmp_path.parent / f"{tmp_path.name}-cache"))
    path = tmp_path / "random.gguf"
    path.write_bytes(content)
    before = snapshot(tmp_path)
    with pytest.raises(ModelLoadError, match="random.gguf"):
        Tuner(model=str(path)).model  # noqa: B018
    assert snapshot(tmp_path) == before


def test_snapshot_sees_contents_names_and_nested_files(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "b.txt").write_text("1")
    first = snapshot(tmp_path)
    assert list(first) == ["a" + os.sep, os.path.join("a", "b.txt")]
    (tmp_path / "a" / "b.txt").write_text("2")
    assert snapshot(tmp_path) != first
    assert snapshot(tmp_path / "missing") == {}


def test_lora_rank_above_some_layers_only_warns(tiny_llama, caplog):
    """k_proj/v_proj of the tiny Llama are 32 wide, q_proj 64: rank 48 is refused nowhere, but said."""
    with caplog.at_level("WARNING"):
        Tuner(model=str(tiny_llama), strategy={"name": "lora", "rank": 48}).model  # noqa: B018
    assert "rank 48" in caplog.text and "k_proj" in caplog.text


def test_generate_takes_real_generation_options(tiny_gpt2):
    t = Tuner(model=str(tiny_gpt2))
    text = t.generate("red", max_new_tokens=3, do_sample=True, temperature=0.7, top_k=5, repetition_penalty=1.1,
                      use_cache=True, stop_strings=["x"], tokenizer=t.tokenizer)
    assert isinstance(text, str)
