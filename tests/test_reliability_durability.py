"""
Durability settings, read off the very connections that commit the receiver's events.

A SIGKILL test cannot see a store that acknowledges events before they are on disk: the operating
system's page cache survives the kill of a process, only a power loss or a kernel crash loses it.
So the settings themselves are checked: SQLite in WAL with ``synchronous=FULL`` (NORMAL may lose
the last commits on power loss), PostgreSQL with ``synchronous_commit=on``.

``tests/test_store.py`` checks fresh connections of the store's engines. Here the check sits on
the connection that executes each INSERT while the real receiver (uvicorn on loopback, its batch
writer thread) stores real webhooks, and PostgreSQL runs with a server whose defaults say
``synchronous_commit=off`` twice over: for the database (``ALTER DATABASE``) and for the role
(``ALTER ROLE``), on a fresh database and role of the test's own, so other sessions sharing the
server are untouched. The store must still commit synchronously.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from airflow_provider_readreceipts.hooks.store import AsyncReceiptStore, ReceiptStore
from tests.support import (
    SENDBLUE_CONN_ID,
    ReceiverServer,
    postgres_admin_connection,
    postgres_server_url,
    sendblue_payload,
)

pytestmark = pytest.mark.reliability

EVENTS = 20


def _settings_on(dbapi_connection: Any, dialect: str) -> dict[str, Any]:
    cursor = dbapi_connection.cursor()
    try:
        if dialect == "sqlite":
            return {
                name: cursor.execute(f"PRAGMA {name}").fetchone()[0]
                for name in ("journal_mode", "synchronous")
            }
        cursor.execute("SHOW synchronous_commit")
        return {"synchronous_commit": cursor.fetchone()[0]}
    finally:
        cursor.close()


@contextlib.contextmanager
def watch_inserts(store: ReceiptStore) -> Iterator[list[tuple[str, dict[str, Any]]]]:
    """
    The durability settings of the connection behind every INSERT the store's engine runs, with
    the name of the thread that ran it. Reads them on the same DBAPI connection, mid-transaction,
    so what is seen is what that commit uses.
    """
    seen: list[tuple[str, dict[str, Any]]] = []
    dialect = store.engine.dialect.name

    def after_execute(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("INSERT"):
            settings = _settings_on(conn.connection.dbapi_connection, dialect)
            seen.append((threading.current_thread().name, settings))

    sa.event.listen(store.engine, "after_cursor_execute", after_execute)
    try:
        yield seen
    finally:
        sa.event.remove(store.engine, "after_cursor_execute", after_execute)


def post_events(receiver: ReceiverServer, prefix: str) -> None:
    for index in range(EVENTS):
        answer = receiver.post_sendblue(sendblue_payload(f"{prefix}-{index}", "READ"))
        assert answer.status_code == 200, answer.text


def writer_observations(seen: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Settings seen from threads other than the test's: the receiver's writer (and heartbeat)."""
    main = threading.main_thread().name
    return [settings for thread, settings in seen if thread != main]


def test_sqlite_receiver_writer_commits_in_wal_with_full_sync(
    start_receiver: Callable[..., ReceiverServer], sqlite_store_url: str, sendblue_connection: str, figures
):
    store = ReceiptStore(sqlite_store_url)
    store.migrate()
    try:
        with watch_inserts(store) as seen:
            receiver = start_receiver(store=store, heartbeat_seconds=0.2)
            post_events(receiver, "dur-sqlite")
        wal_file = os.path.exists(make_url(sqlite_store_url).database + "-wal")
        stored = sum(
            store.message_status(SENDBLUE_CONN_ID, f"dur-sqlite-{i}") is not None for i in range(EVENTS)
        )
    finally:
        store.close()

    observed = writer_observations(seen)
    figures.add(
        "durability",
        "sqlite receiver writer",
        connections_checked=len(observed),
        journal_mode=sorted({s["journal_mode"] for s in observed}),
        synchronous=sorted({s["synchronous"] for s in observed}),
        events_stored=stored,
        wal_file_present=wal_file,
    )
    assert stored == EVENTS
    assert wal_file  # the commits went to the write-ahead log while the receiver ran
    assert observed, "no INSERT ran on the receiver's threads"
    # synchronous 2 is FULL; 1 (NORMAL, WAL's usual) may lose the last commits on power loss.
    assert all(s == {"journal_mode": "wal", "synchronous": 2} for s in observed), observed
    # WAL is a property of the file: any other process (a second receiver, the CLI) uses it too.
    with contextlib.closing(sqlite3.connect(make_url(sqlite_store_url).database)) as other:
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


