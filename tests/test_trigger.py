"""
The read-wait trigger and the event trigger, on a real SQLite file and the real PostgreSQL.

No timing assertions: every wait is bounded by ``asyncio.wait_for`` only so that a bug fails the
test instead of hanging it.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
import sqlalchemy as sa

from airflow_provider_readreceipts.receipts import Status
from airflow_provider_readreceipts.testing.fakes import sendblue as sendblue_fake
from airflow_provider_readreceipts.triggers import _poller
from airflow_provider_readreceipts.triggers.read_receipt import (
    ReadReceiptTrigger,
    ReceiptEventTrigger,
)
from airflow_provider_readreceipts.waits import WaitPolicy
from tests.support import postgres_connection_fields, receipt

GUARD = 60.0  # seconds before a stuck wait fails the test


def _deadline(seconds: float) -> str:
    return (datetime.now(timezone.utc) + timedelta(seconds=seconds)).isoformat()


def make_trigger(store, message_id: str, *, deadline: float = 30.0, **kwargs: Any) -> ReadReceiptTrigger:
    kwargs.setdefault("poll_interval", 0.1)
    kwargs.setdefault("reconcile_interval", None)
    kwargs.setdefault("conn_id", "sb_wait")
    kwargs.setdefault("vendor", "sendblue")
    return ReadReceiptTrigger(
        message_id=message_id,
        deadline=_deadline(deadline),
        sent_at=datetime.now(timezone.utc).isoformat(),
        **store.target,
        **kwargs,
    )


async def first_event(trigger: ReadReceiptTrigger | ReceiptEventTrigger) -> dict[str, Any]:
    async def take() -> dict[str, Any]:
        async for event in trigger.run():
            return event.payload
        raise AssertionError("the trigger ended without an event")

    return await asyncio.wait_for(take(), GUARD)


def record_later(store, *events, delay: float = 0.3, source: str = "webhook") -> threading.Thread:
    """Write events from another thread, as a receiver in another process would."""

    def write() -> None:
        time.sleep(delay)
        store.record(*events, source=source)

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    return thread


async def until(condition, what: str) -> None:
    """Wait for a condition of the running triggers; fails instead of hanging."""
    deadline = time.monotonic() + GUARD
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        await asyncio.sleep(0.01)


def the_poller() -> _poller.StorePoller | None:
    pollers = _poller.active_pollers()
    return pollers[0] if pollers else None


def assert_no_pollers() -> None:
    assert _poller.active_pollers() == []


# -- the three outcomes -------------------------------------------------------------------------------


async def test_read_arrives_while_waiting(wait_store):
    wait_store.heartbeat()
    writer = record_later(wait_store, receipt("m-read", Status.DELIVERED), receipt("m-read", Status.READ))

    payload = await first_event(make_trigger(wait_store, "m-read"))
    writer.join()

    assert payload["outcome"] == "read"
    assert payload["status"] == "READ"
    assert payload["learned_via"] == "webhook"
    assert payload["read_at"] is not None
    assert payload["time_to_read_seconds"] is not None and payload["time_to_read_seconds"] >= 0
    assert (payload["conn_id"], payload["message_id"], payload["vendor"]) == ("sb_wait", "m-read", "sendblue")
    assert_no_pollers()


async def test_unread_at_the_deadline_keeps_the_last_status(wait_store):
    wait_store.heartbeat()
    wait_store.record(receipt("m-unread", Status.DELIVERED))

    payload = await first_event(make_trigger(wait_store, "m-unread", deadline=0.5))

    assert payload["outcome"] == "unread"
    assert payload["status"] == "DELIVERED"
    assert payload["read_at"] is None
    assert payload["checked_at"] >= payload["deadline"], "unread is only said after a read past the deadline"
    assert_no_pollers()


async def test_deadline_already_past_still_reads_the_store_once(wait_store):
    wait_store.heartbeat()
    wait_store.record(receipt("m-late", Status.READ))

    payload = await first_event(make_trigger(wait_store, "m-late", deadline=-60))

    assert payload["outcome"] == "read", "a READ stored before the deadline is never reported unread"


async def test_failed_ends_at_once_with_the_vendors_reason(wait_store):
    wait_store.heartbeat()
    wait_store.record(
        receipt("m-fail", Status.FAILED, error_code="4001", error_message="Delivery failed downstream.")
    )

    # A deadline an hour away: only the FAILED status can end this wait.
    payload = await first_event(make_trigger(wait_store, "m-fail", deadline=3600))

    assert payload["outcome"] == "failed"
    assert payload["failure_code"] == "4001"
    assert payload["failure_reason"] == "Delivery failed downstream."


async def test_delivered_outranks_a_late_failure(wait_store):
    wait_store.heartbeat()
    wait_store.record(receipt("m-df", Status.DELIVERED), receipt("m-df", Status.FAILED, error_message="late"))

    payload = await first_event(make_trigger(wait_store, "m-df", deadline=0.5))

    assert payload["outcome"] == "unread"
    assert payload["status"] == "DELIVERED"


# -- group chats --------------------------------------------------------------------------------------

ALICE, BOB, CAROL = "+14155550001", "+14155550002", "+14155550003"


@pytest.mark.parametrize(
    ("wait_for", "participants", "readers", "outcome"),
    [
        ("any", None, [BOB], "read"),
        ("all", [ALICE, BOB, CAROL], [ALICE, BOB, CAROL], "read"),
        ("all", [ALICE, BOB, CAROL], [ALICE, CAROL], "unread"),
        (2, None, [ALICE, CAROL], "read"),
        (3, None, [ALICE, CAROL], "unread"),
        ([BOB], None, [BOB], "read"),
        ([ALICE, "+1 415 555 0002"], None, [ALICE, BOB], "read"),
        ([ALICE, BOB], None, [BOB, CAROL], "unread"),
    ],
)
async def test_group_policies(sqlite_wait_store, wait_for, participants, readers, outcome):
    sqlite_wait_store.heartbeat()
    sqlite_wait_store.record(*(receipt("m-group", Status.READ, participant=r) for r in readers))
    policy = WaitPolicy.parse(wait_for, participants)

    payload = await first_event(
        make_trigger(sqlite_wait_store, "m-group", deadline=0.5, policy=policy.to_kwargs())
    )

    assert payload["outcome"] == outcome
    assert sorted(payload["readers"]) == sorted(readers), "partial readers are reported on unread too"


async def test_group_read_completes_as_readers_arrive(wait_store):
    wait_store.heartbeat()
    wait_store.record(receipt("m-g2", Status.READ, participant=ALICE))
    writer = record_later(wait_store, receipt("m-g2", Status.READ, participant=BOB))
    policy = WaitPolicy.parse([ALICE, BOB]).to_kwargs()

    payload = await first_event(make_trigger(wait_store, "m-g2", policy=policy))
    writer.join()

    assert payload["outcome"] == "read"
    assert sorted(payload["readers"]) == [ALICE, BOB]


# -- reconcile ----------------------------------------------------------------------------------------


def sendblue_message(vendors, status: str = "SENT") -> str:
    from airflow_provider_readreceipts.hooks.sendblue import SendblueHook

    handle = SendblueHook(sendblue_conn_id="sb_wait").send_message(number="+14155551234", content="Hi")[
        "message_handle"
    ]
    vendors.fakes["sendblue"].set_status(handle, status)
    return handle


async def test_reconcile_learns_read_from_the_vendor_and_records_it(wait_store, vendors, sendblue_wait_conn):
    # No receiver has ever written here: the vendor's status API is the only source, asked at once.
    handle = sendblue_message(vendors, "READ")

    payload = await first_event(make_trigger(wait_store, handle, reconcile_interval=0.2))

    assert payload["outcome"] == "read"
    assert payload["learned_via"] == "reconcile"
    (stored,) = [e for e in wait_store.store.events("sb_wait", handle) if e.status is Status.READ]
    assert stored.source == "reconcile"
    assert vendors.requests_to("sendblue", "/api/status", "GET")


async def test_reconcile_covers_a_lost_webhook(wait_store, vendors, sendblue_wait_conn):
    wait_store.heartbeat()
    handle = sendblue_message(vendors, "DELIVERED")
    wait_store.record(receipt(handle, Status.DELIVERED))

    async def read_later() -> None:
        await asyncio.sleep(0.3)
        vendors.fakes["sendblue"].set_status(handle, "READ")  # its webhook never arrives

    trigger = make_trigger(wait_store, handle, reconcile_interval=0.2)
    payload, _ = await asyncio.gather(first_event(trigger), read_later())

    assert payload["outcome"] == "read"
    assert payload["learned_via"] == "reconcile"


async def test_reconcile_reports_vendor_failure(sqlite_wait_store, vendors, sendblue_wait_conn):
    handle = sendblue_message(vendors, "ERROR")
    vendors.fakes["sendblue"].set_status(
        handle, "ERROR", error_code=10001, error_message="Number unreachable"
    )

    payload = await first_event(
        make_trigger(sqlite_wait_store, handle, reconcile_interval=0.2, deadline=3600)
    )

    assert payload["outcome"] == "failed"
    assert payload["failure_reason"] == "Number unreachable"
    assert payload["learned_via"] == "reconcile"


async def test_one_reconcile_serves_every_wait_on_the_message(sqlite_wait_store, vendors, sendblue_wait_conn):
    handle = sendblue_message(vendors, "READ")
    triggers = [make_trigger(sqlite_wait_store, handle, reconcile_interval=30) for _ in range(5)]

    payloads = await asyncio.gather(*(first_event(t) for t in triggers))

    assert {p["outcome"] for p in payloads} == {"read"}
    assert len(vendors.requests_to("sendblue", "/api/status")) == 1
    assert len([e for e in sqlite_wait_store.store.events("sb_wait", handle)]) == 1


async def test_final_reconcile_before_saying_unread(sqlite_wait_store, vendors, sendblue_wait_conn):
    sqlite_wait_store.heartbeat()
    handle = sendblue_message(vendors, "DELIVERED")

    # Reconcile every hour: only the last look at the deadline asks the vendor.
    payload = await first_event(
        make_trigger(sqlite_wait_store, handle, reconcile_interval=3600, deadline=0.5)
    )

    assert payload["outcome"] == "unread"
    assert payload["status"] == "DELIVERED"
    assert payload["learned_via"] == "reconcile"
    assert len(vendors.requests_to("sendblue", "/api/status")) == 1


async def test_chert_reads_come_from_polling_the_chat(sqlite_wait_store, vendors, airflow_connection):
    from airflow_provider_readreceipts.hooks.chert import ChertHook
    from airflow_provider_readreceipts.testing.fakes import chert as chert_fake

    airflow_connection(
        "chert_wait",
        "chert",
        host=vendors.url("chert"),
        password=chert_fake.SIGNING_SECRET,
        extra={"webhook_secret": chert_fake.WEBHOOK_SECRET},
    )
    sent = ChertHook(chert_conn_id="chert_wait").send_message(phone="+14155551234", body="Hi")
    message_id, chat = str(sent["message_id"]), str(sent["lead_id"])
    sqlite_wait_store.heartbeat()  # a receiver exists, but Chert sends no read webhook

    async def read_later() -> None:
        await asyncio.sleep(0.3)
        vendors.fakes["chert"].read(message_id)

    trigger = make_trigger(
        sqlite_wait_store,
        message_id,
        conn_id="chert_wait",
        vendor="chert",
        chat=chat,
        reconcile_interval=0.2,
        reconcile_rate_per_minute=600,
    )
    payload, _ = await asyncio.gather(first_event(trigger), read_later())

    assert payload["outcome"] == "read"
    assert payload["learned_via"] == "reconcile"
    assert vendors.requests_to("chert", f"/chats/{chat}/messages", "GET")


class _RecordingHook:
    """Stands in for a vendor hook: records the order of calls and answers 'sent'."""

    calls: list[str]

    def __init__(self, calls: list[str]) -> None:
        self.calls = calls

    async def afetch_receipt_events(self, *, message_id: str, chat: str = "") -> list[Any]:
        self.calls.append(message_id)
        return []

    async def aclose(self) -> None:
        pass


async def test_reconcile_budget_serves_nearest_deadlines_first_within_the_rate(
    sqlite_wait_store, monkeypatch
):
    calls: list[str] = []
    monkeypatch.setattr("airflow_provider_readreceipts.hooks.hook_for", lambda *a, **k: _RecordingHook(calls))
    # No receiver: every wait wants the vendor at once, but the budget allows 60 a minute (burst 1).
    deadlines = {f"m-{i}": 30 + i * 10 for i in (3, 0, 4, 1, 2)}
    triggers = [
        make_trigger(sqlite_wait_store, m, deadline=d, reconcile_interval=600, reconcile_rate_per_minute=60)
        for m, d in deadlines.items()
    ]
    tasks = [asyncio.create_task(first_event(t)) for t in triggers]
    started = time.monotonic()
    await until(lambda: len(calls) >= 3, "three reconcile calls")
    elapsed = time.monotonic() - started
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)

    assert calls[:3] == ["m-0", "m-1", "m-2"], "nearest deadline first"
    # The rate as an upper bound only (a slow machine makes fewer calls, never more): a burst of
    # one, then one a second.
    assert len(calls) <= 1 + elapsed * 1.0 + 1
    assert_no_pollers()


# -- sharing one poller -------------------------------------------------------------------------------


def _count_status_queries(engine: Any, seen: list[int]) -> None:
    """Count the status queries an async engine runs, and how many keys each carried."""

    def before(conn, cursor, statement, parameters, context, executemany):
        if "rr_messages" in statement and "JOIN" in statement.upper():
            seen.append(1)

    sa.event.listen(engine.sync_engine, "before_cursor_execute", before)


async def test_many_waits_share_one_query_per_interval(wait_store, monkeypatch):
    wait_store.heartbeat()
    waits = 25
    statement_count: list[int] = []
    keys_per_query: list[int] = []
    counted: list[_poller.StorePoller] = []
    acquire = _poller.acquire_poller

    def acquire_counted(url: str, **options: Any) -> _poller.StorePoller:
        # The spies go on the poller as the first trigger acquires it, before it can run a query:
        # they see every query it makes, however fast it starts.
        poller = acquire(url, **options)
        if not counted:
            counted.append(poller)
            _count_status_queries(poller.store.engine, statement_count)
            original = poller.store.statuses

            async def spy(keys):
                keys_per_query.append(len(keys))
                return await original(keys)

            poller.store.statuses = spy  # type: ignore[method-assign]
        return poller

    monkeypatch.setattr(_poller, "acquire_poller", acquire_counted)
    messages = [f"m-share-{i}" for i in range(waits)]
    # Three seconds: every wait registers long before the first deadline, even on a slow machine,
    # so that a query for all of them happens.
    triggers = [make_trigger(wait_store, m, deadline=3.0) for m in messages]
    payloads = await asyncio.gather(*(first_event(t) for t in triggers))

    (poller,) = counted
    assert {p["outcome"] for p in payloads} == {"unread"}
    assert poller.queries == len(keys_per_query) == len(statement_count)
    # One query per interval asks for every waiting message, never one query per wait.
    assert max(keys_per_query) == waits
    # Each poll is one SQL statement, whatever the number of waits.
    assert sum(keys_per_query) > poller.queries
    assert_no_pollers()


async def test_cancelled_triggers_leak_nothing(wait_store, vendors, sendblue_wait_conn):
    wait_store.heartbeat()
    handle = sendblue_message(vendors, "SENT")
    triggers = [make_trigger(wait_store, f"m-cancel-{i}", deadline=3600) for i in range(10)]
    triggers.append(make_trigger(wait_store, handle, deadline=3600, reconcile_interval=0.1))
    tasks = [asyncio.create_task(first_event(t)) for t in triggers]
    await until(lambda: (p := the_poller()) is not None and p.wait_count == len(triggers), "every wait")
    (poller,) = _poller.active_pollers()
    await until(lambda: vendors.requests_to("sendblue", "/api/status"), "a reconcile call")
    poller_tasks = poller.tasks
    engine = poller.store.engine
    assert poller.refcount == len(triggers) and poller_tasks

    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for trigger in triggers:
        await trigger.cleanup()  # what the triggerer calls after a cancel; must be harmless

    assert poller.refcount == 0 and poller.closed
    assert poller.wait_count == 0
    assert all(task.done() for task in poller_tasks)
    assert engine.pool.checkedout() == 0
    assert not poller.listening
    assert_no_pollers()


async def test_run_may_run_more_than_once(sqlite_wait_store):
    sqlite_wait_store.heartbeat()
    sqlite_wait_store.record(receipt("m-twice", Status.READ))
    trigger = make_trigger(sqlite_wait_store, "m-twice")

    first = await first_event(trigger)
    second = await first_event(trigger)

    assert first["outcome"] == second["outcome"] == "read"
    assert_no_pollers()


async def test_postgres_notify_wakes_the_wait(pg_wait_store):
    pg_wait_store.heartbeat()
    # Polling every hour: only the NOTIFY sent after the commit can end this wait in time.
    trigger = make_trigger(pg_wait_store, "m-notify", poll_interval=3600)
    task = asyncio.create_task(first_event(trigger))
    await until(lambda: (p := the_poller()) is not None and p.listening and p.queries >= 1, "LISTEN")
    (poller,) = _poller.active_pollers()
    await asyncio.to_thread(pg_wait_store.record, receipt("m-notify", Status.READ))

    payload = await task

    assert payload["outcome"] == "read"
    assert poller.notifications >= 1
    # Woken by the NOTIFY, the poller read the new events by id and asked only for what changed.
    assert poller.event_queries >= 1


# -- faults of our own: an error event, never "unread" ------------------------------------------------


async def test_no_receiver_and_no_reconcile_is_an_error(wait_store):
    payload = await first_event(make_trigger(wait_store, "m-x", deadline=0.2))

    assert payload["outcome"] == "error"
    assert payload["kind"] == "no_receiver"
    assert "no webhook receiver has ever written" in payload["error"]


async def test_no_receiver_and_vendor_never_answers_is_an_error(
    sqlite_wait_store, vendors, sendblue_wait_conn
):
    from airflow_provider_readreceipts.testing.fakes.server import Fault

    vendors.inject("sendblue", *[Fault(status=503, body={"message": "down"}) for _ in range(50)])

    payload = await first_event(
        make_trigger(sqlite_wait_store, "m-down", deadline=0.5, reconcile_interval=0.2)
    )

    assert payload["outcome"] == "error"
    assert payload["kind"] == "no_receiver"
    assert "status is unknown, not unread" in payload["error"]


async def test_wrong_vendor_credentials_are_bad_configuration(sqlite_wait_store, vendors, airflow_connection):
    # Distinctive, so that finding it in the error can only mean the secret leaked into it.
    wrong_secret = "wrong-secret-Vq27xk"
    airflow_connection(
        "sb_wait",
        "sendblue",
        host=vendors.url("sendblue"),
        login=sendblue_fake.API_KEY_ID,
        password=wrong_secret,
    )

    payload = await first_event(make_trigger(sqlite_wait_store, "m-401", reconcile_interval=0.2))

    assert payload["outcome"] == "error"
    assert payload["kind"] == "bad_configuration"
    assert "HTTP 401" in payload["error"]
    assert wrong_secret not in payload["error"]


async def test_unmigrated_store_is_bad_configuration(tmp_path):
    trigger = ReadReceiptTrigger(
        conn_id="c",
        message_id="m",
        vendor="sendblue",
        deadline=_deadline(1),
        store_path=str(tmp_path / "x.db"),
    )

    payload = await first_event(trigger)

    assert payload["outcome"] == "error"
    assert payload["kind"] == "bad_configuration"
    assert "migrate" in payload["error"]
    assert_no_pollers()


async def test_missing_store_connection_is_bad_configuration():
    trigger = ReadReceiptTrigger(
        conn_id="c", message_id="m", vendor="sendblue", deadline=_deadline(1), store_conn_id="no_such_store"
    )

    payload = await first_event(trigger)

    assert payload == {
        "outcome": "error",
        "kind": "bad_configuration",
        "error": payload["error"],
    }
    assert "no_such_store" in payload["error"]


async def test_unreachable_store_is_an_error_not_unread(airflow_connection):
    # The suite's PostgreSQL connection, on port 9 where nothing listens: the store cannot be reached.
    airflow_connection("rr_dead_store", "postgres", **postgres_connection_fields(port=9))
    trigger = ReadReceiptTrigger(
        conn_id="c", message_id="m", vendor="sendblue", deadline=_deadline(0.1), store_conn_id="rr_dead_store"
    )

    payload = await first_event(trigger)

    assert payload["outcome"] == "error"
    assert payload["kind"] == "store_unreachable"
    assert_no_pollers()


async def test_store_lost_while_waiting_fails_after_the_grace(sqlite_wait_store, monkeypatch):
    sqlite_wait_store.heartbeat()
    trigger = make_trigger(sqlite_wait_store, "m-lost", deadline=3600, store_error_grace=0.3)
    task = asyncio.create_task(first_event(trigger))
    await until(lambda: (p := the_poller()) is not None and p.queries >= 1, "a first query")
    (poller,) = _poller.active_pollers()

    async def broken(keys):
        raise OSError("disk I/O error")

    monkeypatch.setattr(poller.store, "statuses", broken)
    payload = await task

    assert payload["outcome"] == "error"
    assert payload["kind"] == "store_unreachable"
    assert "disk I/O error" in payload["error"]


# -- serialisation ------------------------------------------------------------------------------------


def test_read_trigger_serialises_and_round_trips():
    from airflow.sdk.serde import deserialize, serialize

    trigger = ReadReceiptTrigger(
        conn_id="sb",
        message_id="m-1",
        vendor="sendblue",
        deadline="2030-01-01T00:00:00+00:00",
        chat="+14155550100",
        sent_at="2029-12-31T20:00:00+00:00",
        policy=WaitPolicy.parse(2).to_kwargs(),
        poll_interval=2.0,
        reconcile_interval=60.0,
        reconcile_rate_per_minute=45.0,
        store_conn_id="rr_store",
        store_error_grace=30.0,
    )
    classpath, kwargs = trigger.serialize()

    assert classpath == "airflow_provider_readreceipts.triggers.read_receipt.ReadReceiptTrigger"
    # Through Airflow's serde, as trigger kwargs travel from the worker to the triggerer.
    restored = ReadReceiptTrigger(**deserialize(serialize(kwargs)))
    assert restored.serialize() == (classpath, kwargs)


def test_event_trigger_hash_is_stable_for_equal_filters():
    a = ReceiptEventTrigger(conn_id="sb", statuses=["read", "RECEIVED"])
    b = ReceiptEventTrigger(conn_id="sb", statuses=["RECEIVED", "READ"])
    c = ReceiptEventTrigger(conn_id="sb", statuses=["READ"])

    assert a.serialize() == b.serialize()
    assert ReceiptEventTrigger.hash(*a.serialize()) == ReceiptEventTrigger.hash(*b.serialize())
    assert ReceiptEventTrigger.hash(*a.serialize()) != ReceiptEventTrigger.hash(*c.serialize())
    assert a.cursor == b.cursor != c.cursor
    classpath, kwargs = a.serialize()
    assert ReceiptEventTrigger(**kwargs).serialize() == (classpath, kwargs)


def test_event_trigger_refuses_unknown_statuses():
    with pytest.raises(ValueError):
        ReceiptEventTrigger(statuses=["OPENED"])


# -- the event trigger --------------------------------------------------------------------------------


async def take(agen, count: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []

    async def run() -> None:
        async for event in agen:
            out.append(event.payload)
            if len(out) == count:
                return

    await asyncio.wait_for(run(), GUARD)
    return out


async def test_event_trigger_fires_once_per_matching_event_and_resumes(wait_store):
    wait_store.record(
        receipt("e-1", Status.READ),
        receipt("e-2", Status.DELIVERED),
        receipt("e-3", Status.READ, conn_id="other"),
        receipt("e-4", Status.READ),
    )
    trigger = ReceiptEventTrigger(
        conn_id="sb_wait", statuses=["READ"], poll_interval=0.05, batch_size=10, **wait_store.target
    )
    stream = trigger.run()

    got = await take(stream, 2)
    assert [e["message_id"] for e in got] == ["e-1", "e-4"]
    assert got[0]["event_id"] < got[1]["event_id"]
    assert got[0]["status"] == "READ" and got[0]["conn_id"] == "sb_wait"
    writer = record_later(wait_store, receipt("e-5", Status.READ), delay=0.1)
    (e5,) = await take(stream, 1)
    assert e5["message_id"] == "e-5"
    writer.join()
    # Stopped while e-5 was still being handed on (as a triggerer killed at that point).
    await stream.aclose()

    # A restart: a new instance with the same filter resumes from the saved cursor. The batch that
    # was in flight comes again, with the same event id (handlers dedup); nothing is lost.
    wait_store.record(receipt("e-6", Status.READ))
    restarted = ReceiptEventTrigger(**trigger.serialize()[1]).run()
    replayed = await take(restarted, 2)
    assert [(e["message_id"], e["event_id"]) for e in replayed] == [
        ("e-5", e5["event_id"]),
        ("e-6", replayed[1]["event_id"]),
    ]
    await restarted.aclose()


async def test_event_trigger_in_ack_mode_moves_the_cursor_only_past_confirmed_events(sqlite_wait_store):
    from airflow.triggers.shared_stream import SharedStreamManager

    from airflow_provider_readreceipts.hooks.store import AsyncReceiptStore

    sqlite_wait_store.record(*(receipt(f"a-{i}", Status.RECEIVED) for i in range(3)))
    trigger = ReceiptEventTrigger(statuses=["RECEIVED"], poll_interval=0.05, **sqlite_wait_store.target)
    key = trigger.shared_stream_key()

    async def cursor() -> int:
        store = AsyncReceiptStore(sqlite_wait_store.url)
        try:
            return await store.get_cursor(trigger.cursor)
        finally:
            await store.dispose()

    async def consume(manager: SharedStreamManager, count: int, confirm: bool) -> list[dict[str, Any]]:
        """What the triggerer's run_trigger does: take each event, bind it, then pull the next."""
        events: list[dict[str, Any]] = []
        stream = trigger.filter_shared_stream(manager.subscribe(trigger_id=1, trigger=trigger, key=key))
        seqs = []
        async for event in stream:
            events.append(event.payload)
            seq = manager.bind_pending_event(trigger_id=1, key=key)
            assert seq is not None, "the stream runs in ack mode"
            seqs.append(seq)
            if len(events) == count:
                break
        if confirm:
            manager.confirm_persisted(seqs)  # the supervisor stored the asset events
            await asyncio.sleep(0.3)
        await stream.aclose()
        await manager.unsubscribe(1, key)
        return events

    first = await asyncio.wait_for(consume(SharedStreamManager(), 2, confirm=True), GUARD)
    assert [e["message_id"] for e in first] == ["a-0", "a-1"]
    assert await cursor() == first[-1]["event_id"]

    # Delivered but never confirmed stored (the triggerer died): the cursor must not move...
    unconfirmed = await asyncio.wait_for(consume(SharedStreamManager(), 1, confirm=False), GUARD)
    assert [e["message_id"] for e in unconfirmed] == ["a-2"]
    assert await cursor() == first[-1]["event_id"]
    # ... so the next triggerer delivers it again: at least once, never lost.
    again = await asyncio.wait_for(consume(SharedStreamManager(), 1, confirm=True), GUARD)
    assert [e["message_id"] for e in again] == ["a-2"]
    assert await cursor() == again[-1]["event_id"]


async def test_event_payload_is_json(sqlite_wait_store):
    import json

    sqlite_wait_store.record(receipt(f"j-{uuid.uuid4().hex}", Status.READ, participant=ALICE))
    stream = ReceiptEventTrigger(poll_interval=0.05, **sqlite_wait_store.target).run()
    (payload,) = await take(stream, 1)
    await stream.aclose()

    assert json.loads(json.dumps(payload)) == payload
    assert payload["participant"] == ALICE


async def test_rate_limited_reconcile_pauses_and_recovers(sqlite_wait_store, vendors, sendblue_wait_conn):
    from airflow_provider_readreceipts.testing.fakes.server import Fault

    handle = sendblue_message(vendors, "READ")
    vendors.inject("sendblue", Fault(status=429, body={"message": "slow down"}, headers={"Retry-After": "1"}))

    payload = await first_event(make_trigger(sqlite_wait_store, handle, reconcile_interval=0.2))

    assert payload["outcome"] == "read"
    statuses = vendors.requests_to("sendblue", "/api/status")
    assert len(statuses) == 2, "one refused with 429, one after the pause the vendor asked for"
