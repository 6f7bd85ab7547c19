"""Strategies on architectures beyond GPT-2 and Llama, one parameter count, and load errors that keep their cause.

Every family is a tiny model built from its config (hidden 32, 2 layers, 4 heads of 8, 2 key/value
heads, intermediate 64, the tiny Llama tokenizer), saved to a directory and loaded through tunekit's
normal loading path. The expected layers and parameter counts below are listed and counted by hand
for these fixed shapes; a LoRA of rank r on a Linear(in, out) has r * (in + out) weights, and peft
adapts a fused expert weight of E experts with A: in x (r*E) and B: (r*E) x out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from tests.conftest import quick

from tunekit import Tuner
from tunekit.testing import build_tiny_model, sft_rows

R = 4  # LoRA rank in these tests
ATTN = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"}
LLAMA_MLP = {"mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"}
EXPERTS = {"mlp.experts.gate_up_proj", "mlp.experts.down_proj"}


def lora(i: int, o: int) -> int:
    return R * (i + o)


# per layer, rank 4: q 32->32, k/v 32->16, o 32->32
_ATTN_LORA = lora(32, 32) + 2 * lora(32, 16) + lora(32, 32)  # 896

# family: {group: (linear layers per block, fused expert weights per block, LoRA weights per block)}
EXPECTED: dict[str, dict[str, tuple[set[str], set[str], int]]] = {
    "qwen2": {
        "attention": (ATTN, set(), _ATTN_LORA),
        "mlp": (LLAMA_MLP, set(), 2 * lora(32, 64) + lora(64, 32)),  # 1152
    },
    "gemma": {
        "attention": (ATTN, set(), _ATTN_LORA),
        "mlp": (LLAMA_MLP, set(), 2 * lora(32, 64) + lora(64, 32)),
    },
    "phi": {  # 4 key/value heads, the attention output is "dense", the MLP fc1/fc2
        "attention": ({"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.dense"}, set(), 4 * lora(32, 32)),
        "mlp": ({"mlp.fc1", "mlp.fc2"}, set(), lora(32, 64) + lora(64, 32)),  # 768
    },
    "mixtral": {  # 4 experts: gate_up_proj (4, 128, 32), down_proj (4, 32, 64); the router is not adapted
        "attention": (ATTN, set(), _ATTN_LORA),
        "mlp": (set(), EXPERTS, (32 * R * 4 + R * 4 * 128) + (64 * R * 4 + R * 4 * 32)),  # 2560 + 1536
    },
    "qwen2-moe": {  # experts gate_up (4, 32, 32), down (4, 32, 16); a shared expert 32->32->32; its 32->1 gate is not adapted
        "attention": (ATTN, set(), _ATTN_LORA),
        "mlp": (
            {"mlp.shared_expert.gate_proj", "mlp.shared_expert.up_proj", "mlp.shared_expert.down_proj"},
            EXPERTS,
            (32 * R * 4 + R * 4 * 32) + (16 * R * 4 + R * 4 * 32) + 3 * lora(32, 32),
        ),
    },
}
FAMILIES = list(EXPECTED)


@pytest.fixture(scope="session")
def family_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("families")
    return {arch: build_tiny_model(root / arch, arch=arch, hidden=32, layers=2) for arch in FAMILIES}  # type: ignore[arg-type]


def _expected(family: str, group: str) -> tuple[set[str], set[str], int]:
    if group != "all-linear":
        return EXPECTED[family][group]
    (am, ap, an), (mm, mp, mn) = EXPECTED[family]["attention"], EXPECTED[family]["mlp"]
    return am | mm, ap | mp, an + mn


def _adapted(model: Any) -> tuple[set[str], set[str]]:
    """(linear layers, fused weights) that carry a LoRA adapter, as paths inside a block (``self_attn.q_proj``)."""
    from peft.tuners.lora.layer import LoraLayer, ParamWrapper

    layers, params = set(), set()
    for name, module in model.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        path = name.split(".layers.", 1)[1].split(".", 1)[1].replace(".base_layer", "")
        if isinstance(module, ParamWrapper):
            params.add(f"{path}.{module.parameter_name}")
        else:
            layers.add(path)
    return layers, params


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("group", ["attention", "mlp", "all-linear"])
def test_lora_groups_adapt_the_listed_layers(family_dirs: dict[str, Path], family: str, group: str) -> None:
    tuner = Tuner(model=str(family_dirs[family]), strategy={"name": "lora", "rank": R, "target_modules": group})
    model = tuner.model
    layers, params, per_block = _expected(family, group)
    assert _adapted(model) == (layers, params)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    counted = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert counted == 2 * per_block  # both blocks, nothing else
    assert tuner.model.get_nb_trainable_parameters()[0] == 2 * per_block


@pytest.mark.parametrize("family", ["mixtral", "qwen2-moe"])
def test_experts_are_never_silently_skipped(family_dirs: dict[str, Path], family: str) -> None:
    from tunekit import ConfigError

    for options in ({"dropout": 0.1}, {"use_dora": True}):
        tuner = Tuner(model=str(family_dirs[family]), strategy={"name": "lora", "target_modules": "all-linear", **options})
        with pytest.raises(ConfigError, match="fused weights.*target_modules='attention'"):
            _ = tuner.model
    # attention only is still possible, when asked for
    tuner = Tuner(model=str(family_dirs[family]), strategy={"name": "lora", "rank": R, "target_modules": "attention", "dropout": 0.1})
    assert _adapted(tuner.model) == (ATTN, set())


def test_an_expert_weight_or_container_can_be_named(family_dirs: dict[str, Path]) -> None:
    tuner = Tuner(model=str(family_dirs["mixtral"]), strategy={"name": "lora", "rank": R, "target_modules": ["gate_up_proj", "q_proj"]})
    assert _adapted(tuner.model) == ({"self_attn.q_proj"}, {"mlp.experts.gate_up_proj"})
    tuner = Tuner(model=str(family_dirs["mixtral"]), strategy={"name": "lora", "rank": R, "target_modules": ["experts"]})
    assert _adapted(tuner.model) == (set(), EXPERTS)


@pytest.mark.parametrize("family", FAMILIES)
def test_lora_fit_lowers_the_loss(family_dirs: dict[str, Path], tmp_path: Path, family: str) -> None:
    rows = sft_rows(16)
    tuner = Tuner(
        model=str(family_dirs[family]), strategy={"name": "lora", "rank": R}, output_dir=str(tmp_path / "run"),
        training=quick(max_steps=8, learning_rate=3e-2),
    )
    before = tuner.evaluate(rows).loss
    result = tuner.fit(rows)
    after = tuner.evaluate(rows).loss
    assert after < before - 0.05, (before, after)
    _, _, per_block = _expected(family, "all-linear")
    assert result.trainable_params == 2 * per_block


def test_moe_adapter_saves_and_loads(family_dirs: dict[str, Path], tmp_path: Path) -> None:
    tuner = Tuner(
        model=str(family_dirs["qwen2-moe"]), strategy={"name": "lora", "rank": R}, output_dir=str(tmp_path / "run"),
        training=quick(max_steps=3, learning_rate=3e-2),
    )
    tuner.fit(sft_rows(8))
    saved = tuner.save(tmp_path / "adapter")
    ids = torch.tensor([[1, 5, 9, 30, 2, 7]])
    with torch.no_grad():
        tuned = tuner.model.eval()(ids).logits
        again = Tuner.load(saved).model.eval()(ids).logits
    torch.testing.assert_close(tuned, again, rtol=1e-5, atol=1e-5)


# the output head: Linear(32, V), Phi's with a bias; Gemma ties it to the embeddings
@pytest.mark.parametrize("family", FAMILIES)
def test_head_only_trains_the_head_not_tied_embeddings(family_dirs: dict[str, Path], tmp_path: Path, family: str) -> None:
    rows = sft_rows(16)
    tuner = Tuner(model=str(family_dirs[family]), strategy="head", output_dir=str(tmp_path / "run"), training=quick(max_steps=8, learning_rate=2e-2))
    model = tuner.model
    vocab = model.config.vocab_size
    expected = {"lm_head.weight", "lm_head.bias"} if family == "phi" else {"lm_head.weight"}
    assert {n for n, p in model.named_parameters() if p.requires_grad} == expected
    embeddings = model.model.embed_tokens.weight.detach().clone()
    before = tuner.evaluate(rows).loss
    result = tuner.fit(rows)
    assert tuner.evaluate(rows).loss < before - 0.05
    assert result.trainable_params == 32 * vocab + (vocab if family == "phi" else 0)
    assert torch.equal(model.model.embed_tokens.weight, embeddings)
    assert model.lm_head.weight is not model.model.embed_tokens.weight


def test_gemma_is_tied_and_scales_its_embeddings(family_dirs: dict[str, Path]) -> None:
    # the premise of the head test above: the Gemma-style model ties its head and scales its embeddings
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(family_dirs["gemma"])
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert model.config.model_type == "gemma"


# one decoder block of each family, parameters counted by hand (hidden 32, intermediate 64)
_LLAMA_ATTN = 32 * 32 + 2 * (32 * 16) + 32 * 32  # 3072, no biases
BLOCK_PARAMS = {
    "qwen2": _LLAMA_ATTN + (32 + 16 + 16) + 3 * 32 * 64 + 2 * 32,  # q/k/v biases, 2 RMSNorms
    "gemma": _LLAMA_ATTN + 3 * 32 * 64 + 2 * 32,
    "phi": 4 * (32 * 32 + 32) + (32 * 64 + 64) + (64 * 32 + 32) + 2 * 32,  # biases, one LayerNorm
    "mixtral": _LLAMA_ATTN + 4 * 32 + 4 * 128 * 32 + 4 * 32 * 64 + 2 * 32,  # router, fused experts
    "qwen2-moe": _LLAMA_ATTN + (32 + 16 + 16) + 4 * 32 + 4 * 32 * 32 + 4 * 32 * 16 + 3 * 32 * 32 + 32 + 2 * 32,
}


@pytest.mark.parametrize("family", FAMILIES)
def test_head_with_the_last_block_and_one_count_everywhere(family_dirs: dict[str, Path], family: str) -> None:
    tuner = Tuner(model=str(family_dirs[family]), strategy={"name": "head", "last_n_blocks": 1})
    model = tuner.model
    vocab = model.config.vocab_size
    head = 32 * vocab + (vocab if family == "phi" else 0)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all(n.startswith(("lm_head.", "model.layers.1.")) for n in trainable)
    from tunekit.models.inspect import count_parameters

    norm = 2 * 32 if family == "phi" else 32  # Phi's final LayerNorm has a bias
    total = 32 * vocab + head + 2 * BLOCK_PARAMS[family] + norm  # Gemma's head is untied now: its own tensor
    assert count_parameters(model) == (head + BLOCK_PARAMS[family], total)
    report = tuner.preflight(sft_rows(4), estimate=False)
    groups = {g.name: (g.trainable, g.total) for g in report.params_by_block}
    assert groups["block 0"] == (0, BLOCK_PARAMS[family])
    assert groups["block 1"] == (BLOCK_PARAMS[family], BLOCK_PARAMS[family])
    assert groups["head"] == (head, head)
    assert sum(g.total for g in report.params_by_block) == total


class _Mixer(torch.nn.Module):  # attention under a name without "attn": its forward takes the mask
    def __init__(self) -> None:
        super().__init__()
        self.wq, self.wo = torch.nn.Linear(8, 8), torch.nn.Linear(8, 8)

    def forward(self, hidden_states: Any, attention_mask: Any = None) -> Any:
        return self.wo(self.wq(hidden_states))


class _Dense(torch.nn.Module):  # the feed-forward part, named "ff"
    def __init__(self) -> None:
        super().__init__()
        self.w1, self.w2 = torch.nn.Linear(8, 16), torch.nn.Linear(16, 8)

    def forward(self, x: Any) -> Any:
        return self.w2(self.w1(x))


class _Block(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.mixer, self.ff, self.norm = _Mixer(), _Dense(), torch.nn.LayerNorm(8)


class _Toy(torch.nn.Module):
    _no_split_modules = ["_Block"]

    def __init__(self) -> None:
        super().__init__()
        self.codebooks = torch.nn.ModuleList([torch.nn.Embedding(1000, 8) for _ in range(2)])  # the biggest list
        self.blocks = torch.nn.ModuleList([_Block() for _ in range(2)])
        self.out = torch.nn.Linear(8, 1000)

    def get_output_embeddings(self) -> torch.nn.Module:
        return self.out


def test_blocks_and_groups_come_from_structure_not_names() -> None:
    from tunekit.models.inspect import decoder_blocks
    from tunekit.models.targets import resolve_target_modules

    toy = _Toy()
    name, blocks = decoder_blocks(toy)
    assert name == "blocks" and blocks == list(toy.blocks)
    assert set(resolve_target_modules(toy, "attention")) == {f"blocks.{i}.mixer.{w}" for i in (0, 1) for w in ("wq", "wo")}
    assert set(resolve_target_modules(toy, "mlp")) == {f"blocks.{i}.ff.{w}" for i in (0, 1) for w in ("w1", "w2")}
    assert "out" not in resolve_target_modules(toy, "all-linear")


# --- one parameter count: fit, preflight and compare agree, 4-bit weights counted as weights


def test_4bit_weights_count_as_weights(tiny_llama: Path, tmp_path: Path) -> None:
    from tunekit.models.inspect import count_parameters

    # tiny Llama: hidden 64, intermediate 128, 4 heads of 16, 2 key/value heads, 2 layers, untied head
    plain = Tuner(model=str(tiny_llama), strategy={"name": "lora", "rank": 8})
    quant = Tuner(
        model=str(tiny_llama), strategy={"name": "lora", "rank": 8}, quantizer="bnb-4bit",
        output_dir=str(tmp_path / "run"), training=quick(max_steps=1),
    )
    vocab = plain.model.config.vocab_size
    block = 64 * 64 * 2 + 64 * 32 * 2 + 3 * 64 * 128 + 2 * 64
    adapters = 2 * 8 * ((64 + 64) * 2 + (64 + 32) * 2 + (64 + 128) * 3)
    total = 2 * 64 * vocab + 2 * block + 64 + adapters
    q_proj = quant.model.base_model.model.model.layers[0].self_attn.q_proj.base_layer.weight
    assert type(q_proj).__name__ == "Params4bit" and q_proj.numel() == 64 * 64 // 2  # packed: 2 per byte
    for tuner in (plain, quant):
        assert count_parameters(tuner.model) == (adapters, total)
        report = tuner.preflight(sft_rows(4), estimate=False)
        assert sum(g.total for g in report.params_by_block) == total
        assert sum(g.trainable for g in report.params_by_block) == adapters
    result = quant.fit(sft_rows(8))  # what fit reports, and compare tabulates (worker.py copies it)
    assert (result.trainable_params, result.total_params) == (adapters, total)
    from tunekit.models.inspect import weight_count

    assert weight_count(q_proj) == 64 * 64


def test_weight_count_of_packed_storage_without_a_quant_state() -> None:
    from tunekit.models.inspect import weight_count

    class Params4bit(torch.nn.Parameter):  # what bitsandbytes stores: 4-bit values packed into quant_storage
        pass

    packed = Params4bit(torch.zeros(64 * 64 // 4, 1, dtype=torch.bfloat16), requires_grad=False)
    packed.bnb_quantized = True  # type: ignore[attr-defined]
    packed.quant_state = None  # type: ignore[attr-defined]
    assert weight_count(packed) == 64 * 64  # 4 values per 2-byte element
    not_yet = Params4bit(torch.zeros(64, 64), requires_grad=False)
    not_yet.bnb_quantized = False  # type: ignore[attr-defined]
    assert weight_count(not_yet) == 64 * 64


# --- load errors that say what went wrong and keep the cause


def _broken_copy(src: Path, dst: Path, break_it: Any) -> Path:
    import shutil

    shutil.copytree(src, dst)
    break_it(dst)
    return dst


@pytest.mark.parametrize(
    ("breakage", "expected"),
    [
        (lambda d: (d / "model.safetensors").unlink(), r"model files at .* are missing or corrupt .*no file named.*save_pretrained"),
        (lambda d: (d / "model.safetensors").write_bytes(b"\x00" * 16), r"model files at .* are missing or corrupt .*SafetensorError"),
        (lambda d: (d / "config.json").write_text("{nope"), r"missing or corrupt .*JSONDecodeError"),
        (
            lambda d: (d / "config.json").write_text((d / "config.json").read_text().replace('"llama"', '"florble"')),
            r"model type 'florble' that transformers .* cannot load.*Upgrade transformers.*trust_remote_code",
        ),
    ],
)
def test_a_broken_local_model_says_what_is_wrong(tiny_llama: Path, tmp_path: Path, breakage: Any, expected: str) -> None:
    from tunekit import ModelLoadError

    broken = _broken_copy(tiny_llama, tmp_path / "broken", breakage)
    with pytest.raises(ModelLoadError, match=expected) as info:
        _ = Tuner(model=str(broken)).model
    assert info.value.__cause__ is not None
    assert "network" not in str(info.value) and "hub" not in str(info.value)


def test_a_missing_tokenizer_file_is_named(tiny_llama: Path, tmp_path: Path) -> None:
    from tunekit import ModelLoadError

    broken = _broken_copy(tiny_llama, tmp_path / "broken", lambda d: (d / "tokenizer.json").unlink())
    with pytest.raises(ModelLoadError, match=r"tokenizer files at .* are missing or corrupt") as info:
        _ = Tuner(model=str(broken)).tokenizer
    assert info.value.__cause__ is not None


def _hub_error(kind: str) -> Exception:
    import httpx2
    from huggingface_hub import errors

    response = httpx2.Response(401 if kind in ("missing", "bad-token") else 403, request=httpx2.Request("GET", "https://huggingface.co/o/m"))
    inner: Exception = {
        "gated": lambda: errors.GatedRepoError("403 Client Error: access to model o/m is restricted", response=response),
        "missing": lambda: errors.RepositoryNotFoundError("401 Client Error: Repository Not Found", response=response),
        "offline": lambda: errors.LocalEntryNotFoundError("Cannot find the requested files in the disk cache"),
        "bad-token": lambda: errors.HfHubHTTPError("401 Client Error: Invalid credentials in Authorization header", response=response),
    }[kind]()
    try:  # transformers wraps each in an OSError raised from it
        raise OSError("transformers' own message") from inner
    except OSError as outer:
        return outer


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("gated", r"'o/m' is gated.*https://huggingface.co/o/m.*HF_TOKEN"),
        ("missing", r"'o/m' is not on the Hugging Face hub, or it is private.*Check the id"),
        ("offline", r"'o/m' is not in the local Hugging Face cache.*Download it once.*local model directory"),
        ("bad-token", r"refused the token for the (model|tokenizer) 'o/m'.*Set HF_TOKEN to a valid token"),
    ],
)
def test_hub_errors_are_told_apart(monkeypatch: pytest.MonkeyPatch, kind: str, expected: str) -> None:
    import transformers

    from tunekit import ModelLoadError
    from tunekit.models.loading import load_model, load_tokenizer, resolve_source

    error = _hub_error(kind)

    def fail(*args: Any, **kwargs: Any) -> Any:
        raise error

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", fail)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", fail)
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # the tests run with HF_HUB_OFFLINE=1
    monkeypatch.setattr("tunekit.models.loading._reachable", lambda endpoint: None)  # as if the hub answered
    for load in (lambda s: load_model(s, dtype=torch.float32), load_tokenizer):
        with pytest.raises(ModelLoadError, match=expected) as info:
            load(resolve_source("o/m"))
        assert info.value.__cause__ is error
    if kind != "offline":
        assert "network" not in str(info.value)


def _never_called(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("from_pretrained must not be reached: huggingface_hub would retry for over a minute")


def test_an_unreachable_hub_fails_before_the_retrying_libraries_with_the_alias_named(monkeypatch: pytest.MonkeyPatch) -> None:
    import transformers

    from tunekit import ModelLoadError

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", _never_called)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", _never_called)
    monkeypatch.setattr("tunekit.models.loading._reachable", lambda endpoint: "gaierror: [Errno -2] Name or service not known")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # the tests run with HF_HUB_OFFLINE=1
    for proxy in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.delenv(proxy, raising=False)
    with pytest.raises(ModelLoadError, match=r"model 'smollm2-135' is not a model alias.*cannot be reached \(gaierror.*"
                       r"Did you mean the model alias 'smollm2-135m'\?"):
        _ = Tuner(model="smollm2-135").tokenizer
    with pytest.raises(ModelLoadError, match=r"'owner/unknown-model'.*cannot be reached") as info:
        _ = Tuner(model="owner/unknown-model").model
    assert "Did you mean" not in str(info.value)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelLoadError, match=r"the hub is switched off \(HF_HUB_OFFLINE=1\)"):
        _ = Tuner(model="smollm2-135").tokenizer


def test_a_cached_hub_model_or_a_proxy_skips_the_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub
    import transformers

    from tunekit.models.loading import check_hub_reachable, resolve_source

    def no_probe(endpoint: str) -> str:
        raise AssertionError("the hub must not be probed")

    monkeypatch.setattr("tunekit.models.loading._reachable", no_probe)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: "/cache/o/m/config.json")
    check_hub_reachable(resolve_source("o/m"))  # cached: transformers reads it offline
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: None)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    check_hub_reachable(resolve_source("o/m"))  # behind a proxy a direct connection proves nothing
    reached: list[str] = []

    def hub_library(name: str, *args: Any, **kwargs: Any) -> Any:
        reached.append(name)
        raise RuntimeError("the hub library answered")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", hub_library)
    from tunekit import ModelLoadError
    from tunekit.models.loading import load_tokenizer

    with pytest.raises(ModelLoadError, match="the hub library answered"):
        load_tokenizer(resolve_source("o/m"))
    assert reached == ["o/m"]  # the load went on to the hub libraries, which decide behind a proxy


def test_a_bad_data_file_keeps_the_datasets_error(tmp_path: Path) -> None:
    from tunekit import DataError
    from tunekit.builtin.adapters import FilesAdapter

    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"text": "a"}\n{"text": ')
    with pytest.raises(DataError, match=r"could not read .*bad.jsonl.*Error") as info:
        FilesAdapter(FilesAdapter.Options()).load(str(path))
    cause = info.value.__cause__
    assert cause is not None and type(cause).__module__.startswith("datasets")
    assert str(cause).split(".")[0] in str(info.value)
