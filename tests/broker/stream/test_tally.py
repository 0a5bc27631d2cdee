from __future__ import annotations

import json

from broker.stream.tally import TokenTally


def feed_in_pieces(tally: TokenTally, data: bytes, size: int = 7) -> None:
    for i in range(0, len(data), size):
        tally.feed(data[i : i + size])


def test_openai_body() -> None:
    tally = TokenTally("application/json")
    body = json.dumps({"choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": 30}})
    feed_in_pieces(tally, body.encode())
    assert tally.result() == (12, 30)


def test_anthropic_body_and_responses_api() -> None:
    tally = TokenTally("application/json")
    tally.feed(b'{"type":"message","usage":{"input_tokens":5,"output_tokens":9}}')
    assert tally.result() == (5, 9)


def test_openai_stream_with_usage_in_the_last_chunk_after_a_long_stream() -> None:
    tally = TokenTally("text/event-stream; charset=utf-8")
    chunk = b'data: {"choices":[{"delta":{"content":"' + b"x" * 500 + b'"}}],"usage":null}\n\n'
    for _ in range(2000):  # ~1 MB: more than the head and the tail together
        tally.feed(chunk)
    tally.feed(b'data: {"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":2000}}\n\n')
    tally.feed(b"data: [DONE]\n\n")
    assert tally.result() == (7, 2000)


def test_anthropic_stream() -> None:
    tally = TokenTally("text/event-stream")
    events = [
        b'event: message_start\ndata: {"type":"message_start","message":{"usage":'
        b'{"input_tokens":25,"output_tokens":1}}}\n\n',
        b'event: content_block_delta\ndata: {"type":"content_block_delta"}\n\n',
        b'event: message_delta\ndata: {"type":"message_delta","usage":{"output_tokens":15}}\n\n',
    ]
    for event in events:
        feed_in_pieces(tally, event)
    assert tally.result() == (25, 15)


def test_ollama_ndjson() -> None:
    tally = TokenTally("application/x-ndjson")
    tally.feed(b'{"message":{"content":"a"},"done":false}\n')
    tally.feed(b'{"done":true,"prompt_eval_count":26,"eval_count":290}\n')
    assert tally.result() == (26, 290)


def test_no_usage_or_garbage_gives_none() -> None:
    for content_type, body in [
        ("application/json", b'{"choices": []}'),
        ("application/json", b"not json"),
        ("text/event-stream", b'data: {"usage": "nonsense"}\n\n'),
        ("text/plain", b"hello"),
        ("application/json", b'{"usage": {"prompt_tokens": -1, "completion_tokens": true}}'),
    ]:
        tally = TokenTally(content_type)
        tally.feed(body)
        assert tally.result() == (None, None), body


def test_a_long_final_event_keeps_its_usage() -> None:
    # The Responses API repeats the whole output in `response.completed`, usage at its end.
    tally = TokenTally("text/event-stream")
    text = "y" * 300_000
    tally.feed(b'event: response.output_text.delta\ndata: {"delta":"y"}\n\n')
    done = {"type": "response.completed", "response": {"output": text, "usage": {}}}
    done["response"]["usage"] = {"input_tokens": 9, "output_tokens": 75_000}  # type: ignore[index]
    feed_in_pieces(tally, b"event: response.completed\ndata: " + json.dumps(done).encode(), 4096)
    feed_in_pieces(tally, b"\n\n", 1)
    assert tally.result() == (9, 75_000)


def test_a_stream_without_usage_counts_its_events() -> None:
    tally = TokenTally("text/event-stream")
    for i in range(40):
        feed_in_pieces(
            tally, f'data: {{"choices":[{{"delta":{{"content":"t{i}"}}}}]}}\n\n'.encode()
        )
    tally.feed(b"data: [DONE]\n\n")
    assert tally.result() == (None, None)
    assert tally.events == 41


def test_hostile_nesting_does_not_raise() -> None:
    for content_type in ("application/json", "text/event-stream"):
        tally = TokenTally(content_type)
        tally.feed(b'data: {"usage": ' + b"[" * 100_000 + b"\n\n")
        assert tally.result() == (None, None)


def test_a_count_no_usage_row_could_hold_is_not_kept() -> None:
    tally = TokenTally("application/json")
    usage = {"prompt_tokens": 2**31 - 1, "completion_tokens": 2**31}
    tally.feed(json.dumps({"usage": usage}).encode())
    assert tally.result() == (2**31 - 1, None)
