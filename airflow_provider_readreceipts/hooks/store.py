"""
The receipt store: every receipt event stored once and durably, and each message's current status.

One code path (SQLAlchemy Core) serves both databases:

* **SQLite** (the default): a file under ``AIRFLOW_HOME``, in WAL mode with ``synchronous=FULL``, so
  a commit survives a power cut, and with a busy timeout, so several processes wait for the write
  lock instead of failing. Every write transaction starts with ``BEGIN IMMEDIATE``: it takes the
  write lock before reading anything, which is what lets ``busy_timeout`` work (a deferred
  transaction that reads first and writes later fails at once when another writer got in between).
* **PostgreSQL** (for several machines): ``synchronous_commit=on`` set explicitly on every
  connection, whatever the server's default; ``NOTIFY readreceipts`` in every transaction that
  stores something new, which PostgreSQL delivers to listeners only once that transaction commits.

Schema (tables are prefixed ``rr_``; :func:`ReceiptStore.migrate` creates and upgrades them and
records each applied version in ``rr_schema_version``):

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
  over ids (:meth:`AsyncReceiptStore.events_after`) never skips an event committed late.
* ``rr_messages``: the current status of each message, kept by an upsert in SQL that only moves up
  the ladder (:data:`~airflow_provider_readreceipts.receipts.STATUS_RANK`), so events may arrive in
  any order and from any number of processes without losing an update.
* ``rr_heartbeats``: when each receiver last wrote, so a waiter can tell a store that no receiver
  writes to from a message that is simply unread.
* ``rr_cursors``: named positions in ``rr_events`` for event triggers, kept across restarts.

Importing this module imports SQLAlchemy: operators and sensors import it only when they run.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import hashlib
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from airflow_provider_readreceipts import __version__
from airflow_provider_readreceipts.receipts import (
    InvalidInputError,
    ReadReceiptsError,
    ReceiptEvent,
    Status,
    status_rank,
)

if TYPE_CHECKING:
    from airflow.sdk import Connection as AirflowConnection

log = logging.getLogger(__name__)

#: The schema version this package writes; :meth:`ReceiptStore.migrate` brings a store up to it.
SCHEMA_VERSION = 1
#: The Airflow connection that, when it exists, points the store at PostgreSQL.
DEFAULT_STORE_CONN_ID = "readreceipts_store_default"
#: Environment variable naming the SQLite file when no store connection exists.
STORE_PATH_ENV = "READRECEIPTS_STORE_PATH"
#: The SQLite file's name under ``AIRFLOW_HOME`` when nothing else says where the store is.
DEFAULT_SQLITE_FILENAME = "readreceipts.db"
#: The PostgreSQL channel notified after each commit that stored new events.
NOTIFY_CHANNEL = "readreceipts"
#: Sources of an event: the vendor's webhook, or the vendor's status API polled by a waiter.
SOURCE_WEBHOOK = "webhook"
SOURCE_RECONCILE = "reconcile"

# Advisory lock keys (any bigint; these spell "rr_m" and "rr_w"). The migration lock makes
# concurrent `migrate()` calls take turns; the write lock serialises event writers so that event ids
# become visible in increasing order (see the module docstring).
_MIGRATE_LOCK_KEY = 0x72725F6D
_WRITE_LOCK_KEY = 0x72725F77
_PURGE_CHUNK = 5_000
# Longest accepted key field (ids, participant): PostgreSQL refuses btree entries over ~2.7 kB.
_MAX_KEY_LENGTH = 512
_MAX_RAW_STATUS_IN_KEY = 100
# Options read by the `begin` listener to choose SQLite's BEGIN mode.
_BEGIN_OPTION = "readreceipts_sqlite_begin"
_BEGIN_MODES = frozenset({"DEFERRED", "IMMEDIATE", "EXCLUSIVE"})
# libpq connection parameters an Airflow postgres connection may carry in its extras.
_LIBPQ_EXTRAS = frozenset(
    {
        "sslmode",
        "sslcert",
        "sslkey",
        "sslrootcert",
        "sslcrl",
        "sslpassword",
        "application_name",
        "connect_timeout",
        "options",
        "target_session_attrs",
        "keepalives",
        "keepalives_idle",
        "keepalives_interval",
        "keepalives_count",
    }
)

_T = TypeVar("_T")


class StoreError(ReadReceiptsError):
    """The receipt store is misconfigured or cannot be used; the message says what to do."""


class StoreSchemaError(StoreError):
    """The store's schema is missing or not the version this package uses."""


