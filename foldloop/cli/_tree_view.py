"""Run trees as the commands meet them: drawn with rich, as nested JSON, counted for
``runs`` (how many runs below each root), and walked by ``cancel``."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from rich.text import Text
from rich.tree import Tree

from foldloop.cli._output import count, escape, out
from foldloop.core._state import RunStatus
from foldloop.errors import RunLocked, RunNotFound
from foldloop.runtime import RunSummary, Runtime, RunTree

__all__ = ["Shown", "cancel_below", "cancelled_below", "draw", "listed_roots", "tree_json"]

Shown = Callable[[RunTree], tuple[RunStatus, str]]
"""A node's status and reason as ``runs`` shows them (a run nobody drives is interrupted)."""

_GUIDE = 4
"""Cells a rich Tree indents each level by."""


def _spend(node: RunTree) -> str:
    spent = node.spent
    whole = f"{spent.total_tokens} tokens, ${spent.cost_usd:.4f}"
    if not node.children:
        return f"{count(node.steps, 'step')}, {whole}"
    return f"own {count(node.steps, 'step')}; tree {count(node.spent_steps, 'step')}, {whole}"


def _label(node: RunTree, shown: Shown, depth: int) -> Text:
    """``agent run status · spend``, then the reason (cut at a terminal's edge; ids never)."""
    status, reason = shown(node)
    key = Text.from_markup(
        f"{escape(node.agent)} [bold]{escape(node.run_id)}[/] {status.value} · "
        f"{escape(_spend(node))}"
    )
    if status is RunStatus.COMPLETED or not reason:
        return key
    tail = Text.from_markup(f" · {escape(reason)}")
    if out.is_terminal:
        tail.truncate(max(out.width - depth * _GUIDE - key.cell_len, 1), overflow="ellipsis")
    return key + tail


def draw(root: RunTree, shown: Shown) -> Tree:
    """The tree as rich draws it, one node a line."""
    tree = Tree(_label(root, shown, 0), guide_style="dim")
    todo: list[tuple[Tree, RunTree, int]] = [(tree, child, 1) for child in root.children]
    todo.reverse()
    while todo:  # depth first without recursion: a deep tree is no Python stack
        parent, node, depth = todo.pop()
        branch = parent.add(_label(node, shown, depth))
        todo.extend((branch, child, depth + 1) for child in reversed(node.children))
    return tree


def tree_json(node: RunTree, shown: Shown) -> dict[str, Any]:
    """The tree as nested objects: each run's own spend and its subtree's (``spent``)."""
    status, reason = shown(node)
    spent = node.spent
    return {
        "run_id": node.run_id,
        "agent": node.agent,
        "status": status.value,
        "reason": reason,
        "call_id": node.call_id,
        "steps": node.steps,
        "usage": {
            "input_tokens": node.usage.input_tokens,
            "output_tokens": node.usage.output_tokens,
            "cost_usd": node.usage.cost_usd,
        },
        "spent": {
            "steps": node.spent_steps,
            "input_tokens": spent.input_tokens,
            "output_tokens": spent.output_tokens,
            "cost_usd": spent.cost_usd,
        },
        "children": [tree_json(child, shown) for child in node.children],
    }


def listed_roots(rows: Iterable[RunSummary]) -> tuple[list[RunSummary], dict[str, int]]:
    """The roots among ``rows`` (runs without a parent, or whose parent the store does not
    hold: a child imported alone), and how many runs are below each run."""
    rows = list(rows)
    held = {row.run_id for row in rows}
    children: dict[str, list[str]] = {}
    for row in rows:
        if row.parent_run_id is not None and row.parent_run_id in held:
            children.setdefault(row.parent_run_id, []).append(row.run_id)
    roots = [r for r in rows if r.parent_run_id is None or r.parent_run_id not in held]
    return roots, _below_counts(roots, children)


def _below_counts(roots: Iterable[RunSummary], children: dict[str, list[str]]) -> dict[str, int]:
    """Runs below each root, counted down ``children`` (parent -> child runs)."""
    counts: dict[str, int] = {}
    for root in roots:
        below, todo, seen = 0, list(children.get(root.run_id, ())), {root.run_id}
        while todo:
            run_id = todo.pop()
            if run_id in seen:  # a damaged log naming a parent below it
                continue
            seen.add(run_id)
            below += 1
            todo.extend(children.get(run_id, ()))
        counts[root.run_id] = below
    return counts


def cancelled_below(rt: Runtime, run: str) -> set[str]:
    return {n.run_id for n in rt.tree(run).walk()[1:] if n.status is RunStatus.CANCELLED}


def cancel_below(rt: Runtime, run: str) -> list[str]:
    """Carry the cancel down the tree below ``run`` before this command's runtime closes
    (closing drops the part of the cascade it has not carried yet): each child its parent
    still counts as running is cancelled with "parent cancelled". Returns the runs that a
    live runtime elsewhere drives, which only it can cancel."""
    elsewhere: list[str] = []
    todo = [run]
    while todo:
        for link in rt.state(todo.pop()).children:
            try:
                child = rt.state(link.run_id)
            except RunNotFound:  # its start never written: nothing below it either
                continue
            todo.append(link.run_id)
            if not link.running or child.terminal:
                continue
            try:
                rt.handle(link.run_id).cancel("parent cancelled")
            except RunLocked:
                elsewhere.append(link.run_id)
    return elsewhere
