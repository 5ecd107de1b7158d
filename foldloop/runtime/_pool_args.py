"""WorkerPool's argument checks: each refuses a bad argument with a ConfigError saying what
to pass instead, before the pool opens its store or starts any process."""

from __future__ import annotations

import os

from foldloop._arguments import check_seconds
from foldloop.errors import ConfigError

__all__ = [
    "CPUS",
    "LOG_LEVELS",
    "MAX_PROCESSES",
    "START_TIMEOUT_S",
    "check_log_level",
    "check_processes",
    "check_start_timeout",
    "check_switch_interval",
]

CPUS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
"""The CPUs this process may run on (taskset, cpusets): a pool's workers unless told otherwise."""

MAX_PROCESSES = max(8, 4 * CPUS)
"""The most workers a pool starts: each is a whole interpreter driving thousands of runs, so
workers past the CPUs only share them; the slack is for tests, not for a typed 1000."""

START_TIMEOUT_S = (0.001, 86_400.0)
"""The ``start_timeout`` taken, in seconds (a day at most: nothing starts slower)."""

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
"""The ``log_level`` names shown; the worker takes any case (it looks up ``upper()``)."""
_ALIASES = ("warn", "fatal")  # logging's other names for two of them (NOTSET would log all)


def check_processes(processes: object) -> int:
    """The workers to start for ``processes`` (None: one per CPU); refuses a bool, a
    non-int, less than 1 or more than ``MAX_PROCESSES``."""
    if processes is None:
        return CPUS
    if isinstance(processes, bool) or not isinstance(processes, int) or processes < 1:
        raise ConfigError(
            f"processes must be an int >= 1, or None for one per CPU ({CPUS} here); "
            f"got {processes!r}"
        )
    if processes > MAX_PROCESSES:
        raise ConfigError(
            f"processes={processes} is more than the {MAX_PROCESSES} workers a pool starts "
            f"here (4 per CPU, at least 8; this process may use {CPUS} CPUs): each worker is a "
            "whole Python process driving thousands of runs, so more workers than CPUs "
            "buy nothing",
            advice=f"pass processes=None for one per CPU, or a number up to {MAX_PROCESSES}",
        )
    return processes


def check_log_level(level: object) -> str:
    """``level`` as the worker's ``--log-level`` takes it (lower case); refuses what is not
    the name of a logging level."""
    if not isinstance(level, str) or level.lower() not in LOG_LEVELS + _ALIASES:
        raise ConfigError(
            f"log_level must be the name of a logging level, one of {', '.join(LOG_LEVELS)} "
            f"(any case); got {level!r:.80}"
        )
    return level.lower()


def check_start_timeout(start_timeout: object) -> None:
    """Refuse a ``start_timeout`` that is not a finite number of seconds above 0."""
    least, most = START_TIMEOUT_S
    check_seconds("start_timeout", start_timeout, most, least=least)


def check_switch_interval(switch_interval: object) -> None:
    """Refuse a ``switch_interval`` that is not None or a number of seconds in (0, 1]."""
    if switch_interval is not None and (
        not isinstance(switch_interval, int | float)
        or isinstance(switch_interval, bool)
        or not 0 < switch_interval <= 1  # nan too: it compares False
    ):
        raise ConfigError(
            "switch_interval is the workers' sys.setswitchinterval in seconds, a number "
            f"in (0, 1], or None for Python's default; got {switch_interval!r}"
        )