# --------------------------------------------------------------------------------------------------
# Records handed out by the store
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MessageStatus:
    """
    The current status of one message, as the ladder decides it from every event stored for it.

    :param conn_id: the vendor connection the message belongs to.
    :param message_id: the vendor's id of the message.
    :param vendor: the vendor's name.
    :param chat_id: the conversation, from the first event that named one.
    :param status: the current status (the highest rank seen; the first one on a tie).
    :param raw_status: the vendor's own status string of the deciding event.
    :param updated_at: when the store learned the current status (UTC).
    :param read_at: when it was first read: the earliest READ's vendor time (its arrival time when
        the vendor gave none); ``None`` when unread.
    :param readers: group participants who read it, earliest first; a READ without a participant
        (a one-to-one chat) counts for ``read_at`` but adds no reader.
    :param delivered_at: the earliest DELIVERED event's time, even when READ outranks it.
    :param failed_code: the vendor's error code of the first FAILED event; ``""`` when none.
    :param failed_reason: the vendor's reason of the first FAILED event; ``""`` when none.
    :param source: how the deciding event was learned: ``"webhook"`` or ``"reconcile"``.
    :param reader_read_at: when each reader in ``readers`` read it.
    """

    conn_id: str
    message_id: str
    vendor: str
    chat_id: str
    status: Status
    raw_status: str
    updated_at: datetime
    read_at: datetime | None
    readers: list[str]
    delivered_at: datetime | None
    failed_code: str
    failed_reason: str
    source: str
    reader_read_at: dict[str, datetime] = field(default_factory=dict)


@dataclass(frozen=True)
class StoredEvent:
    """
    One stored event: a :class:`~airflow_provider_readreceipts.receipts.ReceiptEvent` and where it came from.

    :param id: the row id; it only grows, so it serves as a cursor.
    :param received_at: when the store committed it (UTC).
    :param source: ``"webhook"`` or ``"reconcile"``.
    :param payload: the vendor's raw payload.

    The other fields are those of :class:`~airflow_provider_readreceipts.receipts.ReceiptEvent`.
    """

    id: int
    conn_id: str
    vendor: str
    message_id: str
    status: Status
    raw_status: str
    participant: str
    chat_id: str
    occurred_at: datetime | None
    received_at: datetime
    event_id: str
    error_code: str
    error_message: str
    source: str
    payload: dict[str, Any]

    def to_receipt_event(self) -> ReceiptEvent:
        """The event as the vendor adapters produce it."""
        return ReceiptEvent(
            vendor=self.vendor,
            conn_id=self.conn_id,
            message_id=self.message_id,
            status=self.status,
            raw_status=self.raw_status,
            participant=self.participant,
            chat_id=self.chat_id,
            occurred_at=self.occurred_at,
            event_id=self.event_id,
            error_code=self.error_code,
            error_message=self.error_message,
            payload=self.payload,
        )


# --------------------------------------------------------------------------------------------------
# Schema
# --------------------------------------------------------------------------------------------------


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
        value = _as_utc(value)
        return value if dialect.name == "postgresql" else value.replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        return None if value is None else _as_utc(value)


def _as_utc(value: datetime) -> datetime:
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


# --------------------------------------------------------------------------------------------------
# Engines: durability settings on every new connection
# --------------------------------------------------------------------------------------------------


def _sqlite_file(url: URL) -> Path:
    database = url.database or ""
    if database in ("", ":memory:") or database.startswith("file::memory:") or "mode=memory" in database:
        raise StoreError(
            f"the receipt store needs a SQLite file, not an in-memory database ({url!r}): events"
            " must outlive the process and be visible to other processes"
        )
    return Path(database)


def _install_sqlite_listeners(engine: Engine, *, busy_timeout_ms: int) -> None:
    """Durability and locking settings on every new SQLite connection; explicit BEGIN modes."""

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, connection_record: Any) -> None:
        # Take transaction control away from the sqlite3 module (it would skip BEGIN before DDL and
        # SELECT): the `begin` listener below emits BEGIN itself, in the mode the caller asked for.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            # busy_timeout first: switching to WAL needs a lock that another process may hold.
            cursor.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            _switch_to_wal(cursor, busy_timeout_ms / 1000)
            # FULL, not WAL's usual NORMAL: NORMAL may lose the last commits on power loss, and the
            # receiver acknowledges an event only once its commit is durable.
            cursor.execute("PRAGMA synchronous = FULL")
        finally:
            cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        mode = conn.get_execution_options().get(_BEGIN_OPTION, "DEFERRED")
        if mode not in _BEGIN_MODES:
            raise ValueError(f"unknown SQLite BEGIN mode {mode!r}")
        conn.exec_driver_sql(f"BEGIN {mode}")


