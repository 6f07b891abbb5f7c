"""Layering: every import inside ``dtlsvpn/`` points down the package order, and none cycles.

The order (issue 9, "Arrows one way"): the sans-I/O core at the bottom, the shell on top::

    errors    → nothing          fileutil → errors
    wire      → errors           config   → errors, wire, crypto, fileutil
    crypto    → errors, wire     daemon   → everything above but cli
    dtls      → errors, wire, crypto
    vpn       → errors, wire, dtls
    cli       → everything       dtlsvpn/__init__, dtlsvpn/__main__ → cli

The walker reads every module with :mod:`ast` and takes every ``import`` and ``from``
statement, wherever it is: at the top, inside a function (lazy imports), under
``if TYPE_CHECKING:``.  Each is resolved to the module it loads (``from dtlsvpn.dtls
import events`` is the module ``dtlsvpn.dtls.events``; ``from dtlsvpn.config import
Config`` is the package ``dtlsvpn.config``), relative imports included.  Importing a
submodule also runs its package's ``__init__``; that implicit step is not an edge.

It fails on (1) an arrow that the table does not allow, (2) a cycle between packages,
(3) a cycle between the modules of one package, naming the module, the line and the
imported name of every import involved.  ``test_checker_finds_planted_imports`` runs
the same checker on a synthetic tree, so this test can fail.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

TOP = "dtlsvpn"
REPO = Path(__file__).resolve().parents[2]

_CORE = {"errors", "wire", "crypto", "dtls", "vpn", "config", "fileutil"}
LAYERS: dict[str, frozenset[str]] = {
    "errors": frozenset(),
    "wire": frozenset({"errors"}),
    "crypto": frozenset({"errors", "wire"}),
    "dtls": frozenset({"errors", "wire", "crypto"}),
    "vpn": frozenset({"errors", "wire", "dtls"}),
    "config": frozenset({"errors", "wire", "crypto", "fileutil"}),
    "fileutil": frozenset({"errors"}),
    "daemon": frozenset(_CORE),
    "cli": frozenset(_CORE | {"daemon", TOP}),  # TOP: dtlsvpn/__init__ (__version__)
    TOP: frozenset({"cli"}),
    "__main__": frozenset({"cli"}),
}

# Imports known to break the order, as (importing module, imported module), each with
# the reason it is still there.  Kept only until the branch that owns the module is
# merged; the lead empties it then.  Empty: nothing in dtlsvpn/ breaks the order.
KNOWN_VIOLATIONS: frozenset[tuple[str, str]] = frozenset()


@dataclass(frozen=True)
class Import:
    """One imported name: who imports it, where, and the module that loads."""

    module: str
    line: int
    name: str
    target: str

    def __str__(self) -> str:
        return f"{self.module}:{self.line} imports {self.name} ({self.target})"


# --- the walker ---------------------------------------------------------------------


def module_files(root: Path, top: str = TOP) -> dict[str, Path]:
    """Dotted module name → file, for every ``.py`` under ``root/top``."""
    out: dict[str, Path] = {}
    for path in sorted((root / top).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _resolve(dotted: str, modules: Mapping[str, Path]) -> str:
    """The longest prefix of ``dotted`` that is a module (``a.b.Name`` → ``a.b``)."""
    parts = dotted.split(".")
    while parts and ".".join(parts) not in modules:
        parts.pop()
    return ".".join(parts) or dotted


def _base(module: str, path: Path, level: int, name: str | None) -> str:
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for _ in range(level - 1):
        package = package.rpartition(".")[0]
    return f"{package}.{name}" if name else package


def _imports_of(module: str, path: Path, modules: Mapping[str, Path],
                top: str) -> Iterable[Import]:
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(module, node.lineno, alias.name, _resolve(alias.name, modules))
        elif isinstance(node, ast.ImportFrom):
            base = (_base(module, path, node.level, node.module) if node.level
                    else node.module or "")
            if base != top and not base.startswith(top + "."):
                continue
            for alias in node.names:
                full = base if alias.name == "*" else f"{base}.{alias.name}"
                yield Import(module, node.lineno, full, _resolve(full, modules))


def imports(root: Path, top: str = TOP) -> list[Import]:
    """Every import of a module of ``top`` by a module of ``top``."""
    modules = module_files(root, top)
    return [imp for module, path in modules.items()
            for imp in _imports_of(module, path, modules, top)
            if imp.target == top or imp.target.startswith(top + ".")]


def unit(module: str) -> str:
    """The layer a module belongs to: ``dtlsvpn.dtls.endpoint`` → ``dtls``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


# --- the checks -----------------------------------------------------------------------


def arrow_problems(found: Iterable[Import], layers: Mapping[str, frozenset[str]]) -> list[str]:
    """Imports from one layer into another that the table does not allow."""
    problems = []
    for imp in found:
        src, dst = unit(imp.module), unit(imp.target)
        if src not in layers:
            problems.append(f"{imp.module}: {src!r} is not in the layer table")
        elif src != dst and dst not in layers[src]:
            problems.append(f"{imp}: {src} may not import {dst}")
    return problems


