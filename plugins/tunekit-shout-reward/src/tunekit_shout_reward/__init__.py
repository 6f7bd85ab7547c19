"""tunekit-shout-reward: the `shout` reward for tunekit (1.0 for an upper-case completion)."""

__version__ = "0.1.0"
