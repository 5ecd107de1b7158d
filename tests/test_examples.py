"""Every script in examples/ runs as a user would run it, and says what it should."""

from __future__ import annotations

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
}


def test_every_example_is_listed() -> None:
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_runs(name: str, tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / name)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    for line in EXPECTED[name]:
        assert line in proc.stdout, (line, proc.stdout)
    assert list(tmp_path.iterdir()) == []  # examples keep their stores in temp dirs
