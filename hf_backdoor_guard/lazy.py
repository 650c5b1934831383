"""Lazy re-exports: a package lists its public names and imports the module defining each on first use, so that
importing the package (and starting the command line) loads no torch, transformers or diffusers."""

from __future__ import annotations

import importlib


def lazy_exports(package: str, namespace: dict, exports: dict[str, str]):
    """The module-level ``__getattr__`` of ``package``: ``exports`` maps a public name to the sub-module of
    ``package`` defining it; the value is imported on first access and kept in ``namespace`` (the package's
    ``globals()``)."""

    def __getattr__(name: str):
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{module}"), name)
        namespace[name] = value
        return value

    return __getattr__
