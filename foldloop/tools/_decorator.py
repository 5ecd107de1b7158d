"""``@fl.tool``: a plain function becomes a tool the model can call, with a schema.

Tools are ``idempotent=False`` unless they say otherwise: after a crash, foldloop never
runs a non-idempotent call twice; it tells the model the outcome is unknown instead.
A result longer than the tool's ``max_result_chars`` is cut (``Tool.bounded``); the event
records how long it was and the model is told.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import math
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, overload

import msgspec

from foldloop.core._messages import ToolSpec
from foldloop.errors import ConfigError
from foldloop.events._codec import storable_text
from foldloop.events._values import ToolInfo
from foldloop.tools._command import run_command
from foldloop.tools._schema import ArgSchema, build_arg_schema, parse_docstring

__all__ = [
    "failure_text",
    "bound_text",
    "DEFAULT_MAX_RESULT_CHARS",
    "DEFAULT_TIMEOUT",
    "MAX_RESULT_BYTES",
    "Tool",
    "ToolOutcome",
    "tool",
    "infos_digest",
    "tools_digest",
]

DEFAULT_TIMEOUT = 120.0
DEFAULT_MAX_RESULT_CHARS = 256 * 1024
"""Characters of a tool's result (or error) kept unless it sets ``max_result_chars``."""
MAX_RESULT_BYTES = 1_000_000
"""What a result may take in the log (UTF-8): under the store's 1 MiB an event, with room
for its other fields. A result of wide characters is cut to this too."""
ISOLATED_OUTPUT_BYTES = 8 * MAX_RESULT_BYTES
"""What a subprocess tool's child may write back: its outcome, cut to the tool's bound in the
child, as JSON (escapes take up to 6 bytes a character)."""
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_JSON = msgspec.json.Encoder(order="sorted")


def failure_text(exc: BaseException) -> str:
    """What the model is told of an exception a tool's call raised."""
    if not isinstance(exc, Exception):  # SystemExit, KeyboardInterrupt: the type says it
        return f"{type(exc).__name__} raised inside the tool"
    try:
        text = f"{type(exc).__name__}: {exc}"
    except Exception as unreadable:  # its __str__ failed: the call's outcome all the same
        text = (
            f"{type(exc).__name__} raised inside the tool (its message could not be read: "
            f"{type(unreadable).__name__})"
        )
    return storable_text(text)


class ToolOutcome(msgspec.Struct, frozen=True):
    """What one invocation produced: ok with text, or a failure kind and message.

    ``original_chars`` is set once ``text`` was cut (``Tool.bounded``): how long it was."""

    ok: bool
    text: str
    kind: str = ""
    duration_ms: float = 0.0
    original_chars: int | None = None


