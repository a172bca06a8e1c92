"""
The receipt store: every receipt event stored once and durably, and each message's current status.

One code path (SQLAlchemy Core) serves both databases:

* **SQLite** (the default): a file under ``AIRFLOW_HOME``, in WAL mode with ``synchronous=FULL``, so
  a commit survives a power cut, and with a busy timeout, so several processes wait for the write
  lock instead of failing. Every write transaction starts with ``BEGIN IMMEDIATE``: it takes the
  write lock before reading anything, which is what lets ``busy_timeout`` work.
* **PostgreSQL** (for several machines): ``synchronous_commit=on`` set explicitly on every
  connection, whatever the server's default; ``NOTIFY readreceipts`` in every transaction that
  stores something new, which PostgreSQL delivers to listeners only once that transaction commits.

The modules, each with one job: :mod:`.records` (what the store hands out, its errors),
:mod:`.schema` (tables and migrations), :mod:`.config` (where the store is), :mod:`.engines` (the
one connect path), :mod:`.validation` (what may be stored), :mod:`.writes` and :mod:`.reads` (the
statements), :mod:`.sync` and :mod:`.aio` (the two APIs), :mod:`.writers` (group commit).

Importing this package imports SQLAlchemy: operators and sensors import it only when they run.
"""

from __future__ import annotations

from airflow_provider_readreceipts.store.aio import AsyncReceiptStore
from airflow_provider_readreceipts.store.config import (
    DEFAULT_SQLITE_FILENAME,
    DEFAULT_STORE_CONN_ID,
    STORE_PATH_ENV,
    astore_url_from_airflow,
    default_sqlite_path,
    store_url_from_airflow,
    url_from_connection,
)
from airflow_provider_readreceipts.store.records import (
    MessageStatus,
    StoredEvent,
    StoreError,
    StoreSchemaError,
)
from airflow_provider_readreceipts.store.schema import (
    NOTIFY_CHANNEL,
    SCHEMA_VERSION,
    cursors_table,
    events_table,
    heartbeats_table,
    messages_table,
    schema_version_table,
)
from airflow_provider_readreceipts.store.sync import ReceiptStore
from airflow_provider_readreceipts.store.validation import (
    EncodedPayload,
    check_source,
    dedup_status,
    payload_text,
    validate_events,
)
from airflow_provider_readreceipts.store.writers import BatchWriter, BatchWriterStats, Writer, commit_groups
from airflow_provider_readreceipts.store.writes import SOURCE_RECONCILE, SOURCE_WEBHOOK

__all__ = [
    "DEFAULT_SQLITE_FILENAME",
    "DEFAULT_STORE_CONN_ID",
    "NOTIFY_CHANNEL",
    "SCHEMA_VERSION",
    "SOURCE_RECONCILE",
    "SOURCE_WEBHOOK",
    "STORE_PATH_ENV",
    "AsyncReceiptStore",
    "BatchWriter",
    "BatchWriterStats",
    "EncodedPayload",
    "MessageStatus",
    "ReceiptStore",
    "StoreError",
    "StoreSchemaError",
    "StoredEvent",
    "Writer",
    "astore_url_from_airflow",
    "check_source",
    "commit_groups",
    "cursors_table",
    "dedup_status",
    "default_sqlite_path",
    "events_table",
    "heartbeats_table",
    "messages_table",
    "payload_text",
    "schema_version_table",
    "store_url_from_airflow",
    "url_from_connection",
    "validate_events",
]
