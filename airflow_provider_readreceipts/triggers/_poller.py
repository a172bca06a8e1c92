"""
One poller per receipt store and event loop, shared by every read wait in a triggerer process.

Airflow runs each deferred task's trigger as its own coroutine and offers no sharing between them.
A naive trigger would query the store once per wait per interval: 10,000 waits at a 5-second
interval are 2,000 queries a second. Here every :class:`~.read_receipt.ReadReceiptTrigger` of one
process registers its wait with the :class:`StorePoller` of its store, which:

* asks the store for the status of **all** waiting messages in one query per interval
  (:meth:`AsyncReceiptStore.statuses <airflow_provider_readreceipts.store.AsyncReceiptStore.statuses>`),
  and wakes only the waits whose message changed or whose deadline passed;
* on PostgreSQL, ``LISTEN``\\s on ``readreceipts`` (the store sends ``NOTIFY`` after each commit), so a
  READ reaches its wait within milliseconds instead of at the next interval;
* runs the vendor status API calls of reconcile through one budget per connection, which serves
  the nearest deadlines first and keeps within the vendor's rate limit, and records what it learns
  in the store, so that every wait on the message (in this process or any other) sees it once;
* enforces each wait's deadline itself: "unread" is only reported after a store query that started
  after the deadline (and, when reconcile is on, after a last look at the vendor's API), so a READ
  committed before the deadline is never missed.

Pollers are reference-counted: :func:`acquire_poller` and :func:`release_poller`; the last release
cancels the poller's tasks, closes the listener and the vendor sessions, and disposes the engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import json
import logging
import time
import weakref
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from airflow_provider_readreceipts.triggers._wait import (
    FAULT_CONFIGURATION,
    FAULT_INTERNAL,
    FAULT_NO_SOURCE,
    FAULT_STORE,
    OUTCOME_UNREAD,
    RECONCILE_ONLY_VENDORS,
    WaitFault,
    WaitPolicy,
    attribute,
    verdict,
)

if TYPE_CHECKING:
    from airflow_provider_readreceipts.hooks.base import ReadReceiptsHook
    from airflow_provider_readreceipts.store import AsyncReceiptStore

log = logging.getLogger(__name__)

Key = tuple[str, str]

#: Reconcile calls per minute per connection when the wait does not say. RyzeAPI documents 100 a
#: minute per token; the others publish no limit for status look-ups, so stay well below Sendblue's
#: historical one message a second per line.
DEFAULT_RECONCILE_RATE_PER_MINUTE: dict[str, float] = {
    "sendblue": 30.0,
    "chert": 30.0,
    "ryze": 90.0,
    "direct7": 30.0,
}
FALLBACK_RECONCILE_RATE_PER_MINUTE = 30.0
#: Concurrent reconcile calls per connection, whatever the rate allows.
MAX_RECONCILE_IN_FLIGHT = 4
#: How long after a deadline a wait may wait for its last vendor look-up before it is reported
#: unread anyway (a saturated budget must not hold thousands of expired waits for hours).
FINAL_RECONCILE_GRACE = 300.0
#: Fewest seconds between two store queries, however many NOTIFYs arrive: under a burst of
#: commits the poller still makes at most 1 / MIN_POLL_GAP queries a second.
MIN_POLL_GAP = 0.02
#: Wait before trying the PostgreSQL listener again after it failed or was lost.
LISTEN_RETRY = 30.0
#: Seconds the LISTEN connection may take to open before the poller polls without it.
LISTEN_CONNECT_TIMEOUT = 10.0
#: A store without any receiver heartbeat is asked again at most this often.
NO_RECEIVER_RECHECK = 10.0
#: After a NOTIFY, new events are read in pages of this size, at most this many pages; a larger
#: burst is left to the next sweep.
CHANGED_PAGE_SIZE, CHANGED_PAGES = 1000, 10
#: Backoff between failed store queries.
STORE_RETRY_MIN, STORE_RETRY_MAX = 0.5, 10.0
#: Seconds a reconcile call may take.
RECONCILE_TIMEOUT = 30.0
#: Pause of a connection's budget after a 429 without Retry-After.
DEFAULT_RATE_LIMIT_PAUSE = 60.0


@dataclass(frozen=True)
class WaitEnd:
    """How a wait ended: its outcome, the store's last view of the message, when that was read."""

    outcome: str
    status: Any
    checked_at: datetime
    note: str | None = None


