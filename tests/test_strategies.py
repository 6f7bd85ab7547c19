"""Each strategy trains exactly what it claims, on every objective and quantizer it allows."""

from __future__ import annotations

import pytest
import torch
from tests.conftest import quick

from tunekit import Tuner
from tunekit.testing import sft_rows, text_rows

COMBOS = [
    ("full", "none"),
    ("head", "none"),
    ("lora", "none"),
    ("lora", "bnb-8bit"),
    ("lora", "bnb-4bit"),
]
LR = {"full": 3e-3, "head": 1e-2, "lora": 2e-2}


def _snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize(("strategy", "quantizer"), COMBOS)
@pytest.mark.parametrize("objective", ["sft", "causal-lm"])
def test_fit_lowers_training_loss(tiny_llama, tmp_path, strategy, quantizer, objective):
    rows = sft_rows(32) if objective == "sft" else text_rows(32)
    tuner = Tuner(
        model=str(tiny_llama), strategy=strategy, quantizer=quantizer, objective=objective,
        output_dir=str(tmp_path / "run"), training=quick(max_steps=12, learning_rate=LR[strategy]),
    )
    before = tuner.evaluate(rows).loss
    result = tuner.fit(rows)
    after = tuner.evaluate(rows).loss
    assert result.steps == 12 and result.objective == objective
    assert after < before - 0.05, (before, after)
    assert result.tokens_seen > 0 and result.peak_memory_bytes > 0


def test_quantizer_really_quantizes(tiny_llama, tmp_path):
    tuner = Tuner(model=str(tiny_llama), strategy="lora", quantizer="bnb-4bit")
    kinds = {type(m).__name__ for m in tuner.model.modules()}
    assert "Linear4bit" in kinds
    tuner8 = Tuner(model=str(tiny_llama), strategy="lora", quantizer="bnb-8bit")
    assert "Linear8bitLt" in {type(m).__name__ for m in tuner8.model.modules()}


def test_full_changes_every_parameter(tiny_gpt2, tmp_path):
    tuner = Tuner(model=str(tiny_gpt2), strategy="full", output_dir=str(tmp_path / "r"), training=quick(learning_rate=1e-3))
    before = _snapshot(tuner.model)
    result = tuner.fit(sft_rows(16))
    changed = {n for n, p in tuner.model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == set(before)
    # the tiny GPT-2 counted by hand (n_embd 64, 2 layers, vocab 400, 512 positions; the head is tied to wte)
    block = 2 * 2 * 64 + (64 * 192 + 192) + (64 * 64 + 64) + (64 * 256 + 256) + (256 * 64 + 64)  # 2 LayerNorms, 4 linears
    assert result.trainable_params == result.total_params == 400 * 64 + 512 * 64 + 2 * block + 2 * 64 == 158464


@pytest.mark.parametrize("last_n_blocks", [0, 1])
def test_head_trains_only_the_head_and_unties_it(tiny_gpt2, tmp_path, last_n_blocks):
    from transformers import AutoModelForCausalLM

    original = AutoModelForCausalLM.from_pretrained(tiny_gpt2)
    assert original.lm_head.weight is original.transformer.wte.weight  # GPT-2 ties them
    embeddings_before = original.transformer.wte.weight.detach().clone()

    tuner = Tuner(
        model=str(tiny_gpt2), strategy={"name": "head", "last_n_blocks": last_n_blocks},
        output_dir=str(tmp_path / "r"), training=quick(learning_rate=1e-2),
    )
    model = tuner.model
    before = _snapshot(model)
    tuner.fit(sft_rows(16))
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    expected_trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "lm_head.weight" in changed
    assert changed <= expected_trainable
    if last_n_blocks:
        assert any(n.startswith("transformer.h.1.") for n in changed)
        assert not any(n.startswith("transformer.h.0.") for n in expected_trainable)
    else:
        assert expected_trainable == {"lm_head.weight"}
    # the embeddings must not have been trained through the tied head
    assert torch.equal(model.transformer.wte.weight, embeddings_before)
    assert model.lm_head.weight is not model.transformer.wte.weight

    # a plain transformers load of the saved model reproduces the tuned model
    saved = tuner.save(tmp_path / "saved")
    reloaded = AutoModelForCausalLM.from_pretrained(saved)
    ids = torch.tensor([[1, 5, 9, 30, 2]])
    model.eval()
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, reloaded(ids).logits, atol=1e-6)
    assert not torch.equal(reloaded.lm_head.weight, reloaded.transformer.wte.weight)
    again = Tuner.load(saved).model.eval()
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, again(ids).logits, atol=1e-6)