def _cycles(edges: Mapping[str, Mapping[str, Import]]) -> list[list[Import]]:
    """One cycle for every strongly connected set of nodes (Tarjan), as its imports."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges.get(node, {})):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            components.append(component)

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return [_cycle_through(sorted(c), edges) for c in components
            if len(c) > 1 or c[0] in edges.get(c[0], {})]


def _cycle_through(component: list[str], edges: Mapping[str, Mapping[str, Import]]) -> list[Import]:
    """A shortest path from the component's first node back to it, inside the component."""
    start, members = component[0], set(component)
    paths: dict[str, list[Import]] = {start: []}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for nxt, imp in sorted(edges.get(node, {}).items()):
                if nxt == start:
                    return [*paths[node], imp]
                if nxt in members and nxt not in paths:
                    paths[nxt] = [*paths[node], imp]
                    following.append(nxt)
        frontier = following
    raise AssertionError(f"no cycle through {start}")


def cycle_problems(found: Iterable[Import]) -> list[str]:
    """Cycles between layers, and between the modules of one layer."""
    between: dict[str, dict[str, Import]] = {}
    within: dict[str, dict[str, Import]] = {}
    for imp in found:
        src, dst = unit(imp.module), unit(imp.target)
        if src != dst:
            between.setdefault(src, {}).setdefault(dst, imp)
        elif imp.module != imp.target:
            within.setdefault(imp.module, {}).setdefault(imp.target, imp)
    problems = []
    for kind, edges in (("packages", between), ("modules", within)):
        for cycle in _cycles(edges):
            problems.append(f"import cycle between {kind}: " + "; ".join(map(str, cycle)))
    return problems


def check(root: Path, layers: Mapping[str, frozenset[str]] = LAYERS,
          known: frozenset[tuple[str, str]] = frozenset(), top: str = TOP) -> list[str]:
    """Every layering problem of the tree ``root/top``, known violations left out."""
    found = [imp for imp in imports(root, top) if (imp.module, imp.target) not in known]
    return arrow_problems(found, layers) + cycle_problems(found)


# --- the tests --------------------------------------------------------------------------


def test_imports_follow_the_layer_order_without_cycles() -> None:
    problems = check(REPO, known=KNOWN_VIOLATIONS)
    assert not problems, "\n".join(problems)


def test_known_violations_still_exist() -> None:
    """An entry of the allow-list that no longer matches an import must go."""
    found = {(imp.module, imp.target) for imp in imports(REPO)}
    assert not KNOWN_VIOLATIONS - found, sorted(KNOWN_VIOLATIONS - found)


def test_walker_sees_the_whole_package() -> None:
    modules = module_files(REPO)
    assert {unit(m) for m in modules} == set(LAYERS)
    found = imports(REPO)
    assert any(imp.module == "dtlsvpn.__main__" and imp.target == "dtlsvpn.cli.main"
               for imp in found)


def _tree(root: Path, files: Mapping[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_checker_finds_planted_imports(tmp_path: Path) -> None:
    root = _tree(tmp_path, {
        "dtlsvpn/__init__.py": "",
        "dtlsvpn/errors.py": "def late():\n    from dtlsvpn.wire import codec\n",
        "dtlsvpn/wire/__init__.py": "",
        "dtlsvpn/wire/codec.py": "from dtlsvpn.errors import DecodeError\n",
        "dtlsvpn/crypto/__init__.py": "",
        "dtlsvpn/crypto/a.py": ("from typing import TYPE_CHECKING\n"
                                "if TYPE_CHECKING:\n    from dtlsvpn.dtls.x import Y\n"
                                "from . import b\n"),
        "dtlsvpn/crypto/b.py": "import dtlsvpn.crypto.a\n",
        "dtlsvpn/dtls/__init__.py": "",
        "dtlsvpn/dtls/x.py": "from ..crypto.a import Z\n",
    })
    problems = check(root)
    assert "dtlsvpn.errors:2 imports dtlsvpn.wire.codec (dtlsvpn.wire.codec): errors may " \
           "not import wire" in problems
    assert "dtlsvpn.crypto.a:3 imports dtlsvpn.dtls.x.Y (dtlsvpn.dtls.x): crypto may " \
           "not import dtls" in problems
    assert len([p for p in problems if "may not import" in p]) == 2
    cycles = [p for p in problems if p.startswith("import cycle")]
    assert any(p.startswith("import cycle between packages:") and "dtlsvpn.errors:2" in p
               and "dtlsvpn.wire.codec:1" in p for p in cycles)
    assert any(p.startswith("import cycle between packages:") and "dtlsvpn.dtls.x:1" in p
               for p in cycles)
    assert ("import cycle between modules: dtlsvpn.crypto.a:4 imports dtlsvpn.crypto.b "
            "(dtlsvpn.crypto.b); dtlsvpn.crypto.b:1 imports dtlsvpn.crypto.a "
            "(dtlsvpn.crypto.a)") in cycles
    assert len(cycles) == 3
    # The allow-list silences exactly the pairs it names.
    known = frozenset({("dtlsvpn.errors", "dtlsvpn.wire.codec"),
                       ("dtlsvpn.crypto.a", "dtlsvpn.dtls.x"),
                       ("dtlsvpn.crypto.b", "dtlsvpn.crypto.a")})
    assert check(root, known=known) == []


def test_checker_names_modules_outside_the_table(tmp_path: Path) -> None:
    root = _tree(tmp_path, {
        "dtlsvpn/__init__.py": "",
        "dtlsvpn/errors.py": "",
        "dtlsvpn/extra.py": "from dtlsvpn import errors\n",
    })
    assert check(root) == ["dtlsvpn.extra: 'extra' is not in the layer table"]
