"""Per-stream flow control for response bodies, sans-I/O.

The broker grants each stream a window of bytes (announced in Welcome). The
connector spends it as it sends response-body frames and waits when it is used
up; the broker gives credit back with WINDOW_UPDATE once the bytes have been
written to the client. A slow client therefore holds at most one window of
buffered data in the broker and never stalls the other streams on the socket.
"""

from __future__ import annotations

from shared.frames import MAX_BODY_CHUNK, ProtocolError


class SendCredit:
    """The sender's view of one stream's window."""

    def __init__(self, window: int) -> None:
        self.available = window

    def take(self, wanted: int) -> int:
        """Spend up to `wanted` bytes (and at most one body frame); return how many."""
        n = min(wanted, self.available, MAX_BODY_CHUNK)
        self.available -= n
        return n

    def add(self, increment: int) -> None:
        self.available += increment


class ReceiveCredit:
    """The receiver's view of one stream's window: when to hand credit back."""

    def __init__(self, window: int) -> None:
        self._window = window
        self._threshold = max(window // 2, 1)
        self._consumed = 0
        self.outstanding = 0
        """Bytes received and not yet consumed: never more than the window."""

    def received(self, n: int) -> None:
        """Record `n` bytes arriving; a sender that overran its window broke the protocol."""
        self.outstanding += n
        if self.outstanding > self._window:
            raise ProtocolError("a stream overran its flow-control window")

    def consumed(self, n: int) -> int:
        """Record `n` bytes delivered; return the increment to announce now, or 0."""
        self.outstanding -= n
        self._consumed += n
        if self._consumed < self._threshold:
            return 0
        increment, self._consumed = self._consumed, 0
        return increment
