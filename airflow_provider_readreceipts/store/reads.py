"""
Reading the store: current statuses of many messages in one query, and events by increasing id.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.engine import Connection

from airflow_provider_readreceipts.receipts import (
    InvalidInputError,
    Status,
)
from airflow_provider_readreceipts.store.records import MessageStatus, StoredEvent
from airflow_provider_readreceipts.store.schema import events_table, heartbeats_table, messages_table


def _select_statuses(dialect_name: str, keys: Sequence[tuple[str, str]]) -> sa.Select[Any]:
    """
    One query for the current status and readers of many messages.

    The keys travel as one parameter (a JSON array on SQLite, two text arrays on PostgreSQL), so
    the query stays one statement for any number of waits, within every driver's parameter limit.
    """
    messages = messages_table.c
    wanted_conn_id: sa.ColumnElement[Any]
    wanted_message_id: sa.ColumnElement[Any]
    if dialect_name == "postgresql":
        conn_ids = [conn_id for conn_id, _ in keys]
        message_ids = [message_id for _, message_id in keys]
        wanted = (
            sa.func.unnest(
                sa.cast(sa.bindparam("conn_ids", conn_ids, type_=pg.ARRAY(sa.Text)), pg.ARRAY(sa.Text)),
                sa.cast(sa.bindparam("message_ids", message_ids, type_=pg.ARRAY(sa.Text)), pg.ARRAY(sa.Text)),
            )
            .table_valued("conn_id", "message_id")
            .render_derived(name="wanted")
        )
        wanted_conn_id, wanted_message_id = wanted.c.conn_id, wanted.c.message_id
    else:
        wanted = sa.func.json_each(
            sa.bindparam("keys", json.dumps([list(key) for key in keys]))
        ).table_valued("value", name="wanted")
        wanted_conn_id = sa.func.json_extract(wanted.c.value, "$[0]")
        wanted_message_id = sa.func.json_extract(wanted.c.value, "$[1]")
    readers = events_table.alias("readers")
    return (
        sa.select(
            messages_table,
            # The reader by identity (identity.normalize_identity), so that a group policy naming
            # "+5511988887777" counts a reader the vendor wrote as "5511988887777@s.whatsapp.net".
            sa.func.coalesce(sa.func.nullif(readers.c.participant_id, ""), readers.c.participant).label(
                "reader"
            ),
            sa.func.coalesce(readers.c.occurred_at, readers.c.received_at).label("reader_read_at"),
        )
        .select_from(wanted)
        .join(
            messages_table,
            sa.and_(messages.conn_id == wanted_conn_id, messages.message_id == wanted_message_id),
        )
        .outerjoin(
            readers,
            sa.and_(
                readers.c.conn_id == messages.conn_id,
                readers.c.message_id == messages.message_id,
                readers.c.dedup_status == Status.READ.value,
                readers.c.participant != "",
            ),
        )
    )


def _status_of(value: str) -> Status:
    try:
        return Status(value)
    except ValueError:
        return Status.UNKNOWN


def _statuses_from_rows(rows: Iterable[Any]) -> dict[tuple[str, str], MessageStatus]:
    found: dict[tuple[str, str], MessageStatus] = {}
    for row in rows:
        key = (row.conn_id, row.message_id)
        status = found.get(key)
        if status is None:
            status = found[key] = MessageStatus(
                conn_id=row.conn_id,
                message_id=row.message_id,
                vendor=row.vendor,
                chat_id=row.chat_id,
                status=_status_of(row.status),
                raw_status=row.raw_status,
                updated_at=row.updated_at,
                read_at=row.read_at,
                readers=[],
                delivered_at=row.delivered_at,
                failed_code=row.failed_code,
                failed_reason=row.failed_reason,
                source=row.source,
            )
        if row.reader:
            earlier = status.reader_read_at.get(row.reader)
            if earlier is None or row.reader_read_at < earlier:
                status.reader_read_at[row.reader] = row.reader_read_at
    for status in found.values():
        status.readers.extend(
            sorted(status.reader_read_at, key=lambda name: (status.reader_read_at[name], name))
        )
    return found


def read_statuses(conn: Connection, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], MessageStatus]:
    unique_keys = list(dict.fromkeys((str(conn_id), str(message_id)) for conn_id, message_id in keys))
    if not unique_keys:
        return {}
    return _statuses_from_rows(conn.execute(_select_statuses(conn.dialect.name, unique_keys)))


def stored_event(row: Any) -> StoredEvent:
    try:
        payload = json.loads(row.payload)
    except ValueError:
        payload = {"_unparsed": row.payload}
    return StoredEvent(
        id=row.id,
        conn_id=row.conn_id,
        vendor=row.vendor,
        message_id=row.message_id,
        status=_status_of(row.status),
        raw_status=row.raw_status,
        participant=row.participant,
        participant_id=row.participant_id,
        chat_key=row.chat_key,
        chat_id=row.chat_id,
        occurred_at=row.occurred_at,
        received_at=row.received_at,
        event_id=row.event_id,
        error_code=row.error_code,
        error_message=row.error_message,
        source=row.source,
        payload=payload if isinstance(payload, dict) else {"_value": payload},
    )


def select_events_after(
    cursor: int, *, conn_id: str | None, statuses: Sequence[Status | str] | None, limit: int
) -> sa.Select[Any]:
    if limit < 1:
        raise InvalidInputError("limit", "must be at least 1")
    columns = events_table.c
    query = sa.select(events_table).where(columns.id > cursor)
    if conn_id is not None:
        query = query.where(columns.conn_id == conn_id)
    if statuses is not None:
        query = query.where(columns.status.in_([Status(status).value for status in statuses]))
    return query.order_by(columns.id).limit(limit)


def events_page(
    conn: Connection,
    cursor: int,
    *,
    conn_id: str | None,
    statuses: Sequence[Status | str] | None,
    limit: int,
) -> tuple[list[StoredEvent], int]:
    # The newest id first, then the events up to it: on PostgreSQL each statement has its own
    # snapshot, and an id read after the events could cover events the first statement missed.
    # Every id up to the newest one is committed (ids become visible in order).
    newest = conn.execute(sa.select(sa.func.max(events_table.c.id))).scalar() or 0
    query = select_events_after(cursor, conn_id=conn_id, statuses=statuses, limit=limit)
    events = [stored_event(row) for row in conn.execute(query.where(events_table.c.id <= newest))]
    if len(events) == limit:
        return events, events[-1].id
    # Fewer than asked for: every matching event up to the newest id is in hand, so the cursor
    # moves past the ones that do not match too.
    return events, max(cursor, newest)


def last_heartbeat_query() -> sa.Select[Any]:
    return sa.select(sa.func.max(heartbeats_table.c.seen_at))
