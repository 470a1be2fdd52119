"""The package's layout in numbers: lines per module, the longest functions, import cycles between
modules (function-level imports included: a late import is still a dependency) and private names
imported across modules. tests/test_layout.py holds the limits; run this to see where they stand.

    python scripts/layout.py [ROOT]    # ROOT: a checkout (default: this one)
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGES = ("trainer", "grid", "analysis")


def modules(root: Path) -> dict[str, Path]:
    """'trainer.config' -> its file, for every module of the three packages."""
    return {f"{p}.{f.stem}": f for p in PACKAGES for f in sorted((root / p).glob("*.py"))}


def _target(mod: str, node: ast.ImportFrom) -> list[str]:
    """The modules an import statement reaches (relative or scaling_grid.-absolute), as 'pkg.mod'."""
    pkg = mod.split(".")[0]
    if node.level:
        base = pkg if node.level == 1 else ""
        name = f"{base}.{node.module}" if node.module else base
    elif node.module and node.module.startswith("scaling_grid."):
        name = node.module.removeprefix("scaling_grid.")
    elif node.module == "scaling_grid":
        name = ""
    else:
        return []
    if name in PACKAGES or name == "":  # `from . import x` / `from scaling_grid.grid import x`: x is a module
        return [f"{name}.{a.name}" if name else a.name for a in node.names]
    return [name]


def imports(root: Path) -> dict[str, set[str]]:
    """Module -> the package modules it imports (anywhere in its body)."""
    mods = modules(root)
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, f in mods.items():
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom):
                graph[m] |= {t for t in _target(m, node) if t in mods and t != m}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def private_imports(root: Path) -> list[str]:
    """'a.b imports _x from c.d' for every underscore name imported from another package module."""
    mods = modules(root)
    found = []
    for m, f in mods.items():
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and _target(m, node):
                targets = _target(m, node)
                for a in node.names:
                    if a.name.startswith("_") and not a.name.startswith("__") and targets[0] in mods:
                        found.append(f"{m} imports {a.name} from {targets[0]}")
    return found


def functions(root: Path) -> list[tuple[int, str]]:
    """(lines, 'module.function') for every function and method, longest first."""
    out = []
    for m, f in modules(root).items():
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                out.append((node.end_lineno - node.lineno + 1, f"{m}.{node.name}"))  # type: ignore[operator]
    return sorted(out, reverse=True)


def sizes(root: Path) -> list[tuple[int, str]]:
    return sorted(((len(f.read_text().splitlines()), m) for m, f in modules(root).items()), reverse=True)


def main(root: Path) -> None:
    s = sizes(root)
    print(f"{len(s)} modules, {sum(n for n, _ in s)} lines; over 400: "
          + (", ".join(f"{m} {n}" for n, m in s if n > 400) or "none"))
    fs = functions(root)
    print("functions over 80 lines: " + (", ".join(f"{m} {n}" for n, m in fs if n > 80) or "none"))
    print("longest: " + ", ".join(f"{m} {n}" for n, m in fs[:5]))
    print("import cycles: " + ("; ".join(" <-> ".join(c) for c in cycles(imports(root))) or "none"))
    print("private names imported across modules: " + ("; ".join(private_imports(root)) or "none"))


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent)
