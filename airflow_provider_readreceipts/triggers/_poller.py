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
import logging
import time
import weakref
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from airflow_provider_readreceipts.triggers._listen import StoreListener
from airflow_provider_readreceipts.triggers._reconcile import (
    ConnectionBudget,
    ReconcileKey,
    default_reconcile_rate,
)
from airflow_provider_readreceipts.triggers._replies import Reply, ReplyInterest, ReplyRequest, ReplyWatch
from airflow_provider_readreceipts.waits import (
    FAULT_INTERNAL,
    FAULT_NO_SOURCE,
    FAULT_STORE,
    OUTCOME_REPLIED,
    UNTIL_READ,
    ReadReceiptWaitError,
    WaitPolicy,
    attribute,
    deadline_outcome,
    reads_by_polling_only,
    verdict,
)

if TYPE_CHECKING:
    from airflow_provider_readreceipts.store import AsyncReceiptStore

log = logging.getLogger(__name__)

Key = tuple[str, str]

#: How long after a deadline a wait may wait for its last vendor look-up before it is reported
#: unread anyway (a saturated budget must not hold thousands of expired waits for hours).
FINAL_RECONCILE_GRACE = 300.0
#: Fewest seconds between two store queries, however many NOTIFYs arrive: under a burst of
#: commits the poller still makes at most 1 / MIN_POLL_GAP queries a second.
MIN_POLL_GAP = 0.02
#: A store without any receiver heartbeat is asked again at most this often.
NO_RECEIVER_RECHECK = 10.0
#: After a NOTIFY, new events are read in pages of this size, at most this many pages; a larger
#: burst is left to the next sweep.
CHANGED_PAGE_SIZE, CHANGED_PAGES = 1000, 10
#: Backoff between failed store queries.
STORE_RETRY_MIN, STORE_RETRY_MAX = 0.5, 10.0