class Tool:
    """A function the model may call, with its argument schema and execution policy."""

    max_result_chars: int = DEFAULT_MAX_RESULT_CHARS
    isolated: bool = False
    """Each call runs in a child process (``subprocess=True``)."""
    is_async: bool = False
    """An ``async def`` tool, awaited on the runtime's event loop."""

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        name: str | None = None,
        description: str | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
        idempotent: bool = False,
        concurrency: int = 8,
        subprocess: bool = False,
        max_result_chars: int = DEFAULT_MAX_RESULT_CHARS,
    ) -> None:
        tool_name = name or fn.__name__
        self._module = fn.__module__
        if inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn):
            raise ConfigError(
                f"tool {tool_name!r} is a generator: a tool returns one result; write it as a "
                "def or async def that returns it"
            )
        self.is_async = inspect.iscoroutinefunction(fn)
        if self.is_async and subprocess:
            raise ConfigError(
                f"tool {tool_name!r}: an async def tool runs on the runtime's event loop, not in "
                "a subprocess; drop subprocess=True or make it a plain def"
            )
        if subprocess:
            main_file = getattr(sys.modules.get("__main__"), "__file__", None)
            if fn.__module__ == "__main__" and main_file:
                # a script: the child loads the file under another name (its main guard skipped)
                self._module = "file:" + os.path.abspath(main_file)
            elif "<locals>" in fn.__qualname__ or fn.__module__ in ("__main__", "builtins"):
                raise ConfigError(
                    f"tool {tool_name!r}: a subprocess tool must be defined at module level in "
                    "an importable module or a script file (the child process loads it by name)"
                )
        self.isolated = subprocess
        if not _NAME.match(tool_name):
            raise ConfigError(
                f"tool name {tool_name!r} must be 1-64 characters of letters, digits, '_' or '-'"
            )
        if timeout is not None and (
            isinstance(timeout, bool)
            or not isinstance(timeout, int | float)
            or not math.isfinite(timeout)
            or timeout <= 0
        ):
            raise ConfigError(
                f"tool {tool_name!r}: timeout must be a finite number of seconds > 0 "
                f"(or None for no timeout); got {timeout!r}"
            )
        if not isinstance(concurrency, int) or isinstance(concurrency, bool) or concurrency < 1:
            raise ConfigError(
                f"tool {tool_name!r}: concurrency must be an int >= 1; got {concurrency!r}"
            )
        if (
            not isinstance(max_result_chars, int)
            or isinstance(max_result_chars, bool)
            or not 1 <= max_result_chars <= MAX_RESULT_BYTES
        ):
            raise ConfigError(
                f"tool {tool_name!r}: max_result_chars must be a whole number from 1 to "
                f"{MAX_RESULT_BYTES:,} (what the log holds of one result); got {max_result_chars!r}"
            )
        self.max_result_chars = max_result_chars
        doc, param_docs = parse_docstring(fn.__doc__)
        self.fn = fn
        self.name = tool_name
        self.description = description if description is not None else doc
        self.timeout = None if timeout is None else float(timeout)
        self.idempotent = bool(idempotent)
        self.concurrency = concurrency
        self.schema: ArgSchema = build_arg_schema(fn, tool_name, param_docs)
        self._decoder = msgspec.json.Decoder(self.schema.struct)
        digest = hashlib.sha256(
            _JSON.encode([self.name, self.schema.parameters, self.idempotent])
        ).hexdigest()[:16]
        self.info = ToolInfo(name=self.name, idempotent=self.idempotent, schema_digest=digest)
        self.spec = ToolSpec(
            name=self.name, description=self.description, parameters=self.schema.parameters
        )

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the underlying function directly (tools stay plain functions in tests)."""
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"Tool({self.name!r}, idempotent={self.idempotent}, timeout={self.timeout})"

    def bounded(self, outcome: ToolOutcome) -> ToolOutcome:
        """``outcome`` with its text cut to ``max_result_chars`` characters (and to
        ``MAX_RESULT_BYTES`` of UTF-8), ``original_chars`` saying how long it was; as it is
        when it fits. Lone surrogates are replaced either way (the log cannot hold them)."""
        kept, original = bound_text(outcome.text, self.max_result_chars)
        if original is not None:
            return msgspec.structs.replace(outcome, text=kept, original_chars=original)
        return outcome if kept is outcome.text else msgspec.structs.replace(outcome, text=kept)

    def validate(self, args: str) -> msgspec.Struct:
        """Decode the model's argument text; raises msgspec errors with a JSON path."""
        return self._decoder.decode(args or "{}")

    def invoke(self, args: str) -> ToolOutcome:
        """Validate ``args`` and run the tool (in a child process if ``subprocess=True``; an
        ``async def`` tool on an event loop of its own, outside one: ``ainvoke`` inside).
        Failures are outcomes; a subprocess tool's comes back cut to ``max_result_chars``
        (its child cuts it), the others' as the call gave it (a run cuts every outcome)."""
        if self.is_async:
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                start = time.perf_counter()
                try:
                    return asyncio.run(self.ainvoke(args))
                except KeyboardInterrupt:
                    raise  # Ctrl-C of the script calling invoke, on its own thread
                except BaseException as exc:  # SystemExit (argparse) too, as invoke_here does
                    return self._raised(exc, start)
            raise ConfigError(
                f"tool {self.name!r} is async def and an event loop runs in this thread",
                advice="await tool.ainvoke(args) instead",
            )
        if self.isolated:
            return self._invoke_in_subprocess(args)
        return self.invoke_here(args)

    def _invoke_in_subprocess(self, args: str) -> ToolOutcome:
        refused = self._arguments(args)  # refuse bad arguments before starting a process
        if isinstance(refused, ToolOutcome):
            return refused
        cmd = [sys.executable, "-m", "foldloop.tools._isolated", self._module, self.fn.__qualname__]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        try:  # the arguments go on its stdin: a command line holds 128 KiB an argument
            result = run_command(
                cmd,
                timeout=self.timeout or 10**9,
                env=env,
                input=args or "{}",
                max_output=ISOLATED_OUTPUT_BYTES,
            )
        except ConfigError as exc:  # it could not start (no memory, no such interpreter...)
            return ToolOutcome(False, f"tool {self.name!r}'s process: {exc.fact}", "exception")
        ms = result.duration_s * 1000
        if result.timed_out:
            why = f"tool {self.name!r} did not finish within {self.timeout:g} s"
            return ToolOutcome(False, why + "; its process was killed", "timeout", ms)
        try:
            outcome = msgspec.json.decode(result.stdout, type=ToolOutcome)
        except msgspec.MsgspecError:
            tail = result.stderr.strip().splitlines()[-3:]
            return ToolOutcome(
                False,
                f"tool {self.name!r}'s process exited with {result.returncode}: {' | '.join(tail)}",
                "exception",
                ms,
            )
        return msgspec.structs.replace(outcome, duration_ms=ms)

    def invoke_here(self, args: str) -> ToolOutcome:
        """Validate ``args`` and run the tool in this process; failures become outcomes."""
        start = time.perf_counter()
        kwargs = self._arguments(args)
        if isinstance(kwargs, ToolOutcome):
            return kwargs
        try:
            value = self.fn(**kwargs)
        except Exception as exc:
            return self._raised(exc, start)
        except BaseException as exc:  # SystemExit / KeyboardInterrupt must not kill actors
            return self._raised(exc, start)
        return self._returned(value, start)

    async def ainvoke(self, args: str) -> ToolOutcome:
        """``invoke_here`` for an ``async def`` tool, awaited on the runtime's event loop.
        A cancellation (its timeout, a runtime closing) is not caught: the caller reports it."""
        start = time.perf_counter()
        kwargs = self._arguments(args)
        if isinstance(kwargs, ToolOutcome):
            return kwargs
        try:
            value = await self.fn(**kwargs)
        except Exception as exc:
            return self._raised(exc, start)
        return self._returned(value, start)

    def _arguments(self, args: str) -> dict[str, Any] | ToolOutcome:
        """The call's keyword arguments, or the outcome that refuses them."""
        try:
            parsed = self.validate(args)
        except msgspec.ValidationError as exc:
            return ToolOutcome(False, f"invalid arguments for {self.name!r}: {exc}", "invalid_args")
        except msgspec.DecodeError as exc:
            return ToolOutcome(
                False,
                f"arguments for {self.name!r} are not valid JSON ({exc}); send a JSON object",
                "invalid_args",
            )
        except UnicodeEncodeError as exc:  # a lone surrogate: no JSON text holds one
            return ToolOutcome(
                False,
                f"arguments for {self.name!r} are not valid Unicode text ({exc.reason} at "
                f"index {exc.start})",
                "invalid_args",
            )
        return {name: getattr(parsed, name) for name in self.schema.names}

    @staticmethod
    def _raised(exc: BaseException, start: float) -> ToolOutcome:
        ms = (time.perf_counter() - start) * 1000
        return ToolOutcome(False, failure_text(exc), "exception", ms)

    @staticmethod
    def _returned(value: object, start: float) -> ToolOutcome:
        ms = (time.perf_counter() - start) * 1000
        if isinstance(value, str):
            return ToolOutcome(True, storable_text(value), "", ms)
        if inspect.iscoroutine(value):
            value.close()  # never awaited: closed here, not warned about at exit
            return ToolOutcome(
                False,
                "the tool returned a coroutine instead of its result: await it inside the "
                "tool, or declare the tool async def (foldloop awaits that)",
                "exception",
                ms,
            )
        try:
            return ToolOutcome(True, storable_text(_JSON.encode(value).decode()), "", ms)
        except Exception as exc:  # TypeError, EncodeError, RecursionError (it holds itself)...
            return ToolOutcome(
                False,
                f"the tool returned a {type(value).__name__} that is not JSON-encodable "
                f"({type(exc).__name__}: {exc}); "
                "return str, numbers, lists, dicts, dataclasses or msgspec Structs",
                "exception",
                ms,
            )


