"""Opening a store by where it is: a directory (LMDB) or NATS servers (``nats://...``)."""

from __future__ import annotations

import os

from foldloop.errors import ConfigError
from foldloop.store._lmdb_store import open_store
from foldloop.store._mapped import DEFAULT_MAP_SIZE
from foldloop.store._nats_names import is_nats_url, is_other_url, shown
from foldloop.store._port import EventStore

__all__ = ["connect_store"]


def connect_store(
    location: str | os.PathLike[str], *, create: bool = True, map_size: int = DEFAULT_MAP_SIZE
) -> EventStore:
    """The store at ``location``: a directory path, or ``nats://HOST:PORT[/NAMESPACE]``."""
    if is_other_url(location):
        raise ConfigError(
            f"{shown(str(location))!r} is a URL no store is at: a store is a directory path "
            "or nats://HOST:PORT[/NAMESPACE] (tls:// for TLS)"
        )
    if not is_nats_url(location):
        return open_store(location, create=create, map_size=map_size)
    if map_size != DEFAULT_MAP_SIZE:
        raise ConfigError(
            "map_size sizes an LMDB store directory; a NATS store's limits are the "
            "server's (JetStream's max_file_store), so leave map_size out"
        )
    try:
        from foldloop.store._jetstream_store import open_jetstream  # noqa: PLC0415
    except ImportError as exc:
        raise ConfigError(
            f"a nats:// store needs the NATS client ({exc.name} is not installed); "
            "pip install 'foldloop[nats]'"
        ) from None
    return open_jetstream(str(location), create=create)
