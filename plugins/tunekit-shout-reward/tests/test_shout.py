"""tunekit-shout-reward's own tests, written against tunekit's public API and its test kit."""

from __future__ import annotations

import pytest

from tunekit.config import build_rewards
from tunekit.testing.contracts import check_reward


@pytest.fixture(autouse=True)
def _register():
    # installed packages are found through the entry point; for an uninstalled checkout, register in-process
    from tunekit.plugins import get_registry, register_plugin

    if "shout" not in get_registry("reward"):
        import tunekit_shout_reward.plugin as plugin

        register_plugin(plugin, name="tunekit-shout-reward (in-process)")


def test_shout_scores_upper_case_completions():
    (shout,) = build_rewards(["shout"])
    assert shout.score(["HELLO!", " HI ", "hello", "Hello", "123"], prompts=[""] * 5, references=[None] * 5) == [
        1.0, 1.0, 0.0, 0.0, 0.0,
    ]


def test_shout_keeps_the_reward_contract():
    assert check_reward("shout") == [0.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    assert check_reward({"name": "shout", "strip": False}, completions=[" HI "], prompts=["p"], references=[None]) == [1.0]
