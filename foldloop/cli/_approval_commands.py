"""The approval commands: `foldloop approvals`, `approve`, `deny`."""

from __future__ import annotations

import datetime
import getpass
import json
import os
from typing import Annotated

import typer
from rich.table import Table

from foldloop._approvals import token_digest
from foldloop.cli._errors import chosen_store as _store
from foldloop.cli._errors import errors as _errors
from foldloop.cli._errors import fail as _fail
from foldloop.cli._errors import opened as _runtime
from foldloop.cli._exit_codes import EXIT_NOT_FOUND, EXIT_USAGE
from foldloop.cli._fit import free
from foldloop.cli._hints import resume_command as _resume_command
from foldloop.cli._output import WideOpt, escape
from foldloop.cli._output import prose as _prose
from foldloop.cli._output import table as _table
from foldloop.errors import RunNotFound
from foldloop.runtime import Runtime
from foldloop.runtime._rules import check_decision
from foldloop.store._approvals import ApprovalRecord

__all__ = ["approvals", "approve", "deny"]


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
    with _errors():  # what is wrong with the command itself, before any store is opened
        check_decision(token, run, call, by, note)
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
ByOpt = Annotated[
    str | None,
    typer.Option("--by", help="Who decides (recorded; default: this user's login name)."),
]
NoteOpt = Annotated[str, typer.Option("--note", help="Told to the model (deny) and recorded.")]


def approve(
    token: TokenArg = None,
    run: RunOpt = None,
    call: CallOpt = None,
    by: ByOpt = None,
    note: NoteOpt = "",
) -> None:
    """Approve a waiting call, by its token or by --run and --call."""
    _decision(True, token, run=run, call=call, by=_who(by), note=note)


def deny(
    token: TokenArg = None,
    run: RunOpt = None,
    call: CallOpt = None,
    by: ByOpt = None,
    note: NoteOpt = "",
) -> None:
    """Deny a waiting call; the model is told the note and the run goes on."""
    _decision(False, token, run=run, call=call, by=_who(by), note=note)


def _who(by: str | None) -> str:
    """``--by`` as given, else this user's login name (a decision says who made it)."""
    if by is not None:
        if not by.strip():
            _fail(EXIT_USAGE, "--by is empty: name who decides, or leave it out (your login name)")
        return by
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a container's)
        return f"uid {os.getuid()}"
