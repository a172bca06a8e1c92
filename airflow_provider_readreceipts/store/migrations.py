"""
The steps that bring a receipt store from one schema version to the next, run by
:func:`~airflow_provider_readreceipts.store.schema.migrate_schema` (``readreceipts db migrate``).

Each step is frozen: it creates or alters tables as they were at its version, never through the
current definitions in :mod:`.schema`, so that a store at any old version upgrades step by step.
A step that needs a table of a later version's shape creates it from a copy taken at that version.
"""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from airflow_provider_readreceipts.store import schema

#: Rows backfilled per statement when a step computes a new column from old ones.
_BACKFILL_CHUNK = 2_000


def _version_1_tables() -> list[sa.Table]:
    """rr_events, rr_messages, rr_heartbeats and rr_cursors as version 1 defined them."""
    metadata = sa.MetaData()
    event_id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
    events = sa.Table(
        "rr_events",
        metadata,
        sa.Column("id", event_id, primary_key=True, autoincrement=True),
        sa.Column("conn_id", sa.Text, nullable=False),
        sa.Column("vendor", sa.Text, nullable=False),
        sa.Column("message_id", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("raw_status", sa.Text, nullable=False),
        sa.Column("dedup_status", sa.Text, nullable=False),
        sa.Column("participant", sa.Text, nullable=False, server_default=""),
        sa.Column("chat_id", sa.Text, nullable=False, server_default=""),
        sa.Column("occurred_at", schema.UTCDateTime, nullable=True),
        sa.Column("received_at", schema.UTCDateTime, nullable=False),
        sa.Column("event_id", sa.Text, nullable=False, server_default=""),
        sa.Column("error_code", sa.Text, nullable=False, server_default=""),
        sa.Column("error_message", sa.Text, nullable=False, server_default=""),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("payload", sa.Text, nullable=False, server_default="{}"),
        sa.UniqueConstraint("conn_id", "message_id", "dedup_status", "participant", name="rr_events_once"),
        sa.Index(
            "rr_events_vendor_event_id",
            "conn_id",
            "event_id",
            unique=True,
            sqlite_where=sa.text("event_id <> ''"),
            postgresql_where=sa.text("event_id <> ''"),
        ),
        sa.Index("rr_events_received_at", "received_at"),
        sqlite_autoincrement=True,
    )
    messages = sa.Table(
        "rr_messages",
        metadata,
        sa.Column("conn_id", sa.Text, primary_key=True),
        sa.Column("message_id", sa.Text, primary_key=True),
        sa.Column("vendor", sa.Text, nullable=False),
        sa.Column("chat_id", sa.Text, nullable=False, server_default=""),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("raw_status", sa.Text, nullable=False),
        sa.Column("rank", sa.Integer, nullable=False),
        sa.Column("updated_at", schema.UTCDateTime, nullable=False),
        sa.Column("read_at", schema.UTCDateTime, nullable=True),
        sa.Column("delivered_at", schema.UTCDateTime, nullable=True),
        sa.Column("failed_code", sa.Text, nullable=False, server_default=""),
        sa.Column("failed_reason", sa.Text, nullable=False, server_default=""),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("event_row_id", sa.BigInteger, nullable=False),
    )
    heartbeats = sa.Table(
        "rr_heartbeats",
        metadata,
        sa.Column("receiver_id", sa.Text, primary_key=True),
        sa.Column("started_at", schema.UTCDateTime, nullable=False),
        sa.Column("seen_at", schema.UTCDateTime, nullable=False),
    )
    cursors = sa.Table(
        "rr_cursors",
        metadata,
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("value", sa.BigInteger, nullable=False),
        sa.Column("updated_at", schema.UTCDateTime, nullable=False),
    )
    return [events, messages, heartbeats, cursors]


def migrate_to_1(conn: Connection) -> None:
    """Version 1: events, current statuses, heartbeats and cursors."""
    tables = _version_1_tables()
    tables[0].metadata.create_all(conn, tables=tables, checkfirst=False)


#: The tables version 2 added, created from their definitions in :mod:`.schema`. When a later
#: version alters one of them, freeze its version-2 shape here first.
_VERSION_2_NEW_TABLES = (
    schema.outbound_table,
    schema.campaigns_table,
    schema.campaign_steps_table,
    schema.campaign_recipients_table,
    schema.claims_table,
)


def migrate_to_2(conn: Connection) -> None:
    """
    Version 2: campaigns, replies and claims.

    - ``rr_events`` gains ``participant_id`` and ``chat_key``, identities by
      :func:`~airflow_provider_readreceipts.identity.normalize_identity`, backfilled for the events
      already stored, and an index of inbound messages by conversation.
    - New tables: ``rr_outbound`` (what was sent to which conversation, for replies),
      ``rr_campaigns``, ``rr_campaign_steps``, ``rr_campaign_recipients`` and ``rr_claims``.
    """
    for column in ("participant_id", "chat_key"):
        conn.execute(sa.text(f"ALTER TABLE rr_events ADD COLUMN {column} TEXT NOT NULL DEFAULT ''"))
    _backfill_event_identities(conn)
    inbound_index = next(i for i in schema.events_table.indexes if i.name == "rr_events_inbound_by_chat")
    inbound_index.create(conn)
    schema.metadata.create_all(conn, tables=list(_VERSION_2_NEW_TABLES), checkfirst=False)


def _backfill_event_identities(conn: Connection) -> None:
    from airflow_provider_readreceipts.identity import normalize_identity

    events = sa.table("rr_events", sa.column("id"), sa.column("participant"), sa.column("chat_id"))
    update = sa.text(
        "UPDATE rr_events SET participant_id = :participant_id, chat_key = :chat_key WHERE id = :row_id"
    )
    after = 0
    while True:
        rows = conn.execute(
            sa.select(events.c.id, events.c.participant, events.c.chat_id)
            .where(events.c.id > after)
            .order_by(events.c.id)
            .limit(_BACKFILL_CHUNK)
        ).all()
        if not rows:
            return
        conn.execute(
            update,
            [
                {
                    "row_id": row.id,
                    "participant_id": normalize_identity(row.participant or ""),
                    "chat_key": normalize_identity(row.chat_id or ""),
                }
                for row in rows
            ],
        )
        after = rows[-1].id


#: Schema versions and the step that brings a store from the previous version to each.
MIGRATIONS: dict[int, Callable[[Connection], None]] = {1: migrate_to_1, 2: migrate_to_2}
