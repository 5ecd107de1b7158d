"""A process holding a store open, doing one store operation per line read from stdin.

Used by the two-process tests of the store (test_store_processes.py): each line is a JSON
list ``[op, *args]``; each answer is one JSON line ``{"ok": value}`` or ``{"error": name}``
(the FoldloopError class refusing the op). The owner id given on the command line is held
(``hold_owner``), so other processes see this one alive until it exits or is killed. Ops
the store port has go through it; the others (a write that refuses itself part-way, a
bare approval record) through LMDB write transactions.

    python tests/store_worker.py STORE OWNER
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from foldloop.errors import ConfigError, FoldloopError
from foldloop.events import ToolCompleted
from foldloop.store import Lease, encode_all, open_store
from foldloop.store._approvals import ApprovalRecord
from foldloop.store._write_txn import WriteTxn


def _events(tags: list[str]) -> list[ToolCompleted]:
    return [ToolCompleted(call_id=tag, result=f"r-{tag}") for tag in tags]


def _record(run_id: str, call_id: str) -> ApprovalRecord:
    return ApprovalRecord(
        run_id=run_id,
        call_id=call_id,
        gate="g",
        tool="t",
        args="{}",
        token_digest=f"{run_id}/{call_id}",
        expires_at=2**62,
        requested_at=1,
    )


def main() -> None:
    path, owner = Path(sys.argv[1]), sys.argv[2]
    store = open_store(path)
    lock = store.hold_owner(owner)
    out = sys.stdout

    def write(fn: Callable[[WriteTxn], Any]) -> Any:
        return store.submit(fn).wait()

    def append(run: str, expected: int, tags: list[str], epoch: int | None = None) -> Any:
        lease = None if epoch is None else Lease(owner, epoch)
        appended = store.append(
            run, encode_all(_events(tags), 1), expected_seq=expected, lease=lease
        )
        return [r.position for r in appended.wait()]

    def half(run: str, expected: int, tags: list[str]) -> Any:
        payloads = encode_all(_events(tags), 1)

        def fn(w: WriteTxn) -> None:
            w.append(run, payloads, expected_seq=expected)
            w.put_lease(run, Lease("x", 99))
            raise ConfigError("refused after writing")

        return write(fn)

    def refuse(run: str) -> Any:
        def fn(w: WriteTxn) -> None:
            if w.head(run).seq >= 0:
                raise ConfigError(f"run {run!r} refused (nothing written)")

        return write(fn)

    def propose(run: str, call: str) -> Any:
        return write(lambda w: w.put_approval(_record(run, call)))

    def decide(run: str, call: str) -> Any:
        record = _record(run, call)
        decided = store.decide_approval(record, approved=True, by=owner, note="", now=2)
        return decided.wait().status

    def approval(run: str, call: str) -> Any:
        record = store.approval(run, call)
        return None if record is None else [record.status, record.by]

    ops: dict[str, Callable[..., Any]] = {
        "append": append,
        "half": half,
        "refuse": refuse,
        "noop": lambda: write(lambda w: None),
        "index": lambda: write(lambda w: w.index_now()),
        "acquire": lambda run: store.acquire_lease(run, owner).wait(),
        "release": lambda run, epoch: store.release_lease(
            run, Lease(owner, epoch), durable=True
        ).wait(),
        "propose": propose,
        "decide": decide,
        "approval": approval,
        "read": lambda run: [[r.seq, r.event.call_id] for r in store.read(run)],
        "head": store.head,
        "verify": store.verify_chain,
        "all": lambda: [[r.run_id, r.seq, r.position] for r in store.read_all()],
        "runs": store.run_ids,
    }
    out.write('{"ok": "ready"}\n')
    out.flush()
    for line in sys.stdin:
        op, *args = msgspec.json.decode(line)
        if op == "exit":
            break
        try:
            answer: dict[str, Any] = {"ok": ops[op](*args)}
        except FoldloopError as exc:
            answer = {"error": type(exc).__name__, "message": str(exc)}
        out.write(msgspec.json.encode(answer).decode() + "\n")
        out.flush()
    store.close()
    lock.release()


if __name__ == "__main__":
    main()
