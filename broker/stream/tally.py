"""Token counts read from a response as it passes, without changing a byte of it.

OpenAI-style bodies carry `usage.prompt_tokens`/`completion_tokens` (or `input_tokens`/
`output_tokens` in the Responses API), Anthropic's `usage.input_tokens`/`output_tokens`
(streamed: in `message_start` and `message_delta`), Ollama's `prompt_eval_count`/
`eval_count`. A plain body is kept up to 4 MiB and parsed once at the end; of an event
stream only the first and last few lines that mention usage are kept (whole, however
long), and parsed once after the stream ended. Events are counted as they pass: the
estimate of completion tokens for limits when a stream carries no usage.
"""

from __future__ import annotations

from typing import Any

from shared import jsoncodec

BODY_LIMIT = 4 * 1024 * 1024
LINE_LIMIT = 8 * 1024 * 1024
KEPT = 4
_MARKERS = (b'"usage"', b'"eval_count"', b'"prompt_eval_count"')


class TokenTally:
    def __init__(self, content_type: str) -> None:
        self.streaming = content_type.startswith(("text/event-stream", "application/x-ndjson"))
        self.sse = content_type.startswith("text/event-stream")
        self._body = bytearray()
        self._size = 0
        self._partial = b""
        self._first: list[bytes] = []
        self._last: list[bytes] = []
        self.events = 0
        """Events (SSE `data:` lines, NDJSON lines) seen: the estimate when usage is missing."""

    def feed(self, data: bytes) -> None:
        self._size += len(data)
        if not self.streaming:
            if self._size <= BODY_LIMIT:
                self._body += data
            return
        start = 0
        while True:
            end = data.find(b"\n", start)
            if end < 0:
                rest = data[start:]
                if len(self._partial) + len(rest) <= LINE_LIMIT:
                    self._partial += rest
                return
            line = self._partial + data[start:end] if self._partial else data[start:end]
            self._partial = b""
            start = end + 1
            self._line(line)

    def _line(self, line: bytes) -> None:
        if self.sse:
            if not line.startswith(b"data:"):
                return
            line = line[5:]
        elif not line.strip():
            return
        self.events += 1
        if any(marker in line for marker in _MARKERS):
            if len(self._first) < KEPT:
                self._first.append(line)
            else:
                self._last.append(line)
                if len(self._last) > KEPT:
                    del self._last[0]

    def result(self) -> tuple[int | None, int | None]:
        """(prompt tokens, completion tokens), each None when the response did not say."""
        if not self.streaming:
            if self._size > BODY_LIMIT:
                return None, None
            return _counts([_parse(bytes(self._body))])
        if self._partial:
            self._line(self._partial)
            self._partial = b""
        return _counts([_parse(line.strip()) for line in (*self._first, *self._last)])


def _parse(data: bytes) -> Any:
    try:
        return jsoncodec.loads(data)
    except (ValueError, RecursionError):
        return None


MAX_COUNT = 2**31 - 1
"""The largest token count kept: the usage table's INTEGER columns hold no more on PostgreSQL,
and a larger one would make the database refuse the whole batch of usage rows."""


def _int(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_COUNT:
        return value
    return None


def _counts(objects: list[Any]) -> tuple[int | None, int | None]:
    prompt: int | None = None
    completion: int | None = None
    for obj in objects:
        if not isinstance(obj, dict):
            continue
        usages = [obj.get("usage")]
        for nested in ("message", "response"):  # Anthropic message_start, Responses events
            inner = obj.get(nested)
            if isinstance(inner, dict):
                usages.append(inner.get("usage"))
        for found in usages:
            if not isinstance(found, dict):
                continue
            p = _int(found.get("prompt_tokens", found.get("input_tokens")))
            c = _int(found.get("completion_tokens", found.get("output_tokens")))
            prompt = p if p is not None else prompt
            completion = c if c is not None else completion
        p = _int(obj.get("prompt_eval_count"))
        c = _int(obj.get("eval_count"))
        prompt = p if p is not None else prompt
        completion = c if c is not None else completion
    return prompt, completion
