"""The relay's decoders under fuzzing: a slice of `bench.fuzz`'s run, and properties.

The full run (a million inputs and more) is `uv run python -m bench.fuzz`; this file runs a
few thousand of the same inputs from a fixed seed, so every `pytest` run repeats them.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable

from hypothesis import given, settings
from hypothesis import strategies as st

from bench import fuzz
from bench.mutator import Mutator
from shared import handshake
from shared import protocol as p
from shared import websocket as ws

SLICE = 3000


def test_a_slice_of_the_fuzz_run_finds_no_failure() -> None:
    report = fuzz.run(SLICE, seed=18)
    assert report.failures == []
    assert report.inputs == SLICE
    # The slice reaches past the framing: frames decode, and many kinds of input are refused.
    assert report.seen["frames decoded"] > 0
    assert len(report.refusals) > 20


def test_the_same_seed_gives_the_same_run() -> None:
    first, second = fuzz.run(300, seed=5), fuzz.run(300, seed=5)
    assert (first.refusals, first.seen) == (second.refusals, second.seen)


def test_an_input_that_hangs_is_a_failure_and_ends_the_run() -> None:
    def hanging(mutator: Mutator, seen: Counter[str]) -> tuple[bytes, Callable[[], None]]:
        def spin() -> None:
            while True:
                pass

        return b"\x01", spin

    report = fuzz.run(5, seed=0, timeout=0.2, source=hanging)
    assert report.inputs == 0
    assert len(report.failures) == 1 and report.failures[0].startswith("hang")


def test_an_unexpected_exception_is_a_failure_with_its_input() -> None:
    def crashing(mutator: Mutator, seen: Counter[str]) -> tuple[bytes, Callable[[], None]]:
        return b"\xab\xcd", lambda: [][0]

    report = fuzz.run(2, seed=0, source=crashing)
    assert len(report.failures) == 2
    assert "IndexError" in report.failures[0] and "input: abcd" in report.failures[0]


# ---------------------------------------------------------------------------
# Properties

_TEXT = st.text(max_size=40)
"""Any text, lone surrogates included: the encoder escapes them as JSON does."""
_NAMES = st.from_regex(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,20}", fullmatch=True)
_VALUES = st.text(st.characters(codec="utf-8", exclude_characters="\r\n\x00"))
_HEADERS = st.lists(st.tuples(_NAMES, _VALUES), max_size=5).map(tuple)
_STREAM = st.integers(1, 2**32 - 1)
_INT = st.integers(-(2**63), 2**63 - 1)
_BODY = st.binary(max_size=2000)
_MODELS = st.lists(_TEXT, max_size=5).map(tuple)

FRAMES = st.one_of(
    st.builds(p.Hello, _INT, _TEXT, _MODELS, st.integers(1, 2**63 - 1)),
    st.builds(p.Welcome, _INT, st.integers(p.MAX_BODY_CHUNK, 2**63 - 1)),
    st.builds(p.ModelsUpdate, _MODELS),
    st.builds(p.GoAway, _TEXT, st.floats(0.0, p.MAX_RECONNECT_AFTER)),
    st.builds(p.RequestHead, _STREAM, _TEXT, _TEXT, _HEADERS, _TEXT, _TEXT, _TEXT),
    st.builds(p.RequestBody, _STREAM, _BODY),
    st.builds(p.ResponseHead, _STREAM, st.integers(200, 599), _HEADERS),
    st.builds(p.ResponseBody, _STREAM, _BODY),
    st.builds(p.End, _STREAM),
    st.builds(p.Error, _STREAM, _TEXT, _TEXT),
    st.builds(p.Cancel, _STREAM),
    st.builds(p.WindowUpdate, _STREAM, st.integers(1, 2**32 - 1)),
)


@given(st.lists(FRAMES, min_size=1, max_size=4))
def test_valid_frames_round_trip_through_the_codec(frames: list[p.Frame]) -> None:
    assert p.decode(p.encode_many(frames)) == frames


@given(FRAMES, st.booleans(), st.randoms(use_true_random=False))
def test_valid_frames_round_trip_through_websocket_framing_split_anywhere(
    frame: p.Frame, masked: bool, rng: random.Random
) -> None:
    message = p.encode(frame)
    wire = ws.encode_frame(ws.OP_BINARY, message, mask=masked)
    reader = ws.FrameReader(masked=masked, max_message=handshake.MAX_MESSAGE)
    events: list[ws.Event] = []
    at = 0
    while at < len(wire):
        step = rng.randint(1, len(wire) - at)
        events += reader.feed(wire[at : at + step])
        at += step
    assert events == [ws.Message(message)]
    assert p.decode(events[0].data) == [frame]  # type: ignore[union-attr]


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_any_bytes_decode_to_frames_or_a_protocol_error(data: bytes) -> None:
    try:
        frames = p.decode(data)
    except p.ProtocolError:
        return
    assert frames and all(isinstance(f, p.Frame) for f in frames)


@settings(max_examples=300)
@given(st.binary(max_size=300), st.sampled_from(["broker", "connector"]))
def test_any_first_message_is_a_handshake_or_refused(data: bytes, side: str) -> None:
    try:
        first = handshake.accept_hello(data) if side == "broker" else handshake.accept_welcome(data)
    except handshake.Refused as refused:
        assert refused.code in (
            p.CLOSE_PROTOCOL_ERROR,
            p.CLOSE_UNSUPPORTED_VERSION,
            p.CLOSE_POLICY_VIOLATION,
        )
        return
    assert isinstance(first, p.Hello | p.Welcome)


@settings(max_examples=300)
@given(st.lists(st.binary(max_size=100), max_size=6), st.booleans())
def test_any_bytes_make_websocket_events_or_a_websocket_error(
    chunks: list[bytes], masked: bool
) -> None:
    reader = ws.FrameReader(masked=masked, max_message=handshake.MAX_MESSAGE)
    try:
        for chunk in chunks:
            for event in reader.feed(chunk):
                assert isinstance(event, ws.Message | ws.Ping | ws.Pong | ws.Close)
    except ws.WebSocketError as error:
        assert error.code in (ws.CLOSE_PROTOCOL_ERROR, ws.CLOSE_INVALID_DATA, ws.CLOSE_TOO_BIG)
