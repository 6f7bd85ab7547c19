"""Reference documentation generated from the pydantic models, so it never goes stale.

``tunekit config --markdown`` prints :func:`configuration_markdown`; ``docs/configuration.md``
is exactly that output, and a test keeps the two equal.

>>> from tunekit.reference import configuration_markdown
>>> configuration_markdown().splitlines()[0]
'# Configuration reference'
"""

from __future__ import annotations

import types
from typing import Any, Literal, TypeGuard, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from tunekit.parts import KIND_PLURALS, KINDS

# Where each kind of part is chosen in a TuneConfig.
KIND_FIELDS = {
    "strategy": "strategy",
    "quantizer": "quantizer",
    "dataset_adapter": "data.adapter",
    "objective": "objective",
    "model_alias": "model",
}

# A small run file shown in the reference; it is validated each time the reference is generated.
EXAMPLE_CONFIG: dict[str, Any] = {
    "model": "gpt2",
    "strategy": {"name": "lora", "rank": 16, "target_modules": "attention"},
    "quantizer": "none",
    "data": {"train": "train.jsonl", "eval_fraction": 0.1},
    "training": {"epochs": 2, "batch_size": 8, "max_length": 1024},
    "output_dir": "runs/gpt2-lora",
}

_CONSTRAINTS = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell (a bare ``|`` would end the cell, even in code)."""
    return text.replace("|", "\\|").replace("\n", " ")


def _prose(text: str) -> str:
    """A description for a table cell: ``<name>`` outside code spans is escaped, not read as HTML."""
    pieces = text.split("`")
    pieces[::2] = [piece.replace("<", "&lt;") for piece in pieces[::2]]
    return _cell("`".join(pieces))


def _is_section(annotation: Any) -> TypeGuard[type[BaseModel]]:
    from tunekit.config import PartSpec

    return isinstance(annotation, type) and issubclass(annotation, BaseModel) and annotation is not PartSpec


def _type_text(annotation: Any) -> str:
    """A readable Markdown rendering of a field's type: ``int`` \\| ``None``, ``'a'`` \\| ``'b'``."""
    from tunekit.config import PartSpec

    origin = get_origin(annotation)
    if annotation is None or annotation is type(None):
        return "`None`"
    if origin is Literal:
        return " \\| ".join(f"`{value!r}`" for value in get_args(annotation))
    if origin is Union or origin is types.UnionType:
        return " \\| ".join(_type_text(arg) for arg in get_args(annotation))
    if annotation is PartSpec:
        return "part"
    if _is_section(annotation):
        return "section"
    if isinstance(annotation, type) and origin is None:
        return f"`{annotation.__name__}`"
    return "`" + _cell(str(annotation).replace("typing.", "")) + "`"


def _constraints(field: FieldInfo) -> str:
    found = []
    for item in field.metadata:
        for attr, symbol in _CONSTRAINTS.items():
            value = getattr(item, attr, None)
            if value is not None:
                found.append(f"{symbol} {value}")
        if getattr(item, "min_length", None) == 1:
            found.append("non-empty")
    return ", ".join(found)


def _default_text(name: str, field: FieldInfo) -> str:
    from tunekit.config import PartSpec

    if field.default is not PydanticUndefined:
        value = field.default
    elif field.default_factory is not None:
        value = field.default_factory()  # type: ignore[call-arg]
    else:
        return "*required*"
    if isinstance(value, PartSpec):
        value = value.name if not value.options else value.model_dump()
    elif isinstance(value, BaseModel):
        return f"see [`{name}`](#{name})"
    return "`" + _cell(repr(value)) + "`"


def options_table(model: type[BaseModel]) -> list[str]:
    """Markdown rows (option, type, default, description) of a model's fields."""
    rows = ["| option | type | default | description |", "|---|---|---|---|"]
    for name, field in model.model_fields.items():
        kind = _type_text(field.annotation)
        limits = _constraints(field)
        if limits:
            kind += f" ({_cell(limits)})"
        desc = _prose(field.description or "")
        rows.append(f"| `{name}` | {kind} | {_default_text(name, field)} | {desc} |")
    return rows


def _example_yaml() -> list[str]:
    import yaml

    from tunekit.config import TuneConfig

    TuneConfig.model_validate(EXAMPLE_CONFIG)  # the reference never shows an invalid example
    return ["```yaml", *yaml.safe_dump(EXAMPLE_CONFIG, sort_keys=False).splitlines(), "```"]


