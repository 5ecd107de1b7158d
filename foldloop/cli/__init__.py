"""The ``foldloop`` command: run the demo and inspect a store.

Exit codes: 0 ok, 1 runtime error, 2 usage, 3 not found, 4 corrupt or incompatible, 130
interrupted (Ctrl-C). Read commands never create a store; payloads are escaped before they
reach the terminal. On a terminal, output fits its width by cutting free text, never an id
(``--wide`` shows tables whole); piped or redirected, nothing is wrapped or clipped. Hints
name this command's commands.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import shlex
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn

import msgspec
import typer
from rich.console import Console, RenderableType
from rich.measure import Measurement
from rich.progress import track
from rich.table import Table
from rich.text import Text

from foldloop._agent import Agent
from foldloop._approvals import token_digest
from foldloop.cli._demo import DEMO_INPUT, demo_agent
from foldloop.cli._fit import fit, free
from foldloop.cli._metrics_view import metrics_view
from foldloop.core._explain import DecidedApproval
from foldloop.core._state import RunState, RunStatus
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
from foldloop.events import RunLimitReached
from foldloop.events._jsonl import load_run
from foldloop.events._named import to_named
from foldloop.events._recorded import Recorded, UnknownEvent
from foldloop.events._values import Limits
from foldloop.projections._metrics import RunMetrics
from foldloop.projections._prometheus import prometheus_text, serve_prometheus
from foldloop.runtime import Runtime
from foldloop.runtime._agent_ref import load_agent
from foldloop.runtime._rules import check_run_id
from foldloop.store._approvals import ApprovalRecord

__all__ = ["app", "main"]

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_CORRUPT = 0, 1, 2, 3, 4
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a command Ctrl-C stopped

app = typer.Typer(
    name="foldloop",
    help="Agent runs that survive anything: run the demo, inspect and resume runs in a store.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # click's option style: a flag is shown as a flag, not <bool>
)


def _silence_stdout() -> None:
    """Point stdout at /dev/null: what is still buffered for a reader that left goes
    nowhere, instead of into an "Exception ignored" at exit."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _reader_gone() -> NoReturn:
    """stdout's reader went away (``| head``): stop quietly with 0, as Unix tools do."""
    _silence_stdout()
    raise typer.Exit(EXIT_OK)


class _Output(Console):
    """stdout, where a broken pipe ends the command quietly (rich would exit 1)."""

    def on_broken_pipe(self) -> None:
        self.quiet = True
        _reader_gone()


out = _Output(highlight=False)
err = Console(stderr=True, highlight=False)

StoreOpt = Annotated[
    Path,
    typer.Option(
        "--store",
        envvar="FOLDLOOP_STORE",
        help="Store directory (default .foldloop, or $FOLDLOOP_STORE).",
    ),
]
RunArg = Annotated[str, typer.Argument(metavar="RUN", help="The run id (see `foldloop runs`).")]
WideOpt = Annotated[
    bool,
    typer.Option("--wide", help="On a terminal too, show every cell whole (rows may be long)."),
]
AgentOpt = Annotated[
    str, typer.Option("--agent", metavar="MODULE:ATTR", help="The run's agent, importable.")
]
_DEFAULT_STORE = Path(".foldloop")
_OPTIONS: dict[str, Path] = {"store": _DEFAULT_STORE}
_DEMO_AGENT = "foldloop.cli:demo_agent"
_AGENT_PLACEHOLDER = "MODULE:ATTR"
_LIMIT_OPTIONS = {
    "max_steps": "--max-steps",
    "max_tokens": "--max-tokens",
    "max_seconds": "--max-seconds",
    "max_cost_usd": "--max-cost-usd",
}


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


# -- output: fitted to a terminal, whole when piped ---------------------------------------

_UNBOUNDED = 1 << 20


def _line(key: str, rest: str = "") -> None:
    """A line of a listing: ``rest`` cut at a terminal's edge (with an ellipsis), ``key``
    (the seq, the type, the run id) never; whole when piped."""
    line = Text.from_markup(key)
    tail = Text.from_markup(rest)
    if out.is_terminal:
        tail.truncate(max(out.width - line.cell_len, 1), overflow="ellipsis")
    out.print(line + tail, soft_wrap=True)


