"""
End to end: the example DAGs against the vendor sandbox, the real webhook receiver and the receipt
store, asserting the path each contact (and each inbound message) took.

Three tiers:

1. The sandbox on its own: fates by number, retries until 2xx, duplicates, loopback only, and each
   vendor's webhooks accepted by the real receiver (the proof that they are delivered "the way each
   vendor does": the receiver verifies them with the vendors' own rules).
2. Every example DAG with ``dag.test()``, on a SQLite store and on a PostgreSQL store.
   ``dag.test()`` cannot deliver asset events, so the inbound DAG is given the events that
   ``ReceiptEventTrigger`` read from the store, folded and repeated as the scheduler may.
3. (slow) A real Airflow on PostgreSQL: API server, scheduler, triggerer and DAG processor. The
   campaign's waits run concurrently in the triggerer, and inbound messages start the event-driven
   DAG through its AssetWatcher.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from airflow_provider_readreceipts.testing.sandbox import CONN_IDS, SENDBLUE_LINE
from airflow_provider_readreceipts.testing.sandbox.delivery import (
    Scheduler,
    WebhookDeliverer,
    is_loopback_url,
    redact_url,
)
from airflow_provider_readreceipts.testing.sandbox.fates import Fate, Timing, fate_for, last_digit
from tests import support
from tests.support import CAMPAIGN, CLUSTER_CONTACTS, INBOUND, Cluster, Stack, example_source, wait_until

#: Seconds two timestamps of one moment may differ by: the vendor's read time travels as ISO text
#: (rounded to the millisecond along the way), the sandbox records its step a moment after it.
CLOCK_SLACK = 0.01
#: One contact per path; the last digit decides (0-4 read, 5-7 never read, 8-9 failed).
CONTACTS = [
    {"name": "Ada", "number": "+14155550100"},
    {"name": "Grace", "number": "+14155550134"},
    {"name": "Linus", "number": "+14155550166"},
    {"name": "Margaret", "number": "+14155550189"},
]


def numbers_with(fate: Fate, contacts: Sequence[Mapping[str, str]] = CONTACTS) -> list[str]:
    """The numbers of ``contacts`` (by default this module's) whose messages get ``fate``."""
    return support.numbers_with(fate, contacts)


# -- 1. the sandbox ----------------------------------------------------------------------------------


def test_the_fate_of_a_message_follows_the_last_digit_of_its_number() -> None:
    assert [fate_for(f"+1415555010{digit}").value for digit in range(10)] == (
        ["read"] * 5 + ["unread"] * 3 + ["failed"] * 2
    )
    assert fate_for("14155550107@s.whatsapp.net") is Fate.UNREAD  # a JID's user part counts
    timing = Timing(read_delay=1.0, deliver_delay=0.4)
    assert [timing.read_after(d) for d in (0, 2, 4)] == [1.0, 2.0, 3.0]  # 0 reads first, 4 last


class FlakyReceiver:
    """A loopback HTTP server that answers 503 to the first ``failures`` requests, then 200."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.requests: list[tuple[float, bytes, dict[str, str]]] = []
        flaky = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                flaky.requests.append((time.monotonic(), body, dict(self.headers)))
                status = 503 if len(flaky.requests) <= flaky.failures else 200
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b'{"stored": 1}')

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/webhooks/x?token=secret-token"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class RecordingScheduler(Scheduler):
    """The sandbox's scheduler, keeping the delay it was given for each action, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.delays: list[float] = []

    def call_later(self, delay: float, action: Callable[[], None]) -> None:
        self.delays.append(delay)
        super().call_later(delay, action)


@pytest.fixture
def deliverer() -> Iterator[WebhookDeliverer]:
    scheduler = RecordingScheduler().start()
    deliverer = WebhookDeliverer(scheduler, first_backoff=0.1, max_attempts=4, duplicate_every=2)
    yield deliverer
    deliverer.close()
    scheduler.stop()


def test_a_webhook_is_retried_with_backoff_until_2xx_then_some_are_sent_twice(deliverer) -> None:
    receiver = FlakyReceiver(failures=2)
    try:
        first = deliverer.send(vendor="v", event="READ", message_id="m1", url=receiver.url, payload={"n": 1})
        assert first is not None
        wait_until(lambda: first.acknowledged, timeout=60, what="the first webhook's 2xx")
        second = deliverer.send(vendor="v", event="READ", message_id="m2", url=receiver.url, payload={"n": 2})
        assert second is not None
        wait_until(lambda: len(receiver.requests) == 5, timeout=60, what="the duplicate")
    finally:
        receiver.close()
    # 503, 503, 200: the same bytes three times, the wait doubling (0.1 s, then 0.2 s).
    assert [r[1] for r in receiver.requests[:3]] == [b'{"n":1}'] * 3
    assert isinstance(deliverer.scheduler, RecordingScheduler)
    assert deliverer.scheduler.delays[:3] == [0.0, 0.1, 0.2], "at once, then after 0.1 s, then 0.2 s"
    # Never sooner than the backoff (a loaded machine may make any of them later, not earlier).
    times = [request[0] for request in receiver.requests[:3]]
    gaps = [times[1] - times[0], times[2] - times[1]]
    assert gaps[0] >= 0.09 and gaps[1] >= 0.19, gaps
    assert [len(d.attempts) for d in deliverer.deliveries()] == [3, 1, 1]
    # Every second acknowledged webhook goes out once more, byte for byte, headers and all.
    duplicate = deliverer.deliveries()[2]
    assert duplicate.duplicate_of == second.id and receiver.requests[4][1] == receiver.requests[3][1]
    # The token of Direct7-style report URLs never shows in the sandbox's state.
    assert "secret-token" not in json.dumps([d.public() for d in deliverer.deliveries()])


def test_a_receiver_that_never_answers_is_given_up_after_max_attempts(deliverer) -> None:
    delivery = deliverer.send(
        vendor="v", event="READ", message_id="m", url="http://127.0.0.1:9/nothing-listens", payload={}
    )
    assert delivery is not None
    wait_until(lambda: delivery.gave_up, timeout=60, what="the sandbox to give up")
    assert len(delivery.attempts) == 4 and not delivery.acknowledged


def test_the_sandbox_calls_loopback_urls_only(deliverer) -> None:
    assert (
        deliverer.send(vendor="v", event="READ", message_id="m", url="https://example.com/hook", payload={})
        is None
    )
    assert is_loopback_url("http://localhost:1/x") and is_loopback_url("http://[::1]:1/x")
    assert not is_loopback_url("http://10.0.0.1/x") and not is_loopback_url("file:///etc/passwd")
    assert redact_url("http://127.0.0.1/w?token=abc&x=1") == "http://127.0.0.1/w?token=***&x=1"


def _hook(vendor: str) -> Any:
    from airflow_provider_readreceipts.hooks import hook_for

    return hook_for(CONN_IDS[vendor], vendor)


async def _chert_poll(message_id: str, chat: str) -> list[Any]:
    hook = _hook("chert")
    try:
        return list(await hook.afetch_receipt_events(message_id=message_id, chat=chat))
    finally:
        await hook.aclose()


def test_each_vendor_reports_the_way_it_does_and_the_receiver_accepts_it(e2e_stack: Stack) -> None:
    """Sends through the real hooks; the receiver verifies each vendor's webhooks by its own rules."""
    from airflow_provider_readreceipts.hooks.store import ReceiptStore

    e2e_stack.reset()
    reader, failing = "+14155550101", "+14155550108"
    receiver_hook = f"{e2e_stack.receiver_url}/webhooks"
    sent = {
        "sendblue": _hook("sendblue").send_message(
            number=reader, content="hi", status_callback=f"{receiver_hook}/{CONN_IDS['sendblue']}"
        )["message_handle"],
        "ryze": _hook("ryze").send_message(number=reader, message="hi")["messageId"],
        "direct7": _hook("direct7").send_message(
            number=reader, body="hi", report_url=_hook("direct7").report_url_from_connection()
        )["request_id"],
    }
    chert = _hook("chert").send_message(phone=reader, body="hi")
    failed = _hook("sendblue").send_message(
        number=failing, content="hi", status_callback=f"{receiver_hook}/{CONN_IDS['sendblue']}"
    )["message_handle"]
    state = e2e_stack.settled()

    store = ReceiptStore(e2e_stack.store_url)
    try:
        for vendor, message_id in sent.items():
            status = store.message_status(CONN_IDS[vendor], message_id)
            assert status is not None and status.status.value == "READ", vendor
            assert status.source == "webhook"
        failure = store.message_status(CONN_IDS["sendblue"], failed)
        assert failure is not None and failure.status.value == "FAILED"
        assert "sandbox" in failure.failed_reason
        # Chert sends no status webhook: the store knows nothing, its API knows it was read.
        assert store.message_status(CONN_IDS["chert"], chert["message_id"]) is None
    finally:
        store.close()
    events = asyncio.run(_chert_poll(chert["message_id"], chert["lead_id"]))
    assert "READ" in {event.status.value for event in events}

    deliveries = state["deliveries"]
    assert {d["vendor"] for d in deliveries} == {"sendblue", "ryze", "direct7"}
    assert all(d["acknowledged"] and not d["gave_up"] for d in deliveries), deliveries
    duplicates = [d for d in deliveries if d["duplicate_of"] is not None]
    assert duplicates, "the sandbox sends every third webhook twice"
    # The receiver acknowledged each duplicate without storing it again.
    assert all(d["answer"] == {"stored": 0, "duplicates": 1} for d in duplicates)


# -- 2. every example DAG with dag.test() --------------------------------------------------------------


def _xcoms(result: Any, task_id: str) -> list[Any]:
    """The return values of every map index of a task, in order."""
    return [result.xcom(task_id, ti.map_index) for ti in result.tis(task_id)]


def test_campaign_each_contact_takes_the_path_of_its_outcome(run_dag: Any, e2e_stack: Stack) -> None:
    e2e_stack.reset()
    conf = {"contacts": CONTACTS, "read_within_seconds": 25}
    result = run_dag(example_source("follow_up_campaign"), dag_id=CAMPAIGN, run_conf=conf)
    assert result.state == "success", result.failures

    waits = _xcoms(result, "wait_for_read")
    assert [w["chat"] for w in waits] == [c["number"] for c in CONTACTS]
    for wait in waits:
        assert wait["outcome"] == fate_for(wait["chat"]).value, wait
    sandbox_state = e2e_stack.state()
    plans = {plan["message_id"]: plan for plan in sandbox_state["messages"]}
    timing = Timing(**sandbox_state["timing"])
    for wait in waits:
        if wait["outcome"] == "read":
            assert wait["learned_via"] == "webhook", wait
            # The time to read is the vendor's read time, as the sandbox's rule sets it (1 s after
            # the send for digit 0, 3 s for digit 4), not when the sensor noticed. Checked against
            # the sandbox's own record of the message, so a slow machine changes none of it.
            plan = plans[wait["message_id"]]
            (read_step,) = [step["at"] for step in plan["steps"] if step["step"] == "READ"]
            read_at = datetime.fromisoformat(wait["read_at"]).timestamp()
            sent_at = datetime.fromisoformat(wait["sent_at"]).timestamp()
            earliest = plan["planned_at"] + timing.read_after(last_digit(wait["chat"]))
            assert earliest - CLOCK_SLACK <= read_at <= read_step + CLOCK_SLACK, (wait, plan)
            assert wait["time_to_read_seconds"] == pytest.approx(max(read_at - sent_at, 0.0), abs=CLOCK_SLACK)
        if wait["outcome"] == "failed":
            assert "sandbox" in wait["failure_reason"]
    # Each contact took exactly the path of its outcome: no one was called who read, and so on.
    assert [ref["chat"] for ref in _xcoms(result, "follow_up")] == numbers_with(Fate.READ)
    assert [call["to"] for call in _xcoms(result, "call")] == numbers_with(Fate.UNREAD)
    assert [ref["chat"] for ref in _xcoms(result, "switch_to_whatsapp")] == numbers_with(Fate.FAILED)
    report = result.xcom("report")
    assert {outcome: [e["name"] for e in entries] for outcome, entries in report.items()} == {
        "read": ["Ada", "Grace"],
        "unread": ["Linus"],
        "failed": ["Margaret"],
    }

    state = e2e_stack.settled()
    assert sorted(call["to"] for call in state["calls"]) == numbers_with(Fate.UNREAD)
    assert sorted(state["vendors"]["direct7"]["sent"]) == numbers_with(Fate.FAILED)
    invited_and_followed_up = [c["number"] for c in CONTACTS] + numbers_with(Fate.READ)
    assert sorted(state["vendors"]["sendblue"]["sent"]) == sorted(invited_and_followed_up)


def test_campaign_with_nobody_to_call_is_still_green(run_dag: Any, e2e_stack: Stack) -> None:
    e2e_stack.reset()
    contacts = [{"name": "Ada", "number": "+14155550110"}]
    conf = {"contacts": contacts, "read_within_seconds": 10}
    result = run_dag(example_source("follow_up_campaign"), dag_id=CAMPAIGN, run_conf=conf)
    assert result.state == "success", result.failures
    assert result.ti("follow_up", 0).state == "success"
    assert [ti.state for ti in result.tis("call")] == ["skipped"]
    assert result.ti("report").state == "success"


CHERT_WAIT_DAG = """
from datetime import timedelta

from airflow.sdk import DAG

from airflow_provider_readreceipts.operators.send_message import ChertSendMessageOperator
from airflow_provider_readreceipts.sensors.read_receipt import ReadReceiptSensor

with DAG("e2e_chert_wait", schedule=None) as dag:
    sends = ChertSendMessageOperator.partial(task_id="send", body="Hi!").expand(phone={phones!r})
    ReadReceiptSensor.partial(
        task_id="wait", read_within=timedelta(seconds=20), deferrable=True, poll_interval=0.5,
        reconcile_interval=1.0,
    ).expand(message=sends.output)
"""


def test_chert_reads_are_learned_by_polling_because_chert_sends_no_read_webhook(
    run_dag: Any, e2e_stack: Stack
) -> None:
    e2e_stack.reset()
    phones = ["+14155550120", "+14155550188"]  # read, and failed
    result = run_dag(CHERT_WAIT_DAG.format(phones=phones), dag_id="e2e_chert_wait")
    assert result.state == "success", result.failures
    read, failed = _xcoms(result, "wait")
    assert read["outcome"] == "read" and read["learned_via"] == "reconcile", read
    assert failed["outcome"] == "failed" and "sandbox" in failed["failure_reason"], failed
    assert not [d for d in e2e_stack.state()["deliveries"] if d["vendor"] == "chert"]


async def _collect_events(message_ids: set[str], *, timeout: float = 60.0) -> list[dict[str, Any]]:
    """What the inbound DAG's event trigger delivers for these messages (a cursor of our own)."""
    from airflow_provider_readreceipts.triggers.read_receipt import ReceiptEventTrigger

    trigger = ReceiptEventTrigger(statuses=["RECEIVED"], poll_interval=0.2, cursor=f"e2e-{uuid.uuid4().hex}")
    found: list[dict[str, Any]] = []

    async def read() -> None:
        async for event in trigger.run():
            if event.payload["message_id"] in message_ids:
                found.append(event.payload)
            if {e["message_id"] for e in found} == message_ids:
                return

    await asyncio.wait_for(read(), timeout)
    return found


def test_inbound_each_message_is_handled_once_and_marked_read_by_its_vendor(
    run_dag: Any, e2e_stack: Stack
) -> None:
    e2e_stack.reset()
    inbound = {
        vendor: e2e_stack.inbound(vendor, f"+1415555020{index}", f"Hello via {vendor}")
        for index, vendor in enumerate(("sendblue", "chert", "ryze", "direct7"))
    }
    e2e_stack.settled()
    events = asyncio.run(_collect_events({m["message_id"] for m in inbound.values()}))
    assert {e["vendor"] for e in events} == set(inbound)
    # The scheduler may fold several asset events into one run, and the trigger may deliver one
    # twice: the DAG gets all four, one of them twice.
    folded = [*events, events[0]]
    result = run_dag(example_source("inbound_messages"), dag_id=INBOUND, run_conf={"events": folded})
    assert result.state == "success", result.failures
    handled = result.xcom("handle_messages")
    assert sorted(e["event_id"] for e in handled) == sorted(e["event_id"] for e in events)

    vendors = e2e_stack.state()["vendors"]
    assert vendors["sendblue"]["marked_read"] == [[inbound["sendblue"]["chat"], SENDBLUE_LINE]]
    assert vendors["chert"]["marked_read"] == [inbound["chert"]["chat"]]
    assert [m["messageId"] for m in vendors["ryze"]["marked_read"]] == [inbound["ryze"]["message_id"]]
    assert vendors["direct7"]["marked_read"] == [inbound["direct7"]["message_id"]]


def test_inbox_sweep_marks_every_chat_that_wrote_read_in_one_task(run_dag: Any, e2e_stack: Stack) -> None:
    e2e_stack.reset()
    senders = ["+14155550301", "+14155550302", "+14155550303"]
    chats = {e2e_stack.inbound("ryze", sender)["chat"] for sender in [*senders, senders[0]]}
    e2e_stack.settled()
    result = run_dag(example_source("inbox_sweep"), dag_id="readreceipts_inbox_sweep")
    assert result.state == "success", result.failures
    report = result.xcom("mark_inbox_read")
    assert report["failed"] == 0 and report["read"] == report["total"] >= len(chats)
    marked = e2e_stack.state()["vendors"]["ryze"]["chats_marked_read"]
    assert chats <= set(marked) and len(marked) == len(set(marked))  # each chat once


# -- 3. a real Airflow ----------------------------------------------------------------------------------

#: The run's deadline: after every read (20 s after a send, see ``airflow_cluster``), with room for
#: slowly starting tasks.
CLUSTER_READ_WITHIN = 65


@pytest.mark.slow
@pytest.mark.postgres
def test_real_airflow_waits_for_every_contact_at_once_in_the_triggerer(airflow_cluster: Cluster) -> None:
    cluster = airflow_cluster
    cluster.wait_for_example_dags()
    run_id = f"e2e_{uuid.uuid4().hex[:8]}"
    cluster.trigger(
        CAMPAIGN,
        run_id=run_id,
        conf={"contacts": CLUSTER_CONTACTS, "read_within_seconds": CLUSTER_READ_WITHIN},
    )
    most_deferred = 0

    def finished() -> str | None:
        nonlocal most_deferred
        cluster.check_alive()
        (deferred,) = cluster.sql(
            "SELECT count(*) FROM task_instance WHERE dag_id = %s AND run_id = %s"
            " AND task_id = 'wait_for_read' AND state = 'deferred'",
            CAMPAIGN,
            run_id,
        )[0]
        most_deferred = max(most_deferred, deferred)
        rows = cluster.sql("SELECT state FROM dag_run WHERE dag_id = %s AND run_id = %s", CAMPAIGN, run_id)
        state = rows[0][0] if rows else None
        return state if state in ("success", "failed") else None

    try:
        state = wait_until(finished, timeout=300, what="the campaign run to finish", interval=0.5)
    except BaseException:
        print(cluster.logs())
        raise
    assert state == "success", cluster.logs()
    # The waits were deferred at the same time: one triggerer ran them together (dag.test() runs one
    # trigger at a time).
    assert most_deferred >= 3, f"at most {most_deferred} waits were deferred at once"

    waits = cluster.xcom_values(CAMPAIGN, run_id, "wait_for_read")
    assert len(waits) == len(CLUSTER_CONTACTS)
    for wait in waits.values():
        assert wait["outcome"] == fate_for(wait["chat"]).value, wait
    calls = cluster.xcom_values(CAMPAIGN, run_id, "call")
    assert sorted(call["to"] for call in calls.values()) == numbers_with(Fate.UNREAD, CLUSTER_CONTACTS)
    whatsapp = cluster.xcom_values(CAMPAIGN, run_id, "switch_to_whatsapp")
    assert sorted(ref["chat"] for ref in whatsapp.values()) == numbers_with(Fate.FAILED, CLUSTER_CONTACTS)
    follow_ups = cluster.xcom_values(CAMPAIGN, run_id, "follow_up")
    assert sorted(ref["chat"] for ref in follow_ups.values()) == numbers_with(Fate.READ, CLUSTER_CONTACTS)


@pytest.mark.slow
@pytest.mark.postgres
def test_real_airflow_inbound_messages_start_the_event_driven_dag(airflow_cluster: Cluster) -> None:
    cluster = airflow_cluster
    cluster.wait_for_example_dags()
    vendors = ("sendblue", "chert", "ryze", "direct7", "ryze")
    inbound = [cluster.stack.inbound(v, f"+1415555050{i}", f"Hello via {v}") for i, v in enumerate(vendors)]

    def handled_message_ids() -> list[str]:
        runs = cluster.sql("SELECT run_id FROM dag_run WHERE dag_id = %s AND state = 'success'", INBOUND)
        return [
            event["message_id"]
            for (run_id,) in runs
            for events in cluster.xcom_values(INBOUND, run_id, "handle_messages").values()
            for event in events
        ]

    # Airflow 3.3's scheduler leaves asset events that arrive while a run is being created for the
    # next event's run (apache/airflow#54659): each new message flushes those before it.
    flushes: list[dict[str, Any]] = []
    wanted = {m["message_id"] for m in inbound}
    try:
        for attempt in range(5):
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and not wanted <= set(handled_message_ids()):
                cluster.check_alive()
                time.sleep(1)
            if wanted <= set(handled_message_ids()):
                break
            flushes.append(cluster.stack.inbound("sendblue", f"+1415555051{attempt}", "Anyone there?"))
        runs = wait_until(
            lambda: (
                rows
                if (
                    rows := cluster.sql(
                        "SELECT run_id, state, run_type FROM dag_run WHERE dag_id = %s", INBOUND
                    )
                )
                and all(state in ("success", "failed") for _, state, _ in rows)
                else None
            ),
            timeout=120,
            what="the inbound runs to finish",
            interval=1,
        )
    except BaseException:
        print(cluster.logs())
        raise
    assert all(state == "success" and run_type == "asset_triggered" for _, state, run_type in runs), runs
    handled = handled_message_ids()
    # Each message handled in exactly one run, however the scheduler folded the asset events.
    assert sorted(handled) == sorted(wanted | {m["message_id"] for m in flushes}), handled
    state = cluster.stack.state()["vendors"]
    assert {m["messageId"] for m in state["ryze"]["marked_read"]} == {
        m["message_id"] for m in inbound if m["vendor"] == "ryze"
    }
    assert state["chert"]["marked_read"] == [m["chat"] for m in inbound if m["vendor"] == "chert"]
    assert state["direct7"]["marked_read"] == [m["message_id"] for m in inbound if m["vendor"] == "direct7"]
