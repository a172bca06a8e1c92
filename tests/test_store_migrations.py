"""Schema upgrades: a version-1 store holding data becomes a version-2 store, alone or from many processes."""

from __future__ import annotations

import json
import multiprocessing
from datetime import datetime, timezone
from typing import Any

import pytest
import sqlalchemy as sa

from airflow_provider_readreceipts.receipts import Status
from airflow_provider_readreceipts.store import SCHEMA_VERSION, ReceiptStore, schema_version_table
from airflow_provider_readreceipts.store.migrations import migrate_to_1
from tests.support import build_event

V1_EVENT_ROWS = [
    # (message_id, status, participant, chat_id)
    ("v1-sent", "SENT", "", "+14155550100"),
    ("v1-group-read", "READ", "5511988887777@s.whatsapp.net", "120363000000000000@g.us"),
    ("v1-inbound", "RECEIVED", "", "5511999990001@s.whatsapp.net"),
]
VERSION_2_TABLES = {"rr_outbound", "rr_campaigns", "rr_campaign_steps", "rr_campaign_recipients", "rr_claims"}


def make_version_1_store(url: str) -> None:
    """A store exactly as version 1 of this package left it, with events, a status and a cursor."""
    store = ReceiptStore(url)
    now = datetime(2026, 11, 1, 12, 0, tzinfo=timezone.utc)
    try:
        with store.engine.begin() as conn:
            schema_version_table.create(conn)
            migrate_to_1(conn)
            conn.execute(
                schema_version_table.insert().values(version=1, applied_at=now, package_version="0.1.0")
            )
            for index, (message_id, status, participant, chat_id) in enumerate(V1_EVENT_ROWS, start=1):
                conn.execute(
                    sa.text(
                        "INSERT INTO rr_events (conn_id, vendor, message_id, status, raw_status,"
                        " dedup_status, participant, chat_id, received_at, source, payload)"
                        " VALUES ('ryze_default', 'ryze',"
                        " :message_id, :status, :status, :status, :participant, :chat_id, :received_at,"
                        " 'webhook', :payload)"
                    ),
                    {
                        "message_id": message_id,
                        "status": status,
                        "participant": participant,
                        "chat_id": chat_id,
                        "received_at": now if store.dialect == "postgresql" else now.replace(tzinfo=None),
                        "payload": json.dumps({"n": index}),
                    },
                )
            conn.execute(
                sa.text("INSERT INTO rr_cursors (name, value, updated_at) VALUES ('watcher', 2, :at)"),
                {"at": now if store.dialect == "postgresql" else now.replace(tzinfo=None)},
            )
    finally:
        store.close()


def _tables(store: ReceiptStore) -> set[str]:
    return set(sa.inspect(store.engine).get_table_names())


def test_version_1_store_with_data_upgrades_to_version_2(store_url):
    make_version_1_store(store_url)
    with ReceiptStore(store_url) as store:
        assert store.schema_version() == 1
        assert not VERSION_2_TABLES & _tables(store)

        assert store.migrate() == SCHEMA_VERSION == 2
        assert store.check_schema() == 2
        assert VERSION_2_TABLES <= _tables(store)
        with store.engine.connect() as conn:
            versions = conn.execute(sa.select(schema_version_table.c.version)).scalars().all()
            rows = conn.execute(
                sa.text(
                    "SELECT message_id, participant, participant_id, chat_key, payload"
                    " FROM rr_events ORDER BY id"
                )
            ).all()
            cursor = conn.execute(sa.text("SELECT value FROM rr_cursors WHERE name = 'watcher'")).scalar()
        assert versions == [1, 2]
        # Every old event is still there, raw values untouched, identities backfilled beside them.
        assert [(row.message_id, row.participant, row.participant_id, row.chat_key) for row in rows] == [
            ("v1-sent", "", "", "+14155550100"),
            ("v1-group-read", "5511988887777@s.whatsapp.net", "+5511988887777", "120363000000000000@g.us"),
            ("v1-inbound", "", "", "+5511999990001"),
        ]
        assert [json.loads(row.payload) for row in rows] == [{"n": 1}, {"n": 2}, {"n": 3}]
        assert cursor == 2

        # The upgraded store works as a new one: duplicates of old events are still duplicates.
        duplicate = build_event(
            Status.SENT, message_id="v1-sent", conn_id="ryze_default", vendor="ryze", chat_id="+14155550100"
        )
        assert store.record([duplicate]) == [False]
        assert store.record([build_event(Status.READ, message_id="v2-new", conn_id="ryze_default")]) == [True]
        assert store.migrate() == 2  # nothing left to do


def _migrate_in_process(url: str, barrier: Any, results: Any) -> None:
    store = ReceiptStore(url)
    try:
        barrier.wait(timeout=120)
        results.put(("ok", store.migrate()))
    except Exception as error:
        results.put(("error", repr(error)))
    finally:
        store.close()


def test_several_processes_upgrade_one_version_1_store_at_once(store_url):
    make_version_1_store(store_url)
    processes_count = 4
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
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
    with ReceiptStore(store_url) as store, store.engine.connect() as conn:
        # Version 2 applied once: one row per version, every old event kept once.
        assert conn.execute(sa.select(schema_version_table.c.version)).scalars().all() == [1, 2]
        assert conn.execute(sa.text("SELECT count(*) FROM rr_events")).scalar() == len(V1_EVENT_ROWS)


@pytest.mark.parametrize(
    "participant", ["+55 11 98888-7777", "5511988887777@s.whatsapp.net", "5511988887777"]
)
def test_new_events_store_the_identity_beside_the_raw_value(store, participant):
    store.record([build_event(Status.READ, participant=participant, chat_id="120363@g.us")])
    with store.engine.connect() as conn:
        row = conn.execute(sa.text("SELECT participant, participant_id, chat_key FROM rr_events")).one()
    assert tuple(row) == (participant, "+5511988887777", "120363@g.us")
