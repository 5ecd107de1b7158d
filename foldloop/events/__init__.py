"""The vocabulary: the event catalogue, the Recorded envelope, the codec and upcasting.

Pure: no I/O, no clock, no randomness, no threads.
"""

from foldloop.events._catalogue import (
    ApprovalDecided,
    ApprovalExpired,
    ApprovalRequested,
    Event,
    KnownEvent,
    ModelFailed,
    ModelRequested,
    ModelResponded,
    RunAdmitted,
    RunCancelled,
    RunCompleted,
    RunFailed,
    RunLimitReached,
    RunNoProgress,
    RunQueued,
    RunResumed,
    RunStarted,
    ToolCompleted,
    ToolFailed,
    ToolFailureKind,
    ToolRequested,
)
from foldloop.events._codec import (
    KNOWN_TAGS,
    DecodeFailure,
    decode_event,
    encode_event,
    register_upcaster,
    schema_version_of,
)
from foldloop.events._named import PAST_FIELDS, from_named, to_named
from foldloop.events._recorded import AnyEvent, Recorded, UnknownEvent
from foldloop.events._values import Limits, ToolCall, ToolInfo, Usage

__all__ = [
    "AnyEvent",
    "ApprovalDecided",
    "ApprovalExpired",
    "ApprovalRequested",
    "DecodeFailure",
    "Event",
    "KNOWN_TAGS",
    "KnownEvent",
    "PAST_FIELDS",
    "Limits",
    "ModelFailed",
    "ModelRequested",
    "ModelResponded",
    "ToolCall",
    "Recorded",
    "RunAdmitted",
    "RunCancelled",
    "RunCompleted",
    "RunFailed",
    "RunLimitReached",
    "RunNoProgress",
    "RunQueued",
    "RunResumed",
    "RunStarted",
    "ToolCompleted",
    "ToolFailed",
    "ToolFailureKind",
    "ToolInfo",
    "ToolRequested",
    "UnknownEvent",
    "Usage",
    "decode_event",
    "encode_event",
    "from_named",
    "register_upcaster",
    "schema_version_of",
    "to_named",
]
