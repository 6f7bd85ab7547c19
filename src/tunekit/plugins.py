"""The plugin manager: built-in parts first, then third-party entry points.

Environment variables (read each time the manager is built):

``TUNEKIT_DISABLE_PLUGIN_AUTOLOAD=1``
    load no entry-point plugins at all, only the built-ins.
``TUNEKIT_PLUGINS=name,name``
    load only these entry-point plugins (entry-point or distribution names).
``TUNEKIT_BLOCK_PLUGINS=name,name``
    never load these.
"""

from __future__ import annotations

import importlib
import logging
import os
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import pluggy

from tunekit import hookspecs
from tunekit.errors import PluginError
from tunekit.parts import KINDS
from tunekit.registry import Registry

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "tunekit"
BUILTIN_MODULES = (
    "tunekit.builtin.full",
    "tunekit.builtin.head",
    "tunekit.builtin.lora",
    "tunekit.builtin.quantizers",
    "tunekit.builtin.adapters",
    "tunekit.builtin.objectives",
    "tunekit.builtin.metrics",
    "tunekit.builtin.aliases",
)
BUILTIN_PLUGIN = "tunekit (built-in)"

_REGISTER_HOOKS = {kind: f"register_{kind}s" for kind in KINDS}
_REGISTER_HOOKS["strategy"] = "register_strategies"
_REGISTER_HOOKS["model_alias"] = "register_model_aliases"


@dataclass
class Plugins:
    """The loaded plugin manager and the registries it filled."""

    manager: pluggy.PluginManager
    registries: dict[str, Registry]
    distributions: dict[str, str] = field(default_factory=dict)
    """plugin name -> ``distribution version`` that provided it."""
    failed: dict[str, str] = field(default_factory=dict)
    """entry-point plugins that failed to import -> why."""


def _env_names(var: str) -> set[str] | None:
    value = os.environ.get(var)
    if value is None:
        return None
    return {n.strip() for n in value.split(",") if n.strip()}


def _load_entry_points(pm: pluggy.PluginManager, plugins: Plugins) -> None:
    if os.environ.get("TUNEKIT_DISABLE_PLUGIN_AUTOLOAD", "").lower() in {"1", "true", "yes"}:
        return
    allowed = _env_names("TUNEKIT_PLUGINS")
    blocked = _env_names("TUNEKIT_BLOCK_PLUGINS") or set()
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = ep.dist.name if ep.dist is not None else "?"
        names = {ep.name, dist}
        if names & blocked or (allowed is not None and not names & allowed):
            continue
        version = ep.dist.version if ep.dist is not None else ""
        asked_for = allowed is not None and bool(names & allowed)
        try:
            module = ep.load()
            why = _api_mismatch(module, ep.name, f"{dist} {version}".strip())
        except Exception as exc:  # a broken plugin must not take the others down
            module, why = None, f"failed to import ({type(exc).__name__}: {exc})"
        if why:
            if asked_for:
                raise PluginError(
                    f"plugin {ep.name!r} (distribution {dist!r}) {why}. It was asked for by name in "
                    "TUNEKIT_PLUGINS; fix, upgrade or reinstall it."
                )
            plugins.failed[ep.name] = f"{dist} {version}: {why}".strip()
            log.warning("tunekit: skipping plugin %r (distribution %r): %s", ep.name, dist, why)
            continue
        if pm.is_registered(module) or pm.has_plugin(ep.name):
            continue
        pm.register(module, name=ep.name)
        plugins.distributions[ep.name] = f"{dist} {version}".strip()


