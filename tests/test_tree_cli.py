"""Run trees on the command line: ``foldloop tree``, ``runs`` listing roots (``--all``
every run), ``cancel`` down a tree, and ``export --tree`` / ``import`` of a whole subtree.

Trees are grown by real runtimes with ScriptedLLM functions; the commands run as the
installed script (a real process) where processes matter, else through typer's CliRunner.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import sysconfig
import textwrap
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import foldloop as fl
from foldloop.cli import app
from foldloop.events import RunCancelled
from foldloop.events._jsonl import load_run
from tests.test_cli_manners import on_terminal
from tests.tree_models import answers, fans_out

SCRIPT = Path(sysconfig.get_path("scripts")) / "foldloop"
LEAD, SOLO = "lead", "solo"


CHARGED = fl.types.Usage(input_tokens=10, output_tokens=5, cost_usd=0.001)
"""What each scripted answer costs (so a tree's spend shows)."""


def _loops(messages: Sequence[fl.Message], tools: Sequence[object]) -> fl.Reply:
    turn = sum(1 for m in messages if m.role == "assistant")
    return fl.Reply(tool_calls=[fl.ToolCall("noop", {"i": turn})])


@fl.tool(idempotent=True)
def noop(i: int) -> str:
    """Do nothing."""
    return "ok"


@pytest.fixture(scope="module")
def forest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store holding the tree lead -> (middle -> two researchers, stuck at its step
    ceiling), and a run with no children."""
    path = tmp_path_factory.mktemp("forest") / "store"
    researcher = fl.Agent(name="researcher", llm=fl.ScriptedLLM(answers("found", CHARGED)))
    stuck = fl.Agent(
        name="stuck", llm=fl.ScriptedLLM(_loops), tools=[noop], limits=fl.Limits(max_steps=2)
    )
    middle = fl.Agent(
        name="middle",
        llm=fl.ScriptedLLM(fans_out(("researcher", "cats"), ("researcher", "dogs"))),
        agents=[researcher],
    )
    lead = fl.Agent(
        name="lead",
        llm=fl.ScriptedLLM(fans_out(("middle", "pets"), ("stuck", "try"))),
        agents=[middle, stuck],
        limits=fl.Limits(max_steps=30),
    )
    solo = fl.Agent(name="solo", llm=fl.ScriptedLLM(answers("alone", CHARGED)))
    with fl.Runtime.open(path, agents=[lead, solo]) as rt:
        assert rt.spawn(lead, "go", run_id=LEAD).wait(timeout=30).ok
        assert rt.spawn(solo, "go", run_id=SOLO).wait(timeout=30).ok
    return path


def cli(store: Path, *args: str) -> tuple[int, str, str]:
    """The CLI in this process: exit code, stdout, stderr."""
    result = CliRunner().invoke(app, ["--store", str(store), *args])
    return result.exit_code, result.stdout, result.stderr


def script(store: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The installed ``foldloop`` script, a real process with stdout piped."""
    return subprocess.run(
        [str(SCRIPT), "--store", str(store), *args], capture_output=True, text=True, timeout=60
    )


def rows(stdout: str) -> list[list[str]]:
    """The body rows of a table as the command prints it piped."""
    return [
        [cell.strip() for cell in line.strip().strip("│").split("│")]
        for line in stdout.splitlines()
        if line.startswith("│")
    ]


def tree_of(store: Path, run_id: str) -> fl.RunTree:
    with fl.Runtime.open(store, create=False) as rt:
        return rt.tree(run_id)


# -- foldloop tree ------------------------------------------------------------------------


def test_tree_draws_each_run_with_its_status_spend_and_why_it_stopped(forest: Path) -> None:
    tree = tree_of(forest, LEAD)
    middle, stuck = tree.children
    proc = script(forest, "tree", LEAD)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    spent = tree.spent
    assert lines[0] == (
        f"lead lead completed · own 2 steps; tree {tree.spent_steps} steps, "
        f"{spent.total_tokens} tokens, ${spent.cost_usd:.4f}"
    )
    assert tree.spent_steps == 2 + 2 + 1 + 1 + 2
    assert lines[1].startswith(f"├── middle {middle.run_id} completed · own 2 steps; tree 4 steps")
    first, second = middle.children
    assert lines[2] == f"│   ├── researcher {first.run_id} completed · 1 step, 15 tokens, $0.0010"
    assert lines[3] == f"│   └── researcher {second.run_id} completed · 1 step, 15 tokens, $0.0010"
    # a run that did not complete says why, after its spend; piped, nothing is cut
    assert lines[4].startswith(f"└── stuck {stuck.run_id} limit_reached · 2 steps, ")
    assert lines[4].endswith(" · max_steps ceiling 2 reached (value 2)")
    assert len(lines) == 5


def test_on_a_terminal_a_reason_gives_way_and_ids_and_numbers_never_do(forest: Path) -> None:
    tree = tree_of(forest, LEAD)
    stuck = tree.children[1]
    code, shown = on_terminal(["--store", str(forest), "tree", LEAD], columns=80)
    assert code == 0, shown
    lines = shown.splitlines()
    assert lines[0].startswith("lead lead completed · own 2 steps; tree 8 steps, ")
    for node in tree.walk()[1:]:  # every id whole, and its status, never wrapped
        assert sum(f" {node.run_id} {node.status.value} · " in line for line in lines) == 1
    (line,) = [line for line in lines if stuck.run_id in line]
    assert line.endswith("…") and len(line) <= 80, shown  # the spend whole, the reason cut
    assert f" {stuck.run_id} limit_reached · 2 steps, {stuck.spent.total_tokens} tokens, " in line
    assert "max_steps ceiling 2 reached (value 2)" not in shown


def test_tree_json_nests_every_run_with_its_own_and_its_subtrees_spend(forest: Path) -> None:
    code, stdout, stderr = cli(forest, "tree", LEAD, "--json")
    assert code == 0, stderr
    shown = json.loads(stdout)
    tree = tree_of(forest, LEAD)

    def check(node: dict[str, Any], expected: fl.RunTree) -> None:
        assert (node["run_id"], node["agent"], node["status"]) == (
            expected.run_id,
            expected.agent,
            expected.status.value,
        )
        assert (node["reason"], node["call_id"], node["steps"]) == (
            expected.reason,
            expected.call_id,
            expected.steps,
        )
        assert node["usage"]["input_tokens"] == expected.usage.input_tokens
        assert node["spent"] == {
            "steps": expected.spent_steps,
            "input_tokens": expected.spent.input_tokens,
            "output_tokens": expected.spent.output_tokens,
            "cost_usd": expected.spent.cost_usd,
        }
        assert len(node["children"]) == len(expected.children)
        for child, expected_child in zip(node["children"], expected.children, strict=True):
            check(child, expected_child)

    check(shown, tree)
    assert [c["agent"] for c in shown["children"]] == ["middle", "stuck"]
    assert shown["children"][1]["reason"] == "max_steps ceiling 2 reached (value 2)"


@pytest.mark.parametrize(
    "args",
    [
        ["tree", "nope"],
        ["tree", "nope", "--json"],
        ["cancel", "nope"],
        ["cancel", "nope", "--reason", "x"],
        ["export", "nope", "--tree"],
    ],
    ids=" ".join,
)
def test_an_unknown_run_is_exit_3_with_a_clear_message(forest: Path, args: list[str]) -> None:
    code, stdout, stderr = cli(forest, *args)
    assert code == 3, stderr
    assert "no run 'nope' in this store; list runs with `foldloop runs`" in stderr
    assert stdout == ""


def test_tree_of_a_missing_store_is_not_found_and_creates_none(tmp_path: Path) -> None:
    proc = script(tmp_path / "none", "tree", "x")
    assert proc.returncode == 3, proc.stderr
    assert not (tmp_path / "none").exists()


# -- foldloop runs ------------------------------------------------------------------------


def test_runs_lists_roots_with_how_many_runs_are_below_each(forest: Path) -> None:
    code, stdout, stderr = cli(forest, "runs")
    assert code == 0, stderr
    header = stdout.splitlines()[1]
    assert [h.strip() for h in header.strip().strip("┃").split("┃")] == [
        "run",
        "agent",
        "status",
        "steps",
        "below",
        "reason",
    ]
    listed = {row[0]: row for row in rows(stdout)}
    assert sorted(listed) == [LEAD, SOLO]  # child runs are not listed by default
    assert listed[LEAD][1:5] == ["lead", "completed", "2", "4"]
    assert listed[SOLO][1:5] == ["solo", "completed", "1", "0"]


def test_runs_all_lists_every_run_with_its_parent(forest: Path) -> None:
    tree = tree_of(forest, LEAD)
    code, stdout, stderr = cli(forest, "runs", "--all")
    assert code == 0, stderr
    listed = {row[0]: row for row in rows(stdout)}
    assert sorted(listed) == sorted([*(n.run_id for n in tree.walk()), SOLO])
    assert listed[LEAD][1] == listed[SOLO][1] == "-"
    for parent in tree.walk():
        for child in parent.children:
            assert listed[child.run_id][1:4] == [parent.run_id, child.agent, child.status.value]


def test_runs_filters_apply_to_the_roots_or_with_all_to_every_run(forest: Path) -> None:
    stuck = tree_of(forest, LEAD).children[1].run_id

    def listed(*args: str) -> list[str]:
        code, stdout, stderr = cli(forest, "runs", *args)
        assert code == 0, stderr
        return [row[0] for row in rows(stdout)]

    assert listed("--status", "limit_reached") == []  # the stuck run is a child, not a root
    assert listed("--status", "limit_reached", "--all") == [stuck]
    assert listed("--agent", "researcher") == []
    assert len(listed("--agent", "researcher", "--all")) == 2
    assert listed("--agent", "lead", "--status", "completed") == [LEAD]
    code, _, stderr = cli(forest, "runs", "--status", "bogus")
    assert code == 2
    assert "unknown status 'bogus'; the statuses are: queued, running" in stderr
    help_text = CliRunner().invoke(app, ["runs", "--help"]).output
    assert "--all" in help_text
    assert "roots only, unless --all" in help_text


# -- foldloop cancel ----------------------------------------------------------------------

LIVE_TREE = textwrap.dedent(
    '''
    import sys, time
    import foldloop as fl

    @fl.tool(timeout=600)
    def hold(task: str) -> str:
        """Wait to be killed."""
        time.sleep(600)
        return "held"

    def holds(messages, tools):
        if not any(m.role == "tool" for m in messages):
            return fl.Reply(tool_calls=[fl.ToolCall("hold", {"task": "x"})])
        return fl.Reply(text="done")

    def fans_out(*calls):
        def reply(messages, tools):
            if not any(m.role == "tool" for m in messages):
                return fl.Reply(tool_calls=[fl.ToolCall(a, {"input": t}) for a, t in calls])
            return fl.Reply(text="joined")
        return reply

    leaf = fl.Agent(name="leaf", llm=fl.ScriptedLLM(holds), tools=[hold])
    middle = fl.Agent(
        name="middle", llm=fl.ScriptedLLM(fans_out(("leaf", "a"), ("leaf", "b"))), agents=[leaf]
    )
    root = fl.Agent(
        name="root", llm=fl.ScriptedLLM(fans_out(("middle", "m"))), agents=[middle],
        limits=fl.Limits(max_steps=40),
    )
    rt = fl.Runtime.open(sys.argv[1], agents=[root])
    rt.spawn(root, "go", run_id="root")

    def holding():
        leaves = [s for s in rt.runs() if s.agent == "leaf"]
        return len(leaves) == 2 and all(
            any(r.type == "tool.requested" for r in rt.events(s.run_id)) for s in leaves
        )

    while not holding():
        time.sleep(0.01)
    print("HOLDING", flush=True)
    time.sleep(600)
    '''
)


@pytest.fixture
def live_tree(tmp_path: Path) -> Iterator[tuple[Path, subprocess.Popen[str]]]:
    """A tree root -> middle -> two leaves, driven by another process, its leaves in a tool."""
    store = tmp_path / "store"
    proc = subprocess.Popen(
        [sys.executable, "-c", LIVE_TREE, str(store)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.strip() == "HOLDING", proc.stderr.read() if proc.stderr else ""
        yield store, proc
    finally:
        proc.kill()
        proc.communicate(timeout=30)


def _cancels(store: Path) -> dict[str, list[str]]:
    """Each run's run.cancelled reasons."""
    with fl.Runtime.open(store, create=False) as rt:
        return {
            s.run_id: [
                r.event.reason for r in rt.events(s.run_id) if isinstance(r.event, RunCancelled)
            ]
            for s in rt.runs()
        }


def test_cancel_of_a_tree_another_process_drives_says_why_it_cannot_and_exits_1(
    live_tree: tuple[Path, subprocess.Popen[str]],
) -> None:
    store, _ = live_tree
    proc = script(store, "cancel", "root", "--reason", "stop")
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "cannot cancel 'root' from here: a live runtime in another process drives it" in (
        proc.stderr.replace("\n", " ")
    )
    assert "`foldloop cancel root`" in proc.stderr
    reasons = _cancels(store)
    assert list(reasons.values()) == [[]] * 4  # nothing was cancelled


def test_cancel_of_a_tree_nobody_drives_cancels_every_run_below_it(
    live_tree: tuple[Path, subprocess.Popen[str]],
) -> None:
    store, proc = live_tree
    proc.kill()  # its runtime dies: the whole tree is interrupted
    proc.communicate(timeout=30)
    shown = script(store, "tree", "root")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.count(" interrupted · ") == 4  # as `runs` shows a run nobody drives

    cancelled = script(store, "cancel", "root", "--reason", "stop")
    assert cancelled.returncode == 0, cancelled.stderr
    assert cancelled.stdout == "cancelled root and 3 runs below it\n"
    assert cancelled.stderr == ""
    reasons = _cancels(store)
    assert reasons.pop("root") == ["stop"]
    assert list(reasons.values()) == [["parent cancelled"]] * 3
    statuses = json.loads(script(store, "tree", "root", "--json").stdout)
    assert statuses["status"] == statuses["children"][0]["status"] == "cancelled"
    assert {c["status"] for c in statuses["children"][0]["children"]} == {"cancelled"}

    again = script(store, "cancel", "root")
    assert again.returncode == 0, again.stderr
    assert again.stdout == "nothing to cancel: root had ended cancelled\n"


# -- export --tree / import ---------------------------------------------------------------


def _same_runs(source: Path, target: Path, run_ids: list[str]) -> None:
    with (
        fl.Runtime.open(source, create=False) as a,
        fl.Runtime.open(target, create=False) as b,
    ):
        for run_id in run_ids:
            assert [r.event for r in b.events(run_id)] == [r.event for r in a.events(run_id)]
            assert [r.at for r in b.events(run_id)] == [r.at for r in a.events(run_id)]


def test_export_tree_then_import_brings_the_whole_tree_back(forest: Path, tmp_path: Path) -> None:
    tree = tree_of(forest, LEAD)
    members = [n.run_id for n in tree.walk()]
    file = tmp_path / "lead.jsonl"
    exported = script(forest, "export", LEAD, "--tree", "-o", str(file))
    assert exported.returncode == 0, exported.stderr
    lines = file.read_text().splitlines()
    assert json.loads(lines[0]) == {"foldloop": "tree", "format": 1, "run_id": LEAD, "runs": 5}
    headers = [json.loads(line) for line in lines[1:] if line.startswith('{"foldloop"')]
    assert [h["run_id"] for h in headers] == members  # each parent before its children
    events = len(lines) - 1 - len(headers)
    assert f"wrote 5 runs ({events} events) of the tree of lead to" in exported.stderr

    target = tmp_path / "other"
    imported = script(target, "import", str(file))
    assert imported.returncode == 0, imported.stderr
    assert imported.stdout == f"imported lead and 4 runs below it: {events} events\n"
    assert tree_of(target, LEAD) == tree
    _same_runs(forest, target, members)
    code, stdout, _ = cli(target, "runs")
    assert code == 0
    assert [row[0] for row in rows(stdout)] == [LEAD] and rows(stdout)[0][4] == "4"

    # a second import finds the tree there: refused whole, with what to do instead
    again = script(target, "import", str(file))
    assert again.returncode == 2
    assert "run 'lead' of the tree of 'lead' already exists in this store" in again.stderr
    assert "nothing was imported; import the tree into another store (--store PATH)" in (
        again.stderr.replace("\n", " ")
    )
    # a tree keeps its ids: renaming it is refused before any store is made
    renamed = script(tmp_path / "third", "import", str(file), "--run-id", "copy")
    assert renamed.returncode == 2
    assert "a run tree is imported under the ids it was exported with" in renamed.stderr
    assert not (tmp_path / "third").exists()


def test_export_tree_of_a_leaf_is_a_tree_of_one(forest: Path, tmp_path: Path) -> None:
    stuck = tree_of(forest, LEAD).children[1]
    exported = script(forest, "export", stuck.run_id, "--tree")
    assert exported.returncode == 0, exported.stderr
    lines = exported.stdout.splitlines()
    assert json.loads(lines[0])["runs"] == 1
    file = tmp_path / "leaf.jsonl"
    file.write_text(exported.stdout)
    target = tmp_path / "other"
    imported = script(target, "import", str(file))
    assert imported.returncode == 0, imported.stderr
    assert imported.stdout.startswith(f"imported {stuck.run_id} with no run below it: ")
    assert tree_of(target, stuck.run_id) == dataclasses.replace(stuck, call_id="")  # a root
    # its parent is not in that store, so it is listed as a root there
    code, stdout, _ = cli(target, "runs")
    assert code == 0
    assert [row[0] for row in rows(stdout)] == [stuck.run_id]
    assert " below " not in stdout  # no run has runs below it: the plain table


def test_a_truncated_tree_export_is_refused_saying_where(forest: Path, tmp_path: Path) -> None:
    lines = script(forest, "export", LEAD, "--tree").stdout.splitlines()
    file = tmp_path / "cut.jsonl"
    file.write_text("\n".join(lines[:-1]) + "\n")
    proc = script(tmp_path / "store", "import", str(file))
    assert proc.returncode == 2
    assert "the export is truncated: the header of run" in proc.stderr
    assert not (tmp_path / "store").exists()
    second = next(i for i, line in enumerate(lines) if i > 1 and line.startswith('{"foldloop"'))
    middle = json.loads(lines[second])["run_id"]
    for root, says in [
        (LEAD, f"the tree header names root 'lead', but the first run is {middle!r}"),
        # rooted at middle, the stuck run (lead's child) is below none of the runs before it
        (middle, "is not below a run before it in the tree export (its parent is 'lead')"),
    ]:
        header = {"foldloop": "tree", "format": 1, "run_id": root, "runs": 4}
        file.write_text("\n".join([json.dumps(header), *lines[second:]]) + "\n")
        proc = script(tmp_path / "store", "import", str(file))
        assert proc.returncode == 2
        assert says in proc.stderr.replace("\n", " ")
        assert not (tmp_path / "store").exists()


def test_export_with_tree_in_python_and_import_jsonl_take_the_subtree(
    forest: Path, tmp_path: Path
) -> None:
    with fl.Runtime.open(forest, create=False) as rt:
        tree = rt.tree(LEAD)
        lines = list(rt.export(LEAD, tree=True))
        single = list(rt.export(LEAD))
        with pytest.raises(fl.ConfigError, match="tree must be True or False"):
            rt.export(LEAD, tree="yes")  # type: ignore[arg-type]
    assert json.loads(single[0])["foldloop"] == "run"  # the one-run export is as it was
    with pytest.raises(fl.ConfigError, match="export of a run tree"):
        load_run(lines)
    with fl.Runtime.open(tmp_path / "other") as other:
        with pytest.raises(fl.ConfigError, match="cannot be renamed"):
            other.import_jsonl(lines, run_id="copy")
        assert other.import_jsonl(lines) == LEAD
        assert other.tree(LEAD) == tree
        with pytest.raises(fl.ConfigError, match="already exists"):
            other.import_jsonl(lines)
        assert len(other.runs()) == 5


def test_a_tree_export_without_one_of_its_ended_children_is_refused(
    forest: Path, tmp_path: Path
) -> None:
    lines = script(forest, "export", LEAD, "--tree").stdout.splitlines()
    starts = [i for i, line in enumerate(lines) if i > 0 and line.startswith('{"foldloop"')]
    dropped = json.loads(lines[starts[-1]])["run_id"]  # the last run: a leaf of the tree
    kept = lines[1 : starts[-1]]
    header = {"foldloop": "tree", "format": 1, "run_id": LEAD, "runs": len(starts) - 1}
    file = tmp_path / "half.jsonl"
    file.write_text("\n".join([json.dumps(header), *kept]) + "\n")
    proc = script(tmp_path / "store", "import", str(file))
    assert proc.returncode == 2, proc.stdout
    assert f"lacks child run(s) ['{dropped}']" in proc.stderr.replace("\n", " ")
    assert "rt.export" not in proc.stderr  # the command line words its own advice
    assert not (tmp_path / "store").exists()  # refused before any store is created


def test_a_tree_import_cut_short_is_finished_by_importing_it_again(
    forest: Path, tmp_path: Path
) -> None:
    # Each run is its own append: a kill part-way left the first runs of the tree, whole
    # (a probe saw 6 of 9), and the same import was then refused for ever.
    with fl.Runtime.open(forest, create=False) as rt:
        tree = rt.tree(LEAD)
        lines = list(rt.export(LEAD, tree=True))
        root_alone = list(rt.export(LEAD))
    with fl.Runtime.open(tmp_path / "target") as target:
        assert target.import_jsonl(root_alone, run_id=None) == LEAD  # where a cut left it
        assert target.import_jsonl(lines, run_id=None) == LEAD
        assert target.tree(LEAD) == tree
        assert len(target.runs()) == 5
    with fl.Runtime.open(tmp_path / "clash") as clash:
        other = fl.Agent(name="other", llm=fl.ScriptedLLM([fl.Reply(text="mine")]))
        assert clash.spawn(other, "go", run_id=LEAD).wait(timeout=30).ok
        with pytest.raises(fl.ConfigError, match="already exists in this store with other events"):
            clash.import_jsonl(lines, run_id=None)
        assert [r.run_id for r in clash.runs()] == [LEAD]  # nothing else was imported


def test_the_import_command_counts_only_what_it_added_and_reads_stdin(
    forest: Path, tmp_path: Path
) -> None:
    with fl.Runtime.open(forest, create=False) as rt:
        lines = list(rt.export(LEAD, tree=True))
        root_alone = list(rt.export(LEAD))
    target = tmp_path / "target"
    with fl.Runtime.open(target) as rt:
        assert rt.import_jsonl(root_alone) == LEAD  # where an import cut short left it
        before = rt.store.head(LEAD)
    every = len(lines) - 1 - sum(line.startswith('{"foldloop"') for line in lines[1:])
    dashed = script(forest, "export", LEAD, "--tree", "-o", "-")  # '-' is stdout, as in import
    assert dashed.returncode == 0 and dashed.stdout.splitlines() == lines, dashed.stderr
    named = subprocess.run(  # ./- is a file of that name
        [str(SCRIPT), "--store", str(forest), "export", LEAD, "-o", "./-"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert named.returncode == 0 and named.stdout == "", named.stderr
    assert json.loads((tmp_path / "-").read_text().splitlines()[0])["foldloop"] == "run"
    proc = subprocess.run(
        [str(SCRIPT), "--store", str(target), "import", "-"],
        input="\n".join(lines) + "\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == (
        f"imported lead and 4 runs below it: {every - before} events "
        "(1 run already here left as they were)\n"
    )
    folder = script(tmp_path / "other", "import", str(tmp_path))
    assert folder.returncode == 2 and "is a directory" in folder.stderr
    assert not (tmp_path / "other").exists()
