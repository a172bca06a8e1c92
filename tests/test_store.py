"""The receipt store on a real SQLite file and the real PostgreSQL: durability, dedup, ladder, concurrency."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import multiprocessing
import queue
import random
import sqlite3
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from airflow_provider_readreceipts import cli
from airflow_provider_readreceipts.hooks.store import (
    DEFAULT_STORE_CONN_ID,
    NOTIFY_CHANNEL,
    SCHEMA_VERSION,
    AsyncReceiptStore,
    BatchWriter,
    ReceiptStore,
    StoreError,
    StoreSchemaError,
    events_table,
    heartbeats_table,
    messages_table,
    schema_version_table,
    store_url_from_airflow,
)
from airflow_provider_readreceipts.receipts import InvalidInputError, ReceiptEvent, Status, current_status
from tests.support import build_event

LADDER = [Status.QUEUED, Status.SENT, Status.FAILED, Status.DELIVERED, Status.READ]
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)


def _spawn() -> Any:
    # Not fork: the test process has threads and open pools that a fork would copy mid-use. A fork
    # server is a fresh single-threaded process that imports this module once; each worker is then
    # forked from it, already importing nothing, so the workers start together.
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    return context


def _plain_url(store: ReceiptStore) -> str:
    return store.url.render_as_string(hide_password=False)


def _count(store: ReceiptStore, table: sa.Table) -> int:
    with store.engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()


def _execute(store: ReceiptStore, *statements: str) -> None:
    with store.engine.begin() as conn:
        for statement in statements:
            conn.exec_driver_sql(statement)


# ------------------------------------------------------------------------------------------------
# Durability settings
# ------------------------------------------------------------------------------------------------


async def test_sqlite_connections_use_wal_full_sync_and_busy_timeout(sqlite_store_url):
    store = ReceiptStore(sqlite_store_url)
    async_store = AsyncReceiptStore(sqlite_store_url)
    try:
        store.migrate()
        with store.engine.connect() as conn:
            pragmas = {
                name: conn.exec_driver_sql(f"PRAGMA {name}").scalar()
                for name in ("journal_mode", "synchronous", "busy_timeout")
            }
        async with async_store.engine.connect() as conn:
            async_pragmas = {
                name: (await conn.exec_driver_sql(f"PRAGMA {name}")).scalar()
                for name in ("journal_mode", "synchronous", "busy_timeout")
            }
    finally:
        store.close()
        await async_store.dispose()
    # synchronous 2 is FULL (NORMAL is 1): each commit is on disk before it is acknowledged.
    assert pragmas == {"journal_mode": "wal", "synchronous": 2, "busy_timeout": 30000}
    assert async_pragmas == pragmas
    # WAL is a property of the file: any other process opening it uses WAL too.
    database = make_url(sqlite_store_url).database
    with contextlib.closing(sqlite3.connect(database)) as other:
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


@pytest.mark.postgres
async def test_postgres_connections_force_synchronous_commit_on(postgres_store_url):
    import psycopg

    database = make_url(postgres_store_url).database
    conninfo = make_url(postgres_store_url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(conninfo, autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{database}" SET synchronous_commit = off')
    with psycopg.connect(conninfo) as plain:
        # The server's default for this database is now off: the store must override it.
        assert plain.execute("SHOW synchronous_commit").fetchone()[0] == "off"

    store = ReceiptStore(postgres_store_url)
    async_store = AsyncReceiptStore(postgres_store_url)
    try:
        with store.engine.connect() as conn:
            assert conn.exec_driver_sql("SHOW synchronous_commit").scalar() == "on"
        async with async_store.engine.connect() as conn:
            assert (await conn.exec_driver_sql("SHOW synchronous_commit")).scalar() == "on"
    finally:
        store.close()
        await async_store.dispose()


# ------------------------------------------------------------------------------------------------
# Schema
# ------------------------------------------------------------------------------------------------


def test_migrate_creates_the_schema_once_and_is_idempotent(store_url):
    store = ReceiptStore(store_url)
    try:
        assert store.schema_version() is None
        with pytest.raises(StoreSchemaError, match="readreceipts db migrate"):
            store.check_schema()
        assert store.migrate() == SCHEMA_VERSION
        assert store.migrate() == SCHEMA_VERSION
        assert store.schema_version() == SCHEMA_VERSION
        assert store.check_schema() == SCHEMA_VERSION
        with store.engine.connect() as conn:
            versions = conn.execute(sa.select(schema_version_table.c.version)).scalars().all()
            tables = set(sa.inspect(conn).get_table_names())
        assert versions == list(range(1, SCHEMA_VERSION + 1))
        assert {"rr_schema_version", "rr_events", "rr_messages", "rr_heartbeats", "rr_cursors"} <= tables
    finally:
        store.close()


def test_migrate_refuses_a_store_from_a_newer_package(store):
    with store.engine.begin() as conn:
        conn.execute(
            schema_version_table.insert().values(
                version=SCHEMA_VERSION + 1, applied_at=datetime.now(timezone.utc), package_version="99.0"
            )
        )
    with pytest.raises(StoreSchemaError, match="upgrade airflow-provider-readreceipts"):
        store.migrate()
    with pytest.raises(StoreSchemaError, match=f"schema version {SCHEMA_VERSION + 1}"):
        store.check_schema()


def _migrate_in_process(url: str, barrier: Any, results: Any) -> None:
    store = ReceiptStore(url)
    try:
        barrier.wait(timeout=120)
        results.put(("ok", store.migrate()))
    except Exception as error:
        results.put(("error", repr(error)))
    finally:
        store.close()


def test_concurrent_migrate_from_several_processes(store_url):
    processes_count = 4
    context = _spawn()
    barrier = context.Barrier(processes_count)
    results = context.Queue()
    processes = [
        context.Process(target=_migrate_in_process, args=(store_url, barrier, results))
        for _ in range(processes_count)
    ]
    for process in processes:
        process.start()
    outcomes = [results.get(timeout=180) for _ in processes]
    for process in processes:
        process.join(timeout=60)
    assert outcomes == [("ok", SCHEMA_VERSION)] * processes_count
    assert [process.exitcode for process in processes] == [0] * processes_count
    with ReceiptStore(store_url) as store:
        assert _count(store, schema_version_table) == SCHEMA_VERSION
        assert store.record([build_event(Status.SENT)]) == [True]


# ------------------------------------------------------------------------------------------------
# Exactly once
# ------------------------------------------------------------------------------------------------


def test_the_same_delivery_is_stored_once(store):
    read = build_event(Status.READ, payload={"try": 1})
    assert store.record([read]) == [True]
    assert store.record([read]) == [False]
    # Same key, different payload and vendor spelling of the status: still the same event.
    assert store.record([build_event(Status.READ, raw_status="read", payload={"try": 2})]) == [False]
    sent, sent_again = (
        build_event(Status.SENT, raw_status="SENT"),
        build_event(Status.SENT, raw_status="SUCCESS"),
    )
    assert store.record([sent, sent_again, sent]) == [True, False, False]
    stored = store.events("sendblue_default", "msg-1")
    assert [(event.status, event.raw_status, event.payload) for event in stored] == [
        (Status.READ, "READ", {"try": 1}),
        (Status.SENT, "SENT", {}),
    ]


def test_participant_is_part_of_the_key_and_empty_means_none(store):
    events = [build_event(Status.READ, participant=name) for name in ("", "+15550001", "+15550002")]
    assert store.record(events) == [True, True, True]
    assert store.record(events) == [False, False, False]
    assert [event.participant for event in store.events("sendblue_default", "msg-1")] == [
        "",
        "+15550001",
        "+15550002",
    ]
    with store.engine.connect() as conn:
        nulls = conn.execute(sa.select(sa.func.count()).where(events_table.c.participant.is_(None))).scalar()
    assert nulls == 0


def test_a_replayed_vendor_event_id_is_a_duplicate(store):
    first = build_event(Status.SENT, event_id="evt-1", vendor="chert", conn_id="chert_default")
    replay = build_event(
        Status.DELIVERED, event_id="evt-1", vendor="chert", conn_id="chert_default", message_id="m2"
    )
    other_account = build_event(Status.SENT, event_id="evt-1", vendor="chert", conn_id="chert_other")
    no_ids = [
        build_event(Status.SENT, message_id=f"m{n}", conn_id="chert_default", vendor="chert")
        for n in range(3, 6)
    ]
    assert store.record([first]) == [True]
    assert store.record([replay]) == [False]
    assert store.record([other_account, *no_ids]) == [True, True, True, True]
    assert store.message_status("chert_default", "m2") is None


def test_unknown_raw_statuses_stay_apart(store):
    weird, odd = (build_event(Status.UNKNOWN, raw_status=raw) for raw in ("weird", "odd"))
    assert store.record([weird, odd, weird]) == [True, True, False]
    status = store.message_status("sendblue_default", "msg-1")
    assert (status.status, status.raw_status) == (Status.UNKNOWN, "weird")
    # Long raw statuses are keyed by a prefix and a digest of the whole: a different ending is a
    # different status.
    long_a, long_b = "x" * 5000 + "a", "x" * 5000 + "b"
    long_events = [build_event(Status.UNKNOWN, raw_status=raw) for raw in (long_a, long_b, long_a)]
    assert store.record(long_events) == [True, True, False]
    assert {event.raw_status for event in store.events("sendblue_default", "msg-1")} == {
        "weird",
        "odd",
        long_a,
        long_b,
    }
    # Any known status outranks an unknown one.
    store.record([build_event(Status.QUEUED)])
    assert store.message_status("sendblue_default", "msg-1").status is Status.QUEUED


def test_inbound_messages_are_stored_with_their_payload(store):
    payload = {
        "content": "Hi there",
        "is_outbound": False,
        "nested": {"list": [1, "two"]},
        "unicode": "héllo ✓",
    }
    inbound = build_event(
        Status.RECEIVED,
        raw_status="RECEIVED",
        message_id="in-1",
        chat_id="+14155550100",
        occurred_at=T0,
        payload=payload,
    )
    assert store.record([inbound]) == [True]
    status = store.message_status("sendblue_default", "in-1")
    assert (status.status, status.chat_id, status.source) == (Status.RECEIVED, "+14155550100", "webhook")
    [stored] = store.events("sendblue_default", "in-1")
    assert stored.payload == payload
    assert stored.occurred_at == T0
    assert stored.to_receipt_event() == inbound


def test_timestamps_come_back_aware_and_in_utc(store):
    naive = datetime(2026, 3, 1, 9, 30, 15, 123456)
    plus_two = datetime(2026, 3, 1, 11, 30, 15, 123456, tzinfo=timezone(timedelta(hours=2)))
    store.record([build_event(Status.READ, participant="a", occurred_at=naive)])
    store.record([build_event(Status.READ, participant="b", occurred_at=plus_two)])
    expected = datetime(2026, 3, 1, 9, 30, 15, 123456, tzinfo=timezone.utc)
    events = store.events("sendblue_default", "msg-1")
    assert [event.occurred_at for event in events] == [expected, expected]
    assert all(event.received_at.tzinfo == timezone.utc for event in events)
    assert store.message_status("sendblue_default", "msg-1").read_at == expected


def test_events_no_database_can_store_are_refused_before_writing(store):
    good = build_event(Status.SENT, message_id="good")
    bad_events = [
        build_event(Status.SENT, message_id="nul\x00id"),
        build_event(Status.SENT, message_id="x" * 513),
        build_event(Status.SENT, error_message="broken \ud800 surrogate"),
        build_event(Status.SENT, message_id=""),
        build_event(Status.SENT, payload=["not", "a", "mapping"]),
    ]
    for bad in bad_events:
        with pytest.raises(InvalidInputError):
            store.record([good, bad])
    with pytest.raises(InvalidInputError, match="source"):
        store.record([good], source="web\x00hook")
    assert store.message_status("sendblue_default", "good") is None


# ------------------------------------------------------------------------------------------------
# The ladder
# ------------------------------------------------------------------------------------------------


def _orders() -> list[tuple[Status, ...]]:
    """Every order of every non-empty subset of the ladder (325 sequences)."""
    return [order for size in range(1, len(LADDER) + 1) for order in itertools.permutations(LADDER, size)]


def _ladder_event(status: Status, message_id: str, position: int) -> ReceiptEvent:
    return build_event(
        status,
        message_id=message_id,
        chat_id="+14155550100" if status is Status.SENT else "",
        occurred_at=T0 + timedelta(minutes=position),
        error_code="E42" if status is Status.FAILED else "",
        error_message="number unreachable" if status is Status.FAILED else "",
    )


@pytest.mark.parametrize("transactions", ["one per step", "one for all"])
def test_current_status_follows_the_ladder_in_every_order(store, transactions):
    orders = {f"order-{index}": order for index, order in enumerate(_orders())}
    if transactions == "one per step":
        # Step n stores the n-th event of every sequence: each message sees its events arrive in
        # separate transactions, in its own order.
        for step in range(len(LADDER)):
            store.record(
                [
                    _ladder_event(order[step], message_id, step)
                    for message_id, order in orders.items()
                    if step < len(order)
                ]
            )
    else:
        store.record(
            [
                _ladder_event(status, message_id, step)
                for message_id, order in orders.items()
                for step, status in enumerate(order)
            ]
        )
    statuses = store.message_statuses([("sendblue_default", message_id) for message_id in orders])
    assert len(statuses) == len(orders)
    for message_id, order in orders.items():
        status = statuses[("sendblue_default", message_id)]
        expected = current_status(order)
        assert status.status is expected, (order, status)
        assert status.raw_status == expected.value
        when = {step_status: T0 + timedelta(minutes=step) for step, step_status in enumerate(order)}
        assert status.read_at == when.get(Status.READ)
        assert status.delivered_at == when.get(Status.DELIVERED)
        if Status.FAILED in order:
            assert (status.failed_code, status.failed_reason) == ("E42", "number unreachable")
        else:
            assert (status.failed_code, status.failed_reason) == ("", "")
        assert status.chat_id == ("+14155550100" if Status.SENT in order else "")


def test_ladder_rules_spelled_out(store):
    cases = {
        "read-before-delivered": ([Status.READ, Status.DELIVERED], Status.READ),
        "delivered-beats-late-failure": ([Status.DELIVERED, Status.FAILED], Status.DELIVERED),
        "failure-beats-late-sent": ([Status.FAILED, Status.SENT, Status.QUEUED], Status.FAILED),
        "read-beats-failure": ([Status.FAILED, Status.READ], Status.READ),
    }
    for message_id, (order, _) in cases.items():
        for step, status in enumerate(order):
            store.record([_ladder_event(status, message_id, step)])
    for message_id, (_, expected) in cases.items():
        assert store.message_status("sendblue_default", message_id).status is expected


def test_group_readers_earliest_first(store):
    reads = [
        build_event(Status.READ, participant="+15550002", occurred_at=T0 + timedelta(minutes=5)),
        build_event(Status.READ, participant="+15550001", occurred_at=T0 + timedelta(minutes=2)),
        build_event(Status.READ, participant="+15550002", occurred_at=T0 + timedelta(minutes=9)),
        build_event(Status.READ, participant="", occurred_at=T0 + timedelta(minutes=1)),
    ]
    assert store.record([build_event(Status.DELIVERED, occurred_at=T0)]) == [True]
    assert store.record(reads[:2]) == [True, True]
    assert store.record(reads[2:]) == [False, True]
    status = store.message_status("sendblue_default", "msg-1")
    assert status.status is Status.READ
    assert status.readers == ["+15550001", "+15550002"]
    assert status.reader_read_at == {
        "+15550001": T0 + timedelta(minutes=2),
        "+15550002": T0 + timedelta(minutes=5),
    }
    # read_at is the first READ of any kind, the participant-less one included.
    assert status.read_at == T0 + timedelta(minutes=1)
    assert status.delivered_at == T0


def test_source_of_the_deciding_event(store):
    store.record([build_event(Status.SENT)], source="webhook")
    store.record([build_event(Status.READ)], source="reconcile")
    store.record([build_event(Status.DELIVERED)], source="webhook")
    status = store.message_status("sendblue_default", "msg-1")
    assert (status.status, status.source) == (Status.READ, "reconcile")
    assert [event.source for event in store.events("sendblue_default", "msg-1")] == [
        "webhook",
        "reconcile",
        "webhook",
    ]


# ------------------------------------------------------------------------------------------------
# Heartbeat and purge
# ------------------------------------------------------------------------------------------------


async def test_heartbeat_tells_a_store_nobody_writes_to(store, async_store):
    assert store.last_heartbeat() is None
    assert await async_store.last_heartbeat() is None
    before = datetime.now(timezone.utc) - timedelta(seconds=1)
    store.heartbeat("receiver-a")
    first = store.last_heartbeat()
    store.heartbeat("receiver-b")
    store.heartbeat("receiver-a")
    latest = store.last_heartbeat()
    assert first is not None and latest is not None
    assert first.tzinfo == timezone.utc
    assert before <= first <= latest
    assert await async_store.last_heartbeat() == latest
    assert _count(store, heartbeats_table) == 2


def test_purge_removes_old_events_and_what_only_they_kept(store):
    store.record([build_event(Status.SENT, message_id="old"), build_event(Status.READ, message_id="old")])
    store.record([build_event(Status.SENT, message_id="mixed")])
    store.record(
        [build_event(Status.DELIVERED, message_id="mixed"), build_event(Status.SENT, message_id="new")]
    )
    store.heartbeat("old-receiver")
    store.heartbeat("live-receiver")
    long_ago = datetime.now(timezone.utc) - timedelta(days=40)
    with store.engine.begin() as conn:
        oldest_three = sa.select(events_table.c.id).order_by(events_table.c.id).limit(3).scalar_subquery()
        conn.execute(
            sa.update(events_table).where(events_table.c.id.in_(oldest_three)).values(received_at=long_ago)
        )
        conn.execute(
            sa.update(messages_table).where(messages_table.c.message_id == "old").values(updated_at=long_ago)
        )
        conn.execute(
            sa.update(heartbeats_table)
            .where(heartbeats_table.c.receiver_id == "old-receiver")
            .values(seen_at=long_ago)
        )

    assert store.purge(older_than=timedelta(days=30)) == 3
    assert store.message_status("sendblue_default", "old") is None
    assert store.events("sendblue_default", "old") == []
    assert [event.status for event in store.events("sendblue_default", "mixed")] == [Status.DELIVERED]
    assert store.message_status("sendblue_default", "mixed").status is Status.DELIVERED
    assert store.message_status("sendblue_default", "new").status is Status.SENT
    with store.engine.connect() as conn:
        assert conn.execute(sa.select(heartbeats_table.c.receiver_id)).scalars().all() == ["live-receiver"]
    assert store.purge(older_than=timedelta(days=30)) == 0
    with pytest.raises(InvalidInputError, match="older_than"):
        store.purge(older_than=timedelta(0))


def test_ids_are_never_reused_after_purging_the_newest_events(store):
    store.record([build_event(Status.SENT, message_id=f"m{n}") for n in range(5)])
    with store.engine.begin() as conn:
        newest = conn.execute(sa.select(sa.func.max(events_table.c.id))).scalar_one()
        conn.execute(
            sa.update(events_table).values(received_at=datetime.now(timezone.utc) - timedelta(days=2))
        )
    assert store.purge(older_than=timedelta(days=1)) == 5
    store.record([build_event(Status.SENT, message_id="after-purge")])
    [event] = store.events("sendblue_default", "after-purge")
    # A cursor at `newest` must still see the new event.
    assert event.id > newest


# ------------------------------------------------------------------------------------------------
# PostgreSQL NOTIFY
# ------------------------------------------------------------------------------------------------


@pytest.mark.postgres
async def test_postgres_notifies_listeners_after_each_commit_that_stored_something(postgres_store_url):
    import psycopg

    conninfo = make_url(postgres_store_url).set(drivername="postgresql").render_as_string(hide_password=False)
    store = ReceiptStore(postgres_store_url)
    async_store = AsyncReceiptStore(postgres_store_url)
    store.migrate()
    try:
        with psycopg.connect(conninfo, autocommit=True) as listener:
            listener.execute(f"LISTEN {NOTIFY_CHANNEL}")
            store.record([build_event(Status.SENT), build_event(Status.DELIVERED)])
            store.record([build_event(Status.SENT)])  # only a duplicate: nothing to wake anyone for
            await async_store.record([build_event(Status.READ)])
            notifications = [json.loads(note.payload) for note in listener.notifies(timeout=30, stop_after=2)]
        ids = [event.id for event in store.events("sendblue_default", "msg-1")]
        # In commit order; had the duplicate-only commit notified, it would be the second.
        assert notifications == [{"events": 2, "last_id": ids[1]}, {"events": 1, "last_id": ids[2]}]
    finally:
        store.close()
        await async_store.dispose()


# ------------------------------------------------------------------------------------------------
# BatchWriter: group commit
# ------------------------------------------------------------------------------------------------


def test_submit_returns_only_after_the_commit(store):
    # A second store object has its own connections: it sees only what was committed.
    with ReceiptStore(_plain_url(store)) as observer, BatchWriter(store) as writer:
        for n in range(15):
            event = build_event(Status.READ, message_id=f"m{n}")
            assert writer.submit_sync([event]) == [True]
            assert observer.message_status("sendblue_default", f"m{n}").status is Status.READ
            assert writer.submit_sync([event]) == [False]


async def test_async_submit_returns_only_after_the_commit(store):
    with ReceiptStore(_plain_url(store)) as observer, BatchWriter(store) as writer:
        results = await asyncio.gather(
            *(writer.submit([build_event(Status.SENT, message_id=f"m{n}")]) for n in range(50))
        )
        assert results == [[True]] * 50
        found = observer.message_statuses([("sendblue_default", f"m{n}") for n in range(50)])
        assert len(found) == 50


def test_many_concurrent_submitters_no_duplicate_no_loss(store):
    unique = [
        build_event(status, message_id=f"m{n}", participant=participant)
        for n in range(40)
        for status, participant in (
            (Status.SENT, ""),
            (Status.DELIVERED, ""),
            (Status.READ, "a"),
            (Status.READ, "b"),
        )
    ]
    outcomes: list[tuple[ReceiptEvent, bool]] = []
    calls = Counter()
    lock = threading.Lock()

    def submitter(seed: int) -> None:
        rng = random.Random(seed)
        events = unique[:]
        rng.shuffle(events)
        while events:
            chunk = events[: rng.randint(1, 4)]
            events = events[len(chunk) :]
            flags = writer.submit_sync(chunk, timeout=120)
            with lock:
                calls["submit"] += 1
                outcomes.extend(zip(chunk, flags, strict=True))

    with BatchWriter(store, max_batch=64) as writer:
        threads = [threading.Thread(target=submitter, args=(seed,)) for seed in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    new_per_event = Counter(event for event, flag in outcomes if flag)
    assert len(outcomes) == 8 * len(unique)
    assert set(new_per_event) == set(unique)
    assert set(new_per_event.values()) == {1}
    assert _count(store, events_table) == len(unique)
    statuses = store.message_statuses([("sendblue_default", f"m{n}") for n in range(40)])
    assert {status.status for status in statuses.values()} == {Status.READ}
    assert all(sorted(status.readers) == ["a", "b"] for status in statuses.values())
    assert (writer.stats.submissions, writer.stats.failed_submissions) == (calls["submit"], 0)


async def test_submissions_made_before_start_share_one_commit(store):
    writer = BatchWriter(store)
    pending = [
        asyncio.ensure_future(writer.submit([build_event(Status.SENT, message_id=f"m{n}")])) for n in range(5)
    ]
    await asyncio.sleep(0)  # every submit has queued its events
    assert not any(task.done() for task in pending)
    writer.start()
    try:
        assert await asyncio.gather(*pending) == [[True]] * 5
    finally:
        writer.stop()
    assert writer.stats.commits == 1
    assert writer.stats.events == 5


def _install_poison(store: ReceiptStore) -> None:
    """A database trigger that makes inserting message 'poison' fail, as a real commit failure."""
    if store.dialect == "sqlite":
        _execute(
            store,
            "CREATE TRIGGER rr_test_poison BEFORE INSERT ON rr_events WHEN NEW.message_id = 'poison'"
            " BEGIN SELECT RAISE(ABORT, 'poisoned event'); END",
        )
    else:
        _execute(
            store,
            "CREATE FUNCTION rr_test_poison() RETURNS trigger LANGUAGE plpgsql AS $fn$ BEGIN"
            " IF NEW.message_id = 'poison' THEN RAISE EXCEPTION 'poisoned event'; END IF;"
            " RETURN NEW; END $fn$",
            "CREATE TRIGGER rr_test_poison BEFORE INSERT ON rr_events FOR EACH ROW"
            " EXECUTE FUNCTION rr_test_poison()",
        )


async def test_a_failed_commit_fails_only_its_own_waiters_and_the_writer_goes_on(store):
    _install_poison(store)
    writer = BatchWriter(store)
    good_before = asyncio.ensure_future(writer.submit([build_event(Status.SENT, message_id="good-1")]))
    poisoned = asyncio.ensure_future(
        writer.submit(
            [build_event(Status.SENT, message_id="fine"), build_event(Status.SENT, message_id="poison")]
        )
    )
    good_after = asyncio.ensure_future(writer.submit([build_event(Status.SENT, message_id="good-2")]))
    await asyncio.sleep(0)
    writer.start()
    try:
        assert await good_before == [True]
        assert await good_after == [True]
        with pytest.raises(sa.exc.DBAPIError, match="poisoned event"):
            await poisoned
        assert writer.stats.failed_batches == 1
        assert writer.stats.failed_submissions == 1
        # The writer thread is still there and commits the next submission.
        assert await writer.submit([build_event(Status.READ, message_id="good-3")]) == [True]
        assert writer.running
    finally:
        writer.stop()
    # The failed submission was rolled back as a whole: its healthy event is not half-stored.
    assert store.message_status("sendblue_default", "fine") is None
    assert store.message_status("sendblue_default", "poison") is None
    assert {m for m in ("good-1", "good-2", "good-3") if store.message_status("sendblue_default", m)} == {
        "good-1",
        "good-2",
        "good-3",
    }


@contextlib.contextmanager
def _write_lock_held_elsewhere(store: ReceiptStore) -> Iterator[None]:
    """Another session holds the lock the store's writers need (SQLite's write lock; a table lock)."""
    if store.dialect == "sqlite":
        holder = sqlite3.connect(make_url(_plain_url(store)).database, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            holder.execute("ROLLBACK")
            holder.close()
    else:
        import psycopg

        conninfo = store.url.set(drivername="postgresql", query={}).render_as_string(hide_password=False)
        with psycopg.connect(conninfo) as holder:
            holder.execute("LOCK TABLE rr_events IN ACCESS EXCLUSIVE MODE")
            yield
            holder.rollback()


def test_a_locked_database_fails_the_waiter_and_the_writer_recovers(store):
    if store.dialect == "sqlite":
        impatient = ReceiptStore(_plain_url(store), busy_timeout=0.2)
    else:
        # lock_timeout makes the writer give up instead of waiting for the lock forever.
        impatient = ReceiptStore(
            store.url.update_query_dict({"options": "-c lock_timeout=200"}).render_as_string(
                hide_password=False
            )
        )
    event = build_event(Status.READ)
    with impatient, BatchWriter(impatient) as writer:
        with _write_lock_held_elsewhere(store):
            with pytest.raises(sa.exc.OperationalError):
                writer.submit_sync([event], timeout=120)
        # Not acknowledged, not stored: the vendor's retry is then stored as new.
        assert store.message_status("sendblue_default", "msg-1") is None
        assert writer.submit_sync([event], timeout=120) == [True]
    assert store.message_status("sendblue_default", "msg-1").status is Status.READ


async def test_stop_commits_what_is_pending_and_refuses_more(store):
    writer = BatchWriter(store)
    pending = asyncio.ensure_future(writer.submit([build_event(Status.SENT)]))
    await asyncio.sleep(0)
    # Never started: stop still commits what was accepted.
    await asyncio.to_thread(writer.stop)
    assert await pending == [True]
    with pytest.raises(RuntimeError, match="stopped"):
        writer.submit_sync([build_event(Status.READ)])
    with pytest.raises(RuntimeError, match="stopped"):
        writer.start()


async def test_a_cancelled_waiter_still_gets_its_events_written(store):
    writer = BatchWriter(store)
    waiter = asyncio.ensure_future(writer.submit([build_event(Status.READ)]))
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    writer.start()
    await asyncio.to_thread(writer.stop)
    assert store.message_status("sendblue_default", "msg-1").status is Status.READ


def test_invalid_submissions_are_refused_at_once(store):
    writer = BatchWriter(store)
    with pytest.raises(InvalidInputError):
        writer.submit_sync([build_event(Status.SENT, message_id="nul\x00")])
    assert writer.submit_sync([]) == []
    writer.stop()
    assert writer.stats.commits == 0


# ------------------------------------------------------------------------------------------------
# Several writer processes at once
# ------------------------------------------------------------------------------------------------


def _overlapping_events() -> list[ReceiptEvent]:
    return [
        build_event(status, message_id=f"m{n}", participant=participant, conn_id=f"conn-{n % 3}")
        for n in range(60)
        for status, participant in (
            (Status.QUEUED, ""),
            (Status.SENT, ""),
            (Status.DELIVERED, ""),
            (Status.FAILED, ""),
            (Status.READ, "a"),
            (Status.READ, "b"),
        )
    ]


def _write_in_process(url: str, seed: int, barrier: Any, results: Any) -> None:
    """One receiver-like process: a BatchWriter fed by four threads, all events in its own order."""
    store = ReceiptStore(url)
    outcomes: list[tuple[int, bool]] = []
    lock = threading.Lock()
    try:
        events = list(enumerate(_overlapping_events()))
        random.Random(seed).shuffle(events)
        with BatchWriter(store, max_batch=32) as writer:

            def feed(share: list[tuple[int, ReceiptEvent]]) -> None:
                rng = random.Random(seed * 100 + len(share))
                while share:
                    chunk = share[: rng.randint(1, 3)]
                    share = share[len(chunk) :]
                    chunk_flags = writer.submit_sync([event for _, event in chunk], timeout=120)
                    with lock:
                        outcomes.extend(
                            (index, flag) for (index, _), flag in zip(chunk, chunk_flags, strict=True)
                        )

            barrier.wait(timeout=120)
            threads = [threading.Thread(target=feed, args=(events[part::4],)) for part in range(4)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        results.put(("ok", outcomes))
    except Exception as error:
        results.put(("error", repr(error)))
    finally:
        store.close()


def test_several_writer_processes_store_each_event_exactly_once(store):
    processes_count = 4
    context = _spawn()
    barrier = context.Barrier(processes_count)
    results = context.Queue()
    processes = [
        context.Process(target=_write_in_process, args=(_plain_url(store), seed, barrier, results))
        for seed in range(processes_count)
    ]
    for process in processes:
        process.start()
    reports = []
    for _ in processes:
        try:
            reports.append(results.get(timeout=300))
        except queue.Empty:
            pytest.fail("a writer process sent no result")
    for process in processes:
        process.join(timeout=60)
    assert [kind for kind, _ in reports] == ["ok"] * processes_count, reports
    events = _overlapping_events()
    submitted = Counter(index for _, outcomes in reports for index, _ in outcomes)
    stored_by = Counter(index for _, outcomes in reports for index, flag in outcomes if flag)
    # Every process submitted every event and got an answer; exactly one of them stored it.
    assert submitted == Counter({index: processes_count for index in range(len(events))})
    assert stored_by == Counter({index: 1 for index in range(len(events))})
    assert _count(store, events_table) == len(events)
    keys = sorted({(event.conn_id, event.message_id) for event in events})
    statuses = store.message_statuses(keys)
    assert len(statuses) == 60
    for status in statuses.values():
        assert status.status is Status.READ
        assert sorted(status.readers) == ["a", "b"]
        assert status.delivered_at is not None


# ------------------------------------------------------------------------------------------------
# AsyncReceiptStore: the read side for triggers
# ------------------------------------------------------------------------------------------------


async def test_statuses_answers_many_messages_in_one_query(store, async_store):
    store.record([build_event(Status.DELIVERED, message_id=f"m{n}") for n in range(1500)])
    store.record([build_event(Status.READ, message_id="m7", participant=name) for name in ("a", "b")])
    store.record(
        [build_event(Status.FAILED, message_id="lost", error_code="30003", error_message="unreachable")]
    )
    await async_store.last_heartbeat()  # connect first: the dialect's own first-connect queries are not ours
    statements: list[str] = []

    def count(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith("SELECT"):
            statements.append(statement)

    sa.event.listen(async_store.engine.sync_engine, "before_cursor_execute", count)
    keys = [("sendblue_default", f"m{n}") for n in range(1500)]
    keys += [
        ("sendblue_default", "missing"),
        ("other_conn", "m1"),
        ("sendblue_default", "m1"),
        ("sendblue_default", "lost"),
    ]
    found = await async_store.statuses(keys)
    sa.event.remove(async_store.engine.sync_engine, "before_cursor_execute", count)

    assert len(statements) == 1
    assert len(found) == 1501
    assert ("sendblue_default", "missing") not in found and ("other_conn", "m1") not in found
    assert found[("sendblue_default", "m1")].status is Status.DELIVERED
    assert (found[("sendblue_default", "m7")].status, found[("sendblue_default", "m7")].readers) == (
        Status.READ,
        ["a", "b"],
    )
    failed = found[("sendblue_default", "lost")]
    assert (failed.status, failed.failed_code, failed.failed_reason) == (
        Status.FAILED,
        "30003",
        "unreachable",
    )
    assert await async_store.statuses([]) == {}


async def test_events_after_walks_the_store_by_id_with_filters(store, async_store):
    store.record([build_event(Status.SENT, message_id="a"), build_event(Status.RECEIVED, message_id="in-1")])
    store.record([build_event(Status.READ, message_id="a", conn_id="other")])
    store.record([build_event(Status.READ, message_id="a"), build_event(Status.SENT, message_id="b")])
    everything = await async_store.events_after(0)
    ids = [event.id for event in everything]
    assert ids == sorted(ids) and len(ids) == 5
    assert [(event.conn_id, event.message_id, event.status) for event in everything] == [
        ("sendblue_default", "a", Status.SENT),
        ("sendblue_default", "in-1", Status.RECEIVED),
        ("other", "a", Status.READ),
        ("sendblue_default", "a", Status.READ),
        ("sendblue_default", "b", Status.SENT),
    ]
    assert [event.id for event in await async_store.events_after(ids[1])] == ids[2:]
    assert [event.id for event in await async_store.events_after(0, limit=2)] == ids[:2]
    reads = await async_store.events_after(0, conn_id="sendblue_default", statuses=[Status.READ])
    assert [event.id for event in reads] == [ids[3]]
    inbound = await async_store.events_after(0, statuses=["RECEIVED"])
    assert [event.message_id for event in inbound] == ["in-1"]

    page, next_cursor = await async_store.events_page(0, statuses=[Status.READ], limit=10)
    # The page is not full: the cursor moves past the newest event even though it is not a READ.
    assert ([event.id for event in page], next_cursor) == ([ids[2], ids[3]], ids[4])
    page, next_cursor = await async_store.events_page(0, statuses=[Status.READ], limit=1)
    assert ([event.id for event in page], next_cursor) == ([ids[2]], ids[2])
    assert await async_store.max_event_id() == ids[4]
    with pytest.raises(InvalidInputError):
        await async_store.events_after(0, limit=0)


async def test_a_cursor_walk_misses_nothing_while_writers_commit(store, async_store):
    """Ids become visible in order, so a filtered walk by cursor sees each matching event once."""
    writers_count, batches = 4, 30
    expected_ids: list[int] = []

    def write(writer_number: int) -> None:
        for batch in range(batches):
            events = [
                build_event(Status.SENT, message_id=f"w{writer_number}-{batch}-a"),
                build_event(Status.DELIVERED, message_id=f"w{writer_number}-{batch}-b"),
                build_event(Status.SENT, message_id=f"w{writer_number}-{batch}-c"),
            ]
            assert store.record(events) == [True, True, True]

    threads = [threading.Thread(target=write, args=(number,)) for number in range(writers_count)]
    for thread in threads:
        thread.start()
    seen: list[int] = []
    cursor = 0
    while True:
        page, cursor = await async_store.events_page(cursor, statuses=[Status.SENT], limit=5)
        seen.extend(event.id for event in page)
        if not page:
            if (
                not any(thread.is_alive() for thread in threads)
                and cursor == await async_store.max_event_id()
            ):
                break
            await asyncio.sleep(0.001)
    for thread in threads:
        thread.join()
    with store.engine.connect() as conn:
        query = (
            sa.select(events_table.c.id).where(events_table.c.status == "SENT").order_by(events_table.c.id)
        )
        expected_ids = list(conn.execute(query).scalars())
    assert len(expected_ids) == writers_count * batches * 2
    assert seen == expected_ids


async def test_cursors_are_kept_in_the_store(store, async_store):
    assert await async_store.get_cursor("trigger-1") == 0
    await async_store.set_cursor("trigger-1", 41)
    await async_store.set_cursor("trigger-1", 42)
    await async_store.set_cursor("trigger-2", 7)
    assert await async_store.get_cursor("trigger-1") == 42
    # Committed and durable: a new store object (a restarted triggerer) reads it back.
    other = AsyncReceiptStore(_plain_url(store))
    try:
        assert (await other.get_cursor("trigger-1"), await other.get_cursor("trigger-2")) == (42, 7)
    finally:
        await other.dispose()


async def test_async_record_has_the_sync_semantics(store, async_store):
    events = [build_event(Status.READ, participant="a"), build_event(Status.DELIVERED)]
    assert await async_store.record(events) == [True, True]
    assert await async_store.record([*events, build_event(Status.SENT)]) == [False, False, True]
    assert store.record([build_event(Status.SENT)]) == [False]
    status = store.message_status("sendblue_default", "msg-1")
    assert (status.status, status.source, status.readers) == (Status.READ, "reconcile", ["a"])
    assert {event.source for event in store.events("sendblue_default", "msg-1")} == {"reconcile"}
    assert await async_store.record([]) == []
    assert await async_store.check_schema() == SCHEMA_VERSION


# ------------------------------------------------------------------------------------------------
# Where the store is
# ------------------------------------------------------------------------------------------------


def test_url_for_display_hides_the_password():
    store = ReceiptStore("postgresql://reader:s3cret-pw@db.example:5433/receipts")
    try:
        assert store.dialect == "postgresql"
        assert store.url.drivername == "postgresql+psycopg"
        assert "s3cret-pw" not in store.url_for_display and "s3cret-pw" not in repr(store)
        assert store.url_for_display.startswith("postgresql+psycopg://reader:")
    finally:
        store.close()
    with pytest.raises(StoreError, match="unsupported"):
        ReceiptStore("mysql://root@localhost/receipts")
    with pytest.raises(StoreError, match="in-memory"):
        ReceiptStore("sqlite://")


def test_from_airflow_uses_the_default_postgres_connection(airflow_connection, monkeypatch, tmp_path):
    monkeypatch.setenv("READRECEIPTS_STORE_PATH", str(tmp_path / "ignored.db"))
    airflow_connection(
        DEFAULT_STORE_CONN_ID,
        "postgres",
        host="db.example",
        port=5433,
        login="rr",
        password="p@ss/word",
        schema="receipts",
        extra={"sslmode": "require", "unrelated": "x"},
    )
    url = make_url(store_url_from_airflow())
    assert (url.drivername, url.host, url.port, url.username, url.password, url.database) == (
        "postgresql+psycopg",
        "db.example",
        5433,
        "rr",
        "p@ss/word",
        "receipts",
    )
    assert dict(url.query) == {"sslmode": "require"}
    store = ReceiptStore.from_airflow()
    try:
        assert store.dialect == "postgresql" and "p@ss" not in store.url_for_display
    finally:
        store.close()


def test_from_airflow_falls_back_to_a_sqlite_file(monkeypatch, tmp_path):
    monkeypatch.delenv(f"AIRFLOW_CONN_{DEFAULT_STORE_CONN_ID.upper()}", raising=False)
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("READRECEIPTS_STORE_PATH", raising=False)
    assert make_url(store_url_from_airflow()).database == str(tmp_path / "home" / "readreceipts.db")
    monkeypatch.setenv("READRECEIPTS_STORE_PATH", str(tmp_path / "env.db"))
    assert make_url(store_url_from_airflow()).database == str(tmp_path / "env.db")
    assert make_url(store_url_from_airflow(path=tmp_path / "explicit.db")).database == str(
        tmp_path / "explicit.db"
    )
    with ReceiptStore.from_airflow() as store:
        assert store.dialect == "sqlite"
        assert store.migrate() == SCHEMA_VERSION
    assert (tmp_path / "env.db").exists()


async def test_from_airflow_in_the_event_loop(airflow_connection, tmp_path):
    airflow_connection("rr_sqlite_store", "sqlite", host=str(tmp_path / "by-connection.db"))
    store = await AsyncReceiptStore.from_airflow(conn_id="rr_sqlite_store")
    try:
        assert store.dialect == "sqlite"
        assert store.url.drivername == "sqlite+aiosqlite"
        assert make_url(store.url).database == str(tmp_path / "by-connection.db")
    finally:
        await store.dispose()


def test_from_airflow_refuses_a_missing_or_wrong_connection(airflow_connection):
    with pytest.raises(StoreError, match="'rr_nowhere' is not defined"):
        store_url_from_airflow(conn_id="rr_nowhere")
    airflow_connection("rr_http_store", "http", host="example.com")
    with pytest.raises(StoreError, match="'postgres'"):
        store_url_from_airflow(conn_id="rr_http_store")


# ------------------------------------------------------------------------------------------------
# The command line
# ------------------------------------------------------------------------------------------------


def _with_password(url: str) -> str:
    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql":
        return url
    # Trust authentication ignores it; it is here to show it never reaches the output.
    return parsed.set(password="cli-s3cret").render_as_string(hide_password=False)


def test_cli_migrate_status_and_purge(store_url, capsys):
    url = _with_password(store_url)
    assert cli.main(["db", "status", "--store-url", url]) == 1
    assert "schema version: none" in capsys.readouterr().out
    assert cli.main(["db", "migrate", "--store-url", url]) == 0
    assert f"schema version {SCHEMA_VERSION}" in capsys.readouterr().out
    assert cli.main(["db", "status", "--store-url", url]) == 0
    output = capsys.readouterr().out
    assert f"schema version: {SCHEMA_VERSION}" in output and "last heartbeat: never" in output
    with ReceiptStore(url) as store:
        store.heartbeat("cli-test")
        store.record([build_event(Status.SENT)])
    assert cli.main(["db", "status", "--store-url", url]) == 0
    assert "s ago" in capsys.readouterr().out
    assert cli.main(["db", "purge", "--older-than", "30d", "--store-url", url]) == 0
    output = capsys.readouterr().out
    assert "deleted 0 events" in output
    assert "cli-s3cret" not in output


def test_cli_as_a_module_subprocess(sqlite_store_url):
    result = subprocess.run(  # noqa: S603 (our own interpreter and module)
        [
            sys.executable,
            "-m",
            "airflow_provider_readreceipts.cli",
            "db",
            "migrate",
            "--store-url",
            sqlite_store_url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    with ReceiptStore(sqlite_store_url) as store:
        assert store.schema_version() == SCHEMA_VERSION


def test_cli_reports_errors_without_a_traceback(capsys):
    assert cli.main(["db", "status", "--store-url", "mysql://root@localhost/x"]) == 1
    assert "readreceipts: error: unsupported receipt store URL" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30d", timedelta(days=30)),
        ("12h", timedelta(hours=12)),
        ("90m", timedelta(minutes=90)),
        ("3600s", timedelta(hours=1)),
        ("2w", timedelta(weeks=2)),
        ("1d12h", timedelta(days=1, hours=12)),
    ],
)
def test_durations(text, expected):
    assert cli.parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "30", "d", "0d", "-1d", "30 days", "1.5h"])
def test_bad_durations_are_usage_errors(text, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["db", "purge", "--older-than", text, "--store-url", "sqlite:////tmp/never-opened.db"])
    assert exit_info.value.code == 2
    assert "older-than" in capsys.readouterr().err


def test_cli_reads_the_store_url_from_the_environment(sqlite_store_url, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(cli.STORE_URL_ENV, sqlite_store_url)
    assert cli.main(["db", "migrate"]) == 0
    assert make_url(sqlite_store_url).database in capsys.readouterr().out
    # An explicit store option wins over the environment.
    assert cli.main(["db", "migrate", "--store-path", str(tmp_path / "explicit.db")]) == 0
    assert "explicit.db" in capsys.readouterr().out