def _prose(text: str) -> None:
    """Sentences: wrapped on a terminal, one line each when piped."""
    out.print(text, soft_wrap=not out.is_terminal)


def _command_line(text: str) -> None:
    """A command to copy: never broken by a wrap of ours, whatever the output is."""
    out.print(text, soft_wrap=True)


def _table(table: Table, *, wide: bool = False) -> None:
    """A table fitted to the terminal (its free columns give way, ids are never cut); at its
    natural width, nothing cut, when piped or ``wide``."""
    if out.is_terminal and not wide:
        _whole(table, fit(table, out, out.width))
        return
    _whole(table)


def _whole(renderable: RenderableType, width: int | None = None) -> None:
    """Render at ``width``, by default the renderable's natural width (Console.print never
    goes past the console's own width, which is 80 when stdout is not a terminal)."""
    if width is None:
        width = Measurement.get(out, out.options.update_width(_UNBOUNDED), renderable).maximum
    wide = _Output(
        file=out.file,
        width=max(width, 1),
        highlight=False,
        force_terminal=out.is_terminal,
        no_color=out.no_color,
    )
    wide.print(renderable)


# -- errors and hints ------------------------------------------------------------------


def _in_cli_words(exc: FoldloopError, hint: str) -> str:
    """An error's message as this CLI says it: its advice to Python callers, if it has
    any, replaced by ``hint``, the command's own."""
    if isinstance(exc, RunNotFound):
        return f"no run {exc.run_id!r} in this store; list runs with `foldloop runs`"
    if not exc.advice:
        return str(exc)
    return f"{exc.fact}; {hint}" if hint else exc.fact


def _fail(code: int, message: str) -> NoReturn:
    err.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    raise typer.Exit(code)


_EXIT_CODES: tuple[tuple[type[FoldloopError], int], ...] = (
    (RunNotFound, EXIT_NOT_FOUND),
    (StoreNotFound, EXIT_NOT_FOUND),
    (StoreAccessError, EXIT_ERROR),  # the environment, not the store, is at fault
    (StoreError, EXIT_CORRUPT),  # damaged, or not a store this foldloop can read
    (NondeterminismError, EXIT_CORRUPT),
    (SchemaChangedError, EXIT_CORRUPT),
    (ConfigError, EXIT_USAGE),
    (ApprovalError, EXIT_ERROR),
    (FoldloopError, EXIT_ERROR),
)


@contextmanager
def _errors(hint: str = "") -> Iterator[None]:
    """Turn foldloop errors into one line on stderr and an exit code (never a traceback);
    ``hint`` is the command's own advice, said where the library's was for Python."""
    try:
        yield
    except BrokenPipeError:
        _reader_gone()
    except FoldloopError as exc:
        code = next(code for cls, code in _EXIT_CODES if isinstance(exc, cls))
        _fail(code, _in_cli_words(exc, hint))


@contextmanager
def _runtime(
    store: Path, *, create: bool = False, agents: tuple[Agent, ...] = (), hint: str = ""
) -> Iterator[Runtime]:
    with _errors(hint), Runtime.open(store, create=create, agents=agents) as rt:
        yield rt


def _load_agent(spec: str) -> Agent:
    sys.path.insert(0, os.getcwd())
    try:
        return load_agent(spec)
    except ConfigError as exc:
        _fail(EXIT_USAGE, f"--agent: {exc}")


def _resume_command(run: str, agent: str = _AGENT_PLACEHOLDER, *, again: str = "foldloop") -> str:
    return f"{again} resume {run} --agent {agent}"


