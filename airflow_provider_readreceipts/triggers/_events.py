"""
The producer side of :class:`~.read_receipt.ReceiptEventTrigger` in the triggerer's shared streams.

Airflow 3.3's ack mode (:mod:`airflow.triggers.shared_stream`) hands :meth:`StoreEventProducer.advance`
only events whose asset events are confirmed stored in the metadata database; that is where the
store cursor moves. Events read but not yet confirmed when the triggerer stops are read again from
the cursor at the next start: delivered at least once, never lost.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

from airflow.triggers.shared_stream import AdvanceItem, SharedStreamProducer

if TYPE_CHECKING:
    from airflow_provider_readreceipts.store import AsyncReceiptStore
    from airflow_provider_readreceipts.triggers.read_receipt import ReceiptEventTrigger


async def open_store(trigger: ReceiptEventTrigger) -> tuple[AsyncReceiptStore, int]:
    """The trigger's store and its cursor's saved position."""
    from airflow_provider_readreceipts.store import AsyncReceiptStore
    from airflow_provider_readreceipts.triggers.read_receipt import resolve_store_url

    store = AsyncReceiptStore(await resolve_store_url(trigger.store_conn_id, trigger.store_path))
    try:
        await store.check_schema()
        return store, await store.get_cursor(trigger.cursor)
    except BaseException:
        await store.dispose()
        raise


class StoreEventProducer(SharedStreamProducer):
    """
    Reads matching store events after the saved cursor and saves the cursor as Airflow confirms them.

    :param trigger: the event trigger whose filter and cursor this producer serves.
    """

    def __init__(self, trigger: ReceiptEventTrigger) -> None:
        self.trigger = trigger
        self._store: AsyncReceiptStore | None = None
        self._advancing = True

    async def open_stream(self) -> AsyncIterator[tuple[Any, Any]]:
        from airflow_provider_readreceipts.triggers.read_receipt import event_payload

        trigger = self.trigger
        self._store, position = await open_store(trigger)
        while True:
            events, next_position = await self._store.events_page(
                position, conn_id=trigger.conn_id, statuses=trigger.statuses, limit=trigger.batch_size
            )
            for event in events:
                yield event_payload(event), event.id
            position = next_position
            if len(events) < trigger.batch_size:
                await asyncio.sleep(trigger.poll_interval)

    async def advance(self, batch: Sequence[AdvanceItem]) -> None:
        # After an unconfirmed event the cursor stays put for the rest of this poll: moving it past
        # a later event would skip the unconfirmed one for good.
        if self._advancing and self._store is not None:
            self._advancing = await self.trigger.advance_cursor(self._store, batch)

    async def aclose(self) -> None:
        if self._store is not None:
            await self._store.dispose()
            self._store = None
