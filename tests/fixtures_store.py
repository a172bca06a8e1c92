"""
Receipt store fixtures, for this suite and any other that needs a real store.

* ``sqlite_store_url``: a fresh SQLite file in the test's temporary folder (not migrated).
* ``postgres_url``: one uniquely named PostgreSQL database for the whole session, dropped at the end.
  The server is ``READRECEIPTS_TEST_POSTGRES_URL``; skipped when it is unreachable, failed instead
  under ``READRECEIPTS_REQUIRE_POSTGRES=1`` (see :mod:`tests.support`).
* ``postgres_store_url``: that database emptied for this test (not migrated).
* ``store_url``: parametrised over both (ids ``sqlite`` and ``postgres``; the latter marked ``postgres``).
* ``store``: a migrated :class:`ReceiptStore` on ``store_url``, closed after the test.
* ``async_store``: an :class:`AsyncReceiptStore` on the same URL, disposed after the test.
* ``make_event``: :func:`tests.support.build_event`, which builds :class:`ReceiptEvent` objects with defaults.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from airflow_provider_readreceipts.receipts import ReceiptEvent
from tests.support import build_event, postgres_admin_connection, postgres_server_url, reset_postgres_database


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A PostgreSQL database of this session's own (SQLAlchemy URL, psycopg driver)."""
    admin = postgres_admin_connection()
    database = f"rr_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    with admin:
        # template0: nobody is ever connected to it, so concurrent sessions never block each other.
        admin.execute(f'CREATE DATABASE "{database}" TEMPLATE template0')
        try:
            yield postgres_server_url(database=database)
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


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


@pytest.fixture
def make_event() -> Callable[..., ReceiptEvent]:
    """:func:`build_event`, as a fixture."""
    return build_event
