"""
The receipt store for synchronous code: the receiver's writer, tasks, the CLI.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection, Engine

from airflow_provider_readreceipts.receipts import (
    InvalidInputError,
    ReceiptEvent,
)
from airflow_provider_readreceipts.store.config import display_url, normalise_url, store_url_from_airflow
from airflow_provider_readreceipts.store.engines import SQLITE_BEGIN_OPTION, create_store_engine
from airflow_provider_readreceipts.store.reads import last_heartbeat_query, read_statuses, stored_event
from airflow_provider_readreceipts.store.records import MessageStatus, StoredEvent
from airflow_provider_readreceipts.store.schema import (
    events_table,
    heartbeats_table,
    messages_table,
    migrate_schema,
    read_schema_version,
    require_schema,
    utcnow,
)
from airflow_provider_readreceipts.store.validation import check_source, validate_events
from airflow_provider_readreceipts.store.writes import SOURCE_WEBHOOK, heartbeat_upsert, write_entries

log = logging.getLogger(__name__)


_PURGE_CHUNK = 5_000


_T = TypeVar("_T")


class ReceiptStore:
    """
    The receipt store, for synchronous code: the receiver's writer thread, tasks, the CLI.

    Thread-safe: it holds a connection pool, and every method runs in its own transaction.

    :param url: ``sqlite:///<path>`` or ``postgresql+psycopg://<user>:<password>@<host>/<database>``
        (``postgresql://`` means psycopg too).
    :param echo: log every SQL statement (SQLAlchemy's ``echo``).
    :param busy_timeout: SQLite only: seconds to wait for another process's write lock before
        failing.
    """

    def __init__(self, url: str, *, echo: bool = False, busy_timeout: float = 30.0) -> None:
        self.url: URL = normalise_url(url, asynchronous=False)
        self.url_for_display: str = display_url(self.url)
        self.dialect: str = self.url.get_backend_name()
        self._engine = create_store_engine(self.url, busy_timeout=busy_timeout, echo=echo)
        # Write transactions take SQLite's write lock up front (BEGIN IMMEDIATE): a deferred
        # transaction that reads first and writes later fails at once when another writer got in
        # between, whereas IMMEDIATE waits out the busy timeout.
        self._write_engine = self._engine.execution_options(**{SQLITE_BEGIN_OPTION: "IMMEDIATE"})

    def __repr__(self) -> str:
        return f"ReceiptStore({self.url_for_display!r})"

    def __enter__(self) -> ReceiptStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @classmethod
    def from_airflow(
        cls, *, conn_id: str | None = None, path: str | os.PathLike[str] | None = None, echo: bool = False
    ) -> ReceiptStore:
        """
        The store Airflow's configuration names (see :func:`store_url_from_airflow`).

        :param conn_id: the store connection; ``readreceipts_store_default`` when ``None``.
        :param path: the SQLite file when no store connection exists.
        :param echo: log every SQL statement.
        """
        return cls(store_url_from_airflow(conn_id=conn_id, path=path), echo=echo)

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine (for tests and diagnostics)."""
        return self._engine

    def read(self, work: Callable[[Connection], _T]) -> _T:
        """Run ``work`` on a connection (no write lock); for the store's feature modules."""
        with self._engine.connect() as conn:
            return work(conn)

    def write(self, work: Callable[[Connection], _T]) -> _T:
        """Run ``work`` in one write transaction, committed when it returns; for feature modules."""
        with self._write_engine.begin() as conn:
            return work(conn)

    def migrate(self) -> int:
        """
        Create the schema or upgrade it to :data:`SCHEMA_VERSION`; return that version.

        Safe when several processes run it at once: they take turns under a lock (PostgreSQL's
        advisory transaction lock, SQLite's write lock) and each applies only what is missing.

        :raises StoreSchemaError: the store was migrated by a newer version of this package.
        """
        with self._write_engine.begin() as conn:
            return migrate_schema(conn, self.url_for_display)

    def schema_version(self) -> int | None:
        """The store's schema version; ``None`` when it has never been migrated."""
        with self._engine.connect() as conn:
            return read_schema_version(conn)

    def check_schema(self) -> int:
        """
        The schema version, when it is the one this package uses.

        :raises StoreSchemaError: not migrated, or migrated to another version; the message says what
            to run.
        """
        return require_schema(self.schema_version(), self.url_for_display)

    def record(self, events: Sequence[ReceiptEvent], *, source: str = SOURCE_WEBHOOK) -> list[bool]:
        """
        Store events in one transaction; ``True`` per event newly stored, ``False`` per duplicate.

        Returns after the commit. Updates each message's current status by the ladder. On
        PostgreSQL, listeners on ``readreceipts`` are notified when the commit stored something new.

        :param events: the events, in any order, duplicates allowed.
        :param source: how they were learned: ``"webhook"`` or ``"reconcile"``.
        :raises InvalidInputError: an event no database could store (nothing is written).
        """
        validate_events(events)
        check_source(source)
        return self.record_entries([(event, source) for event in events])

    def record_entries(self, entries: Sequence[tuple[ReceiptEvent, str]]) -> list[bool]:
        """
        :meth:`record` for events of different sources in one transaction (the batch writer's commit).

        :param entries: ``(event, source)`` pairs, already checked with :func:`validate_events`.
        """
        if not entries:
            return []
        with self._write_engine.begin() as conn:
            return write_entries(conn, entries)

    def message_status(self, conn_id: str, message_id: str) -> MessageStatus | None:
        """
        The current status of one message; ``None`` when no event for it is stored.

        :param conn_id: the vendor connection.
        :param message_id: the vendor's message id.
        """
        return self.message_statuses([(conn_id, message_id)]).get((conn_id, message_id))

    def message_statuses(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], MessageStatus]:
        """
        The current status of many messages in one query; messages with no events are left out.

        :param keys: ``(conn_id, message_id)`` pairs.
        """
        with self._engine.connect() as conn:
            return read_statuses(conn, keys)

    def events(self, conn_id: str, message_id: str) -> list[StoredEvent]:
        """
        Every stored event of one message, oldest first.

        :param conn_id: the vendor connection.
        :param message_id: the vendor's message id.
        """
        columns = events_table.c
        query = (
            sa.select(events_table)
            .where(columns.conn_id == conn_id, columns.message_id == message_id)
            .order_by(columns.id)
        )
        with self._engine.connect() as conn:
            return [stored_event(row) for row in conn.execute(query)]

    def heartbeat(self, receiver_id: str) -> None:
        """
        Record that a receiver is alive and writing to this store; the receiver calls it periodically.

        :param receiver_id: a name unique to the receiver process, e.g. ``"<host>:<pid>"``.
        """
        now = utcnow()
        with self._write_engine.begin() as conn:
            conn.execute(
                heartbeat_upsert(self.dialect),
                {"receiver_id": receiver_id, "started_at": now, "seen_at": now},
            )

    def last_heartbeat(self) -> datetime | None:
        """When any receiver last recorded a heartbeat here; ``None`` when none ever did."""
        with self._engine.connect() as conn:
            return conn.execute(last_heartbeat_query()).scalar()

    def purge(self, *, older_than: timedelta) -> int:
        """
        Delete events received longer ago than ``older_than``; return how many.

        Also deletes the current status of messages left with no events and heartbeats as old.
        Deletes in chunks, each its own transaction, so writers are never held up for long.

        :param older_than: the age; must be positive.
        """
        if older_than <= timedelta(0):
            raise InvalidInputError("older_than", "must be a positive duration")
        cutoff = utcnow() - older_than
        events = events_table.c
        deleted = 0
        while True:
            oldest = (
                sa.select(events.id)
                .where(events.received_at < cutoff)
                .order_by(events.id)
                .limit(_PURGE_CHUNK)
            )
            with self._write_engine.begin() as conn:
                count = conn.execute(
                    sa.delete(events_table).where(events.id.in_(oldest.scalar_subquery()))
                ).rowcount
            deleted += count
            if count < _PURGE_CHUNK:
                break
        messages = messages_table.c
        has_events = sa.exists().where(
            events.conn_id == messages.conn_id, events.message_id == messages.message_id
        )
        with self._write_engine.begin() as conn:
            conn.execute(sa.delete(messages_table).where(messages.updated_at < cutoff, ~has_events))
            conn.execute(sa.delete(heartbeats_table).where(heartbeats_table.c.seen_at < cutoff))
        log.info("Receipt store %s: purged %d events older than %s", self.url_for_display, deleted, cutoff)
        return deleted

    def close(self) -> None:
        """Close every pooled connection."""
        self._engine.dispose()
