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
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.progress import track
from rich.table import Table

from foldloop._agent import Agent
from foldloop._closing import ctrl_c_came, noting_int_handler
from foldloop.cli._approval_commands import approvals, approve, deny
from foldloop.cli._demo import demo_agent
from foldloop.cli._errors import choose_store, chosen_store, location
from foldloop.cli._errors import errors as _errors
from foldloop.cli._errors import fail as _fail
from foldloop.cli._errors import opened as _runtime
from foldloop.cli._exit_codes import (
    EXIT_CORRUPT,
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
)
from foldloop.cli._fit import free
from foldloop.cli._hints import LIMIT_OPTIONS
from foldloop.cli._hints import advice as _advice
from foldloop.cli._hints import invocation as _invocation
from foldloop.cli._interrupt import pause, waited
from foldloop.cli._metrics_view import metrics_view
from foldloop.cli._output import WideOpt, err, escape, import_lazy_modules
from foldloop.cli._output import count as _count
from foldloop.cli._output import event_json as _event_json
from foldloop.cli._output import line as _line
from foldloop.cli._output import prose as _prose
from foldloop.cli._output import silence_stdout as _silence_stdout
from foldloop.cli._output import summary as _summary
from foldloop.cli._output import table as _table
from foldloop.cli._output import whole as _whole
from foldloop.cli._runs_command import runs
from foldloop.cli._sink import OUTPUT_FULL, OutputFailed, whole_writes
from foldloop.cli._tour import tour
from foldloop.cli._transfer_commands import export_run, import_run
from foldloop.cli._tree_view import (
    Shown,
    cancel_below,
    cancelled_below,
    draw,
    tree_json,
)
from foldloop.cli._worker import worker
from foldloop.core._state import RunState, RunStatus
from foldloop.errors import (
    ConfigError,
    CorruptRecord,
    RunLocked,
    RunNotFound,
    StoreError,
)
from foldloop.events._recorded import UnknownEvent
from foldloop.events._values import Limits
from foldloop.projections._metrics import RunMetrics
from foldloop.projections._prometheus import prometheus_text, serve_prometheus
from foldloop.runtime import Runtime, RunTree
from foldloop.runtime._agent_ref import load_agent
from foldloop.store._nats_names import is_nats_url

__all__ = ["app", "demo_agent", "main"]  # demo_agent: `--agent foldloop.cli:demo_agent`


app = typer.Typer(
    name="foldloop",
    help="Agent runs that survive anything: run the demo, inspect and resume runs in a store.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # click's option style: a flag is shown as a flag, not <bool>
)


StoreOpt = Annotated[
    str,
    typer.Option(
        "--store",
        envvar="FOLDLOOP_STORE",
        metavar="PATH|URL",
        help=(
            "Store directory, or NATS servers as nats://HOST:PORT[/NAMESPACE] "
            "(default .foldloop, or $FOLDLOOP_STORE)."
        ),
    ),
]
RunArg = Annotated[str, typer.Argument(metavar="RUN", help="The run id (see `foldloop runs`).")]
AgentOpt = Annotated[
    str, typer.Option("--agent", metavar="MODULE:ATTR", help="The run's agent, importable.")
]
_DEFAULT_STORE = ".foldloop"


@app.callback()
def _global(store: StoreOpt = _DEFAULT_STORE) -> None:
    """Agent runs that survive anything: run the demo, inspect and resume runs in a store."""
    choose_store(location(store))


_store = chosen_store


def _load_agent(spec: str) -> Agent:
    sys.path.insert(0, os.getcwd())
    try:
        return load_agent(spec)
    except ConfigError as exc:
        _fail(EXIT_USAGE, f"--agent: {exc}")


# -- commands ----------------------------------------------------------------------------


@app.command()
def demo() -> None:
    """Run an offline demo agent on the store and show what it records."""
    store = _store()
    again = _invocation()
    if store != Path(_DEFAULT_STORE):
        again += f" --store {shlex.quote(str(store))}"
    tour(store, again)


app.command()(runs)


def _shown(rt: Runtime) -> Shown:
    """A tree node's status and reason as ``runs`` and ``explain`` show them."""

    def shown(node: RunTree) -> tuple[RunStatus, str]:
        if node.status not in (
            RunStatus.RUNNING,
            RunStatus.QUEUED,
            RunStatus.AWAITING_APPROVAL,
        ):
            return node.status, node.reason
        try:
            why = rt.explain(node.run_id)
        except RunNotFound:  # its parent recorded its start, a crash came before its own
            return node.status, "not started yet: a runtime with its agent starts it on recover"
        return why.status, why.reason

    return shown


