"""The fuzzer's inputs: valid relay messages of every frame type, and ways to damage them.

`bench.fuzz` reads what `Mutator` makes; everything comes from one `random.Random`, so a
seed gives the same inputs run after run.
"""

from __future__ import annotations

import random
import re
from typing import Final

from shared import protocol as p
from shared import websocket as ws


def seed_frames() -> list[p.Frame]:
    """One or more valid frames of every type, the mutations' starting points."""
    headers = (("Content-Type", "application/json"), ("X-Tricky", "a\tb é ☃"))
    return [
        p.Hello(p.PROTOCOL_VERSION, "conn-1", ("llama3", "qwen:7b", "ünï"), 4),
        p.Welcome(p.PROTOCOL_VERSION, p.DEFAULT_WINDOW),
        p.ModelsUpdate(("a", "b/c:latest")),
        p.ModelsUpdate(()),
        p.GoAway("restart", 2.5),
        p.RequestHead(1, "POST", "/v1/chat/completions?x=1", headers, "req_1"),
        p.RequestBody(1, b'{"model":"llama3","stream":true}'),
        p.ResponseHead(1, 200, headers),
        p.ResponseBody(1, b"data: {}\n\n"),
        p.ResponseBody(7, bytes(range(256))),
        p.End(1),
        p.Error(2, "upstream_timeout", "the local LLM did not answer"),
        p.Cancel(3),
        p.WindowUpdate(1, 65536),
    ]


def seed_messages() -> list[bytes]:
    """Valid relay messages: each frame alone, and a few as the outboxes batch them."""
    frames = seed_frames()
    messages = [p.encode(f) for f in frames]
    messages.append(p.encode_many(frames[5:11]))
    messages.append(p.encode_many([frames[8], frames[10], frames[12], frames[13]]))
    return messages


# ---------------------------------------------------------------------------
# Mutations

_JSON_TOKEN: Final = re.compile(rb'"(?:[^"\\]|\\.)*"|-?[0-9][0-9.eE+-]*|true|false|null|[\[\]{}]')
_ODD_JSON: Final = (
    b"1e400",
    b"-1e400",
    b"9" * 400,
    b"-" + b"9" * 400,
    b"9" * 5000,
    b"18446744073709551616",
    b"4294967296",
    b"0",
    b"-1",
    b"-0",
    b"1.5",
    b"true",
    b"null",
    b'""',
    b'"\\udcff"',
    b'"\\ud800\\udc00"',
    b'"\\u0000\\r\\n"',
    b'"' + b"x" * 2000 + b'"',
    b"[]",
    b"{}",
    b'[["a","b"]]',
    b'[["a"]]',
    b'[["a\\r","b"]]',
    b'[["a","b\\u0000"]]',
    b"[1,2]",
    b"[" * 5000 + b"]" * 5000,
    b"NaN",
    b"Infinity",
    b"\xff\xfe",
)
_ODD_INTS: Final = (0, 1, 2, 8, 9, 125, 126, 127, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF)
_ODD_BYTES: Final = (0x00, 0x01, 0x7E, 0x7F, 0x80, 0x81, 0x88, 0x89, 0x8A, 0xFE, 0xFF)
_KINDS: Final = (*(int(t) for t in p.FrameType), 0x00, 0x05, 0x12, 0x34, 0xFF)

Part = tuple[int, int, bytes]
"""One relay frame as bytes: its type, its stream id, its payload."""


def parts_of(message: bytes) -> list[Part]:
    """The frames of a valid message, as (type, stream id, payload)."""
    parts: list[Part] = []
    offset = 0
    while offset < len(message):
        kind, stream_id, length = p.HEADER.unpack_from(message, offset)
        offset += p.HEADER.size
        parts.append((kind, stream_id, message[offset : offset + length]))
        offset += length
    return parts


def join(parts: list[Part]) -> bytes:
    """A message of these frames, each header's length its payload's."""
    return b"".join(p.HEADER.pack(k, s & 0xFFFFFFFF, len(d)) + d for k, s, d in parts)


