"""The benchmark layer sits on top: no module of the library imports it (only the command line dispatches to it)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "hf_backdoor_guard"


def _imported(path: Path) -> set[str]:
    """Every module ``path`` imports, absolute (relative imports resolved against its package)."""
    package = path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = list(package[: len(package) - node.level + 1]) if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def test_no_library_module_imports_the_benchmark_layer():
    layer = "hf_backdoor_guard.benchmark"
    offenders = {}
    for path in PACKAGE.rglob("*.py"):
        if path.is_relative_to(PACKAGE / "benchmark") or path == PACKAGE / "cli.py":
            continue
        wrong = sorted(name for name in _imported(path) if name == layer or name.startswith(layer + "."))
        if wrong:
            offenders[str(path.relative_to(PACKAGE))] = wrong
    assert offenders == {}
    # the check can fail: the benchmark layer's own modules do import it
    assert any(name.startswith(layer) for name in _imported(PACKAGE / "benchmark" / "demo.py"))
