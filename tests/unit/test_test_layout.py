"""The test tree's layout: no test module imports another test module.

What tests share lives in harness and support modules (``tests/sim/harness.py``,
``tests/netns/harness.py``, ``tests/interop/capture.py``, ``tests/support/``...), so
a test module can be read, moved or deleted without breaking another one.
"""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def _is_test_module(dotted: str) -> bool:
    parts = dotted.split(".")
    return parts[0] == "tests" and parts[-1].startswith("test_")


def imported_modules(tree: ast.AST) -> list[str]:
    """Every absolute module an ``import`` or ``from ... import`` names (and the
    ``from X import name`` targets, which may be modules themselves)."""
    out: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append(node.module)
            out += [f"{node.module}.{alias.name}" for alias in node.names]
    return out


def test_module_imports_found() -> None:
    tree = ast.parse("import tests.sim.test_a\nfrom tests.netns import test_b\n"
                     "from tests.sim.harness import Simulator\n")
    assert [m for m in imported_modules(tree) if _is_test_module(m)] == [
        "tests.sim.test_a", "tests.netns.test_b"]


def test_no_test_module_imports_another_test_module() -> None:
    offenders = []
    for path in sorted(TESTS.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for module in imported_modules(tree):
            if _is_test_module(module):
                offenders.append(f"{path.relative_to(TESTS.parent)} imports {module}")
    assert not offenders, "\n".join(offenders)
