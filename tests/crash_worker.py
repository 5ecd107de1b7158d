"""A real process for the crash tests: drives runs on a store until it is SIGKILLed.

It talks to the test only through stdout lines and files, like a black-box harness:
    READY                        the runtime is open
    ACK run seq position digest type   a committed event (printed after the commit)
    STATE run seq digest         the state a run actor reached
    IN_TOOL run call             a tool started (its ledger line is written first)
    IN_FLIGHT n                  (--fleet) n runs spawned and not waited for yet
Effects are recorded in an external ledger (O_APPEND + fsync), outside LMDB.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import msgspec
import structlog

import foldloop as fl
from foldloop.core._messages import history_digest

OUT_LOCK = threading.Lock()


def emit(line: str) -> None:
    with OUT_LOCK:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def digest(obj: object) -> str:
    return hashlib.blake2b(msgspec.msgpack.encode(obj), digest_size=8).hexdigest()


def ledger_write(path: Path, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (line + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def build_agent(args: argparse.Namespace) -> fl.Agent:
    ledger = Path(args.ledger)
    prompts = Path(args.prompts) if args.prompts else None

    @fl.tool(timeout=60)
    def charge(ref: str, amount: int) -> str:
        """Charge a card: a non-idempotent effect.

        Args:
            ref: a reference unique to this charge
            amount: cents to charge
        """
        ledger_write(ledger, f"charge {ref} {amount}")
        emit(f"IN_TOOL charge {ref}")
        if args.hang_in_tool:
            time.sleep(3600)
        return f"charged {amount}"

    @fl.tool(idempotent=True, timeout=60)
    def lookup(key: str) -> str:
        """Read something (idempotent).

        Args:
            key: what to look up
        """
        ledger_write(ledger, f"lookup {key}")
        return f"value-of-{key}"

    def script(messages: Sequence[fl.Message], tools: Sequence[fl.types.ToolSpec]) -> fl.Reply:
        step = sum(1 for m in messages if m.role == "assistant")
        if prompts is not None:
            ledger_write(prompts, f"{step + 1} {history_digest(messages)}")
        if args.hang_in_model_step and step + 1 == args.hang_in_model_step:
            emit("IN_MODEL")
            time.sleep(3600)
        user = next(m.content for m in messages if m.role == "user")
        if step < args.steps:
            calls = [fl.ToolCall("lookup", {"key": f"{user}-{step}"})]
            if step % 2 == 1:
                calls.append(fl.ToolCall("charge", {"ref": f"{user}-{step}", "amount": 100 * step}))
            return fl.Reply(text=f"step {step}", tool_calls=calls)
        return fl.Reply(text=f"done {user}")

    return fl.Agent(
        name="worker",
        llm=fl.ScriptedLLM(script, latency_s=args.latency),
        tools=[charge, lookup],
        limits=fl.Limits(max_steps=args.steps + 5),
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("store")
    parser.add_argument("--ledger", required=True)
    parser.add_argument("--prompts", default="")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--parallel", type=int, default=1)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--prefix", default="run")
    parser.add_argument("--recover", action="store_true")
    parser.add_argument("--hang-in-tool", action="store_true")
    parser.add_argument("--hang-in-model-step", type=int, default=0)
    parser.add_argument("--snapshot-every", type=int, default=7)
    parser.add_argument("--latency", type=float, default=0.0, help="model latency, seconds")
    parser.add_argument("--fleet", action="store_true", help="spawn all runs, then wait")
    args = parser.parse_args()
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
    )

    def on_state(state: fl.types.RunState) -> None:
        emit(f"STATE {state.run_id} {state.seq} {digest(state)}")

    agent = build_agent(args)
    rt = fl.Runtime.open(
        args.store, agents=[agent], on_state=on_state, snapshot_every=args.snapshot_every
    )

    def ack(rec: fl.types.Recorded) -> None:
        emit(f"ACK {rec.run_id} {rec.seq} {rec.position} {digest(rec.event)} {rec.type}")

    rt.store.add_listener(lambda batch: [ack(r) for r in batch])
    emit("READY")
    handles = rt.recover() if args.recover else []
    for h in handles:
        emit(f"RECOVERED {h.id}")
    for h in handles:
        h.wait(timeout=120)

    def spawn_some(worker: int) -> None:
        fleet = []
        for i in range(args.runs):
            run_id = f"{args.prefix}-{os.getpid()}-{worker}-{i}"
            handle = rt.spawn(agent, run_id, run_id=run_id)
            if args.fleet:
                fleet.append(handle)
            else:
                handle.wait(timeout=120)
        if fleet:
            emit(f"IN_FLIGHT {len(fleet)}")
        for handle in fleet:
            handle.wait(timeout=120)

    threads = [threading.Thread(target=spawn_some, args=(w,)) for w in range(args.parallel)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rt.close()
    emit("DONE")


if __name__ == "__main__":
    main()
