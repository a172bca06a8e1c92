"""
Triggers of the read-receipts provider: a deferred wait for READ, and an event trigger for assets.

:class:`ReadReceiptTrigger` is what the read sensor
(:class:`~airflow_provider_readreceipts.sensors.read_receipt.ReadReceiptSensor`) defers to. Its
waits share one poller per store in the triggerer (see :mod:`._poller`), so 10,000
deferred sensors cost one store query per interval, not 10,000.

:class:`ReceiptEventTrigger` starts DAGs from new receipt events through an ``AssetWatcher``::

    from airflow.sdk import DAG, Asset, AssetWatcher

    inbound = Asset(
        "sendblue_inbound",
        watchers=[
            AssetWatcher(
                name="sendblue_inbound",
                trigger=ReceiptEventTrigger(conn_id="sendblue_default", statuses=["RECEIVED"]),
            )
        ],
    )
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
import weakref
from collections.abc import AsyncIterator, Hashable, Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from airflow.triggers.base import BaseEventTrigger, BaseTrigger, TriggerEvent

from airflow_provider_readreceipts.receipts import Status
from airflow_provider_readreceipts.triggers._wait import (
    FAULT_CONFIGURATION,
    FAULT_INTERNAL,
    FAULT_NO_SOURCE,
    FAULT_STORE,
    WaitFault,
    WaitPolicy,
    as_utc,
    result,
)

if TYPE_CHECKING:
    from airflow.triggers.shared_stream import AdvanceItem, SharedStreamProducer

    from airflow_provider_readreceipts.store import AsyncReceiptStore, StoredEvent
    from airflow_provider_readreceipts.triggers._poller import StorePoller

log = logging.getLogger(__name__)

#: Seconds the store may stay unreachable before the waits on it fail (a short outage is retried).
DEFAULT_STORE_ERROR_GRACE = 60.0


#: How long a resolved store URL is reused by the waits of one event loop.
STORE_URL_TTL = 60.0
_STORE_URLS: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, dict[tuple[str | None, str | None], tuple[float, asyncio.Task[str]]]
] = weakref.WeakKeyDictionary()


async def resolve_store_url(store_conn_id: str | None, store_path: str | None) -> str:
    """
    The store URL, looked up in the event loop without blocking it.

    :raises WaitFault: the connection is missing or unusable (bad configuration).
    """
    from airflow_provider_readreceipts.store import StoreError, astore_url_from_airflow

    try:
        return await astore_url_from_airflow(conn_id=store_conn_id, path=store_path)
    except StoreError as exc:
        raise WaitFault(FAULT_CONFIGURATION, str(exc)) from None


async def cached_store_url(store_conn_id: str | None, store_path: str | None) -> str:
    """
    :func:`resolve_store_url`, once per store and minute for all the waits of an event loop.

    A connection look-up costs tens of milliseconds; 10,000 triggers starting together after a
    triggerer restart would otherwise make 10,000 of them before the first wait is registered.
    """
    loop = asyncio.get_running_loop()
    cache = _STORE_URLS.get(loop)
    if cache is None:
        cache = _STORE_URLS[loop] = {}
    key = (store_conn_id, store_path)
    entry = cache.get(key)
    stale = entry is None or entry[0] < time.monotonic()
    if entry is not None and entry[1].done() and entry[1].exception() is not None:
        stale = True  # a failed look-up is not kept: the next wait asks again
    if stale:
        task = loop.create_task(resolve_store_url(store_conn_id, store_path))
        entry = cache[key] = (time.monotonic() + STORE_URL_TTL, task)
    assert entry is not None
    # Shielded: a cancelled wait must not cancel the look-up the others are waiting for.
    return await asyncio.shield(entry[1])


class ReadReceiptTrigger(BaseTrigger):
    """
    Wait until a message is read (by the group policy), fails at the vendor, or its deadline passes.

    Fires exactly one event whose payload is the sensor's result (``outcome`` ``"read"``,
    ``"unread"`` or ``"failed"``), or ``{"outcome": "error", "kind": ..., "error": ...}`` for a fault of
    our own, which the sensor turns into a task failure. The deadline is enforced here, not by
    Airflow's trigger timeout (``dag.test()`` runs triggers without one).

    :param conn_id: the vendor connection of the message.
    :param message_id: the vendor's message id.
    :param vendor: the vendor (connection type), for reconcile.
    :param deadline: when the wait ends "unread", ISO 8601 UTC (absolute: a re-deferral or a retry
        never moves it).
    :param chat: the conversation (Chert's reconcile needs it).
    :param sent_at: when the message was sent, ISO 8601 UTC (for time-to-read).
    :param policy: the group policy, :meth:`WaitPolicy.to_kwargs` form; default: any reader.
    :param poll_interval: seconds between store queries (shared: the smallest among the waits wins).
    :param reconcile_interval: seconds between vendor status look-ups; ``None`` turns reconcile off.
    :param reconcile_rate_per_minute: the connection's budget of status look-ups a minute; default
        per vendor (RyzeAPI's documented 100 a minute less a margin; 30 for the others).
    :param store_conn_id: the store's Airflow connection; ``None``: ``readreceipts_store_default``
        when defined, else the SQLite file.
    :param store_path: the SQLite file when no store connection is used.
    :param store_error_grace: seconds the store may stay unreachable before the wait fails.
    """

    def __init__(
        self,
        *,
        conn_id: str,
        message_id: str,
        vendor: str,
        deadline: str,
        chat: str = "",
        sent_at: str | None = None,
        policy: dict[str, Any] | None = None,
        poll_interval: float = 5.0,
        reconcile_interval: float | None = None,
        reconcile_rate_per_minute: float | None = None,
        store_conn_id: str | None = None,
        store_path: str | None = None,
        store_error_grace: float = DEFAULT_STORE_ERROR_GRACE,
    ) -> None:
        super().__init__()
        self.conn_id = conn_id
        self.message_id = message_id
        self.vendor = vendor
        self.deadline = deadline
        self.chat = chat
        self.sent_at = sent_at
        self.policy = policy or WaitPolicy("any").to_kwargs()
        self.poll_interval = poll_interval
        self.reconcile_interval = reconcile_interval
        self.reconcile_rate_per_minute = reconcile_rate_per_minute
        self.store_conn_id = store_conn_id
        self.store_path = store_path
        self.store_error_grace = store_error_grace
        self._leases: list[StorePoller] = []

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "conn_id": self.conn_id,
                "message_id": self.message_id,
                "vendor": self.vendor,
                "deadline": self.deadline,
                "chat": self.chat,
                "sent_at": self.sent_at,
                "policy": self.policy,
                "poll_interval": self.poll_interval,
                "reconcile_interval": self.reconcile_interval,
                "reconcile_rate_per_minute": self.reconcile_rate_per_minute,
                "store_conn_id": self.store_conn_id,
                "store_path": self.store_path,
                "store_error_grace": self.store_error_grace,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        # Everything is released before the event is yielded: dag.test() takes the first event
        # and never resumes the generator, and the triggerer may not either.
        try:
            payload = await self._wait()
        finally:
            await self._release()
        yield TriggerEvent(payload)

    async def cleanup(self) -> None:
        # run() releases on every path; this covers a run cancelled at an unusual point.
        await self._release()

    async def _release(self) -> None:
        from airflow_provider_readreceipts.triggers._poller import release_poller

        while self._leases:
            poller = self._leases.pop()
            if not poller.closed:
                await release_poller(poller)

    async def _wait(self) -> dict[str, Any]:
        from airflow_provider_readreceipts.store import StoreError
        from airflow_provider_readreceipts.triggers._poller import acquire_poller

        try:
            deadline = as_utc(self.deadline, field="deadline")
            policy = WaitPolicy.from_kwargs(self.policy)
            url = await cached_store_url(self.store_conn_id, self.store_path)
            poller = acquire_poller(url)
            self._leases.append(poller)
            try:
                has_receiver = await poller.receiver_seen()
            except StoreError as exc:
                raise WaitFault(FAULT_CONFIGURATION, str(exc)) from None
            except Exception as exc:
                raise WaitFault(
                    FAULT_STORE, f"the receipt store could not be read: {type(exc).__name__}: {exc}"
                ) from None
            if not has_receiver and not self.reconcile_interval:
                raise WaitFault(
                    FAULT_NO_SOURCE,
                    f"no webhook receiver has ever written to the receipt store {poller.display_url},"
                    " and reconcile is off: nothing could ever report this message as read. Point the"
                    " sensor at the store the receiver writes to (store_conn_id / store_path), start the"
                    " receiver, or turn reconcile on.",
                )
            wait = poller.register(
                (self.conn_id, self.message_id),
                vendor=self.vendor,
                chat=self.chat,
                policy=policy,
                deadline=deadline.timestamp(),
                poll_interval=float(self.poll_interval),
                reconcile_interval=float(self.reconcile_interval) if self.reconcile_interval else None,
                reconcile_rate_per_minute=self.reconcile_rate_per_minute,
                has_receiver=has_receiver,
                store_error_grace=float(self.store_error_grace),
            )
            try:
                end = await wait.future
            finally:
                poller.unregister(wait)
        except WaitFault as fault:
            self.log.error("read-receipt wait for %s/%s failed: %s", self.conn_id, self.message_id, fault)
            return fault.to_event()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug or an unexpected library error: fail, never "unread"
            self.log.exception("read-receipt wait for %s/%s crashed", self.conn_id, self.message_id)
            return WaitFault(FAULT_INTERNAL, f"{type(exc).__name__}: {exc}").to_event()
        payload = result(
            end.outcome,
            end.status,
            vendor=self.vendor,
            conn_id=self.conn_id,
            message_id=self.message_id,
            chat=self.chat,
            sent_at=self.sent_at,
            deadline=deadline,
            checked_at=end.checked_at,
            note=end.note,
        )
        self.log.info(
            "message %s/%s: %s (status %s)", self.conn_id, self.message_id, end.outcome, payload["status"]
        )
        return payload


# -- the event trigger -------------------------------------------------------------------------------


def event_payload(event: StoredEvent) -> dict[str, Any]:
    """What an asset event carries about one stored receipt event (JSON only; no raw payload)."""

    def iso(value: datetime | None) -> str | None:
        return None if value is None else value.astimezone(timezone.utc).isoformat()

    return {
        # The store's id: unique and increasing. Handlers dedup on it.
        "event_id": event.id,
        "conn_id": event.conn_id,
        "vendor": event.vendor,
        "message_id": event.message_id,
        "status": str(event.status),
        "raw_status": event.raw_status,
        "participant": event.participant,
        "chat_id": event.chat_id,
        "occurred_at": iso(event.occurred_at),
        "received_at": iso(event.received_at),
        "vendor_event_id": event.event_id,
        "error_code": event.error_code,
        "error_message": event.error_message,
        "source": event.source,
    }


class ReceiptEventTrigger(BaseEventTrigger):
    """
    Fire one event per new receipt event in the store that matches a filter, for ``AssetWatcher``.

    Each matching event fires once, with the store's ``event_id`` so handlers can dedup (the
    scheduler may fold several events into one run: loop over ``triggering_asset_events``). The
    position is a cursor kept in the store, so nothing is lost across triggerer restarts.

    In the triggerer the trigger runs in Airflow's shared-stream *ack mode*: the cursor moves only
    past events whose asset events Airflow has confirmed stored in its metadata database, so a crash
    at any point replays events rather than losing them (handlers dedup). Outside the triggerer,
    :meth:`run` moves the cursor after each batch has been handed on.

    :param conn_id: only events of this vendor connection; ``None`` for all.
    :param statuses: only these normalised statuses, e.g. ``["READ"]`` or ``["RECEIVED"]`` (inbound
        messages); ``None`` for all.
    :param cursor: the cursor's name in the store; by default derived from the filter, so two
        watchers with the same filter share a position. Name it to keep two apart.
    :param poll_interval: seconds between store queries when there is nothing new.
    :param batch_size: events read per query.
    :param store_conn_id: the store's Airflow connection (see :class:`ReadReceiptTrigger`).
    :param store_path: the SQLite file when no store connection is used.
    """

    def __init__(
        self,
        *,
        conn_id: str | None = None,
        statuses: Sequence[str] | None = None,
        cursor: str | None = None,
        poll_interval: float = 2.0,
        batch_size: int = 200,
        store_conn_id: str | None = None,
        store_path: str | None = None,
    ) -> None:
        super().__init__()
        self.conn_id = conn_id
        # Sorted and validated: the kwargs are hashed to identify the watcher, so equal filters
        # must serialise equally.
        self.statuses = (
            sorted({Status(s.upper() if isinstance(s, str) else s).value for s in statuses})
            if statuses
            else None
        )
        self.poll_interval = poll_interval
        self.batch_size = batch_size
        self.store_conn_id = store_conn_id
        self.store_path = store_path
        self.cursor = cursor or self.default_cursor_name(conn_id, self.statuses)

    @staticmethod
    def default_cursor_name(conn_id: str | None, statuses: Sequence[str] | None) -> str:
        document = json.dumps({"conn_id": conn_id, "statuses": list(statuses or [])}, sort_keys=True)
        return "asset-watcher:" + hashlib.sha256(document.encode()).hexdigest()[:16]

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "conn_id": self.conn_id,
                "statuses": self.statuses,
                "cursor": self.cursor,
                "poll_interval": self.poll_interval,
                "batch_size": self.batch_size,
                "store_conn_id": self.store_conn_id,
                "store_path": self.store_path,
            },
        )

    # -- in the triggerer: a shared stream in ack mode --------------------------------------------

    def shared_stream_key(self) -> Hashable | None:
        # Everything that decides which events the stream yields and where it resumes.
        return (
            "airflow_provider_readreceipts.ReceiptEventTrigger",
            self.store_conn_id,
            self.store_path,
            self.cursor,
            self.conn_id,
            tuple(self.statuses or ()),
        )

    @classmethod
    def create_shared_stream_producer(cls, kwargs: dict[str, Any]) -> SharedStreamProducer:
        from airflow_provider_readreceipts.triggers._events import StoreEventProducer

        return StoreEventProducer(cls(**kwargs))

    async def filter_shared_stream(self, shared_stream: AsyncIterator[Any]) -> AsyncIterator[TriggerEvent]:
        # The producer already applied the filter in SQL; one trigger event per raw event, yielded
        # before the next is pulled, which is how Airflow binds an asset event to its store event.
        async for payload in shared_stream:
            yield TriggerEvent(payload)

    # -- standalone (tests, or a triggerer that runs event triggers without shared streams) -------

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from airflow_provider_readreceipts.triggers._events import open_store

        store, position = await open_store(self)
        try:
            while True:
                events, next_position = await store.events_page(
                    position, conn_id=self.conn_id, statuses=self.statuses, limit=self.batch_size
                )
                for event in events:
                    yield TriggerEvent(event_payload(event))
                if next_position != position:
                    # After the whole batch was handed on: a crash in between replays it.
                    await store.set_cursor(self.cursor, next_position)
                    position = next_position
                if len(events) < self.batch_size:
                    await asyncio.sleep(self.poll_interval)
        finally:
            await store.dispose()

    async def advance_cursor(self, store: AsyncReceiptStore, batch: Sequence[AdvanceItem]) -> bool:
        """Used by the producer: move the cursor past a confirmed batch; ``False`` when it must stop."""
        last: int | None = None
        for item in batch:
            if not item.outcome.is_clean:
                log.error(
                    "receipt event %s was not confirmed stored by Airflow (%s); the cursor %r stays at"
                    " %s so it is delivered again after a restart",
                    item.broker_payload,
                    item.outcome,
                    self.cursor,
                    last,
                )
                if last is not None:
                    await store.set_cursor(self.cursor, last)
                return False
            last = int(item.broker_payload)
        if last is not None:
            await store.set_cursor(self.cursor, last)
        return True
