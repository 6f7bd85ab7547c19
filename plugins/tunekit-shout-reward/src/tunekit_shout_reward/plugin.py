"""The module the ``tunekit`` entry point names: it declares the plugin API and registers the reward."""

from __future__ import annotations

from tunekit import hookimpl
from tunekit_shout_reward.reward import ShoutReward

TUNEKIT_API_VERSION = 1


@hookimpl
def register_rewards(register):
    register(ShoutReward)
