"""The README's quickstart and the real `foldloop` entry point, run as a user would."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from foldloop.store._preflight import FORMAT

ROOT = Path(__file__).resolve().parents[1]
FOLDLOOP = [sys.executable, "-m", "foldloop.cli"]


def readme_blocks(lang: str) -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(rf"```{lang}\n(.*?)```", text, flags=re.S)


def run(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*FOLDLOOP, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
    )


def test_readme_quickstart_runs_and_is_short(tmp_path: Path) -> None:
    quickstart = readme_blocks("python")[0]
    assert len(quickstart.strip().splitlines()) <= 40
    proc = subprocess.run(
        [sys.executable, "-c", quickstart],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "completed 2 + 3 = 5, and I noted it. 3" in proc.stdout
    assert "run.completed" in proc.stdout
    assert (tmp_path / ".foldloop-quickstart" / "data.mdb").exists()


def test_readme_setup_commands_are_the_ones_ci_runs() -> None:
    bash = readme_blocks("bash")[0]
    ci = (ROOT / ".ci" / "run").read_text()
    assert "foldloop demo" in bash
    test_command = re.search(r"&& (\.venv/bin/python -m pytest -q[^\n]*)", bash)
    assert test_command is not None and test_command.group(1) in ci


def test_readme_names_the_stores_format_of_this_version() -> None:
    assert f"one on-disk format (format {FORMAT};" in (ROOT / "README.md").read_text()


def test_demo_then_inspect_what_it_wrote(tmp_path: Path) -> None:
    demo = run(["demo"], tmp_path)
    assert demo.returncode == 0, demo.stderr
    assert "approval needed" in demo.stdout
    assert "run limit_reached" in demo.stdout and "run completed after 3 steps:\n" in demo.stdout
    assert [line for line in demo.stdout.splitlines() if line != line.rstrip()] == []
    run_id = re.search(r"foldloop show (\S+)", demo.stdout).group(1)  # type: ignore[union-attr]

    runs = run(["runs"], tmp_path)
    assert runs.returncode == 0 and run_id in runs.stdout and "completed" in runs.stdout

    events = run(["events", run_id, "--json"], tmp_path)
    lines = [json.loads(line) for line in events.stdout.splitlines()]
    assert [e["seq"] for e in lines] == list(range(1, len(lines) + 1))
    assert lines[0]["type"] == "run.started" and lines[-1]["type"] == "run.completed"
    assert {"run.limit_reached", "run.resumed", "approval.requested", "approval.decided"} <= {
        e["type"] for e in lines
    }

    verify = run(["verify", run_id, "--agent", "foldloop.cli:demo_agent"], tmp_path)
    assert verify.returncode == 0, verify.stderr
    assert "replay identically" in verify.stdout
    doctor = run(["doctor"], tmp_path)
    assert doctor.returncode == 0 and "all intact" in doctor.stdout
    assert doctor.stdout.startswith("ok: 1 run, "), doctor.stdout
    assert "checking runs" not in doctor.stderr  # no progress bar when stderr is no terminal
    on_terminal = run(["doctor"], tmp_path, FORCE_COLOR="1")  # rich: stderr counts as one
    assert on_terminal.returncode == 0 and "all intact" in on_terminal.stdout
    assert "checking runs" in on_terminal.stderr
    explain = run(["explain", run_id], tmp_path)
    assert explain.returncode == 0
    assert "is completed after 3 steps" in explain.stdout
    tail = run(["tail", "--from", "2"], tmp_path)
    assert tail.returncode == 0
    assert tail.stdout.splitlines()[0].split()[0] == "2"
    exported = tmp_path / "run.jsonl"
    assert run(["export", run_id, "-o", str(exported)], tmp_path).returncode == 0
    imported = run(["--store", str(tmp_path / "copy"), "import", str(exported)], tmp_path)
    assert imported.returncode == 0, imported.stderr
    assert f"imported {run_id}: {len(lines)} events" in imported.stdout
    again = run(["--store", str(tmp_path / "copy"), "import", str(exported)], tmp_path)
    assert again.returncode == 2
    assert "already exists" in again.stderr
    missing = run(["import", str(tmp_path / "nope.jsonl")], tmp_path)
    assert missing.returncode == 3
    show = run(["show", run_id], tmp_path)
    assert show.returncode == 0 and "tool.completed" in show.stdout


def test_metrics_table_prometheus_and_a_scrape_endpoint(tmp_path: Path) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    assert run(["demo"], tmp_path).returncode == 0
    table = run(["metrics"], tmp_path)
    assert table.returncode == 0, table.stderr
    assert re.search(r"runs completed\s*│\s*1", table.stdout)
    assert re.search(r"tool calls\s*│\s*3 \(0 failed\)", table.stdout)
    assert "approval wait" in table.stdout and "tool write_note" in table.stdout
    text = run(["metrics", "--prometheus"], tmp_path)
    assert text.returncode == 0, text.stderr
    families = {f.name: f for f in text_string_to_metric_families(text.stdout)}
    runs = {s.labels["status"]: s.value for s in families["foldloop_runs"].samples}
    assert runs["completed"] == 1 and runs["limit_reached"] == 0
    approvals = {s.labels["outcome"]: s.value for s in families["foldloop_approvals"].samples}
    assert approvals == {"approved": 1, "requested": 1}
    server = subprocess.Popen(
        [*FOLDLOOP, "metrics", "--serve", "0"],
        cwd=tmp_path,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert server.stderr is not None
        url = re.search(r"serving (\S+)", server.stderr.readline())
        assert url is not None
        with urllib.request.urlopen(url.group(1), timeout=10) as response:
            scraped = response.read().decode()
        assert 'foldloop_runs{status="completed"} 1.0' in scraped
    finally:
        server.send_signal(signal.SIGINT)
        assert server.wait(timeout=10) == 130  # as every command a Ctrl-C stops
    missing = run(["--store", str(tmp_path / "nope"), "metrics"], tmp_path)
    assert missing.returncode == 3 and not (tmp_path / "nope").exists()
    # the metrics command left its checkpoint; a projection that failed is listed with why
    import foldloop as fl

    def boom(state: int, record: fl.types.Recorded) -> int:
        if record.type == "tool.completed":
            raise ValueError("no tools here")
        return state + 1

    with fl.Runtime.open(tmp_path / ".foldloop") as rt:
        failing = rt.attach(fl.projections.Projection("picky", initial=lambda: 0, apply=boom))
        with pytest.raises(fl.errors.ProjectionError):
            failing.catch_up()
        last = rt.store.last_position()
    listed = run(["projections"], tmp_path, COLUMNS="200")
    assert listed.returncode == 0, listed.stderr
    rows = {line.split()[1]: line for line in listed.stdout.splitlines() if "│" in line[:3]}
    assert "foldloop.run_metrics" in rows and " ok " in rows["foldloop.run_metrics"]
    assert "stopped at" in rows["picky"] and "ValueError" in listed.stdout
    assert str(last) in rows["foldloop.run_metrics"]


def test_tail_follow_prints_what_another_process_writes(tmp_path: Path) -> None:
    import foldloop as fl

    assert run(["demo"], tmp_path).returncode == 0
    store = tmp_path / ".foldloop"
    with fl.Runtime.open(store) as rt:
        last = rt.store.last_position()
    follower = subprocess.Popen(
        [*FOLDLOOP, "tail", "--follow", "--from", str(last + 1)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        agent = fl.Agent(name="late", llm=fl.ScriptedLLM([fl.Reply(text="hi")]))
        with fl.Runtime.open(store) as rt:
            handle = rt.spawn(agent, "written while tail follows")
            assert handle.wait(timeout=30).ok
            run_id = handle.id
        assert follower.stdout is not None
        seen: list[list[str]] = []
        for line in follower.stdout:
            seen.append(line.split())
            if "run.completed" in line:
                break
    finally:
        follower.terminate()
        follower.wait(timeout=10)
    assert [int(cols[0]) for cols in seen] == list(range(last + 1, last + 1 + len(seen)))
    assert all(cols[1] == run_id for cols in seen)
    assert seen[0][3] == "run.started"


def test_exit_codes_and_no_store_created_by_reads(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    proc = run(["--store", str(missing), "runs"], tmp_path)
    assert proc.returncode == 3
    assert "no foldloop store" in proc.stderr and "Traceback" not in proc.stderr
    assert not missing.exists()
    proc = run(["runs"], tmp_path, FOLDLOOP_STORE=str(missing))
    assert proc.returncode == 3 and not missing.exists()

    assert run(["demo"], tmp_path).returncode == 0
    proc = run(["show", "no-such-run"], tmp_path)
    assert proc.returncode == 3 and "no run 'no-such-run'" in proc.stderr
    proc = run(["events", "x", "--from-seq", "-1"], tmp_path)
    assert proc.returncode == 2
    proc = run(["verify", "x", "--agent", "nocolon"], tmp_path)
    assert proc.returncode == 2 and "module:attr" in proc.stderr
    proc = run(["runs", "--status", "bogus"], tmp_path)
    assert proc.returncode == 2 and "unknown status" in proc.stderr


def test_corrupt_store_exits_4(tmp_path: Path) -> None:
    assert run(["demo"], tmp_path).returncode == 0
    data = tmp_path / ".foldloop" / "data.mdb"
    blob = data.read_bytes()
    marker = b"You are a careful bookkeeper"
    assert marker in blob
    data.write_bytes(blob.replace(marker, b"You are a careless bookkeeper"[: len(marker)]))
    proc = run(["doctor"], tmp_path)
    assert proc.returncode == 4
    assert "seq 1" in proc.stdout and "checksum mismatch" in proc.stdout


@pytest.mark.parametrize("payload", ["\x1b[31mred", "\u202eevil", "bell\x07"])
def test_terminal_escapes_are_neutralised(payload: str) -> None:
    from foldloop.cli import escape

    shown = escape(payload)
    assert "\x1b" not in shown and "\u202e" not in shown and "\x07" not in shown
