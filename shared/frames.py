"""The frames of the relay protocol: a closed set of frozen, typed values and the limits.

Only `shared.protocol` (the codec) knows how they are laid out in bytes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Final

PROTOCOL_VERSION: Final = 1
"""Bumped on any incompatible change to the frame layout or semantics."""

MAX_BODY_CHUNK: Final = 64 * 1024
"""Largest payload of one body frame."""

MAX_CONTROL_PAYLOAD: Final = 1024 * 1024
"""Largest JSON payload of one control frame (heads with many headers, model lists)."""

MAX_REQUEST_BODY: Final = 256 * 1024 * 1024
"""Largest request body a stream may carry; the broker's max body size cannot exceed it."""

DEFAULT_WINDOW: Final = 256 * 1024
"""Response-body bytes a connector may send on one stream before it needs credit."""

MAX_RECONNECT_AFTER: Final = 3600.0
"""A going-away hint is capped at an hour, whatever the peer asks."""

HEADER: Final = struct.Struct(">BII")

# WebSocket close codes used by the relay (4000-4999 is the application range).
CLOSE_PROTOCOL_ERROR: Final = 1002
CLOSE_GOING_AWAY: Final = 1001
CLOSE_POLICY_VIOLATION: Final = 1008
"""A well-formed frame the broker will not take (a hello or models update over its bounds)."""
CLOSE_UNSUPPORTED_VERSION: Final = 4001
CLOSE_HANDSHAKE_TIMEOUT: Final = 4002


class FrameType(IntEnum):
    HELLO = 0x01
    WELCOME = 0x02
    MODELS = 0x03
    GOAWAY = 0x04
    BLOCKED = 0x05
    REQUEST_HEAD = 0x10
    REQUEST_BODY = 0x11
    RESPONSE_HEAD = 0x20
    RESPONSE_BODY = 0x21
    END = 0x30
    ERROR = 0x31
    CANCEL = 0x32
    WINDOW_UPDATE = 0x33


class ProtocolError(Exception):
    """The peer sent something this protocol does not allow."""


Headers = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Hello:
    """Connector -> broker, first frame: who it is and what it serves."""

    version: int
    name: str
    models: tuple[str, ...]
    max_concurrency: int
    blocked_users: tuple[str, ...] = ()
    """The user ids the connector refuses (its owner's block list), so the broker sends it
    none of their requests. Optional: an older connector leaves it out."""


FEATURE_BLOCKED: Final = "blocked"
"""A broker's feature: it takes BLOCKED frames."""


@dataclass(frozen=True, slots=True)
class Welcome:
    """Broker -> connector, answer to Hello: the accepted version and the stream window."""

    version: int
    window: int
    features: tuple[str, ...] = ()
    """What the broker takes beyond version 1's frames (`FEATURE_BLOCKED`). Optional: an older
    broker leaves it out, and a connector then sends it none of those frames."""


@dataclass(frozen=True, slots=True)
class Blocked:
    """Connector -> broker: the full, new list of user ids it refuses (sent only to a broker
    whose welcome named `FEATURE_BLOCKED`)."""

    users: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ModelsUpdate:
    """Connector -> broker: the full, new list of served models."""

    models: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class GoAway:
    """Either side: no new streams; reconnect after `reconnect_after` seconds."""

    reason: str
    reconnect_after: float


@dataclass(frozen=True, slots=True)
class RequestHead:
    """Broker -> connector: opens stream `stream_id` with an HTTP request head."""

    stream_id: int
    method: str
    path: str
    headers: Headers
    request_id: str
    user_id: str = ""
    """Who sent the request, as the broker knows them ("" when it did not say: an older
    broker); never the key. Connectors may refuse users by it."""
    user_name: str = ""
    """That user's display name, for the connector's owner to read."""


@dataclass(frozen=True, slots=True)
class RequestBody:
    stream_id: int
    data: bytes


@dataclass(frozen=True, slots=True)
class ResponseHead:
    stream_id: int
    status: int
    headers: Headers


@dataclass(frozen=True, slots=True)
class ResponseBody:
    stream_id: int
    data: bytes


@dataclass(frozen=True, slots=True)
class End:
    """The sender's half of the stream is complete."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class Error:
    """Connector -> broker: the stream failed; `code` is machine-readable."""

    stream_id: int
    code: str
    message: str


@dataclass(frozen=True, slots=True)
class Cancel:
    """Broker -> connector: the client is gone; abort the stream at once."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class WindowUpdate:
    """Broker -> connector: `increment` more response-body bytes may be sent on the stream."""

    stream_id: int
    increment: int


Frame = (
    Hello
    | Welcome
    | ModelsUpdate
    | Blocked
    | GoAway
    | RequestHead
    | RequestBody
    | ResponseHead
    | ResponseBody
    | End
    | Error
    | Cancel
    | WindowUpdate
)
