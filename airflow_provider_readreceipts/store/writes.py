"""
Storing events: the statements, and one transaction's work of recording a batch.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import Connection

from airflow_provider_readreceipts.identity import normalize_identity
from airflow_provider_readreceipts.receipts import (
    ReceiptEvent,
    Status,
    status_rank,
)
from airflow_provider_readreceipts.store.schema import (
    NOTIFY_CHANNEL,
    as_utc,
    cursors_table,
    events_table,
    heartbeats_table,
    messages_table,
    utcnow,
)
from airflow_provider_readreceipts.store.validation import dedup_status, payload_text

#: Sources of an event: the vendor's webhook, or the vendor's status API polled by a waiter.
SOURCE_WEBHOOK = "webhook"
SOURCE_RECONCILE = "reconcile"
#: Advisory lock (spells "rr_w") that serialises event writers on PostgreSQL, so that event ids
#: become visible in increasing order and a cursor over ids never skips a late commit.
_WRITE_LOCK_KEY = 0x72725F77


def _insert(dialect_name: str, table: sa.Table) -> Any:
    """``INSERT`` with ``ON CONFLICT`` support for the dialect."""
    return (pg.insert if dialect_name == "postgresql" else sqlite.insert)(table)


# Columns written per row (JSON rows on PostgreSQL, executemany on SQLite), in the order of each row's values.
_EventKey = tuple[str, str, str, str]
_EVENT_COLUMNS = (
    "conn_id",
    "vendor",
    "message_id",
    "status",
    "raw_status",
    "dedup_status",
    "participant",
    "chat_id",
    "occurred_at",
    "received_at",
    "event_id",
    "error_code",
    "error_message",
    "source",
    "payload",
    "participant_id",
    "chat_key",
)
_MESSAGE_COLUMNS = (
    "conn_id",
    "message_id",
    "vendor",
    "chat_id",
    "status",
    "raw_status",
    "rank",
    "updated_at",
    "read_at",
    "delivered_at",
    "failed_code",
    "failed_reason",
    "source",
    "event_row_id",
)


def _sqlite_timestamp(value: datetime) -> str:
    """A timestamp as SQLAlchemy's SQLite ``DateTime`` stores it (naive UTC, sortable text)."""
    if value.tzinfo is not None:
        # The standard library's own methods, also on subclasses (pendulum's are slower Python).
        value = datetime.replace(datetime.astimezone(value, timezone.utc), tzinfo=None)
    return datetime.isoformat(value, " ", "microseconds")


def _postgres_timestamp(value: datetime) -> str:
    return as_utc(value).isoformat()


def _timestamp_text(dialect_name: str) -> Callable[[datetime], str]:
    return _postgres_timestamp if dialect_name == "postgresql" else _sqlite_timestamp


def _json_rows(table: sa.Table, names: Sequence[str]) -> sa.Select[Any]:
    """
    ``SELECT`` the rows of one JSON parameter (``rows``: an array of arrays of ``names``' values), in
    order (PostgreSQL).

    Writing a batch this way costs one statement, one parameter and one parse on the server,
    whatever the batch size: no per-row round trip or parameter binding in Python, and a statement
    text that the driver prepares once. Timestamps travel as text (see :func:`_timestamp_text`).
    SQLite, in-process and without round trips, binds rows faster with ``executemany``.
    """
    rows = sa.bindparam("rows", type_=sa.Text)
    incoming = (
        sa.func.jsonb_array_elements(sa.cast(rows, pg.JSONB))
        .table_valued("value", with_ordinality="position")
        .render_derived(name="incoming")
    )
    value, position = incoming.c.value, incoming.c.position

    def field(index: int, column: sa.Column[Any]) -> Any:
        text = value.op("->>")(sa.literal_column(str(index)))
        return text if isinstance(column.type, sa.Text) else sa.cast(text, column.type)

    return (
        sa.select(*(field(index, table.c[name]).label(name) for index, name in enumerate(names)))
        .select_from(incoming)
        .order_by(position)
    )