def _switch_to_wal(cursor: Any, timeout: float) -> None:
    """
    ``PRAGMA journal_mode = WAL``, retried while another process holds the lock it needs.

    SQLite answers "database is locked" at once, without its busy handler, when several processes
    open a new file together and each tries to switch it: wait and retry, as busy_timeout would.
    """
    import sqlite3

    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        try:
            cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() + delay > deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


def _install_postgres_listeners(engine: Engine) -> None:
    """``synchronous_commit=on`` on every new psycopg connection, whatever the server's default."""

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, connection_record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("SET synchronous_commit TO on")
        finally:
            cursor.close()
        # SET at session level outlives the transaction only once that transaction commits.
        dbapi_connection.commit()


def _normalise_url(url: str | URL, *, asynchronous: bool) -> URL:
    """The URL with the driver this package uses for its dialect; ``StoreError`` for other databases."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return parsed.set(drivername="sqlite+aiosqlite" if asynchronous else "sqlite")
    if backend == "postgresql":
        return parsed.set(drivername="postgresql+asyncpg" if asynchronous else "postgresql+psycopg")
    raise StoreError(
        f"unsupported receipt store URL {parsed.render_as_string(hide_password=True)!r}: use"
        " sqlite:///<path> or postgresql+psycopg://<user>@<host>/<database>"
    )


def _display(url: URL) -> str:
    return url.render_as_string(hide_password=True)


# --------------------------------------------------------------------------------------------------
# Where the store is, from Airflow's configuration
# --------------------------------------------------------------------------------------------------


def default_sqlite_path(*, path: str | os.PathLike[str] | None = None) -> Path:
    """
    The SQLite file used when no store connection exists.

    :param path: an explicit file; else ``READRECEIPTS_STORE_PATH``; else ``$AIRFLOW_HOME/readreceipts.db``
        (``~/airflow`` when ``AIRFLOW_HOME`` is unset, as in Airflow itself).
    """
    if path is not None:
        return Path(path).expanduser()
    from_env = os.environ.get(STORE_PATH_ENV)
    if from_env:
        return Path(from_env).expanduser()
    airflow_home = os.environ.get("AIRFLOW_HOME") or "~/airflow"
    return Path(airflow_home).expanduser() / DEFAULT_SQLITE_FILENAME


def url_from_connection(connection: AirflowConnection) -> str:
    """
    The store URL an Airflow connection describes: ``postgres`` (the database in its schema field,
    libpq options such as ``sslmode`` in its extras) or ``sqlite`` (the file in its host field).

    :param connection: the Airflow connection.
    """
    conn_type = (connection.conn_type or "").lower()
    if conn_type in ("postgres", "postgresql"):
        extras = connection.extra_dejson or {}
        query = {key: str(value) for key, value in extras.items() if key in _LIBPQ_EXTRAS}
        url = URL.create(
            "postgresql+psycopg",
            username=connection.login or None,
            password=connection.password or None,
            host=connection.host or None,
            port=connection.port or None,
            database=connection.schema or None,
            query=query,
        )
        return url.render_as_string(hide_password=False)
    if conn_type == "sqlite":
        if not connection.host:
            raise StoreError(
                f"connection {connection.conn_id!r}: put the SQLite file's path in the host field"
            )
        return URL.create("sqlite", database=connection.host).render_as_string(hide_password=False)
    raise StoreError(
        f"connection {connection.conn_id!r} has type {connection.conn_type!r}; the receipt store"
        " needs a 'postgres' (or 'sqlite') connection"
    )


def _sqlite_url(path: Path) -> str:
    return URL.create("sqlite", database=str(path)).render_as_string(hide_password=False)


def store_url_from_airflow(*, conn_id: str | None = None, path: str | os.PathLike[str] | None = None) -> str:
    """
    The store URL Airflow's configuration gives, with the password in it (do not log it).

    PostgreSQL (or whatever it describes) when the connection exists: ``conn_id``, or
    ``readreceipts_store_default`` when ``conn_id`` is ``None``. An explicit ``conn_id`` that does not
    exist is an error, never a silent fall-back to a local file that no receiver writes to. Without
    a connection, a SQLite file: see :func:`default_sqlite_path`.

    Outside tasks and the API server, Airflow resolves connections only from environment variables
    (``AIRFLOW_CONN_<ID>``) and secrets backends.

    :param conn_id: the store connection's id.
    :param path: the SQLite file to use when there is no store connection.
    """
    from airflow.sdk import BaseHook
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        connection = BaseHook.get_connection(conn_id or DEFAULT_STORE_CONN_ID)
    except AirflowNotFoundException:
        if conn_id is not None:
            raise StoreError(
                f"the receipt store connection {conn_id!r} is not defined (outside tasks and the API"
                f" server, define it as the environment variable AIRFLOW_CONN_{conn_id.upper()} or in"
                " a secrets backend)"
            ) from None
        return _sqlite_url(default_sqlite_path(path=path))
    return url_from_connection(connection)


async def astore_url_from_airflow(
    *, conn_id: str | None = None, path: str | os.PathLike[str] | None = None
) -> str:
    """:func:`store_url_from_airflow` for the event loop (connection look-up without blocking)."""
    from airflow.sdk import BaseHook
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        connection = await BaseHook.aget_connection(conn_id or DEFAULT_STORE_CONN_ID)
    except AirflowNotFoundException:
        if conn_id is not None:
            raise StoreError(f"the receipt store connection {conn_id!r} is not defined") from None
        return _sqlite_url(default_sqlite_path(path=path))
    return url_from_connection(connection)


# --------------------------------------------------------------------------------------------------
# The statements, shared by the sync and async stores (async ones run them through run_sync)
# --------------------------------------------------------------------------------------------------


def _insert(dialect_name: str, table: sa.Table) -> Any:
    """``INSERT`` with ``ON CONFLICT`` support for the dialect."""
    return (pg.insert if dialect_name == "postgresql" else sqlite.insert)(table)


def _now() -> datetime:
    return datetime.now(timezone.utc)


def dedup_status(event: ReceiptEvent) -> str:
    """
    The status part of an event's uniqueness key.

    The normalised status, except for UNKNOWN, where the raw status is kept (``UNKNOWN:<raw>``) so
    that different statuses this package does not know stay different events. A long raw status is
    shortened to its first 64 characters and a digest of the whole.

    :param event: the event.
    """
    status = Status(event.status)
    if status is not Status.UNKNOWN:
        return status.value
    raw = event.raw_status
    if len(raw) > _MAX_RAW_STATUS_IN_KEY:
        raw = f"{raw[:64]}#sha256:{hashlib.sha256(raw.encode()).hexdigest()[:32]}"
    return f"UNKNOWN:{raw}"


def validate_events(events: Iterable[ReceiptEvent]) -> None:
    """
    Refuse events no database could store, before they reach a transaction shared with others.

    :raises InvalidInputError: a field is not a string, holds a NUL character or an unpaired
        surrogate (neither fits PostgreSQL text), or a key field is longer than 512 characters.
    """
    for event in events:
        try:
            Status(event.status)
        except ValueError:
            raise InvalidInputError("status", f"{event.status!r} is not a Status") from None
        for name in ("vendor", "conn_id", "message_id", "participant", "event_id"):
            value = getattr(event, name)
            _check_text(name, value)
            if len(value) > _MAX_KEY_LENGTH:
                raise InvalidInputError(name, f"longer than {_MAX_KEY_LENGTH} characters")
        for name in ("raw_status", "chat_id", "error_code", "error_message"):
            _check_text(name, getattr(event, name))
        if not event.conn_id or not event.message_id:
            raise InvalidInputError("message_id" if event.conn_id else "conn_id", "must not be empty")
        if event.occurred_at is not None and not isinstance(event.occurred_at, datetime):
            raise InvalidInputError("occurred_at", "must be a datetime or None")
        if event.payload is not None and not isinstance(event.payload, Mapping):
            raise InvalidInputError("payload", f"must be a mapping, not {type(event.payload).__name__}")


def check_source(source: str) -> None:
    """Refuse a ``source`` no database can store, as :func:`validate_events` does for events."""
    _check_text("source", source)


def _check_text(name: str, value: Any) -> None:
    if type(value) is not str and not isinstance(value, str):
        raise InvalidInputError(name, f"must be a string, not {type(value).__name__}")
    if "\x00" in value:
        raise InvalidInputError(name, "contains a NUL character")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidInputError(name, "is not valid Unicode (unpaired surrogate)") from None


# Columns written per row (JSON rows on PostgreSQL, executemany on SQLite), in the order of each row's values.
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

_EventKey = tuple[str, str, str, str]
# One encoder for every payload (json.dumps builds a new one per call when given options).
_PAYLOAD_JSON = json.JSONEncoder(default=str, separators=(",", ":"))


class EncodedPayload(dict):
    """
    A payload that arrives already encoded as the text the store keeps (see :func:`payload_text`),
    e.g. one nested too deeply to pickle on its way to the receiver's writer process. It reads as
    an empty mapping; the text is in :attr:`text`.

    :param text: the payload as :func:`payload_text` encodes it.
    """

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def __reduce__(self) -> tuple[Any, ...]:
        return (EncodedPayload, (self.text,))


def payload_text(payload: Mapping[str, Any] | None) -> str:
    """
    The text the store keeps of an event's raw payload: compact, ASCII-escaped JSON, so that it
    fits both databases whatever the payload holds.

    :param payload: the event's payload.
    """
    if isinstance(payload, EncodedPayload):
        return payload.text
    return _PAYLOAD_JSON.encode(dict(payload or {}))


def _sqlite_timestamp(value: datetime) -> str:
    """A timestamp as SQLAlchemy's SQLite ``DateTime`` stores it (naive UTC, sortable text)."""
    if value.tzinfo is not None:
        # The standard library's own methods, also on subclasses (pendulum's are slower Python).
        value = datetime.replace(datetime.astimezone(value, timezone.utc), tzinfo=None)
    return datetime.isoformat(value, " ", "microseconds")


