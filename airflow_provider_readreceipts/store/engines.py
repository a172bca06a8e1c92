"""
The one way this package connects to a receipt store, for every connection it opens.

- **SQLite**: a file (never in memory), WAL mode, ``synchronous=FULL``, a busy timeout, and the
  transaction's ``BEGIN`` mode chosen per engine (:data:`SQLITE_BEGIN_OPTION`).
- **PostgreSQL, synchronous** (psycopg): the URL's query parameters (``sslmode``,
  ``application_name``, ...) go to libpq as they are; ``synchronous_commit=on`` on every connection.
- **PostgreSQL, asynchronous** (asyncpg): the async engine of the triggers and the ``LISTEN``
  connection of their poller both connect through :func:`connect_asyncpg`, which hands asyncpg the
  whole URL, query parameters included, so that TLS settings reach every connection alike.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection, Engine
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from airflow_provider_readreceipts.store.records import StoreError

#: The execution option read by the ``begin`` listener to choose SQLite's BEGIN mode.
SQLITE_BEGIN_OPTION = "readreceipts_sqlite_begin"
_BEGIN_MODES = frozenset({"DEFERRED", "IMMEDIATE", "EXCLUSIVE"})
#: Seconds an asyncpg connection may take to open when the URL's ``connect_timeout`` does not say.
DEFAULT_CONNECT_TIMEOUT = 60.0


def sqlite_file(url: URL) -> Path:
    """The file of a SQLite URL; ``StoreError`` for an in-memory database."""
    database = url.database or ""
    if database in ("", ":memory:") or database.startswith("file::memory:") or "mode=memory" in database:
        raise StoreError(
            f"the receipt store needs a SQLite file, not an in-memory database ({url!r}): events"
            " must outlive the process and be visible to other processes"
        )
    return Path(database)


def create_store_engine(url: URL, *, busy_timeout: float, echo: bool = False) -> Engine:
    """
    The synchronous engine of a store URL whose driver is already chosen (sqlite or psycopg).

    :param busy_timeout: SQLite only: seconds to wait for another process's write lock.
    :param echo: log every SQL statement.
    """
    if url.get_backend_name() == "sqlite":
        sqlite_file(url).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, echo=echo)
        _install_sqlite_listeners(engine, busy_timeout_ms=int(busy_timeout * 1000))
        return engine
    # pre_ping: a pooled connection that died with a server restart is replaced, not used.
    engine = sa.create_engine(url, echo=echo, pool_pre_ping=True)
    _install_postgres_listeners(engine)
    return engine


def create_async_store_engine(url: URL, *, busy_timeout: float) -> AsyncEngine:
    """
    The asynchronous engine of a store URL whose driver is already chosen (aiosqlite or asyncpg).

    :param busy_timeout: SQLite only: seconds to wait for another process's write lock.
    """
    if url.get_backend_name() == "sqlite":
        sqlite_file(url).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url)
        _install_sqlite_listeners(engine.sync_engine, busy_timeout_ms=int(busy_timeout * 1000))
        return engine

    async def connect() -> Any:
        return await connect_asyncpg(url)

    # The URL's query goes through connect() alone: SQLAlchemy would pass it as keyword arguments.
    return create_async_engine(url.set(query={}), async_creator=connect, pool_pre_ping=True)


async def connect_asyncpg(url: URL, *, timeout: float | None = None) -> Any:
    """
    An asyncpg connection to a PostgreSQL store: the async engine's, and the poller's ``LISTEN``.

    asyncpg reads ``sslmode``, ``sslrootcert`` and the like from a libpq-style DSN but not as
    keyword arguments (how SQLAlchemy passes URL query parameters), and takes server settings such
    as ``synchronous_commit`` as ``server_settings`` rather than libpq's ``options``: so the URL
    becomes a DSN with every query parameter but those two, which are translated.

    :param url: the store URL (any PostgreSQL driver name).
    :param timeout: seconds to connect; default the URL's ``connect_timeout``, else 60.
    """
    import asyncpg

    query = dict(url.query)
    configured_timeout = float(str(query.pop("connect_timeout", DEFAULT_CONNECT_TIMEOUT)))
    server_settings: dict[str, str] = {}
    options = str(query.pop("options", ""))
    for option in options.replace("-c ", "-c").split():
        if option.startswith("-c") and "=" in option:
            name, _, value = option[2:].partition("=")
            server_settings[name] = value
    server_settings["synchronous_commit"] = "on"
    dsn = url.set(drivername="postgresql", query=query).render_as_string(hide_password=False)
    return await asyncpg.connect(
        dsn, timeout=configured_timeout if timeout is None else timeout, server_settings=server_settings
    )


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
        mode = conn.get_execution_options().get(SQLITE_BEGIN_OPTION, "DEFERRED")
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