def _advice(
    run: str,
    status: RunStatus,
    state: RunState,
    records: Sequence[Recorded],
    decided: Sequence[DecidedApproval] = (),
) -> str:
    """What to do next with a run, as commands of this CLI (``decided``: decisions made but
    not yet carried into its log, ``rt.explain(run).decided``)."""
    resume = f"`{_resume_command(run)}`"
    match status:
        case RunStatus.COMPLETED:
            return f"nothing: it completed (its output: `foldloop show {run}`)"
        case RunStatus.LIMIT_REACHED:
            limit = next(
                (r.event.limit for r in reversed(records) if isinstance(r.event, RunLimitReached)),
                "max_steps",
            )
            option = _LIMIT_OPTIONS.get(limit, "--max-steps")
            return f"raise the ceiling: `{_resume_command(run)} {option} N`"
        case RunStatus.NO_PROGRESS:
            return f"change the tools or instructions, or continue with {resume}"
        case RunStatus.AWAITING_APPROVAL if decided:
            calls = ", ".join(d.call_id for d in decided)
            return (
                f"nothing to decide for {calls}: a runtime with the agent registered carries "
                f"the decision in by itself, or {resume} does"
            )
        case RunStatus.AWAITING_APPROVAL if any(c.status == "expired" for c in state.calls):
            return f"{resume} asks again with a fresh token"
        case RunStatus.AWAITING_APPROVAL:
            waiting = [c.call_id for c in state.calls if c.status == "awaiting_approval"]
            call = waiting[0] if len(waiting) == 1 else "CALL"
            return (
                "decide: `foldloop approvals` lists what waits, then "
                f"`foldloop approve --run {run} --call {call}` (or `foldloop deny ...`)"
            )
        case RunStatus.FAILED if state.resumable:
            return f"fix the cause, then {resume}"
        case RunStatus.FAILED | RunStatus.CANCELLED:
            return "start a new run: this one cannot continue"
        case RunStatus.INTERRUPTED:
            return f"{resume} continues it"
        case _:
            return "wait: a runtime is driving it (`foldloop tail --follow` shows its steps)"


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


def _count(n: int, noun: str) -> str:
    """``1 step``, ``3 steps``."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _summary(rec: Recorded) -> str:
    data = _event_json(rec)["data"]
    return escape(", ".join(f"{k}={v!r}" for k, v in data.items() if k not in ("tools", "limits")))


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _invocation() -> str:
    """How to start this same foldloop from this shell, for hints meant to be pasted.

    ``foldloop`` when that name on PATH is this installation's script; else the script's
    path as it was typed (``.venv/bin/foldloop``, a venv not activated); else this
    interpreter with ``-m foldloop``. Never a ``foldloop`` that is another installation.
    """
    argv0 = sys.argv[0] if sys.argv else ""
    by_script = Path(argv0).name == "foldloop" and Path(argv0).is_file()
    on_path = shutil.which("foldloop")
    if on_path is not None:
        here = Path(sys.executable).parent
        if _same_file(on_path, argv0) if by_script else Path(on_path).parent == here:
            return "foldloop"
    if by_script:
        return shlex.quote(argv0)
    return f"{shlex.quote(sys.executable)} -m foldloop"


# -- commands ----------------------------------------------------------------------------


@app.command()
def demo() -> None:
    """Run an offline demo agent on the embedded store and show what it records."""
    agent = demo_agent()
    store = _store()
    again = _invocation()
    if store != _DEFAULT_STORE:
        again += f" --store {shlex.quote(str(store))}"
    with _runtime(store, create=True, agents=(agent,)) as rt:
        _prose(f"[bold]foldloop demo[/] - store: {escape(str(store))}")
        _prose(f"[dim]input:[/] {escape(DEMO_INPUT)}\n")

        def show(rec: Recorded) -> None:
            _line(f"  [cyan]{rec.seq:>3}[/] {rec.type:<18} ", _summary(rec))

        follow = rt.subscribe(show)
        run = rt.spawn(agent, DEMO_INPUT)
        result = run.wait(timeout=60)
        follow.catch_up(timeout=5)
        if result.status is RunStatus.AWAITING_APPROVAL:
            for pending in rt.pending_approvals():
                _prose(
                    f"\n[yellow]approval needed[/]: {escape(pending.summary)} - the demo "
                    "approves it as 'demo'; a person would run:"
                )
                _command_line(
                    f"  {escape(again)} approve --run {run.id} --call {escape(pending.call_id)}\n"
                )
                rt.approve(pending.token, by="demo", note="fine by the demo")
            result = rt.handle(run.id).wait(timeout=60)
            follow.catch_up(timeout=5)
        _prose(f"\n[yellow]run {result.status.value}[/]: {escape(result.reason)}")
        _prose("[dim]the demo raises the step ceiling and resumes it, as this would:[/]")
        resume_it = _resume_command(run.id, _DEMO_AGENT, again=again)
        _command_line(f"  {escape(resume_it)} --max-steps 5\n")
        run = rt.resume(run.id, extend=Limits(max_steps=5))
        result = run.wait(timeout=60)
        follow.catch_up(timeout=5)
        follow.detach()
        ended = f"\n[green]run {result.status.value}[/] after {_count(result.steps, 'step')}"
        _prose(f"{ended}:" if result.output else ended)
        if result.output:
            _prose(f"  {escape(result.output)}")
        rt.verify(run.id)
        _prose("[dim]replay check (verify): today's code decides exactly what the log says.[/]")
        _prose("\nInspect what it wrote:")
        for line in (
            f"{again} runs",
            f"{again} show {run.id}",
            f"{again} events {run.id} --json",
            f"{again} verify {run.id} --agent {_DEMO_AGENT}",
            f"{again} metrics",
            f"{again} doctor",
        ):
            _command_line(f"  {escape(line)}")


@app.command()
def runs(
    status: Annotated[str | None, typer.Option(help="Only runs with this status.")] = None,
    agent: Annotated[str | None, typer.Option(help="Only runs of this agent.")] = None,
    wide: WideOpt = False,
) -> None:
    """List the runs in the store (`foldloop explain RUN` says what to do with one)."""
    with _runtime(_store()) as rt:
        try:
            rows = rt.runs(status=status, agent=agent)
        except ValueError:
            _fail(EXIT_USAGE, f"unknown status {status!r}")
        table = Table("run", "agent", "status", "steps", free("reason"))
        for row in rows:
            table.add_row(
                escape(row.run_id),
                escape(row.agent),
                row.status.value,
                str(row.steps),
                escape(row.reason),
            )
        _table(table, wide=wide)


def _status_of(rt: Runtime, run: str, state: RunState) -> RunStatus:
    """The run's status as ``runs`` lists it (a run nobody drives any more is interrupted)."""
    summary = next((r for r in rt.runs() if r.run_id == run), None)
    return summary.status if summary else state.status


