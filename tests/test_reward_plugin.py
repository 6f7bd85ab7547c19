"""A reward from a separately installed plugin package (plugins/tunekit-shout-reward) is a first-class reward."""

from __future__ import annotations

import subprocess
import sys

import pytest
from tests.plugin_packages import SHOUT, shout_reward_plugin  # noqa: F401  (a fixture)

from tunekit import UnknownPartError
from tunekit.config import build_rewards


def _cli(*args: str) -> str:
    return subprocess.run([sys.executable, "-m", "tunekit.cli", *args], capture_output=True, text=True, check=True).stdout


def test_installed_reward_is_listed_built_and_scores(shout_reward_plugin):  # noqa: F811
    from tunekit.plugins import get_registry

    assert get_registry("reward").get("shout").plugin == "tunekit-shout-reward 0.1.0"
    listing = _cli("plugins", "-v")
    rewards = listing.split("rewards:", 1)[1]
    assert "shout" in rewards and "tunekit-shout-reward 0.1.0" in rewards and "exact_match" in rewards
    (shout,) = build_rewards(["shout"])
    assert shout.name == "shout"
    assert shout.score(["YES!", "no"], prompts=["Shout yes", "Say no"], references=[None, "no"]) == [1.0, 0.0]
    mixed = build_rewards([{"name": "shout", "strip": False}, "exact_match"], location="objective.rewards")
    assert [r.name for r in mixed] == ["shout", "exact_match"]

    # the plugin's own test suite, written with tunekit.testing, passes against this tunekit
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(SHOUT / "tests")], capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stdout[-3000:]


def test_without_the_package_shout_is_unknown():
    with pytest.raises(UnknownPartError, match=r"rewards\[0\]: unknown reward 'shout'.*'exact_match'"):
        build_rewards(["shout"])
