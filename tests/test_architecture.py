"""The import direction of DESIGN.md section 1, a pure core, and no import cycle inside a
package.

errors <- events <- core <- store <- tools | llm | projections <- agent, actors <- runtime <- cli
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "foldloop"

LAYERS = {
    "errors": 0,
    "_arguments": 1,
    "events": 1,
    "core": 2,
    "store": 3,
    "tools": 4,
    "llm": 4,
    "projections": 4,
    "_agent": 5,
    "_approvals": 4,
    "actors": 6,
    "runtime": 7,
    "cli": 8,
}
SIBLINGS = {"tools", "llm", "projections"}
PURE = {"events", "core"}
BANNED_IN_PURE = {
    "time",
    "random",
    "uuid",
    "threading",
    "os",
    "lmdb",
    "pykka",
    "structlog",
    "secrets",
    "socket",
    "subprocess",
    "asyncio",
}


def modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py"))


def component(path: Path) -> str | None:
    rel = path.relative_to(PACKAGE)
    name = rel.parts[0].removesuffix(".py")
    return name if name in LAYERS else None


def imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down_the_layers(path: Path) -> None:
    me = component(path)
    if me is None:
        return
    for name in imports(path):
        parts = name.split(".")
        if parts[0] != "foldloop" or len(parts) < 2 or parts[1] not in LAYERS:
            continue
        other = parts[1]
        if other == me:
            continue
        assert LAYERS[other] < LAYERS[me] or (other == me), (
            f"{path.relative_to(PACKAGE)} ({me}) imports {name} ({other}): imports must point "
            "down the layers of DESIGN.md section 1"
        )
        assert not (me in SIBLINGS and other in SIBLINGS), f"{me} must not import sibling {other}"


@pytest.mark.parametrize(
    "path",
    [p for p in modules() if component(p) in PURE],
    ids=lambda p: str(p.relative_to(PACKAGE)),
)
def test_events_and_core_are_pure(path: Path) -> None:
    for name in imports(path):
        assert name.split(".")[0] not in BANNED_IN_PURE, (
            f"{path.relative_to(PACKAGE)} imports {name}: events/ and core/ do no I/O, read no "
            "clock, draw no randomness and start no threads"
        )


KNOWN_CYCLES: dict[str, frozenset[str]] = {
    # None left. An entry names a cycle being taken apart and its modules, e.g.
    # "actors: a run actor calls its system back":
    #     frozenset({"foldloop.actors._run_actor", "foldloop.actors._system"}),
}
"""Import cycles tolerated for now, named; the list may only shrink (an entry whose cycle
is gone fails the test until it is removed)."""


def module_name(path: Path, root: Path = PACKAGE.parent) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def module_imports(path: Path, me: str, known: set[str]) -> set[str]:
    """The modules of ``known`` that module ``me`` (at ``path``) imports, anywhere in it
    (TYPE_CHECKING blocks and function bodies too: such a cycle is still two modules that
    need each other)."""
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*up, *([node.module] if node.module else [])])
            for alias in node.names:  # ``from pkg import module`` imports that module
                child = f"{base}.{alias.name}"
                found.add(child if child in known else base)
    return {name for name in found if name in known and name != me}


def import_cycles(paths: list[Path], root: Path = PACKAGE.parent) -> set[frozenset[str]]:
    """The strongly connected groups of two or more of these modules: import cycles."""
    names = {module_name(p, root): p for p in paths}
    graph = {name: module_imports(path, name, set(names)) for name, path in names.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: set[frozenset[str]] = set()

    def visit(node: str) -> None:  # Tarjan's algorithm
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in sorted(graph[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            group = {stack.pop()}
            while node not in group:
                group.add(stack.pop())
            if len(group) > 1:
                cycles.add(frozenset(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


PACKAGES = sorted({p.parent for p in modules()})


@pytest.mark.parametrize("package", PACKAGES, ids=module_name)
def test_no_package_has_an_import_cycle_among_its_own_modules(package: Path) -> None:
    name = module_name(package)
    known = {c for c in KNOWN_CYCLES.values() if min(c).rpartition(".")[0] == name}
    found = import_cycles(sorted(package.glob("*.py")))
    new = sorted(sorted(c) for c in found - known)
    assert not new, (
        f"import cycles among the modules of {name}: {new}; give what both need a module "
        "of its own, or hand a collaborator what it uses (the objects, a Protocol) instead "
        "of letting it import its owner"
    )
    gone = [why for why, c in KNOWN_CYCLES.items() if c in known - found]
    assert not gone, f"no longer import cycles, remove them from KNOWN_CYCLES: {gone}"


def test_the_cycle_check_would_catch_a_cycle(tmp_path: Path) -> None:
    package = tmp_path / "foldloop"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from foldloop.b import thing\n")
    (package / "b.py").write_text("if 0:\n    from . import a\n")
    (package / "c.py").write_text("from foldloop.a import thing\n")
    found = import_cycles(sorted(package.glob("*.py")), root=tmp_path)
    assert found == {frozenset({"foldloop.a", "foldloop.b"})}


def test_the_check_would_catch_an_upward_import(tmp_path: Path) -> None:
    bad = PACKAGE / "core" / "_probe_upward.py"
    bad.write_text("from foldloop.runtime import Runtime\n")
    try:
        with pytest.raises(AssertionError, match="must point down"):
            test_imports_point_down_the_layers(bad)
    finally:
        bad.unlink()


def test_public_api_names_match_the_design() -> None:
    import foldloop as fl

    for name in (
        "tool",
        "ScriptedLLM",
        "Reply",
        "ToolCall",
        "Agent",
        "Limits",
        "Runtime",
        "RunStatus",
        "Message",
        "FoldloopError",
        "ConcurrencyError",
        "RunNotFound",
        "RunLocked",
        "NondeterminismError",
        "SchemaChangedError",
        "ApprovalError",
        "ToolSchemaError",
        "StoreError",
    ):
        assert hasattr(fl, name), name
        assert name in fl.__all__, name
    for error in (
        "ConcurrencyError",
        "RunNotFound",
        "RunLocked",
        "NondeterminismError",
        "SchemaChangedError",
        "ApprovalError",
        "ToolSchemaError",
        "StoreError",
    ):
        assert issubclass(getattr(fl, error), fl.FoldloopError)
    assert {s.value for s in fl.RunStatus} == {
        "queued",
        "running",
        "awaiting_approval",
        "completed",
        "failed",
        "cancelled",
        "limit_reached",
        "no_progress",
        "interrupted",
    }