def _api_mismatch(module: Any, name: str, dist: str) -> str | None:
    declared = getattr(module, "TUNEKIT_API_VERSION", None)
    if declared == hookspecs.API_VERSION:
        return None
    from tunekit import __version__

    if declared is None:
        return (
            f"declares no plugin API version; add TUNEKIT_API_VERSION = {hookspecs.API_VERSION} to the "
            f"module its entry point names (tunekit {__version__} speaks plugin API {hookspecs.API_VERSION})"
        )
    return (
        f"({dist}) targets plugin API {declared!r}, but tunekit {__version__} speaks plugin API "
        f"{hookspecs.API_VERSION}; install a version of the plugin made for this tunekit"
    )


def _fill_registries(pm: pluggy.PluginManager, plugins: Plugins) -> None:
    for kind, hook_name in _REGISTER_HOOKS.items():
        registry = plugins.registries[kind]
        hook = getattr(pm.hook, hook_name)
        # Call each implementation on its own so a registration knows which plugin made it.
        for impl in hook.get_hookimpls():  # registration order: built-ins first
            plugin = plugins.distributions.get(impl.plugin_name, impl.plugin_name)

            def register(cls: type[Any], _plugin: str = plugin, _registry: Registry = registry) -> None:
                _registry.add(cls, _plugin)

            impl.function(register=register)


def build_plugins() -> Plugins:
    """Build a fresh plugin manager and registries (no caching: see :func:`get_plugins`)."""
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    plugins = Plugins(manager=pm, registries={kind: Registry(kind) for kind in KINDS})
    for module_name in BUILTIN_MODULES:
        pm.register(importlib.import_module(module_name), name=module_name)
        plugins.distributions[module_name] = BUILTIN_PLUGIN
    _load_entry_points(pm, plugins)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        name = pm.get_name(exc.plugin) or repr(exc.plugin)
        raise PluginError(
            f"plugin {plugins.distributions.get(name, name)!r} implements a hook tunekit does not "
            f"have: {exc}. Known hooks: "
            f"{', '.join(sorted(n for n in dir(hookspecs) if n.startswith(('register_', 'on_'))))}."
        ) from exc
    _fill_registries(pm, plugins)
    for registry in plugins.registries.values():
        registry.failed_plugins = plugins.failed
    return plugins


_PLUGINS: Plugins | None = None


def get_plugins() -> Plugins:
    """The process-wide plugins, built on first use."""
    global _PLUGINS
    if _PLUGINS is None:
        _PLUGINS = build_plugins()
    return _PLUGINS


def reset_plugins() -> None:
    """Forget the loaded plugins, so the next use rebuilds them (after installing one, in tests)."""
    global _PLUGINS
    _PLUGINS = None


def get_registry(kind: str) -> Registry:
    """The registry of one kind of part: ``strategy``, ``quantizer``, ``dataset_adapter``,
    ``objective``, ``metric`` or ``model_alias``."""
    return get_plugins().registries[kind]


def register_plugin(plugin: object, name: str | None = None) -> None:
    """Register an in-process plugin object (a module or class with ``@hookimpl`` functions).

    Useful in scripts and tests; packages should use the ``tunekit`` entry-point group.

    >>> class MyPlugin:
    ...     pass
    >>> register_plugin(MyPlugin(), name="my-plugin")
    """
    plugins = get_plugins()
    pm = plugins.manager
    plugin_name = name or getattr(plugin, "__name__", None) or repr(plugin)
    pm.register(plugin, name=plugin_name)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        pm.unregister(plugin)
        raise PluginError(f"plugin {plugin_name!r} implements a hook tunekit does not have: {exc}") from exc
    added: list[tuple[str, str]] = []

    def adder(kind: str) -> Any:
        def register(cls: type[Any]) -> None:
            plugins.registries[kind].add(cls, plugin_name)
            added.append((kind, cls.name))

        return register

    try:
        for kind, hook_name in _REGISTER_HOOKS.items():
            impl_fn = getattr(plugin, hook_name, None)
            if impl_fn is not None:
                impl_fn(register=adder(kind))
    except BaseException:
        for kind, name in added:
            plugins.registries[kind].remove(name)
        pm.unregister(plugin)
        raise
