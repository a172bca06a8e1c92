"""
ReadReceiptSensor end to end with ``dag.test()``: send with the Sendblue operator (against the loopback
fake), wait for the read, branch on the outcome; deferrable and poke modes; faults of our own.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from airflow_provider_readreceipts.receipts import Status
from airflow_provider_readreceipts.sensors.read_receipt import ReadReceiptSensor
from tests.support import postgres_connection_fields, receipt

DAG_SOURCE = """
from datetime import timedelta

from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import DAG, task

from airflow_provider_readreceipts.operators.send_message import SendblueSendMessageOperator
from airflow_provider_readreceipts.sensors.read_receipt import ReadReceiptSensor

with DAG("{dag_id}", schedule=None) as dag:
    send = SendblueSendMessageOperator(
        task_id="send", number="+14155551234", content="Hi!", sendblue_conn_id="sb_wait", status_callback=""
    )
    wait = ReadReceiptSensor(
        task_id="wait",
        message=send.output,
        read_within=timedelta(seconds={read_within}),
        poll_interval=0.2,
        {sensor_args}
    )

    @task.branch
    def route(result: dict) -> str:
        return {{"read": "follow_up", "unread": "escalate", "failed": "fallback"}}[result["outcome"]]

    route(wait.output) >> [
        EmptyOperator(task_id="follow_up"),
        EmptyOperator(task_id="escalate"),
        EmptyOperator(task_id="fallback"),
    ]
