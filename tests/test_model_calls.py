"""Sync model calls run on a pool that grows with demand; max_model_calls, when set, caps the
calls in flight, sync and async together."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

import foldloop as fl
from foldloop.actors._timers import Timers
from foldloop.actors._workers import Workers
from foldloop.errors import ModelCallError
from tests.waiting import wait_until


class Gate:
    """A model that holds every call until released, counting the calls in flight."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.lock = threading.Lock()
        self.now = 0
        self.most = 0

    @contextlib.contextmanager
    def holding(self) -> Iterator[None]:
        """Count a call in flight while the block runs."""
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)
        try:
            yield
        finally:
            with self.lock:
                self.now -= 1

    def __call__(self, messages: Sequence[fl.Message], tools: object) -> fl.Reply:
        with self.holding():
            self.release.wait(30)
        return fl.Reply(text="ok")


class SyncModel:
    """A model with only the sync ``complete`` (no ``acomplete``): it runs on the pool."""

    model = "gated"

    def __init__(self, gate: Gate) -> None:
        self.gate = gate

    def complete(
        self, messages: Sequence[fl.Message], tools: object, *, max_tokens: int | None = None
    ) -> fl.Reply:
        return self.gate(messages, tools)


class AsyncModel:
    """A model with ``acomplete``: awaited on the runtime's loop, held by the same gate."""

    model = "gated-async"

    def __init__(self, gate: Gate) -> None:
        self.gate = gate

    def complete(
        self, messages: Sequence[fl.Message], tools: object, *, max_tokens: int | None = None
    ) -> fl.Reply:
        raise AssertionError("the runtime awaits acomplete")

    async def acomplete(
        self, messages: Sequence[fl.Message], tools: object, *, max_tokens: int | None = None
    ) -> fl.Reply:
        with self.gate.holding():
            while not self.gate.release.is_set():
                await asyncio.sleep(0.005)
        return fl.Reply(text="ok")


FORMS = [pytest.param(SyncModel, id="sync"), pytest.param(AsyncModel, id="async")]


def test_there_is_no_silent_cap_on_model_calls_in_flight(tmp_path: Path) -> None:
    gate = Gate()
    agent = fl.Agent(name="a", llm=SyncModel(gate))
    with fl.Runtime.open(tmp_path / "s", agents=[agent]) as rt:
        runs = [rt.spawn(agent, "go") for _ in range(80)]
        try:
            wait_until(lambda: gate.now == 80, 30, "80 model calls in flight at once")
        finally:
            gate.release.set()
        assert all(run.wait(timeout=60).ok for run in runs)


def requested(rt: fl.Runtime, runs: Sequence[fl.types.RunHandle]) -> bool:
    return all(any(r.type == "model.requested" for r in rt.events(h.id)) for h in runs)


@pytest.mark.parametrize(
    "models",
    [
        pytest.param((SyncModel,), id="sync"),
        pytest.param((AsyncModel,), id="async"),
        pytest.param((SyncModel, AsyncModel), id="both-together"),
    ],
)
def test_max_model_calls_caps_the_calls_in_flight(
    tmp_path: Path, models: tuple[Callable[[Gate], fl.LLM], ...]
) -> None:
    # A provider's rate limit: the OpenAI and Anthropic adapters are async, so the cap must
    # hold for acomplete as for complete, and count both forms in one runtime together.
    gate = Gate()
    agents = [fl.Agent(name=f"a{i}", llm=make(gate)) for i, make in enumerate(models)]
    with fl.Runtime.open(tmp_path / "s", agents=agents, max_model_calls=3) as rt:
        runs = [rt.spawn(agents[i % len(agents)], "go") for i in range(10)]
        try:
            wait_until(lambda: requested(rt, runs), 30, "every run's model call requested")
            wait_until(lambda: gate.now == 3, 30, "three model calls in flight, no more")
        finally:
            gate.release.set()
        assert all(run.wait(timeout=60).ok for run in runs)
    assert gate.most == 3