@app.command()
def tree(
    run: RunArg,
    as_json: Annotated[
        bool, typer.Option("--json", help="The tree as one JSON object, children nested.")
    ] = False,
) -> None:
    """A run and every child run below it: each one's agent, id, status, spend (its own
    steps, and its subtree's steps, tokens and dollars) and why it stopped."""
    with _runtime(_store()) as rt:
        root = rt.tree(run)
        shown = _shown(rt)
        if as_json:
            sys.stdout.write(json.dumps(tree_json(root, shown), ensure_ascii=True) + "\n")
            return
        _whole(draw(root, shown))


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
        queued = rt.explain(run) if status is RunStatus.QUEUED else None  # its runtime gone?
        reason = parked.reason if parked else queued.reason if queued else state.reason
        if reason:
            _prose(f"reason: {escape(reason)}")
        if state.output:
            _prose(f"output: {escape(state.output)}")
        if status is not RunStatus.COMPLETED:
            orphaned = queued is not None and queued.orphaned
            advice = _advice(run, status, state, records, decided, orphaned=orphaned)
            _prose(f"next: {escape(advice)}")
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
def verify(
    run: RunArg,
    agent: AgentOpt,
    tree: Annotated[
        bool, typer.Option("--tree", help="Also every child run below it, and their links.")
    ] = False,
) -> None:
    """Replay a run's log through today's code; exit 4 at the first difference."""
    loaded = _load_agent(agent)
    with _runtime(_store(), agents=(loaded,), hint=_AGENT_HINT) as rt:
        states = rt.verify(run, tree=True) if tree else {run: rt.verify(run)}
        events = _count(sum(s.seq for s in states.values()), "event")
        runs = f" in {_count(len(states), 'run')}" if tree else ""
        _prose(f"ok: {events}{runs} of {escape(run)} replay identically")


@app.command()
def resume(
    run: RunArg,
    agent: AgentOpt,
    *,
    max_steps: Annotated[int | None, typer.Option(min=1, help="Raise the step ceiling.")] = None,
    max_tokens: Annotated[int | None, typer.Option(min=1, help="Raise the token ceiling.")] = None,
    max_seconds: Annotated[
        float | None, typer.Option(help="Raise the ceiling of seconds (above 0).")
    ] = None,
    max_cost_usd: Annotated[
        float | None, typer.Option(help="Raise the cost ceiling (USD, above 0).")
    ] = None,
) -> None:
    """Continue a resumable run and wait for it to settle."""
    extend = _raised_limits(
        max_steps=max_steps,
        max_tokens=max_tokens,
        max_seconds=max_seconds,
        max_cost_usd=max_cost_usd,
    )
    loaded = _load_agent(agent)
    with _runtime(_store(), agents=(loaded,), hint=_AGENT_HINT) as rt:
        result = waited(rt.resume(run, extend=extend))
        _prose(f"{escape(run)}: {result.status.value} {escape(result.reason or result.output)}")
        if result.status is not RunStatus.COMPLETED:
            advice = _advice(run, result.status, rt.state(run), list(rt.events(run)))
            _prose(f"next: {escape(advice)}")


def _raised_limits(**given: Any) -> Limits | None:
    """The ceilings given (None: none), each checked by ``fl.Limits``'s own rule and a
    refusal said in the option's words."""
    raised: dict[str, Any] = {name: value for name, value in given.items() if value is not None}
    for name, value in raised.items():
        try:
            Limits(**{name: value})
        except ConfigError:
            option = LIMIT_OPTIONS[name]
            _fail(EXIT_USAGE, f"{option} is a ceiling to raise to: give a finite number above 0")
    return Limits(**raised) if raised else None


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
        lines.extend(f"budget: {line}" for line in why.budget)
        advice = _advice(
            run, why.status, rt.state(run), list(rt.events(run)), why.decided, orphaned=why.orphaned
        )
        below = ("decide the pending approvals of", "wait: it waits for its child runs")
        lines.extend(f"next: {step}" for step in why.next_steps if step.startswith(below))
        lines.append(f"next: {advice}")
        for line in lines:
            _prose(escape(line))


_ELSEWHERE = (
    "a live runtime in another process drives it, and a cancel reaches a run only through "
    "the runtime driving it: cancel it in that process, or stop that process and run "
)
_HELD_QUEUED = (
    "a live runtime in another process holds it queued (it starts there in its turn), and a "
    "cancel reaches a run only through the runtime holding it: cancel it in that process, or "
    "stop that process and run "
)


