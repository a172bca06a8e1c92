"""
Events into DAG runs: :class:`ReceiptEventTrigger` fires one trigger event per new receipt event in
the store that matches a filter, for an ``AssetWatcher``, and :class:`StoreEventProducer` serves it
in the triggerer's shared streams (Airflow 3.3's ack mode). Both read the store through one page
loop (:meth:`ReceiptEventTrigger.pages`)::

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
from collections.abc import AsyncIterator, Hashable, Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from airflow.triggers.base import BaseEventTrigger, TriggerEvent
from airflow.triggers.shared_stream import SharedStreamProducer

from airflow_provider_readreceipts.receipts import Status
from airflow_provider_readreceipts.triggers._store_url import resolve_store_url

if TYPE_CHECKING:
    from airflow.triggers.shared_stream import AdvanceItem

    from airflow_provider_readreceipts.store import AsyncReceiptStore, StoredEvent

log = logging.getLogger(__name__)


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
        return StoreEventProducer(cls(**kwargs))

    async def filter_shared_stream(self, shared_stream: AsyncIterator[Any]) -> AsyncIterator[TriggerEvent]:
        # The producer already applied the filter in SQL; one trigger event per raw event, yielded
        # before the next is pulled, which is how Airflow binds an asset event to its store event.
        async for payload in shared_stream:
            yield TriggerEvent(payload)

    # -- standalone (tests, or a triggerer that runs event triggers without shared streams) -------

    async def run(self) -> AsyncIterator[TriggerEvent]:
        store, position = await self.open_store()
        try:
            async for events, next_position in self.pages(store, position):
                for event in events:
                    yield TriggerEvent(event_payload(event))
                if next_position != position:
                    # After the whole batch was handed on: a crash in between replays it.
                    await store.set_cursor(self.cursor, next_position)
                    position = next_position
        finally:
            await store.dispose()

    # -- shared by both ----------------------------------------------------------------------------

    async def open_store(self) -> tuple[AsyncReceiptStore, int]:
        """The trigger's store and its cursor's saved position."""
        from airflow_provider_readreceipts.store import AsyncReceiptStore

        store = AsyncReceiptStore(await resolve_store_url(self.store_conn_id, self.store_path))
        try:
            await store.check_schema()
            return store, await store.get_cursor(self.cursor)
        except BaseException:
            await store.dispose()
            raise

    async def pages(
        self, store: AsyncReceiptStore, position: int
    ) -> AsyncIterator[tuple[list[StoredEvent], int]]:
        """
        The matching events after ``position``, a page at a time with the position after it,
        forever; a short page means nothing more is there yet, so it waits ``poll_interval``.
        """
        while True:
            events, position = await store.events_page(
                position, conn_id=self.conn_id, statuses=self.statuses, limit=self.batch_size
            )
            yield events, position
            if len(events) < self.batch_size:
                await asyncio.sleep(self.poll_interval)

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


class StoreEventProducer(SharedStreamProducer):
    """
    The producer side of :class:`ReceiptEventTrigger` in the triggerer's shared streams.

    Airflow 3.3's ack mode (:mod:`airflow.triggers.shared_stream`) hands :meth:`advance` only events
    whose asset events are confirmed stored in the metadata database; that is where the store
    cursor moves. Events read but not yet confirmed when the triggerer stops are read again from
    the cursor at the next start: delivered at least once, never lost.

    :param trigger: the event trigger whose filter and cursor this producer serves.
    """

    def __init__(self, trigger: ReceiptEventTrigger) -> None:
        self.trigger = trigger
        self._store: AsyncReceiptStore | None = None
        self._advancing = True

    async def open_stream(self) -> AsyncIterator[tuple[Any, Any]]:
        self._store, position = await self.trigger.open_store()
        async for events, _ in self.trigger.pages(self._store, position):
            for event in events:
                yield event_payload(event), event.id

    async def advance(self, batch: Sequence[AdvanceItem]) -> None:
        # After an unconfirmed event the cursor stays put for the rest of this poll: moving it past
        # a later event would skip the unconfirmed one for good.
        if self._advancing and self._store is not None:
            self._advancing = await self.trigger.advance_cursor(self._store, batch)

    async def aclose(self) -> None:
        if self._store is not None:
            await self._store.dispose()
            self._store = None
