"""A JetStream server away: what the host waits for honours its own deadlines."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

import foldloop as fl
import foldloop.runtime._facade as facade
from foldloop.errors import StoreError
from foldloop.store import answer_by
from foldloop.store._answer_by import LAST_LOOK_S, read_timeout
from tests.nats_servers import start_server
from tests.waiting import wait_until


def asks_slowly(messages: Sequence[fl.Message], tools: Sequence[object]) -> fl.Reply:
    return fl.Reply(text="late")


def test_a_wait_with_a_timeout_gives_up_with_it_while_the_server_is_away(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its reads retried for 30 s each: wait(timeout=2) raised after 31-37 s.
    # The close's own waits for a server gone are test_jetstream_runtime's: short here.
    monkeypatch.setattr(facade, "THREADS_STOP_S", 1.0)
    monkeypatch.setattr(facade, "FLUSH_WAIT_S", 1.0)
    server = start_server(tmp_path)
    agent = fl.Agent(name="slow", llm=fl.ScriptedLLM(asks_slowly, latency_s=120))
    before = set(threading.enumerate())
    rt = fl.Runtime.open(f"{server.url}/away", agents=[agent])
    try:
        handle = rt.spawn(agent, "go")
        wait_until(lambda: rt.store.head(handle.id) >= 2, 30, "the model call to be asked")
        server.kill()
        started = time.monotonic()
        with pytest.raises(StoreError, match="did not answer"):
            handle.wait(timeout=2)
        assert time.monotonic() - started < 10
    finally:
        rt.close()
        server.stop()
    wait_until(  # the poller's reads give up too: no thread reads on past the close
        lambda: not [t for t in threading.enumerate() if t not in before and t.is_alive()],
        10,
        "the runtime's threads to end",
    )


def test_reads_keep_the_earliest_deadline_and_a_last_look_past_it() -> None:
    assert read_timeout(60.0) == 60.0  # no deadline of the caller's
    now = time.monotonic()
    with answer_by(now + 10):
        assert 9 < read_timeout(60.0) <= 10
        with answer_by(now + 30):  # an inner, later deadline does not extend the outer
            assert read_timeout(60.0) <= 10
        with answer_by(None):
            assert read_timeout(60.0) <= 10
        with answer_by(now - 5):  # past: one last look
            assert read_timeout(60.0) == LAST_LOOK_S
        assert read_timeout(5.0) == 5.0
    assert read_timeout(60.0) == 60.0