def _postgres_timestamp(value: datetime) -> str:
    return _as_utc(value).isoformat()


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
def _heartbeat_upsert(dialect_name: str) -> Any:
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
        happened_at = _as_utc(event.occurred_at) if event.occurred_at else received_at
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


def _write_entries(conn: Connection, entries: Sequence[tuple[ReceiptEvent, str]]) -> list[bool]:
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
    received_at = _now()
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
            readers.c.participant.label("reader"),
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
            status.reader_read_at[row.reader] = row.reader_read_at
    for status in found.values():
        status.readers.extend(
            sorted(status.reader_read_at, key=lambda name: (status.reader_read_at[name], name))
        )
    return found


def _read_statuses(conn: Connection, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], MessageStatus]:
    unique_keys = list(dict.fromkeys((str(conn_id), str(message_id)) for conn_id, message_id in keys))
    if not unique_keys:
        return {}
    return _statuses_from_rows(conn.execute(_select_statuses(conn.dialect.name, unique_keys)))


def _stored_event(row: Any) -> StoredEvent:
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
        chat_id=row.chat_id,
        occurred_at=row.occurred_at,
        received_at=row.received_at,
        event_id=row.event_id,
        error_code=row.error_code,
        error_message=row.error_message,
        source=row.source,
        payload=payload if isinstance(payload, dict) else {"_value": payload},
    )