@app.command()
def show(run: RunArg) -> None:
    """A run's summary, what to do next, and its timeline."""
    with _runtime(_store()) as rt:
        state = rt.state(run)
        records = list(rt.events(run))
        status = _status_of(rt, run, state)
        parked = rt.explain(run) if status is RunStatus.AWAITING_APPROVAL else None
        decided = parked.decided if parked else ()  # made, not yet carried into the log
        _prose(f"[bold]{escape(run)}[/] agent={escape(state.agent)} status={status.value}")
        _prose(
            f"steps={state.steps} tokens={state.usage.total_tokens} "
            f"cost=${state.usage.cost_usd:.4f}"
        )
        reason = parked.reason if parked else state.reason
        if reason:
            _prose(f"reason: {escape(reason)}")
        if state.output:
            _prose(f"output: {escape(state.output)}")
        if status is not RunStatus.COMPLETED:
            _prose(f"next: {escape(_advice(run, status, state, records, decided))}")
        for rec in records:
            _line(f"  {rec.seq:>4} {rec.type:<18} ", _summary(rec))


@app.command()
def events(
    run: RunArg,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object a line.")] = False,
    from_seq: Annotated[int, typer.Option("--from-seq", min=1)] = 1,
) -> None:
    """A run's events."""
    with _runtime(_store()) as rt:
        for rec in rt.events(run, from_seq):
            if as_json:
                sys.stdout.write(json.dumps(_event_json(rec), ensure_ascii=True) + "\n")
            else:
                _line(f"{rec.seq:>4} {rec.type:<18} ", _summary(rec))


_AGENT_HINT = "pass the run's own agent with --agent MODULE:ATTR"


@app.command()
def verify(run: RunArg, agent: AgentOpt) -> None:
    """Replay a run's log through today's code; exit 4 at the first difference."""
    loaded = _load_agent(agent)
    with _runtime(_store(), agents=(loaded,), hint=_AGENT_HINT) as rt:
        state = rt.verify(run)
        _prose(f"ok: {_count(state.seq, 'event')} of {escape(run)} replay identically")


