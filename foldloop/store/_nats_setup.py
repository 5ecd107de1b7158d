"""Setting up a JetStream store at open: its stream and buckets checked (or made), asked
again while JetStream is slow to answer, and what a refusal there means for the host."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import nats.errors
import nats.js.errors

from foldloop._log import get_logger
from foldloop.errors import ConfigError, StoreAccessError, StoreError
from foldloop.store._nats_names import NatsTarget

__all__ = ["SETUP_ATTEMPTS", "set_up"]

log = get_logger("foldloop.store")

SETUP_ATTEMPTS = 3
"""Tries at the store's stream and buckets: a cluster making a replicated stream under load
can take longer than one request's timeout (each try finds what an earlier one made)."""
INSUFFICIENT_RESOURCES = 10074
"""JetStream's answer to replicas a single server cannot hold."""


class Part(Protocol):
    """A stream or bucket of the store that checks itself, made if absent and ``create``."""

    async def ensure(self, *, create: bool) -> None: ...


async def set_up(parts: Sequence[Part], t: NatsTarget, *, timeout_s: float, create: bool) -> None:
    """Ensure every part; a failure is a foldloop error saying what to do."""
    try:
        for attempt in range(1, SETUP_ATTEMPTS + 1):
            try:
                for part in parts:
                    await part.ensure(create=create)
                return
            except nats.errors.TimeoutError:
                if attempt == SETUP_ATTEMPTS:
                    raise
                log.info("jetstream_setup_slow", store=t.shown, attempt=attempt)
    except (nats.js.errors.ServiceUnavailableError, nats.errors.NoRespondersError):
        raise StoreAccessError(
            f"the NATS server at {t.shown} does not have JetStream enabled; start it with "
            "`nats-server -js` (or a `jetstream {}` block in its configuration)"
        ) from None
    except nats.errors.TimeoutError:
        raise StoreAccessError(
            f"the NATS server at {t.shown} did not answer JetStream requests within "
            f"{timeout_s} s, {SETUP_ATTEMPTS} times; is JetStream enabled (nats-server -js) "
            "and healthy?"
        ) from None
    except nats.js.errors.APIError as exc:
        if t.replicas > 1 and exc.err_code == INSUFFICIENT_RESOURCES:
            raise ConfigError(
                f"replicas={t.replicas} in {t.shown} needs a JetStream cluster of at least "
                f"{t.replicas} servers ({exc.description}); leave replicas out on one server"
            ) from None
        raise StoreError(
            f"the NATS server at {t.shown} refused to set up the store: {exc.description} "
            f"(JetStream error {exc.err_code})"
        ) from None
