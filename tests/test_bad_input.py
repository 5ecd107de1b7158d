"""The bad-input catalogue of ../shared/research/reliability.md §3.6, entry by entry.

Each test asserts the clear error (a FoldloopError naming the value, the rule and the fix)
and that nothing was lost or created. Entries tested elsewhere, by number:
 1 file as store          test_store::test_a_file_or_a_foreign_directory_is_refused (+ here)
 4 bad map_size           test_store::test_bad_map_size_is_refused (+ here: no directory made)
 6 second open            test_store::test_two_opens_in_one_process_share_the_store (+ here)
 7 not LMDB               test_store::test_non_lmdb_data_file_is_refused
 8 truncated data.mdb     test_store::test_truncated_data_file_is_refused_not_a_crash
 9 emptied data.mdb       test_store::test_emptied_data_file_is_not_mistaken_for_a_new_store
11/12 run ids             test_runtime::test_spawn_refuses_bad_or_taken_run_ids
13 resume('nope')         test_runtime::test_spawn_refuses_bad_or_taken_run_ids
16 payload > 1 MiB        test_runtime::test_an_oversized_event_is_refused_before_any_write
17 stale expected_seq     test_store::test_stale_expected_seq_is_refused_and_writes_nothing
18 fenced-off owner       test_store::test_leases_fence_a_stale_owner
19 tool schema errors     test_runtime::test_tool_schema_errors_happen_at_decoration (+ here)
21 invalid tool args      test_runtime::test_invalid_arguments_are_fed_back_then_three_...
22-24 approvals           test_approvals (forged/unknown, expired, decided twice)
27-30 CLI                 test_readme_and_cli (missing store 3, usage 2, corrupt 4, escapes)
Not applicable: 5 (max_readers is fixed by foldloop, not a parameter); 25 (a request records
the exact args it was granted for: the call that runs is the recorded one, args cannot change).
"""

from __future__ import annotations

import functools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

import foldloop as fl
from foldloop.store._preflight import network_filesystem


