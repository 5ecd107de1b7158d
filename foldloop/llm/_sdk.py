"""What the official-SDK adapters share: API keys, and SDK errors as ModelCallError.

The openai and anthropic SDKs name their errors alike (RateLimitError, InternalServerError,
APITimeoutError, APIConnectionError, APIStatusError), so one mapping serves both: the run
retries what a retry can fix and fails clearly on what it cannot.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from types import ModuleType

from foldloop.errors import ConfigError, ModelCallError

__all__ = ["api_key", "sdk_errors"]


def api_key(given: str | None, env_var: str, base_url: str | None, adapter: str) -> str:
    """The key to use: given, else from the environment; local servers may need none."""
    key = given or os.environ.get(env_var)
    if key is not None:
        return key
    if base_url is None:
        raise ConfigError(f"{adapter} needs an API key: pass api_key= or set {env_var}")
    return "unused"


@contextlib.contextmanager
def sdk_errors(sdk: ModuleType, model: str, retry_statuses: tuple[int, ...] = ()) -> Iterator[None]:
    """Turn the SDK's errors into ModelCallError, retryable when asking again may help."""
    try:
        yield
    except (sdk.RateLimitError, sdk.InternalServerError) as exc:
        raise ModelCallError(
            f"{model}: HTTP {exc.status_code}, will retry: {exc.message}", retryable=True
        ) from None
    except (sdk.APITimeoutError, sdk.APIConnectionError) as exc:
        raise ModelCallError(f"{model}: {exc}", retryable=True) from None
    except sdk.APIStatusError as exc:
        retryable = exc.status_code in retry_statuses
        raise ModelCallError(
            f"{model} refused the request (HTTP {exc.status_code}): {exc.message}"
            + ("" if retryable else "; fix the request (messages, tool schemas, model, key)"),
            retryable=retryable,
        ) from None
