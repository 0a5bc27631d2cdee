"""The outbox: control frames first, streams in turn, messages bounded, nothing lost."""

from __future__ import annotations

from shared.outbox import DEFAULT_MESSAGE_BYTES, Outbox
from shared.protocol import (
    MAX_BODY_CHUNK,
    Cancel,
    End,
    Error,
    Frame,
    GoAway,
    Hello,
    ModelsUpdate,
    RequestBody,
    RequestHead,
    ResponseBody,
    ResponseHead,
    Welcome,
    WindowUpdate,
    decode,
    encode,
)

FULL = b"\xab" * MAX_BODY_CHUNK
FULL_FRAME_BYTES = 9 + MAX_BODY_CHUNK


def drain(outbox: Outbox) -> list[bytes]:
    """Every message the outbox hands out until it is empty."""
    messages: list[bytes] = []
    while outbox:
        message = outbox.take()
        assert message, "a non-empty outbox returned an empty message"
        messages.append(message)
    return messages


def stream_of(frame: Frame) -> int | None:
    return getattr(frame, "stream_id", None)


def by_stream(messages: list[bytes]) -> dict[int, list[Frame]]:
    """The decoded stream frames of `messages`, in arrival order, per stream."""
    out: dict[int, list[Frame]] = {}
    for message in messages:
        for frame in decode(message):
            sid = stream_of(frame)
            assert sid is not None
            out.setdefault(sid, []).append(frame)
    return out


# ---------------------------------------------------------------------------
# bool and len


def test_empty_outbox_is_falsy_and_takes_nothing() -> None:
    outbox = Outbox()
    assert not outbox
    assert len(outbox) == 0
    assert outbox.take() == b""


def test_len_counts_queued_bytes_and_take_reduces_it() -> None:
    outbox = Outbox()
    frames: list[Frame] = [ResponseHead(1, 200, ()), ResponseBody(1, b"abc"), Cancel(2)]
    for frame in frames:
        outbox.put(frame)
    assert outbox
    assert len(outbox) == sum(len(encode(f)) for f in frames)
    message = outbox.take()
    assert len(message) == sum(len(encode(f)) for f in frames)
    assert not outbox
    assert len(outbox) == 0


def test_len_after_a_partial_take() -> None:
    outbox = Outbox(max_message_bytes=FULL_FRAME_BYTES)
    for _ in range(3):
        outbox.put(RequestBody(1, FULL))
    first = outbox.take()
    assert len(first) == FULL_FRAME_BYTES
    assert outbox
    assert len(outbox) == 2 * FULL_FRAME_BYTES


def test_default_message_holds_three_full_body_frames() -> None:
    # Round robin relies on a message holding a full frame of several streams.
    assert DEFAULT_MESSAGE_BYTES >= 3 * FULL_FRAME_BYTES


# ---------------------------------------------------------------------------
# Control frames first

CONTROL: list[Frame] = [
    WindowUpdate(1, 4096),
    Cancel(3),
    GoAway("bye", 1.0),
    ModelsUpdate(("m",)),
    Hello(1, "n", ("m",), 2),
    Welcome(1, 1 << 20),
]


def test_control_frames_leave_before_stream_frames() -> None:
    outbox = Outbox()
    stream: list[Frame] = [
        RequestHead(5, "POST", "/v1/x", (), "r"),
        RequestBody(5, b"body"),
        ResponseHead(1, 200, ()),
        ResponseBody(1, b"tok"),
        Error(7, "c", "m"),
        End(5),
    ]
    # Interleave so every control frame is queued after some stream frame.
    for s, c in zip(stream, CONTROL, strict=True):
        outbox.put(s)
        outbox.put(c)
    frames = decode(outbox.take())
    assert not outbox
    assert frames[: len(CONTROL)] == CONTROL
    assert sorted(frames[len(CONTROL) :], key=repr) == sorted(stream, key=repr)


def test_control_frames_jump_ahead_of_a_backlog() -> None:
    outbox = Outbox()
    for _ in range(10):
        outbox.put(ResponseBody(1, FULL))
    outbox.take()
    outbox.put(Cancel(9))
    outbox.put(WindowUpdate(1, 10))
    frames = decode(outbox.take())
    assert frames[:2] == [Cancel(9), WindowUpdate(1, 10)]