class Mutator:
    """Turns valid messages and streams into damaged ones, reproducibly from one seed."""

    def __init__(self, rng: random.Random, messages: list[bytes]) -> None:
        self.rng = rng
        self.messages = messages
        self.parts = [parts_of(m) for m in messages]

    def message(self) -> bytes:
        """A relay message: a seed's frames changed where they matter, then maybe its bytes."""
        rng = self.rng
        parts = list(rng.choice(self.parts))
        for _ in range(rng.randint(0, 3)):
            parts = self._frames(parts)
        data = join(parts)
        if rng.random() < 0.4:
            for _ in range(rng.randint(1, 3)):
                data = self.raw(data)
        return data

    def _frames(self, parts: list[Part]) -> list[Part]:
        rng = self.rng
        i = rng.randrange(len(parts))
        kind, stream_id, payload = parts[i]
        match rng.randrange(7):
            case 0:
                parts[i] = (rng.choice(_KINDS), stream_id, payload)
            case 1:
                parts[i] = (kind, rng.choice(_ODD_INTS), payload)
            case 2 | 3:
                parts[i] = (kind, stream_id, self.json(payload))
            case 4:
                parts[i] = (kind, stream_id, self.text(payload))
            case 5:
                parts.insert(rng.randrange(len(parts) + 1), rng.choice(rng.choice(self.parts)))
            case _:
                parts[i] = (kind, stream_id, self.raw(payload))
        return parts

    def json(self, payload: bytes) -> bytes:
        """One JSON value or bracket replaced by an odd one."""
        tokens = list(_JSON_TOKEN.finditer(payload))
        if not tokens:
            return self.rng.choice(_ODD_JSON)
        token = self.rng.choice(tokens)
        return payload[: token.start()] + self.rng.choice(_ODD_JSON) + payload[token.end() :]

    def text(self, payload: bytes) -> bytes:
        """The payload in another Unicode encoding, or with a byte-order mark (JSON allows them)."""
        rng = self.rng
        try:
            text = payload.decode()
        except UnicodeDecodeError:
            return payload
        encoding = rng.choice(("utf-16-le", "utf-16-be", "utf-32-le", "utf-32-be", "utf-8-sig"))
        return text.encode(encoding, "surrogatepass")

    def raw(self, data: bytes) -> bytes:
        """A byte-level change: a bit, a byte, a slice, a 32-bit field, a cut or a splice."""
        rng = self.rng
        n = len(data)
        at = rng.randrange(n + 1)
        match rng.randrange(8):
            case 0 if n:
                at = min(at, n - 1)
                return data[:at] + bytes((data[at] ^ (1 << rng.randrange(8)),)) + data[at + 1 :]
            case 1 if n:
                at = min(at, n - 1)
                return data[:at] + bytes((rng.choice(_ODD_BYTES),)) + data[at + 1 :]
            case 2:
                return data[:at] + rng.randbytes(rng.randint(1, 16)) + data[at:]
            case 3:
                return data[:at] + data[at + rng.randint(1, 32) :]
            case 4:
                end = min(n, at + rng.randint(1, 64))
                return data[:end] + data[at:end] * rng.randint(1, 8) + data[end:]
            case 5:
                field = rng.choice(_ODD_INTS).to_bytes(4, "big")
                return data[:at] + field + data[at + 4 :]
            case 6:
                return data[:at]
            case _:
                other = rng.choice(self.messages)
                return data[:at] + other[rng.randrange(len(other) + 1) :]

    def stream(self, side: str) -> bytes:
        """WebSocket bytes as `side` receives them: messages framed, maybe split, then damaged."""
        rng = self.rng
        masked = side == "broker"
        chunks: list[bytes] = []
        for _ in range(rng.randint(1, 3)):
            chunks.extend(self._framed(self.message(), masked=masked))
        if rng.random() < 0.3:
            chunks.insert(rng.randrange(len(chunks) + 1), self._control(masked=masked))
        data = b"".join(chunks)
        for _ in range(rng.randint(0, 3)):
            data = self.raw(data)
        return data

    def _framed(self, message: bytes, *, masked: bool) -> list[bytes]:
        """One message as WebSocket frames: usually whole, sometimes in fragments."""
        rng = self.rng
        if rng.random() < 0.7 or len(message) < 2:
            return [self.frame(ws.OP_BINARY, message, masked=masked)]
        cut = rng.randrange(1, len(message))
        return [
            self.frame(ws.OP_BINARY, message[:cut], masked=masked, fin=False),
            self.frame(ws.OP_CONTINUATION, message[cut:], masked=masked),
        ]

    def _control(self, *, masked: bool) -> bytes:
        rng = self.rng
        if rng.random() < 0.5:
            op = rng.choice((ws.OP_PING, ws.OP_PONG))
            return self.frame(op, rng.randbytes(rng.randint(0, 125)), masked=masked)
        code = rng.choice((1000, 1001, 1002, 1005, 4001, 999)).to_bytes(2, "big")
        return self.frame(ws.OP_CLOSE, code + "bye ☃".encode(), masked=masked)

    def frame(self, opcode: int, payload: bytes, *, masked: bool, fin: bool = True) -> bytes:
        """A WebSocket frame, masked with a key from the seed (so a run repeats exactly)."""
        whole = ws.encode_frame(opcode, payload, mask=False)
        head = bytearray(whole[: len(whole) - len(payload)])
        if not fin:
            head[0] &= 0x7F
        if not masked:
            return bytes(head) + payload
        head[1] |= 0x80
        key = self.rng.randbytes(4)
        return bytes(head) + key + ws.apply_mask(payload, key)
