"""The runtime on a JetStream store (a real nats-server): runs, approvals from another
host, projections, trees, verify and explain, export and import across backends, and a
runtime SIGKILLed mid-tool whose runs another one recovers once its owner key lapses."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import traceback
from collections.abc import Sequence
from pathlib import Path

import nats
import pytest

import foldloop as fl
from foldloop.errors import ConfigError, StoreAccessError, StoreError, StoreNotFound
from foldloop.store import connect_store
from tests.nats_servers import NatsServer, start_server
from tests.tree_models import answers, fans_out
from tests.waiting import wait_until


@fl.tool
def add(a: int, b: int) -> int:
    """Add two numbers."""
    return a + b


def calc() -> fl.Agent:
    def plan(messages: Sequence[fl.Message], tools: Sequence[object]) -> fl.Reply:
        if not any(m.role == "tool" for m in messages):
            return fl.Reply(tool_calls=[fl.ToolCall("add", {"a": 2, "b": 3})])
        return fl.Reply(text=f"sum {messages[-1].content}")

    return fl.Agent(name="calc", llm=fl.ScriptedLLM(plan), tools=[add])


def test_a_run_on_jetstream_is_read_back_by_another_runtime(nats_url: str) -> None:
    agent = calc()
    with fl.Runtime.open(nats_url, agents=[agent]) as rt:
        result = rt.spawn(agent, "2+3", run_id="r1").wait(timeout=30)
        assert (result.status, result.output) == (fl.RunStatus.COMPLETED, "sum 5")
        types = [r.type for r in rt.events("r1")]
    with fl.Runtime.open(nats_url, agents=[calc()]) as other:  # another host, after it
        assert [r.type for r in other.events("r1")] == types
        assert [s.run_id for s in other.runs()] == ["r1"]
        assert other.verify("r1").output == "sum 5"  # replayed: decide again, same events
        assert other.explain("r1").status == fl.RunStatus.COMPLETED
        assert [r.position for r in other.read_all()] == list(range(1, len(types) + 1))


def publisher(text: str) -> fl.Agent:
    """An agent whose one gated call publishes ``text``, then answers with the result."""

    @fl.tool
    def publish(text: str) -> str:
        """Publish the text."""
        return f"published {len(text)}"

    def plan(messages: Sequence[fl.Message], tools: Sequence[object]) -> fl.Reply:
        if not any(m.role == "tool" for m in messages):
            return fl.Reply(tool_calls=[fl.ToolCall("publish", {"text": text})])
        return fl.Reply(text=messages[-1].content)

    return fl.Agent(
        name="publisher",
        llm=fl.ScriptedLLM(plan),
        tools=[publish],
        approvals=fl.RequireApproval({"publish"}),
    )


def test_an_approval_decided_from_another_host_reaches_the_run(nats_url: str) -> None:
    agent = publisher("it")
    with fl.Runtime.open(nats_url, agents=[agent]) as rt, fl.Runtime.open(nats_url) as host:
        handle = rt.spawn(agent, "go")
        wait_until(host.pending_approvals, 30, "the approval request")
        (pending,) = host.pending_approvals()
        assert pending.run_id == handle.id and pending.tool == "publish"
        host.approve(run_id=pending.run_id, call_id=pending.call_id, by="alice")
        result = handle.wait(timeout=30)
        assert (result.status, result.output) == (fl.RunStatus.COMPLETED, "published 2")
        assert host.pending_approvals() == []


def test_a_projection_backfills_then_follows_and_keeps_its_checkpoint(nats_url: str) -> None:
    agent = calc()
    with fl.Runtime.open(nats_url, agents=[agent]) as rt:
        rt.spawn(agent, "before").wait(timeout=30)
        metrics = rt.attach(fl.projections.RunMetrics())
        rt.spawn(agent, "after").wait(timeout=30)
        metrics.catch_up(timeout=30)
        assert metrics.state.runs_by_status.get("completed") == 2
        position = metrics.position
        assert position == rt.store.last_position()
        metrics.detach()
    with fl.Runtime.open(nats_url) as again:
        stored = again.store.checkpoint("foldloop.run_metrics")
        assert stored is not None and stored.position == position


def test_a_run_tree_on_jetstream_verifies_whole(nats_url: str) -> None:
    researcher = fl.Agent(name="researcher", llm=fl.ScriptedLLM(answers("found")))
    lead = fl.Agent(
        name="lead",
        llm=fl.ScriptedLLM(fans_out(("researcher", "cats"), ("researcher", "dogs"))),
        agents=[researcher],
    )
    with fl.Runtime.open(nats_url, agents=[lead]) as rt:
        handle = rt.spawn(lead, "pets")
        assert handle.wait(timeout=30).status == fl.RunStatus.COMPLETED
        tree = rt.tree(handle.id)
        assert [c.status for c in tree.children] == [fl.RunStatus.COMPLETED] * 2
        assert set(rt.verify(handle.id, tree=True)) == {
            handle.id,
            *(c.run_id for c in tree.children),
        }


def test_export_from_lmdb_import_into_jetstream_and_back(nats_url: str, tmp_path: Path) -> None:
    agent = calc()
    with fl.Runtime.open(tmp_path / "a", agents=[agent]) as local:
        run_id = local.spawn(agent, "2+3").wait(timeout=30).run_id
        exported = list(local.export(run_id))
        original = [(r.seq, r.at, r.event) for r in local.events(run_id)]
    with fl.Runtime.open(nats_url, agents=[calc()]) as shared:
        assert shared.import_jsonl(exported) == run_id
        assert shared.verify(run_id).output == "sum 5"
        assert [(r.seq, r.at, r.event) for r in shared.events(run_id)] == original
        again = list(shared.export(run_id))
    with fl.Runtime.open(tmp_path / "b") as back:
        back.import_jsonl(again)
        assert [(r.seq, r.at, r.event) for r in back.events(run_id)] == original


WORKER = textwrap.dedent(
    """
    import sys, threading
    import foldloop as fl

    url, ledger = sys.argv[1], sys.argv[2]
    entered = threading.Event()

    @fl.tool
    def charge(amount: int) -> str:
        "Charge once (not idempotent)."
        with open(ledger, "a") as f:
            f.write(f"charged {amount}\\n")
        print("in tool", flush=True)
        threading.Event().wait()  # held here until the process is killed
        return "never"

    agent = fl.Agent(
        name="payer",
        llm=fl.ScriptedLLM([fl.Reply(tool_calls=[fl.ToolCall("charge", {"amount": 7})])]),
        tools=[charge],
    )
    rt = fl.Runtime.open(url, agents=[agent])
    rt.spawn(agent, "pay", run_id="pay-1")
    threading.Event().wait()
    """
)


def test_a_runtime_killed_mid_tool_loses_its_runs_to_another_after_its_owner_key_lapses(
    nats_url: str, tmp_path: Path
) -> None:
    ledger = tmp_path / "ledger"
    url = nats_url.replace("owner_ttl=2", "owner_ttl=5")  # time to see it still held
    proc = subprocess.Popen(
        [sys.executable, "-c", WORKER, url, str(ledger)],
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)},
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"in tool\n"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)

    @fl.tool
    def charge(amount: int) -> str:
        """Charge once (not idempotent)."""
        raise AssertionError("a non-idempotent call in flight at the kill ran again")

    def told(messages: Sequence[fl.Message], tools: Sequence[object]) -> fl.Reply:
        return fl.Reply(text=f"told: {messages[-1].content}")

    agent = fl.Agent(name="payer", llm=fl.ScriptedLLM(told), tools=[charge])
    with fl.Runtime.open(url, agents=[agent]) as rt:
        lease = rt.store.lease("pay-1")
        assert lease is not None and lease.owner
        with pytest.raises(fl.errors.RunLocked):  # its owner key has not lapsed yet
            rt.resume("pay-1")
        wait_until(
            lambda: not rt.store.owner_alive(lease.owner), 30, "the killed owner's key to lapse"
        )
        recovered = rt.recover()
        assert [h.id for h in recovered] == ["pay-1"]
        result = recovered[0].wait(timeout=30)
        failed = [r.event for r in rt.events("pay-1") if r.type == "tool.failed"]
    assert result.status == fl.RunStatus.COMPLETED and "unknown" in result.output
    assert [f.kind for f in failed] == ["interrupted"]  # type: ignore[attr-defined]
    assert ledger.read_text() == "charged 7\n"  # charged once, never again


def test_clear_failures_at_open(nats_server: NatsServer, tmp_path: Path) -> None:
    with pytest.raises(
        StoreAccessError, match=r"cannot reach a NATS server at nats://127\.0\.0\.1:1"
    ):
        fl.Runtime.open("nats://127.0.0.1:1")
    with pytest.raises(ConfigError, match="namespace"):
        connect_store(f"{nats_server.url}/no.dots")
    with pytest.raises(ConfigError, match="replicas"):
        connect_store(f"{nats_server.url}/x?replicas=9")
    with pytest.raises(ConfigError, match="unknown option"):
        connect_store(f"{nats_server.url}/x?replica=3")
    with pytest.raises(ConfigError, match="map_size"):
        fl.Runtime.open(f"{nats_server.url}/x", map_size=1 << 30)
    with pytest.raises(StoreNotFound, match="no foldloop store"):
        fl.Runtime.open(f"{nats_server.url}/never-made", create=False)
    for bad_port in ("nats://127.0.0.1:99999/x", "nats://127.0.0.1:/x", "nats://[::1]:/x"):
        with pytest.raises(ConfigError, match="is not a port"):
            connect_store(bad_port)
    for no_host in ("nats://:4222/x", f"{nats_server.url},,127.0.0.1:1/x"):
        with pytest.raises(ConfigError, match="without a host"):
            connect_store(no_host)
    with pytest.raises(ConfigError, match="is not a URL"):
        connect_store("nats://[]:4222/x")
    upper = "NATS" + nats_server.url[4:]  # a scheme is case-insensitive
    with fl.Runtime.open(f"{upper}/x") as rt:
        assert rt.store.location == f"{nats_server.url}/x"
    for mistyped in ("nat://127.0.0.1:4222/x", "http://127.0.0.1:4222/x"):
        with pytest.raises(ConfigError, match="a URL no store is at"):
            fl.Runtime.open(mistyped)
    assert not (Path.cwd() / "nat:").exists() and not (Path.cwd() / "http:").exists()


def test_a_server_without_jetstream_is_named_as_such(tmp_path: Path) -> None:
    server = start_server(tmp_path, jetstream=False)
    try:
        with pytest.raises(StoreAccessError, match="does not have JetStream enabled"):
            fl.Runtime.open(server.url)
    finally:
        server.stop()


def test_an_open_rides_out_jetstream_answering_slower_than_a_request_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server stops (SIGSTOP) as the store's stream is looked up, for longer than a
    request's timeout (a loaded cluster making a replicated stream): the open asks again."""
    from foldloop.store import _jetstream_store
    from foldloop.store._nats_log import NatsLog
    from tests.log_capture import capture_logs

    monkeypatch.setattr(_jetstream_store, "CONNECT_TIMEOUT_S", 1.0)
    server = start_server(tmp_path)
    assert server.proc is not None
    pid, ensure, paused = server.proc.pid, NatsLog.ensure, []

    async def paused_once(self: NatsLog, *, create: bool) -> None:
        if not paused:
            paused.append(True)
            os.kill(pid, signal.SIGSTOP)
            threading.Timer(1.5, os.kill, (pid, signal.SIGCONT)).start()
        await ensure(self, create=create)

    monkeypatch.setattr(NatsLog, "ensure", paused_once)
    try:
        with capture_logs() as logs, fl.Runtime.open(f"{server.url}/slow") as rt:
            assert rt.runs() == []
        assert [e["attempt"] for e in logs if e.get("event") == "jetstream_setup_slow"] == [1]
    finally:
        os.kill(pid, signal.SIGCONT)
        server.stop()


