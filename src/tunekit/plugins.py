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
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from types import CodeType, FrameType
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
    "tunekit.builtin.preference",
    "tunekit.builtin.grpo",
    "tunekit.builtin.reward_model",
    "tunekit.builtin.metrics",
    "tunekit.builtin.rewards",
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
    from tunekit.version import __version__

    if declared is None:
        return (
            f"declares no plugin API version; add TUNEKIT_API_VERSION = {hookspecs.API_VERSION} to the "
            f"module its entry point names (tunekit {__version__} speaks plugin API {hookspecs.API_VERSION})"
        )
    return (
        f"({dist}) targets plugin API {declared!r}, but tunekit {__version__} speaks plugin API "
        f"{hookspecs.API_VERSION}; install a version of the plugin made for this tunekit"
    )


def _impl_frames(hook: pluggy.HookCaller) -> dict[CodeType, list[pluggy.HookImpl]]:
    """The code objects of a hook's implementations (and of what a decorator wrapped), -> impls."""
    by_code: dict[CodeType, list[pluggy.HookImpl]] = {}
    for impl in hook.get_hookimpls():
        function: Any = impl.function
        seen = set()
        while function is not None and id(function) not in seen:
            seen.add(id(function))
            code = getattr(getattr(function, "__func__", function), "__code__", None)
            if isinstance(code, CodeType):
                by_code.setdefault(code, []).append(impl)
            function = getattr(function, "__wrapped__", None)
    return by_code


def _running_impl(by_code: dict[CodeType, list[pluggy.HookImpl]]) -> pluggy.HookImpl | None:
    """The hook implementation whose frame is nearest on the stack (it, or a helper of it, is
    calling ``register``)."""
    frame: FrameType | None = sys._getframe(2)
    while frame is not None:
        impls = by_code.get(frame.f_code)
        if impls:
            if len(impls) == 1:
                return impls[0]
            # Two instances of one plugin class share the code: tell them apart by ``self``/``cls``.
            first = frame.f_code.co_varnames[0] if frame.f_code.co_argcount else None
            bound = frame.f_locals.get(first) if first else None
            for impl in impls:
                if getattr(impl.function, "__self__", None) is bound:
                    return impl
            return impls[0]
        frame = frame.f_back
    return None


def call_register_hook(
    pm: pluggy.PluginManager, hook_name: str, add: Callable[[Any, str], None], labels: dict[str, str]
) -> None:
    """Call ``pm.hook.<hook_name>(register=...)`` and hand each registered object to ``add(obj, plugin)``.

    The call goes through pluggy, so ``tryfirst``/``trylast``, ``wrapper=True`` and
    ``hookwrapper=True`` implementations work as pluggy documents them. pluggy passes one
    ``register`` to every implementation, so to credit each registration to its plugin
    ``register`` looks up the stack for the frame of the implementation that is running: a
    hook implementation is a Python function (pluggy accepts nothing else), so its code
    object is on the stack whenever it, a helper it calls, or (for a wrapper) its generator
    is running. Unlike wrapping ``impl.function`` (a ``Final`` attribute of pluggy's) or
    calling each plugin alone with ``subset_hook_caller`` (which would leave one plugin's
    wrapper out of another's call), this changes nothing about how pluggy calls the hook.
    ``labels`` maps pluggy's plugin names to the names shown to users.
    """
    hook = getattr(pm.hook, hook_name)
    by_code = _impl_frames(hook)
    calling = True

    def register(obj: Any) -> None:
        impl = _running_impl(by_code) if calling else None
        if impl is None:
            raise PluginError(
                f"`register` of the {hook_name} hook was called {'outside' if calling else 'after'} the hook "
                f"implementation it was given to ({obj!r}). Call it from inside your @hookimpl {hook_name}."
            )
        add(obj, labels.get(impl.plugin_name, impl.plugin_name))

    try:
        hook(register=register)
    finally:
        calling = False


def _fill_registries(pm: pluggy.PluginManager, plugins: Plugins) -> dict[str, Registry]:
    """Fresh registries filled by one pluggy call of each ``register_*`` part hook."""
    order: dict[str, int] = {}
    for i, (name, _) in enumerate(pm.list_name_plugin()):
        order.setdefault(plugins.distributions.get(name, name), i)
    registries = {kind: Registry(kind, load_order=order) for kind in KINDS}
    for kind, hook_name in _REGISTER_HOOKS.items():
        call_register_hook(pm, hook_name, registries[kind].add, plugins.distributions)
    return registries


def build_plugins() -> Plugins:
    """Build a fresh plugin manager and registries (no caching: see :func:`get_plugins`)."""
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    plugins = Plugins(manager=pm, registries={kind: Registry(kind) for kind in KINDS})
    # pluggy calls the plugin registered last first: registering the built-ins in reverse makes
    # them register their parts in the order listed. Entry points, loaded later, come before them.
    for module_name in reversed(BUILTIN_MODULES):
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
    plugins.registries = _fill_registries(pm, plugins)
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


def trainer_callbacks() -> list[Any]:
    """The ``transformers.TrainerCallback`` objects plugins add to a fit (``register_trainer_callbacks``)."""
    from transformers import TrainerCallback

    plugins = get_plugins()
    callbacks: list[Any] = []

    def add(callback: Any, plugin: str) -> None:
        is_class = isinstance(callback, type)
        if not (issubclass(callback, TrainerCallback) if is_class else isinstance(callback, TrainerCallback)):
            raise PluginError(
                f"plugin {plugin!r} registered {callback!r} as a trainer callback; register a "
                "transformers.TrainerCallback instance or subclass."
            )
        callbacks.append(callback)

    call_register_hook(plugins.manager, "register_trainer_callbacks", add, plugins.distributions)
    return callbacks


def get_registry(kind: str) -> Registry:
    """The registry of one kind of part: ``strategy``, ``quantizer``, ``dataset_adapter``,
    ``objective``, ``metric``, ``reward`` or ``model_alias``."""
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
    if pm.has_plugin(plugin_name) or pm.is_registered(plugin):
        raise PluginError(
            f"a plugin named {plugin_name!r} (or this very object) is already registered; give another name."
        )
    pm.register(plugin, name=plugin_name)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        pm.unregister(plugin)
        raise PluginError(f"plugin {plugin_name!r} implements a hook tunekit does not have: {exc}") from exc
    # Every part hook is called again, through pluggy, with the new plugin among the others: its
    # tryfirst/trylast and everyone's wrappers apply to it as they would to an entry point.
    try:
        registries = _fill_registries(pm, plugins)
    except BaseException:
        pm.unregister(plugin)  # the registries are left as they were
        raise
    for kind, registry in registries.items():
        plugins.registries[kind].replace_with(registry)
