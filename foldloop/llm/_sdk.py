"""What the official-SDK adapters share: API keys, async clients, SDK errors as ModelCallError.

The openai and anthropic SDKs name their errors alike (RateLimitError, InternalServerError,
APITimeoutError, APIConnectionError, APIStatusError), so one mapping serves both: the run
retries what a retry can fix and fails clearly on what it cannot.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import email.utils
import importlib.util
import json
import math
import os
import re
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from types import ModuleType
from typing import Any, Generic, Protocol, TypeVar

from foldloop.errors import ConfigError, ModelCallError

__all__ = ["LoopClients", "api_key", "async_options", "retry_after", "sdk_errors"]


def api_key(given: str | None, env_var: str, base_url: str | None, adapter: str) -> str:
    """The key to use: given, else from the environment; local servers may need none."""
    key = given or os.environ.get(env_var)
    if key is not None:
        if not key.isprintable() or any(c.isspace() for c in key):
            where = "api_key=" if given else env_var
            raise ConfigError(
                f"{adapter}: the API key ({where}) holds whitespace or a control character "
                "(a newline read from a file, say); no HTTP header can carry it",
                advice="strip it: api_key=key.strip()",
            )
        return key
    if base_url is None:
        raise ConfigError(f"{adapter} needs an API key: pass api_key= or set {env_var}")
    return "unused"


@contextlib.contextmanager
def sdk_errors(sdk: ModuleType, model: str) -> Iterator[None]:
    """Turn the SDK's errors into ModelCallError, retryable when asking again may help.

    It wraps a sync call and an ``await`` alike; a cancellation (``asyncio.CancelledError``,
    a BaseException) passes through untouched.
    """
    try:
        yield
    except (sdk.APITimeoutError, sdk.APIConnectionError) as exc:
        raise ModelCallError(f"{model}: {_with_cause(exc)}", retryable=True) from None
    except json.JSONDecodeError as exc:  # a 200 whose body is not JSON (a proxy's page)
        raise ModelCallError(f"{model}: the response is not JSON ({exc})", retryable=True) from None
    except RecursionError:  # JSON nested deeper than a parser recurses (either way)
        raise ModelCallError(
            f"{model}: JSON nested too deep to encode or read (the request's tool schemas, "
            "or the response)",
            retryable=False,
        ) from None
    except sdk.APIStatusError as exc:
        headers = exc.response.headers
        status = exc.status_code
        if not _worth_retrying(status, headers):
            if _retried_by_status(status):  # but for the server's word
                said = f"{model}: HTTP {status}, and the server says not to ask again"
                raise ModelCallError(
                    f"{said} (x-should-retry: false): {exc.message}", retryable=False
                ) from None
            raise ModelCallError(
                f"{model} refused the request (HTTP {status}): {exc.message}; fix the request "
                "(messages, tool schemas, model, key)",
                retryable=False,
            ) from None
        wait = retry_after(headers)
        asked = "" if wait is None else f", the server asks to wait {wait:g} s"
        raise ModelCallError(
            f"{model}: HTTP {status} (retryable{asked}): {exc.message}",
            retryable=True,
            retry_after_s=wait,
        ) from None


RETRIED_STATUSES = frozenset({408, 409, 429})
"""Besides 5xx, what the SDKs' own retries ask again: a request timeout, a lock timeout
(OpenAI's 409) and a rate limit."""


def _worth_retrying(status: int, headers: Mapping[str, str]) -> bool:
    """Whether asking again may get an answer, by the rule both SDKs' own retries follow: the
    server's ``x-should-retry`` when it says, else 408, 409, 429 and any 5xx (Anthropic's
    529 overloaded among them)."""
    said = headers.get("x-should-retry")
    if said in ("true", "false"):
        return said == "true"
    return _retried_by_status(status)


def _retried_by_status(status: int) -> bool:
    return status in RETRIED_STATUSES or status >= 500


CAUSE_CHARS = 300
"""The most of a transport's words an error carries."""
_CREDENTIALS = re.compile(r"(?i)(bearer\s+|api[-_]key\W+)\S+")


def _with_cause(exc: BaseException) -> str:
    """The SDK's words and the transport's beneath them: its "Request timed out." may stand
    for a refused connection, and "Connection error." for a reset or a redirect loop. What
    the transport says goes into the log: anything shaped like a credential is masked."""
    said = str(exc)
    cause = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
    if cause is None:
        return said
    why = _CREDENTIALS.sub(r"\1***", str(cause) or type(cause).__name__)[:CAUSE_CHARS]
    return said if why in said else f"{said} ({type(cause).__name__}: {why})"


def retry_after(headers: Mapping[str, str]) -> float | None:
    """The wait in seconds a response asks for before the next request: ``retry-after-ms``
    (OpenAI's), else ``retry-after`` in seconds or as an HTTP date; None when it asks none
    or says it in no form these take."""
    millis = _number(headers.get("retry-after-ms", ""))
    if millis is not None:
        return millis / 1000
    given = headers.get("retry-after")
    if given is None:
        return None
    seconds = _number(given)
    if seconds is not None:
        return seconds
    try:
        when = email.utils.parsedate_to_datetime(given)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # an HTTP date is GMT; one that says no zone is taken as such
        when = when.replace(tzinfo=datetime.UTC)
    return max(0.0, when.timestamp() - time.time())


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if 0 <= value < math.inf else None


def check_settings(
    adapter: str, *, model: object, base_url: object, timeout: object, max_tokens: object
) -> None:
    """Refuse an adapter's settings the SDK would take and fail on later (or every call)."""
    if not isinstance(model, str) or not model.strip():
        raise ConfigError(
            f"{adapter}(model={model!r}): the model must be a name the provider knows "
            "(such as 'gpt-4o-mini' or 'claude-haiku-4-5')"
        )
    if base_url is not None:
        try:
            parts = urllib.parse.urlsplit(base_url) if isinstance(base_url, str) else None
        except ValueError:  # "http://[::1": an IPv6 host cut short
            parts = None
        if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(
                f"{adapter}(base_url={base_url!r}): base_url must be an http:// or https:// "
                "URL (such as 'http://127.0.0.1:8000/v1'), or None for the provider's"
            )
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise ConfigError(
            f"{adapter}(max_tokens={max_tokens!r}): max_tokens must be a whole number >= 1 "
            "(the most a reply may write; the model's output limit)"
        )
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or not 0 < timeout < float("inf")  # nan too: it compares False
    ):
        raise ConfigError(
            f"{adapter}(timeout={timeout!r}): timeout must be a number of seconds > 0 (how "
            "long the SDK waits to connect, and for each read of the response)"
        )


