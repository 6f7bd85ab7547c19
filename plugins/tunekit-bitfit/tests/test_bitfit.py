"""tunekit-bitfit's own tests, written against tunekit's public API and its test kit."""

from __future__ import annotations

import pytest
from tunekit_bitfit.sharegpt import ShareGPTAdapter, ShareGPTOptions
from tunekit_bitfit.strategy import BitFitOptions, BitFitStrategy

from tunekit import ConfigError, Tuner
from tunekit.testing import chat_rows
from tunekit.testing.contracts import check_dataset_adapter, check_strategy

SHAREGPT = [
    {"conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "Reverse: a b"}, {"from": "gpt", "value": "b a"}]}
    for _ in range(8)
]


@pytest.fixture(autouse=True)
def _register():
    # installed packages are found through the entry point; for an uninstalled checkout, register in-process
    from tunekit.plugins import get_registry, register_plugin

    if "bitfit" not in get_registry("strategy"):
        import tunekit_bitfit.plugin as plugin

        register_plugin(plugin, name="tunekit-bitfit (in-process)")


def test_bitfit_trains_only_biases(tiny_gpt2):
    report = check_strategy("bitfit", tiny_gpt2, learning_rate=5e-2)
    assert report.trainable and all(n.endswith(".bias") for n in report.trainable)
    assert report.trained <= report.trainable
    assert report.trainable_params < report.total_params / 10


def test_bitfit_with_norms(tiny_gpt2):
    report = check_strategy({"name": "bitfit", "include_norms": True}, tiny_gpt2, learning_rate=5e-2)
    assert any(".ln_" in n and n.endswith(".weight") for n in report.trainable)


def test_bitfit_on_a_model_without_biases_says_what_to_do(tiny_llama):
    with pytest.raises(ConfigError, match="no bias parameters.*include_norms"):
        _ = Tuner(model=str(tiny_llama), strategy="bitfit").model
    report = check_strategy({"name": "bitfit", "include_norms": True}, tiny_llama, learning_rate=5e-2)
    assert all("norm" in n for n in report.trainable)


def test_bitfit_options_are_validated_with_dotted_locations():
    with pytest.raises(ConfigError, match="strategy.include_norms"):
        Tuner(model="gpt2", strategy={"name": "bitfit", "include_norms": "sometimes"})
    assert BitFitStrategy(BitFitOptions()).check_quantizer(type("Q", (), {"quantizes_base": True, "name": "bnb-4bit"})())


def test_sharegpt_rows_become_chat(tmp_path):
    prepared = check_dataset_adapter("sharegpt", SHAREGPT)
    assert prepared.format == "chat"
    assert prepared.train[0]["messages"][1] == {"role": "user", "content": "Reverse: a b"}
    path = tmp_path / "convs.jsonl"
    import json

    path.write_text("\n".join(json.dumps(r) for r in SHAREGPT))
    assert check_dataset_adapter("sharegpt", str(path)).format == "chat"


def test_sharegpt_bad_turn_is_a_data_error():
    from tunekit import DataError

    with pytest.raises(DataError, match="turn 0: needs 'from'"):
        ShareGPTAdapter(ShareGPTOptions()).load([{"conversations": [{"from": "alien", "value": "x"}]}])


def test_sharegpt_fit_end_to_end(tiny_llama, tmp_path):
    result = Tuner(model=str(tiny_llama), strategy="lora", output_dir=str(tmp_path / "r"), training={"max_steps": 2, "progress_bar": False}).fit(SHAREGPT)
    assert result.objective == "sft" and result.steps == 2
    assert chat_rows(1)  # the test kit's chat rows are the built-in chat format
