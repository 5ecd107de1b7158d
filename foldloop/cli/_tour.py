"""``foldloop demo``: the demo agent's run, shown as it is recorded, with the commands a
person would type at each turn (approve, resume, inspect)."""

from __future__ import annotations

import threading

import typer

from foldloop.cli._demo import DEMO_INPUT, demo_agent
from foldloop.cli._errors import Location, fail, opened
from foldloop.cli._exit_codes import EXIT_ERROR
from foldloop.cli._hints import resume_command
from foldloop.cli._interrupt import waited
from foldloop.cli._output import command_line, count, escape, line, prose, reader_gone, summary
from foldloop.core._state import RunStatus
from foldloop.events._recorded import Recorded
from foldloop.events._values import Limits
from foldloop.runtime._results import RunResult
from foldloop.runtime._rules import new_run_id

__all__ = ["DEMO_AGENT", "tour"]

DEMO_AGENT = "foldloop.cli:demo_agent"
"""The demo agent as ``--agent`` names it."""


def tour(store: Location, again: str) -> None:
    """Run the demo on ``store``; ``again`` is how this shell starts foldloop on it."""
    agent = demo_agent()
    with opened(store, create=True, agents=(agent,)) as rt:
        prose(f"[bold]foldloop demo[/] - store: {escape(str(store))}")
        prose(f"[dim]input:[/] {escape(DEMO_INPUT)}\n")
        run_id = new_run_id(agent.name)  # its events only: other runs may share the store
        reader_left = threading.Event()

        def show(rec: Recorded) -> None:
            if rec.run_id != run_id or reader_left.is_set():
                return
            try:
                line(f"  [cyan]{rec.seq:>3}[/] {rec.type:<18} ", summary(rec))
            except typer.Exit:  # stdout's reader left (| head): the demo stops, quietly
                reader_left.set()

        def shown(result: RunResult) -> RunResult:
            """``result`` once its events are shown: the demo stops if it cannot go on."""
            follow.catch_up(timeout=5)
            if reader_left.is_set():
                reader_gone()
            if result.status is RunStatus.INTERRUPTED:
                fail(EXIT_ERROR, f"the demo's run {run_id} was interrupted: {result.reason}")
            return result

        follow = rt.subscribe(show)
        run = rt.spawn(agent, DEMO_INPUT, run_id=run_id)
        result = shown(waited(run, timeout=60))
        if result.status is RunStatus.AWAITING_APPROVAL:
            for pending in rt.pending_approvals():
                if pending.run_id != run_id:
                    continue
                prose(
                    f"\n[yellow]approval needed[/]: {escape(pending.summary)} - the demo "
                    "approves it as 'demo'; a person would run:"
                )
                command_line(
                    f"  {escape(again)} approve --run {run.id} --call {escape(pending.call_id)}\n"
                )
                rt.approve(
                    run_id=run_id, call_id=pending.call_id, by="demo", note="fine by the demo"
                )
            result = shown(waited(rt.handle(run.id), timeout=60))
        prose(f"\n[yellow]run {result.status.value}[/]: {escape(result.reason)}")
        prose("[dim]the demo raises the step ceiling and resumes it, as this would:[/]")
        resume_it = resume_command(run.id, DEMO_AGENT, again=again)
        command_line(f"  {escape(resume_it)} --max-steps 5\n")
        run = rt.resume(run.id, extend=Limits(max_steps=5))
        result = shown(waited(run, timeout=60))
        follow.detach()
        ended = f"\n[green]run {result.status.value}[/] after {count(result.steps, 'step')}"
        prose(f"{ended}:" if result.output else ended)
        if result.output:
            prose(f"  {escape(result.output)}")
        rt.verify(run.id)
        prose("[dim]replay check (verify): today's code decides exactly what the log says.[/]")
        prose("\nInspect what it wrote:")
        for cmd in (
            f"{again} runs",
            f"{again} show {run.id}",
            f"{again} events {run.id} --json",
            f"{again} verify {run.id} --agent {DEMO_AGENT}",
            f"{again} metrics",
            f"{again} doctor",
        ):
            command_line(f"  {escape(cmd)}")