def test_lora_base_unchanged_counts_match_peft_and_adapter_loads_in_plain_peft(tiny_model, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    tuner = Tuner(model=str(tiny_model), strategy={"name": "lora", "rank": 4}, output_dir=str(tmp_path / "r"), training=quick(learning_rate=2e-2))
    model = tuner.model
    before = _snapshot(model)
    result = tuner.fit(sft_rows(16))
    assert (result.trainable_params, result.total_params) == model.get_nb_trainable_parameters()
    # rank 4 on every linear layer, by hand: 4 * (in + out) per layer, 2 layers
    per_layer = {
        "gpt2": (64 + 192) + (64 + 64) + (64 + 256) + (256 + 64),  # c_attn, c_proj, c_fc, mlp.c_proj
        "llama": (64 + 64) + 2 * (64 + 32) + (64 + 64) + 3 * (64 + 128),  # q, k and v (2 kv heads of 16), o, gate/up/down
    }
    assert result.trainable_params == 2 * 4 * per_layer[tiny_model.name] == 8192
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all("lora_" in n for n in changed)  # base weights bit-for-bit unchanged
    assert any("lora_B" in n for n in changed)

    saved = tuner.save(tmp_path / "adapter")
    assert (saved / "adapter_config.json").is_file() and (saved / "adapter_model.safetensors").is_file()
    plain = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), saved)
    ids = torch.tensor([[1, 5, 9, 30, 2, 7]])
    model.eval()
    plain.eval()
    with torch.no_grad():
        tuned = model(ids).logits
        assert torch.allclose(tuned, plain(ids).logits, atol=1e-5)
        reloaded = Tuner.load(saved).model.eval()
        assert torch.allclose(tuned, reloaded(ids).logits, atol=1e-5)
        merged = tuner.merge()
        assert torch.allclose(tuned, merged(ids).logits, atol=1e-4)
    merged_dir = tuner.save_merged(tmp_path / "merged")
    standalone = AutoModelForCausalLM.from_pretrained(merged_dir)
    with torch.no_grad():
        assert torch.allclose(tuned, standalone(ids).logits, atol=1e-4)


def test_lora_peft_parity_of_counts_for_the_same_config(tiny_gpt2):
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    tuner = Tuner(model=str(tiny_gpt2), strategy={"name": "lora", "rank": 8, "target_modules": ["c_attn"]})
    from tunekit.models.inspect import count_parameters

    ours = count_parameters(tuner.model)
    config = tuner.strategy.peft_config(AutoModelForCausalLM.from_pretrained(tiny_gpt2))
    theirs = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_gpt2), config).get_nb_trainable_parameters()
    assert ours == theirs
    # rank 8 on c_attn (64 -> 192) in 2 layers: 2 * 8 * (64 + 192)
    assert ours[0] == 2 * 8 * (64 + 192)


@pytest.mark.parametrize(
    ("targets", "expected"),
    [
        ("mlp", {"mlp.c_fc", "mlp.c_proj"}),
        (["mlp"], {"mlp.c_fc", "mlp.c_proj"}),
        ("attention", {"attn.c_attn", "attn.c_proj"}),
        ("all-linear", {"attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"}),
        (["c_attn"], {"attn.c_attn"}),
    ],
)
def test_target_module_groups_resolve_on_gpt2(tiny_gpt2, targets, expected):
    from transformers import AutoModelForCausalLM

    from tunekit.models.targets import resolve_target_modules

    model = AutoModelForCausalLM.from_pretrained(tiny_gpt2)
    names = resolve_target_modules(model, targets)
    assert {n.split(".", 3)[-1] for n in names} == expected
    assert len(names) == 2 * len(expected)  # both layers
    assert not any("lm_head" in n for n in names)