def _select_events_after(
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


def _events_page(
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
    query = _select_events_after(cursor, conn_id=conn_id, statuses=statuses, limit=limit)
    events = [_stored_event(row) for row in conn.execute(query.where(events_table.c.id <= newest))]
    if len(events) == limit:
        return events, events[-1].id
    # Fewer than asked for: every matching event up to the newest id is in hand, so the cursor
    # moves past the ones that do not match too.
    return events, max(cursor, newest)


def _read_schema_version(conn: Connection) -> int | None:
    if not sa.inspect(conn).has_table(schema_version_table.name):
        return None
    return conn.execute(sa.select(sa.func.max(schema_version_table.c.version))).scalar()


def _require_schema(version: int | None, display_url: str) -> int:
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


def _migrate(conn: Connection, display_url: str) -> int:
    if conn.dialect.name == "postgresql":
        # Concurrent migrators queue here; the lock ends with the transaction. (On SQLite, the
        # caller's BEGIN IMMEDIATE does the same.)
        conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_MIGRATE_LOCK_KEY)))
    schema_version_table.create(conn, checkfirst=True)
    current = conn.execute(sa.select(sa.func.max(schema_version_table.c.version))).scalar() or 0
    if current > SCHEMA_VERSION:
        _require_schema(current, display_url)
    for version in sorted(_MIGRATIONS):
        if version <= current:
            continue
        log.info("Receipt store %s: applying schema version %d", display_url, version)
        _MIGRATIONS[version](conn)
        conn.execute(
            schema_version_table.insert().values(
                version=version, applied_at=_now(), package_version=__version__
            )
        )
    return SCHEMA_VERSION


def _set_cursor(conn: Connection, name: str, value: int) -> None:
    conn.execute(_cursor_upsert(conn.dialect.name), {"name": name, "value": value, "updated_at": _now()})


def _last_heartbeat_query() -> sa.Select[Any]:
    return sa.select(sa.func.max(heartbeats_table.c.seen_at))


