"""The ``foldloop`` command: run the demo and inspect a store.

Exit codes: 0 ok, 1 runtime error, 2 usage, 3 not found, 4 corrupt or incompatible.
Read commands never create a store; payloads are escaped before they reach the terminal.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn

import msgspec
import structlog
import typer
from rich.console import Console
from rich.progress import track
from rich.table import Table

from foldloop.agent import Agent
from foldloop.cli.demo import DEMO_INPUT, demo_agent
from foldloop.cli.metrics_view import metrics_view
from foldloop.core.state import RunStatus
from foldloop.errors import (
    ApprovalError,
    ConfigError,
    CorruptRecord,
    FoldloopError,
    NondeterminismError,
    RunNotFound,
    SchemaChangedError,
    StoreAccessError,
    StoreError,
    StoreNotFound,
)
from foldloop.events.named import to_named
from foldloop.events.recorded import Recorded, UnknownEvent
from foldloop.events.values import Limits
from foldloop.projections.metrics import RunMetrics
from foldloop.projections.prometheus import prometheus_text, serve_prometheus
from foldloop.runtime import Runtime
from foldloop.runtime.agent_ref import load_agent

__all__ = ["app", "main"]

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_CORRUPT = 0, 1, 2, 3, 4

app = typer.Typer(
    name="foldloop",
    help="Agent runs that survive anything: run the demo, inspect and resume runs in a store.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console(highlight=False)
err = Console(stderr=True, highlight=False)

StoreOpt = Annotated[
    Path,
    typer.Option(
        "--store",
        envvar="FOLDLOOP_STORE",
        help="Store directory (default .foldloop, or $FOLDLOOP_STORE).",
    ),
]
_DEFAULT_STORE = Path(".foldloop")
_OPTIONS: dict[str, Path] = {"store": _DEFAULT_STORE}


@app.callback()
def _global(store: StoreOpt = _DEFAULT_STORE) -> None:
    """Agent runs that survive anything: run the demo, inspect and resume runs in a store."""
    _OPTIONS["store"] = store


def _store() -> Path:
    return _OPTIONS["store"]


_CONTROL = {c: f"\\x{c:02x}" for c in range(32) if c not in (10,)}
_CONTROL.update({0x7F: "\\x7f"})
_BIDI = {c: f"\\u{c:04x}" for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x200E, 0x200F)}


def escape(text: str) -> str:
    """Make untrusted text safe for a terminal: control, ANSI and bidi characters escaped."""
    return text.translate({**_CONTROL, **_BIDI}).replace("[", "\\[")


def _fail(code: int, message: str) -> NoReturn:
    err.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    raise typer.Exit(code)


@contextmanager
def _errors() -> Iterator[None]:
    """Turn foldloop errors into a one-line message and an exit code (never a traceback)."""
    try:
        yield
    except (RunNotFound, StoreNotFound) as exc:
        _fail(EXIT_NOT_FOUND, str(exc))
    except StoreAccessError as exc:
        _fail(EXIT_ERROR, str(exc))  # the environment, not the store, is at fault
    except (StoreError, NondeterminismError, SchemaChangedError) as exc:
        _fail(EXIT_CORRUPT, str(exc))  # damaged, or not a store this foldloop can read
    except ConfigError as exc:
        _fail(EXIT_USAGE, str(exc))
    except ApprovalError as exc:
        _fail(EXIT_ERROR, str(exc))
    except FoldloopError as exc:
        _fail(EXIT_ERROR, str(exc))


@contextmanager
def _runtime(
    store: Path, *, create: bool = False, agents: tuple[Agent, ...] = ()
) -> Iterator[Runtime]:
    with _errors(), Runtime.open(store, create=create, agents=agents) as rt:
        yield rt


def _load_agent(spec: str) -> Agent:
    sys.path.insert(0, os.getcwd())
    try:
        return load_agent(spec)
    except ConfigError as exc:
        _fail(EXIT_USAGE, f"--agent: {exc}")


def _event_json(rec: Recorded) -> dict[str, Any]:
    event = rec.event
    named = event if isinstance(event, UnknownEvent) else to_named(event)
    body: dict[str, Any] = msgspec.to_builtins(named)
    if not isinstance(body, dict):
        body = {"type": rec.type}
    body.pop("type", None)
    return {
        "run_id": rec.run_id,
        "seq": rec.seq,
        "position": rec.position,
        "at": rec.at,
        "type": rec.type,
        "data": body,
    }


def _summary(rec: Recorded) -> str:
    data = _event_json(rec)["data"]
    text = ", ".join(f"{k}={v!r}" for k, v in data.items() if k not in ("tools", "limits"))
    return escape(text if len(text) <= 90 else text[:87] + "...")


@app.command()
def demo() -> None:
    """Run an offline demo agent on the embedded store and show what it records."""
    agent = demo_agent()
    store = _store()
    with _runtime(store, create=True, agents=(agent,)) as rt:
        out.print(f"[bold]foldloop demo[/] - store: {escape(str(store))}")
        out.print(f"[dim]input:[/] {escape(DEMO_INPUT)}\n")

        def show(rec: Recorded) -> None:
            out.print(
                f"  [cyan]{rec.seq:>3}[/] {rec.type:<18} {_summary(rec)}",
                no_wrap=True,
                overflow="ellipsis",
            )

        follow = rt.subscribe(show)
        run = rt.spawn(agent, DEMO_INPUT)
        result = run.wait(timeout=60)
        follow.catch_up(timeout=5)
        if result.status is RunStatus.AWAITING_APPROVAL:
            for pending in rt.pending_approvals():
                out.print(
                    f"\n[yellow]approval needed[/]: {escape(pending.summary)} - "
                    "the demo approves it as 'demo' (a person would: foldloop approve ...)\n"
                )
                rt.approve(pending.token, by="demo", note="fine by the demo")
            result = rt.handle(run.id).wait(timeout=60)
            follow.catch_up(timeout=5)
        out.print(f"\n[yellow]run {result.status.value}[/]: {escape(result.reason)}")
        out.print("[dim]extending the step ceiling and resuming...[/]\n")
        run = rt.resume(run.id, extend=Limits(max_steps=5))
        result = run.wait(timeout=60)
        follow.catch_up(timeout=5)
        follow.detach()
        out.print(f"\n[green]run {result.status.value}[/] after {result.steps} steps: ")
        out.print(f"  {escape(result.output)}")
        rt.verify(run.id)
        out.print("[dim]replay check (verify): today's code decides exactly what the log says.[/]")
        out.print("\nInspect what it wrote:")
        flag = f" --store {store}" if store != _DEFAULT_STORE else ""
        for line in (
            f"foldloop{flag} runs",
            f"foldloop{flag} show {run.id}",
            f"foldloop{flag} events {run.id} --json",
            f"foldloop{flag} verify {run.id} --agent foldloop.cli.demo:demo_agent",
            f"foldloop{flag} metrics",
            f"foldloop{flag} doctor",
        ):
            out.print(f"  {escape(line)}")


@app.command()
def runs(
    status: Annotated[str | None, typer.Option(help="Only runs with this status.")] = None,
    agent: Annotated[str | None, typer.Option(help="Only runs of this agent.")] = None,
) -> None:
    """List the runs in the store."""
    with _runtime(_store()) as rt:
        try:
            rows = rt.runs(status=status, agent=agent)
        except ValueError:
            _fail(EXIT_USAGE, f"unknown status {status!r}")
        table = Table("run", "agent", "status", "steps", "reason")
        for row in rows:
            table.add_row(
                escape(row.run_id),
                escape(row.agent),
                row.status.value,
                str(row.steps),
                escape(row.reason[:80]),
            )
        out.print(table)


@app.command()
def show(run: str) -> None:
    """A run's summary and timeline."""
    with _runtime(_store()) as rt:
        state = rt.state(run)
        summary = next((r for r in rt.runs() if r.run_id == run), None)
        status = summary.status.value if summary else state.status.value
        out.print(f"[bold]{escape(run)}[/] agent={escape(state.agent)} status={status}")
        out.print(
            f"steps={state.steps} tokens={state.usage.total_tokens} "
            f"cost=${state.usage.cost_usd:.4f}"
        )
        if state.reason:
            out.print(f"reason: {escape(state.reason)}")
        if state.output:
            out.print(f"output: {escape(state.output)}")
        for rec in rt.events(run):
            out.print(f"  {rec.seq:>4} {rec.type:<18} {_summary(rec)}")


