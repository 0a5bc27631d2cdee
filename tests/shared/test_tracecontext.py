"""W3C traceparent parsing: the trace id of a valid header, nothing for anything else."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.tracecontext import trace_fields, trace_id, traceparent_of

VALID = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def test_the_specifications_example_gives_its_trace_id() -> None:
    assert trace_id(VALID) == "0af7651916cd43dd8448eb211c80319c"
    assert trace_fields(VALID) == {"trace_id": "0af7651916cd43dd8448eb211c80319c"}


def test_a_later_version_may_carry_more_fields() -> None:
    assert trace_id("01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra") == (
        "0af7651916cd43dd8448eb211c80319c"
    )


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "00-0AF7651916CD43DD8448EB211C80319C-B7AD6B7169203331-01",  # upper case
        "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",  # version ff
        "00-00000000000000000000000000000000-b7ad6b7169203331-01",  # zero trace id
        "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",  # zero parent id
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-x",  # version 00 with more
        "00-0af7651916cd43dd8448eb211c80319-b7ad6b7169203331-01",  # short trace id
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",  # no flags
        "0af7651916cd43dd8448eb211c80319c",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01" + "-x" * 300,
    ],
)
def test_anything_else_gives_none(value: str | None) -> None:
    assert trace_id(value) is None
    assert trace_fields(value) == {}


@given(st.text(max_size=80))
def test_a_trace_id_is_always_32_lower_hex_from_the_header(value: str) -> None:
    found = trace_id(value)
    assert found is None or (len(found) == 32 and found in value and int(found, 16) > 0)


def test_the_traceparent_of_header_pairs_is_found_in_any_case() -> None:
    pairs = [("Host", "b"), ("TraceParent", VALID), ("traceparent", "second")]
    assert traceparent_of(pairs) == VALID
    assert traceparent_of([("Host", "b"), ("tracestate", "a=b")]) is None