def listing(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


@functools.cache
def quiet_agent(name: str = "a") -> fl.Agent:
    return fl.Agent(name=name, llm=fl.ScriptedLLM([fl.Reply(text="ok")]))


# 1
def test_1_a_regular_file_is_not_a_store_and_is_left_alone(tmp_path: Path) -> None:
    target = tmp_path / "notes.txt"
    target.write_text("mine")
    with pytest.raises(fl.StoreError, match="is not a directory"):
        fl.Runtime.open(target)
    with pytest.raises(fl.StoreError, match="cannot create the store directory"):
        fl.Runtime.open(target / "sub")
    assert target.read_text() == "mine" and listing(tmp_path) == ["notes.txt"]


# 1, a store that is no path at all
class _BytesPath:
    def __fspath__(self) -> bytes:
        return b"store"


@pytest.mark.parametrize("where", [12345, None, b"store", ["store"], 3.5, _BytesPath()])
def test_1_a_store_that_is_not_a_path_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: object
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(fl.ConfigError) as info:
        fl.Runtime.open(where)  # type: ignore[arg-type]
    said = str(info.value)
    assert "must be a directory path (a str or os.PathLike" in said and "nats://" in said
    assert f"({type(where).__name__})" in said and "Runtime.open('.foldloop')" in said
    assert ("os.fsdecode()" in said) == (not isinstance(where, int | float | list | None))
    with pytest.raises(fl.ConfigError, match="must be a path"):
        fl.store.open_store(where)  # type: ignore[arg-type]
    assert listing(tmp_path) == []


@pytest.mark.parametrize("where", ["", "   ", "store\0x"])
def test_1_an_empty_store_path_or_one_with_a_nul_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    monkeypatch.chdir(tmp_path)  # "" would otherwise make this directory the store
    with pytest.raises(fl.ConfigError, match="pass a directory"):
        fl.Runtime.open(where)
    if "\0" not in where:  # an argv cannot hold a NUL
        done = subprocess.run(
            [sys.executable, "-m", "foldloop", "--store", where, "demo"],
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 2 and "give a store directory" in done.stderr, done
    assert listing(tmp_path) == []


# 2
@pytest.mark.parametrize("name", ["bad\udcffname", "x" * 300])
def test_1_a_path_no_store_can_be_at_is_a_config_error_and_makes_nothing(
    tmp_path: Path, name: str
) -> None:
    """Not UTF-8 (bytes of another encoding in argv), or a name the system refuses as too
    long: said before anything is made, not lmdb's UnicodeEncodeError or an OSError."""
    with pytest.raises(fl.ConfigError, match="the store path"):
        fl.Runtime.open(tmp_path / name)
    assert list(tmp_path.iterdir()) == []


def test_1_a_store_whose_owners_directory_is_a_file_is_refused_by_name(tmp_path: Path) -> None:
    store = tmp_path / "s"
    fl.Runtime.open(store).close()
    shutil.rmtree(store / "owners")
    (store / "owners").write_text("not a directory")
    with pytest.raises(fl.errors.StoreAccessError, match="owner locks"):
        fl.Runtime.open(store)


def test_1_a_run_id_no_store_key_can_hold_names_no_run(tmp_path: Path) -> None:
    with fl.Runtime.open(tmp_path / "s") as rt:
        for read in (rt.state, rt.explain, rt.tree, rt.handle, lambda r: list(rt.events(r))):
            with pytest.raises(fl.RunNotFound):
                read("bad\udcffid")


def test_2_a_network_filesystem_is_recognised_from_the_mount_table(tmp_path: Path) -> None:
    mounts = (
        "/dev/sda1 / ext4 rw 0 0\n"
        f"srv:/export {tmp_path}/nfs nfs4 rw 0 0\n"
        f"//srv/share {tmp_path}/my\\040share cifs rw 0 0\n"
        f"/dev/sdb1 {tmp_path}/nfs/local ext4 rw 0 0\n"
    )
    assert network_filesystem(tmp_path / "nfs" / "store", mounts) == "nfs4"
    assert network_filesystem(tmp_path / "my share" / "store", mounts) == "cifs"
    assert network_filesystem(tmp_path / "nfs" / "local" / "store", mounts) is None
    assert network_filesystem(tmp_path / "nfsx", mounts) is None
    # and the real mount table says this temp dir is local: opening works
    assert network_filesystem(tmp_path, Path("/proc/mounts").read_text()) is None


# 3
def test_3_a_store_the_user_cannot_write_is_refused_clearly(tmp_path: Path) -> None:
    store = tmp_path / "store"
    with fl.Runtime.open(store) as rt:
        rt.spawn(quiet_agent(), "hi").wait(timeout=30)
    before = listing(store)
    code = (
        "import foldloop as fl, sys\n"
        "try:\n    fl.Runtime.open(sys.argv[1])\n"
        "except fl.StoreError as e:\n    print(e); sys.exit(7)\n"
    )
    argv = [sys.executable, "-c", code, str(store)]
    if os.geteuid() == 0:
        # root may write anywhere: make the store read-only with a bind mount, in a private
        # mount namespace of the child only
        if shutil.which("unshare") is None:
            pytest.skip("running as root without unshare(1)")
        remount = f"mount --bind {store} {store} && mount -o remount,bind,ro {store} && exec "
        argv = ["unshare", "-m", "sh", "-c", remount + shlex.join(argv)]
    else:
        os.chmod(store, 0o500)
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    if "Operation not permitted" in proc.stderr and "mount" in proc.stderr:
        pytest.skip("root without CAP_SYS_ADMIN cannot make a read-only mount here")
    os.chmod(store, 0o700)
    assert proc.returncode == 7, proc.stderr
    assert "foldloop needs read and write access" in proc.stdout
    assert listing(store) == before


# 4
@pytest.mark.parametrize("map_size", [0, -1, "10GB", 1 << 60])
def test_4_a_bad_map_size_creates_nothing(tmp_path: Path, map_size: object) -> None:
    with pytest.raises(fl.ConfigError, match="map_size must be an int of bytes"):
        fl.Runtime.open(tmp_path / "store", map_size=map_size)  # type: ignore[arg-type]
    assert not (tmp_path / "store").exists()


@pytest.mark.parametrize("poll_interval", [0, -1, 1e-6, float("nan"), "0.1", 1e9, True])
def test_a_bad_poll_interval_creates_nothing(tmp_path: Path, poll_interval: object) -> None:
    with pytest.raises(fl.ConfigError, match="poll_interval must be a number of seconds from"):
        fl.Runtime.open(tmp_path / "store", poll_interval=poll_interval)  # type: ignore[arg-type]
    assert not (tmp_path / "store").exists()


# 6
def test_6_two_opens_of_one_path_share_one_environment(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    os.symlink(tmp_path / "real", tmp_path / "link")
    with (
        fl.Runtime.open(tmp_path / "real" / "s") as a,
        fl.Runtime.open(tmp_path / "link" / "s") as b,
    ):
        assert a.store is b.store
        run = a.spawn(quiet_agent(), "hi")
        run.wait(timeout=30)
        assert [r.type for r in b.events(run.id)][-1] == "run.completed"


# 10
def test_10_a_store_of_a_newer_format_is_refused_untouched(tmp_path: Path) -> None:
    store = tmp_path / "store"
    with fl.Runtime.open(store) as rt:
        rt.spawn(quiet_agent(), "hi").wait(timeout=30)
    (store / "foldloop.store").write_text(json.dumps({"format": 99}) + "\n")
    data = (store / "data.mdb").read_bytes()
    with pytest.raises(fl.StoreError, match="store format 99, newer than this foldloop"):
        fl.Runtime.open(store)
    assert (store / "data.mdb").read_bytes() == data


# 14, 15
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"input": "bad \ud800 text"},
            r"input contains an unpaired surrogate \(U\+D800\) at index 4",
        ),
        ({"input": b"bytes"}, "input must be a str; got bytes"),
        ({"metadata": {"user": object()}}, r"metadata\['user'\] must be a str; got object"),
        ({"metadata": {"k": "\udfff"}}, r"metadata\['k'\] contains an unpaired surrogate"),
        ({"metadata": ["not", "a", "mapping"]}, "metadata must be a mapping"),
        ({"parent_run_id": "has space"}, "run_id must be 1-128 characters"),
        ({"input": "x" * (2 << 20)}, "over the 1,048,576-byte limit"),
    ],
)
def test_14_15_16_payloads_the_log_cannot_hold_are_refused_before_any_write(
    tmp_path: Path, kwargs: dict[str, object], message: str
) -> None:
    with fl.Runtime.open(tmp_path / "store") as rt:
        rt.spawn(quiet_agent(), "fine", run_id="before").wait(timeout=30)
        last = rt.store.last_position()
        args: dict[str, object] = {"input": "hi", "run_id": "bad", **kwargs}
        with pytest.raises(fl.ConfigError, match=message):
            rt.spawn(quiet_agent(), **args)  # type: ignore[arg-type]
        assert rt.store.last_position() == last
        assert [r.run_id for r in rt.runs()] == ["before"]