def test_places_under_max_model_calls_are_not_lost_to_cancels(tmp_path: Path) -> None:
    # Calls cancelled while they wait for a place, while they hold one, or as they get one
    # give it back: once all ended, no place is taken, and both serve again at once.
    gate = Gate()
    agent = fl.Agent(name="a", llm=AsyncModel(gate))
    with fl.Runtime.open(tmp_path / "s", agents=[agent], max_model_calls=2) as rt:
        runs = [rt.spawn(agent, "go") for _ in range(20)]
        wait_until(lambda: requested(rt, runs), 30, "every run's model call requested")
        for run in runs[::2]:  # one holding a place (run 0), nine waiting
            run.cancel("not needed")
        gate.release.set()
        racing = [rt.spawn(agent, "go") for _ in range(20)]
        for run in racing[::2]:  # as their calls are made or wait
            run.cancel("not needed")
        for run in runs + racing:
            assert run.wait(timeout=30).status in (fl.RunStatus.CANCELLED, fl.RunStatus.COMPLETED)
        assert all(run.wait(timeout=30).ok for run in runs[1::2] + racing[1::2])
        wait_until(lambda: rt.system.models.in_flight == 0, 10, "every place given back")
        gate.release.clear()
        after = [rt.spawn(agent, "after") for _ in range(3)]
        try:
            wait_until(lambda: gate.now == 2, 30, "both places serving at once")
        finally:
            gate.release.set()
        assert all(run.wait(timeout=30).ok for run in after)
    assert gate.most == 2


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "3"])
def test_a_bad_max_model_calls_is_refused(tmp_path: Path, bad: object) -> None:
    with pytest.raises(fl.ConfigError, match="max_model_calls must be an int >= 1"):
        fl.Runtime.open(tmp_path / "s", max_model_calls=bad)  # type: ignore[arg-type]


def test_a_bursts_threads_end_once_idle_and_the_pool_still_serves() -> None:
    pool = Workers(None, "burst", keep_idle_s=0.05)
    release = threading.Event()
    started = threading.Semaphore(0)

    def burst_threads() -> int:  # the pool's own (other tests' threads come and go)
        return sum(t.name.startswith("burst-") for t in threading.enumerate())

    def job() -> None:
        started.release()
        release.wait(30)

    for _ in range(20):
        pool.submit(job)
    for _ in range(20):
        assert started.acquire(timeout=30), "a job never started: the pool did not grow"
    assert burst_threads() == 20
    release.set()
    wait_until(lambda: burst_threads() == 0, 30, "the burst's threads to end")
    done = threading.Event()
    pool.submit(done.set)
    assert done.wait(30), "a job after the burst never ran"
    pool.shutdown()


@pytest.mark.parametrize(("limit", "lazy"), [(None, False), (4, False), (4, True)])
def test_jobs_racing_idle_threads_ending_all_run(limit: int | None, lazy: bool) -> None:
    timers = Timers()
    pool = Workers(limit, "race", keep_idle_s=0.001, call_later=timers.call_later if lazy else None)
    ran = threading.Semaphore(0)
    try:
        for i in range(2000):
            pool.submit(ran.release)
            if i % 50 == 0:
                threading.Event().wait(0.002)  # let threads go idle and end between submits
        for _ in range(2000):
            assert ran.acquire(timeout=30), "a job was left with no thread to run it"
    finally:
        pool.shutdown()
        timers.stop()


def test_a_scripted_function_with_no_latency_may_block_and_is_not_capped(
    tmp_path: Path,
) -> None:
    # It runs through complete on the model pool (it may block, as this gate does), which
    # grows with the calls: twenty wait at once.
    gate = Gate()
    agent = fl.Agent(name="a", llm=fl.ScriptedLLM(gate))
    assert fl.llm.async_form(agent.llm) is None
    assert fl.llm.async_form(fl.ScriptedLLM(gate, latency_s=0.1)) is not None
    with fl.Runtime.open(tmp_path / "s", agents=[agent]) as rt:
        runs = [rt.spawn(agent, "go") for _ in range(20)]
        try:
            wait_until(lambda: gate.now == 20, 30, "twenty scripted calls in flight at once")
        finally:
            gate.release.set()
        assert all(run.wait(timeout=60).ok for run in runs)


class SaysHello:
    """A hand-written model with a bug: it returns a str."""

    model = "hello"

    def complete(self, messages: object, tools: object, *, max_tokens: int | None = None) -> object:
        return "hello"


def says_hello(messages: object, tools: object) -> Any:
    return "hello"


@pytest.mark.parametrize(
    "llm",
    [
        pytest.param(SaysHello, id="own-model"),
        pytest.param(lambda: fl.ScriptedLLM(says_hello), id="scripted"),
        pytest.param(lambda: fl.ScriptedLLM(says_hello, latency_s=0.01), id="async"),
    ],
)
def test_a_model_that_returns_no_reply_fails_the_run_saying_what_it_returned(
    tmp_path: Path, llm: Callable[[], fl.LLM]
) -> None:
    weird = fl.Agent(name="weird", llm=llm())
    with fl.Runtime.open(tmp_path / "s", agents=[weird]) as rt:
        result = rt.spawn(weird, "go").wait(timeout=10)
        assert result.status is fl.RunStatus.FAILED, result
        assert "returned str, not fl.Reply" in result.reason


