"""
The receipt store for the event loop (triggers): async drivers only, nothing blocks.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from airflow_provider_readreceipts.receipts import (
    ReceiptEvent,
    Status,
)
from airflow_provider_readreceipts.store.config import astore_url_from_airflow, display_url, normalise_url
from airflow_provider_readreceipts.store.engines import SQLITE_BEGIN_OPTION, create_async_store_engine
from airflow_provider_readreceipts.store.reads import (
    events_page,
    last_heartbeat_query,
    read_statuses,
    select_events_after,
    stored_event,
)
from airflow_provider_readreceipts.store.records import MessageStatus, StoredEvent
from airflow_provider_readreceipts.store.schema import (
    cursors_table,
    events_table,
    read_schema_version,
    require_schema,
)
from airflow_provider_readreceipts.store.validation import check_text, validate_events
from airflow_provider_readreceipts.store.writes import SOURCE_RECONCILE, set_cursor, write_entries

_T = TypeVar("_T")


class AsyncReceiptStore:
    """
    The receipt store for the event loop (triggers): async drivers only, nothing blocks.

    aiosqlite runs SQLite in a helper thread; asyncpg speaks to PostgreSQL natively. Statements and
    durability settings are the same as :class:`ReceiptStore`'s.

    :param url: the same URL as for :class:`ReceiptStore`: ``sqlite://`` becomes
        ``sqlite+aiosqlite://`` and ``postgresql(+psycopg)://`` becomes ``postgresql+asyncpg://``.
    :param busy_timeout: SQLite only: seconds to wait for another process's write lock.
    """

    def __init__(self, url: str, *, busy_timeout: float = 30.0) -> None:
        self.url: URL = normalise_url(url, asynchronous=True)
        self.url_for_display: str = display_url(self.url)
        self.dialect: str = self.url.get_backend_name()
        self._engine: AsyncEngine = create_async_store_engine(self.url, busy_timeout=busy_timeout)
        self._write_engine = self._engine.execution_options(**{SQLITE_BEGIN_OPTION: "IMMEDIATE"})

    def __repr__(self) -> str:
        return f"AsyncReceiptStore({self.url_for_display!r})"

    async def __aenter__(self) -> AsyncReceiptStore:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.dispose()

    @classmethod
    async def from_airflow(
        cls, *, conn_id: str | None = None, path: str | os.PathLike[str] | None = None
    ) -> AsyncReceiptStore:
        """
        The store Airflow's configuration names, looked up without blocking the loop.

        :param conn_id: the store connection; ``readreceipts_store_default`` when ``None``.
        :param path: the SQLite file when no store connection exists.
        """
        return cls(await astore_url_from_airflow(conn_id=conn_id, path=path))

    @property
    def engine(self) -> AsyncEngine:
        """The SQLAlchemy engine (for tests and diagnostics)."""
        return self._engine

    async def read(self, work: Callable[[Connection], _T]) -> _T:
        """Run ``work`` (synchronous SQLAlchemy code) on a connection, without blocking the loop."""
        async with self._engine.connect() as conn:
            return await conn.run_sync(work)

    async def write(self, work: Callable[[Connection], _T]) -> _T:
        """Run ``work`` in one write transaction, committed when it returns."""
        async with self._write_engine.begin() as conn:
            return await conn.run_sync(work)

    async def schema_version(self) -> int | None:
        """The store's schema version; ``None`` when it has never been migrated."""
        return await self.read(read_schema_version)

    async def check_schema(self) -> int:
        """The schema version; ``StoreSchemaError`` (saying what to run) when it is not this package's."""
        return require_schema(await self.schema_version(), self.url_for_display)

    async def statuses(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], MessageStatus]:
        """
        The current status of many messages in ONE query; messages with no events are left out.

        :param keys: ``(conn_id, message_id)`` pairs; duplicates are fine.
        """
        return await self.read(lambda conn: read_statuses(conn, keys))

    async def record(self, events: Sequence[ReceiptEvent], *, source: str = SOURCE_RECONCILE) -> list[bool]:
        """
        :meth:`ReceiptStore.record`, from the event loop: same transaction, ladder and NOTIFY.

        :param events: the events.
        :param source: ``"reconcile"`` (what a waiter learned from the vendor's API) or ``"webhook"``.
        """
        validate_events(events)
        check_text("source", source)
        entries = [(event, source) for event in events]
        if not entries:
            return []
        return await self.write(lambda conn: write_entries(conn, entries))

    async def last_heartbeat(self) -> datetime | None:
        """When any receiver last recorded a heartbeat here; ``None`` when none ever did."""
        return await self.read(lambda conn: conn.execute(last_heartbeat_query()).scalar())

    async def events_after(
        self,
        cursor: int,
        *,
        conn_id: str | None = None,
        statuses: Sequence[Status | str] | None = None,
        limit: int = 500,
    ) -> list[StoredEvent]:
        """
        Events with an id above ``cursor``, lowest id first (ids only grow and never appear late).

        :param cursor: the last id already handled (0 for the beginning).
        :param conn_id: only this connection's events.
        :param statuses: only events with these normalised statuses.
        :param limit: at most this many.
        """
        query = select_events_after(cursor, conn_id=conn_id, statuses=statuses, limit=limit)
        return await self.read(lambda conn: [stored_event(row) for row in conn.execute(query)])

    async def events_page(
        self,
        cursor: int,
        *,
        conn_id: str | None = None,
        statuses: Sequence[Status | str] | None = None,
        limit: int = 500,
    ) -> tuple[list[StoredEvent], int]:
        """
        :meth:`events_after` plus the cursor to continue from.

        With a filter, the next cursor moves past events that do not match too, so a quiet filter
        does not rescan the same rows at every poll.
        """
        return await self.read(
            lambda conn: events_page(conn, cursor, conn_id=conn_id, statuses=statuses, limit=limit)
        )

    async def max_event_id(self) -> int:
        """The newest event id (0 for an empty store): where a new cursor starts to see only new events."""
        return await self.read(
            lambda conn: conn.execute(sa.select(sa.func.max(events_table.c.id))).scalar() or 0
        )

    async def get_cursor(self, name: str) -> int:
        """
        A named cursor's value; 0 when it was never set.

        :param name: the cursor's name, e.g. the event trigger's identity.
        """
        query = sa.select(cursors_table.c.value).where(cursors_table.c.name == name)
        value = await self.read(lambda conn: conn.execute(query).scalar())
        return int(value or 0)

    async def set_cursor(self, name: str, value: int) -> None:
        """
        Save a named cursor (committed before this returns).

        :param name: the cursor's name.
        :param value: the last event id handled.
        """
        await self.write(lambda conn: set_cursor(conn, name, value))

    async def dispose(self) -> None:
        """Close every pooled connection."""
        await self._engine.dispose()
