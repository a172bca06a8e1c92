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
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from airflow_provider_readreceipts import __version__
from airflow_provider_readreceipts.store.records import StoreSchemaError

log = logging.getLogger(__name__)


#: The schema version this package writes; :func:`migrate_schema` brings a store up to it.
SCHEMA_VERSION = 1
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


_metadata = sa.MetaData()

# SQLite needs INTEGER (not BIGINT) for a rowid alias, and AUTOINCREMENT so that ids are never
# reused after purge deletes the newest rows: a reused id would hide events from a cursor.
_EventId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

schema_version_table = sa.Table(
    "rr_schema_version",
    _metadata,
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("applied_at", UTCDateTime, nullable=False),
    sa.Column("package_version", sa.Text, nullable=False),
)

events_table = sa.Table(
    "rr_events",
    _metadata,
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

messages_table = sa.Table(
    "rr_messages",
    _metadata,
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
    _metadata,
    sa.Column("receiver_id", sa.Text, primary_key=True),
    sa.Column("started_at", UTCDateTime, nullable=False),
    sa.Column("seen_at", UTCDateTime, nullable=False),
)

cursors_table = sa.Table(
    "rr_cursors",
    _metadata,
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("value", sa.BigInteger, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
)


def _migrate_to_1(conn: Connection) -> None:
    """Version 1: events, current statuses, heartbeats and cursors."""
    # This creates the tables as defined above. When a later version alters one of them, give this
    # step a frozen copy of the version-1 definitions first, so old stores upgrade step by step.
    _metadata.create_all(
        conn, tables=[events_table, messages_table, heartbeats_table, cursors_table], checkfirst=False
    )


#: Schema versions and the step that brings a store from the previous version to each.
_MIGRATIONS: dict[int, Callable[[Connection], None]] = {1: _migrate_to_1}
assert max(_MIGRATIONS) == SCHEMA_VERSION


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
    for version in sorted(_MIGRATIONS):
        if version <= current:
            continue
        log.info("Receipt store %s: applying schema version %d", display_url, version)
        _MIGRATIONS[version](conn)
        conn.execute(
            schema_version_table.insert().values(
                version=version, applied_at=utcnow(), package_version=__version__
            )
        )
    return SCHEMA_VERSION
