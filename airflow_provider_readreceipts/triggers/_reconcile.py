"""
Reconcile for the shared poller: vendor status look-ups, one budget per vendor connection.

A wait asks the vendor's status API for lost webhooks and for vendors (Chert) whose reads are only
visible that way. Every wait on one message shares one :class:`ReconcileKey`; every message of one
connection shares one :class:`ConnectionBudget`, which serves the nearest deadline first and keeps
within a rate limit (the vendor registry's default, or the wait's own). What a look-up learns is
recorded in the store, so that every wait on the message, in this process or another, learns it
from there exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from airflow_provider_readreceipts.vendors import SPECS
from airflow_provider_readreceipts.waits import FAULT_CONFIGURATION, ReadReceiptWaitError

if TYPE_CHECKING:
    from airflow_provider_readreceipts.hooks.base import ReadReceiptsHook
    from airflow_provider_readreceipts.store import AsyncReceiptStore

log = logging.getLogger(__name__)

Key = tuple[str, str]

#: Reconcile calls a minute per connection when neither the wait nor the vendor registry says.
FALLBACK_RECONCILE_RATE_PER_MINUTE = 30.0
#: Concurrent reconcile calls per connection, whatever the rate allows.
MAX_RECONCILE_IN_FLIGHT = 4
#: Seconds a reconcile call may take.
RECONCILE_TIMEOUT = 30.0
#: Pause of a connection's budget after a 429 without Retry-After.
DEFAULT_RATE_LIMIT_PAUSE = 60.0


def default_reconcile_rate(vendor: str) -> float:
    """Reconcile calls a minute per connection of ``vendor`` by default (the vendor registry's)."""
    spec = SPECS.get(vendor)
    return spec.reconcile_rate_per_minute if spec is not None else FALLBACK_RECONCILE_RATE_PER_MINUTE


class ReconciledWait(Protocol):
    """What reconcile needs of a wait."""

    @property
    def deadline(self) -> float: ...

    @property
    def reconcile_interval(self) -> float | None: ...


class ReconcileOwner(Protocol):
    """What a budget reports to: the poller."""

    reconcile_calls: int

    @property
    def store(self) -> AsyncReceiptStore: ...

    def reconciled(self, state: ReconcileKey, retry_in: float | None) -> None:
        """A look-up of ``state`` ended; look again in ``retry_in`` seconds (default: its interval)."""

    def fail_connection(self, conn_id: str, fault: ReadReceiptWaitError) -> None:
        """The connection cannot be reconciled: fail the waits that rely on it."""


@dataclass(eq=False)
class ReconcileKey:
    """Reconcile state of one message, shared by every wait on it."""

    key: Key
    vendor: str
    chat: str
    waits: set[Any] = field(default_factory=set)
    next_due: float = 0.0
    queued: bool = False
    in_flight: bool = False
    ever_succeeded: bool = False
    last_started: float | None = None
    last_finished: float | None = None
    last_error: str | None = None

    @property
    def interval(self) -> float:
        return min(w.reconcile_interval for w in self.waits if w.reconcile_interval)

    @property
    def nearest_deadline(self) -> float:
        return min((w.deadline for w in self.waits), default=float("inf"))

    def final_done(self, deadline: float) -> bool:
        """Whether a vendor look-up that started at or after ``deadline`` has been recorded."""
        return (
            self.last_started is not None
            and self.last_started >= deadline
            and self.last_finished is not None
            and self.last_finished >= self.last_started
        )


class ConnectionBudget:
    """
    Reconcile calls of one vendor connection: nearest deadline first, within a rate limit.

    A token bucket refilled at ``rate`` calls a second (burst of one second's worth, at least one),
    a priority queue ordered by the nearest deadline of the waits on each message, at most
    :data:`MAX_RECONCILE_IN_FLIGHT` calls at once, and a pause when the vendor answers 429.
    """

    def __init__(self, poller: ReconcileOwner, conn_id: str, vendor: str, rate_per_minute: float) -> None:
        self.poller = poller
        self.conn_id = conn_id
        self.vendor = vendor
        self.rate = rate_per_minute / 60.0
        self.capacity = max(1.0, self.rate)
        self.tokens = self.capacity
        self.refilled_at = time.monotonic()
        self.paused_until = 0.0
        self.queue: list[tuple[float, int, ReconcileKey]] = []
        self.calls = 0
        self._counter = itertools.count()
        self._wake = asyncio.Event()
        self._in_flight: set[asyncio.Task[None]] = set()
        self._hook: ReadReceiptsHook | None = None
        self._task: asyncio.Task[None] | None = None
        self.fault: ReadReceiptWaitError | None = None

    def limit_rate(self, rate_per_minute: float) -> None:
        # Two waits asking for different limits on one connection: the stricter one holds.
        self.rate = min(self.rate, rate_per_minute / 60.0)
        self.capacity = max(1.0, self.rate)
        self.tokens = min(self.tokens, self.capacity)

    def enqueue(self, state: ReconcileKey) -> None:
        if state.queued or state.in_flight or not state.waits:
            return
        state.queued = True
        heapq.heappush(self.queue, (state.nearest_deadline, next(self._counter), state))
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"readreceipts-reconcile-{self.conn_id}"
            )
        self._wake.set()

    def _refill(self) -> None:
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.refilled_at) * self.rate)
        self.refilled_at = now

    async def _run(self) -> None:
        while True:
            if not self.queue or len(self._in_flight) >= MAX_RECONCILE_IN_FLIGHT:
                self._wake.clear()
                await self._wake.wait()
                continue
            pause = self.paused_until - time.monotonic()
            if pause > 0:
                await asyncio.sleep(pause)
                continue
            self._refill()
            if self.tokens < 1.0:
                await asyncio.sleep((1.0 - self.tokens) / self.rate)
                continue
            _, _, state = heapq.heappop(self.queue)
            state.queued = False
            if not state.waits:
                continue  # every wait on it ended while it was queued
            self.tokens -= 1.0
            state.in_flight = True
            task = asyncio.get_running_loop().create_task(self._call(state))
            self._in_flight.add(task)
            task.add_done_callback(self._call_done)

    def _call_done(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        self._wake.set()

    async def _hook_instance(self) -> ReadReceiptsHook:
        if self._hook is None:
            from airflow_provider_readreceipts.hooks import hook_for

            # One attempt per call: the budget decides when to try again, not the hook's backoff.
            self._hook = hook_for(self.conn_id, self.vendor, max_attempts=1, timeout=RECONCILE_TIMEOUT)
        return self._hook

    async def _call(self, state: ReconcileKey) -> None:
        from airflow.sdk.exceptions import AirflowNotFoundException

        from airflow_provider_readreceipts.receipts import InvalidInputError, VendorAPIError

        started = time.time()
        state.last_started = started
        retry_in: float | None = None
        try:
            hook = await self._hook_instance()
            events = await asyncio.wait_for(
                hook.afetch_receipt_events(message_id=state.key[1], chat=state.chat),
                timeout=RECONCILE_TIMEOUT * 2,
            )
            self.calls += 1
            self.poller.reconcile_calls += 1
            # Recorded in the store, not kept here: every wait on the message, in any process,
            # learns it from the store exactly once, and the dedup key keeps repeats out.
            events = [event for event in events if event.message_id == state.key[1]]
            if events:
                await self.poller.store.record(events, source="reconcile")
            state.ever_succeeded = True
            state.last_error = None
        except asyncio.CancelledError:
            state.last_started = None
            raise
        except VendorAPIError as exc:
            self.calls += 1
            self.poller.reconcile_calls += 1
            state.last_error = str(exc)
            if exc.status_code in (401, 403):
                self._fail_connection(
                    f"the vendor refused the credentials of connection {self.conn_id!r}: {exc}"
                )
            elif exc.status_code == 429:
                self.paused_until = time.monotonic() + (exc.retry_after or DEFAULT_RATE_LIMIT_PAUSE)
                log.warning(
                    "%s: rate limited; reconcile paused for %.0fs", self.conn_id, exc.retry_after or 60
                )
            elif exc.retryable and state.waits:
                retry_in = min(state.interval, max(exc.retry_after or 0.0, 5.0))
            log.warning("reconcile of %s/%s failed: %s", *state.key, exc)
        except (InvalidInputError, KeyError, AirflowNotFoundException) as exc:
            # Not a vendor connection type, a connection that does not exist or lacks what the
            # vendor needs: configuration, which no later attempt fixes.
            state.last_error = str(exc)
            self._fail_connection(f"reconcile is not possible on connection {self.conn_id!r}: {exc}")
        except Exception as exc:
            state.last_error = f"{type(exc).__name__}: {exc}"
            log.warning("reconcile of %s/%s failed: %s", *state.key, state.last_error)
        finally:
            state.in_flight = False
            state.last_finished = time.time()
        self.poller.reconciled(state, retry_in)

    def _fail_connection(self, message: str) -> None:
        self.fault = ReadReceiptWaitError(FAULT_CONFIGURATION, message)
        self.poller.fail_connection(self.conn_id, self.fault)

    async def close(self) -> None:
        tasks = [t for t in (self._task, *self._in_flight) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._hook is not None:
            with contextlib.suppress(Exception):
                await self._hook.aclose()