def test_control_frames_are_bounded_by_message_size_but_never_stuck() -> None:
    frame_bytes = len(encode(Cancel(1)))
    outbox = Outbox(max_message_bytes=2 * frame_bytes)
    for sid in range(1, 6):
        outbox.put(Cancel(sid))
    messages = drain(outbox)
    assert [decode(m) for m in messages] == [
        [Cancel(1), Cancel(2)],
        [Cancel(3), Cancel(4)],
        [Cancel(5)],
    ]


def test_a_lone_control_frame_bigger_than_a_message_is_still_sent() -> None:
    big = ModelsUpdate(tuple(f"model-{i}" for i in range(100)))
    outbox = Outbox(max_message_bytes=50)
    outbox.put(big)
    outbox.put(ResponseBody(1, b"x"))
    assert decode(outbox.take()) == [big]
    assert decode(outbox.take()) == [ResponseBody(1, b"x")]


# ---------------------------------------------------------------------------
# Round robin


def test_small_stream_is_not_stuck_behind_a_queued_large_body() -> None:
    outbox = Outbox()
    for _ in range(20):
        outbox.put(ResponseBody(1, FULL))
    tokens = [ResponseBody(2, f"tok{i}".encode()) for i in range(5)]
    for token in tokens:
        outbox.put(token)
    first = decode(outbox.take())
    # Stream 1 has 1.3 MB queued ahead of stream 2, yet stream 2's frames leave at once.
    assert [f for f in first if stream_of(f) == 2] == tokens
    assert ResponseBody(1, FULL) in first


def test_each_message_carries_the_next_token_of_a_small_stream() -> None:
    outbox = Outbox()
    big = 100
    for _ in range(big):
        outbox.put(ResponseBody(1, FULL))
    sent_big = 0
    for i in range(20):
        token = ResponseBody(2, f"data: token {i}\n\n".encode())
        outbox.put(token)
        frames = decode(outbox.take())
        assert token in frames
        # The large stream keeps moving too.
        sent_big += sum(1 for f in frames if stream_of(f) == 1)
        assert sent_big >= i + 1
    # The backlog never ran dry, so every token above competed with it.
    assert sent_big < big


