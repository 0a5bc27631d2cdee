"""What the built-in `echo` model answers to OpenAI's and Anthropic's clients, and the shapes
every family shares (Ollama's answers are `connector_app.core.echoollama`).

Pure functions, no I/O: `connector_app.core.echo` serves them. Each family reads the text
to echo from its own request shape, and answers it whole (one JSON object) or streamed
(SSE events for OpenAI's chat, completions and responses and Anthropic's messages), one
word per event, with the usage fields real servers send so that the broker's usage ledger
counts the echo's tokens too.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

DIMENSIONS: Final = 32
"""Length of an echo embedding (real models have hundreds; clients only need a vector)."""

SSE: Final = "text/event-stream"
NDJSON: Final = "application/x-ndjson"


@dataclass(frozen=True, slots=True)
class Ask:
    """One request to the echo model: the words to echo back and the answer's ids."""

    model: str
    words: list[str]
    ident: str
    created: int
    body: dict[str, Any]

    @property
    def text(self) -> str:
        return " ".join(self.words)

    def piece(self, i: int) -> str:
        """Word `i` as streamed: with the space before it, but the first."""
        return self.words[i] if i == 0 else " " + self.words[i]


@dataclass(frozen=True, slots=True)
class Streamed:
    """A streamed answer: events before the words, one per word (sent apart), and after."""

    content_type: str
    head: list[bytes]
    pieces: list[bytes]
    tail: list[bytes]


@dataclass(frozen=True, slots=True)
class Family:
    """How one endpoint asks and answers."""

    prefix: str
    """Of the answer's id (`chatcmpl-`, `msg_`, ...)."""
    streams_by_default: bool
    """Ollama streams unless told `"stream": false`; the others only when asked."""
    text: Callable[[dict[str, Any]], str]
    whole: Callable[[Ask], dict[str, Any]]
    streamed: Callable[[Ask], Streamed]


# -- what to echo ------------------------------------------------------------------


