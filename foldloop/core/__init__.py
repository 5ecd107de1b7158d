"""The pure core: RunState, evolve/fold, decide, and the replay check.

Nothing here does I/O, reads a clock, draws randomness, starts threads or logs.
"""

from foldloop.core._batch import fold, fold_events
from foldloop.core._commands import (
    Admit,
    ApprovalTicket,
    Cancel,
    Command,
    DecideApproval,
    ExpireApproval,
    ModelCallFailed,
    ModelReplied,
    Resume,
    Start,
    ToolFinished,
)
from foldloop.core._decide import MAX_INVALID_ARGS, decide
from foldloop.core._effects import (
    CallModel,
    Decision,
    Effect,
    RequestApproval,
    RunTools,
    Settle,
    ToolRun,
)
from foldloop.core._evolve import INITIAL, apply, evolve
from foldloop.core._messages import Message, ToolSpec, prompt_digest
from foldloop.core._pricing import DEFAULT_PRICING, ModelPrice, Pricing
from foldloop.core._replay import command_for, replay
from foldloop.core._retries import MAX_MODEL_ATTEMPTS
from foldloop.core._state import STATE_VERSION, CallState, RunState, RunStatus

__all__ = [
    "Admit",
    "ApprovalTicket",
    "CallModel",
    "DecideApproval",
    "ExpireApproval",
    "RequestApproval",
    "CallState",
    "Cancel",
    "Command",
    "DEFAULT_PRICING",
    "Decision",
    "Effect",
    "INITIAL",
    "MAX_INVALID_ARGS",
    "MAX_MODEL_ATTEMPTS",
    "Message",
    "ModelCallFailed",
    "ModelPrice",
    "ModelReplied",
    "Pricing",
    "Resume",
    "RunState",
    "RunStatus",
    "RunTools",
    "STATE_VERSION",
    "Settle",
    "Start",
    "ToolFinished",
    "ToolRun",
    "ToolSpec",
    "apply",
    "command_for",
    "decide",
    "evolve",
    "fold",
    "fold_events",
    "prompt_digest",
    "replay",
]