@app.command()
def cancel(
    run: RunArg,
    reason: Annotated[str, typer.Option("--reason", help="Why (recorded in the log).")] = "",
) -> None:
    """Cancel a run and every run below it (each recorded "parent cancelled"). A run that a
    live runtime in another process drives is cancelled there only: exit 1 says so."""
    with _runtime(_store()) as rt:
        ended = rt.state(run)
        before = cancelled_below(rt, run)
        try:
            rt.handle(run).cancel(reason)
        except RunLocked:
            queued = rt.state(run).status is RunStatus.QUEUED  # now: it may have started since
            why = _HELD_QUEUED if queued else _ELSEWHERE
            _fail(EXIT_ERROR, f"cannot cancel {run!r} from here: {why}`foldloop cancel {run}`")
        elsewhere = cancel_below(rt, run)
        below = len(cancelled_below(rt, run) - before)
        if ended.terminal and not below and not elsewhere:
            _prose(f"nothing to cancel: {escape(run)} had ended {ended.status.value}")
            return
        runs = _count(below, "run")
        if not ended.terminal:
            _prose(f"cancelled {escape(run)}" + (f" and {runs} below it" if below else ""))
        elif below:
            _prose(f"cancelled {runs} below {escape(run)} (it had ended {ended.status.value})")
        if elsewhere:
            _fail(
                EXIT_ERROR,
                f"cannot cancel {', '.join(elsewhere)} (below {run}) from here: "
                f"{_ELSEWHERE}`foldloop cancel {run}` again",
            )


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
            pause(0.2)


app.command("export")(export_run)
app.command("import")(import_run)
app.command()(approvals)


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
                while True:  # until a Ctrl-C: 130, as tail --follow
                    pause(1)
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


app.command()(approve)
app.command()(deny)


@app.command()
def doctor() -> None:
    """Walk the whole store: checksums, hash chains, gapless seqs, decodability (on NATS:
    gapless seqs and decodability; JetStream checks its own bytes)."""
    on_nats = is_nats_url(_store())
    with _runtime(_store(), hint="restore it from a backup") as rt:
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
        newer: list[str] = []  # events of types a newer foldloop wrote: kept, not folded
        for run_id in checking:
            try:
                rt.store.verify_chain(run_id)
                newer += [
                    f"{run_id} seq {r.seq}: {r.event.tag!r}"
                    for r in rt.store.read(run_id)
                    if isinstance(r.event, UnknownEvent)
                ]
            except CorruptRecord as exc:
                problems += 1
                _prose(f"[red]{escape(exc.run_id)} seq {exc.seq}[/]: {escape(exc.problem)}")
            except StoreError as exc:  # damage below the records (LMDB's own pages)
                if on_nats:  # a server that failed a request: no fault of this run
                    raise
                problems += 1
                _prose(f"[red]{escape(run_id)}[/]: {escape(str(exc))}")
        if problems:
            raise typer.Exit(EXIT_CORRUPT)
        counted = f"{_count(len(run_ids), 'run')}, {_count(rt.store.last_position(), 'event')}"
        _prose(f"ok: {counted}, all intact")
        if newer:
            _prose(
                f"{_count(len(newer), 'event')} of a type this foldloop does not know (a newer "
                "one wrote it; kept as written, not folded): "
                + escape(", ".join(newer[:10]))
                + (", ..." if len(newer) > 10 else "")
            )


app.command()(worker)


def _quiet_logs() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


def _run(argv: list[str] | None) -> int:
    _quiet_logs()
    command: Callable[..., Any] = typer.main.get_command(app)
    try:
        command(args=argv, prog_name="foldloop", standalone_mode=True)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EXIT_ERROR
    except OutputFailed as exc:
        return _output_failed(str(exc))
    except OSError as exc:
        if exc.errno not in OUTPUT_FULL:
            raise
        return _output_failed(f"could not write the output: {exc.strerror}")
    return EXIT_OK


def _output_failed(message: str) -> int:
    """Say that the output could not be written (stdout's reader gets nothing more)."""
    with contextlib.suppress(OSError, ValueError):
        _silence_stdout()
    err.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    return EXIT_ERROR


def main(argv: list[str] | None = None) -> NoReturn:
    """Entry point of the ``foldloop`` script: exits with the command's code.

    Leaves as Unix tools do: output flushed (a reader that left is no error); after a
    Ctrl-C, 130 at once, whatever threads an interrupted open or close left behind (the
    store survives that, as it survives SIGKILL); and from the moment the command is done,
    a Ctrl-C ends the process at once, with no traceback.
    """
    import_lazy_modules()  # while a Ctrl-C still ends the process at once
    whole_writes()
    signal.signal(signal.SIGINT, noting_int_handler)  # the script's exit-at-once ends
    try:
        try:
            code = _run(argv)
            if ctrl_c_came():  # one whose KeyboardInterrupt Python dropped on the way
                code = EXIT_INTERRUPTED
        finally:
            signal.signal(signal.SIGINT, signal.SIG_DFL)
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        code = EXIT_INTERRUPTED
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        _silence_stdout()
    except OSError as exc:
        if exc.errno not in OUTPUT_FULL:
            raise
        code = _output_failed(f"could not write the output: {exc.strerror}")
    if code == EXIT_INTERRUPTED:
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