def _parts_text(content: Any) -> str:
    """A message's text: a string, or the text parts of a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            str(part.get("text", ""))
            for part in content
            if isinstance(part, dict) and part.get("type") in ("text", "input_text")
        )
    return ""


def last_user_text(messages: Any) -> str:
    """The text of the last user message of a list of messages (any family's)."""
    for message in reversed(messages if isinstance(messages, list) else []):
        if isinstance(message, dict) and message.get("role") == "user":
            return _parts_text(message.get("content"))
    return ""


def messages_text(body: dict[str, Any]) -> str:
    return last_user_text(body.get("messages"))


def prompt_text(body: dict[str, Any]) -> str:
    prompt = body.get("prompt")
    if isinstance(prompt, list):
        prompt = next((item for item in prompt if isinstance(item, str)), "")
    return prompt if isinstance(prompt, str) else ""


def input_text(body: dict[str, Any]) -> str:
    given = body.get("input")
    return given if isinstance(given, str) else last_user_text(given)


# -- shared pieces ----------------------------------------------------------------


def json_bytes(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _data(value: Any) -> bytes:
    return b"data: " + json_bytes(value) + b"\n\n"


def _event(kind: str, value: dict[str, Any]) -> bytes:
    return f"event: {kind}\n".encode() + _data({"type": kind, **value})


def _usage(ask: Ask) -> dict[str, int]:
    n = len(ask.words)
    return {"prompt_tokens": n, "completion_tokens": n, "total_tokens": 2 * n}


def _include_usage(ask: Ask) -> bool:
    options = ask.body.get("stream_options")
    return isinstance(options, dict) and bool(options.get("include_usage"))


# -- OpenAI chat completions and completions -----------------------------------------


def chat_whole(ask: Ask) -> dict[str, Any]:
    message = {"role": "assistant", "content": ask.text}
    return {
        "id": ask.ident,
        "object": "chat.completion",
        "created": ask.created,
        "model": ask.model,
        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
        "usage": _usage(ask),
    }


def _openai_stream(ask: Ask, kind: str, choice: Callable[[str | None], dict[str, Any]]) -> Streamed:
    """OpenAI's chunks: one per word, a last one with `finish_reason`, usage if asked, [DONE]."""
    with_usage = _include_usage(ask)
    # With include_usage every chunk carries "usage": null but the last, as OpenAI's do.
    extra: dict[str, Any] = {"usage": None} if with_usage else {}
    base = {"id": ask.ident, "object": kind, "created": ask.created, "model": ask.model}

    def chunk(choices: list[dict[str, Any]], more: dict[str, Any]) -> bytes:
        return _data({**base, "choices": choices, **more})

    pieces = [chunk([choice(ask.piece(i))], extra) for i in range(len(ask.words))]
    tail = [chunk([{**choice(None), "finish_reason": "stop"}], extra)]
    if with_usage:
        tail.append(chunk([], {"usage": _usage(ask)}))
    tail.append(b"data: [DONE]\n\n")
    return Streamed(SSE, [], pieces, tail)


def chat_stream(ask: Ask) -> Streamed:
    def choice(text: str | None) -> dict[str, Any]:
        delta = {"content": text} if text is not None else {}
        return {"index": 0, "delta": delta, "finish_reason": None}

    return _openai_stream(ask, "chat.completion.chunk", choice)


def completion_whole(ask: Ask) -> dict[str, Any]:
    choice = {"text": ask.text, "index": 0, "logprobs": None, "finish_reason": "stop"}
    return {
        "id": ask.ident,
        "object": "text_completion",
        "created": ask.created,
        "model": ask.model,
        "choices": [choice],
        "usage": _usage(ask),
    }


def completion_stream(ask: Ask) -> Streamed:
    def choice(text: str | None) -> dict[str, Any]:
        return {"text": text or "", "index": 0, "logprobs": None, "finish_reason": None}

    return _openai_stream(ask, "text_completion", choice)


# -- OpenAI responses ------------------------------------------------------------------


def _response(ask: Ask, status: str, output: list[dict[str, Any]]) -> dict[str, Any]:
    n = len(ask.words)
    usage = {
        "input_tokens": n,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": n,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 2 * n,
    }
    return {
        "id": ask.ident,
        "object": "response",
        "created_at": ask.created,
        "status": status,
        "model": ask.model,
        "output": output,
        "error": None,
        "incomplete_details": None,
        "instructions": None,
        "metadata": {},
        "parallel_tool_calls": True,
        "temperature": 1.0,
        "tool_choice": "auto",
        "tools": [],
        "top_p": 1.0,
        "text": {"format": {"type": "text"}},
        "usage": usage if status == "completed" else None,
    }


def _output_text(ask: Ask) -> dict[str, Any]:
    return {"type": "output_text", "text": ask.text, "annotations": []}


def _message_item(ask: Ask, status: str, content: list[dict[str, Any]]) -> dict[str, Any]:
    item_id = "msg_" + ask.ident.removeprefix("resp_")
    return {
        "type": "message",
        "id": item_id,
        "status": status,
        "role": "assistant",
        "content": content,
    }


def responses_whole(ask: Ask) -> dict[str, Any]:
    return _response(ask, "completed", [_message_item(ask, "completed", [_output_text(ask)])])


def responses_stream(ask: Ask) -> Streamed:
    """The Responses API's typed events, numbered in order (`sequence_number`)."""
    item = _message_item(ask, "in_progress", [])
    at = {"item_id": item["id"], "output_index": 0, "content_index": 0}
    empty = {"type": "output_text", "text": "", "annotations": []}
    done_item = _message_item(ask, "completed", [_output_text(ask)])
    events: list[tuple[str, dict[str, Any]]] = [
        ("response.created", {"response": _response(ask, "in_progress", [])}),
        ("response.in_progress", {"response": _response(ask, "in_progress", [])}),
        ("response.output_item.added", {"output_index": 0, "item": item}),
        ("response.content_part.added", {**at, "part": empty}),
    ]
    words = [
        ("response.output_text.delta", {**at, "delta": ask.piece(i), "logprobs": []})
        for i in range(len(ask.words))
    ]
    after: list[tuple[str, dict[str, Any]]] = [
        ("response.output_text.done", {**at, "text": ask.text, "logprobs": []}),
        ("response.content_part.done", {**at, "part": _output_text(ask)}),
        ("response.output_item.done", {"output_index": 0, "item": done_item}),
        ("response.completed", {"response": _response(ask, "completed", [done_item])}),
    ]
    numbered = [
        _event(kind, {"sequence_number": n, **value})
        for n, (kind, value) in enumerate((*events, *words, *after))
    ]
    head, rest = numbered[: len(events)], numbered[len(events) :]
    return Streamed(SSE, head, rest[: len(words)], rest[len(words) :])


# -- Anthropic messages -------------------------------------------------------------------


def _message(ask: Ask, content: list[dict[str, Any]], stop: str | None, out: int) -> dict[str, Any]:
    return {
        "id": ask.ident,
        "type": "message",
        "role": "assistant",
        "model": ask.model,
        "content": content,
        "stop_reason": stop,
        "stop_sequence": None,
        "usage": {"input_tokens": len(ask.words), "output_tokens": out},
    }


def messages_whole(ask: Ask) -> dict[str, Any]:
    return _message(ask, [{"type": "text", "text": ask.text}], "end_turn", len(ask.words))


def messages_stream(ask: Ask) -> Streamed:
    """Anthropic's events: message_start, one text block of deltas, message_delta, stop."""
    head = [
        _event("message_start", {"message": _message(ask, [], None, 1)}),
        _event("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}),
        _event("ping", {}),
    ]
    pieces = [
        _event(
            "content_block_delta",
            {"index": 0, "delta": {"type": "text_delta", "text": ask.piece(i)}},
        )
        for i in range(len(ask.words))
    ]
    tail = [
        _event("content_block_stop", {"index": 0}),
        _event(
            "message_delta",
            {
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": len(ask.words)},
            },
        ),
        _event("message_stop", {}),
    ]
    return Streamed(SSE, head, pieces, tail)


# -- embeddings and model details ------------------------------------------------------------


def vector(text: str) -> list[float]:
    """A deterministic unit vector for `text`: the same text, the same vector, everywhere."""
    digest = hashlib.sha256(text.encode()).digest()
    raw = [byte / 127.5 - 1.0 for byte in digest[:DIMENSIONS]]
    norm = math.sqrt(sum(x * x for x in raw)) or 1.0
    return [round(x / norm, 6) for x in raw]


def inputs(given: Any) -> list[str]:
    """The texts to embed: a string, or a list of strings (token arrays become their text)."""
    items = given if isinstance(given, list) else [given]
    return [item if isinstance(item, str) else json.dumps(item) for item in items]


def openai_embeddings(body: dict[str, Any], model: str) -> dict[str, Any]:
    """POST /v1/embeddings; `encoding_format: base64` as the OpenAI SDK asks by default."""
    texts = inputs(body.get("input"))
    as_base64 = body.get("encoding_format") == "base64"
    data = []
    for index, text in enumerate(texts):
        values = vector(text)
        embedding: Any = values
        if as_base64:
            embedding = base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    tokens = sum(len(text.split()) for text in texts)
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    return {"object": "list", "data": data, "model": model, "usage": usage}


Other = Callable[[dict[str, Any], str], dict[str, Any]]
"""An endpoint answered with one JSON object: from the body and the model's name."""