def _sqlite_executemany(statement: Any, names: Sequence[str]) -> str:
    """
    ``statement`` as SQLite text with one ``?`` per column of ``names``, in that order, for
    ``executemany``; raises if SQLAlchemy would order or add parameters differently.
    """
    compiled = statement.compile(dialect=sqlite.dialect(), column_keys=list(names))
    if list(compiled.positiontup or ()) != list(names):
        raise AssertionError(f"unexpected parameters {compiled.positiontup} for {names}")
    return str(compiled)


@functools.cache
def _postgres_events_insert() -> Any:
    """
    ``INSERT INTO rr_events ... ON CONFLICT DO NOTHING RETURNING`` the inserted rows' ids and keys,
    from one JSON parameter (SQLite's counterpart is :func:`_sqlite_events_insert`).

    No conflict target: a clash on either unique index (the event key, or the vendor's event id)
    makes the row a duplicate. Rows are inserted in the order given, so ids grow in that order and
    the first of several equal keys in one batch is the one stored. Built once.
    """
    columns = events_table.c
    return (
        pg.insert(events_table)
        .from_select(_EVENT_COLUMNS, _json_rows(events_table, _EVENT_COLUMNS))
        .on_conflict_do_nothing()
        .returning(
            columns.id,
            columns.conn_id,
            columns.message_id,
            columns.dedup_status,
            columns.participant,
            columns.event_id,
        )
    )


@functools.cache
def _postgres_messages_upsert() -> Any:
    """
    The upsert that merges folded rows into ``rr_messages`` in SQL, so concurrent writers (threads
    or processes) never lose an update: each merges into the row as the previous writer committed it.

    Its rows come as one JSON parameter (see :func:`_json_rows`). Built once (constructing ON
    CONFLICT statements costs more than running them).
    """
    rows = _json_rows(messages_table, _MESSAGE_COLUMNS)
    return _merge_message(pg.insert(messages_table).from_select(_MESSAGE_COLUMNS, rows))


@functools.cache
def _sqlite_messages_upsert() -> str:
    """:func:`_postgres_messages_upsert`'s merge as SQLite text for ``executemany``."""
    return _sqlite_executemany(_merge_message(sqlite.insert(messages_table)), _MESSAGE_COLUMNS)


def _merge_message(statement: Any) -> Any:
    """``ON CONFLICT DO UPDATE`` by the status ladder, for an ``INSERT INTO rr_messages``."""
    new = statement.excluded
    old = messages_table.c
    higher = new.rank > old.rank
    # A literal, not a parameter: SQLite's executemany text takes exactly one parameter per column.
    empty: Any = sa.literal_column("''")

    def if_higher(name: str) -> Any:
        return sa.case((higher, new[name]), else_=old[name])

    no_failure_yet = sa.and_(old.failed_code == empty, old.failed_reason == empty)
    return statement.on_conflict_do_update(
        index_elements=[old.conn_id, old.message_id],
        set_={
            # The ladder: only a higher rank replaces the status and what goes with it.
            **{
                name: if_higher(name)
                for name in ("status", "raw_status", "rank", "updated_at", "source", "event_row_id")
            },
            # Whatever the rank: the earliest READ and DELIVERED, the first failure, the first chat.
            "read_at": _earliest(old.read_at, new.read_at),
            "delivered_at": _earliest(old.delivered_at, new.delivered_at),
            "failed_code": sa.case((no_failure_yet, new.failed_code), else_=old.failed_code),
            "failed_reason": sa.case((no_failure_yet, new.failed_reason), else_=old.failed_reason),
            "chat_id": sa.case((old.chat_id == empty, new.chat_id), else_=old.chat_id),
        },
    )


@functools.cache
def heartbeat_upsert(dialect_name: str) -> Any:
    statement = _insert(dialect_name, heartbeats_table)
    return statement.on_conflict_do_update(
        index_elements=[heartbeats_table.c.receiver_id], set_={"seen_at": statement.excluded.seen_at}
    )


@functools.cache
def _cursor_upsert(dialect_name: str) -> Any:
    statement = _insert(dialect_name, cursors_table)
    return statement.on_conflict_do_update(
        index_elements=[cursors_table.c.name],
        set_={"value": statement.excluded.value, "updated_at": statement.excluded.updated_at},
    )


