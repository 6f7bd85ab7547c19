"""Candidates: a strategy name or a mapping of TuneConfig fields, merged over the shared fields.

>>> [c.name for c in parse_candidates(["lora", {"strategy": {"name": "lora", "rank": 32}}])]
['lora', 'lora(rank=32)']
>>> merge_config({"training": {"batch_size": 4}}, {"training": {"learning_rate": 0.001}})
{'training': {'batch_size': 4, 'learning_rate': 0.001}}
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tunekit.errors import ConfigError, Problem

# Sections whose keys merge with the shared ones; every other field replaces the shared value.
MERGED_SECTIONS = ("training", "data")
# What compare sets itself so every candidate gets the same budget, seeds and data.
CONTROLLED = {
    "training": {"max_steps": "budget=", "epochs": "budget=", "seed": "seeds="},
    "data": {"train": "train=", "eval": "eval=", "eval_fraction": "the shared data options"},
}


@dataclass
class Candidate:
    """One candidate: its display name, what the user gave, and its TuneConfig overrides."""

    name: str
    spec: str | dict[str, Any]
    overrides: dict[str, Any] = field(default_factory=dict)
    untrained: bool = False  # the base row of compare(..., base=True): evaluated, never trained

    @property
    def slug(self) -> str:
        """A file-system-safe form of the name."""
        return re.sub(r"[^A-Za-z0-9._=-]+", "-", self.name).strip("-") or "candidate"


def parse_candidates(candidates: Any) -> list[Candidate]:
    """Turn what the user passed into candidates with unique names.

    A mapping may carry a ``name`` key (the label in the table); without one the name
    describes what differs, e.g. ``lora(rank=32)+bnb-4bit``.
    """
    if isinstance(candidates, (str, Mapping)) or not hasattr(candidates, "__iter__"):
        raise ConfigError([Problem("candidates", "must be a list of strategy names or mappings, e.g. ['full', 'lora']")])
    out: list[Candidate] = []
    problems: list[Problem] = []
    for i, spec in enumerate(candidates):
        if isinstance(spec, str):
            out.append(Candidate(spec, spec, {"strategy": spec}))
        elif isinstance(spec, Mapping):
            overrides = copy.deepcopy(dict(spec))
            name = overrides.pop("name", None)
            if name is not None and not isinstance(name, str):
                problems.append(Problem(f"candidates[{i}].name", f"must be a string, got {type(name).__name__}"))
                continue
            out.append(Candidate(name or describe(overrides), copy.deepcopy(dict(spec)), overrides))
        else:
            problems.append(
                Problem(f"candidates[{i}]", f"must be a strategy name or a mapping of config fields, got {type(spec).__name__}")
            )
    if problems:
        raise ConfigError(problems)
    if not out:
        raise ConfigError([Problem("candidates", "is empty: give at least one candidate, e.g. ['full', 'lora']")])
    seen: dict[str, int] = {}
    for cand in out:
        count = seen.get(cand.name, 0) + 1
        seen[cand.name] = count
        if count > 1:
            cand.name = f"{cand.name} #{count}"
    return out


def describe(overrides: Mapping[str, Any]) -> str:
    """A short name for a mapping candidate: its strategy, its quantizer, then any other field."""
    parts = []
    if "strategy" in overrides:
        parts.append(_part(overrides["strategy"]))
    quantizer = overrides.get("quantizer")
    if quantizer is not None and _part(quantizer) != "none":
        parts.append(_part(quantizer))
    rest = [f"{k}={v}" for k, v in _flatten({k: v for k, v in overrides.items() if k not in ("strategy", "quantizer")})]
    name = "+".join(parts) or "default"
    return f"{name} [{', '.join(rest)}]" if rest else name


def _part(spec: Any) -> str:
    if isinstance(spec, Mapping):
        options = {k: v for k, v in spec.items() if k != "name"}
        options.update(options.pop("options", None) or {})
        inner = ",".join(f"{k}={v}" for k, v in options.items())
        return f"{spec.get('name', '?')}({inner})" if inner else str(spec.get("name", "?"))
    return str(spec)


def _flatten(mapping: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for key, value in mapping.items():
        if isinstance(value, Mapping) and key in MERGED_SECTIONS:
            out.extend(_flatten(value, f"{prefix}{key}."))
        else:
            out.append((f"{prefix}{key}", value))
    return out


def merge_config(shared: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``shared`` with ``overrides`` on top, by the rule every override in tunekit follows
    (:func:`tunekit.config_merge.merge_overrides`): the ``training`` and ``data`` sections merge
    key by key, and a part named as in ``shared`` keeps the options the candidate does not set."""
    from tunekit.config_merge import merge_overrides

    return merge_overrides(shared, overrides)


def controlled_problems(overrides: Mapping[str, Any], *, where: str) -> list[Problem]:
    """Problems for fields a candidate may not set, because a fair comparison shares them."""
    problems = []
    if "output_dir" in overrides:
        problems.append(Problem(f"{where}.output_dir", "is chosen by compare (one run directory per candidate and seed); remove it"))
    for section, keys in CONTROLLED.items():
        value = overrides.get(section)
        if not isinstance(value, Mapping):
            continue
        for key, instead in keys.items():
            if key in value:
                problems.append(
                    Problem(f"{where}.{section}.{key}", f"is shared by every candidate for a fair comparison; set it with {instead} of compare()")
                )
    return problems
