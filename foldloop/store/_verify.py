"""Verification: walk a run's hash chain, checksums and seqs (``doctor``, ``verify``).

Reads check each value's checksum; only this walk checks that every value chains to the
one before it, that seqs have no gap and that the index agrees with the log.
"""

from __future__ import annotations

from typing import Any

from foldloop.errors import CorruptRecord
from foldloop.events._recorded import Recorded
from foldloop.store._env import Tables
from foldloop.store._framing import GENESIS, chain_hash, pack_position, unseal
from foldloop.store._log_reader import LogReader
from foldloop.store._stored import StoredValues

__all__ = ["verify_chain"]


def verify_chain(
    txn: Any, tables: Tables, reader: LogReader, values: StoredValues, run_id: str
) -> int:
    """The length of the run's chain, walked whole; raises CorruptRecord at the first fault."""
    prev = GENESIS
    expected = 0  # the last seq checked
    batch: list[Recorded] = []

    def check(value: bytes | None, seq: int) -> list[Recorded]:
        nonlocal prev, expected
        records = values.records(txn, value, run_id, seq)
        assert value is not None
        stored_prev, _ = unseal(value)
        if stored_prev != prev:
            raise CorruptRecord(run_id, seq, "hash chain broken (a record was altered)")
        prev = chain_hash(value)
        expected = records[-1].seq
        return records

    for entry, _key in reader.ranges(txn, run_id, 1):
        if entry.first_seq != expected + 1:
            raise CorruptRecord(run_id, expected + 1, f"seq gap: next stored is {entry.first_seq}")
        for offset, position in enumerate(entry.positions()):
            seq = entry.first_seq + offset
            if seq > expected:
                batch = check(txn.get(pack_position(position), db=tables.log), seq)
            if batch[seq - batch[0].seq].position != position:
                raise CorruptRecord(run_id, seq, f"the index places it at {position}")
        if expected != entry.last_seq or prev != entry.last_chain:
            raise CorruptRecord(run_id, entry.last_seq, "index hash does not match the record")
    for _position, value, rid, seq, _count in reader.scan(txn, reader.indexed(txn)):
        if rid != run_id:
            continue
        if seq != expected + 1:
            raise CorruptRecord(run_id, expected + 1, f"seq gap: next stored is {seq}")
        check(value, seq)
    return expected