@app.command()
def events(
    run: str,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object a line.")] = False,
    from_seq: Annotated[int, typer.Option("--from-seq", min=1)] = 1,
) -> None:
    """A run's events."""
    with _runtime(_store()) as rt:
        for rec in rt.events(run, from_seq):
            if as_json:
                sys.stdout.write(json.dumps(_event_json(rec), ensure_ascii=True) + "\n")
            else:
                out.print(f"{rec.seq:>4} {rec.type:<18} {_summary(rec)}")


@app.command()
def verify(
    run: str,
    agent: Annotated[str, typer.Option(help="The agent as module:attr.")],
) -> None:
    """Replay a run's log through today's code; exit 4 at the first difference."""
    loaded = _load_agent(agent)
    with _runtime(_store(), agents=(loaded,)) as rt:
        state = rt.verify(run)
        out.print(f"ok: {state.seq} events of {escape(run)} replay identically")


@app.command()
def resume(
    run: str,
    agent: Annotated[str, typer.Option(help="The agent as module:attr.")],
    max_steps: Annotated[int | None, typer.Option(min=1, help="Raise the step ceiling.")] = None,
) -> None:
    """Continue a resumable run and wait for it to settle."""
    loaded = _load_agent(agent)
    with _runtime(_store(), agents=(loaded,)) as rt:
        extend = Limits(max_steps=max_steps) if max_steps else None
        result = rt.resume(run, extend=extend).wait()
        out.print(f"{escape(run)}: {result.status.value} {escape(result.reason or result.output)}")


