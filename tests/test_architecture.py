"""The import direction of DESIGN.md section 1, and a pure core.

errors <- events <- core <- store <- tools | llm | projections <- agent, actors <- runtime <- cli
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "foldloop"

LAYERS = {
    "errors": 0,
    "events": 1,
    "core": 2,
    "store": 3,
    "tools": 4,
    "llm": 4,
    "projections": 4,
    "agent": 5,
    "approvals": 4,
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
        "running",
        "awaiting_approval",
        "completed",
        "failed",
        "cancelled",
        "limit_reached",
        "no_progress",
        "interrupted",
    }
