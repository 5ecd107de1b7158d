"""Shared fixtures: hypothesis profiles, quiet logs, temp stores, actor cleanup."""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pykka
import pytest
import structlog
from hypothesis import HealthCheck, settings

import foldloop as fl
from tests.nats_servers import NatsServer, binary_problem, start_server

settings.register_profile(
    "ci", max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", max_examples=50, deadline=None)
settings.register_profile("nightly", max_examples=5000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int | None:
    """``-n auto``: one worker more than the cores this process may use. Most tests wait on
    subprocesses, servers and timers, so cores-many workers leave a third of the CPU idle
    (2 cores: 4:43 at two workers, 3:24 at three). ``-n logical`` and
    PYTEST_XDIST_AUTO_NUM_WORKERS keep xdist's own meaning (None: its hook answers)."""
    if config.option.numprocesses != "auto" or os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return None
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return cores + 1


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--kills", type=int, default=12, help="SIGKILLs in the crash-loop test (default 12)"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Give the kill loop time in proportion to the kills asked for (about 1 s each)."""
    kills = int(config.getoption("--kills"))
    for item in items:
        if "kill_loop" in item.name:
            item.add_marker(pytest.mark.timeout(90 + 2 * kills))


def pytest_configure(config: pytest.Config) -> None:
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        cache_logger_on_first_use=False,
    )


@pytest.fixture(autouse=True)
def _stop_actors() -> Iterator[None]:
    yield
    pykka.ActorRegistry.stop_all()


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    return tmp_path / "store"


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """One real nats-server with JetStream for the whole session (skips where none runs)."""
    problem = binary_problem()
    if problem is not None:
        pytest.skip(problem)
    server = start_server(tmp_path_factory.mktemp("nats"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def nats_url(nats_server: NatsServer) -> str:
    """A store URL of a namespace of its own on the session's server (owners lapse in 2 s)."""
    return f"{nats_server.url}/t{uuid.uuid4().hex[:16]}?owner_ttl=2"


@pytest.fixture
def rt(store_path: Path) -> Iterator[fl.Runtime]:
    """A runtime on a fresh store in a temp dir, closed after the test."""
    with fl.Runtime.open(store_path) as runtime:
        yield runtime