def test_a_reply_with_a_field_of_the_wrong_type_fails_the_run_not_hangs_it(
    tmp_path: Path,
) -> None:
    """``Reply(text=None)`` (a dict's ``get`` in a hand-written adapter) gave no command
    back to the run at all: it waited for ever. A model name of None is the model's own."""
    replies = iter([fl.Reply(text="hi", model=None), fl.Reply(text=None)])  # type: ignore[arg-type]

    class Odd:
        model = "odd-1"

        def complete(self, messages: object, tools: object, **kw: object) -> fl.Reply:
            return next(replies)

    odd = fl.Agent(name="odd", llm=Odd())  # type: ignore[arg-type]
    with fl.Runtime.open(tmp_path / "s", agents=[odd]) as rt:
        first = rt.spawn(odd, "go").wait(timeout=10)
        assert first.ok and first.output == "hi"
        (named,) = [r.event.model for r in rt.events(first.run_id) if r.type == "model.responded"]
        assert named == "odd-1"
        second = rt.spawn(odd, "go").wait(timeout=10)
        assert second.status is fl.RunStatus.FAILED, second
        assert "returned an unusable fl.Reply" in second.reason


def test_an_async_model_call_is_cut_where_max_seconds_runs_out(tmp_path: Path) -> None:
    """A model that answers late (a server dripping its reply) held the run past its
    ceiling: the call is cut there, the run stops at limit_reached, the log replays, and a
    resume with more time asks the model again."""
    calls = iter([30.0, 0.0])

    class Slow:
        model = "slow-1"

        def complete(self, messages: object, tools: object, **kw: object) -> fl.Reply:
            raise AssertionError("the async form is used")

        async def acomplete(self, messages: object, tools: object, **kw: object) -> fl.Reply:
            await asyncio.sleep(next(calls))
            return fl.Reply(text="at last")

    slow = fl.Agent(name="slow", llm=Slow(), limits=fl.Limits(max_seconds=0.5))  # type: ignore[arg-type]
    with fl.Runtime.open(tmp_path / "s", agents=[slow]) as rt:
        result = rt.spawn(slow, "go").wait(timeout=20)  # the model takes 30 s
        assert result.status is fl.RunStatus.LIMIT_REACHED and result.resumable, result
        assert "max_seconds" in result.reason
        events = [r.event for r in rt.events(result.run_id)]
        assert isinstance(events[-2], fl.events.ModelFailed) and events[-2].out_of_time
        rt.verify(result.run_id)
        again = rt.resume(result.run_id, extend=fl.Limits(max_seconds=60)).wait(timeout=20)
        assert again.ok and again.output == "at last", again


def test_a_call_waiting_for_its_place_or_its_backoff_is_cut_at_max_seconds(
    tmp_path: Path,
) -> None:
    """max_seconds counts from the decision to call: a call still waiting for a place
    under max_model_calls, or a retry the provider asked to wait 30 s before, is not made
    once the run's time is out, and the run stops there."""
    hold = threading.Event()

    class Holder:
        model = "holder-1"

        def complete(self, messages: object, tools: object, **kw: object) -> fl.Reply:
            raise AssertionError("the async form is used")

        async def acomplete(self, messages: object, tools: object, **kw: object) -> fl.Reply:
            while not hold.is_set():  # keeps the only place
                await asyncio.sleep(0.01)
            return fl.Reply(text="held")

    class Limited:
        model = "limited-1"

        def complete(self, messages: object, tools: object, **kw: object) -> fl.Reply:
            raise AssertionError("the async form is used")

        async def acomplete(self, messages: object, tools: object, **kw: object) -> fl.Reply:
            raise ModelCallError("rate limited", retryable=True, retry_after_s=30)

    holder = fl.Agent(name="holder", llm=Holder())  # type: ignore[arg-type]
    short = fl.Limits(max_seconds=0.5)
    waiting = fl.Agent(
        name="waiting", llm=fl.ScriptedLLM([fl.Reply(text="x")], latency_s=0.01), limits=short
    )
    limited = fl.Agent(name="limited", llm=Limited(), limits=short)  # type: ignore[arg-type]
    try:
        with fl.Runtime.open(tmp_path / "s", agents=[holder, waiting], max_model_calls=1) as rt:
            held = rt.spawn(holder, "hold")
            wait_until(lambda: rt.state(held.id).model_pending, 10, "the place to be taken")
            result = rt.spawn(waiting, "wait").wait(timeout=20)  # its place never comes
            assert result.status is fl.RunStatus.LIMIT_REACHED, result
            failed = [r.event for r in rt.events(result.run_id) if r.type == "model.failed"]
            assert [f.out_of_time for f in failed] == [True]
            hold.set()
            assert held.wait(timeout=20).output == "held"
        with fl.Runtime.open(tmp_path / "s", agents=[limited]) as rt:
            result = rt.spawn(limited, "go").wait(timeout=20)  # not after the 30 s asked for
            assert result.status is fl.RunStatus.LIMIT_REACHED, result
            failed = [r.event for r in rt.events(result.run_id) if r.type == "model.failed"]
            assert [f.out_of_time for f in failed] == [False, True]
            rt.verify(result.run_id)
    finally:
        hold.set()