@overload
def tool(fn: Callable[..., Any], /) -> Tool: ...


@overload
def tool(
    *,
    name: str | None = None,
    description: str | None = None,
    timeout: float | None = DEFAULT_TIMEOUT,
    idempotent: bool = False,
    concurrency: int = 8,
    subprocess: bool = False,
    max_result_chars: int = DEFAULT_MAX_RESULT_CHARS,
) -> Callable[[Callable[..., Any]], Tool]: ...


def tool(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    timeout: float | None = DEFAULT_TIMEOUT,
    idempotent: bool = False,
    concurrency: int = 8,
    subprocess: bool = False,
    max_result_chars: int = DEFAULT_MAX_RESULT_CHARS,
) -> Tool | Callable[[Callable[..., Any]], Tool]:
    """Make ``fn`` a tool: ``@fl.tool`` or ``@fl.tool(timeout=30, idempotent=True)``.

    ``subprocess=True`` runs each call in a child process, killed with its whole process
    group at the timeout (for tools that may hang in code that cannot be interrupted).
    ``max_result_chars`` (default 262,144) is how much of a result, or of an error, the
    run keeps and the model reads; a longer one is cut, the cut recorded in the event,
    told to the model and logged (``tool_result_cut``, a warning).
    """

    def wrap(f: Callable[..., Any]) -> Tool:
        if not callable(f):
            raise ConfigError(f"@fl.tool decorates a function; got {f!r}")
        return Tool(
            f,
            name=name,
            description=description,
            timeout=timeout,
            idempotent=idempotent,
            concurrency=concurrency,
            subprocess=subprocess,
            max_result_chars=max_result_chars,
        )

    return wrap(fn) if fn is not None else wrap


def bound_text(text: str, max_chars: int = DEFAULT_MAX_RESULT_CHARS) -> tuple[str, int | None]:
    """``text`` cut to ``max_chars`` characters and ``MAX_RESULT_BYTES`` of UTF-8 (lone
    surrogates replaced), and how long it was if it was cut (else None)."""
    kept = storable_text(text[:max_chars])
    if not kept.isascii():
        raw = kept.encode()
        if len(raw) > MAX_RESULT_BYTES:
            kept = raw[:MAX_RESULT_BYTES].decode("utf-8", "ignore")
    return kept, (len(text) if len(kept) < len(text) else None)


def tools_digest(tools: Sequence[Tool]) -> str:
    """A digest of a tool set (names, schemas, idempotency): what resume checks against."""
    return infos_digest([t.info for t in tools])


def infos_digest(infos: Sequence[ToolInfo]) -> str:
    """``tools_digest`` of what runs record about the tools (sub-agents included)."""
    h = hashlib.sha256()
    for info in sorted(infos, key=lambda i: i.name):
        h.update(f"{info.name}\0{info.schema_digest}\0{info.idempotent}\n".encode())
    return h.hexdigest()[:32]
