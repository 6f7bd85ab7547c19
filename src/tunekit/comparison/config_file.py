"""``tunekit compare compare.yaml``: a comparison described in a YAML/TOML/JSON file.

The file holds the shared TuneConfig fields (``model``, ``training``, ``data``...) plus the
comparison's own keys::

    model: ./my-model
    candidates: [full, head, lora, {name: lora-r32, strategy: {name: lora, rank: 32}}]
    data: {train: train.jsonl, eval: eval.jsonl}   # relative to this file
    budget: {max_steps: 50}
    metrics: [loss, perplexity]
    seeds: [0, 1]
    output_dir: compare-report                     # the report directory
    base: true                                     # a first row: the untrained model, evaluated
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tunekit.comparison.api import PLOT_FILE, compare
from tunekit.comparison.report import CompareReport
from tunekit.errors import ConfigError, Problem

COMPARE_KEYS = (
    "candidates", "budget", "metrics", "seeds", "output_dir", "timeout_s", "keep_models", "plugins", "base",
)
"""The comparison's own keys a file may set; ``overwrite`` is not one (read_config_file refuses it: --overwrite)."""


def compare_from_file(path: str | os.PathLike[str], **overrides: Any) -> CompareReport:
    """Run the comparison a config file describes; ``overrides`` replace its keys (``output_dir=...``)."""
    from tunekit.config import read_config_file

    path = Path(path)
    data = {**read_config_file(path), **overrides}
    if "candidates" not in data:
        raise ConfigError([Problem(f"{path}: candidates", "is required: a list such as [full, head, lora]")])
    section = data.get("data")
    if isinstance(section, dict):  # data files are relative to the config file, not the cwd
        for key in ("train", "eval"):
            value = section.get(key)
            if isinstance(value, str) and not Path(value).is_absolute() and (path.parent / value).exists():
                section[key] = str(path.parent / value)
    options = {key: data.pop(key) for key in COMPARE_KEYS if key in data}
    if "plugins" in options:
        options["plugins"] = installed_plugin_references(options["plugins"], where=f"{path}: plugins")
    return compare(**options, **data)


def installed_plugin_references(names: Any, *, where: str) -> list[str]:
    """The import references of installed tunekit plugins named in a config file.

    A config file may only name plugins that are installed (entry points in the ``tunekit``
    group, as ``tunekit plugins`` lists them): reading a file must never import an arbitrary
    module from the path. Python callers pass import paths to ``compare(plugins=...)`` directly.
    """
    from importlib import metadata

    from tunekit.plugins import ENTRY_POINT_GROUP

    if isinstance(names, str):
        names = [names]
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        raise ConfigError([Problem(where, "must be a list of installed plugin names, e.g. [tunekit-bitfit]")])
    installed = {ep.name: ep.value for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}
    unknown = [n for n in names if n not in installed]
    if unknown:
        listed = ", ".join(sorted(installed)) or "none"
        raise ConfigError([Problem(where, (
            f"names {', '.join(map(repr, unknown))}, which is not an installed tunekit plugin (installed: {listed}). "
            "A config file can only name installed plugins (pip install the package); to use a module that is "
            "not installed, call compare(plugins=['module:object']) from Python."
        ))])
    return [installed[n] for n in names]


def run_cli(config: str, *, output_dir: str | None = None, overwrite: bool = False, metric: str | None = None,
            plot: bool = True) -> int:
    """What ``tunekit compare`` does: run, print the table, write the report directory (with the plot)."""
    overrides: dict[str, Any] = {"overwrite": overwrite}
    if output_dir is not None:
        overrides["output_dir"] = output_dir
    report = compare_from_file(config, **overrides)
    out = Path(report.output_dir)
    written = ["report.json", "report.md", "runs/"]
    if plot and any(c.ok_runs for c in report.candidates):
        from tunekit.run_directory import record_entries

        report.plot(out / PLOT_FILE, metric=metric)
        record_entries(out, PLOT_FILE)
        written.insert(2, PLOT_FILE)
    print(report.describe())
    print()
    print(report.to_markdown(), end="")
    print(f"\nreport written to {out} ({', '.join(written)})")
    return 0 if any(c.ok_runs for c in report.candidates) else 1
