"""While a runtime is open, the collector's youngest threshold left at Python's default is
raised (a fleet's in-flight objects were otherwise promoted and rescanned by full
collections); the last runtime to close puts it back; a host's own thresholds are kept.

Each case runs in a fresh interpreter: thresholds are the process's, not a test's."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

from foldloop.runtime._collector import PYTHON_DEFAULT, YOUNG_THRESHOLD


def thresholds_seen(tmp_path: Path, steps: str) -> list[list[int]]:
    """Run ``steps`` (Python, with ``fl``, ``gc``, ``path``, ``DEFAULT`` and ``seen()``) in a
    fresh interpreter; what ``seen()`` recorded of gc.get_threshold() at each call."""
    script = (
        textwrap.dedent(
            """
        import gc, json, sys
        import foldloop as fl
        from foldloop.runtime._collector import PYTHON_DEFAULT as DEFAULT
        path = sys.argv[1]
        out = []
        def seen():
            out.append(list(gc.get_threshold()))
        """
        )
        + textwrap.dedent(steps)
        + "\nprint(json.dumps(out))\n"
    )
    seen: list[list[int]] = printed(script, tmp_path)
    return seen


def printed(script: str, tmp_path: Path) -> Any:
    """What ``script`` (run in a fresh interpreter with a store path) printed last, as JSON."""
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "store")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def test_pythons_default_is_raised_while_a_runtime_is_open_and_put_back(tmp_path: Path) -> None:
    seen = thresholds_seen(
        tmp_path,
        """
        seen()
        rt = fl.Runtime.open(path)
        seen()
        rt.close()
        seen()
        """,
    )
    assert seen == [
        [PYTHON_DEFAULT, 10, 10],
        [YOUNG_THRESHOLD, 10, 10],
        [PYTHON_DEFAULT, 10, 10],
    ]


def test_only_the_youngest_generation_is_put_back(tmp_path: Path) -> None:
    seen = thresholds_seen(
        tmp_path,
        """
        with fl.Runtime.open(path):
            gc.set_threshold(gc.get_threshold()[0], 30, 40)  # the host's, set while open
        seen()
        """,
    )
    assert seen == [[PYTHON_DEFAULT, 30, 40]]


def test_the_last_runtime_to_close_puts_it_back(tmp_path: Path) -> None:
    seen = thresholds_seen(
        tmp_path,
        """
        first = fl.Runtime.open(path)
        second = fl.Runtime.open(path + "-2")
        first.close()
        seen()
        second.close()
        seen()
        again = fl.Runtime.open(path)
        seen()
        again.close()
        seen()
        """,
    )
    assert [t[0] for t in seen] == [YOUNG_THRESHOLD, PYTHON_DEFAULT] * 2


def test_a_hosts_own_thresholds_are_kept(tmp_path: Path) -> None:
    seen = thresholds_seen(
        tmp_path,
        """
        gc.set_threshold(2000, 20, 5)
        with fl.Runtime.open(path):
            seen()
        seen()
        with fl.Runtime.open(path):
            gc.set_threshold(1500, 10, 10)  # set while open: the host's, kept at close
            with fl.Runtime.open(path + "-2"):
                seen()
        seen()
        gc.set_threshold(DEFAULT, 10, 10)
        with fl.Runtime.open(path):
            gc.set_threshold(3000, 10, 10)  # changed after the runtime raised it
        seen()
        """,
    )
    assert seen == [[2000, 20, 5], [2000, 20, 5], [1500, 10, 10], [1500, 10, 10], [3000, 10, 10]]


def test_a_forked_child_has_no_runtime_open_and_pythons_default(tmp_path: Path) -> None:
    seen = thresholds_seen(
        tmp_path,
        """
        import os, signal, time
        rt = fl.Runtime.open(path)
        seen()
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: reports through the pipe, never returns into this script
            code = 1
            try:
                signal.alarm(50)
                os.close(read)
                child = [list(gc.get_threshold())]
                began = time.monotonic()
                rt.close()  # inherited: its threads stayed in the parent, nothing to stop
                child.append([time.monotonic() - began < 2])
                agent = fl.Agent(name="a", llm=fl.ScriptedLLM([fl.Reply(text="ok")]))
                with fl.Runtime.open(path + "-child") as other:
                    child.append(list(gc.get_threshold()))
                    done = other.spawn(agent, "hi").wait(timeout=30)
                child.append(list(gc.get_threshold()))
                child.append([done.status == "completed"])
                os.write(write, json.dumps(child).encode())
                code = 0
            finally:
                os._exit(code)
        os.close(write)
        with os.fdopen(read) as pipe:
            out.extend(json.loads(pipe.read() or "[]"))
        out.append([os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])])
        seen()
        rt.close()
        seen()
        """,
    )
    assert seen == [
        [YOUNG_THRESHOLD, 10, 10],  # the parent, runtime open
        [PYTHON_DEFAULT, 10, 10],  # the child, just forked
        [True],  # closing the runtime it inherited returned at once
        [YOUNG_THRESHOLD, 10, 10],  # the child's own runtime open
        [PYTHON_DEFAULT, 10, 10],  # and closed
        [True],  # its run completed
        [0],  # the child's exit code
        [YOUNG_THRESHOLD, 10, 10],  # the parent's runtime still open
        [PYTHON_DEFAULT, 10, 10],  # and closed
    ]


def test_a_finished_run_is_freed_without_waiting_for_a_cyclic_collection(tmp_path: Path) -> None:
    # A run's actor holds its whole state: in a reference cycle, every finished run would
    # stay in memory until a collection found it (rare, with the threshold raised).
    script = textwrap.dedent(
        """
        import gc, json, sys
        import foldloop as fl

        @fl.tool(idempotent=True)
        def ping(i: int) -> str:
            '''Answer at once.'''
            return f"pong {i}"

        def reply(messages, tools):
            if sum(1 for m in messages if m.role == "assistant") < 2:
                return fl.Reply(tool_calls=[fl.ToolCall("ping", {"i": 1})])
            return fl.Reply(text="done")

        instant = fl.Agent(name="instant", llm=fl.ScriptedLLM(reply), tools=[ping])
        later = fl.Agent(name="later", llm=fl.ScriptedLLM(reply, latency_s=0.01), tools=[ping])
        with fl.Runtime.open(sys.argv[1], agents=[instant, later]) as rt:
            rt.spawn(instant, "warm up").wait(timeout=30)
            gc.collect()
            gc.set_debug(gc.DEBUG_SAVEALL)  # what a collection finds is kept, to be counted
            handles = [rt.spawn(a, "go") for a in (instant, later) for _ in range(10)]
            ok = all(h.wait(timeout=30).ok for h in handles)
            gc.collect()
            ours = [o for o in gc.garbage if type(o).__module__.startswith("foldloop")]
            kept = sorted({type(o).__name__ for o in ours})
        print(json.dumps([ok, kept]))
        """
    )
    ok, kept = printed(script, tmp_path)
    assert ok
    assert kept == []  # before: RunActor (its _post a closure over itself)
