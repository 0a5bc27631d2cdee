"""Which models are served right now, and which were served lately (404 against 503).

The hub tells it what each connector stops and starts serving; it counts the connectors per
model, remembers when each model was first seen, and forgets a model nobody has served for
`forget_after` seconds (or the oldest beyond `remember_at_most`). Pure state: no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Final

FORGET_AFTER: Final = 3600.0
"""Seconds a model no connector serves any more is remembered (404 vs 503, see `knows`)."""

REMEMBER_AT_MOST: Final = 10_000
"""Models no connector serves that are remembered at most; the oldest are forgotten first."""


class ModelBook:
    """The models served now (with how many connectors serve each) and those remembered."""

    __slots__ = (
        "_clock",
        "_first_seen",
        "_forget_after",
        "_left",
        "_on_forget",
        "_remember",
        "served",
    )

    def __init__(
        self,
        clock: Callable[[], float],
        forget_after: float = FORGET_AFTER,
        remember_at_most: int = REMEMBER_AT_MOST,
        on_forget: Callable[[str], None] | None = None,
    ) -> None:
        self._clock = clock
        self._forget_after = forget_after
        self._remember = remember_at_most
        self._on_forget = on_forget
        """Told each model forgotten (the metrics free its label)."""
        self.served: dict[str, int] = {}
        """Each model served right now, with how many connectors serve it."""
        self._first_seen: dict[str, float] = {}
        """Every model remembered (served, or left less than `forget_after` ago): first seen."""
        self._left: dict[str, float] = {}
        """Models no connector serves, with when the last one stopped: oldest first."""

    def change(self, started: Iterable[str], stopped: Iterable[str]) -> None:
        """One connector started serving `started` and stopped serving `stopped`."""
        now = self._clock()
        self._forget(now)  # a model back after the window is seen anew
        served, left = self.served, self._left
        for model in started:
            count = served.get(model, 0)
            served[model] = count + 1
            if not count:
                left.pop(model, None)
                self._first_seen.setdefault(model, now)
        for model in stopped:
            count = served[model] - 1
            if count:
                served[model] = count
            else:
                del served[model]
                left[model] = now
        self._forget(now)

    def _forget(self, now: float) -> None:
        """Forget models nobody served for `forget_after` s, and the oldest past the cap."""
        left = self._left
        while left:
            model, since = next(iter(left.items()))
            if now - since < self._forget_after and len(left) <= self._remember:
                return
            del left[model]
            del self._first_seen[model]
            if self._on_forget is not None:
                self._on_forget(model)

    def listed(self, models: Iterable[str]) -> dict[str, float]:
        """Those of `models` served right now, sorted, with the time each was first seen."""
        first_seen, served = self._first_seen, self.served
        return {m: first_seen[m] for m in sorted(models) if m in served}

    def first_seen(self, model: str) -> float | None:
        """When `model`, served right now, was first seen; None when no connector serves it."""
        return self._first_seen.get(model) if model in self.served else None

    def knows(self, model: str) -> bool:
        """Whether some connector serves `model`, or served it less than `forget_after` s ago.

        A known model is worth waiting for (its connector may be reconnecting: 503 after the
        wait); an unknown one is answered 404 while other connectors are online.
        """
        if model in self.served:
            return True
        self._forget(self._clock())
        return model in self._first_seen

    def remembered(self) -> int:
        """How many model names are held: served ones and those still remembered."""
        return len(self._first_seen)
