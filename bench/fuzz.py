"""`python -m bench.fuzz [--inputs N] [--seed S] [--timeout SECONDS]`: fuzz the relay's decoders.

Each input is a valid relay message or WebSocket byte stream, built from every frame type,
then mutated (bits, bytes, slices, lengths, frame types, stream ids, JSON values, text
encodings). It goes through what each side does with bytes from its peer: the WebSocket
frame reader (`shared.websocket.FrameReader`, as the broker reads a connector and as the
connector reads the broker), the relay decoder (`shared.protocol.decode`), the handshake
checks and the sender check (`shared.handshake`). Every frame decoded is encoded again and
must decode to itself.

The invariants: no exception other than the protocol's own (ProtocolError, WebSocketError,
Refused), no input taking longer than `--timeout` (a watchdog thread interrupts it, and
ends the process with exit code 3 if it cannot), and valid frames round-trip. The command
prints inputs per second and every distinct refusal seen, and exits 1 on any failure (each
printed with its input), 0 otherwise. tests/shared/test_fuzz.py runs a slice of the same
inputs.
"""

from __future__ import annotations

import _thread
import argparse
import os
import random
import re
import sys
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Final

from bench.mutator import Mutator, seed_frames, seed_messages
from shared import handshake
from shared import protocol as p
from shared import websocket as ws

EXPECTED: Final = (p.ProtocolError, ws.WebSocketError, handshake.Refused)
"""The protocol's own errors: a peer's bad bytes may raise these and nothing else."""

SIDES: Final = ("broker", "connector")
"""Which side reads: the broker reads a connector's messages, masked; the connector, unmasked."""


# ---------------------------------------------------------------------------
# What each side does with the bytes


class Violation(AssertionError):
    """An invariant broke (a frame that does not round-trip)."""


def read_message(message: bytes, side: str, first: bool, seen: Counter[str]) -> None:
    """Decode a relay message as `side` does: the handshake's first frame, or any other."""
    if first:
        if side == "broker":
            round_trip(handshake.accept_hello(message), seen)
        else:
            round_trip(handshake.accept_welcome(message), seen)
        return
    for frame in p.decode(message):
        handshake.check_sender(frame, "connector" if side == "broker" else "broker")
        round_trip(frame, seen)


def round_trip(frame: p.Frame, seen: Counter[str]) -> None:
    """A decoded frame encodes to bytes that decode to itself."""
    seen["frames decoded"] += 1
    again = p.encode(frame)
    if p.decode(again) != [frame]:
        raise Violation(f"{frame!r} came back as {p.decode(again)!r}")


def read_stream(data: bytes, side: str, rng: random.Random, seen: Counter[str]) -> None:
    """Feed WebSocket bytes to `side`'s frame reader in pieces; decode each message it yields."""
    reader = ws.FrameReader(masked=side == "broker", max_message=handshake.MAX_MESSAGE)
    first = rng.random() < 0.2
    at = 0
    while at < len(data):
        step = rng.randint(1, len(data) - at) if rng.random() < 0.5 else len(data) - at
        for event in reader.feed(data[at : at + step]):
            if isinstance(event, ws.Message) and not event.text:
                read_message(event.data, side, first, seen)
                first = False
        at += step


def one(mutator: Mutator, seen: Counter[str]) -> tuple[bytes, Callable[[], None]]:
    """The next input and the call that reads it (counting what it decodes in `seen`)."""
    rng = mutator.rng
    side = rng.choice(SIDES)
    if rng.random() < 0.5:
        data = mutator.message()
        first = rng.random() < 0.2
        return data, lambda: read_message(data, side, first, seen)
    data = mutator.stream(side)
    return data, lambda: read_stream(data, side, rng, seen)


# ---------------------------------------------------------------------------
# The run


@dataclass
class Report:
    """What a run saw."""

    inputs: int = 0
    seconds: float = 0.0
    refusals: Counter[str] = field(default_factory=Counter)
    """Each distinct expected error (particulars blanked, see `_kind`), and how often."""
    seen: Counter[str] = field(default_factory=Counter)
    """Inputs read without a refusal, frames decoded, and frames not re-encoded."""
    failures: list[str] = field(default_factory=list)
    """Each unexpected exception, broken invariant or hang, with its input."""


GRACE: Final = 10.0
"""Seconds an interrupted input has to stop before the watchdog ends the process."""


