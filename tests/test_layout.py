"""The package's shape: no import circles, the core never imports the API layer, modules stay
small enough to read. Every import counts, also those inside functions: a lazy import that
closes a circle is still a circle a reader has to untangle."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = {
    "mlp": REPO / "mlp",
    "mlp_magics": REPO / "mlp_magics",
    "mlp_spawner": REPO / "spawner" / "mlp_spawner",
    "vlps": REPO / "vlps",
}
MAX_LINES = 500
# A module may be longer when its docstring says why, in a sentence starting with this.
LONG_REASON = "Longer than 500 lines because"


def modules() -> Iterator[tuple[str, Path]]:
    for package, root in PACKAGES.items():
        for path in sorted(root.rglob("*.py")):
            if "migrations" in path.parts:
                continue
            rel = path.relative_to(root).with_suffix("")
            parts = [package, *rel.parts]
            if parts[-1] == "__init__":
                parts.pop()
            yield ".".join(parts), path


MODULES = dict(modules())


def imports_of(name: str, path: Path) -> set[str]:
    """The project modules `name` imports (resolved to the longest known module name)."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            # `from pkg import sub` depends on the submodule; `from mod import name` on mod.
            targets = [
                f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names
            ]
        for target in targets:
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            # Every module imports its parent packages; that is Python, not a design circle.
            if target and target != name and not name.startswith(target + "."):
                found.add(target)
    return found


GRAPH = {name: imports_of(name, path) for name, path in MODULES.items()}


def find_cycle() -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(GRAPH[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for start in sorted(GRAPH):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_no_import_circles() -> None:
    cycle = find_cycle()
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


def test_the_checker_sees_a_circle() -> None:
    GRAPH["mlp.core.states"].add("mlp.core.manager")
    try:
        assert find_cycle() is not None
    finally:
        GRAPH["mlp.core.states"].discard("mlp.core.manager")


@pytest.mark.parametrize("layer", ["mlp.core", "mlp.store", "mlp.backends", "mlp.scheduling"])
def test_lower_layers_do_not_import_the_api(layer: str) -> None:
    offenders = {
        f"{name} -> {dep}"
        for name, deps in GRAPH.items()
        if name == layer or name.startswith(layer + ".")
        for dep in deps
        if dep == "mlp.api" or dep.startswith("mlp.api.") or dep == "mlp.app"
    }
    assert not offenders, f"{layer} must not depend on the API layer: {sorted(offenders)}"


def test_scheduling_core_is_pure() -> None:
    """mlp.scheduling is policy without I/O: it imports nothing else of the platform."""
    offenders = {
        f"{name} -> {dep}"
        for name, deps in GRAPH.items()
        if name.startswith("mlp.scheduling")
        for dep in deps
        if not dep.startswith("mlp.scheduling")
    }
    assert not offenders, sorted(offenders)


def test_modules_stay_readable() -> None:
    too_long = []
    for name, path in MODULES.items():
        lines = path.read_text().count("\n")
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        if lines > MAX_LINES and LONG_REASON not in doc:
            too_long.append(f"{name} ({lines} lines)")
    assert not too_long, (
        f"modules over {MAX_LINES} lines without '{LONG_REASON} ...' in their docstring: "
        + ", ".join(too_long)
    )
