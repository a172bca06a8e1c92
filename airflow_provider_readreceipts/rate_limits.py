"""
Request budgets: at most so many requests in any window, counted the way a vendor counts them, and
one budget per vendor token in a process, shared by everything that calls the vendor there.

- :class:`SlidingWindowRateLimiter`: at most ``limit`` requests in any ``period`` seconds, counted
  by arrival at the vendor, whatever the latency. For threads, and for the event loop
  (:meth:`SlidingWindowRateLimiter.aslot`).
- :func:`shared_budget`: the one limiter of a vendor token in this process. Bulk mark-read and
  bulk send operators, campaign calls and the waits' reconcile in one process (a worker running a
  bulk task, a triggerer, ``dag.test()`` doing both) all draw from it, so that together they never
  exceed the vendor's limit; its size is the vendor registry's documented default
  (:attr:`~airflow_provider_readreceipts.vendors.VendorSpec.rate_limit`), or the stricter of the
  limits the callers ask for.
- :func:`rate_limit_session`: puts a limiter in front of every request of a ``requests`` session,
  retries included, since each retry counts against the vendor's limit too.

Why a limiter written here rather than a library: the well-kept ones (``limits``' moving window,
``pyrate-limiter``'s buckets) count a request when it is *admitted*. A vendor counts it when it
*arrives*, up to one network latency later, so two admissions 60.0 s apart can arrive less than 60 s
apart and a window at the vendor can hold more than ``limit``. This limiter instead counts a request
from its admission until ``period`` seconds after its response, which bounds every window at the
vendor exactly. It is a few dozen lines with no dependency.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import requests

#: Shortest wait the limiter asks for, in seconds.
_MIN_WAIT = 0.001
#: How often an async caller looks again while every slot is held by a request in flight.
_ASYNC_RECHECK = 0.05


class SlidingWindowRateLimiter:
    """
    At most ``limit`` requests in any ``period``-second window, as the vendor sees them.

    A request holds a slot from the moment it is admitted until ``period`` seconds after it
    finished. A new request is admitted only while fewer than ``limit`` slots are held. So if the
    vendor ever saw ``limit + 1`` requests inside one window ``[x, x + period)``, take the one
    admitted last, at ``s``: each of the others was admitted before ``s`` and arrived, hence
    finished, at or after ``x > s - period``, so all ``limit`` of them still held their slot at
    ``s`` and it could not have been admitted. Latency costs throughput (a slot is held for
    ``period`` plus the request's duration), never correctness.

    Thread-safe; one instance per connection (vendors count per token or account).

    :param limit: requests allowed per window.
    :param period: the window, in seconds.
    :param clock: monotonic seconds; tests pass a fake clock.
    """

    def __init__(
        self, limit: int, period: float = 60.0, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit!r}")
        if period <= 0:
            raise ValueError(f"period must be positive, not {period!r}")
        self.limit = limit
        self.period = period
        self._clock = clock
        self._changed = threading.Condition()
        self._in_flight = 0
        #: Finish times of completed requests still inside the window, oldest first.
        self._finished: deque[float] = deque()

    def __repr__(self) -> str:
        return f"<SlidingWindowRateLimiter {self.limit} per {self.period:g}s>"

    def try_acquire(self) -> float | None:
        """
        Take a slot if one is free and return ``0.0``; otherwise take nothing and return the seconds
        until one frees up, or ``None`` when every slot is held by a request still in flight (one
        frees up ``period`` seconds after it finishes).
        """
        with self._changed:
            return self._try_acquire()

    def _try_acquire(self) -> float | None:
        now = self._clock()
        while self._finished and self._finished[0] <= now - self.period:
            self._finished.popleft()
        if self._in_flight + len(self._finished) < self.limit:
            self._in_flight += 1
            return 0.0
        if self._finished:
            # Never 0.0 (which means "admitted"): float rounding can put the expiry a hair past now.
            return max(self._finished[0] + self.period - now, _MIN_WAIT)
        return None

    def acquire(self) -> None:
        """Block until a slot is free, then take it."""
        with self._changed:
            while (wait := self._try_acquire()) != 0.0:
                # None: all slots are in flight; a release will say when the first one frees up.
                self._changed.wait(wait)

    def release(self) -> None:
        """Give back a slot when its request has finished; it stays counted for ``period`` seconds."""
        with self._changed:
            self._in_flight -= 1
            self._finished.append(self._clock())
            self._changed.notify_all()

    @contextmanager
    def slot(self) -> Iterator[None]:
        """Hold a slot for the duration of one request."""
        self.acquire()
        try:
            yield
        finally:
            self.release()

    @asynccontextmanager
    async def aslot(self) -> AsyncIterator[None]:
        """:meth:`slot` for the event loop: waits with ``asyncio.sleep``, never blocking the loop."""
        while (wait := self.try_acquire()) != 0.0:
            await asyncio.sleep(_ASYNC_RECHECK if wait is None else wait)
        try:
            yield
        finally:
            self.release()

    def narrow(self, limit: int, period: float) -> None:
        """
        Keep to ``limit`` requests per ``period`` too, if that is stricter (two callers asking for
        different limits on one token: the stricter holds).
        """
        if limit < 1 or period <= 0:
            raise ValueError(f"a rate limit needs limit >= 1 and period > 0, not {limit!r} per {period!r}")
        with self._changed:
            if limit / period < self.limit / self.period:
                self.limit, self.period = limit, period


def rate_limit_session(session: requests.Session, limiter: SlidingWindowRateLimiter) -> None:
    """
    Make every request sent through ``session`` wait for ``limiter``.

    The limiter sits at the transport adapter, below the hook's retry loop: a retried request is a
    new request at the vendor and takes a new slot.
    """
    from requests.adapters import BaseAdapter

    class RateLimitedAdapter(BaseAdapter):
        def __init__(self, inner: BaseAdapter) -> None:
            super().__init__()
            self.inner = inner

        def send(self, request: Any, *args: Any, **kwargs: Any) -> Any:
            with limiter.slot():
                return self.inner.send(request, *args, **kwargs)

        def close(self) -> None:
            self.inner.close()

    for prefix, adapter in list(session.adapters.items()):
        if not isinstance(adapter, RateLimitedAdapter):
            session.mount(prefix, RateLimitedAdapter(adapter))


_BUDGETS: dict[tuple[str, str], SlidingWindowRateLimiter] = {}
_BUDGETS_LOCK = threading.Lock()


def token_fingerprint(*secrets: str | None) -> str:
    """A short, one-way name for a vendor token (vendors count requests per token, not per connection)."""
    digest = hashlib.sha256("\x00".join(secret or "" for secret in secrets).encode()).hexdigest()
    return digest[:16]


def shared_budget(
    vendor: str, token: str, *, limit: int | None = None, period: float | None = None
) -> SlidingWindowRateLimiter:
    """
    The request budget of one vendor token in this process, made on first use.

    :param vendor: the vendor's connection type.
    :param token: :func:`token_fingerprint` of the token's credentials.
    :param limit: requests allowed per ``period``; default the vendor registry's rate limit. A
        stricter limit than the budget has narrows it for every caller.
    :param period: the window, in seconds (default the registry's).
    """
    from airflow_provider_readreceipts.vendors import spec_for

    default = spec_for(vendor).rate_limit
    wanted_limit = default.requests if limit is None else limit
    wanted_period = default.period if period is None else period
    with _BUDGETS_LOCK:
        budget = _BUDGETS.get((vendor, token))
        if budget is None:
            budget = _BUDGETS[(vendor, token)] = SlidingWindowRateLimiter(wanted_limit, wanted_period)
        else:
            budget.narrow(wanted_limit, wanted_period)
    return budget


def forget_budgets() -> None:
    """Drop every shared budget (tests; a process that changed its vendor plan)."""
    with _BUDGETS_LOCK:
        _BUDGETS.clear()