class Watchdog:
    """Interrupts the main thread when one input runs longer than `timeout`; ends the process
    when even that does not stop it (a hang inside C code)."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.started = time.monotonic()
        self.busy = False
        self.fired = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="fuzz-watchdog", daemon=True)

    def __enter__(self) -> Watchdog:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _watch(self) -> None:
        while not self._stop.wait(min(self.timeout / 4, 0.25)):
            if not self.busy or time.monotonic() - self.started < self.timeout:
                continue
            self.fired = True
            started = self.started
            _thread.interrupt_main()
            # Generous, so a loaded machine's slow answer to the interrupt is not taken for it.
            grace = max(self.timeout, GRACE)
            if self._stop.wait(grace) or self.started != started:
                continue
            ran = self.timeout + grace
            sys.stderr.write(f"fuzz: an input ran {ran:.0f} s and would not stop\n")
            os._exit(3)


Source = Callable[[Mutator, Counter[str]], tuple[bytes, Callable[[], None]]]
"""Where inputs come from: `one`, or a test's own."""


def run(inputs: int, seed: int, timeout: float = 2.0, source: Source = one) -> Report:
    """Read `inputs` mutated inputs from seed `seed`; what was refused and what failed."""
    report = Report()
    check_seeds(report)
    mutator = Mutator(random.Random(seed), seed_messages())
    begin = time.perf_counter()
    data = b""
    dog = Watchdog(timeout)
    try:
        with dog:
            for _ in range(inputs):
                data, read = source(mutator, report.seen)
                dog.started = time.monotonic()
                dog.busy = True
                _read_one(data, read, report)
                dog.busy = False
                report.inputs += 1
    except KeyboardInterrupt:
        # The watchdog's interrupt may land just after the slow input returned, even while
        # the watchdog is being stopped: still it, wherever it lands in this block.
        if not dog.fired:
            raise
        report.failures.append(f"hang (over {timeout} s) on {_shown(data)}")
    report.seconds = time.perf_counter() - begin
    return report


def _read_one(data: bytes, read: Callable[[], None], report: Report) -> None:
    try:
        read()
    except EXPECTED as exc:
        report.refusals[_kind(exc)] += 1
    except Exception:
        report.failures.append(f"{traceback.format_exc()}input: {_shown(data)}")
    else:
        report.seen["inputs read without a refusal"] += 1


def check_seeds(report: Report) -> None:
    """Every seed frame round-trips through the codec and through WebSocket framing."""
    for frame in seed_frames():
        for masked in (True, False):
            data = p.encode(frame)
            reader = ws.FrameReader(masked=masked, max_message=handshake.MAX_MESSAGE)
            wire = ws.encode_frame(ws.OP_BINARY, data, mask=masked)
            events = [e for b in _bytes_of(wire) for e in reader.feed(b)]
            if events != [ws.Message(data)] or p.decode(data) != [frame]:
                report.failures.append(f"seed {frame!r} did not round-trip: {events!r}")


def _bytes_of(data: bytes) -> Iterator[bytes]:
    """The data one byte at a time, the hardest split for a reader."""
    for i in range(len(data)):
        yield data[i : i + 1]


def _kind(exc: BaseException) -> str:
    """The error's type and text with its particulars (numbers, bytes, names) blanked."""
    text = re.sub(r"0x[0-9a-fA-F]+|[0-9]+", "N", str(exc))
    text = re.sub(r"header '.*' is", "header '...' is", text)
    text = re.sub(r"codec can't decode.*", "codec can't decode", text)
    return f"{type(exc).__name__}: {text[:90]}"


def _shown(data: bytes) -> str:
    return data[:512].hex() + ("..." if len(data) > 512 else "")


def main(argv: list[str] | None = None) -> int:
    """Run the fuzzer from the command line; exit 1 on any failure."""
    parser = argparse.ArgumentParser(prog="python -m bench.fuzz", description=__doc__)
    parser.add_argument("--inputs", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=2.0, help="seconds one input may take")
    args = parser.parse_args(argv)
    report = run(args.inputs, args.seed, args.timeout)
    rate = report.inputs / report.seconds if report.seconds else 0.0
    took = f"{report.seconds:.1f} s ({rate:,.0f} inputs/s)"
    print(f"{report.inputs} inputs in {took}, seed {args.seed}")
    for what, count in sorted(report.seen.items()):
        print(f"{count:>11}  {what}")
    print(f"{len(report.refusals)} distinct refusals (the protocol's own errors):")
    for kind, count in report.refusals.most_common():
        print(f"  {count:>9}  {kind}")
    for failure in report.failures:
        print(f"FAILURE: {failure}")
    print(f"{len(report.failures)} failures")
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
