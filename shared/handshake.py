"""The rules of a relay connection that are not about bytes: handshake and who may send what.

Pure functions, no I/O: the broker's endpoint and the connector's client call them
and only carry out the verdict (send, close with the given code).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final, Literal

from shared import protocol as p
from shared.text import MAX_NAME_LENGTH, is_clean

HANDSHAKE_TIMEOUT: Final = 10.0
"""Seconds each side waits for the other's first frame."""

MAX_MESSAGE: Final = 4 * 1024 * 1024
"""Largest WebSocket message either side accepts (the outbox builds 256 KiB ones)."""

MAX_MODELS: Final = 1000
"""Most distinct model names one connector may announce, in its hello or a models update.

Every name a connector announces is kept by the broker, listed by `/v1/models` and may
become a metric label: without a bound, one connector could grow state every user shares."""

TOKEN_REVOKED: Final = "connector_token_revoked"
"""The error code of the broker's 401 to a connector whose token was revoked (an unknown token
gets `invalid_connector_token`): no later dial can succeed, so the connector stops dialing."""
MAX_BLOCKED: Final = 10_000
"""Most user ids one connector may name as blocked, in its hello or a BLOCKED frame."""

FROM_CONNECTOR: Final = (
    p.ModelsUpdate,
    p.Blocked,
    p.GoAway,
    p.ResponseHead,
    p.ResponseBody,
    p.End,
    p.Error,
)
FROM_BROKER: Final = (p.GoAway, p.RequestHead, p.RequestBody, p.End, p.Cancel, p.WindowUpdate)


class Refused(Exception):
    """The handshake failed: close the connection with `code` and `reason`."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = p.close_reason(reason)


def _only_frame(message: str | bytes, expected: str) -> p.Frame:
    if not isinstance(message, bytes):
        raise Refused(p.CLOSE_PROTOCOL_ERROR, f"expected a binary {expected} frame")
    try:
        frames = p.decode(message)
    except p.ProtocolError as exc:
        raise Refused(p.CLOSE_PROTOCOL_ERROR, f"protocol error: {exc}") from None
    if len(frames) != 1:
        raise Refused(p.CLOSE_PROTOCOL_ERROR, f"the first message must be a lone {expected}")
    return frames[0]


def accept_hello(message: str | bytes) -> p.Hello:
    """The broker's check of a connector's first message."""
    hello = _only_frame(message, "hello")
    if not isinstance(hello, p.Hello):
        raise Refused(p.CLOSE_PROTOCOL_ERROR, "the first message must be a lone hello")
    if hello.version != p.PROTOCOL_VERSION:
        raise Refused(
            p.CLOSE_UNSUPPORTED_VERSION,
            f"unsupported protocol version {hello.version}; "
            f"this broker speaks version {p.PROTOCOL_VERSION}",
        )
    if not is_clean(hello.name):
        # The name is in every log line about the connector's requests: it stays short and plain.
        raise Refused(
            p.CLOSE_POLICY_VIOLATION,
            f"the connector name must be 1 to {MAX_NAME_LENGTH} printable characters; "
            "set another name",
        )
    check_models(hello.models)
    check_blocked(hello.blocked_users)
    return hello


def check_blocked(users: tuple[str, ...]) -> None:
    """Refuse a block list over the bounds: more than MAX_BLOCKED ids, or an id too long."""
    if len(users) > MAX_BLOCKED:
        raise Refused(
            p.CLOSE_POLICY_VIOLATION,
            f"the connector blocks {len(users)} users, over the broker's limit of {MAX_BLOCKED}",
        )
    for user in users:
        if len(user) > MAX_NAME_LENGTH:
            raise Refused(
                p.CLOSE_POLICY_VIOLATION,
                f"a blocked user id is {len(user)} characters long; "
                f"a broker takes at most {MAX_NAME_LENGTH}",
            )


def check_models(models: tuple[str, ...]) -> None:
    """Refuse a model list over the bounds: more than MAX_MODELS names, or a name too long.

    A name that is merely not clean text is no reason to refuse the connector: `servable`
    leaves it out and the connector serves the rest.
    """
    count = len(set(models))
    if count > MAX_MODELS:
        raise Refused(
            p.CLOSE_POLICY_VIOLATION,
            f"the connector announced {count} models, over the broker's limit of {MAX_MODELS}; "
            "choose some with --model",
        )
    for model in models:
        if len(model) > MAX_NAME_LENGTH:
            raise Refused(
                p.CLOSE_POLICY_VIOLATION,
                f"a model name is {len(model)} characters long; "
                f"a broker takes at most {MAX_NAME_LENGTH}",
            )


def servable(models: Iterable[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The model names that can be announced and served, and the others (not clean text),
    each in their order: the connector announces only the first, and the broker serves only
    those, since any other would break what it is logged, counted or stored in."""
    kept: list[str] = []
    left_out: list[str] = []
    for model in models:
        (kept if is_clean(model) else left_out).append(model)
    return tuple(kept), tuple(left_out)


def accept_welcome(message: str | bytes) -> p.Welcome:
    """The connector's check of the broker's answer to hello."""
    welcome = _only_frame(message, "welcome")
    if not isinstance(welcome, p.Welcome):
        raise Refused(p.CLOSE_PROTOCOL_ERROR, "the broker did not answer hello with welcome")
    if welcome.version != p.PROTOCOL_VERSION:
        raise Refused(
            p.CLOSE_PROTOCOL_ERROR, f"the broker speaks protocol version {welcome.version}"
        )
    return welcome


def check_sender(frame: p.Frame, sender: Literal["broker", "connector"]) -> None:
    """Raise ProtocolError when `sender` may not send this kind of frame after the handshake."""
    allowed = FROM_BROKER if sender == "broker" else FROM_CONNECTOR
    if not isinstance(frame, allowed):
        raise p.ProtocolError(f"{type(frame).__name__} is not valid from a {sender}")