def test_15_surrogates_from_a_model_or_a_tool_are_made_storable(tmp_path: Path) -> None:
    @fl.tool
    def echo(text: str) -> str:
        """Echo, badly."""
        return "broken \ud800 result"

    llm = fl.ScriptedLLM(
        [
            # raw arguments as a provider's JSON may carry them: an escaped lone surrogate
            fl.Reply(tool_calls=[fl.ToolCall("echo", '{"text": "x\ud800y"}', id="c\udc80")]),
            fl.Reply(text="end \udc80", model="gpt-x\ud800"),
        ]
    )
    agent = fl.Agent(name="surrogates", llm=llm, tools=[echo])
    with pytest.raises(fl.ConfigError, match="instructions contain an unpaired surrogate"):
        fl.Agent(name="bad", llm=llm, instructions="\ud800")
    with fl.Runtime.open(tmp_path / "store") as rt:
        run = rt.spawn(agent, "go")
        result = run.wait(timeout=30)
        assert result.status is fl.RunStatus.COMPLETED
        assert result.output == "end ?"
        done = [r.event for r in rt.events(run.id)]
        assert any(getattr(e, "result", "") == "broken ? result" for e in done)
        models = [e.model for e in done if isinstance(e, fl.events.ModelResponded)]
        assert models[-1] == "gpt-x?"
        (asked,) = [e for e in done if isinstance(e, fl.events.ToolRequested)]
        assert (asked.args, asked.call_id) == ('{"text": "x?y"}', "c?")
        rt.verify(run.id)