@app.command()
def explain(run: str) -> None:
    """Why a run is where it is, and what to do next."""
    with _runtime(_store()) as rt:
        out.print(escape(str(rt.explain(run))))


@app.command()
def tail(
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new events.")
    ] = False,
    from_position: Annotated[int, typer.Option("--from", min=1, help="First log position.")] = 1,
) -> None:
    """The whole log in order (all runs), optionally following it live."""
    with _runtime(_store()) as rt:
        position = from_position
        while True:
            for rec in rt.read_all(position):
                out.print(
                    f"{rec.position:>6} {escape(rec.run_id)} {rec.seq:>4} {rec.type:<18} "
                    f"{_summary(rec)}",
                    no_wrap=True,
                    overflow="ellipsis",
                )
                position = rec.position + 1
            if not follow:
                return
            time.sleep(0.2)


@app.command("export")
def export_run(
    run: str,
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="File (default stdout).")
    ] = None,
) -> None:
    """Export a run's events as JSONL (schema: foldloop.events.jsonl)."""
    with _runtime(_store()) as rt:
        lines = list(rt.export(run))
    text = "\n".join(lines) + "\n"
    if output is None:
        sys.stdout.write(text)
    else:
        output.write_text(text)
        err.print(f"wrote {len(lines) - 1} events of {escape(run)} to {escape(str(output))}")


@app.command("import")
def import_run(
    file: Path,
    run_id: Annotated[str | None, typer.Option("--run-id", help="Import under this id.")] = None,
) -> None:
    """Import a run exported as JSONL into the store (created if absent)."""
    if not file.is_file():
        _fail(EXIT_NOT_FOUND, f"no file {str(file)!r}")
    with _runtime(_store(), create=True) as rt:
        imported = rt.import_jsonl(file.read_text().splitlines(), run_id=run_id)
        out.print(f"imported {escape(imported)}: {rt.store.head(imported)} events")


@app.command()
def approvals() -> None:
    """Gated calls waiting for a person."""
    with _runtime(_store()) as rt:
        table = Table("run", "call", "tool", "args", "expires")
        for p in rt.pending_approvals():
            args = json.dumps(p.args, ensure_ascii=True)
            expires = datetime.datetime.fromtimestamp(p.expires_at / 1e9, tz=datetime.UTC)
            table.add_row(
                escape(p.run_id),
                escape(p.call_id),
                escape(p.tool),
                escape(args[:60]),
                expires.isoformat(timespec="seconds"),
            )
        out.print(table)


@app.command()
def metrics(
    prometheus: Annotated[
        bool, typer.Option("--prometheus", help="Print the Prometheus text exposition.")
    ] = False,
    serve: Annotated[
        int | None,
        typer.Option("--serve", help="Serve /metrics on this port (127.0.0.1) until Ctrl-C."),
    ] = None,
) -> None:
    """Metrics folded from the whole log: runs by status, calls, tokens, cost, latencies."""
    with _runtime(_store()) as rt:
        handle = rt.attach(RunMetrics())
        handle.catch_up(timeout=600)
        if serve is not None:
            with _errors(), serve_prometheus(handle, port=serve) as server:
                err.print(f"serving {server.url} (following the log; Ctrl-C to stop)")
                with contextlib.suppress(KeyboardInterrupt):
                    while True:
                        time.sleep(1)
            return
        if prometheus:
            sys.stdout.write(prometheus_text(handle.state))
            return
        out.print(metrics_view(handle.state, escape))


