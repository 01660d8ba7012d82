"""Capped exponential back-off with jitter, and retrying a call until a deadline.

    backoff = Backoff(initial_s=0.1, max_s=10.0, jitter=0.5)
    while True:
        try:
            await connect()
        except OSError:
            await asyncio.sleep(backoff.next_delay())
            continue
        backoff.reset()
        break

    result = await retry_until(send, retry_on=(OSError,), backoff=backoff,
                               deadline=lambda: stop_deadline, on_retry=log_it)

    # at start: wait up to 60 s for a server, then give up (DeadlinePassed)
    await retry_for(60.0, ping, retry_on=(OSError,), on_retry=log_it)
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

__all__ = ["Backoff", "DeadlinePassed", "retry_for", "retry_until", "retry_until_sync"]

T = TypeVar("T")


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


class DeadlinePassed(Exception):
    """retry_until gave up: waiting for the next attempt would pass the deadline. The last
    failure is the ``__cause__``."""


async def retry_until(
    attempt: Callable[[], Awaitable[T]],
    *,
    retry_on: tuple[type[BaseException], ...],
    backoff: Backoff,
    deadline: Callable[[], float | None] = lambda: None,
    on_retry: Callable[[BaseException, float], None] | None = None,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
) -> T:
    """Await ``attempt()`` until it returns, waiting ``backoff.next_delay()`` after each failure
    of a type in ``retry_on`` (other exceptions propagate at once).

    ``deadline()`` is read after each failure: a ``time.monotonic()`` instant past which no wait
    may end (None: no deadline; it may appear later, e.g. once a stop is requested). When the
    next wait would pass it, DeadlinePassed is raised from the failure. ``on_retry(exc, delay)``
    runs before each wait (count, log). The back-off is not reset on success: the caller can
    read ``backoff.attempts`` to log a recovery, then reset it.
    """
    while True:
        try:
            return await attempt()
        except retry_on as exc:
            delay = _wait_before_retry(exc, backoff, deadline, on_retry)
            await sleep(delay)


async def retry_for(
    wait_s: float,
    attempt: Callable[[], Awaitable[T]],
    *,
    retry_on: tuple[type[BaseException], ...],
    backoff: Backoff | None = None,
    on_retry: Callable[[BaseException, float], None] | None = None,
) -> T:
    """retry_until with a deadline ``wait_s`` seconds from now: a command waiting at start for a
    server that is not up yet (0: one attempt, no wait). The default back-off starts at 0.5 s and
    grows to 5 s. DeadlinePassed (from the last failure) when the next wait would end past it."""
    deadline = time.monotonic() + wait_s
    return await retry_until(attempt, retry_on=retry_on, backoff=backoff or Backoff(initial_s=0.5, max_s=5.0, jitter=0.3),
                             deadline=lambda: deadline, on_retry=on_retry)


def retry_until_sync(
    attempt: Callable[[], T],
    *,
    retry_on: tuple[type[BaseException], ...],
    backoff: Backoff,
    deadline: Callable[[], float | None] = lambda: None,
    on_retry: Callable[[BaseException, float], None] | None = None,
    sleep: Callable[[float], object] = time.sleep,
) -> T:
    """retry_until for a plain function, in a thread of its own (sync-binlog's reader thread)."""
    while True:
        try:
            return attempt()
        except retry_on as exc:
            sleep(_wait_before_retry(exc, backoff, deadline, on_retry))


def _wait_before_retry(exc: BaseException, backoff: Backoff, deadline: Callable[[], float | None],
                       on_retry: Callable[[BaseException, float], None] | None) -> float:
    """The delay before the next attempt, or DeadlinePassed (from exc) when it would pass the deadline."""
    delay = backoff.next_delay()
    limit = deadline()
    if limit is not None and time.monotonic() + delay > limit:
        raise DeadlinePassed(f"gave up after {backoff.attempts} attempts") from exc
    if on_retry is not None:
        on_retry(exc, delay)
    return delay