def test_recover_skips_a_run_whose_lease_is_damaged(nats_url: str) -> None:
    """A lease that does not decode is that run's StoreCorrupted, and recover() goes on."""
    from foldloop.store._nats_names import token
    from tests.log_capture import capture_logs

    agent = fl.Agent(name="once", llm=fl.ScriptedLLM([fl.Reply(text="done")]))
    with fl.Runtime.open(nats_url, agents=[agent]) as rt:
        assert rt.spawn(agent, "hi", run_id="damaged.run").wait(timeout=30).ok
        store = rt.store
        put = store._tables._kv["leases"].put  # type: ignore[attr-defined]
        store._call(put(token("damaged.run"), b"\xc1 not a lease"))  # type: ignore[attr-defined]
        store._call(put("_ff", b"\xc1"))  # type: ignore[attr-defined]  # a key no run has
        with pytest.raises(fl.errors.StoreCorrupted, match=r"'damaged\.run''s lease"):
            store.lease("damaged.run")
        assert "damaged.run" not in store.leases()
        with capture_logs() as logs:
            assert rt.recover() == []
        assert [e["run_id"] for e in logs if e.get("event") == "recover_skipped"] == ["damaged.run"]


def test_a_stream_made_by_something_else_is_refused(nats_url: str) -> None:
    base, namespace = nats_url.split("?", maxsplit=1)[0].rsplit("/", 1)

    async def squat() -> None:
        nc = await nats.connect(base)
        await nc.jetstream().add_stream(name=f"fl_{namespace}_log", subjects=["elsewhere.>"])
        await nc.close()

    asyncio.run(squat())
    with pytest.raises(StoreError, match="was not made by foldloop"):
        fl.Runtime.open(nats_url)