def configuration_markdown(*, include_plugins: bool = False) -> str:
    """The body of ``docs/configuration.md``: every option of ``TuneConfig`` and of every built-in part.

    With ``include_plugins``, the parts of installed third-party plugins are documented too
    (the published reference leaves them out, so it does not depend on what is installed).
    """
    from tunekit.config import TuneConfig
    from tunekit.plugins import BUILTIN_PLUGIN, get_registry

    sections: list[tuple[str, type[BaseModel]]] = [
        (name, field.annotation) for name, field in TuneConfig.model_fields.items() if _is_section(field.annotation)
    ]
    out = [
        "# Configuration reference",
        "",
        "<!-- Generated by `tunekit config --markdown` from the pydantic models; do not edit by hand. -->",
        "",
        "A run is one `TuneConfig`. Give it as keyword arguments (`Tuner(model=..., strategy=...)`), "
        'as a mapping, or as a YAML, TOML or JSON file (`Tuner.from_config("run.yaml")`, '
        "`tunekit fit run.yaml`). Unknown keys are errors, and every problem in a configuration is "
        "reported at once, each with its dotted location (`strategy.rank: must be >= 1`).",
        "",
        "A run file:",
        "",
        *_example_yaml(),
        "",
        "Relative `data.train` and `data.eval` paths in a file are looked up next to the file first. "
        "The configuration is saved, with every default filled in, as `tunekit.yaml` in the run "
        "directory and next to every saved model.",
        "",
        "Contents: [top level](#top-level)"
        + "".join(f", [`{name}`](#{name})" for name, _ in sections)
        + ", [parts and their options](#parts-and-their-options).",
        "",
        "## Top level",
        "",
        *options_table(TuneConfig),
    ]
    for name, model in sections:
        doc = (model.__doc__ or "").strip().splitlines()
        out += ["", f"## `{name}`", ""]
        if doc:
            out += [doc[0], ""]
        out += options_table(model)
    out += [
        "",
        "## Parts and their options",
        "",
        "A field of type *part* takes the part's name (`strategy: lora`) or a mapping of its name and "
        "its options (`strategy: {name: lora, rank: 16}`). A part's options are validated by the "
        "part itself and reported under its field (`strategy.rank`). "
        + (
            "This reference lists the built-in parts; `tunekit plugins -v` lists every installed "
            "part, a plugin's included, with its options."
            if not include_plugins
            else "Every installed part is listed, third-party plugins' included."
        ),
    ]
    for kind in KINDS:
        registrations = [r for r in get_registry(kind) if include_plugins or r.plugin == BUILTIN_PLUGIN]
        field = KIND_FIELDS.get(kind)
        out += ["", f"### {KIND_PLURALS.get(kind, kind).capitalize()}" + (f" (`{field}`)" if field else "")]
        for reg in registrations:
            out += ["", f"#### `{reg.name}`", "", _prose(reg.description)]
            facts = _part_facts(kind, reg)
            if reg.plugin != BUILTIN_PLUGIN:
                facts.insert(0, f"From the plugin `{reg.plugin}`.")
            if facts:
                out += ["", " ".join(facts)]
            if reg.options_model.model_fields:
                out += ["", *options_table(reg.options_model)]
            else:
                out += ["", "No options."]
    return "\n".join(out).rstrip() + "\n"


# (row format an objective is asked about, how the docs name it); instruction rows become prompt/completion.
ROW_FORMATS = (
    ("text", "text"),
    ("prompt_completion", "prompt/completion"),
    ("prompt_completion", "instruction"),
    ("chat", "chat"),
)


def _part_facts(kind: str, reg: Any) -> list[str]:
    """What a part's class says about itself beyond its options (read from the class, never restated)."""
    facts = []
    if kind == "strategy":
        lr = getattr(reg.cls, "default_learning_rate", None)
        if isinstance(lr, (int, float)):
            facts.append(f"Default learning rate: `{lr:g}`.")
    if kind == "objective":
        try:
            part = reg.cls(reg.options_model())
            accepted = [label for fmt, label in ROW_FORMATS if part.accepts(fmt)]
        except Exception:  # a plugin's part whose options have no defaults: say nothing
            accepted = []
        if accepted:
            facts.append(f"Row formats: {', '.join(accepted)}.")
    return facts
