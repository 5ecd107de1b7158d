"""The Projection protocol: a named, pure fold of the whole log into a state of your own.

A projection sees every record of every run in log order (``Recorded.position``) and
folds it with a pure ``apply``. The runtime runs it (``rt.attach``): from its stored
checkpoint (position 0 for a new one, so it backfills the history first), then live.
Because ``apply`` is pure and the checkpoint stores (position, state) together, a
restart continues exactly where the projection stopped.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar

import msgspec

from foldloop.errors import ConfigError
from foldloop.events._codec import KNOWN_TAGS
from foldloop.events._recorded import Recorded

__all__ = ["Projection", "check_projection", "check_state_codec"]

S = TypeVar("S")


class Projection(Generic[S]):
    """A named fold of the log: ``initial() -> S`` and a pure ``apply(S, Recorded) -> S``.

    Subclass it and override ``initial`` and ``apply`` (and set ``name``), or build one
    from two functions: ``Projection("count", initial=lambda: 0, apply=lambda n, r: n + 1)``.

    - ``name`` keys the checkpoint in the store: the same name continues the same fold.
    - ``version``: bump it when ``apply`` changes meaning; a checkpoint of another
      version is discarded and the projection backfills from the start.
    - ``stored``: keep the state (not only the position) in the checkpoint, so a restart
      does not refold. The state must be msgspec-serialisable (override
      ``encode_state``/``decode_state`` otherwise). With ``stored=False`` every attach
      backfills from position 1.
    - ``types``: apply only records of these event types (the others just advance the
      position).
    """

    name: str = ""
    version: int = 1
    stored: bool = True
    types: frozenset[str] | None = None

    def __init__(
        self,
        name: str | None = None,
        *,
        initial: Callable[[], S] | None = None,
        apply: Callable[[S, Recorded], S] | None = None,
        version: int | None = None,
        stored: bool | None = None,
        types: Iterable[str] | None = None,
    ) -> None:
        if name is not None:
            self.name = name
        if initial is not None:
            self._initial = initial
        if apply is not None:
            self._apply = apply
        if version is not None:
            self.version = version
        if stored is not None:
            self.stored = stored
        if types is not None:
            self.types = check_event_types(types)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} v{self.version}>"

    def initial(self) -> S:
        """The state before any record."""
        fn: Callable[[], S] | None = getattr(self, "_initial", None)
        if fn is None:
            raise ConfigError(
                f"{type(self).__name__} defines no initial(): override it or pass initial="
            )
        return fn()

    def apply(self, state: S, record: Recorded) -> S:
        """The state after ``record`` (pure: no I/O, no clock, do not mutate ``state``)."""
        fn: Callable[[S, Recorded], S] | None = getattr(self, "_apply", None)
        if fn is None:
            raise ConfigError(
                f"{type(self).__name__} defines no apply(): override it or pass apply="
            )
        return fn(state, record)

    def encode_state(self, state: S) -> bytes:
        """The checkpoint bytes of ``state`` (msgpack by default)."""
        return msgspec.msgpack.encode(state)

    def decode_state(self, raw: bytes) -> S:
        """The state stored by ``encode_state``, typed like ``initial()``."""
        state_type: Any = type(self.initial())
        result: S = msgspec.msgpack.decode(raw, type=state_type)
        return result


MAX_NAME_CHARS = 200
MAX_NAME_BYTES = 500
"""A checkpoint is keyed by the name: LMDB takes keys of at most 511 bytes."""
MAX_VERSION = 2**63 - 1
"""The most a checkpoint's version field holds (a signed 64-bit integer)."""


def _usable_name(name: object) -> bool:
    if not isinstance(name, str) or not name or "\0" in name or len(name) > MAX_NAME_CHARS:
        return False
    try:
        return len(name.encode()) <= MAX_NAME_BYTES
    except UnicodeEncodeError:  # an unpaired surrogate: no store can key a checkpoint so
        return False


def check_projection(projection: object) -> Projection[Any]:
    """``projection`` if it is usable, else a ConfigError saying what is wrong."""
    if not isinstance(projection, Projection):
        raise ConfigError(
            f"attach() takes a foldloop.projections.Projection; got {type(projection).__name__} "
            "(subclass it, or build one with fl.projections.Projection(name, initial=, apply=))"
        )
    name = projection.name
    if not _usable_name(name):
        raise ConfigError(
            f"a projection needs a name of 1-{MAX_NAME_CHARS} characters (at most "
            f"{MAX_NAME_BYTES} bytes as UTF-8) without NUL; got {name!r:.300} "
            "(set the class attribute `name` or pass name=)"
        )
    version = projection.version
    if type(version) is not int or not 1 <= version <= MAX_VERSION:
        raise ConfigError(
            f"projection {name!r}: version must be a whole number from 1 to {MAX_VERSION}; "
            f"got {version!r:.80}"
        )
    check_event_types(projection.types)
    return projection


def check_state_codec(projection: Projection[Any], state: object, *, read_back: bool) -> None:
    """A stored projection's state must be stored by ``encode_state`` (as bytes) and, with
    ``read_back``, read by ``decode_state``: tried at attach on the state it starts from, so
    a state msgspec cannot encode is refused there rather than leaving every checkpoint
    unwritten (and each attach refolding the log)."""
    name = projection.name
    how = (
        "make the state msgspec-serialisable, override encode_state/decode_state, "
        "or pass stored=False"
    )
    try:
        raw = projection.encode_state(state)
    except Exception as exc:
        raise ConfigError(
            f"projection {name!r}: encode_state cannot store the state it starts from "
            f"({type(exc).__name__}: {exc})",
            advice=how,
        ) from None
    if not isinstance(raw, bytes):
        raise ConfigError(
            f"projection {name!r}: encode_state returned {type(raw).__name__}, not bytes",
            advice=how,
        )
    if not read_back:
        return
    try:
        projection.decode_state(raw)
    except Exception as exc:
        raise ConfigError(
            f"projection {name!r}: decode_state cannot read what encode_state wrote of its "
            f"initial() state ({type(exc).__name__}: {exc})",
            advice=how,
        ) from None


def check_event_types(types: object) -> frozenset[str] | None:
    """``types`` as a set of event type names this foldloop writes (None: every type); a
    name it does not know (a typo would never match) is a ConfigError naming the closest."""
    if types is None:
        return None
    if isinstance(types, str) or not isinstance(types, Iterable):
        raise ConfigError(f"types must be a set of event types, e.g. {{{types!r}}}")
    wanted = frozenset(types)
    if not wanted:  # it would never see a record: a mistake, not a choice
        raise ConfigError(
            "types is empty, so nothing would ever be applied",
            advice="name the event types to follow, or pass None for every type",
        )
    for name in sorted(wanted, key=str):
        if name not in KNOWN_TAGS:
            close = difflib.get_close_matches(str(name), KNOWN_TAGS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(
                f"{name!r} is not an event type{hint}; the types are {sorted(KNOWN_TAGS)}"
            )
    return wanted