def test_an_event_over_the_servers_max_payload_is_refused_unwritten(nats_url: str) -> None:
    agent = calc()
    with fl.Runtime.open(nats_url, agents=[agent]) as rt:
        with pytest.raises(ConfigError, match="max_payload"):
            rt.spawn(agent, "x" * 1_048_200, run_id="big")
        assert rt.runs() == [] and rt.store.head("big") == 0


def test_approval_records_a_crash_cut_are_rebuilt_from_the_log_on_take_over(
    nats_url: str,
) -> None:
    from tests.store_contract import request

    store = connect_store(nats_url)
    try:
        epoch = store.acquire_lease("r", "gone").wait()
        asked = fl.store.ApprovalChanges(requests=(request("r", "c1"),))
        store.append(
            "r",
            fl.store.encode_all(
                [
                    fl.events.RunStarted(agent="a", input="x"),
                    fl.events.ToolRequested(
                        call_id="c1", tool="delete", args='{"path": "/tmp/x"}', step=1
                    ),
                ],
                1,
            ),
            expected_seq=0,
            lease=fl.store.Lease("gone", epoch),
            approvals=asked,
        ).wait()
        record = store.approval("r", "c1")
        assert record is not None

        async def cut() -> None:  # what a SIGKILL between the append and its records leaves
            nc = await nats.connect(nats_url.split("/t", maxsplit=1)[0])
            namespace = nats_url.rsplit("/", 1)[1].split("?", maxsplit=1)[0]
            kv = await nc.jetstream().key_value(f"fl_{namespace}_approvals")
            await kv.purge("r.r.c1")
            await nc.close()

        asyncio.run(cut())
        assert store.approval("r", "c1") is None
        store.acquire_lease("r", "next").wait()  # "gone" holds no owner key: taken over
        assert store.approval("r", "c1") == record
        assert store.open_approvals() == [record]
    finally:
        store.close()


