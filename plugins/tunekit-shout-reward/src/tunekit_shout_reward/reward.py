"""The ``shout`` reward: 1.0 for an upper-case completion, else 0.0."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from tunekit.parts import PartOptions


class ShoutOptions(PartOptions):
    strip: bool = Field(default=True, description="Strip leading and trailing whitespace of the completion first.")


class ShoutReward:
    """1.0 when the completion has cased letters and all of them are upper case (``str.isupper``)."""

    name: ClassVar[str] = "shout"
    description: ClassVar[str] = "1.0 when the completion is upper case, else 0 (an example reward plugin)."
    Options: ClassVar[type[ShoutOptions]] = ShoutOptions

    def __init__(self, options: ShoutOptions):
        self.options = options

    def score(self, completions: list[str], *, prompts: list[str], references: list[str | None]) -> list[float]:
        return [1.0 if (c.strip() if self.options.strip else c).isupper() else 0.0 for c in completions]
