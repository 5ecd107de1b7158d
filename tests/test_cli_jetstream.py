"""The ``foldloop`` command on a JetStream store (``--store nats://HOST:PORT/NAMESPACE``, a
real nats-server): every read command, verify and explain, approvals decided from the
command for a run a runtime of the test drives, cancel, export then import into another
namespace, the demo's hints, and one-line errors for a server that is not there and a
namespace that is (read commands create none)."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sysconfig
import uuid
from collections.abc import Sequence
from pathlib import Path

import pytest
from typer.testing import CliRunner

import foldloop as fl
from foldloop.cli import app
from foldloop.errors import StoreNotFound
from tests.nats_servers import NatsServer
from tests.test_jetstream_runtime import calc
from tests.tree_models import answers, fans_out
from tests.waiting import wait_until

SCRIPT = Path(sysconfig.get_path("scripts")) / "foldloop"
HERE = "tests.test_cli_jetstream"


def lead() -> fl.Agent:
    researcher = fl.Agent(name="researcher", llm=fl.ScriptedLLM(answers("found")))
    model = fans_out(("researcher", "cats"), ("researcher", "dogs"))
    return fl.Agent(name="lead", llm=fl.ScriptedLLM(model), agents=[researcher])


@fl.tool
def publish(text: str) -> str:
    """Publish the text."""
    return f"published {text}"


def publisher() -> fl.Agent:
    def plan(messages: Sequence[fl.Message], tools: Sequence[object]) -> fl.Reply:
        if not any(m.role == "tool" for m in messages):
            return fl.Reply(tool_calls=[fl.ToolCall("publish", {"text": "it"})])
        return fl.Reply(text=messages[-1].content)

    return fl.Agent(
        name="publisher",
        llm=fl.ScriptedLLM(plan),
        tools=[publish],
        approvals=fl.RequireApproval({"publish"}),
    )


def cli(store: str, *args: str) -> tuple[int, str, str]:
    """The command in this process: exit code, stdout, stderr."""
    result = CliRunner().invoke(app, ["--store", store, *args])
    return result.exit_code, result.stdout, result.stderr


def fresh(server: NatsServer) -> str:
    """A namespace nothing has made yet on ``server`` (owners keep the default TTL: no
    test here waits for one to lapse, and a loaded machine must not lapse a live one)."""
    return f"{server.url}/t{uuid.uuid4().hex[:16]}"


@pytest.fixture(scope="module")
def shared(nats_server: NatsServer) -> str:
    """A store on NATS holding a completed run ``r1`` and a run tree ``tree`` of three."""
    url = fresh(nats_server)
    adder, fans = calc(), lead()
    with fl.Runtime.open(url, agents=[adder, fans]) as rt:
        assert rt.spawn(adder, "2+3", run_id="r1").wait(timeout=30).ok
        assert rt.spawn(fans, "pets", run_id="tree").wait(timeout=30).ok
    return url


def test_read_commands_show_a_nats_store(shared: str) -> None:
    with fl.Runtime.open(shared, create=False) as rt:
        types = [r.type for r in rt.events("r1")]
        children = [c.run_id for c in rt.tree("tree").children]
        logged = rt.store.last_position()
    code, out, err = cli(shared, "runs")
    assert code == 0, err
    assert "r1" in out and "tree" in out and "below" in out
    code, out, err = cli(shared, "show", "r1")
    assert code == 0, err
    assert "r1 agent=calc status=completed" in out and "output: sum 5" in out
    code, out, err = cli(shared, "events", "r1", "--json")
    assert code == 0, err
    assert [json.loads(line)["type"] for line in out.splitlines()] == types
    code, out, err = cli(shared, "tree", "tree", "--json")
    assert code == 0, err
    assert [c["run_id"] for c in json.loads(out)["children"]] == children
    code, out, err = cli(shared, "explain", "r1")
    assert code == 0, err
    assert out.startswith("run r1 is completed after ")
    code, out, err = cli(shared, "tail")
    assert code == 0, err
    assert len(out.splitlines()) == logged
    for args in (["metrics"], ["projections"], ["approvals"]):
        code, out, err = cli(shared, *args)
        assert code == 0, (args, err)
    code, out, err = cli(shared, "doctor")
    assert code == 0, err
    assert out.startswith(f"ok: 4 runs, {logged} events")


def test_verify_replays_a_run_and_a_tree_of_a_nats_store(shared: str) -> None:
    code, out, err = cli(shared, "verify", "r1", "--agent", f"{HERE}:calc")
    assert code == 0, err
    assert out.startswith("ok: ") and "of r1 replay identically" in out
    code, out, err = cli(shared, "verify", "tree", "--agent", f"{HERE}:lead", "--tree")
    assert code == 0, err
    assert "in 3 runs of tree replay identically" in out


def test_approvals_from_the_command_reach_a_run_a_runtime_drives(nats_server: NatsServer) -> None:
    url = fresh(nats_server)
    agent = publisher()
    with fl.Runtime.open(url, agents=[agent]) as rt:
        handle = rt.spawn(agent, "go")
        wait_until(rt.pending_approvals, 30, "the approval request")
        (pending,) = rt.pending_approvals()
        code, out, err = cli(url, "approvals")
        assert code == 0, err
        assert handle.id in out and pending.call_id in out and "publish" in out
        code, out, err = cli(
            url, "approve", "--run", handle.id, "--call", pending.call_id, "--by", "alice"
        )
        assert code == 0, err
        assert out.startswith(f"approved {pending.call_id} of {handle.id}")
        result = handle.wait(timeout=30)
        assert (result.status, result.output) == (fl.RunStatus.COMPLETED, "published it")


def test_cancel_from_the_command_ends_a_run_nobody_drives(nats_server: NatsServer) -> None:
    url = fresh(nats_server)
    agent = publisher()
    with fl.Runtime.open(url, agents=[agent]) as rt:
        run_id = rt.spawn(agent, "go").id
        wait_until(rt.pending_approvals, 30, "the approval request")
    code, out, err = cli(url, "cancel", run_id, "--reason", "not today")
    assert code == 0, err
    assert out.startswith(f"cancelled {run_id}")
    code, out, err = cli(url, "runs", "--status", "cancelled")
    assert code == 0, err
    assert run_id in out


def test_export_then_import_into_another_namespace(
    shared: str, nats_server: NatsServer, tmp_path: Path
) -> None:
    file = tmp_path / "tree.jsonl"
    code, _, err = cli(shared, "export", "tree", "--tree", "-o", str(file))
    assert code == 0, err
    other = fresh(nats_server)
    code, out, err = cli(other, "import", str(file))
    assert code == 0, err
    assert out.startswith("imported tree and 2 runs below it")
    with fl.Runtime.open(shared, create=False) as a, fl.Runtime.open(other, create=False) as b:
        assert sorted(r.run_id for r in b.runs()) == sorted(
            r.run_id for r in a.runs() if r.run_id != "r1"
        )
        assert [(r.seq, r.at, r.event) for r in b.events("tree")] == [
            (r.seq, r.at, r.event) for r in a.events("tree")
        ]
    code, out, err = cli(other, "import", str(file))  # again: it holds the tree now
    assert code == 2
    assert "another store (--store nats://HOST:PORT/NAMESPACE, another namespace)" in err


def test_the_demos_hints_name_the_store_url_unchanged(
    nats_server: NatsServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"{fresh(nats_server)}?owner_ttl=5"  # options too: quoted for the shell
    monkeypatch.chdir(tmp_path)  # a URL taken for a path would make a store here
    code, out, err = cli(url, "demo")
    assert code == 0, err
    assert f" --store {shlex.quote(url)} runs\n" in out
    assert "store: " + url in out
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "args",
    [["runs"], ["show", "r"], ["tree", "r"], ["explain", "r"], ["approvals"], ["doctor"]],
    ids=" ".join,
)
def test_a_read_of_a_namespace_nothing_made_is_not_found_and_creates_none(
    nats_server: NatsServer, args: list[str]
) -> None:
    url = fresh(nats_server)
    code, out, err = cli(url, *args)
    assert code == 3, err
    assert (out, err.count("\n")) == ("", 1)
    assert err.startswith(f"error: no foldloop store at {url}")
    with pytest.raises(StoreNotFound, match="no foldloop store at "):
        fl.Runtime.open(url, create=False)


def test_a_namespace_nothing_made_is_one_line_from_the_installed_command(
    nats_server: NatsServer,
) -> None:
    """Its connection closed after the failed open is no news worth a warning line."""
    url = fresh(nats_server)
    proc = subprocess.run(
        [str(SCRIPT), "--store", url, "runs"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 3 and proc.stdout == ""
    assert proc.stderr.startswith(f"error: no foldloop store at {url}")
    assert proc.stderr.count("\n") == 1, proc.stderr


def test_an_unreachable_server_is_one_line_and_no_traceback() -> None:
    url = "nats://127.0.0.1:1/nowhere"
    env = {**os.environ, "FOLDLOOP_STORE": url}
    proc = subprocess.run(
        [str(SCRIPT), "runs"], capture_output=True, text=True, timeout=60, env=env
    )
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout == ""
    assert proc.stderr.startswith(f"error: cannot reach a NATS server at {url} ")
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