def test_a_server_restarted_mid_run_costs_the_run_nothing(tmp_path: Path) -> None:
    server = start_server(tmp_path)
    steps = 12

    def slow(messages: Sequence[fl.Message], tools: Sequence[object]) -> fl.Reply:
        done = sum(1 for m in messages if m.role == "tool")
        if done >= steps:
            return fl.Reply(text=f"{done} done")
        return fl.Reply(tool_calls=[fl.ToolCall("add", {"a": done, "b": 1})])

    agent = fl.Agent(
        name="slow",
        llm=fl.ScriptedLLM(slow, latency_s=0.05),
        tools=[add],
        limits=fl.Limits(max_steps=40),
    )
    try:
        with fl.Runtime.open(f"{server.url}/restart", agents=[agent]) as rt:
            handle = rt.spawn(agent, "go")
            wait_until(lambda: rt.store.head(handle.id) >= 10, 30, "a few steps")
            server.kill()
            server.start()  # same port and JetStream directory: what was stored is there
            result = handle.wait(timeout=60)
            assert (result.status, result.output) == (fl.RunStatus.COMPLETED, f"{steps} done")
            seqs = [r.seq for r in rt.events(handle.id)]
            assert seqs == list(range(1, len(seqs) + 1))
            assert rt.verify(handle.id).output == f"{steps} done"
    finally:
        server.stop()


