"""Token counts read from a response as it passes, without changing a byte of it.

OpenAI-style bodies carry `usage.prompt_tokens`/`completion_tokens` (or `input_tokens`/
`output_tokens` in the Responses API), Anthropic's `usage.input_tokens`/`output_tokens`
(streamed: in `message_start` and `message_delta`), Ollama's `prompt_eval_count`/
`eval_count`. A plain body is kept up to 4 MiB and parsed once at the end; an event
stream keeps only its first 16 KiB and last 64 KiB (where usage events are), and only
events that mention usage are parsed, once, after the stream ended.
"""

from __future__ import annotations

import json
from typing import Any

BODY_LIMIT = 4 * 1024 * 1024
HEAD = 16 * 1024
TAIL = 64 * 1024
_MARKERS = (b'"usage"', b'"eval_count"', b'"prompt_eval_count"')


class TokenTally:
    def __init__(self, content_type: str) -> None:
        self.streaming = content_type.startswith(("text/event-stream", "application/x-ndjson"))
        self._head = bytearray()
        self._tail = bytearray()
        self._size = 0

    def feed(self, data: bytes) -> None:
        self._size += len(data)
        if not self.streaming:
            if self._size <= BODY_LIMIT:
                self._head += data
            return
        if len(self._head) < HEAD:
            self._head += data
            return
        tail = self._tail
        tail += data
        if len(tail) > 2 * TAIL:
            del tail[:-TAIL]

    def result(self) -> tuple[int | None, int | None]:
        """(prompt tokens, completion tokens), each None when the response did not say."""
        if not self.streaming:
            if self._size > BODY_LIMIT:
                return None, None
            return _counts([_parse(bytes(self._head))])
        objects: list[Any] = []
        for part in (self._head, self._tail):
            for line in bytes(part).splitlines():
                if not any(marker in line for marker in _MARKERS):
                    continue
                if line.startswith(b"data:"):
                    line = line[5:]
                objects.append(_parse(line.strip()))
        return _counts(objects)


def _parse(data: bytes) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        return None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


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
