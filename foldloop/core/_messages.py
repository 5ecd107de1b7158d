"""The model's message history, derived from events and kept in an append-cheap shape.

A run of a thousand steps holds thousands of messages; copying one flat tuple per event
would make the fold quadratic. History holds chunks of at most ``CHUNK`` messages:
appending copies one small chunk and the (short) outer tuple, and stays immutable.

Its running digest (what a model request's prompt digest is made of) is computed when it
is first asked for, not as messages join: a fold that rebuilds a state to show it, wait
on it or count it never pays a hash a message.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterable, Iterator, Sequence
from typing import Literal, overload

import msgspec

from foldloop.events._values import ToolCall

__all__ = [
    "CHUNK",
    "Chunks",
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


class Message(msgspec.Struct, frozen=True, omit_defaults=True, gc=False):
    """One message of the conversation the model sees.

    ``tool_calls`` is set on assistant messages that asked for tools; ``tool_call_id`` and
    ``name`` on tool messages, which answer one call each, in the order the model asked.
    """

    role: Role
    content: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    name: str | None = None


Chunks = tuple[tuple[Message, ...], ...]

_MEMO = "_digest"
"""A history's ``__dict__`` key for (messages digested, their running digest)."""


class History(msgspec.Struct, frozen=True, array_like=True, dict=True):
    """A run's messages in chunks, and a memo of its running digest.

    The memo is not a field: two histories of the same messages are equal (and encode
    alike) whether or not either has computed its digest. ``push`` hands the memo on, so
    a run that asks for the digest every step hashes only the messages since the last
    time, as when the digest was a field brought up to date on every push.
    """

    chunks: Chunks = ()

    @property
    def size(self) -> int:
        """How many messages it holds (every chunk but the last is full: ``push`` fills
        one before it starts the next, and ``MessageView`` indexes by that too)."""
        chunks = self.chunks
        return (len(chunks) - 1) * CHUNK + len(chunks[-1]) if chunks else 0

    @property
    def digest(self) -> str:
        """The running digest of every message (``history_digest``), from the memo on."""
        done, digest = self.digest_memo
        size = self.size
        if done < size:
            first = done // CHUNK
            rest = itertools.chain.from_iterable(self.chunks[first:])
            digest = chain_digest(digest, itertools.islice(rest, done - first * CHUNK, None))
            self.__dict__[_MEMO] = (size, digest)
        return digest

    @property
    def digest_memo(self) -> tuple[int, str]:
        """(how many leading messages the memo covers, their digest); (0, "") if none."""
        memo: tuple[int, str] = self.__dict__.get(_MEMO, (0, ""))
        return memo

    def remember(self, done: int, digest: str) -> History:
        """This history, told the digest of its first ``done`` messages (a snapshot's);
        returns itself. A memo past its last message is ignored (the digest is then
        computed from the messages)."""
        if self.size >= done > self.digest_memo[0]:
            self.__dict__[_MEMO] = (done, digest)
        return self


_SEQUENCES = (list, tuple)
"""What ``push`` takes as it is (a ``list | tuple`` union would be built on every call)."""


def push(history: History, messages: Iterable[Message]) -> History:
    """Return ``history`` with ``messages`` appended (the original is untouched).

    Cut by slices, not message by message: a fold hands over every message of a run at
    once, tens of thousands for a long one."""
    new = messages if isinstance(messages, _SEQUENCES) else list(messages)
    if not new:
        return history
    chunks = history.chunks
    last: tuple[Message, ...] = chunks[-1] if chunks else ()
    room = CHUNK - len(last)
    if len(new) <= room:  # a step's message or two: they join the last chunk
        pushed = History((*chunks[:-1], last + tuple(new)))
    else:
        out = list(chunks[:-1])
        out.append(last + tuple(new[:room]) if room else last)
        out.extend(tuple(new[i : i + CHUNK]) for i in range(room, len(new), CHUNK))
        pushed = History(tuple(out))
    memo = history.__dict__.get(_MEMO)
    if memo is not None:
        pushed.__dict__[_MEMO] = memo
    return pushed


class MessageView(Sequence[Message]):
    """The messages of a history without copying them out of their chunks.

    ``assistant_turns`` (the run's step count) lets a model that counts its own replies,
    like ScriptedLLM, skip walking the whole history on every call.
    """

    __slots__ = ("_history", "_len", "assistant_turns")

    def __init__(self, history: History, assistant_turns: int | None = None) -> None:
        self._history = history
        self._len = history.size
        self.assistant_turns = assistant_turns

    def __len__(self) -> int:
        return self._len

    @overload
    def __getitem__(self, index: int) -> Message: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[Message]: ...
    def __getitem__(self, index: int | slice) -> Message | Sequence[Message]:
        if isinstance(index, slice):
            return flatten(self._history)[index]
        if index < 0:
            index += self._len
        if not 0 <= index < self._len:
            raise IndexError(index)
        return self._history.chunks[index // CHUNK][index % CHUNK]

    def __iter__(self) -> Iterator[Message]:
        for chunk in self._history.chunks:
            yield from chunk


def flatten(history: History) -> tuple[Message, ...]:
    """All messages in order."""
    return tuple(itertools.chain.from_iterable(history.chunks))


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
    """The running digest of a whole message list (what ``History.digest`` computes)."""
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