# --------------------------------------------------------------------------------------------------
# The synchronous store (receiver, operators, CLI)
# --------------------------------------------------------------------------------------------------


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
        self.url: URL = _normalise_url(url, asynchronous=False)
        self.url_for_display: str = _display(self.url)
        self.dialect: str = self.url.get_backend_name()
        if self.dialect == "sqlite":
            _sqlite_file(self.url).parent.mkdir(parents=True, exist_ok=True)
            self._engine = sa.create_engine(self.url, echo=echo)
            _install_sqlite_listeners(self._engine, busy_timeout_ms=int(busy_timeout * 1000))
        else:
            # pre_ping: a pooled connection that died with a server restart is replaced, not used.
            self._engine = sa.create_engine(self.url, echo=echo, pool_pre_ping=True)
            _install_postgres_listeners(self._engine)
        # Write transactions take SQLite's write lock up front (BEGIN IMMEDIATE); see module docstring.
        self._write_engine = self._engine.execution_options(**{_BEGIN_OPTION: "IMMEDIATE"})

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

    def migrate(self) -> int:
        """
        Create the schema or upgrade it to :data:`SCHEMA_VERSION`; return that version.

        Safe when several processes run it at once: they take turns under a lock (PostgreSQL's
        advisory transaction lock, SQLite's write lock) and each applies only what is missing.

        :raises StoreSchemaError: the store was migrated by a newer version of this package.
        """
        with self._write_engine.begin() as conn:
            return _migrate(conn, self.url_for_display)

    def schema_version(self) -> int | None:
        """The store's schema version; ``None`` when it has never been migrated."""
        with self._engine.connect() as conn:
            return _read_schema_version(conn)

    def check_schema(self) -> int:
        """
        The schema version, when it is the one this package uses.

        :raises StoreSchemaError: not migrated, or migrated to another version; the message says what
            to run.
        """
        return _require_schema(self.schema_version(), self.url_for_display)

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
            return _write_entries(conn, entries)

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
            return _read_statuses(conn, keys)

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
            return [_stored_event(row) for row in conn.execute(query)]

    def heartbeat(self, receiver_id: str) -> None:
        """
        Record that a receiver is alive and writing to this store; the receiver calls it periodically.

        :param receiver_id: a name unique to the receiver process, e.g. ``"<host>:<pid>"``.
        """
        now = _now()
        with self._write_engine.begin() as conn:
            conn.execute(
                _heartbeat_upsert(self.dialect),
                {"receiver_id": receiver_id, "started_at": now, "seen_at": now},
            )

    def last_heartbeat(self) -> datetime | None:
        """When any receiver last recorded a heartbeat here; ``None`` when none ever did."""
        with self._engine.connect() as conn:
            return conn.execute(_last_heartbeat_query()).scalar()

    def purge(self, *, older_than: timedelta) -> int:
        """
        Delete events received longer ago than ``older_than``; return how many.

        Also deletes the current status of messages left with no events and heartbeats as old.
        Deletes in chunks, each its own transaction, so writers are never held up for long.

        :param older_than: the age; must be positive.
        """
        if older_than <= timedelta(0):
            raise InvalidInputError("older_than", "must be a positive duration")
        cutoff = _now() - older_than
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


# --------------------------------------------------------------------------------------------------
# Group commit for the receiver
# --------------------------------------------------------------------------------------------------


@dataclass
class _Submission:
    events: list[ReceiptEvent]
    source: str
    future: concurrent.futures.Future[list[bool]]


@dataclass
class BatchWriterStats:
    """What a :class:`BatchWriter` has done so far (for benchmarks and tests)."""

    #: Transactions committed (group commits and one-by-one retries).
    commits: int = 0
    #: Submissions resolved with a result.
    submissions: int = 0
    #: Events committed (new and duplicate).
    events: int = 0
    #: Group commits that failed and were retried one submission at a time.
    failed_batches: int = 0
    #: Submissions resolved with an error.
    failed_submissions: int = 0