@dataclass(eq=False)
class Wait:
    """
    One registered wait; the trigger awaits :attr:`future`.

    Timestamps are unix seconds (wall clock): deadlines are absolute times shared with the worker.
    """

    key: Key
    vendor: str
    chat: str
    policy: WaitPolicy
    deadline: float
    poll_interval: float
    reconcile_interval: float | None
    has_receiver: bool
    store_error_grace: float
    future: asyncio.Future[WaitEnd]
    fingerprint: tuple[Any, ...] | None = None
    status: Any = None

    @property
    def done(self) -> bool:
        return self.future.done()

    def finish(self, end: WaitEnd) -> None:
        if not self.future.done():
            self.future.set_result(end)

    def fail(self, fault: WaitFault) -> None:
        if not self.future.done():
            self.future.set_exception(fault)


@dataclass(eq=False)
class _ReconcileKey:
    """Reconcile state of one message, shared by every wait on it."""

    key: Key
    vendor: str
    chat: str
    waits: set[Wait] = field(default_factory=set)
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


class _ConnectionBudget:
    """
    Reconcile calls of one vendor connection: nearest deadline first, within a rate limit.

    A token bucket refilled at ``rate`` calls a second (burst of one second's worth, at least one),
    a priority queue ordered by the nearest deadline of the waits on each message, at most
    :data:`MAX_RECONCILE_IN_FLIGHT` calls at once, and a pause when the vendor answers 429.
    """

    def __init__(self, poller: StorePoller, conn_id: str, vendor: str, rate_per_minute: float) -> None:
        self.poller = poller
        self.conn_id = conn_id
        self.vendor = vendor
        self.rate = rate_per_minute / 60.0
        self.capacity = max(1.0, self.rate)
        self.tokens = self.capacity
        self.refilled_at = time.monotonic()
        self.paused_until = 0.0
        self.queue: list[tuple[float, int, _ReconcileKey]] = []
        self.calls = 0
        self._counter = itertools.count()
        self._wake = asyncio.Event()
        self._in_flight: set[asyncio.Task[None]] = set()
        self._hook: ReadReceiptsHook | None = None
        self._task: asyncio.Task[None] | None = None
        self.fault: WaitFault | None = None

    def limit_rate(self, rate_per_minute: float) -> None:
        # Two waits asking for different limits on one connection: the stricter one holds.
        self.rate = min(self.rate, rate_per_minute / 60.0)
        self.capacity = max(1.0, self.rate)
        self.tokens = min(self.tokens, self.capacity)

    def enqueue(self, state: _ReconcileKey) -> None:
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

    async def _call(self, state: _ReconcileKey) -> None:
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
        self.poller._reconciled(state, retry_in)

    def _fail_connection(self, message: str) -> None:
        self.fault = WaitFault(FAULT_CONFIGURATION, message)
        self.poller._fail_connection(self.conn_id, self.fault)

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


