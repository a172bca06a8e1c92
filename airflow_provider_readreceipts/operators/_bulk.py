"""
The engine behind the bulk mark-read operators: many calls over one hook, concurrently, within a rate limit.

Three parts, each usable alone:

- :class:`SlidingWindowRateLimiter`: at most ``limit`` requests in any ``period`` seconds, counted the
  way a vendor counts them (by arrival), whatever the latency.
- :func:`rate_limit_session`: puts a limiter in front of every HTTP request of a ``requests`` session,
  retries of the hook included, since each retry counts against the vendor's limit too.
- :func:`run_bulk`: runs the calls in a thread pool and reports each item's outcome.

Why a limiter written here rather than a library: the well-kept ones (``limits``' moving window,
``pyrate-limiter``'s buckets) count a request when it is *admitted*. A vendor counts it when it
*arrives*, up to one network latency later, so two admissions 60.0 s apart can arrive less than 60 s
apart and a window at the vendor can hold more than ``limit``. This limiter instead counts a request
from its admission until ``period`` seconds after its response, which bounds every window at the
vendor exactly (see :class:`SlidingWindowRateLimiter`). It is forty lines with no dependency.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypedDict

from airflow_provider_readreceipts.receipts import InvalidInputError, VendorAPIError

if TYPE_CHECKING:
    import logging

    import requests

#: Per-item outcomes in a bulk report.
READ = "read"
FAILED = "failed"
INVALID = "invalid"

#: Failures named in a task's error message; the report and the log list all of them.
_FAILURES_IN_MESSAGE = 20
#: Failures logged one by one before the log only counts them.
_FAILURES_LOGGED = 100
#: Shortest wait the limiter asks for, in seconds.
_MIN_WAIT = 0.001
#: Longest error text kept per item, so a report of thousands of failures stays a small XCom.
_ERROR_CHARS = 300


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


@dataclass(frozen=True)
class BulkItem:
    """
    One call of a bulk run.

    :param target: how reports name the item (a number, a chat id, a message id).
    :param argument: where the item came from, e.g. ``numbers[17]``, for input errors.
    :param call: the hook call; raises on failure.
    :param field: the hook argument the whole item is passed as (``number``); an input error about
        another field (``sender``) is reported as ``numbers[17].sender``.
    """

    target: str
    argument: str
    call: Callable[[], object]
    field: str = ""


class BulkFailure(TypedDict):
    """One item that was not marked read."""

    target: str
    #: :data:`FAILED` (the vendor refused or could not be reached) or :data:`INVALID` (bad input,
    #: refused before any HTTP call).
    outcome: str
    error: str


class BulkReport(TypedDict):
    """What a bulk operator pushes to XCom: counts, and every item that was not marked read."""

    vendor: str
    conn_id: str
    total: int
    read: int
    failed: int
    invalid: int
    failures: list[BulkFailure]


def invalid_item(*, argument: str, target: str, error: InvalidInputError, field: str = "") -> BulkFailure:
    """
    A failure for an item whose input is unusable, naming where it came from: ``numbers[3]: ...``,
    or ``chats[3].sender: ...`` when the problem is in one field of a mapping item.
    """
    where = argument if error.field in ("", argument, field) else f"{argument}.{error.field}"
    return {"target": target, "outcome": INVALID, "error": f"{where}: {error.problem}"[:_ERROR_CHARS]}


def _run_one(item: BulkItem) -> BulkFailure | None:
    try:
        item.call()
    except InvalidInputError as exc:
        return invalid_item(argument=item.argument, target=item.target, error=exc, field=item.field)
    except VendorAPIError as exc:
        return {"target": item.target, "outcome": FAILED, "error": str(exc)[:_ERROR_CHARS]}
    except Exception as exc:
        # Not the vendor's answer (a bug, an unreadable response): counted as a failure of this item
        # rather than aborting the other thousands; the threshold still fails the task.
        error = f"{type(exc).__name__}: {exc}"[:_ERROR_CHARS]
        return {"target": item.target, "outcome": FAILED, "error": error}
    return None


def run_bulk(
    items: Sequence[BulkItem],
    *,
    vendor: str,
    conn_id: str,
    workers: int,
    log: logging.Logger | Any,
    rejected: Sequence[BulkFailure] = (),
) -> BulkReport:
    """
    Run every item's call on a pool of ``workers`` threads and report the outcomes.

    :param items: the calls; they share one hook (one session), which must be ready (connection
        loaded, session built) before this starts, so the threads do not race to build it.
    :param rejected: items refused before the run (unusable input), counted in the report.
    """
    started = time.monotonic()
    failures: list[BulkFailure] = list(rejected)
    if items:
        with ThreadPoolExecutor(
            max_workers=max(1, min(workers, len(items))), thread_name_prefix="bulk"
        ) as pool:
            failures.extend(failure for failure in pool.map(_run_one, items) if failure is not None)
    elapsed = time.monotonic() - started

    invalid = sum(1 for failure in failures if failure["outcome"] == INVALID)
    total = len(items) + len(rejected)
    report: BulkReport = {
        "vendor": vendor,
        "conn_id": conn_id,
        "total": total,
        "read": total - len(failures),
        "failed": len(failures) - invalid,
        "invalid": invalid,
        "failures": failures,
    }
    for failure in failures[:_FAILURES_LOGGED]:
        log.warning("Not marked read: %s (%s): %s", failure["target"], failure["outcome"], failure["error"])
    if len(failures) > _FAILURES_LOGGED:
        log.warning(
            "... and %d more not marked read (all in the XCom report)", len(failures) - _FAILURES_LOGGED
        )
    log.info(
        "Marked %d of %d read in %.1fs (%d failed, %d invalid)",
        report["read"],
        total,
        elapsed,
        report["failed"],
        report["invalid"],
    )
    return report


def threshold_exceeded(
    report: Mapping[str, Any], *, max_failures: int | None, max_failure_rate: float | None
) -> str | None:
    """Why the failures in ``report`` fail the task, or ``None`` when they stay within the threshold."""
    bad = report["failed"] + report["invalid"]
    if max_failures is not None and bad > max_failures:
        return f"more than max_failures={max_failures}"
    total = report["total"]
    if max_failure_rate is not None and total and bad / total > max_failure_rate:
        return f"{bad / total:.1%} of the items, more than max_failure_rate={max_failure_rate:g}"
    return None


def describe_failures(report: BulkReport, reason: str) -> str:
    """The task's error message: counts, the threshold passed, and the failed items by name."""
    failures = report["failures"]
    named = "; ".join(f"{f['target'] or '?'} ({f['error']})" for f in failures[:_FAILURES_IN_MESSAGE])
    more = len(failures) - _FAILURES_IN_MESSAGE
    tail = f"; and {more} more (the XCom 'report' of this task lists them all)" if more > 0 else ""
    return (
        f"{len(failures)} of {report['total']} could not be marked read "
        f"({report['failed']} failed, {report['invalid']} invalid), {reason}. Not marked read: {named}{tail}"
    )
