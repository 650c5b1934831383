"""One registry per extension point: attacks, metrics, diffusers families, defenses.

A new attack (metric, family, defense) is one class or function plus one
registration; the CLI choices, the demo, model cards and docs tables read the
registry instead of keeping their own lists::

    @ATTACKS.register
    class MyAttack(Attack):
        name = "my_attack"
        ...
"""

from __future__ import annotations

from typing import Any, Callable, Iterator


class Registry:
    """Names mapped to classes or functions, in registration order.

    ``registry[name]`` raises ``ValueError`` listing the registered names, so an
    unknown name from a user (a CLI flag, a config key) gets a message that says
    what would have worked.
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Any] = {}

    def register(self, entry: Any = None, *, name: str | None = None) -> Any:
        """Register ``entry`` under ``name`` (default: its ``name`` attribute); usable as a decorator.

        Re-registering a name replaces the entry only when it is the same object's
        qualified name (a module reloaded); any other clash is an error, so two
        extensions cannot silently shadow each other.
        """
        if entry is None:
            return lambda actual: self.register(actual, name=name)
        key = name if name is not None else getattr(entry, "name", None)
        if not isinstance(key, str) or not key:
            raise ValueError(f"A {self.kind} needs a non-empty string name to be registered, got {key!r}.")
        previous = self._entries.get(key)
        if previous is not None and _qualname(previous) != _qualname(entry):
            raise ValueError(f"The {self.kind} name '{key}' is already registered to {_qualname(previous)}.")
        self._entries[key] = entry
        return entry

    def unregister(self, name: str) -> None:
        """Remove ``name`` (tests register toy entries and remove them again)."""
        self._entries.pop(name, None)

    def names(self) -> list[str]:
        """Registered names, in registration order."""
        return list(self._entries)

    def items(self):
        return self._entries.items()

    def __getitem__(self, name: str) -> Any:
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise ValueError(f"Unknown {self.kind} {name!r}; choose one of {self.names()}.") from None

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"


def _qualname(entry: Any) -> str:
    target: Callable | Any = entry
    return f"{getattr(target, '__module__', '?')}.{getattr(target, '__qualname__', repr(target))}"