"""


def sensor_dag(dag_id: str, store, *, read_within: float = 30.0, **sensor_args: Any) -> str:
    args = {**store.target, **sensor_args}
    rendered = "\n        ".join(f"{name}={value!r}," for name, value in args.items())
    return DAG_SOURCE.format(dag_id=dag_id, read_within=read_within, sensor_args=rendered)


class VendorActivity:
    """Plays the contact and the vendor while the DAG runs."""

    def __init__(self, vendors, store) -> None:
        self.fake = vendors.fakes["sendblue"]
        self.store = store
        self._thread: threading.Thread | None = None

    def on_send(self, action) -> None:
        """Run ``action(handle)`` from another thread shortly after the message is sent."""

        def watch() -> None:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                handles = list(self.fake.messages)
                if handles:
                    time.sleep(0.3)
                    action(handles[0])
                    return
                time.sleep(0.05)

        self._thread = threading.Thread(target=watch, daemon=True)
        self._thread.start()

    def at_send(self, action) -> None:
        """
        Run ``action(handle)`` inside the vendor's handling of the send, before it answers: done
        before the operator even learns the handle, so before any deadline counted from the send.
        """
        original = self.fake.dispatch

        def dispatch(request):
            response = original(request)
            if request.method == "POST" and request.path == "/api/send-message" and response.status < 300:
                action(response.body["message_handle"])
            return response

        self.fake.dispatch = dispatch

    def join(self) -> None:
        if self._thread is not None:
            self._thread.join(timeout=60)
        self.fake.__dict__.pop("dispatch", None)  # the fake's own dispatch again


@pytest.fixture
def activity(vendors, wait_store, sendblue_wait_conn) -> Iterator[VendorActivity]:
    activity = VendorActivity(vendors, wait_store)
    yield activity
    activity.join()


def ran(result, task_id: str) -> str | None:
    return result.ti(task_id).state


# -- deferrable (the default the examples use) -------------------------------------------------------


def test_read_through_a_webhook(run_dag, wait_store, activity):
    wait_store.heartbeat()
    # The receiver stores the READ webhook while the sensor is deferred.
    activity.on_send(lambda handle: wait_store.record(receipt(handle, Status.READ)))

    result = run_dag(sensor_dag("rr_read_webhook", wait_store, deferrable=True, reconcile_interval=None))

    assert result.state == "success"
    outcome = result.xcom("wait")
    assert outcome["outcome"] == "read"
    assert outcome["learned_via"] == "webhook"
    assert outcome["time_to_read_seconds"] is not None
    assert outcome["message_id"] == result.xcom("send")["message_id"]
    assert (ran(result, "follow_up"), ran(result, "escalate"), ran(result, "fallback")) == (
        "success",
        "skipped",
        "skipped",
    )


def test_read_through_reconcile(run_dag, sqlite_wait_store, vendors, sendblue_wait_conn):
    sqlite_wait_store.heartbeat()
    activity = VendorActivity(vendors, sqlite_wait_store)
    # The vendor knows it was read; its webhook is lost.
    activity.on_send(lambda handle: activity.fake.set_status(handle, "READ"))

    result = run_dag(
        sensor_dag("rr_read_reconcile", sqlite_wait_store, deferrable=True, reconcile_interval=0.3)
    )
    activity.join()

    assert result.state == "success"
    assert result.xcom("wait")["outcome"] == "read"
    assert result.xcom("wait")["learned_via"] == "reconcile"
    assert ran(result, "follow_up") == "success"


def test_unread_at_the_deadline_escalates(run_dag, wait_store, activity):
    wait_store.heartbeat()
    # Stored as the vendor takes the send: the DELIVERED is in the store long before the 2-second
    # deadline, however slowly anything else runs.
    activity.at_send(lambda handle: wait_store.record(receipt(handle, Status.DELIVERED)))

    result = run_dag(
        sensor_dag("rr_unread", wait_store, read_within=2, deferrable=True, reconcile_interval=None)
    )

    assert result.state == "success", "unread is an outcome, not a failure"
    outcome = result.xcom("wait")
    assert outcome["outcome"] == "unread"
    assert outcome["status"] == "DELIVERED"
    assert (ran(result, "follow_up"), ran(result, "escalate"), ran(result, "fallback")) == (
        "skipped",
        "success",
        "skipped",
    )


def test_failed_at_the_vendor_falls_back_at_once(run_dag, wait_store, activity):
    wait_store.heartbeat()
    activity.on_send(
        lambda handle: wait_store.record(
            receipt(handle, Status.FAILED, error_code="10001", error_message="Number unreachable")
        )
    )

    # An hour to read it: only the FAILED status can end the wait.
    result = run_dag(
        sensor_dag("rr_failed", wait_store, read_within=3600, deferrable=True, reconcile_interval=None)
    )

    assert result.state == "success"
    outcome = result.xcom("wait")
    assert (outcome["outcome"], outcome["failure_reason"]) == ("failed", "Number unreachable")
    assert ran(result, "fallback") == "success"
    assert ran(result, "escalate") == "skipped"


def test_no_receiver_fails_the_task_instead_of_escalating(
    run_dag, sqlite_wait_store, vendors, sendblue_wait_conn
):
    # No heartbeat in this store and reconcile off: nothing could ever say "read".
    result = run_dag(
        sensor_dag(
            "rr_no_receiver", sqlite_wait_store, read_within=1, deferrable=True, reconcile_interval=None
        )
    )

    assert result.state == "failed"
    assert ran(result, "wait") == "failed"
    assert ran(result, "escalate") != "success", "a fault of ours must never trigger the escalation"
    assert "no_receiver" in result.errors("wait")[0]
    assert result.xcom("wait") is None


def test_unreachable_store_fails_the_task(run_dag, vendors, sendblue_wait_conn, airflow_connection):
    # The suite's PostgreSQL connection, on port 9 where nothing listens: the store cannot be reached.
    airflow_connection("rr_dead_store", "postgres", **postgres_connection_fields(port=9))

    class DeadStore:
        target = {"store_conn_id": "rr_dead_store"}

    result = run_dag(
        sensor_dag("rr_dead_store", DeadStore(), read_within=1, deferrable=True, reconcile_interval=None)
    )

    assert result.state == "failed"
    assert "store_unreachable" in result.errors("wait")[-1]
    assert ran(result, "escalate") != "success"


# -- poke mode ----------------------------------------------------------------------------------------


def test_poke_mode_read(run_dag, wait_store, activity):
    wait_store.heartbeat()
    activity.on_send(lambda handle: wait_store.record(receipt(handle, Status.READ)))

    result = run_dag(sensor_dag("rr_poke_read", wait_store, deferrable=False, mode="poke"))

    assert result.state == "success"
    assert result.xcom("wait")["outcome"] == "read"
    assert ran(result, "follow_up") == "success"


def test_poke_mode_unread_with_a_last_reconcile(run_dag, sqlite_wait_store, vendors, sendblue_wait_conn):
    sqlite_wait_store.heartbeat()

    result = run_dag(
        sensor_dag(
            "rr_poke_unread", sqlite_wait_store, read_within=1.5, deferrable=False, reconcile_interval=3600
        )
    )

    assert result.state == "success"
    assert result.xcom("wait")["outcome"] == "unread"
    assert result.xcom("wait")["learned_via"] == "reconcile", "the vendor was asked once at the deadline"
    assert ran(result, "escalate") == "success"


def test_poke_mode_failed_through_reconcile(run_dag, sqlite_wait_store, vendors, sendblue_wait_conn):
    activity = VendorActivity(vendors, sqlite_wait_store)
    activity.on_send(lambda handle: activity.fake.set_status(handle, "ERROR", error_message="Blocked"))

    # No receiver here, so reconcile (on by default) is the source, asked at every poke.
    result = run_dag(
        sensor_dag(
            "rr_poke_failed", sqlite_wait_store, read_within=60, deferrable=False, reconcile_interval=0.2
        )
    )
    activity.join()

    assert result.state == "success"
    assert result.xcom("wait")["outcome"] == "failed"
    assert result.xcom("wait")["failure_reason"] == "Blocked"
    assert ran(result, "fallback") == "success"


def test_poke_mode_no_receiver_fails(run_dag, sqlite_wait_store, vendors, sendblue_wait_conn):
    result = run_dag(
        sensor_dag(
            "rr_poke_nosrc", sqlite_wait_store, read_within=1, deferrable=False, reconcile_interval=None
        )
    )

    assert result.state == "failed"
    assert "no_receiver" in result.errors("wait")[0]


# -- configuration ------------------------------------------------------------------------------------


@pytest.mark.parametrize("flag", ["soft_fail", "never_fail", "silent_fail"])
def test_skip_flags_are_refused(flag):
    with pytest.raises(ValueError, match=flag):
        ReadReceiptSensor(task_id="w", conn_id="c", message_id="m", read_within=60, **{flag: True})


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [
        ({"conn_id": "c", "message_id": "m"}, "exactly one of deadline= and read_within="),
        (
            {"conn_id": "c", "message_id": "m", "read_within": 60, "deadline": datetime.now(timezone.utc)},
            "exactly one",
        ),
        ({"read_within": 60}, "needs message="),
        ({"conn_id": "c", "message_id": "m", "read_within": -1}, "read_within"),
        ({"conn_id": "c", "message_id": "m", "read_within": 60, "wait_for": "most"}, "wait_for"),
        ({"conn_id": "c", "message_id": "m", "read_within": 60, "wait_for": "all"}, "participants"),
        ({"conn_id": "c", "message_id": "m", "read_within": 60, "wait_for": 0}, "at least 1"),
        (
            {
                "conn_id": "c",
                "message_id": "m",
                "read_within": 60,
                "vendor": "chert",
                "reconcile_interval": None,
            },
            "reconcile_interval",
        ),
    ],
)
def test_bad_configuration_fails_at_parse_time(kwargs, problem):
    with pytest.raises(ValueError, match=problem):
        ReadReceiptSensor(task_id="w", **kwargs)


def test_deferrable_default_follows_the_config(monkeypatch):
    monkeypatch.setenv("AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE", "True")
    assert ReadReceiptSensor(task_id="w", conn_id="c", message_id="m", read_within=60).deferrable is True
    monkeypatch.setenv("AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE", "False")
    assert ReadReceiptSensor(task_id="w", conn_id="c", message_id="m", read_within=60).deferrable is False


def test_deadline_is_absolute_across_retries_and_deferrals(sqlite_wait_store):
    from airflow.sdk.exceptions import TaskDeferred

    sent_at = datetime.now(timezone.utc) - timedelta(minutes=50)
    ref = {
        "vendor": "sendblue",
        "conn_id": "sb",
        "message_id": "m",
        "chat": "",
        "sent_at": sent_at.isoformat(),
    }
    sensor = ReadReceiptSensor(
        task_id="w", message=ref, read_within=timedelta(hours=1), deferrable=True, **sqlite_wait_store.target
    )

    deferrals = []
    for _ in range(2):  # the first try, then a retry ten seconds later
        with pytest.raises(TaskDeferred) as deferred:
            sensor.execute(context={})
        deferrals.append(deferred.value)
        time.sleep(0.01)

    deadlines = {d.trigger.deadline for d in deferrals}
    assert deadlines == {(sent_at + timedelta(hours=1)).isoformat()}
    # Airflow's timeout (restarted by every defer) is counted from the same absolute deadline.
    assert all(d.timeout is not None and d.timeout < timedelta(minutes=30) for d in deferrals)
    assert deferrals[0].method_name == "execute_complete"


def test_message_ref_rendered_as_text_is_read_back(sqlite_wait_store):
    from airflow.sdk.exceptions import TaskDeferred

    ref = {
        "vendor": "sendblue",
        "conn_id": "sb",
        "message_id": "m-9",
        "chat": "+1",
        "sent_at": "2030-01-01T00:00:00+00:00",
    }
    # What a Jinja template of ti.xcom_pull(...) renders to without native rendering.
    sensor = ReadReceiptSensor(
        task_id="w",
        message=str(ref),
        read_within=60,
        deferrable=True,
        wait_for="['+1 415', '+2']",
        **sqlite_wait_store.target,
    )
    with pytest.raises(TaskDeferred) as deferred:
        sensor.execute(context={})

    trigger = deferred.value.trigger
    assert (trigger.conn_id, trigger.message_id, trigger.chat) == ("sb", "m-9", "+1")
    assert trigger.deadline == "2030-01-01T00:01:00+00:00"
    assert trigger.policy == {"kind": "named", "count": 1, "names": ["+1415", "+2"]}
    assert trigger.store_path == sqlite_wait_store.target["store_path"]


def test_conflicting_reference_and_explicit_id_is_bad_configuration(sqlite_wait_store):
    from airflow.sdk.exceptions import AirflowFailException

    ref = {
        "vendor": "sendblue",
        "conn_id": "sb",
        "message_id": "m",
        "chat": "",
        "sent_at": "2030-01-01T00:00:00Z",
    }
    sensor = ReadReceiptSensor(
        task_id="w",
        message=ref,
        message_id="other",
        read_within=60,
        deferrable=True,
        **sqlite_wait_store.target,
    )
    with pytest.raises(AirflowFailException, match="message_id"):
        sensor.execute(context={})


def test_error_event_fails_the_task_and_outcomes_are_returned():
    from airflow.sdk.exceptions import AirflowFailException

    from airflow_provider_readreceipts.sensors.read_receipt import ReadReceiptWaitError

    sensor = ReadReceiptSensor(task_id="w", conn_id="c", message_id="m", read_within=60)
    with pytest.raises(ReadReceiptWaitError, match="store_unreachable"):
        sensor.execute_complete({}, {"outcome": "error", "kind": "store_unreachable", "error": "down"})
    with pytest.raises(AirflowFailException, match="bad_configuration"):
        sensor.execute_complete({}, {"outcome": "error", "kind": "bad_configuration", "error": "x"})
    with pytest.raises(ReadReceiptWaitError):
        sensor.execute_complete({}, None)
    read = {
        "outcome": "read",
        "conn_id": "c",
        "message_id": "m",
        "status": "READ",
        "readers": [],
        "learned_via": "webhook",
    }
    assert sensor.execute_complete({}, read) is read


def test_importing_the_sensor_loads_nothing_heavy():
    code = (
        "import sys, airflow.sdk\n"
        "before = set(sys.modules)\n"
        "import airflow_provider_readreceipts.sensors.read_receipt\n"
        "new = set(sys.modules) - before\n"
        "heavy = sorted(m for m in new if m.split('.')[0] in ('sqlalchemy', 'aiohttp', 'fastapi', 'asyncpg',"
        " 'aiosqlite', 'requests') or m.startswith(('airflow_provider_readreceipts.hooks',"
        " 'airflow_provider_readreceipts.triggers.read_receipt', 'airflow.triggers')))\n"
        "print(heavy)\n"
    )
    command = [sys.executable, "-c", code]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout  # noqa: S603
    assert output.strip().splitlines()[-1] == "[]"


def test_reschedule_mode_pokes_at_the_reconcile_interval():
    sensor = ReadReceiptSensor(
        task_id="w", conn_id="c", message_id="m", read_within=60, mode="reschedule", reconcile_interval=300
    )
    assert sensor.poke_interval == 300
    poke = ReadReceiptSensor(task_id="p", conn_id="c", message_id="m", read_within=60, poll_interval=2)
    assert poke.poke_interval == 2
