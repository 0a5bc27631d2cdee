"""The hello the broker accepts: a plain connector name, a bounded list of models."""

from __future__ import annotations

import json

import pytest

from shared import protocol as p
from shared.handshake import (
    MAX_BLOCKED,
    MAX_MODELS,
    Refused,
    accept_hello,
    check_blocked,
    check_models,
    servable,
)
from shared.text import MAX_NAME_LENGTH


def hello(name: str = "c", models: tuple[str, ...] = ("m",)) -> bytes:
    return p.encode(p.Hello(p.PROTOCOL_VERSION, name, models, 4))


def test_a_plain_hello_is_accepted() -> None:
    assert accept_hello(hello("box-1", ("a", "b"))).name == "box-1"


def test_up_to_the_bound_of_distinct_models_is_accepted() -> None:
    models = tuple(f"m{i}" for i in range(MAX_MODELS))
    assert accept_hello(hello(models=models + models)).models == models + models
    check_models(("x" * MAX_NAME_LENGTH,))


@pytest.mark.parametrize(
    ("models", "says"),
    [
        (tuple(f"m{i}" for i in range(MAX_MODELS + 1)), f"announced {MAX_MODELS + 1} models"),
        (("ok", "x" * (MAX_NAME_LENGTH + 1)), f"at most {MAX_NAME_LENGTH}"),
    ],
)
def test_a_hello_over_the_bounds_is_refused_as_a_policy_violation(
    models: tuple[str, ...], says: str
) -> None:
    with pytest.raises(Refused) as caught:
        accept_hello(hello(models=models))
    assert caught.value.code == p.CLOSE_POLICY_VIOLATION
    assert says in caught.value.reason
    assert len(caught.value.reason.encode()) <= 123


def test_a_connector_name_that_is_too_long_is_refused() -> None:
    with pytest.raises(Refused) as caught:
        accept_hello(hello(name="x" * (MAX_NAME_LENGTH + 1)))
    assert caught.value.code == p.CLOSE_POLICY_VIOLATION
    assert "connector name" in caught.value.reason


def test_names_that_are_not_clean_text_are_left_out() -> None:
    lone_surrogate = json.loads('"x\\udcff"')
    kept, left_out = servable(("good", lone_surrogate, "a\x00", "good"))
    assert kept == ("good", "good")
    assert left_out == (lone_surrogate, "a\x00")


def test_a_hello_blocking_too_many_or_too_long_ids_is_refused() -> None:
    ok = p.Hello(p.PROTOCOL_VERSION, "c", (), 4, tuple(str(i) for i in range(MAX_BLOCKED)))
    assert len(accept_hello(p.encode(ok)).blocked_users) == MAX_BLOCKED
    for blocked, says in [
        (tuple(str(i) for i in range(MAX_BLOCKED + 1)), f"blocks {MAX_BLOCKED + 1} users"),
        (("x" * (MAX_NAME_LENGTH + 1),), "a blocked user id is"),
    ]:
        with pytest.raises(Refused) as caught:
            accept_hello(p.encode(p.Hello(p.PROTOCOL_VERSION, "c", (), 4, blocked)))
        assert caught.value.code == p.CLOSE_POLICY_VIOLATION and says in caught.value.reason
        with pytest.raises(Refused):
            check_blocked(blocked)  # the same bound on a BLOCKED frame