def test_target_groups_on_llama(tiny_llama):
    from transformers import AutoModelForCausalLM

    from tunekit.models.targets import resolve_target_modules

    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    suffixes = {n.rsplit(".", 1)[-1] for n in resolve_target_modules(model, "attention")}
    assert suffixes == {"q_proj", "k_proj", "v_proj", "o_proj"}
    suffixes = {n.rsplit(".", 1)[-1] for n in resolve_target_modules(model, "mlp")}
    assert suffixes == {"gate_proj", "up_proj", "down_proj"}


def test_container_target_trains_on_gpt2_instead_of_crashing(tiny_gpt2, tmp_path):
    tuner = Tuner(model=str(tiny_gpt2), strategy={"name": "lora", "target_modules": "mlp"}, output_dir=str(tmp_path / "r"), training=quick())
    result = tuner.fit(sft_rows(8))
    assert result.trainable_params == 2 * 8 * ((64 + 256) + (256 + 64))


def test_unknown_target_lists_layers(tiny_gpt2):
    from tunekit import ConfigError

    tuner = Tuner(model=str(tiny_gpt2), strategy={"name": "lora", "target_modules": ["q_proj"]})
    with pytest.raises(ConfigError, match="strategy.target_modules: 'q_proj' matches no linear layer.*c_attn"):
        _ = tuner.model


@pytest.mark.parametrize("switch", ["use_dora", "use_rslora"])
def test_dora_and_rslora_switches(tiny_llama, tmp_path, switch):
    tuner = Tuner(model=str(tiny_llama), strategy={"name": "lora", switch: True}, output_dir=str(tmp_path / "r"), training=quick(max_steps=2))
    cfg = tuner.model.peft_config["default"]
    assert getattr(cfg, switch) is True
    tuner.fit(sft_rows(8))


def test_gradient_checkpointing_with_adapters_still_trains(tiny_llama, tmp_path):
    tuner = Tuner(
        model=str(tiny_llama), strategy="lora", output_dir=str(tmp_path / "r"),
        training=quick(max_steps=4, learning_rate=2e-2, gradient_checkpointing=True),
    )
    before = _snapshot(tuner.model)
    tuner.fit(sft_rows(16))
    changed = [n for n, p in tuner.model.named_parameters() if not torch.equal(p, before[n])]
    assert any("lora_A" in n for n in changed)


def test_same_seed_reproduces_losses(tiny_gpt2, tmp_path):
    losses = []
    for i in range(2):
        tuner = Tuner(model=str(tiny_gpt2), strategy="lora", output_dir=str(tmp_path / f"r{i}"), training=quick(learning_rate=1e-2))
        losses.append([p.loss for p in tuner.fit(sft_rows(16)).loss_history])
    assert losses[0] == losses[1]


def test_merge_refused_on_quantized_base(tiny_llama):
    from tunekit import TunekitError

    tuner = Tuner(model=str(tiny_llama), strategy="lora", quantizer="bnb-4bit")
    with pytest.raises(TunekitError, match="quantizer='none'"):
        tuner.merge()


def test_rank_check_reads_layer_features_not_packed_4bit_storage(tiny_llama):
    # a bitsandbytes 4-bit weight is stored as (n/2, 1): its storage shape is not the layer's
    tuner = Tuner(model=str(tiny_llama), strategy={"name": "lora", "rank": 16}, quantizer="bnb-4bit")
    layer = tuner.model.base_model.model.model.layers[0].self_attn.q_proj
    assert layer.base_layer.weight.shape[1] == 1 and layer.r["default"] == 16