def _earliest(current: Any, new: Any) -> Any:
    """SQL for the earlier of two nullable timestamps (SQLite's min() returns NULL on any NULL)."""
    return sa.case((current.is_(None), new), (new.is_(None), current), (new < current, new), else_=current)


@dataclass
class _MessageFold:
    """A message's newly stored events merged, by the rules the SQL upsert applies."""

    event: ReceiptEvent
    status: Status
    rank: int
    source: str
    row_id: int
    chat_id: str
    read_at: datetime | None = None
    delivered_at: datetime | None = None
    failed_code: str = ""
    failed_reason: str = ""
    failed: bool = False

    def merge(
        self, event: ReceiptEvent, status: Status, source: str, row_id: int, received_at: datetime
    ) -> None:
        happened_at = as_utc(event.occurred_at) if event.occurred_at else received_at
        rank = status_rank(status)
        if rank > self.rank:
            self.event, self.status, self.rank, self.source, self.row_id = event, status, rank, source, row_id
        if status is Status.READ and (self.read_at is None or happened_at < self.read_at):
            self.read_at = happened_at
        if status is Status.DELIVERED and (self.delivered_at is None or happened_at < self.delivered_at):
            self.delivered_at = happened_at
        if status is Status.FAILED and not self.failed:
            self.failed, self.failed_code, self.failed_reason = True, event.error_code, event.error_message
        if not self.chat_id:
            self.chat_id = event.chat_id


def _fold_messages(
    new_events: Sequence[tuple[ReceiptEvent, Status, str, int]], received_at: datetime
) -> list[_MessageFold]:
    """
    One merged record per message from its newly stored events, in arrival order.

    PostgreSQL refuses an upsert that touches one row twice in a statement, so events of the same
    message are merged here first; the upsert then merges the result with the stored row.
    """
    folded: dict[tuple[str, str], _MessageFold] = {}
    for event, status, source, row_id in new_events:
        key = (event.conn_id, event.message_id)
        fold = folded.get(key)
        if fold is None:
            # rank -1: the first event always takes the lead.
            fold = folded[key] = _MessageFold(event, status, -1, source, row_id, event.chat_id)
        fold.merge(event, status, source, row_id, received_at)
    return list(folded.values())


_SQLITE_LAST_EVENT_ID = sa.text("SELECT seq FROM sqlite_sequence WHERE name = 'rr_events'")
_SQLITE_EVENTS_AFTER = sa.text(
    "SELECT json_group_array(json_array(id, conn_id, message_id, dedup_status, participant, event_id))"
    " FROM rr_events WHERE id > :after"
)


@functools.cache
def _sqlite_events_insert() -> str:
    """``INSERT INTO rr_events ... VALUES (?, ...) ON CONFLICT DO NOTHING`` for ``executemany`` (SQLite)."""
    return _sqlite_executemany(sqlite.insert(events_table).on_conflict_do_nothing(), _EVENT_COLUMNS)


def _insert_events(conn: Connection, rows: list[list[Any]]) -> Iterable[Sequence[Any]]:
    """
    Insert the event rows; return ``(id, conn_id, message_id, dedup_status, participant, event_id)``
    of each row actually inserted (duplicates are skipped by ``ON CONFLICT DO NOTHING``).

    PostgreSQL returns them through ``RETURNING``. On SQLite, Python's driver steps a ``RETURNING``
    statement once per row and lets go of the GIL at every step: with the event loop thread busy,
    each step may wait out a whole GIL switch interval (5 ms), which made the writer's commits, not
    CPU, the receiver's limit. So SQLite reads the new rows back as one JSON value instead: the
    transaction holds SQLite's write lock (``BEGIN IMMEDIATE``), and ``AUTOINCREMENT`` ids only
    grow, so the rows with an id above the sequence read before the insert are exactly this
    statement's. SQLite inserts the rows with ``executemany``, which binds each row in C: about
    half the CPU of having SQLite extract every field of every row from one JSON parameter.
    """
    dialect_name = conn.dialect.name
    if dialect_name == "postgresql":
        return conn.execute(_postgres_events_insert(), {"rows": json.dumps(rows)}).tuples()
    after = conn.execute(_SQLITE_LAST_EVENT_ID).scalar() or 0
    conn.exec_driver_sql(_sqlite_events_insert(), [tuple(row) for row in rows])
    inserted = conn.execute(_SQLITE_EVENTS_AFTER, {"after": after}).scalar()
    return json.loads(inserted) if inserted else []