def test_a_reply_too_big_to_record_fails_the_run_instead_of_interrupting_it(
    tmp_path: Path,
) -> None:
    big = fl.Agent(name="big", llm=fl.ScriptedLLM([fl.Reply(text="x" * 3_000_000)]))
    with fl.Runtime.open(tmp_path / "s", agents=[big]) as rt:
        result = rt.spawn(big, "go").wait(timeout=10)
        assert result.status is fl.RunStatus.FAILED, result
        assert "3,000,000 bytes, over the" in result.reason
        assert rt.recover() == []  # nothing left running to ask the model again


@pytest.mark.parametrize("form", FORMS)
def test_a_model_call_waiting_for_a_capped_slot_is_never_made_once_its_run_is_cancelled(
    tmp_path: Path, form: Callable[[Gate], fl.LLM]
) -> None:
    # Under max_model_calls (a provider's rate limit), a cancelled run's call must not spend
    # the quota when the slot frees: like a tool call waiting for a thread, it never starts.
    gate = Gate()
    asked: list[str] = []

    class Recording:
        model = "recording"

        def __init__(self) -> None:
            self.inner: Any = form(gate)
            if hasattr(self.inner, "acomplete"):
                self.acomplete = self._acomplete

        def complete(
            self, messages: Sequence[fl.Message], tools: object, *, max_tokens: int | None = None
        ) -> fl.Reply:
            asked.append(messages[-1].content)
            return self.inner.complete(messages, tools, max_tokens=max_tokens)  # type: ignore[no-any-return]

        async def _acomplete(
            self, messages: Sequence[fl.Message], tools: object, *, max_tokens: int | None = None
        ) -> fl.Reply:
            asked.append(messages[-1].content)
            return await self.inner.acomplete(messages, tools, max_tokens=max_tokens)  # type: ignore[no-any-return]

    agent = fl.Agent(name="a", llm=Recording())
    with fl.Runtime.open(tmp_path / "s", agents=[agent], max_model_calls=1) as rt:
        first = rt.spawn(agent, "first")
        wait_until(lambda: gate.now == 1, 30, "the first call holding the one slot")
        waiting = [rt.spawn(agent, f"waiting {i}") for i in range(2)]
        wait_until(
            lambda: all(any(r.type == "model.requested" for r in rt.events(h.id)) for h in waiting),
            30,
            "the waiting runs' calls requested",
        )
        for handle in waiting:
            handle.cancel("not needed")
        assert [h.wait(timeout=30).status for h in waiting] == [fl.RunStatus.CANCELLED] * 2
        last = rt.spawn(agent, "last")  # queued behind the cancelled ones' calls
        gate.release.set()
        assert first.wait(timeout=30).ok
        assert last.wait(timeout=30).ok
    assert asked == ["first", "last"]  # before: first, waiting 0, waiting 1, last


@pytest.mark.parametrize("form", FORMS)
def test_calls_cancelled_while_every_place_is_held_are_let_go_before_a_place_frees(
    tmp_path: Path, form: Callable[[Gate], fl.LLM]
) -> None:
    # A provider that holds its calls for minutes while runs are cancelled or run out of
    # time: what the cancelled calls hold (their messages) must not wait for a free place.
    gate = Gate()
    agent = fl.Agent(name="a", llm=form(gate))
    with fl.Runtime.open(tmp_path / "s", agents=[agent], max_model_calls=1) as rt:
        first = rt.spawn(agent, "first")
        wait_until(lambda: gate.now == 1, 30, "the first call holding the one place")
        waiting = [rt.spawn(agent, f"waiting {i}") for i in range(6)]
        calls = rt.system.models
        wait_until(lambda: len(calls._waiting) == 6, 30, "six calls waiting for the place")
        try:
            for handle in waiting:
                handle.cancel("not needed")
            assert all(h.wait(timeout=30).status is fl.RunStatus.CANCELLED for h in waiting)
            assert len(calls._waiting) == 0 and gate.now == 1
        finally:
            gate.release.set()
        assert first.wait(timeout=30).ok
        assert rt.spawn(agent, "after").wait(timeout=30).ok