@app.command()
def resume(
    run: RunArg,
    agent: AgentOpt,
    *,
    max_steps: Annotated[int | None, typer.Option(min=1, help="Raise the step ceiling.")] = None,
    max_tokens: Annotated[int | None, typer.Option(min=1, help="Raise the token ceiling.")] = None,
    max_seconds: Annotated[
        float | None, typer.Option(min=0, help="Raise the ceiling of seconds.")
    ] = None,
    max_cost_usd: Annotated[
        float | None, typer.Option(min=0, help="Raise the cost ceiling (USD).")
    ] = None,
) -> None:
    """Continue a resumable run and wait for it to settle."""
    loaded = _load_agent(agent)
    raised = (max_steps, max_tokens, max_seconds, max_cost_usd) != (None, None, None, None)
    with _runtime(_store(), agents=(loaded,), hint=_AGENT_HINT) as rt:
        extend = (
            Limits(
                max_steps=max_steps,
                max_tokens=max_tokens,
                max_seconds=max_seconds,
                max_cost_usd=max_cost_usd,
            )
            if raised
            else None
        )
        result = rt.resume(run, extend=extend).wait()
        _prose(f"{escape(run)}: {result.status.value} {escape(result.reason or result.output)}")
        if result.status is not RunStatus.COMPLETED:
            advice = _advice(run, result.status, rt.state(run), list(rt.events(run)))
            _prose(f"next: {escape(advice)}")


@app.command()
def explain(run: RunArg) -> None:
    """Why a run is where it is, and what to do next."""
    with _runtime(_store()) as rt:
        why = rt.explain(run)
        lines = [f"run {why.run_id} is {why.status.value} after {_count(why.steps, 'step')}"]
        if why.reason:
            lines.append(f"why: {why.reason}")
        if why.limit:
            lines.append(f"limit: {why.limit}")
        lines.append(f"last decision: {why.last_decision}")
        advice = _advice(run, why.status, rt.state(run), list(rt.events(run)), why.decided)
        lines.append(f"next: {advice}")
        for line in lines:
            _prose(escape(line))


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
                _line(
                    f"{rec.position:>6} {escape(rec.run_id)} {rec.seq:>4} {rec.type:<18} ",
                    _summary(rec),
                )
                position = rec.position + 1
            if not follow:
                return
            time.sleep(0.2)


@app.command("export")
def export_run(
    run: RunArg,
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="File (default stdout).")
    ] = None,
) -> None:
    """Export a run's events as JSONL (schema: foldloop.events._jsonl)."""
    with _runtime(_store()) as rt:
        lines = list(rt.export(run))
    text = "\n".join(lines) + "\n"
    with _errors():
        if output is None:
            sys.stdout.write(text)
        else:
            output.write_text(text)
            written = _count(len(lines) - 1, "event")
            err.print(f"wrote {written} of {escape(run)} to {escape(str(output))}")


@app.command("import")
def import_run(
    file: Annotated[Path, typer.Argument(metavar="FILE", help="A run exported as JSONL.")],
    run_id: Annotated[str | None, typer.Option("--run-id", help="Import under this id.")] = None,
) -> None:
    """Import a run exported as JSONL into the store (created if absent)."""
    if not file.is_file():
        _fail(EXIT_NOT_FOUND, f"no file {str(file)!r}")
    # All checks that need no store come first: a bad file must not leave an empty store.
    try:
        lines = file.read_text().splitlines()
    except UnicodeDecodeError:
        _fail(EXIT_USAGE, f"{str(file)!r} is not text, so not a foldloop export (JSONL)")
    except OSError as exc:
        _fail(EXIT_ERROR, f"cannot read {str(file)!r}: {exc.strerror}")
    hint = "import it under another id with --run-id ID"
    with _errors(hint):
        header, exported = load_run(lines)
        check_run_id(run_id if run_id is not None else header.run_id)
        if not exported:
            raise ConfigError("the export holds no events")
    with _runtime(_store(), create=True, hint=hint) as rt:
        imported = rt.import_jsonl(lines, run_id=run_id)
        _prose(f"imported {escape(imported)}: {_count(rt.store.head(imported), 'event')}")


