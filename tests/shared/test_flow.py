"""Per-stream credit: the sender never overruns the window, the receiver hands it back in halves."""

from __future__ import annotations

import pytest

from shared.flow import ReceiveCredit, SendCredit
from shared.protocol import DEFAULT_WINDOW, MAX_BODY_CHUNK

# ---------------------------------------------------------------------------
# SendCredit


def test_take_gives_what_is_wanted_when_there_is_room() -> None:
    credit = SendCredit(DEFAULT_WINDOW)
    assert credit.take(100) == 100
    assert credit.available == DEFAULT_WINDOW - 100


def test_take_is_capped_at_one_body_frame() -> None:
    credit = SendCredit(DEFAULT_WINDOW)
    assert credit.take(10 * MAX_BODY_CHUNK) == MAX_BODY_CHUNK
    assert credit.available == DEFAULT_WINDOW - MAX_BODY_CHUNK


def test_take_is_capped_at_the_available_credit() -> None:
    credit = SendCredit(MAX_BODY_CHUNK + 1000)
    assert credit.take(MAX_BODY_CHUNK) == MAX_BODY_CHUNK
    assert credit.take(MAX_BODY_CHUNK) == 1000
    assert credit.available == 0
    assert credit.take(MAX_BODY_CHUNK) == 0
    assert credit.available == 0


def test_take_of_nothing_spends_nothing() -> None:
    credit = SendCredit(500)
    assert credit.take(0) == 0
    assert credit.available == 500


def test_add_restores_credit_after_it_ran_out() -> None:
    credit = SendCredit(MAX_BODY_CHUNK)
    assert credit.take(MAX_BODY_CHUNK) == MAX_BODY_CHUNK
    assert credit.take(1) == 0
    credit.add(300)
    assert credit.available == 300
    assert credit.take(1000) == 300
    assert credit.available == 0


def test_add_can_grow_credit_past_the_initial_window() -> None:
    credit = SendCredit(MAX_BODY_CHUNK)
    credit.add(3 * MAX_BODY_CHUNK)
    assert credit.available == 4 * MAX_BODY_CHUNK
    # Still at most one frame per take.
    assert credit.take(4 * MAX_BODY_CHUNK) == MAX_BODY_CHUNK


# ---------------------------------------------------------------------------
# ReceiveCredit


def test_nothing_is_announced_below_half_the_window() -> None:
    credit = ReceiveCredit(1000)
    assert credit.consumed(200) == 0
    assert credit.consumed(299) == 0


def test_the_consumed_total_is_announced_at_half_the_window() -> None:
    credit = ReceiveCredit(1000)
    assert credit.consumed(200) == 0
    assert credit.consumed(299) == 0
    assert credit.consumed(1) == 500


def test_the_whole_total_is_announced_when_it_overshoots_half() -> None:
    credit = ReceiveCredit(1000)
    assert credit.consumed(400) == 0
    assert credit.consumed(350) == 750


def test_the_count_resets_after_an_announcement() -> None:
    credit = ReceiveCredit(1000)
    assert credit.consumed(600) == 600
    assert credit.consumed(499) == 0
    assert credit.consumed(1) == 500
    assert credit.consumed(499) == 0


def test_default_window_announces_after_two_full_frames() -> None:
    # 256 KiB: a WINDOW_UPDATE after every half window, i.e. every second 64 KiB frame.
    credit = ReceiveCredit(DEFAULT_WINDOW)
    increments = [credit.consumed(MAX_BODY_CHUNK) for _ in range(4)]
    assert increments == [0, 2 * MAX_BODY_CHUNK, 0, 2 * MAX_BODY_CHUNK]


@pytest.mark.parametrize("window", [0, 1])
def test_a_tiny_window_announces_every_byte(window: int) -> None:
    credit = ReceiveCredit(window)
    assert credit.consumed(1) == 1
    assert credit.consumed(1) == 1


# ---------------------------------------------------------------------------
# Both ends together


@pytest.mark.parametrize("window", [MAX_BODY_CHUNK, 3 * MAX_BODY_CHUNK + 17, DEFAULT_WINDOW])
def test_a_transfer_never_overruns_the_window_and_always_completes(window: int) -> None:
    body = 5 * DEFAULT_WINDOW + 12345
    sender, receiver = SendCredit(window), ReceiveCredit(window)
    in_flight: list[int] = []  # frame sizes sent and not yet delivered
    sent = delivered = 0
    for _ in range(10_000):
        if delivered == body:
            break
        # The sender sends all it may; then the receiver delivers one frame.
        while sent < body and (n := sender.take(body - sent)):
            assert n <= MAX_BODY_CHUNK
            in_flight.append(n)
            sent += n
        assert sum(in_flight) <= window
        assert in_flight, "stalled: nothing in flight and the sender has no credit"
        n = in_flight.pop(0)
        delivered += n
        sender.add(receiver.consumed(n))
    assert delivered == body
