"""Tools for the subprocess-isolation tests (module level: the child imports them by name)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import foldloop as fl


@fl.tool(subprocess=True, idempotent=True)
def whoami(tag: str) -> dict[str, object]:
    """Report which process ran the call."""
    return {"pid": os.getpid(), "tag": tag}


@fl.tool(subprocess=True, timeout=4.0)  # its process starts within it on a busy machine
def hang(pidfile: str) -> str:
    """Write our pid, then hang in code that cannot be interrupted."""
    Path(pidfile).write_text(str(os.getpid()))
    time.sleep(600)
    return "never"


@fl.tool(subprocess=True)
def crash() -> str:
    """Die without a word."""
    os._exit(7)


@fl.tool(subprocess=True)
def chatty(n: int) -> str:
    """Print as it works (as libraries do), then answer."""
    print("working on", n)
    os.write(1, b"a line straight to fd 1\n")
    return f"got {n}"


@fl.tool(subprocess=True)
def echo_size(text: str) -> int:
    """How long the text it was given is."""
    return len(text)


@fl.tool(subprocess=True)
def big_result(chars: int) -> str:
    """A result of ``chars`` characters."""
    return "x" * chars


@fl.tool(subprocess=True)
def closes_stdout() -> str:
    """Close its stdout, then answer all the same."""
    import sys

    sys.stdout.close()
    return "fine"


@fl.tool(subprocess=True, timeout=30)
def starts_background(pidfile: str) -> str:
    """Start a process that outlives the call (it inherits the call's stdout and stderr)."""
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    Path(pidfile).write_text(str(child.pid))
    return "started"
