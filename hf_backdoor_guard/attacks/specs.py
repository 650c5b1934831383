"""Attack specs: an attack and its options written as one value, for config files and command lines.

A spec is any of::

    badnets                                   # a registered name (ATTACKS.names())
    badnets:trigger=white,size=3              # name:key=value,... (values read as int, float, bool or text)
    {"name": "blended", "ratio": 0.2}         # JSON text, or a mapping in YAML
    {name: blended, ratio: 0.2}

:func:`attack_from_spec` builds the attack; :func:`attack_keys` gives stable names for
a list of specs (the keys of a metrics file).
"""

from __future__ import annotations

import json
from typing import Any


def _scalar(text: str) -> Any:
    """'3' -> 3, '0.2' -> 0.2, 'true' -> True, 'none' -> None; anything else stays text ('#ff0000' included)."""
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_attack_spec(spec: Any) -> tuple[str, dict[str, Any]]:
    """``(name, options)`` of a spec (see the module docstring); ValueError naming the problem."""
    from . import ATTACKS

    if isinstance(spec, str) and spec.strip().startswith("{"):
        try:
            spec = json.loads(spec)
        except json.JSONDecodeError as error:
            raise ValueError(f"attack spec {spec!r} is not valid JSON ({error}).") from error
    if isinstance(spec, dict):
        options = dict(spec)
        name = options.pop("name", None)
        if not isinstance(name, str):
            raise ValueError(f"attack mapping {spec!r} needs a 'name' (one of {ATTACKS.names()}).")
    elif isinstance(spec, str):
        name, _, rest = spec.strip().partition(":")
        options = {}
        for item in filter(None, (part.strip() for part in rest.split(","))):
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise ValueError(f"attack spec {spec!r}: options must be 'key=value', got {item!r}.")
            options[key.strip()] = _scalar(value.strip())
    else:
        raise ValueError(f"attack must be a name, 'name:key=value,...' or a mapping, got {spec!r}.")
    name = name.strip().lower()
    ATTACKS[name]  # ValueError listing the registered attacks
    return name, options


def attack_from_spec(spec: Any):
    """The ``Attack`` a spec describes; an option the attack does not take is a ValueError naming it."""
    from . import attack_from_name

    name, options = parse_attack_spec(spec)
    try:
        return attack_from_name(name, **options)
    except TypeError as error:
        raise ValueError(f"attack {name}: {error}") from error


def attack_label(spec: Any) -> str:
    """A short stable name for a spec: 'badnets', or 'badnets:size=9,trigger=white' with options (sorted)."""
    name, options = parse_attack_spec(spec)
    if not options:
        return name
    return name + ":" + ",".join(f"{key}={options[key]}" for key in sorted(options))


def attack_keys(specs: list) -> list[str]:
    """Keys for a list of specs: the attack's name, or its full label where two specs share a name."""
    names = [parse_attack_spec(spec)[0] for spec in specs]
    keys = [name if names.count(name) == 1 else attack_label(spec) for name, spec in zip(names, specs)]
    if len(set(keys)) != len(keys):
        raise ValueError(f"The same attack is listed twice: {specs!r}.")
    return keys


__all__ = ["attack_from_spec", "attack_keys", "attack_label", "parse_attack_spec"]
