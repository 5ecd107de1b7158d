"""The model's message history, derived from events and kept in an append-cheap shape.

A run of a thousand steps holds thousands of messages; copying one flat tuple per event
would make the fold quadratic. History is a tuple of chunks of at most ``CHUNK`` messages:
appending copies one small chunk and the (short) outer tuple, and stays immutable.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from typing import Literal, overload

import msgspec

from foldloop.events.values import ModelToolCall

__all__ = [
    "CHUNK",
    "History",
    "Message",
    "MessageView",
    "Role",
    "ToolSpec",
    "chain_digest",
    "flatten",
    "history_digest",
    "prompt_digest",
    "push",
]

Role = Literal["system", "user", "assistant", "tool"]
CHUNK = 64


class Message(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, gc=False):
    """One message of the conversation the model sees.

    ``tool_calls`` is set on assistant messages that asked for tools; ``tool_call_id`` and
    ``name`` on tool messages, which answer one call each, in the order the model asked.
    """

    role: Role
    content: str = ""
    tool_calls: tuple[ModelToolCall, ...] = ()
    tool_call_id: str | None = None
    name: str | None = None


History = tuple[tuple[Message, ...], ...]


def push(history: History, messages: Iterable[Message]) -> History:
    """Return ``history`` with ``messages`` appended (the original is untouched)."""
    out = list(history[:-1])
    last = list(history[-1]) if history else []
    for message in messages:
        if len(last) == CHUNK:
            out.append(tuple(last))
            last = []
        last.append(message)
    if last:
        out.append(tuple(last))
    return tuple(out)


class MessageView(Sequence[Message]):
    """The messages of a history without copying them out of their chunks.

    ``assistant_turns`` (the run's step count) lets a model that counts its own replies,
    like ScriptedLLM, skip walking the whole history on every call.
    """

    __slots__ = ("_chunks", "_len", "assistant_turns")

    def __init__(self, history: History, assistant_turns: int | None = None) -> None:
        self._chunks = history
        self._len = sum(len(c) for c in history)
        self.assistant_turns = assistant_turns

    def __len__(self) -> int:
        return self._len

    @overload
    def __getitem__(self, index: int) -> Message: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[Message]: ...
    def __getitem__(self, index: int | slice) -> Message | Sequence[Message]:
        if isinstance(index, slice):
            return flatten(self._chunks)[index]
        if index < 0:
            index += self._len
        if not 0 <= index < self._len:
            raise IndexError(index)
        return self._chunks[index // CHUNK][index % CHUNK]

    def __iter__(self) -> Iterator[Message]:
        for chunk in self._chunks:
            yield from chunk


def flatten(history: History) -> tuple[Message, ...]:
    """All messages in order."""
    return tuple(m for chunk in history for m in chunk)


_ENCODER = msgspec.msgpack.Encoder()
_BLAKE2B_16 = hashlib.blake2b(digest_size=16)
"""An empty 16-byte blake2b, copied for each digest (never updated itself)."""


def chain_digest(previous: str, messages: Iterable[Message]) -> str:
    """Extend a running digest of the history by ``messages`` (O(1) per message).

    Folding keeps this digest in RunState, so the prompt digest of step 1,000 does not
    re-encode 3,000 messages.
    """
    digest = previous
    for message in messages:
        h = _BLAKE2B_16.copy()  # a third cheaper than blake2b(..., digest_size=16) a call
        h.update(digest.encode() + _ENCODER.encode(message))
        digest = h.hexdigest()
    return digest


def history_digest(messages: Iterable[Message]) -> str:
    """The running digest of a whole message list (what RunState.history_digest holds)."""
    return chain_digest("", messages)


def prompt_digest(history: str, tools_digest: str, max_tokens: int | None) -> str:
    """A digest of exactly what the model is asked: proves a resumed prompt is byte-identical."""
    return hashlib.blake2b(
        _ENCODER.encode((history, tools_digest, max_tokens)), digest_size=16
    ).hexdigest()


class ToolSpec(msgspec.Struct, frozen=True, kw_only=True):
    """A tool as the model is shown it: a name, a description and a JSON schema of its args."""

    name: str
    description: str
    parameters: dict[str, object]
