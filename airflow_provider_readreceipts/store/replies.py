"""
Which message a reply answers: the rule every wait applies, campaign or single message.

Replies are matched by conversation and time. A conversation is ``chat_key``: the other party's
identity (E.164 for a phone number, a group's JID, Chert's chat id), written beside every stored
event and every message sent (``rr_outbound``). An inbound message answers **the latest message
sent to its conversation, on the same connection, at or before the time it was written**; so when
two waits wait on one chat at once, the reply goes to the one whose message was sent last, and
the earlier one does not see it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import Connection

from airflow_provider_readreceipts.receipts import Status
from airflow_provider_readreceipts.store.schema import as_utc, events_table, outbound_table

events = events_table.c
outbound = outbound_table.c


@dataclass(frozen=True)
class Inbound:
    """An inbound message as stored: who wrote in which conversation, when, and the raw payload."""

    event_row_id: int
    conn_id: str
    vendor: str
    message_id: str
    chat_key: str
    participant: str
    participant_id: str
    at: datetime
    payload: str


def register_outbound(
    conn: Connection,
    *,
    conn_id: str,
    message_id: str,
    vendor: str,
    chat_key: str,
    recipient: str,
    sent_at: datetime,
    line: str = "",
    campaign_id: str = "",
    step: str = "",
) -> None:
    """Record a sent message by its conversation (once; a repeat changes nothing)."""
    insert = (pg.insert if conn.dialect.name == "postgresql" else sqlite.insert)(outbound_table)
    conn.execute(
        insert.values(
            conn_id=conn_id,
            message_id=message_id,
            vendor=vendor,
            chat_key=chat_key,
            recipient=recipient,
            line=line,
            sent_at=sent_at,
            campaign_id=campaign_id,
            step=step,
        ).on_conflict_do_nothing()
    )


def latest_sends(
    conn: Connection, conn_id: str, chat_keys: Iterable[str]
) -> dict[str, list[tuple[datetime, str]]]:
    """Every message sent to these conversations on ``conn_id``: ``chat_key -> [(sent_at, message_id)]``."""
    keys = sorted(set(chat_keys))
    if not keys:
        return {}
    rows = conn.execute(
        sa.select(outbound.chat_key, outbound.sent_at, outbound.message_id).where(
            outbound.conn_id == conn_id, outbound.chat_key.in_(keys)
        )
    ).all()
    sends: dict[str, list[tuple[datetime, str]]] = {}
    for chat_key, sent_at, message_id in rows:
        sends.setdefault(chat_key, []).append((as_utc(sent_at), message_id))
    return sends


def answered_message(sends: list[tuple[datetime, str]], at: datetime) -> str | None:
    """The message a reply written at ``at`` answers: the latest sent at or before it."""
    before = [send for send in sends if send[0] <= at]
    return max(before)[1] if before else None


_HAPPENED = sa.func.coalesce(events.occurred_at, events.received_at)


def _inbound_query() -> sa.Select[Any]:
    return sa.select(
        events.id,
        events.conn_id,
        events.vendor,
        events.message_id,
        events.chat_key,
        events.participant,
        events.participant_id,
        _HAPPENED.label("happened_at"),
        events.payload,
    ).where(events.status == Status.RECEIVED.value)


def _inbound(row: Any) -> Inbound:
    return Inbound(
        event_row_id=row.id,
        conn_id=row.conn_id,
        vendor=row.vendor,
        message_id=row.message_id,
        chat_key=row.chat_key,
        participant=row.participant,
        participant_id=row.participant_id,
        at=as_utc(row.happened_at),
        payload=row.payload,
    )


def inbound_after(conn: Connection, after: int, *, upto: int, limit: int = 5000) -> list[Inbound]:
    """Inbound messages with an event id in ``(after, upto]``, oldest first."""
    rows = conn.execute(
        _inbound_query().where(events.id > after, events.id <= upto).order_by(events.id).limit(limit)
    ).all()
    return [_inbound(row) for row in rows]


def inbound_in_chat(
    conn: Connection, conn_id: str, chat_key: str, *, since: datetime, upto: int
) -> list[Inbound]:
    """Inbound messages to one conversation written at or after ``since``, up to event id ``upto``."""
    rows = conn.execute(
        _inbound_query()
        .where(events.conn_id == conn_id, events.chat_key == chat_key, events.id <= upto, _HAPPENED >= since)
        .order_by(events.id)
    ).all()
    return [_inbound(row) for row in rows]