def test_streams_take_turns_frame_by_frame() -> None:
    # A message fits exactly three full frames: one from each stream, in turn.
    outbox = Outbox(max_message_bytes=3 * FULL_FRAME_BYTES)
    for sid in (1, 3, 5):
        for n in range(3):
            outbox.put(RequestBody(sid, bytes([sid, n]) * (MAX_BODY_CHUNK // 2)))
    messages = [decode(m) for m in drain(outbox)]
    assert len(messages) == 3
    for n, frames in enumerate(messages):
        assert frames == [
            RequestBody(sid, bytes([sid, n]) * (MAX_BODY_CHUNK // 2)) for sid in (1, 3, 5)
        ]


def test_order_within_each_stream_is_preserved() -> None:
    outbox = Outbox(max_message_bytes=3000)
    expected: dict[int, list[Frame]] = {1: [], 2: [], 3: []}
    for n in range(60):
        sid = 1 + (n * 7) % 3
        frame = ResponseBody(sid, bytes([n]) * (50 * (n % 9)))
        expected[sid].append(frame)
        outbox.put(frame)
    assert by_stream(drain(outbox)) == expected


def test_order_is_preserved_when_putting_and_taking_interleave() -> None:
    outbox = Outbox(max_message_bytes=2000)
    put: dict[int, list[Frame]] = {1: [], 2: []}
    messages: list[bytes] = []
    for n in range(100):
        sid = 1 + n % 2
        frame = RequestBody(sid, n.to_bytes(2, "big") * (n % 13 * 20))
        put[sid].append(frame)
        outbox.put(frame)
        if n % 3 == 0:
            messages.append(outbox.take())
    messages.extend(drain(outbox))
    assert by_stream(messages) == put


# ---------------------------------------------------------------------------
# Message size


def test_no_message_exceeds_the_limit_unless_it_holds_one_frame() -> None:
    limit = 1000
    outbox = Outbox(max_message_bytes=limit)
    frames: list[Frame] = []
    for n in range(80):
        sid = 1 + n % 4
        size = (n * 37) % 1500  # some frames are bigger than a whole message
        frame: Frame = ResponseBody(sid, b"x" * size)
        frames.append(frame)
        outbox.put(frame)
        if n % 10 == 0:
            outbox.put(WindowUpdate(sid, 1 + n))
            frames.append(WindowUpdate(sid, 1 + n))
    messages = drain(outbox)
    for message in messages:
        assert len(message) <= limit or len(decode(message)) == 1
    assert any(len(m) > limit for m in messages), "the test should include oversized frames"
    assert sorted((f for m in messages for f in decode(m)), key=repr) == sorted(frames, key=repr)


def test_a_lone_stream_frame_bigger_than_a_message_is_still_sent() -> None:
    outbox = Outbox(max_message_bytes=100)
    outbox.put(RequestBody(1, b"y" * 500))
    outbox.put(RequestBody(1, b"z"))
    assert decode(outbox.take()) == [RequestBody(1, b"y" * 500)]
    assert decode(outbox.take()) == [RequestBody(1, b"z")]
    assert not outbox


def test_a_frame_that_does_not_fit_waits_for_the_next_message() -> None:
    outbox = Outbox(max_message_bytes=FULL_FRAME_BYTES + 100)
    outbox.put(ResponseBody(1, b"a" * 200))
    outbox.put(ResponseBody(2, FULL))
    outbox.put(ResponseBody(3, b"c" * 10))
    assert decode(outbox.take()) == [ResponseBody(1, b"a" * 200), ResponseBody(3, b"c" * 10)]
    assert decode(outbox.take()) == [ResponseBody(2, FULL)]
    assert not outbox


# ---------------------------------------------------------------------------
# discard


def test_discard_drops_a_streams_frames_and_fixes_len() -> None:
    outbox = Outbox()
    dropped: list[Frame] = [ResponseHead(1, 200, ()), ResponseBody(1, FULL), End(1)]
    kept: list[Frame] = [ResponseHead(2, 404, ()), ResponseBody(2, b"nope"), End(2)]
    for a, b in zip(dropped, kept, strict=True):
        outbox.put(a)
        outbox.put(b)
    outbox.discard(1)
    assert len(outbox) == sum(len(encode(f)) for f in kept)
    assert decode(outbox.take()) == kept
    assert not outbox
    assert len(outbox) == 0


def test_discard_keeps_control_frames_for_that_stream() -> None:
    # The Cancel for a stream must still go out after its queued body is dropped.
    outbox = Outbox()
    outbox.put(RequestBody(4, b"abc"))
    outbox.put(Cancel(4))
    outbox.put(WindowUpdate(4, 100))
    outbox.discard(4)
    assert len(outbox) == len(encode(Cancel(4))) + len(encode(WindowUpdate(4, 100)))
    assert decode(outbox.take()) == [Cancel(4), WindowUpdate(4, 100)]


def test_discard_of_the_only_stream_empties_the_outbox() -> None:
    outbox = Outbox()
    outbox.put(ResponseBody(1, b"x"))
    outbox.discard(1)
    assert not outbox
    assert len(outbox) == 0
    assert outbox.take() == b""


def test_discard_of_an_unknown_stream_changes_nothing() -> None:
    outbox = Outbox()
    outbox.put(ResponseBody(1, b"x"))
    before = len(outbox)
    outbox.discard(99)
    assert len(outbox) == before
    assert decode(outbox.take()) == [ResponseBody(1, b"x")]


def test_a_stream_can_be_used_again_after_discard() -> None:
    outbox = Outbox()
    outbox.put(ResponseBody(1, b"old"))
    outbox.discard(1)
    outbox.put(ResponseBody(1, b"new"))
    assert decode(outbox.take()) == [ResponseBody(1, b"new")]


# ---------------------------------------------------------------------------
# Nothing lost


def test_concatenated_messages_decode_to_every_frame() -> None:
    outbox = Outbox()
    frames: list[Frame] = [Hello(1, "n", ("a",), 4)]
    for sid in range(1, 9):
        frames.append(RequestHead(sid, "POST", "/v1/chat/completions", (("a", "b"),), f"r{sid}"))
        frames.extend(RequestBody(sid, bytes([sid]) * (sid * 8_000)) for _ in range(sid))
        frames.append(End(sid))
        if sid % 3 == 0:
            frames.append(WindowUpdate(sid, 65536))
    for frame in frames:
        outbox.put(frame)
    total = len(outbox)
    messages = drain(outbox)
    assert len(messages) > 1
    assert all(len(m) <= DEFAULT_MESSAGE_BYTES for m in messages)
    joined = b"".join(messages)
    assert len(joined) == total
    assert sorted(decode(joined), key=repr) == sorted(frames, key=repr)
