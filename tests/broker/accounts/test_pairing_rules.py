"""Pairing codes and the rules of one pairing, without a server."""

from __future__ import annotations

import re

from broker.accounts.pairing import Pairing, next_interval, poll_answer, why_undecidable
from broker.accounts.pairingcode import (
    USER_CODE_ALPHABET,
    code_hash,
    new_device_code,
    new_user_code,
    normalise_user_code,
)


def pairing(**changes: object) -> Pairing:
    values: dict[str, object] = {
        "id": 1,
        "name": "gpu-box",
        "ip": "127.0.0.1",
        "created": 1000.0,
        "expires": 1900.0,
        "interval": 5,
        "state": "pending",
    }
    values.update(changes)
    return Pairing(**values)  # type: ignore[arg-type]


def test_user_codes_are_two_groups_of_four_from_an_unambiguous_alphabet() -> None:
    codes = {new_user_code() for _ in range(200)}
    assert len(codes) == 200
    for code in codes:
        assert re.fullmatch(r"[A-Z0-9]{4}-[A-Z0-9]{4}", code)
        assert set(code.replace("-", "")) <= set(USER_CODE_ALPHABET)
    assert not set("0O1IL") & set(USER_CODE_ALPHABET)
    assert not set("AEIOU") & set(USER_CODE_ALPHABET)  # no words


def test_typed_codes_are_normalised_and_bad_ones_refused() -> None:
    assert normalise_user_code("bcdf-2345") == "BCDF2345"
    assert normalise_user_code(" BCDF 2345 ") == "BCDF2345"
    assert normalise_user_code("BCDF-234") is None
    assert normalise_user_code("BCD0-2345") is None  # 0 is not in the alphabet
    assert normalise_user_code("") is None


def test_device_codes_are_long_and_only_their_hash_is_kept() -> None:
    device = new_device_code()
    assert len(device) >= 43 and device != new_device_code()
    assert code_hash(device) != device and len(code_hash(device)) == 64


def test_a_pending_pairing_waits_then_slows_down_a_hasty_poller() -> None:
    fresh = pairing()
    assert poll_answer(fresh, 1001.0) == "authorization_pending"
    polled = pairing(last_poll=1001.0)
    assert poll_answer(polled, 1004.0) == "slow_down"
    assert next_interval(polled, "slow_down") == 10
    assert poll_answer(polled, 1006.0) == "authorization_pending"
    assert next_interval(polled, "authorization_pending") == 5


def test_decisions_and_expiry() -> None:
    assert poll_answer(pairing(state="approved"), 1100.0) == "approved"
    assert poll_answer(pairing(state="denied"), 1100.0) == "access_denied"
    assert poll_answer(pairing(state="collected"), 1100.0) == "expired_token"  # single use
    assert poll_answer(pairing(state="approved"), 1900.0) == "expired_token"
    assert poll_answer(pairing(), 1900.0) == "expired_token"
    assert why_undecidable(pairing(), 1100.0) is None
    assert why_undecidable(pairing(), 1900.0) == "expired"
    assert why_undecidable(pairing(state="denied"), 1100.0) == "decided"