@pytest.fixture
def asynchronous_by_default_postgres() -> Iterator[str]:
    """
    A fresh role and database of this test's own whose defaults are ``synchronous_commit=off``,
    for the role and for the database; both dropped afterwards. Yields the store URL.
    """
    admin = postgres_admin_connection()
    name = f"rr_async_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    with admin:
        admin.execute(f'CREATE ROLE "{name}" LOGIN')
        admin.execute(f'ALTER ROLE "{name}" SET synchronous_commit = off')
        admin.execute(f'CREATE DATABASE "{name}" OWNER "{name}" TEMPLATE template0')
        admin.execute(f'ALTER DATABASE "{name}" SET synchronous_commit = off')
        try:
            yield (
                make_url(postgres_server_url(database=name))
                .set(username=name, password=None)
                .render_as_string(hide_password=False)
            )
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            admin.execute(f'DROP ROLE IF EXISTS "{name}"')


@pytest.mark.postgres
def test_postgres_receiver_writer_commits_synchronously_whatever_the_server_default(
    start_receiver: Callable[..., ReceiverServer],
    asynchronous_by_default_postgres: str,
    sendblue_connection: str,
    figures,
):
    import psycopg

    url = asynchronous_by_default_postgres
    plain = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(plain) as conn:
        row = conn.execute("SHOW synchronous_commit").fetchone()
        # The precondition: a connection that does not insist commits asynchronously here.
        assert row is not None and row[0] == "off"

    store = ReceiptStore(url)
    store.migrate()
    try:
        with watch_inserts(store) as seen:
            receiver = start_receiver(store=store, heartbeat_seconds=0.2)
            post_events(receiver, "dur-pg")
        stored = sum(store.message_status(SENDBLUE_CONN_ID, f"dur-pg-{i}") is not None for i in range(EVENTS))
    finally:
        store.close()

    observed = writer_observations(seen)
    figures.add(
        "durability",
        "postgres receiver writer (server default off)",
        connections_checked=len(observed),
        synchronous_commit=sorted({s["synchronous_commit"] for s in observed}),
        events_stored=stored,
    )
    assert stored == EVENTS
    assert observed, "no INSERT ran on the receiver's threads"
    assert all(s == {"synchronous_commit": "on"} for s in observed), observed


@pytest.mark.postgres
def test_postgres_async_store_commits_synchronously_whatever_the_server_default(
    asynchronous_by_default_postgres: str, figures
):
    """The triggers' store (asyncpg) writes cursors and reconciled events: same rule."""
    url = asynchronous_by_default_postgres

    async def settings() -> list[str]:
        async_store = AsyncReceiptStore(url)
        try:
            values = []
            for _ in range(2):  # a second checkout: pooled connections keep the setting
                async with async_store.engine.connect() as conn:
                    values.append((await conn.exec_driver_sql("SHOW synchronous_commit")).scalar())
            return values
        finally:
            await async_store.dispose()

    values = asyncio.run(settings())
    figures.add(
        "durability",
        "postgres async store (server default off)",
        connections_checked=len(values),
        synchronous_commit=sorted(set(values)),
    )
    assert values == ["on", "on"]