class BatchWriter:
    """
    Group commit: one background thread writes everything pending in one transaction.

    Each :meth:`submit` resolves only after the COMMIT that contains its events, so a receiver that
    acknowledges a webhook when ``submit`` returns acknowledges only durable events, while many
    requests share one commit (one fsync). If a group commit fails, its submissions are written again
    one at a time, so one unstorable submission fails alone; errors reach only their own waiters,
    and the thread carries on.

    Submissions made before :meth:`start` wait for it (the first commit then holds them all).

    :param store: the store to write to.
    :param max_batch: the most events in one commit (a larger single submission is committed alone).
    :param max_wait: seconds to wait for more submissions once one is pending, before committing.
    """

    def __init__(self, store: ReceiptStore, *, max_batch: int = 256, max_wait: float = 0.002) -> None:
        if max_batch < 1:
            raise InvalidInputError("max_batch", "must be at least 1")
        if max_wait < 0:
            raise InvalidInputError("max_wait", "must not be negative")
        self.store = store
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.stats = BatchWriterStats()
        self._queue: queue.SimpleQueue[_Submission | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False

    def __enter__(self) -> BatchWriter:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        """Whether the writer thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Start the writer thread (once; calling it again does nothing)."""
        with self._lock:
            if self._closed:
                raise RuntimeError("this BatchWriter was stopped; create a new one")
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="readreceipts-batch-writer", daemon=True
                )
                self._thread.start()

    def stop(self, *, timeout: float | None = None) -> None:
        """
        Commit what is pending, then stop the thread; later submissions raise ``RuntimeError``.

        :param timeout: seconds to wait for the thread; ``None`` waits as long as it takes.
        """
        with self._lock:
            if self._closed:
                thread = self._thread
            else:
                self._closed = True
                # After every accepted submission (they are queued under the same lock).
                self._queue.put(None)
                thread = self._thread
                if thread is None:
                    # Never started: write what was submitted before resolving nothing would hang.
                    thread = self._thread = threading.Thread(target=self._run, daemon=True)
                    thread.start()
        if thread is not None:
            thread.join(timeout)

    async def submit(self, events: Sequence[ReceiptEvent], *, source: str = SOURCE_WEBHOOK) -> list[bool]:
        """
        Store events; returns once they are committed: ``True`` per new event, ``False`` per duplicate.

        Never blocks the event loop. If the awaiting task is cancelled the events are still written.

        :param events: the events of one webhook.
        :param source: ``"webhook"`` or ``"reconcile"``.
        :raises InvalidInputError: an event no database could store (raised at once, nothing queued).
        :raises Exception: whatever made the commit fail; the events were not stored.
        """
        return await asyncio.wrap_future(self._enqueue(events, source))

    def submit_sync(
        self, events: Sequence[ReceiptEvent], *, source: str = SOURCE_WEBHOOK, timeout: float | None = None
    ) -> list[bool]:
        """
        :meth:`submit` for threads: blocks until the commit.

        :param timeout: seconds to wait; ``TimeoutError`` after that (the events may still commit).
        """
        return self._enqueue(events, source).result(timeout)

    def _enqueue(self, events: Sequence[ReceiptEvent], source: str) -> concurrent.futures.Future[list[bool]]:
        events = list(events)
        validate_events(events)
        check_source(source)
        future: concurrent.futures.Future[list[bool]] = concurrent.futures.Future()
        if not events:
            future.set_result([])
            return future
        with self._lock:
            if self._closed:
                raise RuntimeError("this BatchWriter is stopped")
            self._queue.put(_Submission(events, source, future))
        return future

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch, stop_after = self._gather(first)
            self._commit(batch)
            if stop_after:
                return

    def _gather(self, first: _Submission) -> tuple[list[_Submission], bool]:
        """``first`` and whatever else arrives within ``max_wait``, up to ``max_batch`` events."""
        batch = [first]
        count = len(first.events)
        deadline = time.monotonic() + self.max_wait
        while count < self.max_batch:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    item = self._queue.get(timeout=remaining)
                except queue.Empty:
                    break
            if item is None:
                return batch, True
            batch.append(item)
            count += len(item.events)
        return batch, False

    def _commit(self, batch: list[_Submission]) -> None:
        # A cancelled waiter's events are written all the same: the vendor may not have seen the
        # failure, and a repeat delivery will then be a harmless duplicate.
        waiting = [submission.future.set_running_or_notify_cancel() for submission in batch]
        try:
            flags = self.store.record_entries(
                [(event, submission.source) for submission in batch for event in submission.events]
            )
        except Exception as error:
            if len(batch) == 1:
                self._fail(batch[0], waiting[0], error)
                return
            self.stats.failed_batches += 1
            log.warning(
                "Group commit of %d submissions failed (%s); committing them one by one", len(batch), error
            )
            for submission, is_waiting in zip(batch, waiting, strict=True):
                try:
                    self._resolve(
                        submission,
                        is_waiting,
                        self.store.record_entries(
                            [(event, submission.source) for event in submission.events]
                        ),
                    )
                except Exception as single_error:
                    self._fail(submission, is_waiting, single_error)
            return
        offset = 0
        for submission, is_waiting in zip(batch, waiting, strict=True):
            count = len(submission.events)
            self._resolve(submission, is_waiting, flags[offset : offset + count], counted=True)
            offset += count
        self.stats.commits += 1

    def _resolve(
        self, submission: _Submission, is_waiting: bool, flags: list[bool], *, counted: bool = False
    ) -> None:
        if not counted:
            self.stats.commits += 1
        self.stats.submissions += 1
        self.stats.events += len(flags)
        if is_waiting:
            submission.future.set_result(flags)

    def _fail(self, submission: _Submission, is_waiting: bool, error: BaseException) -> None:
        self.stats.failed_submissions += 1
        if is_waiting:
            submission.future.set_exception(error)


# --------------------------------------------------------------------------------------------------
# The asynchronous store (triggers)
# --------------------------------------------------------------------------------------------------