@app.command()
def projections() -> None:
    """Projection checkpoints in the store: where each stands, and why one stopped."""
    with _runtime(_store()) as rt:
        last = rt.store.last_position()
        table = Table("projection", "v", "position", "behind", "status", "updated")
        table.columns[0].no_wrap = True
        table.columns[5].no_wrap = True
        for cp in sorted(rt.store.checkpoints(), key=lambda c: c.name):
            failure = cp.failure
            status = (
                "ok"
                if failure is None
                else f"stopped at {failure.position} ({failure.run_id} seq {failure.seq}, "
                f"{failure.event_type}): {failure.error}"
            )
            updated = datetime.datetime.fromtimestamp(cp.updated_at / 1e9, tz=datetime.UTC)
            table.add_row(
                escape(cp.name),
                str(cp.version),
                str(cp.position),
                str(max(0, last - cp.position)),
                escape(status),
                updated.strftime("%Y-%m-%d %H:%M:%S"),
            )
        out.print(table)


def _decision(
    approved: bool,
    token: str | None,
    *,
    run: str | None,
    call: str | None,
    by: str,
    note: str,
) -> None:
    if token is None and (run is None or call is None):
        _fail(EXIT_USAGE, "give a TOKEN, or both --run and --call")
    with _runtime(_store()) as rt:
        if approved:
            rt.approve(token, run_id=run, call_id=call, by=by, note=note)
        else:
            rt.deny(token, run_id=run, call_id=call, by=by, note=note)
    verb = "approved" if approved else "denied"
    out.print(f"{verb}; a runtime with the agent carries it into the run (or `foldloop resume`)")


TokenArg = Annotated[str | None, typer.Argument(help="The approval token.")]
RunOpt = Annotated[str | None, typer.Option("--run", help="Run id (with --call).")]
CallOpt = Annotated[str | None, typer.Option("--call", help="Call id (with --run).")]
ByOpt = Annotated[str, typer.Option("--by", help="Who decides (recorded).")]
NoteOpt = Annotated[str, typer.Option("--note", help="Told to the model (deny) and recorded.")]


@app.command()
def approve(
    token: TokenArg = None,
    run: RunOpt = None,
    call: CallOpt = None,
    by: ByOpt = "",
    note: NoteOpt = "",
) -> None:
    """Approve a waiting call, by its token or by --run and --call."""
    _decision(True, token, run=run, call=call, by=by, note=note)


@app.command()
def deny(
    token: TokenArg = None,
    run: RunOpt = None,
    call: CallOpt = None,
    by: ByOpt = "",
    note: NoteOpt = "",
) -> None:
    """Deny a waiting call; the model is told the note and the run goes on."""
    _decision(False, token, run=run, call=call, by=by, note=note)


@app.command()
def doctor() -> None:
    """Walk the whole store: checksums, hash chains, gapless seqs, decodability."""
    with _runtime(_store()) as rt:
        problems = 0
        run_ids = rt.store.run_ids()
        # A store of many runs takes a while: a progress bar on stderr, when it is a terminal.
        checking = track(
            run_ids,
            description="checking runs",
            console=err,
            transient=True,
            disable=not err.is_terminal,
        )
        for run_id in checking:
            try:
                rt.store.verify_chain(run_id)
            except CorruptRecord as exc:
                problems += 1
                out.print(f"[red]{escape(exc.run_id)} seq {exc.seq}[/]: {escape(exc.problem)}")
            except StoreError as exc:  # damage below the records (LMDB's own pages)
                problems += 1
                out.print(f"[red]{escape(run_id)}[/]: {escape(str(exc))}")
        if problems:
            raise typer.Exit(EXIT_CORRUPT)
        out.print(f"ok: {len(run_ids)} runs, {rt.store.last_position()} events, all intact")


def _quiet_logs() -> None:
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
    )


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``foldloop`` script."""
    _quiet_logs()
    command: Callable[..., Any] = typer.main.get_command(app)
    try:
        command(args=argv, prog_name="foldloop", standalone_mode=True)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else EXIT_ERROR
        sys.exit(code)