class StorePoller:
    """
    The shared poll loop of one receipt store in one event loop; see the module docstring.

    Get one with :func:`acquire_poller`, never directly.

    :param url: the store URL (with credentials; never logged).
    :param store_factory: builds the async store; tests and benchmarks pass their own.
    """

    def __init__(self, url: str, *, store_factory: Callable[[str], AsyncReceiptStore] | None = None) -> None:
        self.url = url
        self.refcount = 0
        self.closed = False
        #: Store status queries made (one per interval, whatever the number of waits).
        self.queries = 0
        self.failed_queries = 0
        self.notifications = 0
        self.reconcile_calls = 0
        self._store_factory = store_factory
        self._store: AsyncReceiptStore | None = None
        self._waits: dict[Key, set[Wait]] = {}
        self._intervals: Counter[float] = Counter()
        self._deadlines: list[tuple[float, int, Wait]] = []
        self._awaiting_final: set[Wait] = set()
        self._reconcile: dict[Key, _ReconcileKey] = {}
        self._reconcile_due: list[tuple[float, int, _ReconcileKey]] = []
        self._budgets: dict[str, _ConnectionBudget] = {}
        self._counter = itertools.count()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._listener: Any = None
        self._listen_next_try = 0.0
        self._failing_since: float | None = None
        self._retry_at = 0.0
        self._last_poll_started = 0.0
        self._next_sweep_at = 0.0
        self._unchecked: set[Key] = set()
        #: Event id up to which every event is reflected in what the waits know (NOTIFY mode).
        self._seen_id: int | None = None
        #: Highest event id named by a NOTIFY.
        self._notified_id = 0
        #: Queries for new events after a NOTIFY (cheap: by increasing id).
        self.event_queries = 0
        self._receiver_seen = False
        self._receiver_checked_at = float("-inf")
        self._receiver_lock = asyncio.Lock()

    def __repr__(self) -> str:
        display = self._store.url_for_display if self._store is not None else "<not opened>"
        return f"<StorePoller {display} refcount={self.refcount} waits={self.wait_count}>"

    # -- public -----------------------------------------------------------------------------------

    @property
    def store(self) -> AsyncReceiptStore:
        if self._store is None:
            if self._store_factory is not None:
                self._store = self._store_factory(self.url)
            else:
                from airflow_provider_readreceipts.store import AsyncReceiptStore

                self._store = AsyncReceiptStore(self.url)
        return self._store

    @property
    def display_url(self) -> str:
        return self.store.url_for_display

    @property
    def wait_count(self) -> int:
        return sum(len(waits) for waits in self._waits.values())

    @property
    def listening(self) -> bool:
        return self._listener is not None

    @property
    def tasks(self) -> list[asyncio.Task[Any]]:
        """Every task this poller runs (for leak checks)."""
        found: list[asyncio.Task[Any]] = [self._task] if self._task is not None else []
        for budget in self._budgets.values():
            found.extend(t for t in (budget._task, *budget._in_flight) if t is not None)
        return found

    async def receiver_seen(self) -> bool:
        """
        Whether any receiver ever wrote a heartbeat to this store.

        Checks the schema on first use, so an unmigrated store is reported as such. A positive
        answer is kept; a negative one is asked again at most every :data:`NO_RECEIVER_RECHECK`s.
        """
        if self._receiver_seen:
            return True
        async with self._receiver_lock:
            if self._receiver_seen or time.monotonic() - self._receiver_checked_at < NO_RECEIVER_RECHECK:
                return self._receiver_seen
            await self.store.check_schema()
            self._receiver_seen = (await self.store.last_heartbeat()) is not None
            self._receiver_checked_at = time.monotonic()
            return self._receiver_seen

    def register(
        self,
        key: Key,
        *,
        vendor: str,
        chat: str,
        policy: WaitPolicy,
        deadline: float,
        poll_interval: float,
        reconcile_interval: float | None,
        reconcile_rate_per_minute: float | None,
        has_receiver: bool,
        store_error_grace: float,
    ) -> Wait:
        """Start waiting for ``key``; the returned wait's future resolves with a :class:`WaitEnd`."""
        if self.closed:
            raise RuntimeError("this poller is closed")
        loop = asyncio.get_running_loop()
        wait = Wait(
            key=key,
            vendor=vendor,
            chat=chat,
            policy=policy,
            deadline=deadline,
            poll_interval=poll_interval,
            reconcile_interval=reconcile_interval,
            has_receiver=has_receiver,
            store_error_grace=store_error_grace,
            future=loop.create_future(),
        )
        self._waits.setdefault(key, set()).add(wait)
        self._unchecked.add(key)
        self._intervals[poll_interval] += 1
        heapq.heappush(self._deadlines, (deadline, next(self._counter), wait))
        if reconcile_interval:
            budget = self._budget(key[0], vendor, reconcile_rate_per_minute)
            if budget.fault is not None:
                wait.fail(budget.fault)
            state = self._reconcile.get(key)
            if state is None:
                state = self._reconcile[key] = _ReconcileKey(key, vendor, chat)
            state.waits.add(wait)
            # Reads that no webhook reports (Chert), or a store no receiver writes to: ask the
            # vendor at once. Otherwise webhooks come first and reconcile only covers lost ones.
            immediate = vendor in RECONCILE_ONLY_VENDORS or not has_receiver
            due = time.time() + (0.0 if immediate else reconcile_interval)
            if state.next_due == 0.0 or due < state.next_due:
                self._schedule_reconcile(state, due)
        if self._task is None:
            self._task = loop.create_task(self._run(), name="readreceipts-store-poller")
            self._task.add_done_callback(self._poll_task_done)
        self._wake.set()
        return wait

    def unregister(self, wait: Wait) -> None:
        """Forget a wait (it ended, or its trigger was cancelled). Safe to call twice."""
        waits = self._waits.get(wait.key)
        if waits is None or wait not in waits:
            return
        waits.discard(wait)
        if not waits:
            del self._waits[wait.key]
        self._intervals[wait.poll_interval] -= 1
        if self._intervals[wait.poll_interval] <= 0:
            del self._intervals[wait.poll_interval]
        self._awaiting_final.discard(wait)
        state = self._reconcile.get(wait.key)
        if state is not None:
            state.waits.discard(wait)
            if not state.waits:
                del self._reconcile[wait.key]
        if not wait.future.done():
            wait.future.cancel()
        # Deadline and reconcile heap entries of ended waits are skipped lazily.

    def wake(self) -> None:
        """Query the store now rather than at the next interval."""
        self._wake.set()

    async def close(self) -> None:
        """Stop everything this poller runs and dispose of the store's engine."""
        self.closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        for budget in self._budgets.values():
            await budget.close()
        await self._close_listener()
        for waits in list(self._waits.values()):
            for wait in waits:
                if not wait.future.done():
                    wait.future.cancel()
        self._waits.clear()
        self._reconcile.clear()
        if self._store is not None:
            with contextlib.suppress(Exception):
                await self._store.dispose()

    # -- the loop ---------------------------------------------------------------------------------

    def _poll_task_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            # A bug in the poller: fail every wait loudly rather than leave them hanging forever.
            log.error("the receipt store poller stopped: %r", exc, exc_info=exc)
            fault = WaitFault(FAULT_INTERNAL, f"the receipt store poller stopped: {exc!r}")
            for waits in list(self._waits.values()):
                for wait in waits:
                    wait.fail(fault)

    async def _run(self) -> None:
        while not self.closed:
            if self._waits:
                await self._ensure_listener()
                await self._poll_once()
            await self._sleep()

    async def _sleep(self) -> None:
        now = time.time()
        if not self._waits:
            timeout = None
        else:
            wake_at = self._next_sweep_at
            if self._failing_since is not None:
                wake_at = self._retry_at
            while self._deadlines and self._deadlines[0][2].done:
                heapq.heappop(self._deadlines)
            if self._deadlines:
                wake_at = min(wake_at, max(self._deadlines[0][0], self._retry_at))
            if self._reconcile_due and self._reconcile_due[0][0] > now:
                wake_at = min(wake_at, self._reconcile_due[0][0])
            timeout = max(wake_at - now, 0.0)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout)
        self._wake.clear()
        gap = self._last_poll_started + MIN_POLL_GAP - time.time()
        if gap > 0:
            await asyncio.sleep(gap)

    async def _poll_once(self) -> None:
        """
        One look at the store: a sweep of every waiting message when the interval is due, else only
        what needs it now (new waits, deadlines that just passed, messages a NOTIFY named).
        """
        now = time.time()
        if self._failing_since is not None and now < self._retry_at:
            return
        interval = min(self._intervals) if self._intervals else 5.0
        sweep = now >= self._next_sweep_at
        due: list[Wait] = []
        while self._deadlines and self._deadlines[0][0] <= now:
            wait = heapq.heappop(self._deadlines)[2]
            if not wait.done:
                due.append(wait)
        if sweep:
            keys = list(self._waits)
        else:
            wanted = set(self._unchecked)
            wanted.update(wait.key for wait in due)
            wanted.update(wait.key for wait in self._awaiting_final if not wait.done)
            keys = [key for key in wanted if key in self._waits]
        # A query sees every commit made before it started: "unread" is only said when this time
        # is past the deadline, so a READ committed just before the deadline is never missed.
        started = time.time()
        self._last_poll_started = started
        seen_id = self._seen_id
        try:
            if self._listener is not None and seen_id is None:
                # Where the NOTIFY-driven checks start: every event up to here is in this sweep.
                seen_id, sweep = await self.store.max_event_id(), True
                keys = list(self._waits)
                self.event_queries += 1
            elif self._listener is not None and seen_id is not None and self._notified_id > seen_id:
                changed, seen_id = await self._changed_keys(seen_id)
                keys = list(set(keys) | {key for key in changed if key in self._waits})
            statuses = await self.store.statuses(keys) if keys else {}
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            for wait in due:  # not checked: they stay due
                heapq.heappush(self._deadlines, (wait.deadline, next(self._counter), wait))
            self._store_failed(started, exc)
            return
        if keys:
            self.queries += 1
        self._seen_id = seen_id
        self._failing_since = None
        self.failed_queries = 0
        if sweep:
            # A fixed rate: the interval counts from the start of the sweep, not its end.
            self._next_sweep_at = started + interval
            self._unchecked.clear()
        else:
            self._unchecked.difference_update(keys)
        for key in keys:
            status = statuses.get(key)
            for wait in list(self._waits.get(key, ())):
                self._observe(wait, status, started)
        self._expire(started, set(keys), due)
        self._schedule_due_reconciles()

    async def _changed_keys(self, cursor: int) -> tuple[set[Key], int]:
        """Messages with events after ``cursor`` (ids only grow and never appear late)."""
        changed: set[Key] = set()
        for _ in range(CHANGED_PAGES):
            events = await self.store.events_after(cursor, limit=CHANGED_PAGE_SIZE)
            self.event_queries += 1
            changed.update((event.conn_id, event.message_id) for event in events)
            if events:
                cursor = events[-1].id
            if len(events) < CHANGED_PAGE_SIZE:
                return changed, cursor
        self._next_sweep_at = 0.0  # a burst too large to follow event by event: sweep next time
        return changed, cursor

    def _observe(self, wait: Wait, status: Any, checked_at: float) -> None:
        if status is None:
            return
        fingerprint = (
            str(attribute(status, "status")),
            attribute(status, "updated_at"),
            tuple(attribute(status, "readers", None) or ()),
        )
        if fingerprint == wait.fingerprint:
            return
        wait.fingerprint, wait.status = fingerprint, status
        outcome = verdict(status, wait.policy)
        if outcome is not None:
            self._end(wait, WaitEnd(outcome, status, _utc(checked_at)))

    def _expire(self, checked_at: float, checked: set[Key], due: list[Wait]) -> None:
        """Deal with waits past their deadline whose message this poll has just read."""
        for wait in due:
            if wait.done:
                continue
            if wait.key in checked:
                self._awaiting_final.add(wait)
            else:
                heapq.heappush(self._deadlines, (wait.deadline, next(self._counter), wait))
        for wait in list(self._awaiting_final):
            if wait.done:
                self._awaiting_final.discard(wait)
                continue
            if wait.key not in checked:
                continue
            state = self._reconcile.get(wait.key) if wait.reconcile_interval else None
            if state is None:
                self._end(wait, WaitEnd(OUTCOME_UNREAD, wait.status, _utc(checked_at)))
                continue
            final_seen = state.final_done(wait.deadline) and checked_at >= (state.last_finished or 0.0)
            overdue = checked_at - wait.deadline > FINAL_RECONCILE_GRACE
            if not final_seen and not overdue:
                # One last look at the vendor's API before saying "unread", nearest deadline first.
                if not state.in_flight:
                    self._budgets[wait.key[0]].enqueue(state)
                continue
            if not wait.has_receiver and not state.ever_succeeded:
                self._fail(
                    wait,
                    WaitFault(
                        FAULT_NO_SOURCE,
                        f"no receiver has ever written to the receipt store {self.display_url} and the"
                        f" vendor's status API never answered for {wait.key[0]}/{wait.key[1]}"
                        f" (last error: {state.last_error or 'no answer in time'}): the message's"
                        " status is unknown, not unread",
                    ),
                )
                continue
            note = None
            if not final_seen:
                note = "the vendor's status API was not asked after the deadline (reconcile budget exhausted)"
            elif state.last_error:
                note = f"the vendor's status API failed after the deadline: {state.last_error}"
            self._end(wait, WaitEnd(OUTCOME_UNREAD, wait.status, _utc(checked_at), note))

    def _end(self, wait: Wait, end: WaitEnd) -> None:
        wait.finish(end)
        self._awaiting_final.discard(wait)

    def _fail(self, wait: Wait, fault: WaitFault) -> None:
        wait.fail(fault)
        self._awaiting_final.discard(wait)

    def _store_failed(self, started: float, exc: Exception) -> None:
        self.failed_queries += 1
        if self._failing_since is None:
            self._failing_since = started
        failing_for = time.time() - self._failing_since
        self._retry_at = time.time() + min(
            STORE_RETRY_MIN * 2 ** min(self.failed_queries, 10), STORE_RETRY_MAX
        )
        log.warning("receipt store query failed (%d in a row): %s", self.failed_queries, exc)
        for waits in list(self._waits.values()):
            for wait in list(waits):
                if failing_for >= wait.store_error_grace:
                    self._fail(
                        wait,
                        WaitFault(
                            FAULT_STORE,
                            f"the receipt store {self.display_url} could not be read for {failing_for:.0f}s:"
                            f" {type(exc).__name__}: {exc}",
                        ),
                    )

    # -- reconcile --------------------------------------------------------------------------------

    def _budget(self, conn_id: str, vendor: str, rate_per_minute: float | None) -> _ConnectionBudget:
        rate = rate_per_minute or DEFAULT_RECONCILE_RATE_PER_MINUTE.get(
            vendor, FALLBACK_RECONCILE_RATE_PER_MINUTE
        )
        budget = self._budgets.get(conn_id)
        if budget is None:
            budget = self._budgets[conn_id] = _ConnectionBudget(self, conn_id, vendor, rate)
        else:
            budget.limit_rate(rate)
        return budget

    def _schedule_reconcile(self, state: _ReconcileKey, due: float) -> None:
        state.next_due = due
        heapq.heappush(self._reconcile_due, (due, next(self._counter), state))

    def _schedule_due_reconciles(self) -> None:
        now = time.time()
        while self._reconcile_due and self._reconcile_due[0][0] <= now:
            due, _, state = heapq.heappop(self._reconcile_due)
            if due != state.next_due or not state.waits or self._reconcile.get(state.key) is not state:
                continue  # rescheduled since, or no wait needs it any more
            self._budgets[state.key[0]].enqueue(state)

    def _reconciled(self, state: _ReconcileKey, retry_in: float | None) -> None:
        """A reconcile call ended: schedule the next one and look at the store again now."""
        if state.waits and self._reconcile.get(state.key) is state:
            self._schedule_reconcile(state, time.time() + (retry_in or state.interval))
        self._wake.set()

    def _fail_connection(self, conn_id: str, fault: WaitFault) -> None:
        for key, waits in list(self._waits.items()):
            if key[0] == conn_id:
                for wait in list(waits):
                    if wait.reconcile_interval:
                        self._fail(wait, fault)

    # -- PostgreSQL LISTEN ------------------------------------------------------------------------

    async def _ensure_listener(self) -> None:
        if self._listener is not None or self.store.dialect != "postgresql":
            return
        if time.monotonic() < self._listen_next_try:
            return
        self._listen_next_try = time.monotonic() + LISTEN_RETRY
        try:
            from airflow_provider_readreceipts.store import NOTIFY_CHANNEL
            from airflow_provider_readreceipts.store.engines import connect_asyncpg

            # The store's own connect path: every URL parameter (sslmode, ...) holds here too.
            connection = await connect_asyncpg(self.store.url, timeout=LISTEN_CONNECT_TIMEOUT)
            await connection.add_listener(NOTIFY_CHANNEL, self._on_notify)
            connection.add_termination_listener(self._on_listener_lost)
            self._listener = connection
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("cannot LISTEN on the receipt store (polling only): %s", exc)

    def _on_notify(self, connection: Any, pid: int, channel: str, payload: str) -> None:
        self.notifications += 1
        try:
            last_id = int(json.loads(payload)["last_id"])
        except (ValueError, KeyError, TypeError):
            last_id = self._notified_id + 1  # unknown payload: assume something new
        self._notified_id = max(self._notified_id, last_id)
        self._wake.set()

    def _on_listener_lost(self, connection: Any) -> None:
        log.warning("the receipt store's LISTEN connection was lost; polling until it is back")
        self._listener = None
        self._seen_id = None  # notifications may have been missed: start again from a sweep
        self._listen_next_try = time.monotonic() + 1.0

    async def _close_listener(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(Exception):
                listener.remove_termination_listener(self._on_listener_lost)
                await listener.close(timeout=5)


def _utc(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, tz=timezone.utc)


# -- the per-loop registry --------------------------------------------------------------------------

_POLLERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, StorePoller]] = (
    weakref.WeakKeyDictionary()
)


