"""Typed registries of parts, one per kind, filled by plugins through the ``register_*`` hooks."""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from tunekit.errors import PluginError, Problem, UnknownPartError, join_names


@dataclass(frozen=True)
class Registration:
    """A registered part class and the plugin (distribution) that provided it."""

    kind: str
    name: str
    cls: type[Any]
    plugin: str

    @property
    def description(self) -> str:
        return str(getattr(self.cls, "description", "")).strip()

    @property
    def options_model(self) -> type[BaseModel]:
        return self.cls.Options  # type: ignore[no-any-return]


class Registry:
    """The parts of one kind, by name.

    >>> from tunekit.plugins import get_registry
    >>> "lora" in get_registry("strategy")
    True
    """

    def __init__(self, kind: str, *, load_order: dict[str, int] | None = None):
        self.kind = kind
        self._parts: dict[str, Registration] = {}
        self.failed_plugins: dict[str, str] = {}
        """Entry-point plugins that could not be loaded (name -> why), named in unknown-part errors."""
        self.load_order: dict[str, int] = dict(load_order or {})
        """plugin -> when it was loaded; a duplicate blames the plugin loaded later, whatever
        order pluggy called the hooks in."""

    def add(self, cls: type[Any], plugin: str) -> None:
        name = getattr(cls, "name", None)
        where = f"plugin {plugin!r} registered {self.kind} {cls!r}"
        if not isinstance(name, str) or not name:
            raise PluginError(f"{where} without a `name` class attribute (a non-empty string).")
        options = getattr(cls, "Options", None)
        if not (isinstance(options, type) and issubclass(options, BaseModel)):
            raise PluginError(
                f"{where} whose `Options` is not a pydantic model; "
                "subclass tunekit.parts.PartOptions (use NoOptions when it takes none)."
            )
        if name in self._parts:
            unknown = len(self.load_order)  # a plugin not in the order was added last
            first, second = sorted((self._parts[name].plugin, plugin), key=lambda p: self.load_order.get(p, unknown))
            raise PluginError(
                f"{self.kind} {name!r} is registered twice: by plugin {first!r} "
                f"and by plugin {second!r}. Uninstall one of them, or block one with "
                f"TUNEKIT_BLOCK_PLUGINS={second}."
            )
        self._parts[name] = Registration(self.kind, name, cls, plugin)

    def remove(self, name: str) -> None:
        self._parts.pop(name, None)

    def replace_with(self, other: Registry) -> None:
        """Take ``other``'s parts (a refill after a plugin was added), keeping this object."""
        self._parts = dict(other._parts)
        self.load_order = dict(other.load_order)

    def get(self, name: str, *, location: str | None = None) -> Registration:
        """The registration for ``name``; an unknown name names the installed ones and the closest."""
        try:
            return self._parts[name]
        except KeyError:
            raise UnknownPartError([Problem(location or self.kind, self.unknown_message(name), "unknown_part")]) from None

    def unknown_message(self, name: str) -> str:
        close = difflib.get_close_matches(str(name), list(self._parts), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        failed = "".join(f" Plugin {p!r} could not be loaded and may provide it: {why}." for p, why in self.failed_plugins.items())
        return (
            f"unknown {self.kind.replace('_', ' ')} {name!r}.{hint} Installed: "
            f"{join_names(self._parts)}. A plugin package can add more (see `tunekit plugins`).{failed}"
        )

    def __contains__(self, name: object) -> bool:
        return name in self._parts

    def __iter__(self) -> Iterator[Registration]:
        return iter(self._parts.values())

    def names(self) -> list[str]:
        return list(self._parts)
