"""``foldloop demo``: the demo agent's run, shown as it is recorded, with the commands a
person would type at each turn (approve, resume, inspect)."""

from __future__ import annotations

from foldloop.cli._demo import DEMO_INPUT, demo_agent
from foldloop.cli._errors import Location, opened
from foldloop.cli._hints import resume_command
from foldloop.cli._output import command_line, count, escape, line, prose, summary
from foldloop.core._state import RunStatus
from foldloop.events._recorded import Recorded
from foldloop.events._values import Limits

__all__ = ["DEMO_AGENT", "tour"]

DEMO_AGENT = "foldloop.cli:demo_agent"
"""The demo agent as ``--agent`` names it."""


def tour(store: Location, again: str) -> None:
    """Run the demo on ``store``; ``again`` is how this shell starts foldloop on it."""
    agent = demo_agent()
    with opened(store, create=True, agents=(agent,)) as rt:
        prose(f"[bold]foldloop demo[/] - store: {escape(str(store))}")
        prose(f"[dim]input:[/] {escape(DEMO_INPUT)}\n")

        def show(rec: Recorded) -> None:
            line(f"  [cyan]{rec.seq:>3}[/] {rec.type:<18} ", summary(rec))

        follow = rt.subscribe(show)
        run = rt.spawn(agent, DEMO_INPUT)
        result = run.wait(timeout=60)
        follow.catch_up(timeout=5)
        if result.status is RunStatus.AWAITING_APPROVAL:
            for pending in rt.pending_approvals():
                prose(
                    f"\n[yellow]approval needed[/]: {escape(pending.summary)} - the demo "
                    "approves it as 'demo'; a person would run:"
                )
                command_line(
                    f"  {escape(again)} approve --run {run.id} --call {escape(pending.call_id)}\n"
                )
                rt.approve(pending.token, by="demo", note="fine by the demo")
            result = rt.handle(run.id).wait(timeout=60)
            follow.catch_up(timeout=5)
        prose(f"\n[yellow]run {result.status.value}[/]: {escape(result.reason)}")
        prose("[dim]the demo raises the step ceiling and resumes it, as this would:[/]")
        resume_it = resume_command(run.id, DEMO_AGENT, again=again)
        command_line(f"  {escape(resume_it)} --max-steps 5\n")
        run = rt.resume(run.id, extend=Limits(max_steps=5))
        result = run.wait(timeout=60)
        follow.catch_up(timeout=5)
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