def test_a_cancel_from_another_host_reaches_the_run_where_it_is_driven(nats_url: str) -> None:
    @fl.tool
    def wait_a_bit(n: int) -> int:
        """Return n."""
        return n

    def forever(messages: Sequence[fl.Message], tools: Sequence[object]) -> fl.Reply:
        return fl.Reply(tool_calls=[fl.ToolCall("wait_a_bit", {"n": len(messages)})])

    agent = fl.Agent(
        name="looper",
        llm=fl.ScriptedLLM(forever, latency_s=0.05),
        tools=[wait_a_bit],
        limits=fl.Limits(max_steps=10_000, no_progress=None),
    )
    with fl.Runtime.open(nats_url, agents=[agent]) as worker, fl.Runtime.open(nats_url) as host:
        handle = host.spawn(agent, "go")
        wait_until(lambda: worker.store.head(handle.id) >= 6, 30, "the run to be under way")
        host.handle(handle.id).cancel()
        # returned once the cancel the worker took is in the log
        assert host.state(handle.id).status is fl.RunStatus.CANCELLED
        result = handle.wait(timeout=30)
        assert result.status is fl.RunStatus.CANCELLED
        assert worker.state(handle.id).status is fl.RunStatus.CANCELLED


def test_listing_a_bucket_of_more_than_a_thousand_keys(nats_url: str) -> None:
    store = connect_store(nats_url)
    try:
        ops = [
            store.put_checkpoint(fl.store.Checkpoint(name=f"p{i}", position=i)) for i in range(1100)
        ]
        for op in ops:
            assert op.wait() is True
        store.delete_checkpoint("p7").wait()
        listed = {c.name: c.position for c in store.checkpoints()}
        assert listed == {f"p{i}": i for i in range(1100) if i != 7}
    finally:
        store.close()


def test_a_gated_call_with_large_args_waits_for_approval_and_runs(nats_url: str) -> None:
    big = "x" * 200_000  # past NATS's 64 KiB limit on headers: args never ride in one

    agent = publisher(big)
    with fl.Runtime.open(nats_url, agents=[agent]) as rt:
        handle = rt.spawn(agent, "go")
        wait_until(rt.pending_approvals, 30, "the approval request")
        (pending,) = rt.pending_approvals()
        assert pending.args == {"text": big}
        rt.approve(run_id=pending.run_id, call_id=pending.call_id, by="alice")
        assert handle.wait(timeout=30).output == "published 200000"


def test_credentials_in_the_url_reach_the_server_and_never_a_message(tmp_path: Path) -> None:
    server = start_server(tmp_path, extra=["--user", "alice", "--pass", "s3cret"])
    try:
        good = server.url.replace("nats://", "nats://alice:s3cret@") + "/auth"
        agent = calc()
        with fl.Runtime.open(good, agents=[agent]) as rt:
            assert rt.spawn(agent, "2+3").wait(timeout=30).output == "sum 5"
        wrong = server.url.replace("nats://", "nats://alice:wrong@") + "/auth"
        with pytest.raises(StoreAccessError, match="refused this store's credentials") as info:
            fl.Runtime.open(wrong)
        assert "wrong" not in str(info.value) and "nats://***@127.0.0.1" in str(info.value)
        with pytest.raises(ConfigError, match=r"creds='/nowhere/x\.creds'.*no such file"):
            connect_store(f"{server.url}/auth?creds=/nowhere/x.creds")
    finally:
        server.stop()


def test_closing_with_the_server_gone_returns_soon_and_leaves_no_thread(tmp_path: Path) -> None:
    server = start_server(tmp_path)
    agent = calc()
    before = set(threading.enumerate())
    rt = fl.Runtime.open(f"{server.url}/gone", agents=[agent])
    try:
        assert rt.spawn(agent, "2+3").wait(timeout=30).ok
    finally:
        server.kill()
    started = time.monotonic()
    rt.close()  # never raises: the owner key lapses at owner_ttl without it
    assert time.monotonic() - started < 20
    wait_until(
        lambda: not [t for t in threading.enumerate() if t not in before and t.is_alive()],
        10,
        "the store's threads to end",
    )


