"""
The receipt store's schema: its tables, their versions, and the migrations between them.

Tables are prefixed ``rr_``; :func:`migrate_schema` creates and upgrades them and records each
applied version in ``rr_schema_version``:

* ``rr_events``: one row per distinct event, with the raw payload as JSON text. An event is unique
  on ``(conn_id, message_id, dedup_status, participant)`` where ``participant`` is ``""`` (never
  NULL) outside group chats and ``dedup_status`` is the normalised status, except for
  :attr:`Status.UNKNOWN`, where it is ``UNKNOWN:<raw status>`` so that two different statuses this
  package does not know are not folded into one (a raw status longer than 100 characters is keyed by
  its first 64 characters and a SHA-256 digest, to keep index entries small). A non-empty vendor
  ``event_id`` is unique per ``conn_id`` too: a replayed delivery is a duplicate. Duplicates are
  skipped with ``INSERT ... ON CONFLICT DO NOTHING``. Ids only grow (``AUTOINCREMENT`` on SQLite, a
  sequence on PostgreSQL) and, because writers are serialised (the SQLite write lock; an advisory
  transaction lock on PostgreSQL), a reader that sees id *n* also sees every id below it: a cursor
  over ids never skips an event committed late.
* ``rr_messages``: the current status of each message, kept by an upsert in SQL that only moves up
  the ladder (:data:`~airflow_provider_readreceipts.receipts.STATUS_RANK`), so events may arrive in
  any order and from any number of processes without losing an update.
* ``rr_heartbeats``: when each receiver last wrote, so a waiter can tell a store that no receiver
  writes to from a message that is simply unread.
* ``rr_cursors``: named positions in ``rr_events`` for event triggers, kept across restarts.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from airflow_provider_readreceipts import __version__
from airflow_provider_readreceipts.store.records import StoreSchemaError

log = logging.getLogger(__name__)


#: The schema version this package writes; :func:`migrate_schema` brings a store up to it.
SCHEMA_VERSION = 2
#: The PostgreSQL channel notified after each commit that stored new events.
NOTIFY_CHANNEL = "readreceipts"

# Advisory lock keys (any bigint; these spell "rr_m" and "rr_w"). The migration lock makes
# concurrent `migrate()` calls take turns; the write lock serialises event writers so that event ids
# become visible in increasing order (see the module docstring).
_MIGRATE_LOCK_KEY = 0x72725F6D


class UTCDateTime(sa.TypeDecorator[datetime]):
    """
    Timestamps in UTC: ``timestamptz`` on PostgreSQL, ISO text on SQLite; always aware when read.

    Naive datetimes are taken to be UTC. SQLite keeps them as naive UTC text, which sorts in time
    order, so range comparisons (purge) work on both databases.
    """

    impl = sa.DateTime
    cache_ok = True

    def load_dialect_impl(self, dialect: sa.Dialect) -> sa.types.TypeEngine[Any]:
        return dialect.type_descriptor(sa.DateTime(timezone=dialect.name == "postgresql"))

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        value = as_utc(value)
        return value if dialect.name == "postgresql" else value.replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        return None if value is None else as_utc(value)


def utcnow() -> datetime:
    """Now, as an aware UTC datetime."""
    return datetime.now(timezone.utc)


def as_utc(value: datetime) -> datetime:
    """An aware UTC datetime; naive values are taken to be UTC."""
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


metadata = sa.MetaData()

# SQLite needs INTEGER (not BIGINT) for a rowid alias, and AUTOINCREMENT so that ids are never
# reused after purge deletes the newest rows: a reused id would hide events from a cursor.
_EventId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

schema_version_table = sa.Table(
    "rr_schema_version",
    metadata,
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("applied_at", UTCDateTime, nullable=False),
    sa.Column("package_version", sa.Text, nullable=False),
)

events_table = sa.Table(
    "rr_events",
    metadata,
    sa.Column("id", _EventId, primary_key=True, autoincrement=True),
    sa.Column("conn_id", sa.Text, nullable=False),
    sa.Column("vendor", sa.Text, nullable=False),
    sa.Column("message_id", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("raw_status", sa.Text, nullable=False),
    sa.Column("dedup_status", sa.Text, nullable=False),
    sa.Column("participant", sa.Text, nullable=False, server_default=""),
    sa.Column("chat_id", sa.Text, nullable=False, server_default=""),
    sa.Column("occurred_at", UTCDateTime, nullable=True),
    sa.Column("received_at", UTCDateTime, nullable=False),
    sa.Column("event_id", sa.Text, nullable=False, server_default=""),
    sa.Column("error_code", sa.Text, nullable=False, server_default=""),
    sa.Column("error_message", sa.Text, nullable=False, server_default=""),
    sa.Column("source", sa.Text, nullable=False),
    sa.Column("payload", sa.Text, nullable=False, server_default="{}"),
    # Version 2: the participant and the conversation by identity (identity.normalize_identity),
    # beside the raw values above, for group policies and for matching replies to sends.
    sa.Column("participant_id", sa.Text, nullable=False, server_default=""),
    sa.Column("chat_key", sa.Text, nullable=False, server_default=""),
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
    sa.Index(
        "rr_events_inbound_by_chat",
        "conn_id",
        "chat_key",
        "id",
        sqlite_where=sa.text("status = 'RECEIVED'"),
        postgresql_where=sa.text("status = 'RECEIVED'"),
    ),
    sqlite_autoincrement=True,
)

messages_table = sa.Table(
    "rr_messages",
    metadata,
    sa.Column("conn_id", sa.Text, primary_key=True),
    sa.Column("message_id", sa.Text, primary_key=True),
    sa.Column("vendor", sa.Text, nullable=False),
    sa.Column("chat_id", sa.Text, nullable=False, server_default=""),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("raw_status", sa.Text, nullable=False),
    sa.Column("rank", sa.Integer, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.Column("read_at", UTCDateTime, nullable=True),
    sa.Column("delivered_at", UTCDateTime, nullable=True),
    sa.Column("failed_code", sa.Text, nullable=False, server_default=""),
    sa.Column("failed_reason", sa.Text, nullable=False, server_default=""),
    sa.Column("source", sa.Text, nullable=False),
    # The rr_events row that decided the current status (for audits; no foreign key, because
    # purge removes old events while the message row may stay).
    sa.Column("event_row_id", sa.BigInteger, nullable=False),
)

heartbeats_table = sa.Table(
    "rr_heartbeats",
    metadata,
    sa.Column("receiver_id", sa.Text, primary_key=True),
    sa.Column("started_at", UTCDateTime, nullable=False),
    sa.Column("seen_at", UTCDateTime, nullable=False),
)

cursors_table = sa.Table(
    "rr_cursors",
    metadata,
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("value", sa.BigInteger, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
)


# -- version 2 --------------------------------------------------------------------------------------

outbound_table = sa.Table(
    "rr_outbound",
    metadata,
    # Every message this package sent or waits on, by the conversation it went to: a reply is the
    # answer to the latest message sent to its conversation before it (see the README, "Replies").
    sa.Column("conn_id", sa.Text, primary_key=True),
    sa.Column("message_id", sa.Text, primary_key=True),
    sa.Column("vendor", sa.Text, nullable=False),
    sa.Column("chat_key", sa.Text, nullable=False),
    sa.Column("recipient", sa.Text, nullable=False, server_default=""),
    #: Our own line it went from, where the vendor has several per account (Sendblue).
    sa.Column("line", sa.Text, nullable=False, server_default=""),
    sa.Column("sent_at", UTCDateTime, nullable=False),
    sa.Column("campaign_id", sa.Text, nullable=False, server_default=""),
    sa.Column("step", sa.Text, nullable=False, server_default=""),
    sa.Index("rr_outbound_by_chat", "conn_id", "chat_key", "sent_at"),
)

campaigns_table = sa.Table(
    "rr_campaigns",
    metadata,
    sa.Column("campaign_id", sa.Text, primary_key=True),
    sa.Column("dag_id", sa.Text, nullable=False, server_default=""),
    sa.Column("run_id", sa.Text, nullable=False, server_default=""),
    sa.Column("created_at", UTCDateTime, nullable=False),
)

campaign_steps_table = sa.Table(
    "rr_campaign_steps",
    metadata,
    sa.Column("campaign_id", sa.Text, primary_key=True),
    sa.Column("step", sa.Text, primary_key=True),
    #: 1 for the campaign's first step, 2 for the next one created, ...
    sa.Column("position", sa.Integer, nullable=False),
    sa.Column("kind", sa.Text, nullable=False),  # "message" or "call"
    sa.Column("vendor", sa.Text, nullable=False),
    sa.Column("conn_id", sa.Text, nullable=False),
    sa.Column("channel", sa.Text, nullable=False, server_default=""),
    sa.Column("task_id", sa.Text, nullable=False, server_default=""),
    #: The step and outcome group this step acts on ("" for a campaign's first step).
    sa.Column("source_step", sa.Text, nullable=False, server_default=""),
    sa.Column("source_outcome", sa.Text, nullable=False, server_default=""),
    sa.Column("recipients", sa.Integer, nullable=False),
    #: SHA-256 of the sorted recipients: a campaign id reused with another recipient set is refused.
    sa.Column("fingerprint", sa.Text, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("send_finished_at", UTCDateTime, nullable=True),
    #: Set by the campaign wait: what ends a recipient's wait, and when.
    sa.Column("wait_until", sa.Text, nullable=False, server_default=""),
    sa.Column("read_within_seconds", sa.Float, nullable=True),
    sa.Column("deadline_at", UTCDateTime, nullable=True),
    sa.Column("wait_started_at", UTCDateTime, nullable=True),
    sa.Column("wait_finished_at", UTCDateTime, nullable=True),
)

campaign_recipients_table = sa.Table(
    "rr_campaign_recipients",
    metadata,
    sa.Column("campaign_id", sa.Text, primary_key=True),
    sa.Column("step", sa.Text, primary_key=True),
    #: E.164 for a phone number (identity.normalize_identity), a group id for a group.
    sa.Column("recipient", sa.Text, primary_key=True),
    #: The row's place in the step's input, for ordering and paging.
    sa.Column("seq", sa.Integer, nullable=False),
    sa.Column("vendor", sa.Text, nullable=False),
    sa.Column("conn_id", sa.Text, nullable=False),
    #: The vendor's own name of the conversation (a Chert chat id, a RyzeAPI JID's digits, ...).
    sa.Column("chat", sa.Text, nullable=False, server_default=""),
    sa.Column("chat_key", sa.Text, nullable=False, server_default=""),
    sa.Column("message_id", sa.Text, nullable=True),
    #: pending, sending, sent, send_unknown or refused (with send_error).
    sa.Column("send_state", sa.Text, nullable=False),
    sa.Column("send_error", sa.Text, nullable=False, server_default=""),
    #: The input row's own fields (JSON), for templated texts.
    sa.Column("fields", sa.Text, nullable=False, server_default="{}"),
    sa.Column("attempted_at", UTCDateTime, nullable=True),
    sa.Column("sent_at", UTCDateTime, nullable=True),
    #: read, unread, failed or replied, once decided; NULL while waiting or never sent.
    sa.Column("outcome", sa.Text, nullable=True),
    sa.Column("decided_at", UTCDateTime, nullable=True),
    sa.Column("delivered_at", UTCDateTime, nullable=True),
    sa.Column("read_at", UTCDateTime, nullable=True),
    sa.Column("failure_reason", sa.Text, nullable=False, server_default=""),
    sa.Column("note", sa.Text, nullable=False, server_default=""),
    sa.Column("reconciled_at", UTCDateTime, nullable=True),
    sa.Column("replied_at", UTCDateTime, nullable=True),
    sa.Column("reply_text", sa.Text, nullable=False, server_default=""),
    sa.Column("reply_label", sa.Text, nullable=False, server_default=""),
    sa.Column("reply_message_id", sa.Text, nullable=False, server_default=""),
    sa.Column("reply_sender", sa.Text, nullable=False, server_default=""),
    sa.Index("rr_campaign_recipients_by_message", "conn_id", "message_id"),
    sa.Index("rr_campaign_recipients_by_chat", "conn_id", "chat_key"),
    sa.Index("rr_campaign_recipients_waiting", "campaign_id", "step", "outcome", "sent_at"),
    sa.Index("rr_campaign_recipients_in_order", "campaign_id", "step", "seq"),
)

claims_table = sa.Table(
    "rr_claims",
    metadata,
    # Who handles a stored event: claimed once across runs, processes and restarts, and handed to
    # another claimant only after the lease of a crashed handler ran out.
    sa.Column("claimer", sa.Text, primary_key=True),
    sa.Column("event_id", sa.BigInteger, primary_key=True),
    sa.Column("holder", sa.Text, nullable=False),
    sa.Column("claimed_at", UTCDateTime, nullable=False),
    sa.Column("lease_until", UTCDateTime, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("done_at", UTCDateTime, nullable=True),
)


def read_schema_version(conn: Connection) -> int | None:
    if not sa.inspect(conn).has_table(schema_version_table.name):
        return None
    return conn.execute(sa.select(sa.func.max(schema_version_table.c.version))).scalar()


def require_schema(version: int | None, display_url: str) -> int:
    if version is None:
        raise StoreSchemaError(
            f"the receipt store {display_url} has no schema yet: run `readreceipts db migrate` (or"
            " ReceiptStore.migrate()) first"
        )
    if version != SCHEMA_VERSION:
        newer = version > SCHEMA_VERSION
        raise StoreSchemaError(
            f"the receipt store {display_url} has schema version {version}, this package uses"
            f" {SCHEMA_VERSION}: "
            + ("upgrade airflow-provider-readreceipts" if newer else "run `readreceipts db migrate`")
        )
    return version


def migrate_schema(conn: Connection, display_url: str) -> int:
    if conn.dialect.name == "postgresql":
        # Concurrent migrators queue here; the lock ends with the transaction. (On SQLite, the
        # caller's BEGIN IMMEDIATE does the same.)
        conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_MIGRATE_LOCK_KEY)))
    schema_version_table.create(conn, checkfirst=True)
    current = conn.execute(sa.select(sa.func.max(schema_version_table.c.version))).scalar() or 0
    if current > SCHEMA_VERSION:
        require_schema(current, display_url)
    from airflow_provider_readreceipts.store.migrations import MIGRATIONS

    assert max(MIGRATIONS) == SCHEMA_VERSION
    for version in sorted(MIGRATIONS):
        if version <= current:
            continue
        log.info("Receipt store %s: applying schema version %d", display_url, version)
        MIGRATIONS[version](conn)
        conn.execute(
            schema_version_table.insert().values(
                version=version, applied_at=utcnow(), package_version=__version__
            )
        )
    return SCHEMA_VERSION
