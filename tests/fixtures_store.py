"""
Receipt store fixtures, for this suite and any other that needs a real store.

* ``sqlite_store_url``: a fresh SQLite file in the test's temporary folder (not migrated).
* ``postgres_url``: one uniquely named PostgreSQL database for the whole session, dropped at the end.
  Skipped when PostgreSQL is unreachable, unless ``READRECEIPTS_REQUIRE_POSTGRES=1`` (then it fails).
  The server is ``READRECEIPTS_TEST_POSTGRES_URL`` (default ``postgresql+psycopg://postgres@127.0.0.1:5432/test``).
* ``postgres_store_url``: that database emptied for this test (not migrated).
* ``store_url``: parametrised over both (ids ``sqlite`` and ``postgres``; the latter marked ``postgres``).
* ``store``: a migrated :class:`ReceiptStore` on ``store_url``, closed after the test.
* ``async_store``: an :class:`AsyncReceiptStore` on the same URL, disposed after the test.
* ``make_event``: builds :class:`ReceiptEvent` objects with defaults.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from airflow_provider_readreceipts.receipts import ReceiptEvent, Status

POSTGRES_ADMIN_URL = os.environ.get(
    "READRECEIPTS_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
REQUIRE_POSTGRES = os.environ.get("READRECEIPTS_REQUIRE_POSTGRES") == "1"


def _libpq_conninfo(url: str, *, database: str | None = None) -> str:
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if database is not None:
        parsed = parsed.set(database=database)
    return parsed.set(drivername="postgresql").render_as_string(hide_password=False)


def _admin_connect() -> Any:
    import psycopg

    return psycopg.connect(_libpq_conninfo(POSTGRES_ADMIN_URL), autocommit=True, connect_timeout=5)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A PostgreSQL database of this session's own (SQLAlchemy URL, psycopg driver)."""
    from sqlalchemy.engine import make_url

    try:
        admin = _admin_connect()
    except Exception as error:
        reason = (
            f"PostgreSQL at {make_url(POSTGRES_ADMIN_URL).render_as_string(hide_password=True)} is"
            f" unreachable ({type(error).__name__}: {error})"
        )
        if REQUIRE_POSTGRES:
            pytest.fail(f"{reason}, and READRECEIPTS_REQUIRE_POSTGRES=1", pytrace=False)
        pytest.skip(f"{reason}; set READRECEIPTS_REQUIRE_POSTGRES=1 to fail instead of skipping")
    database = f"rr_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    with admin:
        # template0: nobody is ever connected to it, so concurrent sessions never block each other.
        admin.execute(f'CREATE DATABASE "{database}" TEMPLATE template0')
        try:
            yield make_url(POSTGRES_ADMIN_URL).set(database=database).render_as_string(hide_password=False)
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def reset_postgres_database(url: str) -> None:
    """Empty a test database: end other sessions on it (leftover pools), recreate its public schema."""
    import psycopg
    from sqlalchemy.engine import make_url

    database = make_url(url).database
    with psycopg.connect(_libpq_conninfo(url), autocommit=True, connect_timeout=5) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()",
            (database,),
        )
        conn.execute("DROP SCHEMA IF EXISTS public CASCADE")
        conn.execute("CREATE SCHEMA public")
        # ALTER DATABASE settings made by a test (e.g. synchronous_commit=off) end with it too.
        conn.execute(f'ALTER DATABASE "{database}" RESET ALL')


@pytest.fixture
def postgres_store_url(postgres_url: str) -> str:
    """The session's PostgreSQL database, emptied for this test; not migrated."""
    reset_postgres_database(postgres_url)
    return postgres_url


@pytest.fixture
def sqlite_store_url(tmp_path: Any) -> str:
    """A SQLite file of this test's own; not migrated."""
    return f"sqlite:///{tmp_path / 'receipts.db'}"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest) -> str:
    """An empty store URL: a SQLite file, then the PostgreSQL database."""
    if request.param == "sqlite":
        return request.getfixturevalue("sqlite_store_url")
    return request.getfixturevalue("postgres_store_url")


@pytest.fixture
def store(store_url: str) -> Iterator[Any]:
    """A migrated ReceiptStore on ``store_url``."""
    from airflow_provider_readreceipts.hooks.store import ReceiptStore

    receipt_store = ReceiptStore(store_url)
    receipt_store.migrate()
    yield receipt_store
    receipt_store.close()


@pytest.fixture
async def async_store(store: Any) -> AsyncIterator[Any]:
    """An AsyncReceiptStore on the same (migrated) store as ``store``."""
    from airflow_provider_readreceipts.hooks.store import AsyncReceiptStore

    receipt_store = AsyncReceiptStore(store.url.render_as_string(hide_password=False))
    yield receipt_store
    await receipt_store.dispose()


def build_event(
    status: Status | str = Status.SENT,
    *,
    message_id: str = "msg-1",
    conn_id: str = "sendblue_default",
    vendor: str = "sendblue",
    raw_status: str | None = None,
    **fields: Any,
) -> ReceiptEvent:
    """A ReceiptEvent with defaults for what a test does not care about."""
    status = Status(status)
    return ReceiptEvent(
        vendor=vendor,
        conn_id=conn_id,
        message_id=message_id,
        status=status,
        raw_status=status.value if raw_status is None else raw_status,
        **fields,
    )


@pytest.fixture
def make_event() -> Callable[..., ReceiptEvent]:
    """:func:`build_event`, as a fixture."""
    return build_event
