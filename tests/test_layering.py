"""The package's layering, enforced (docs/extending.md, "How the package is layered").

* the import-linter contract in pyproject.toml (layers: app > plots > bounds | dynamic | _io >
  solvers | generate > queueing | traces | _explain | _replay > ops > core);
* no import cycle between any two modules (function-level imports included);
* no private name (``_x``) imported from another package: what a package needs from another is a
  public name of the package that owns it. Core is the root package's modules
  (``slimjax._instance``, ``_storage``, ``_kernels``, ...): their modules are imported by every
  package, their private names are not;
* another package's names come through its ``__init__`` (``from slimjax.ops import x``, not
  ``from slimjax.ops._gains import x``).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "slimjax"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _package(module: str) -> str:
    """``slimjax.<sub>`` for a module of a subpackage, ``core`` for the root package's modules."""
    parts = module.split(".")
    if len(parts) >= 2 and (PKG / parts[1]).is_dir():
        return parts[1]
    return "core"


def _imports(path: Path):
    """(module, imported name or None, line) of every ``slimjax`` import in a file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module.split(".")[0] == "slimjax":
            for alias in node.names:
                yield node.module, alias.name, node.lineno
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "slimjax":
                    yield alias.name, None, node.lineno


def test_import_linter_contract():
    """The layers contract of pyproject.toml holds (import-linter, function-level imports included).

    In a subprocess: import-linter configures logging, which would switch off the loggers (jax's
    compile log) that other tests in this process read."""
    code = "import sys; from importlinter.cli import lint_imports; sys.exit(lint_imports(config_filename='pyproject.toml'))"
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, f"lint-imports: a layer is broken:\n{res.stdout[-4000:]}\n{res.stderr[-2000:]}"


def test_no_import_cycle():
    """No two slimjax modules import each other, directly or through others."""
    import grimp

    graph = grimp.build_graph("slimjax")
    edges = {m: set(graph.find_modules_directly_imported_by(m)) for m in graph.modules}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for m in sorted(edges):
        if m not in index:
            visit(m)
    assert not cycles, f"import cycles: {cycles}"


def test_no_private_name_across_packages():
    """No ``from slimjax.<other package>... import _private`` and no import of another package's
    private name through a module path (``slimjax.ops._x._name``)."""
    bad = []
    for path in sorted(PKG.rglob("*.py")):
        here = _package(_module_name(path))
        for module, name, line in _imports(path):
            target = module + ("." + name if name and (PKG.joinpath(*module.split(".")[1:], name)).is_dir() else "")
            there = _package(target)
            if there == here:
                continue
            if name is not None and name.startswith("_") and not name.startswith("__") and not (PKG.joinpath(*module.split(".")[1:], name + ".py")).exists():
                bad.append(f"{path.relative_to(ROOT)}:{line}: {module}.{name}")
    assert not bad, "private names imported across packages:\n" + "\n".join(bad)


def test_other_packages_names_come_through_their_init():
    """A package's modules are its own: another package imports ``from slimjax.ops import x``,
    never ``from slimjax.ops._gains import x`` (the ``__init__`` is the package's interface)."""
    bad = []
    for path in sorted(PKG.rglob("*.py")):
        here = _package(_module_name(path))
        for module, _, line in _imports(path):
            parts = module.split(".")
            if len(parts) >= 3 and _package(module) not in (here, "core") and parts[2].startswith("_"):
                bad.append(f"{path.relative_to(ROOT)}:{line}: {module}")
    assert not bad, "modules of another package imported directly:\n" + "\n".join(sorted(set(bad)))


@pytest.mark.parametrize("package", sorted(p.name for p in PKG.iterdir() if (p / "__init__.py").exists() and p.name != "conf"))
def test_package_modules_are_private(package):
    """Every package keeps its modules behind its ``__init__`` (``_x.py``); its public names are
    the ``__init__``'s."""
    public = [p.name for p in (PKG / package).glob("*.py") if not p.name.startswith("_")]
    assert not public, f"slimjax.{package}: public modules {public} (rename to _x.py and export from __init__)"