def all_stopped(pid: int) -> bool:
    """Every thread of process ``pid`` is stopped by a signal (Linux: state T in /proc;
    elsewhere, where there is no telling, True)."""
    tasks = Path(f"/proc/{pid}/task")
    if not tasks.is_dir():
        return True
    states = []
    for task in tasks.iterdir():
        with contextlib.suppress(OSError):
            states.append((task / "stat").read_text().rsplit(")", 1)[1].split()[0])
    return bool(states) and all(state in ("T", "t") for state in states)


def test_a_read_in_flight_when_the_store_closes_is_a_store_error(tmp_path: Path) -> None:
    """The server paused, a read waits on its answer; closing the store cancels the calls in
    flight: the reader hears a StoreError, not asyncio's cancellation."""
    server = start_server(tmp_path)
    assert server.proc is not None
    pid = server.proc.pid
    store = connect_store(f"{server.url}/closing")
    outcome: list[BaseException | object] = []

    def reading() -> None:
        try:
            outcome.append(store.lease("r1"))
        except BaseException as exc:  # what escapes is the point of the test
            outcome.append(exc)

    def asking() -> bool:  # the reader waits on the loop for the server's answer
        frame = sys._current_frames().get(thread.ident or 0)
        names = [f.name for f in traceback.extract_stack(frame)] if frame else []
        return "call" in names and "result" in names

    try:
        os.kill(pid, signal.SIGSTOP)
        # every thread of the server stopped before the read goes out (one in a syscall, an
        # fsync on a loaded disk say, stops only once it returns: it could still answer)
        wait_until(lambda: all_stopped(pid), 10, "the server's threads to stop")
        thread = threading.Thread(target=reading)
        thread.start()
        wait_until(lambda: asking() or outcome, 10, "the read to wait on the server")
        assert not outcome, f"the read ended before the store closed: {outcome}"
        store.close()
        thread.join(30)
        assert not thread.is_alive() and len(outcome) == 1
        assert isinstance(outcome[0], StoreError), outcome
        assert "closed" in str(outcome[0])
    finally:
        os.kill(pid, signal.SIGCONT)
        server.stop()


def test_a_reply_or_result_too_big_for_the_servers_max_payload_is_handled_once(
    tmp_path: Path,
) -> None:
    # With max_payload 64 KiB, a 200 KB reply's append was refused, the run interrupted and
    # recovered every 2 s: the model called again and again (a probe). Now the reply fails
    # the run at once, as on LMDB, and a tool result is cut to what the store can keep.
    conf = tmp_path / "small.conf"
    conf.write_text("max_payload: 65536\n")
    server = start_server(tmp_path / "srv", extra=["-c", str(conf)])
    calls: list[int] = []

    def big(messages: object, tools: object) -> fl.Reply:
        calls.append(1)
        return fl.Reply(text="x" * 200_000)

    @fl.tool(idempotent=True)
    def dump() -> str:
        """Return a lot."""
        return "y" * 200_000

    talker = fl.Agent(name="talker", llm=fl.ScriptedLLM(big))
    dumper = fl.Agent(
        name="dumper",
        llm=fl.ScriptedLLM([fl.Reply(tool_calls=[fl.ToolCall("dump", {})]), fl.Reply(text="ok")]),
        tools=[dump],
    )
    try:
        with fl.Runtime.open(f"{server.url}/big", agents=[talker, dumper]) as rt:
            assert rt.store.max_event_bytes < 65536
            result = rt.spawn(talker, "go").wait(timeout=30)
            assert result.status is fl.RunStatus.FAILED, result
            assert "200,000 bytes, over the" in result.reason
            assert calls == [1]
            run = rt.spawn(dumper, "go")
            assert run.wait(timeout=30).ok
            (done,) = [r.event for r in rt.events(run.id) if r.type == "tool.completed"]
            assert done.original_chars == 200_000 and len(done.result) < 65536
    finally:
        server.stop()