@app.command()
def approvals(wide: WideOpt = False) -> None:
    """Gated calls waiting for a person."""
    with _runtime(_store()) as rt:
        table = Table("run", "call", "tool", free("args"), "expires")
        for p in rt.pending_approvals():
            args = json.dumps(p.args, ensure_ascii=True)
            expires = datetime.datetime.fromtimestamp(p.expires_at / 1e9, tz=datetime.UTC)
            table.add_row(
                escape(p.run_id),
                escape(p.call_id),
                escape(p.tool),
                escape(args),
                expires.isoformat(timespec="seconds"),
            )
        _table(table, wide=wide)


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
        for table in metrics_view(handle.state, escape):
            _table(table)


@app.command()
def projections(wide: WideOpt = False) -> None:
    """Projection checkpoints in the store: where each stands, and why one stopped."""
    with _runtime(_store()) as rt:
        last = rt.store.last_position()
        table = Table("projection", "v", "position", "behind", free("status"), "updated")
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
        _table(table, wide=wide)


_WAITING = "`foldloop approvals` lists what waits"


def _request(rt: Runtime, token: str | None, run: str | None, call: str | None) -> ApprovalRecord:
    """The approval request a decision names, or exit 3 (not found, whichever way named)."""
    if token is not None:
        record = rt.store.approval_by_token(token_digest(token))
        if record is None:
            _fail(
                EXIT_NOT_FOUND,
                f"no approval request has this token (unknown or forged); {_WAITING}",
            )
        return record
    if run is None or call is None:
        _fail(EXIT_USAGE, "give a TOKEN, or both --run and --call")
    if not rt.store.head(run):
        raise RunNotFound(run)
    record = rt.store.approval(run, call)
    if record is None:
        _fail(EXIT_NOT_FOUND, f"run {run!r} has no approval request for call {call!r}; {_WAITING}")
    return record


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
        record = _request(rt, token, run, call)
        resume = _resume_command(record.run_id)
        with _errors(f"{_WAITING}; an expired request is asked again by `{resume}`"):
            if approved:
                rt.approve(token, run_id=run, call_id=call, by=by, note=note)
            else:
                rt.deny(token, run_id=run, call_id=call, by=by, note=note)
    verb = "approved" if approved else "denied"
    _prose(
        f"{verb} {escape(record.call_id)} of {escape(record.run_id)}; a runtime with its agent "
        f"carries it into the run, or `{escape(resume)}`"
    )


TokenArg = Annotated[str | None, typer.Argument(metavar="TOKEN", help="The approval token.")]
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
                _prose(f"[red]{escape(exc.run_id)} seq {exc.seq}[/]: {escape(exc.problem)}")
            except StoreError as exc:  # damage below the records (LMDB's own pages)
                problems += 1
                _prose(f"[red]{escape(run_id)}[/]: {escape(str(exc))}")
        if problems:
            raise typer.Exit(EXIT_CORRUPT)
        counted = f"{_count(len(run_ids), 'run')}, {_count(rt.store.last_position(), 'event')}"
        _prose(f"ok: {counted}, all intact")


def _quiet_logs() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


def _run(argv: list[str] | None) -> int:
    _quiet_logs()
    command: Callable[..., Any] = typer.main.get_command(app)
    try:
        command(args=argv, prog_name="foldloop", standalone_mode=True)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EXIT_ERROR
    return EXIT_OK


def main(argv: list[str] | None = None) -> NoReturn:
    """Entry point of the ``foldloop`` script: exits with the command's code.

    Leaves as Unix tools do: output flushed (a reader that left is no error); after a
    Ctrl-C, 130 at once, whatever threads an interrupted open or close left behind (the
    store survives that, as it survives SIGKILL); and from the moment the command is done,
    a Ctrl-C ends the process at once, with no traceback.
    """
    signal.signal(signal.SIGINT, signal.default_int_handler)  # the script's exit-at-once ends
    try:
        try:
            code = _run(argv)
        finally:
            signal.signal(signal.SIGINT, signal.SIG_DFL)
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        code = EXIT_INTERRUPTED
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        _silence_stdout()
    if code == EXIT_INTERRUPTED:
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
