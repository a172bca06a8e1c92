"""
Fixtures for the read sensor and its triggers: a migrated receipt store (:class:`tests.support.WaitStore`)
on a real SQLite file and on the real PostgreSQL (the suite's server, see :mod:`tests.support`), each
PostgreSQL test in a schema of its own so that suites running at once never see each other's rows.

* ``wait_store``: parametrised over both (ids ``sqlite`` and ``postgresql``; the latter marked
  ``postgres``), no receiver heartbeat yet.
* ``sqlite_wait_store``, ``pg_wait_store``: one of them only.
* ``sendblue_wait_conn``: the Sendblue connection ``sb_wait``, pointing at the loopback fake.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest

from tests.support import (
    POSTGRES_ADMIN_URL,
    WaitStore,
    postgres_admin_connection,
    postgres_connection_fields,
    postgres_server_url,
)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def wait_store(request: pytest.FixtureRequest) -> WaitStore:
    """A migrated receipt store, on a SQLite file and on PostgreSQL (no receiver heartbeat yet)."""
    return request.getfixturevalue("sqlite_wait_store" if request.param == "sqlite" else "pg_wait_store")


@pytest.fixture
def sqlite_wait_store(tmp_path) -> Iterator[WaitStore]:
    """A migrated receipt store on a SQLite file only."""
    path = str(tmp_path / "receipts.db")
    store = WaitStore("sqlite", f"sqlite:///{path}", {"store_path": path})
    try:
        store.store.migrate()
        yield store
    finally:
        store.close()


@pytest.fixture
def pg_wait_store(airflow_connection: Callable[..., str]) -> Iterator[WaitStore]:
    """A migrated receipt store in a PostgreSQL schema of its own (skipped, or failed on CI, without it)."""
    schema = f"rr_wait_{uuid.uuid4().hex[:12]}"
    with postgres_admin_connection() as admin:
        admin.execute(f'CREATE SCHEMA "{schema}"')
    options = f"-csearch_path={schema}"
    # The sensor and trigger reach the store through an Airflow connection; the test itself by URL.
    conn_id = airflow_connection(
        "rr_wait_store",
        "postgres",
        **postgres_connection_fields(POSTGRES_ADMIN_URL, extra={"options": options}),
    )
    store = WaitStore("postgresql", postgres_server_url(options=options), {"store_conn_id": conn_id})
    try:
        store.store.migrate()
        yield store
    finally:
        store.close()
        with postgres_admin_connection() as admin:
            admin.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture
def sendblue_wait_conn(vendors, airflow_connection) -> str:
    """A Sendblue connection pointing at the loopback fake."""
    from airflow_provider_readreceipts.testing.fakes import sendblue as fake

    return airflow_connection(
        "sb_wait",
        "sendblue",
        host=vendors.url("sendblue"),
        login=fake.API_KEY_ID,
        password=fake.API_SECRET,
        extra={"from_number": fake.LINE, "webhook_secret": "sb-wait-secret"},
    )
