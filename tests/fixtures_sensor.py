"""
Fixtures for the read sensor and its triggers: a migrated receipt store on a real SQLite file and on
the real PostgreSQL (127.0.0.1:5432, database ``test``), each test in its own PostgreSQL schema so
that suites running at once never see each other's rows.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import pytest

from airflow_provider_readreceipts.receipts import ReceiptEvent, Status

PG_ADMIN_URL = os.environ.get("READRECEIPTS_TEST_PG_URL", "postgresql://root@127.0.0.1:5432/test")


def postgres_available() -> str | None:
    """``None`` when the test PostgreSQL answers, else why not."""
    try:
        import psycopg

        with psycopg.connect(PG_ADMIN_URL.replace("postgresql://", "postgresql://", 1), connect_timeout=3):
            return None
    except Exception as exc:
        return f"PostgreSQL at {PG_ADMIN_URL} is not available: {exc}"


def skip_or_fail_without_postgres() -> None:
    reason = postgres_available()
    if reason is None:
        return
    if os.environ.get("READRECEIPTS_REQUIRE_POSTGRES") == "1":
        pytest.fail(reason + " (READRECEIPTS_REQUIRE_POSTGRES=1)")
    pytest.skip(reason)


@dataclass
class WaitStore:
    """A migrated store for one test, and how a sensor or trigger names it."""

    kind: str
    url: str
    #: Keyword arguments that point a sensor or trigger at this store.
    target: dict[str, Any]
    _store: Any = field(default=None, repr=False)

    @property
    def store(self) -> Any:
        if self._store is None:
            from airflow_provider_readreceipts.hooks.store import ReceiptStore

            self._store = ReceiptStore(self.url)
        return self._store

    def heartbeat(self, receiver_id: str = "test-receiver") -> None:
        self.store.heartbeat(receiver_id)

    def record(self, *events: ReceiptEvent, source: str = "webhook") -> list[bool]:
        return self.store.record(list(events), source=source)

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None


def receipt(
    message_id: str,
    status: Status | str,
    *,
    conn_id: str = "sb_wait",
    vendor: str = "sendblue",
    participant: str = "",
    occurred_at: datetime | None = None,
    error_code: str = "",
    error_message: str = "",
) -> ReceiptEvent:
    """A receipt event as a receiver would store it."""
    status = Status(status)
    return ReceiptEvent(
        vendor=vendor,
        conn_id=conn_id,
        message_id=message_id,
        status=status,
        raw_status=status.value,
        participant=participant,
        chat_id="+14155550100",
        occurred_at=occurred_at or datetime.now(timezone.utc),
        error_code=error_code,
        error_message=error_message,
        payload={"test": True},
    )


def _pg_schema_store(airflow_connection: Callable[..., str]) -> Iterator[WaitStore]:
    import psycopg

    skip_or_fail_without_postgres()
    schema = f"rr_wait_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE SCHEMA "{schema}"')
    options = f"-csearch_path={schema}"
    url = f"{PG_ADMIN_URL}?options={options.replace('=', '%3D')}"
    conn_id = airflow_connection(
        "rr_wait_store",
        "postgres",
        host="127.0.0.1",
        port=5432,
        login="root",
        schema="test",
        extra={"options": options},
    )
    store = WaitStore("postgresql", url, {"store_conn_id": conn_id})
    try:
        store.store.migrate()
        yield store
    finally:
        store.close()
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP SCHEMA "{schema}" CASCADE')


def _sqlite_store(path: str) -> Iterator[WaitStore]:
    store = WaitStore("sqlite", f"sqlite:///{path}", {"store_path": path})
    try:
        store.store.migrate()
        yield store
    finally:
        store.close()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def wait_store(request, tmp_path, airflow_connection) -> Iterator[WaitStore]:
    """A migrated receipt store, on a SQLite file and on PostgreSQL (no receiver heartbeat yet)."""
    if request.param == "sqlite":
        yield from _sqlite_store(str(tmp_path / "receipts.db"))
    else:
        yield from _pg_schema_store(airflow_connection)


@pytest.fixture
def sqlite_wait_store(tmp_path) -> Iterator[WaitStore]:
    """A migrated receipt store on a SQLite file only."""
    yield from _sqlite_store(str(tmp_path / "receipts.db"))


@pytest.fixture
def pg_wait_store(airflow_connection) -> Iterator[WaitStore]:
    """A migrated receipt store on PostgreSQL only (skipped, or failed on CI, when it is absent)."""
    yield from _pg_schema_store(airflow_connection)


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
