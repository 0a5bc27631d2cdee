"""Fair scheduling of outgoing frames onto one WebSocket, sans-I/O.

Frames are queued per stream. Each call to `take()` builds one WebSocket
message: all pending control frames first, then one frame from each stream in
turn (round robin) until the message is full. A stream moving a large body
therefore adds at most one 64 KiB frame of delay to the small token frames of
other streams, and whatever is ready when the socket is free leaves in a single
message instead of one write per token.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from typing import Final

from shared.protocol import (
    End,
    Error,
    Frame,
    RequestBody,
    RequestHead,
    ResponseBody,
    ResponseHead,
    encode_parts,
)

DEFAULT_MESSAGE_BYTES: Final = 256 * 1024

_Entry = tuple[int, tuple[bytes, ...]]
"""A queued frame: its size and the pieces of its bytes."""

_STREAM_FRAMES = (RequestHead, RequestBody, ResponseHead, ResponseBody, End, Error)


class Outbox:
    """Pending frames of one connection, by stream."""

    def __init__(self, max_message_bytes: int = DEFAULT_MESSAGE_BYTES) -> None:
        self._max = max_message_bytes
        # Created on first use: most links sit idle, and an empty deque is half a KiB.
        self._control: deque[_Entry] | None = None
        self._streams: OrderedDict[int, deque[_Entry]] = OrderedDict()
        self._bytes = 0

    def __len__(self) -> int:
        """Number of bytes queued."""
        return self._bytes

    def __bool__(self) -> bool:
        return bool(self._control or self._streams)

    def put(self, frame: Frame) -> None:
        """Queue one frame. Stream frames keep their order within their stream."""
        pieces = encode_parts(frame)
        size = sum(len(piece) for piece in pieces)
        self._bytes += size
        entry = (size, pieces)
        if isinstance(frame, _STREAM_FRAMES):
            # Not setdefault: that would build a deque for every frame.
            queue = self._streams.get(frame.stream_id)
            if queue is None:
                queue = self._streams[frame.stream_id] = deque()
            queue.append(entry)
        else:
            # Connection frames, cancels and credit updates jump the queue: they are
            # small and something waits on them.
            if self._control is None:
                self._control = deque()
            self._control.append(entry)

    def discard(self, stream_id: int) -> None:
        """Drop every queued frame of a stream (it was cancelled)."""
        queue = self._streams.pop(stream_id, None)
        if queue:
            self._bytes -= sum(size for size, _ in queue)

    def take(self) -> bytes:
        """Return the next message (empty bytes when nothing is queued)."""
        parts: list[bytes] = []
        size = 0
        control = self._control
        while control and (not parts or size + control[0][0] <= self._max):
            length, pieces = control.popleft()
            parts.extend(pieces)
            size += length
        while self._streams and size < self._max:
            progressed = False
            for stream_id in list(self._streams):
                queue = self._streams[stream_id]
                if parts and size + queue[0][0] > self._max:
                    continue
                length, pieces = queue.popleft()
                parts.extend(pieces)
                size += length
                progressed = True
                if queue:
                    self._streams.move_to_end(stream_id)
                else:
                    del self._streams[stream_id]
            if not progressed:
                break
        self._bytes -= size
        return b"".join(parts)