# 19
def test_19_tool_definitions_that_cannot_work_are_refused_at_definition() -> None:
    def fn(x: int) -> int:
        """Identity."""
        return x

    for kwargs, message in [
        ({"timeout": float("nan")}, "timeout must be a finite number"),
        ({"timeout": 0}, "timeout must be a finite number"),
        ({"timeout": float("inf")}, "timeout must be a finite number"),
        ({"name": "bad name"}, "tool name 'bad name' must be"),
    ]:
        with pytest.raises(fl.ConfigError, match=message):
            fl.tool(**kwargs)(fn)  # type: ignore[call-overload]
    one, two = fl.tool(fn), fl.tool(name="fn")(fn)
    with pytest.raises(fl.ConfigError, match="tool 'fn' is registered twice"):
        fl.Agent(name="dup", llm=fl.ScriptedLLM([]), tools=[one, two])
    with pytest.raises(fl.ConfigError, match=r"is not a tool; decorate it with @fl\.tool"):
        fl.Agent(name="raw", llm=fl.ScriptedLLM([]), tools=[fn])  # type: ignore[list-item]


# 20
def test_20_an_unknown_tool_is_told_to_the_model_not_raised(tmp_path: Path) -> None:
    @fl.tool(idempotent=True)
    def add(a: int, b: int) -> int:
        """Add."""
        return a + b

    llm = fl.ScriptedLLM(
        [fl.Reply(tool_calls=[fl.ToolCall("rm_rf", {"path": "/"})]), fl.Reply(text="sorry")]
    )
    agent = fl.Agent(name="unknown-tool", llm=llm, tools=[add])
    with fl.Runtime.open(tmp_path / "store") as rt:
        run = rt.spawn(agent, "go")
        assert run.wait(timeout=30).status is fl.RunStatus.COMPLETED
        failed = [r.event for r in rt.events(run.id) if r.type == "tool.failed"]
        assert len(failed) == 1 and failed[0].kind == "invalid_args"  # type: ignore[union-attr]
        assert "there is no tool named 'rm_rf'; the tools are: add" in failed[0].error  # type: ignore[union-attr]
        tool_messages = [m for m in rt.state(run.id).messages if m.role == "tool"]
        assert "no tool named 'rm_rf'" in tool_messages[0].content