@dataclass(frozen=True)
class WaitEnd:
    """How a wait ended: its outcome, the store's last view of the message, when that was read."""

    outcome: str
    status: Any
    checked_at: datetime
    note: str | None = None
    reply: Reply | None = None


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
    until: str = UNTIL_READ
    interest: ReplyInterest | None = None
    fingerprint: tuple[Any, ...] | None = None
    status: Any = None

    @property
    def done(self) -> bool:
        return self.future.done()

    def finish(self, end: WaitEnd) -> None:
        if not self.future.done():
            self.future.set_result(end)

    def fail(self, fault: ReadReceiptWaitError) -> None:
        if not self.future.done():
            self.future.set_exception(fault)


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
        self.reconcile_calls = 0
        #: Queries for replies (one per poll while any wait takes replies).
        self.reply_queries = 0
        self._replies = ReplyWatch()
        self._store_factory = store_factory
        self._store: AsyncReceiptStore | None = None
        self._waits: dict[Key, set[Wait]] = {}
        self._intervals: Counter[float] = Counter()
        self._deadlines: list[tuple[float, int, Wait]] = []
        self._awaiting_final: set[Wait] = set()
        self._reconcile: dict[Key, ReconcileKey] = {}
        self._reconcile_due: list[tuple[float, int, ReconcileKey]] = []
        self._budgets: dict[str, ConnectionBudget] = {}
        self._counter = itertools.count()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._listener: StoreListener | None = None
        self._failing_since: float | None = None
        self._retry_at = 0.0
        self._last_poll_started = 0.0
        self._next_sweep_at = 0.0
        self._unchecked: set[Key] = set()
        #: Event id up to which every event is reflected in what the waits know (NOTIFY mode).
        self._seen_id: int | None = None
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
        return self._listener is not None and self._listener.connected

    @property
    def notifications(self) -> int:
        """NOTIFYs received (PostgreSQL only)."""
        return self._listener.notifications if self._listener is not None else 0

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
        until: str = UNTIL_READ,
        replies: ReplyRequest | None = None,
    ) -> Wait:
        """
        Start waiting for ``key``; the returned wait's future resolves with a :class:`WaitEnd`.

        :param until: ``"read"`` (a READ or a reply ends it) or ``"reply"`` (only a reply does).
        :param replies: what counts as a reply to this message; ``None`` waits for reads only.
        """
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
            until=until,
        )
        if replies is not None:
            wait.interest = ReplyInterest(
                conn_id=key[0],
                message_id=key[1],
                chat_key=replies.chat_key,
                sent_at=replies.sent_at,
                deadline=datetime.fromtimestamp(deadline, tz=timezone.utc),
                senders=replies.senders,
                choices=replies.choices,
                on_reply=lambda reply: self._replied(wait, reply),
            )
            self._replies.add(wait.interest)
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
                state = self._reconcile[key] = ReconcileKey(key, vendor, chat)
            state.waits.add(wait)
            # Reads that no webhook reports (Chert), or a store no receiver writes to: ask the
            # vendor at once. Otherwise webhooks come first and reconcile only covers lost ones.
            immediate = reads_by_polling_only(vendor) or not has_receiver
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
        if wait.interest is not None:
            self._replies.remove(wait.interest)
        state = self._reconcile.get(wait.key)
        if state is not None:
            state.waits.discard(wait)
            if not state.waits:
                del self._reconcile[wait.key]
        if not wait.future.done():
            wait.future.cancel()
        # Deadline and reconcile heap entries of ended waits are skipped lazily.

    def _replied(self, wait: Wait, reply: Reply) -> None:
        self._end(wait, WaitEnd(OUTCOME_REPLIED, wait.status, _utc(time.time()), reply=reply))

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
        if self._listener is not None:
            await self._listener.close()
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
            fault = ReadReceiptWaitError(FAULT_INTERNAL, f"the receipt store poller stopped: {exc!r}")
            for waits in list(self._waits.values()):
                for wait in waits:
                    wait.fail(fault)

    @property
    def _notified_id(self) -> int:
        return self._listener.notified_id if self._listener is not None else 0

    async def _ensure_listener(self) -> None:
        if self._listener is None and self.store.dialect == "postgresql":
            self._listener = StoreListener(
                self.store.url, on_notify=self._wake.set, on_lost=self._listener_lost
            )
        if self._listener is not None:
            await self._listener.ensure()

    def _listener_lost(self) -> None:
        self._seen_id = None  # notifications may have been missed: start again from a sweep

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
            if self.listening and seen_id is None:
                # Where the NOTIFY-driven checks start: every event up to here is in this sweep.
                seen_id, sweep = await self.store.max_event_id(), True
                keys = list(self._waits)
                self.event_queries += 1
            elif self.listening and seen_id is not None and self._notified_id > seen_id:
                changed, seen_id = await self._changed_keys(seen_id)
                keys = list(set(keys) | {key for key in changed if key in self._waits})
            statuses = await self.store.statuses(keys) if keys else {}
            # Replies before deadlines: a reply committed before this poll started ends its wait
            # as "replied" here, before _expire could call it unread.
            self.reply_queries += await self._replies.poll(self.store)
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
        outcome = verdict(status, wait.policy, wait.until)
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
                self._end(wait, WaitEnd(self._deadline_outcome(wait), wait.status, _utc(checked_at)))
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
                    ReadReceiptWaitError(
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
            self._end(wait, WaitEnd(self._deadline_outcome(wait), wait.status, _utc(checked_at), note))

    def _deadline_outcome(self, wait: Wait) -> str:
        return deadline_outcome(wait.status, wait.policy, wait.until)

    def _end(self, wait: Wait, end: WaitEnd) -> None:
        wait.finish(end)
        self._awaiting_final.discard(wait)

    def _fail(self, wait: Wait, fault: ReadReceiptWaitError) -> None:
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
                        ReadReceiptWaitError(
                            FAULT_STORE,
                            f"the receipt store {self.display_url} could not be read for {failing_for:.0f}s:"
                            f" {type(exc).__name__}: {exc}",
                        ),
                    )

    # -- reconcile --------------------------------------------------------------------------------

    def _budget(self, conn_id: str, vendor: str, rate_per_minute: float | None) -> ConnectionBudget:
        rate = rate_per_minute or default_reconcile_rate(vendor)
        budget = self._budgets.get(conn_id)
        if budget is None:
            budget = self._budgets[conn_id] = ConnectionBudget(self, conn_id, vendor, rate)
        else:
            budget.limit_rate(rate)
        return budget

    def _schedule_reconcile(self, state: ReconcileKey, due: float) -> None:
        state.next_due = due
        heapq.heappush(self._reconcile_due, (due, next(self._counter), state))

    def _schedule_due_reconciles(self) -> None:
        now = time.time()
        while self._reconcile_due and self._reconcile_due[0][0] <= now:
            due, _, state = heapq.heappop(self._reconcile_due)
            if due != state.next_due or not state.waits or self._reconcile.get(state.key) is not state:
                continue  # rescheduled since, or no wait needs it any more
            self._budgets[state.key[0]].enqueue(state)

    def reconciled(self, state: ReconcileKey, retry_in: float | None) -> None:
        """A reconcile call ended: schedule the next one and look at the store again now."""
        if state.waits and self._reconcile.get(state.key) is state:
            self._schedule_reconcile(state, time.time() + (retry_in or state.interval))
        self._wake.set()

    def fail_connection(self, conn_id: str, fault: ReadReceiptWaitError) -> None:
        for key, waits in list(self._waits.items()):
            if key[0] == conn_id:
                for wait in list(waits):
                    if wait.reconcile_interval:
                        self._fail(wait, fault)


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
