"""The lean fleet: bench_fleet's workload through the least shell DESIGN allows.

``bench_fleet.py --case 10k-lean`` runs it beside ``10k``: their ratio of CPU a step is
what foldloop's shell costs over the least one.

What any runtime keeping DESIGN's rules must do for a fleet step, and nothing else: each
model call awaits on one asyncio loop (on its own thread) and its reply goes to the runs'
thread (one, as foldloop's one shard), which decides on it with foldloop's ``decide`` (the
state evolved, the events encoded), queues the events for the writer thread (one LMDB
transaction every 2 ms, the events sealed as the store seals an append: checksum and
chain hash) and sends the tool call to a tool thread (the tool's argument check and the
call); its result comes back to the runs' thread, whose decision starts the next model
call on the loop. Hand-offs are ``queue.SimpleQueue`` and one ``call_soon_threadsafe``
for what queued meanwhile, as foldloop's. Left out: leases, the per-run index, run
numbers, timers, cancels, approvals, children, waits, logging, errors, and a spawn's wait
for its run.started to be durable.
"""

from __future__ import annotations

import asyncio
import collections
import queue
import threading
import time
from pathlib import Path
from typing import Any

import lmdb
from fleet_agents import script, scripted_agent

from foldloop.actors._tool_actor import outcome_command
from foldloop.core._commands import Command, ModelReplied
from foldloop.core._decide import decide
from foldloop.core._effects import CallModel, RunTools, Settle, ToolRun
from foldloop.core._messages import MessageView
from foldloop.core._state import RunState
from foldloop.events import Usage
from foldloop.store._framing import GENESIS, batch_frame, seal
from foldloop.store._layout import encode_all

LINGER_S = 0.002
"""How often the writer commits what queued (the store's non-durable linger)."""


class LeanFleet:
    def __init__(self, directory: Path, runs: int, steps: int, latency_s: float) -> None:
        self.env = lmdb.open(str(directory), map_size=1 << 32, max_dbs=2)
        self.db = self.env.open_db(b"log")
        self.agent = scripted_agent(steps, latency_s)
        self.tool = self.agent.tools[0]
        self.script = script(steps)
        self.runs, self.latency_s = runs, latency_s
        self.inbox: queue.SimpleQueue[tuple[str, Command] | None] = queue.SimpleQueue()
        self.tool_calls: queue.SimpleQueue[tuple[str, ToolRun] | None] = queue.SimpleQueue()
        self.writes: collections.deque[tuple[str, list[Any]]] = collections.deque()
        self.asks: list[tuple[str, int, MessageView]] = []
        self.asks_lock = threading.Lock()
        self.loop = asyncio.new_event_loop()
        self.states: dict[str, RunState] = {}
        self.chains: dict[str, tuple[int, int, bytes]] = {}  # run number, seq, chain hash
        self.position = 0
        self.settled = 0
        self.done = threading.Event()
        self.stopping = threading.Event()

    # -- the runs' thread ------------------------------------------------------------------

    def runs_thread(self) -> None:
        while (item := self.inbox.get()) is not None:
            run_id, command = item
            decision = decide(self.states[run_id], command)
            state = decision.state
            assert state is not None and not decision.rejected, decision
            self.states[run_id] = state
            self.writes.append((run_id, encode_all(decision.events, command.now)))
            for effect in decision.effects:
                if type(effect) is CallModel:
                    self.ask(run_id, effect.step, MessageView(state.history, state.steps))
                elif type(effect) is RunTools:
                    for call in effect.calls:
                        self.tool_calls.put((run_id, call))
                elif type(effect) is Settle:
                    self.settled += 1
                    if self.settled == self.runs:
                        self.done.set()

    def ask(self, run_id: str, step: int, messages: MessageView) -> None:
        with self.asks_lock:
            self.asks.append((run_id, step, messages))
            first = len(self.asks) == 1
        if first:
            self.loop.call_soon_threadsafe(self.begin_all)

    # -- the loop's thread -----------------------------------------------------------------

    def begin_all(self) -> None:
        with self.asks_lock:
            asks, self.asks = self.asks, []
        for run_id, step, messages in asks:
            self.loop.create_task(self.call(run_id, step, messages))

    async def call(self, run_id: str, step: int, messages: MessageView) -> None:
        await asyncio.sleep(self.latency_s)
        reply = self.script(messages, self.agent.tools)
        command = ModelReplied(
            now=time.time_ns(),
            step=step,
            text=reply.text,
            tool_calls=tuple(reply.tool_calls),
            usage=Usage(),
            model="scripted",
        )
        self.inbox.put((run_id, command))

    # -- the tool's thread and the writer's ------------------------------------------------

    def tool_thread(self) -> None:
        while (item := self.tool_calls.get()) is not None:
            run_id, call = item
            outcome = self.tool.invoke(call.args)
            self.inbox.put((run_id, outcome_command(call.call_id, outcome, time.time_ns())))

    def writer_thread(self) -> None:
        while not self.stopping.wait(LINGER_S) or self.writes:
            if not self.writes:
                continue
            with self.env.begin(write=True) as txn:
                while self.writes:
                    run_id, payloads = self.writes.popleft()
                    number, seq, chain = self.chains.get(run_id) or (len(self.chains), 0, GENESIS)
                    frame = batch_frame(number, seq + 1, self.position + 1, payloads)
                    value, chain = seal(frame, chain)
                    key = (self.position + 1).to_bytes(8, "big")
                    txn.put(key, value, db=self.db, append=True)
                    self.position += len(payloads)
                    self.chains[run_id] = (number, seq + len(payloads), chain)

    # -- the host ----------------------------------------------------------------------------

    def run(self, deadline: float) -> float:
        """Spawn every run, wait for all of them until ``deadline`` (``time.monotonic()``):
        the seconds it took (``self.settled`` says how many ended)."""
        threads = [
            threading.Thread(target=self.loop.run_forever, daemon=True),
            threading.Thread(target=self.runs_thread, daemon=True),
            threading.Thread(target=self.tool_thread, daemon=True),
            threading.Thread(target=self.writer_thread, daemon=True),
        ]
        for t in threads:
            t.start()
        start = time.perf_counter()
        now = time.time_ns()
        for i in range(self.runs):
            run_id = f"lean-{i}"
            self.states[run_id] = RunState(run_id=run_id)
            self.inbox.put((run_id, self.agent.start("go", now=now)))
        self.done.wait(max(0.0, deadline - time.monotonic()))  # short: a thread died
        wall = time.perf_counter() - start
        self.inbox.put(None)
        self.tool_calls.put(None)
        self.stopping.set()
        self.loop.call_soon_threadsafe(self.loop.stop)
        for t in threads:
            t.join()
        self.env.close()
        return wall
