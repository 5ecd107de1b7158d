"""`foldloop worker URL --agents MODULE:ATTR`: drive a shared store's runs from this machine."""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from foldloop.cli._errors import errors, fail
from foldloop.cli._exit_codes import EXIT_USAGE
from foldloop.runtime._store_worker import serve_store
from foldloop.store._nats_names import is_nats_url

__all__ = ["worker"]


def worker(
    url: Annotated[
        str,
        typer.Argument(metavar="URL", help="The shared store: nats://HOST:PORT[/NAMESPACE]."),
    ],
    agents: Annotated[
        list[str],
        typer.Option(
            "--agents",
            metavar="MODULE:ATTR",
            help="An agent whose runs this worker drives (repeat for several).",
        ),
    ],
    processes: Annotated[
        int, typer.Option(min=1, help="Worker processes to run (and restart if one dies).")
    ] = 1,
    max_active_runs: Annotated[
        int | None, typer.Option(min=1, help="Runs each process drives at once (default: no cap).")
    ] = None,
    log_level: Annotated[str, typer.Option(help="What to log to stderr.")] = "warning",
) -> None:
    """Take queued runs of these agents from a shared store and drive them; take over the
    runs of workers that died. Runs until SIGTERM or Ctrl-C (its runs stay resumable:
    another worker goes on with them)."""
    if not is_nats_url(url):
        fail(
            EXIT_USAGE,
            f"{url!r} is not a shared store: a worker serves nats://HOST:PORT[/NAMESPACE]. On "
            "one machine, fl.WorkerPool drives a store directory from several processes",
        )
    sys.path.insert(0, os.getcwd())  # agents of the project it is started in
    with errors():
        raise typer.Exit(
            serve_store(
                url,
                agents,
                processes=processes,
                max_active_runs=max_active_runs,
                log_level=log_level,
            )
        )