def async_options(sdk: ModuleType, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` for the SDK's async client, over aiohttp when it is installed (the
    SDK's ``DefaultAioHttpClient``, which the extras bring): at a thousand calls in flight
    the default httpx transport's CPU per call, not the model, bounds a runtime."""
    aiohttp_client = getattr(sdk, "DefaultAioHttpClient", None)
    if aiohttp_client is None or importlib.util.find_spec("aiohttp") is None:
        return options
    return {**options, "http_client": aiohttp_client(timeout=options.get("timeout"))}


class _AsyncClient(Protocol):
    async def close(self) -> None: ...


C = TypeVar("C", bound=_AsyncClient)


class LoopClients(Generic[C]):
    """One async SDK client per running event loop, made there on first use.

    An httpx connection pool belongs to the loop it first ran on (used from another, it
    fails with "bound to a different event loop"), and a runtime runs its model calls on
    one loop of its own; so an adapter shared by two runtimes, or reused after one closes,
    gets a client and a pool per loop. Clients of loops since closed are dropped when a new
    loop first calls. Each pool has the SDK's limits: up to 1,000 connections, 100 of them
    kept alive between calls; calls past 1,000 in flight wait for a connection within
    their timeout.
    """

    def __init__(self, make: Callable[[], C]) -> None:
        self._make = make
        self._clients: dict[asyncio.AbstractEventLoop, C] = {}
        self._lock = threading.Lock()  # loops of different runtimes run on different threads

    def get(self) -> C:
        """The running loop's client."""
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            with self._lock:
                live = {lp: c for lp, c in self._clients.items() if not lp.is_closed()}
                client = live[loop] = self._make()
                self._clients = live
        return client

    async def aclose(self) -> None:
        """Close the running loop's client and its connections (a later call makes a new one)."""
        with self._lock:
            client = self._clients.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await client.close()