def _loop_pollers() -> dict[str, StorePoller]:
    loop = asyncio.get_running_loop()
    pollers = _POLLERS.get(loop)
    if pollers is None:
        pollers = _POLLERS[loop] = {}
    return pollers


def acquire_poller(
    url: str, *, store_factory: Callable[[str], AsyncReceiptStore] | None = None
) -> StorePoller:
    """
    The poller of ``url`` in the running event loop, created on first use; one more reference.

    Every call must be matched by one :func:`release_poller`.
    """
    pollers = _loop_pollers()
    poller = pollers.get(url)
    if poller is None or poller.closed:
        poller = pollers[url] = StorePoller(url, store_factory=store_factory)
    poller.refcount += 1
    return poller


async def release_poller(poller: StorePoller) -> None:
    """Drop one reference; the last one closes the poller (tasks, listener, sessions, engine)."""
    poller.refcount -= 1
    if poller.refcount > 0:
        return
    # Out of the registry before any await, so a trigger starting meanwhile builds a fresh poller
    # instead of joining one that is shutting down.
    pollers = _POLLERS.get(asyncio.get_running_loop(), {})
    if pollers.get(poller.url) is poller:
        del pollers[poller.url]
    await poller.close()


def active_pollers() -> list[StorePoller]:
    """The pollers alive in the running event loop (for tests and diagnostics)."""
    return list(_loop_pollers().values())
