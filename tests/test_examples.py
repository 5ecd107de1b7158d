"""Every script in examples/ runs as a user would run it, and says what it should."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

EXPECTED = {
    "tools.py": ["tool.failed invalid_args", "tool.failed timeout", "completed 2 + 3 = 5"],
    "limits_and_resume.py": ["limit_reached - max_steps ceiling 3", "completed after 6 steps"],
    "crash_recovery.py": ["tool.failed interrupted", "order-1 completed"],
    "approvals.py": ["awaiting_approval", "completed - Deleted the old log"],
    "projections.py": ["runs: {'completed': 4} tool calls: 4", "tools used: {'add': 4}"],
    "export_import.py": ['"format":1', "completed hello"],
    "worker_pool.py": ["the sum is 38", "runs per worker: [10, 10]", "runs completed: 20"],
    "subagents.py": ["waiting for a person: email", "- interviews: dr.lee replied", "  people "],
}


def test_every_example_is_listed() -> None:
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == sorted(EXPECTED)


# The agent each example's store holds runs of, as `foldloop runs` lists them.
AGENT = {
    "tools.py": "tools-example",
    "limits_and_resume.py": "reader",
    "crash_recovery.py": "billing",
    "approvals.py": "janitor",
    "projections.py": "calc",
    "export_import.py": "greeter",
    "worker_pool.py": "adder",
    "subagents.py": "lead",
}


def run_example(name: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(EXAMPLES / name)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def run_printed_command(proc: subprocess.CompletedProcess[str], cwd: Path) -> str:
    """Run the command the example printed last, as a user pasting it would; its output."""
    command = shlex.split(proc.stdout.splitlines()[-1])
    assert command[:3] == [sys.executable, "-m", "foldloop.cli"], command
    shown = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr
    return shown.stdout


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_runs_quietly_and_leaves_a_store_the_cli_reads(name: str, tmp_path: Path) -> None:
    proc = run_example(name, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # foldloop logs nothing unless the host configures logging
    assert "run_started" not in proc.stdout
    for line in EXPECTED[name]:
        assert line in proc.stdout, (line, proc.stdout)
    store = tmp_path / ".foldloop-examples" / Path(name).stem
    assert [p.name for p in tmp_path.iterdir()] == [store.parent.name]  # nothing else left
    assert [p.name for p in store.parent.iterdir()] == [store.name]
    assert f"the store stays in {store.relative_to(tmp_path)}" in proc.stdout
    assert AGENT[name] in run_printed_command(proc, tmp_path)


def test_an_example_run_again_starts_from_a_fresh_store(tmp_path: Path) -> None:
    for _ in range(2):  # the same run imported twice into one store would be refused
        proc = run_example("export_import.py", tmp_path)
        assert proc.returncode == 0, proc.stderr
    listed = run_printed_command(proc, tmp_path)
    assert listed.count("greeter-") == 1, listed  # one run id, not two
