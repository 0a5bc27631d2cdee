"""Clean text: what a name may hold before it enters state other people share.

Model names, connector names and other strings a client or a connector chooses end up in
usage rows, log lines, metric labels and JSON answers. A lone surrogate (`"\\udcff"`, a
valid JSON escape) cannot be encoded, and a control character breaks a line-oriented
format, so such strings are refused at the edge instead of poisoning what is downstream.
"""

from __future__ import annotations

from typing import Final

MAX_NAME_LENGTH: Final = 256
"""The longest model or connector name accepted, in characters."""


def is_clean(text: object, max_length: int = MAX_NAME_LENGTH) -> bool:
    """Whether `text` is a non-empty `str` of printable characters, at most `max_length` long.

    Printable is `str.isprintable`: no control or format characters, no surrogates, no
    unassigned code points, and no separators but the plain space; letters, digits,
    punctuation and symbols of any script (emoji included) are fine.
    """
    return isinstance(text, str) and 0 < len(text) <= max_length and text.isprintable()


def shown(text: str, limit: int = 80) -> str:
    """A form of possibly unclean `text` that is safe to log: escaped and cut to `limit`."""
    escaped = text.encode("unicode_escape", "backslashreplace").decode("ascii")
    return escaped if len(escaped) <= limit else escaped[: limit - 1] + "…"