def _asyncpg_connector(url: URL) -> Callable[[], Any]:
    """
    An ``async_creator`` that hands asyncpg the libpq-style DSN it parses itself.

    asyncpg understands ``sslmode``, ``sslrootcert`` and the like in a DSN but not as keyword
    arguments (how SQLAlchemy passes URL query parameters), and it takes server settings, such as
    ``synchronous_commit``, as ``server_settings`` rather than libpq's ``options``.
    """
    import asyncpg

    query = dict(url.query)
    timeout = float(str(query.pop("connect_timeout", 60)))
    server_settings: dict[str, str] = {}
    options = str(query.pop("options", ""))
    for option in options.replace("-c ", "-c").split():
        if option.startswith("-c") and "=" in option:
            name, _, value = option[2:].partition("=")
            server_settings[name] = value
    server_settings["synchronous_commit"] = "on"
    dsn = url.set(drivername="postgresql", query=query).render_as_string(hide_password=False)

    async def connect() -> Any:
        return await asyncpg.connect(dsn, timeout=timeout, server_settings=server_settings)

    return connect


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
        self.url: URL = _normalise_url(url, asynchronous=True)
        self.url_for_display: str = _display(self.url)
        self.dialect: str = self.url.get_backend_name()
        self._engine: AsyncEngine
        if self.dialect == "sqlite":
            _sqlite_file(self.url).parent.mkdir(parents=True, exist_ok=True)
            self._engine = create_async_engine(self.url)
            _install_sqlite_listeners(self._engine.sync_engine, busy_timeout_ms=int(busy_timeout * 1000))
        else:
            self._engine = create_async_engine(
                self.url.set(query={}), async_creator=_asyncpg_connector(self.url), pool_pre_ping=True
            )
        self._write_engine = self._engine.execution_options(**{_BEGIN_OPTION: "IMMEDIATE"})

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

    async def _read(self, work: Callable[[Connection], _T]) -> _T:
        async with self._engine.connect() as conn:
            return await conn.run_sync(work)

    async def _write(self, work: Callable[[Connection], _T]) -> _T:
        async with self._write_engine.begin() as conn:
            return await conn.run_sync(work)

    async def schema_version(self) -> int | None:
        """The store's schema version; ``None`` when it has never been migrated."""
        return await self._read(_read_schema_version)

    async def check_schema(self) -> int:
        """The schema version; ``StoreSchemaError`` (saying what to run) when it is not this package's."""
        return _require_schema(await self.schema_version(), self.url_for_display)

    async def statuses(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], MessageStatus]:
        """
        The current status of many messages in ONE query; messages with no events are left out.

        :param keys: ``(conn_id, message_id)`` pairs; duplicates are fine.
        """
        return await self._read(lambda conn: _read_statuses(conn, keys))

    async def record(self, events: Sequence[ReceiptEvent], *, source: str = SOURCE_RECONCILE) -> list[bool]:
        """
        :meth:`ReceiptStore.record`, from the event loop: same transaction, ladder and NOTIFY.

        :param events: the events.
        :param source: ``"reconcile"`` (what a waiter learned from the vendor's API) or ``"webhook"``.
        """
        validate_events(events)
        _check_text("source", source)
        entries = [(event, source) for event in events]
        if not entries:
            return []
        return await self._write(lambda conn: _write_entries(conn, entries))

    async def last_heartbeat(self) -> datetime | None:
        """When any receiver last recorded a heartbeat here; ``None`` when none ever did."""
        return await self._read(lambda conn: conn.execute(_last_heartbeat_query()).scalar())

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
        query = _select_events_after(cursor, conn_id=conn_id, statuses=statuses, limit=limit)
        return await self._read(lambda conn: [_stored_event(row) for row in conn.execute(query)])

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
        return await self._read(
            lambda conn: _events_page(conn, cursor, conn_id=conn_id, statuses=statuses, limit=limit)
        )

    async def max_event_id(self) -> int:
        """The newest event id (0 for an empty store): where a new cursor starts to see only new events."""
        return await self._read(
            lambda conn: conn.execute(sa.select(sa.func.max(events_table.c.id))).scalar() or 0
        )

    async def get_cursor(self, name: str) -> int:
        """
        A named cursor's value; 0 when it was never set.

        :param name: the cursor's name, e.g. the event trigger's identity.
        """
        query = sa.select(cursors_table.c.value).where(cursors_table.c.name == name)
        value = await self._read(lambda conn: conn.execute(query).scalar())
        return int(value or 0)

    async def set_cursor(self, name: str, value: int) -> None:
        """
        Save a named cursor (committed before this returns).

        :param name: the cursor's name.
        :param value: the last event id handled.
        """
        await self._write(lambda conn: _set_cursor(conn, name, value))

    async def dispose(self) -> None:
        """Close every pooled connection."""
        await self._engine.dispose()
