"""Reading config files (YAML, TOML, JSON) defensively: a file is a mapping of options, nothing more.

A config file is data from wherever the user got it, so reading one is bounded:

- files larger than :data:`MAX_CONFIG_BYTES` are refused before they are read;
- YAML aliases are limited (:data:`MAX_ALIASES`, and the document expanded through its aliases may
  hold at most :data:`MAX_EXPANDED_NODES` nodes), so an alias bomb ("billion laughs") is a clear
  error instead of minutes of work and a ``MemoryError``; a recursive alias is refused;
- every mapping key must be a string (YAML reads ``true:``, ``1:`` or ``~:`` as a bool, an int or
  None), and a key given twice in one mapping is an error in YAML, JSON and TOML alike, naming
  the key and its line, instead of silently keeping the last value;
- ``overwrite`` is never read from a file: replacing an earlier run is a decision made on the
  command line (``--overwrite``) or in code (``fit(overwrite=True)``), not one a shared file makes.

>>> import tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "run.yaml"
>>> _ = path.write_text("model: gpt2\\nmodel: llama\\n")
>>> try:
...     read_config_file(path)
... except ConfigError as err:
...     print(err.problems[0].message)
key 'model' is given twice in one mapping (line 2, first at line 1); keep one.

The same strictness for the arguments of the facade's verbs lives here too:
:func:`check_positive_int` and :func:`check_generate_options` (``evaluate``, ``generate``) and
:func:`read_saved_meta` (``Tuner.load`` of a folder whose ``tunekit.json`` is corrupt).
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

from tunekit.errors import ConfigError, Problem

MAX_CONFIG_BYTES = 1 * 2**20
"""The largest config file read (1 MiB); real ones are a few hundred bytes."""

MAX_ALIASES = 100
"""The most YAML aliases (``*name``) one config file may use."""

MAX_EXPANDED_NODES = 100_000
"""The most YAML nodes a document may hold once every alias is expanded."""

FORBIDDEN_FILE_KEYS = {
    "overwrite": "is not read from a config file: replacing an earlier run is decided where the run "
    "starts. Remove it from the file and pass --overwrite on the command line (or "
    "fit(..., overwrite=True) / compare(..., overwrite=True) in Python).",
}
"""Top-level keys a config file may not set, with the reason and the fix."""


class _FileProblem(Exception):
    """A problem found while parsing; read_config_file turns it into a ConfigError."""


def _yaml_loader() -> type:
    import yaml

    class LimitedSafeLoader(yaml.SafeLoader):
        """SafeLoader that bounds aliases and refuses recursive aliases, non-string and duplicate keys."""

        def __init__(self, stream: Any):
            super().__init__(stream)
            self._aliases = 0
            self._open_anchors: set[str] = set()  # anchors whose node is still being composed

        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(yaml.AliasEvent):
                event = self.peek_event()
                line = event.start_mark.line + 1
                self._aliases += 1
                if self._aliases > MAX_ALIASES:
                    raise _FileProblem(
                        f"uses more than {MAX_ALIASES} YAML aliases (*name, line {line}); a config file "
                        "needs few or none. Write the values out instead."
                    )
                if event.anchor in self._open_anchors:
                    raise _FileProblem(
                        f"has a recursive YAML alias *{event.anchor} (line {line}): a value cannot "
                        "contain itself."
                    )
            return super().compose_node(parent, index)

        def compose_sequence_node(self, anchor: Any) -> Any:
            return self._composing(super().compose_sequence_node, anchor)

        def compose_mapping_node(self, anchor: Any) -> Any:
            return self._composing(super().compose_mapping_node, anchor)

        def _composing(self, compose: Any, anchor: str | None) -> Any:
            if anchor is None:
                return compose(anchor)
            self._open_anchors.add(anchor)
            try:
                return compose(anchor)
            finally:
                self._open_anchors.discard(anchor)

        def construct_document(self, node: Any) -> Any:
            _check_expansion(node)
            return super().construct_document(node)

        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            if isinstance(node, yaml.MappingNode):
                seen: dict[str, int] = {}
                for key_node, _ in node.value:
                    if key_node.tag == "tag:yaml.org,2002:merge":
                        continue
                    line = key_node.start_mark.line + 1
                    if not (isinstance(key_node, yaml.ScalarNode) and key_node.tag == "tag:yaml.org,2002:str"):
                        shown = (
                            repr(self.construct_object(key_node, deep=True))
                            if isinstance(key_node, yaml.ScalarNode)
                            else _source(key_node)
                        )
                        raise _FileProblem(
                            f"line {line}: the key {shown} is a {_yaml_kind(key_node)}, but every key must be "
                            f"a string; quote it (\"{_source(key_node)}\": ...) or fix the option's name."
                        )
                    key = key_node.value
                    if key in seen:
                        raise _FileProblem(
                            f"key {key!r} is given twice in one mapping (line {line}, first at line "
                            f"{seen[key]}); keep one."
                        )
                    seen[key] = line
            return super().construct_mapping(node, deep=deep)

    return LimitedSafeLoader


def _source(node: Any) -> str:
    text = node.start_mark.buffer[node.start_mark.pointer : node.end_mark.pointer] if node.start_mark.buffer else ""
    return text.strip()[:40] or "?"


def _yaml_kind(node: Any) -> str:
    import yaml

    if isinstance(node, yaml.MappingNode):
        return "mapping"
    if isinstance(node, yaml.SequenceNode):
        return "list"
    return {
        "tag:yaml.org,2002:bool": "boolean",
        "tag:yaml.org,2002:int": "number",
        "tag:yaml.org,2002:float": "number",
        "tag:yaml.org,2002:null": "null",
        "tag:yaml.org,2002:timestamp": "date",
    }.get(node.tag, f"{node.tag.rsplit(':', 1)[-1]} value")


def _check_expansion(root: Any) -> None:
    """Refuse a document that, with its aliases expanded, holds more than MAX_EXPANDED_NODES nodes."""
    import yaml

    sizes: dict[int, int] = {}

    def size(node: Any) -> int:
        known = sizes.get(id(node))
        if known is not None:
            return known
        sizes[id(node)] = 1  # a cycle counts once; recursive aliases are refused while composing
        total = 1
        if isinstance(node, yaml.SequenceNode):
            children = node.value
        elif isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        else:
            children = []
        for child in children:
            total += size(child)
            if total > MAX_EXPANDED_NODES:
                break
        sizes[id(node)] = total
        return total

    if size(root) > MAX_EXPANDED_NODES:
        raise _FileProblem(
            f"expands, through its YAML aliases, to more than {MAX_EXPANDED_NODES:,} values (an alias "
            "bomb?); a config file is small. Write the values out without nested aliases."
        )


def _load_yaml(text: str) -> Any:

    loader = _yaml_loader()(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def _load_json(text: str) -> Any:
    def pairs_hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                raise _DuplicateJSONKey(key)
            out[key] = value
        return out

    try:
        return json.loads(text, object_pairs_hook=pairs_hook)
    except _DuplicateJSONKey as dup:
        line = _second_json_key_line(text, dup.key)
        where = f" (line {line})" if line else ""
        raise _FileProblem(f"key {dup.key!r} is given twice in one object{where}; keep one.") from None


class _DuplicateJSONKey(Exception):
    def __init__(self, key: str):
        self.key = key


def _second_json_key_line(text: str, key: str) -> int | None:
    """The line of the second ``"key":`` in ``text`` (the duplicate, in all but odd layouts)."""
    pattern = re.compile(re.escape(json.dumps(key)) + r"\s*:")
    matches = list(pattern.finditer(text))
    if len(matches) < 2:
        return None
    return text.count("\n", 0, matches[1].start()) + 1


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Parse a YAML, TOML or JSON config file into a mapping, with clear errors for bad syntax,
    oversized files, alias bombs, non-string and duplicate keys, and keys a file may not set."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError([Problem(str(path), "is a directory, not a config file; give the path to a .yaml, .toml or .json file")])
    if not path.is_file():
        raise ConfigError([Problem(str(path), "config file not found; check the path")])
    suffix = path.suffix.lower()
    if suffix not in {".yaml", ".yml", ".toml", ".json"}:
        raise ConfigError([Problem(str(path), "unsupported config file type; use .yaml, .yml, .toml or .json")])
    size = path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise ConfigError([Problem(str(path), (
            f"is {size / 2**20:.1f} MiB; a config file may be at most {MAX_CONFIG_BYTES / 2**20:g} MiB. "
            "Is this the right file? Keep data in data files (data.train), not in the config."
        ))])
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError([Problem(str(path), f"could not be read ({exc.strerror or exc})")]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ConfigError([Problem(str(path), f"is not UTF-8 text ({exc.reason} on line {line}); save it as UTF-8")]) from None
    text = text.removeprefix("\ufeff")
    try:
        if suffix in {".yaml", ".yml"}:
            data = _load_yaml(text)
        elif suffix == ".toml":
            data = tomllib.loads(text)
        else:
            data = _load_json(text)
    except _FileProblem as exc:
        raise ConfigError([Problem(str(path), str(exc))]) from None
    except RecursionError:
        raise ConfigError([Problem(str(path), "is nested too deeply to be a config file")]) from None
    except (MemoryError, Exception) as exc:  # yaml.YAMLError, tomllib.TOMLDecodeError, json.JSONDecodeError
        raise ConfigError([Problem(str(path), f"could not be parsed: {exc}")]) from None
    if data is None:
        raise ConfigError([Problem(str(path), "is empty; it must hold a mapping of options such as 'model: gpt2'")])
    if not isinstance(data, dict):
        raise ConfigError(
            [Problem(str(path), f"must hold a mapping of options at the top, got {type(data).__name__}")]
        )
    problems = [Problem(f"{path}: {key}", why) for key, why in FORBIDDEN_FILE_KEYS.items() if key in data]
    if problems:
        raise ConfigError(problems)
    return data


def check_positive_int(call: str, **values: Any) -> None:
    """A ``ConfigError`` naming ``call(name=...)`` for each given value that is not an int >= 1
    (None means "the default" and passes)."""
    problems = [
        Problem(f"{call}({name}=...)", f"must be a whole number >= 1 (got {value!r})")
        for name, value in values.items()
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1)
    ]
    if problems:
        raise ConfigError(problems)


def read_saved_meta(folder: Path, meta_name: str, config_name: str) -> dict[str, Any]:
    """The ``tunekit.json`` of a folder saved by tunekit, checked; a ``ModelLoadError`` naming the
    file when it is unreadable, not a JSON object, has no known ``format``, or the config is missing."""
    from tunekit.errors import ModelLoadError

    meta_path = folder / meta_name
    fix = "re-save the model, or restore the folder from a copy"
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ModelLoadError(
            f"{str(meta_path)!r} is corrupt, so {str(folder)!r} cannot be loaded as a model saved by "
            f"tunekit ({type(exc).__name__}: {str(exc)[:200]}); {fix}."
        ) from None
    if not isinstance(meta, dict):
        raise ModelLoadError(f"{str(meta_path)!r} must hold a JSON object, got {type(meta).__name__}; {fix}.")
    # "adapter" and "full" are the built-in formats; a plugin strategy's own format is accepted when
    # the save names its strategy (whose load checks its own files)
    fmt = meta.get("format")
    if fmt not in ("adapter", "full") and not (isinstance(fmt, str) and fmt and isinstance(meta.get("strategy"), str)):
        raise ModelLoadError(
            f"{str(meta_path)!r} has format {meta.get('format')!r}; a model saved by tunekit has format "
            f"'adapter', 'full', or a plugin strategy's own format next to the strategy's name. {fix[0].upper() + fix[1:]}."
        )
    if not (folder / config_name).is_file():
        raise ModelLoadError(f"{str(folder)!r} has a {meta_name} but no {config_name} (the run's configuration); {fix}.")
    needed = {"adapter": "adapter_config.json", "full": "config.json"}.get(meta["format"])
    if needed is not None and not (folder / needed).is_file():
        what = "an adapter" if meta["format"] == "adapter" else "a full model"
        raise ModelLoadError(f"{str(meta_path)!r} says the folder holds {what}, but it has no {needed}; {fix}.")
    return meta


GENERATE_EXTRA_OPTIONS = {"tokenizer", "assistant_tokenizer", "use_model_defaults", "attention_mask", "past_key_values", "position_ids"}
"""Options ``model.generate`` takes beyond its signature and GenerationConfig's fields."""


def check_generate_options(model: Any, options: dict[str, Any]) -> None:
    """A ``ConfigError`` naming each option of ``generate(**options)`` that neither transformers'
    GenerationConfig, ``model.generate`` nor the model's forward takes (with the closest name)."""
    import difflib
    import inspect

    from transformers import GenerationConfig, GenerationMixin

    if not options:
        return
    known = set(GenerationConfig().to_dict()) | GENERATE_EXTRA_OPTIONS
    # GenerationMixin.generate too: a peft model's generate(*args, **kwargs) hides streamer=, stopping_criteria=...
    for fn in (GenerationMixin.generate, getattr(model, "generate", None), getattr(model, "forward", None)):
        try:
            known |= set(inspect.signature(fn).parameters) - {"self", "kwargs", "args"}  # type: ignore[arg-type]
        except (TypeError, ValueError):
            pass
    problems = []
    for name in options:
        if name in known:
            continue
        close = difflib.get_close_matches(name, sorted(known), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else "; see transformers' GenerationConfig for the options"
        problems.append(Problem(f"generate({name}=...)", f"unknown generation option {name!r}{hint}"))
    if problems:
        raise ConfigError(problems)
