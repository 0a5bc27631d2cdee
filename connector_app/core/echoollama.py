"""What the built-in `echo` model answers to Ollama's clients: chat and generate (NDJSON lines
when streamed, as Ollama streams unless told not to), embed, embeddings and show.

Pure functions, no I/O, like `connector_app.core.echoformats`, whose shapes they share.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from connector_app.core.echoformats import (
    NDJSON,
    Ask,
    Streamed,
    inputs,
    json_bytes,
    prompt_text,
    vector,
)

# -- Ollama chat and generate -------------------------------------------------------------


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _done(ask: Ask) -> dict[str, Any]:
    n = len(ask.words)
    return {
        "done": True,
        "done_reason": "stop",
        "total_duration": 0,
        "load_duration": 0,
        "prompt_eval_count": n,
        "prompt_eval_duration": 0,
        "eval_count": n,
        "eval_duration": 0,
    }


def _line(value: dict[str, Any]) -> bytes:
    return json_bytes(value) + b"\n"


def _chat_part(ask: Ask, text: str) -> dict[str, Any]:
    return {
        "model": ask.model,
        "created_at": _now(),
        "message": {"role": "assistant", "content": text},
    }


def chat_whole(ask: Ask) -> dict[str, Any]:
    return {**_chat_part(ask, ask.text), **_done(ask)}


def chat_stream(ask: Ask) -> Streamed:
    pieces = [
        _line({**_chat_part(ask, ask.piece(i)), "done": False}) for i in range(len(ask.words))
    ]
    last = _line({**_chat_part(ask, ""), **_done(ask)})
    return Streamed(NDJSON, [], pieces, [last])


def _generate_part(ask: Ask, text: str) -> dict[str, Any]:
    return {"model": ask.model, "created_at": _now(), "response": text}


def generate_whole(ask: Ask) -> dict[str, Any]:
    return {**_generate_part(ask, ask.text), **_done(ask), "context": []}


def generate_stream(ask: Ask) -> Streamed:
    pieces = [
        _line({**_generate_part(ask, ask.piece(i)), "done": False}) for i in range(len(ask.words))
    ]
    last = _line({**_generate_part(ask, ""), **_done(ask), "context": []})
    return Streamed(NDJSON, [], pieces, [last])


# -- embeddings and model details ----------------------------------------------------------


def embed(body: dict[str, Any], model: str) -> dict[str, Any]:
    """POST /api/embed: one vector per input."""
    texts = inputs(body.get("input"))
    return {
        "model": model,
        "embeddings": [vector(text) for text in texts],
        "total_duration": 0,
        "load_duration": 0,
        "prompt_eval_count": sum(len(text.split()) for text in texts),
    }


def embeddings(body: dict[str, Any], model: str) -> dict[str, Any]:
    """POST /api/embeddings (Ollama's older endpoint): one vector for `prompt`."""
    return {"embedding": vector(prompt_text(body))}


def show(body: dict[str, Any], model: str) -> dict[str, Any]:
    """POST /api/show: the echo model's details, in Ollama's shape."""
    return {
        "modelfile": f"# {model}: RemoteLLM's built-in echo model\n",
        "parameters": "",
        "template": "{{ .Prompt }}",
        "details": {
            "parent_model": "",
            "format": "builtin",
            "family": "echo",
            "families": ["echo"],
            "parameter_size": "0",
            "quantization_level": "none",
        },
        "model_info": {"general.architecture": "echo", "general.parameter_count": 0},
        "capabilities": ["completion", "embedding"],
        "modified_at": "2026-01-01T00:00:00Z",
    }
