"""JSON on the hot path: orjson first, the standard library for whatever orjson refuses.

orjson parses and writes several times faster than `json`, but it is stricter: it
refuses a byte-order mark, UTF-16 and UTF-32, `NaN` and `Infinity`, and a lone
surrogate. Each of these is handed to the standard library, so what is accepted stays
as with `json` alone. One answer differs: an integer beyond 64 bits comes back as a
float; for the fields read on the hot path (a model name, token counts, frame fields)
that only turns a nonsensical number into a refused one. Writing, orjson refuses
integers beyond 64 bits and lone surrogates, which go to the fallback; it writes `NaN`
as `null` where `json` would refuse it, so a float that may be NaN must not be written
through `dumps`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import orjson


def loads(data: bytes, fallback: Callable[[bytes], Any] = json.loads) -> Any:
    """`fallback(data)` (by default `json.loads`), computed by orjson when it can."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return fallback(data)


def dumps(obj: Any, fallback: Callable[[Any], bytes]) -> bytes:
    """`fallback(obj)`, computed by orjson when it can (compact, UTF-8)."""
    try:
        return orjson.dumps(obj)
    except TypeError:
        return fallback(obj)
