"""Capped exponential back-off with jitter.

    backoff = Backoff(initial_s=0.1, max_s=10.0, jitter=0.5)
    while True:
        try:
            await connect()
        except OSError:
            await asyncio.sleep(backoff.next_delay())
            continue
        backoff.reset()
        break
"""

from __future__ import annotations

import random

__all__ = ["Backoff"]


class Backoff:
    """Delays of ``initial_s * multiplier**attempt``, capped at ``max_s``.

    ``jitter`` is the fraction (0..1) that is randomly removed from each delay:
    a delay ``d`` becomes uniform in ``[d * (1 - jitter), d]``, so a delay never
    exceeds ``max_s`` and many clients restarting together spread out.
    """

    __slots__ = ("initial_s", "max_s", "multiplier", "jitter", "_attempt", "_random")

    def __init__(
        self,
        initial_s: float = 0.1,
        max_s: float = 10.0,
        jitter: float = 0.5,
        multiplier: float = 2.0,
        rng: random.Random | None = None,
    ) -> None:
        if initial_s <= 0:
            raise ValueError(f"initial_s must be > 0, got {initial_s!r}")
        if max_s < initial_s:
            raise ValueError(f"max_s must be >= initial_s ({initial_s!r}), got {max_s!r}")
        if not 0.0 <= jitter <= 1.0:
            raise ValueError(f"jitter must be within 0..1, got {jitter!r}")
        if multiplier < 1.0:
            raise ValueError(f"multiplier must be >= 1, got {multiplier!r}")
        self.initial_s = initial_s
        self.max_s = max_s
        self.multiplier = multiplier
        self.jitter = jitter
        self._attempt = 0
        self._random = rng.random if rng is not None else random.random

    @property
    def attempts(self) -> int:
        """How many delays were handed out since the last reset()."""
        return self._attempt

    def next_delay(self) -> float:
        """The delay to wait before the next attempt; grows until max_s."""
        # Cap the exponent so huge attempt counts cannot overflow a float.
        exponent = min(self._attempt, 64)
        try:
            delay = min(self.max_s, self.initial_s * self.multiplier**exponent)
        except OverflowError:
            delay = self.max_s
        self._attempt += 1
        if self.jitter:
            delay *= 1.0 - self.jitter * self._random()
        return delay

    def reset(self) -> None:
        """Call after a success: the next delay starts again at initial_s."""
        self._attempt = 0