# 26
def test_26_a_run_holding_a_newer_event_type_reads_but_does_not_resume(tmp_path: Path) -> None:
    agent = fl.Agent(  # one step (a call to a tool it lacks), then its step ceiling
        name="newer",
        llm=fl.ScriptedLLM([fl.Reply(tool_calls=[fl.ToolCall("nope", {})])]),
        limits=fl.Limits(max_steps=1),
    )
    with fl.Runtime.open(tmp_path / "store", agents=[agent]) as rt:
        run = rt.spawn(agent, "go")
        assert run.wait(timeout=30).status is fl.RunStatus.LIMIT_REACHED
        raw = msgspec.msgpack.encode(["tool.stream_chunk", "c", "x"])  # positional, as stored
        head = rt.store.head(run.id)
        # what a newer writer leaves: a record whose payload has a tag this version lacks
        # (the event object only supplies the frame's schema version)
        placeholder = fl.events.RunCancelled()
        rt.store.submit(
            lambda w: w.append(run.id, [(placeholder, raw, 1)], expected_seq=head)
        ).wait()
        records = list(rt.events(run.id))
        assert records[-1].type == "tool.stream_chunk"  # kept and readable
        assert rt.state(run.id).status is fl.RunStatus.LIMIT_REACHED
        with pytest.raises(
            fl.SchemaChangedError, match=rf"seq {head + 1} holds a 'tool.stream_chunk'"
        ):
            rt.resume(run.id, extend=fl.Limits(max_steps=5))
        assert rt.store.head(run.id) == head + 1  # nothing appended by the refusal
    doctor = subprocess.run(
        [sys.executable, "-m", "foldloop", "--store", str(tmp_path / "store"), "doctor"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert doctor.returncode == 0, doctor.stderr  # intact: kept as written
    assert f"{run.id} seq {head + 1}: 'tool.stream_chunk'" in doctor.stdout, doctor.stdout


def test_bad_query_arguments_are_config_errors_naming_the_value(tmp_path: Path) -> None:
    """Reads refuse what cannot be a run id or a status, and a start past any seq or
    position reads nothing (not a "damaged store" from the key encoding)."""
    agent = quiet_agent()
    with fl.Runtime.open(tmp_path / "s", agents=[agent]) as rt:
        run = rt.spawn(agent, "hi")
        assert run.wait(timeout=60).ok
        for call in (lambda: rt.state(123), lambda: rt.handle(5), lambda: rt.events("")):  # type: ignore[arg-type]
            with pytest.raises(fl.ConfigError, match="a run id is a non-empty str"):
                call()
        with pytest.raises(fl.ConfigError, match="no run status 'bogus'; the statuses are"):
            rt.runs(status="bogus")
        with pytest.raises(fl.ConfigError, match="agent is an agent's name"):
            rt.runs(agent=5)  # type: ignore[arg-type]
        assert list(rt.events(run.id, from_seq=2**70)) == []
        assert list(rt.read_all(from_position=2**70)) == []
        pages = rt.read_all()
    with pytest.raises(fl.ConfigError, match="this runtime is closed"):
        list(pages)  # an iterator outliving its runtime says so, not a raw lmdb.Error


def test_a_parent_run_id_the_store_does_not_hold_is_a_config_error(tmp_path: Path) -> None:
    """A typo'd parent would file the run under a root that does not exist."""
    agent = quiet_agent()
    with fl.Runtime.open(tmp_path / "s", agents=[agent]) as rt:
        with pytest.raises(fl.ConfigError, match="parent_run_id 'nope' names no run"):
            rt.spawn(agent, "hi", parent_run_id="nope")
        assert rt.runs() == []  # nothing written
        parent = rt.spawn(agent, "parent")
        child = rt.spawn(agent, "child", parent_run_id=parent.id)
        assert child.wait(timeout=30).ok
        (row,) = [r for r in rt.runs() if r.run_id == child.id]
        assert row.parent_run_id == parent.id


@pytest.mark.parametrize("given", [None, 5, "leaf"])
@pytest.mark.parametrize(("field", "of"), [("tools", "@fl.tool"), ("agents", "fl.Agent")])
def test_tools_and_agents_that_are_not_lists_are_config_errors(
    field: str, of: str, given: object
) -> None:
    with pytest.raises(fl.ConfigError, match=rf"{field} is a list of {re.escape(of)}.*got"):
        fl.Agent(name="a", llm=fl.ScriptedLLM([]), **{field: given})  # type: ignore[arg-type]


def test_a_model_without_a_name_is_refused_at_the_agent() -> None:
    class Nameless:
        def complete(self, messages: object, tools: object, **kw: object) -> fl.Reply:
            return fl.Reply(text="hi")

    with pytest.raises(fl.ConfigError, match=r"llm must have a model attribute.*Nameless"):
        fl.Agent(name="a", llm=Nameless())  # type: ignore[arg-type]
    with pytest.raises(fl.ConfigError, match=r"valid Unicode text.*'m\\ud800'"):
        fl.Agent(name="a", llm=fl.ScriptedLLM([], model="m\ud800"))
    with pytest.raises(fl.ConfigError, match="at most 1024 characters"):
        fl.Agent(name="a", llm=fl.ScriptedLLM([], model="m" * 2_000_000))  # every reply


def test_a_gate_naming_a_tool_the_agent_lacks_is_refused_at_the_agent() -> None:
    """A misspelt gate would gate nothing: the dangerous tool would run unasked."""

    @fl.tool
    def rm(path: str) -> str:
        """Remove a path."""
        return path

    with pytest.raises(fl.ConfigError, match=r"approvals name tool\(s\) \['rn'\] that it does not"):
        fl.Agent(name="a", llm=fl.ScriptedLLM([]), tools=[rm], approvals=fl.RequireApproval({"rn"}))
    with pytest.raises(fl.ConfigError, match="pass a set of tool names"):
        fl.RequireApproval("rm")  # a str would gate the tools named 'r' and 'm'
    gated = fl.Agent(
        name="b", llm=fl.ScriptedLLM([]), tools=[rm], approvals=fl.RequireApproval({"rm"})
    )
    assert gated.approvals is not None and gated.approvals.requires("rm", "{}")


def test_a_decorated_non_function_and_a_negative_wait_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(fl.ConfigError, match=r"@fl\.tool decorates a function; got 5"):
        fl.tool()(5)  # type: ignore[call-overload]
    agent = quiet_agent()
    with fl.Runtime.open(tmp_path / "s", agents=[agent]) as rt:
        run = rt.spawn(agent, "hi")
        for bad in (-1, float("nan"), "3", 1e10):
            with pytest.raises(fl.ConfigError, match="timeout must be None or a number of sec"):
                run.wait(timeout=bad)  # type: ignore[arg-type]
        assert run.wait(timeout=60).ok


def test_an_error_carries_its_fact_and_its_advice_as_fields() -> None:
    """The command line replaces the advice by its own from the field, never by parsing a
    message: a fact that itself mentions Python survives whole."""
    from foldloop.cli._errors import in_cli_words as _in_cli_words

    err = fl.ApprovalError("the approval of run 'r' call 'c' expired", advice="rt.resume('r')")
    assert (str(err), err.fact, err.advice) == (
        "the approval of run 'r' call 'c' expired; rt.resume('r')",
        "the approval of run 'r' call 'c' expired",
        "rt.resume('r')",
    )
    assert _in_cli_words(err, "`foldloop resume r`") == (
        "the approval of run 'r' call 'c' expired; `foldloop resume r`"
    )
    plain = fl.StoreError("cancelled by the host: paid; see fl.docs")  # no advice field
    assert _in_cli_words(plain, "`foldloop runs`") == str(plain)


@pytest.mark.parametrize(
    ("given", "says"),
    [
        (b'{"foldloop": "run"}\n', "the export is bytes"),
        (None, "an export is its text (a str) or its lines; got NoneType"),
        (5, "an export is its text (a str) or its lines; got int"),
        ([7], "line 1 of the export is a int, not text"),
    ],
)
def test_an_import_given_no_text_says_so(tmp_path: Path, given: object, says: str) -> None:
    with (
        fl.Runtime.open(tmp_path / "s") as rt,
        pytest.raises(fl.ConfigError, match=re.escape(says)),
    ):
        rt.import_jsonl(given)  # type: ignore[arg-type]


def test_an_export_with_more_events_than_its_header_is_not_called_truncated(
    tmp_path: Path,
) -> None:
    agent = fl.Agent(name="a", llm=fl.ScriptedLLM([fl.Reply(text="ok")]))
    with fl.Runtime.open(tmp_path / "s", agents=[agent]) as rt:
        run = rt.spawn(agent, "go")
        assert run.wait(timeout=30).ok
        lines = list(rt.export(run.id))
    header = json.loads(lines[0])
    header["events"] -= 1
    with (
        fl.Runtime.open(tmp_path / "t") as rt,
        pytest.raises(fl.ConfigError, match=r"past the \d+ its header promises") as caught,
    ):
        rt.import_jsonl([json.dumps(header), *lines[1:]])
    assert "truncated" not in str(caught.value)


@pytest.mark.parametrize("text", ["", "\n", "  \n\n"])
def test_an_import_of_nothing_says_the_export_is_empty(tmp_path: Path, text: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "foldloop.cli", "--store", str(tmp_path / "s"), "import", "-"],
        input=text,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "the export is empty" in proc.stderr, proc.stderr
    assert not (tmp_path / "s").exists()
