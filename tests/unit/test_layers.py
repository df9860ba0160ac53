"""The package's shape: the fronts and the core never import torch, and no module of
`serving` imports itself back through others (lazy imports inside functions count too)."""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import serving

ROOT = Path(serving.__file__).parent
TORCH_FREE = (
    "serving.fronts",
    "serving.core",
    "serving.settings",
    "serving.config",
    "serving.errors",
    "serving.commands.front",  # a --workers N front process: the fronts, the core, uvicorn
    "serving.commands.host",  # its parent
    "serving.commands.lifeline",
    "serving.commands.exposure",  # what serve refuses, run by the parent too
)


def modules() -> dict[str, Path]:
    found = {"serving": ROOT / "__init__.py"}
    for info in pkgutil.walk_packages([str(ROOT)], prefix="serving."):
        spec = info.module_finder.find_spec(info.name, None)  # type: ignore[call-arg]
        if spec is not None and spec.origin:
            found[info.name] = Path(spec.origin)
    return found


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The serving modules `name` imports anywhere in its file."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                out.add(t)
    return out


def test_no_import_cycle() -> None:
    found = modules()
    known = set(found)
    graph = {n: imports_of(n, p, known) for n, p in found.items()}
    # A package's __init__ importing nothing back is the norm here: parents are not edges.
    for n in graph:
        graph[n] = {m for m in graph[n] if not n.startswith(m + ".")}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                cycle = stack[stack.index(m) :] + [m]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if m not in state:
                visit(m)
        stack.pop()
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n)


def test_the_front_package_never_imports_torch() -> None:
    names = sorted(n for n in modules() if n.startswith(TORCH_FREE))
    assert "serving.fronts.app" in names and "serving.core.remote" in names
    assert "serving.commands.front" in names
    code = (
        "import importlib, sys\n"
        f"for n in {names!r}:\n"
        "    importlib.import_module(n)\n"
        "heavy = ('torch', 'fbgemm_gpu', 'torchrec')\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in heavy)\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"imported by the front package: {out.stdout.strip()}"