def write_entries(conn: Connection, entries: Sequence[tuple[ReceiptEvent, str]]) -> list[bool]:
    """
    Store ``entries`` (event, source) in the caller's transaction; ``True`` per newly stored event.

    Duplicates (earlier in the store or earlier in ``entries``) get ``False``.
    """
    if not entries:
        return []
    dialect_name = conn.dialect.name
    if dialect_name == "postgresql":
        # One event writer at a time: ids are drawn after this lock and the lock is released after
        # commit, so ids become visible in increasing order and cursors never skip a late commit.
        conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_WRITE_LOCK_KEY)))
    received_at = utcnow()
    timestamp = _timestamp_text(dialect_name)
    received_text = timestamp(received_at)
    keys: list[_EventKey] = []
    statuses: list[Status] = []
    rows: list[list[Any]] = []
    for event, source in entries:
        status = Status(event.status)
        dedup = dedup_status(event)
        participant = event.participant or ""
        keys.append((event.conn_id, event.message_id, dedup, participant))
        statuses.append(status)
        rows.append(
            [
                event.conn_id,
                event.vendor,
                event.message_id,
                status.value,
                event.raw_status,
                dedup,
                participant,
                event.chat_id or "",
                timestamp(event.occurred_at) if event.occurred_at else None,
                received_text,
                event.event_id or "",
                event.error_code or "",
                event.error_message or "",
                source,
                payload_text(event.payload),
                normalize_identity(participant),
                normalize_identity(event.chat_id or ""),
            ]
        )
    stored: dict[tuple[_EventKey, str], int] = {}
    for row_id, *key_fields, event_id in _insert_events(conn, rows):
        stored[(tuple(key_fields), event_id)] = row_id
    flags: list[bool] = []
    new_events: list[tuple[ReceiptEvent, Status, str, int]] = []
    for (event, source), key, status in zip(entries, keys, statuses, strict=True):
        # One RETURNING row per inserted row, found by its key and vendor event id: of several
        # equal entries in the batch, the first claims it and the others are duplicates.
        row_id = stored.pop((key, event.event_id or ""), None)
        flags.append(row_id is not None)
        if row_id is not None:
            new_events.append((event, status, source, row_id))
    if not new_events:
        return flags
    message_rows = [
        [
            fold.event.conn_id,
            fold.event.message_id,
            fold.event.vendor,
            fold.chat_id or "",
            fold.status.value,
            fold.event.raw_status,
            fold.rank,
            received_text,
            timestamp(fold.read_at) if fold.read_at else None,
            timestamp(fold.delivered_at) if fold.delivered_at else None,
            fold.failed_code or "",
            fold.failed_reason or "",
            fold.source,
            fold.row_id,
        ]
        for fold in _fold_messages(new_events, received_at)
    ]
    if dialect_name == "postgresql":
        conn.execute(_postgres_messages_upsert(), {"rows": json.dumps(message_rows)})
        # Delivered by PostgreSQL when (and only if) this transaction commits.
        payload = json.dumps({"events": len(new_events), "last_id": max(row_id for *_, row_id in new_events)})
        conn.execute(sa.select(sa.func.pg_notify(NOTIFY_CHANNEL, payload)))
    else:
        conn.exec_driver_sql(_sqlite_messages_upsert(), [tuple(row) for row in message_rows])
    return flags


def set_cursor(conn: Connection, name: str, value: int) -> None:
    conn.execute(_cursor_upsert(conn.dialect.name), {"name": name, "value": value, "updated_at": utcnow()})
