"""Overrides on top of a configuration, merged key by key: the one rule for every place that takes them.

``Tuner(config, **overrides)``, ``Tuner.from_config(path, **overrides)``, ``Tuner.load(path, **overrides)``
and ``compare``'s candidates all mean "this configuration, with these fields changed", never
"with these sections replaced":

- a section (``training``, ``data``) merges key by key: ``training={"max_steps": 3}`` keeps the
  other training fields;
- a part (``strategy``, ``quantizer``, ``objective``, ``data.adapter``) named differently replaces
  the part with its own options; named the same, its options merge (``strategy={"name": "lora",
  "rank": 32}`` over a LoRA with ``alpha=16`` keeps ``alpha=16``);
- everything else (``model``, ``metrics``, ``output_dir``, ``None``...) replaces the value.

>>> merge_overrides({"strategy": {"name": "lora", "rank": 8, "alpha": 16}, "training": {"batch_size": 4}},
...                 {"strategy": {"name": "lora", "rank": 32}, "training": {"max_steps": 3}})
{'strategy': {'name': 'lora', 'rank': 32, 'alpha': 16}, 'training': {'batch_size': 4, 'max_steps': 3}}
>>> merge_overrides({"strategy": {"name": "lora", "rank": 8}}, {"strategy": "full"})
{'strategy': 'full'}
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

SECTIONS = ("training", "data")
"""Top-level fields whose keys merge one by one."""
PARTS = ("strategy", "quantizer", "objective")
"""Top-level part specs (a name, or a mapping with a ``name`` and options)."""
SECTION_PARTS = {"data": ("adapter",)}
"""Part specs inside a section."""


def _plain(value: Any) -> Any:
    """A pydantic model as the mapping it dumps to (a PartSpec dumps to its flat form)."""
    from pydantic import BaseModel

    if isinstance(value, BaseModel):
        return value.model_dump(mode="python")
    return copy.deepcopy(value)


def _part_name(spec: Any) -> str | None:
    if isinstance(spec, str):
        return spec
    if isinstance(spec, Mapping):
        name = spec.get("name")
        return name if isinstance(name, str) else None
    return None


def _flat_part(spec: Any) -> dict[str, Any]:
    """``"lora"`` or ``{"name": "lora", "options": {...}, ...}`` as ``{"name": "lora", **options}``."""
    if isinstance(spec, str):
        return {"name": spec}
    data = dict(spec)
    options = dict(data.pop("options", None) or {})
    name = data.pop("name")
    return {"name": name, **options, **data}


def merge_part(base: Any, override: Any) -> Any:
    """One part spec over another: a different name replaces it, the same name merges its options."""
    base, override = _plain(base), _plain(override)
    name = _part_name(override)
    if name is None or name != _part_name(base):
        return override  # a new part (or something invalid, left for validation to report)
    merged = _flat_part(base)
    merged.update({k: v for k, v in _flat_part(override).items() if k != "name"})
    return merged


def merge_overrides(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` (a config mapping) with ``overrides`` on top, by the rules of this module's docstring.

    Neither argument is modified; the result is a new mapping for ``TuneConfig.model_validate``.
    """
    merged: dict[str, Any] = {k: _plain(v) for k, v in base.items()}
    for key, value in overrides.items():
        value = _plain(value)
        current = merged.get(key)
        if key in SECTIONS and isinstance(value, Mapping) and isinstance(current, Mapping):
            section = dict(current)
            for inner, inner_value in value.items():
                if inner in SECTION_PARTS.get(key, ()) and section.get(inner) is not None and inner_value is not None:
                    section[inner] = merge_part(section[inner], inner_value)
                else:
                    section[inner] = inner_value
            merged[key] = section
        elif key in PARTS and current is not None and value is not None:
            merged[key] = merge_part(current, value)
        else:
            merged[key] = value
    return merged
