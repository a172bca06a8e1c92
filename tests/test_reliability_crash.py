"""
Crash safety: SIGKILL in the middle of the work, restart, and nothing acknowledged is lost.

1. The standalone receiver under sustained load from several clients is killed with SIGKILL, its
   writer process with it (``scale.crash_kills`` times), and restarted on the same store and port.
   A vendor stops retrying once it got a 2xx, so every event that got a 2xx must be in the store
   after the crashes, exactly once, on a SQLite file and on PostgreSQL. Events in flight at the kill
   got no 2xx: the vendor would retry them, so they may or may not be stored.
2. A real Airflow triggerer running deferred read-receipt waits is killed with SIGKILL mid-wait
   and a new one started: the waits resume and the campaign ends with each contact's true outcome.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import sqlalchemy as sa

from airflow_provider_readreceipts.hooks.store import SCHEMA_VERSION, ReceiptStore, events_table
from airflow_provider_readreceipts.receipts import Status
from airflow_provider_readreceipts.testing.sandbox.fates import Fate, fate_for
from tests.support import (
    CAMPAIGN,
    CLUSTER_CONTACTS,
    SENDBLUE_CONN_ID,
    SENDBLUE_SECRET_HEADER,
    SENDBLUE_WEBHOOK_SECRET,
    ChildProcess,
    Cluster,
    Figures,
    Scale,
    StandaloneReceiver,
    connection_document,
    numbers_with,
    receiver_environment,
    sendblue_connection_fields,
    sendblue_payload,
    wait_until,
)

pytestmark = pytest.mark.reliability

#: Concurrent clients (threads, each with its own connection) keeping the receiver busy.
LOAD_CLIENTS = 8
SENDBLUE_HEADERS = {"content-type": "application/json", SENDBLUE_SECRET_HEADER: SENDBLUE_WEBHOOK_SECRET}


# -- 1. the receiver ---------------------------------------------------------------------------------


@dataclass
class LoadLedger:
    """What the clients sent and what each request got back; shared by the client threads."""

    acknowledged: set[str] = field(default_factory=set)
    unacknowledged: set[str] = field(default_factory=set)
    #: Status codes of answers that were not 2xx (a 4xx would mean the test's own payloads are wrong).
    refusals: dict[int, int] = field(default_factory=dict)
    #: Events acknowledged by each receiver generation (0 is the first process, 1 the first restart…).
    acknowledged_by_generation: dict[int, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, message_id: str, generation: int, status_code: int | None) -> None:
        with self.lock:
            if status_code is not None and 200 <= status_code < 300:
                self.acknowledged.add(message_id)
                self.acknowledged_by_generation[generation] = (
                    self.acknowledged_by_generation.get(generation, 0) + 1
                )
            else:
                self.unacknowledged.add(message_id)
                if status_code is not None:
                    self.refusals[status_code] = self.refusals.get(status_code, 0) + 1


class CrashingReceiver:
    """
    A standalone receiver that can be killed with SIGKILL and restarted on the same port and store.

    Clients wait on :meth:`wait_up` after a failed request, so they neither burn through the
    events while it is down nor need to know when it comes back.

    :param receiver: the receiver, started and ready.
    :param log_folder: where each restarted process writes its log.
    """

    def __init__(self, receiver: StandaloneReceiver, log_folder: Path) -> None:
        self.receiver = receiver
        self.log_folder = log_folder
        self.generation = 0
        self.kills = 0
        self.processes_killed = 0
        self._up = threading.Condition()
        self._is_up = True

    def restart(self) -> None:
        self.receiver.log_path = self.log_folder / f"receiver-{self.generation}.log"
        self.receiver.start().wait_ready()
        with self._up:
            self._is_up = True
            self._up.notify_all()

    def kill(self) -> None:
        """
        SIGKILL the receiver and its children (its writer process) together, as a crash of the
        machine or container would: no shutdown hook runs, queued events and open transactions die.
        """
        process = self.receiver.process
        assert process is not None and process.poll() is None, self.receiver.output()
        parent = psutil.Process(process.pid)
        victims = [*parent.children(recursive=True), parent]
        with self._up:
            self._is_up = False
            self.generation += 1
        for victim in victims:
            os.kill(victim.pid, signal.SIGKILL)
        assert process.wait(30) == -signal.SIGKILL
        _, alive = psutil.wait_procs(victims, timeout=30)
        assert not alive, alive
        self.kills += 1
        self.processes_killed += len(victims)

    def current_generation(self) -> int:
        with self._up:
            return self.generation

    def wait_up(self, timeout: float = 240.0) -> None:
        """Return once a receiver is up (at once if one is: it is marked down before each kill)."""
        with self._up:
            assert self._up.wait_for(lambda: self._is_up, timeout), "the receiver did not come back"


def _run_clients(
    crashing: CrashingReceiver, message_ids: list[str], ledger: LoadLedger, *, kill_after: list[int]
) -> None:
    """
    Send one webhook per message id from :data:`LOAD_CLIENTS` threads; kill and restart the receiver
    each time the number of acknowledged events passes the next figure in ``kill_after``.
    """
    next_index = iter(range(len(message_ids)))
    index_lock = threading.Lock()
    url = crashing.receiver.url(f"/webhooks/{SENDBLUE_CONN_ID}")

    def client() -> None:
        http = httpx.Client(timeout=30.0)
        try:
            while True:
                with index_lock:
                    index = next(next_index, None)
                if index is None:
                    return
                message_id = message_ids[index]
                generation = crashing.current_generation()
                body = json.dumps(sendblue_payload(message_id, "DELIVERED")).encode()
                try:
                    status_code: int | None = http.post(
                        url, content=body, headers=SENDBLUE_HEADERS
                    ).status_code
                except httpx.HTTPError:
                    status_code = None
                ledger.record(message_id, generation, status_code)
                if status_code is None:
                    # The receiver died under this request: a fresh connection once it is back.
                    http.close()
                    crashing.wait_up()
                    http = httpx.Client(timeout=30.0)
        finally:
            http.close()

    threads = [threading.Thread(target=client, name=f"load-{n}", daemon=True) for n in range(LOAD_CLIENTS)]
    for thread in threads:
        thread.start()
    for threshold in kill_after:
        while len(ledger.acknowledged) < threshold and any(t.is_alive() for t in threads):
            time.sleep(0.005)
        crashing.kill()
        crashing.restart()
    for thread in threads:
        thread.join(300)
        assert not thread.is_alive(), "a load client hung"


def _stored_events_per_message(store: ReceiptStore, conn_id: str) -> dict[str, int]:
    """How many rows ``rr_events`` holds for each message of ``conn_id`` (a duplicate shows as 2)."""
    columns = events_table.c
    query = (
        sa.select(columns.message_id, sa.func.count())
        .where(columns.conn_id == conn_id)
        .group_by(columns.message_id)
    )
    with store.engine.connect() as conn:
        return {message_id: count for message_id, count in conn.execute(query)}


def test_receiver_killed_under_load_loses_no_acknowledged_event(
    store_url: str,
    start_standalone: Callable[..., StandaloneReceiver],
    tmp_path: Path,
    scale: Scale,
    figures: Figures,
) -> None:
    """
    The receiver answers 2xx only after the commit, so a SIGKILL at any moment may lose in-flight
    requests (no 2xx: the vendor retries) but never an acknowledged one.
    """
    case = "postgres" if store_url.startswith("postgresql") else "sqlite"
    environment = receiver_environment(
        **{SENDBLUE_CONN_ID: connection_document("sendblue", **sendblue_connection_fields())}
    )
    receiver = start_standalone(store_url=store_url, environment=environment, arguments=["--no-access-log"])
    crashing = CrashingReceiver(receiver.wait_ready(), tmp_path)

    run = uuid.uuid4().hex[:8]
    message_ids = [f"crash-{run}-{n}" for n in range(scale.crash_events)]
    ledger = LoadLedger()
    # Kills spread evenly through the load, so each restart also serves events before the next kill.
    kill_after = [scale.crash_events * (k + 1) // (scale.crash_kills + 1) for k in range(scale.crash_kills)]
    _run_clients(crashing, message_ids, ledger, kill_after=kill_after)
    receiver.stop()

    assert crashing.kills == scale.crash_kills
    assert ledger.acknowledged | ledger.unacknowledged == set(message_ids)
    # Only connection errors, never a refusal: a 4xx would mean bad payloads, a 503 a sick store.
    assert ledger.refusals == {}, ledger.refusals
    # The kills happened under load: each cut requests short...
    assert len(ledger.unacknowledged) >= scale.crash_kills
    # ...and each restarted receiver on the crashed store served events before the next kill.
    assert all(ledger.acknowledged_by_generation.get(g, 0) > 0 for g in range(scale.crash_kills + 1)), (
        ledger.acknowledged_by_generation
    )

    with ReceiptStore(store_url) as store:
        # The store is healthy after the crashes: nothing to migrate, the schema is current.
        assert store.migrate() == SCHEMA_VERSION
        assert store.check_schema() == SCHEMA_VERSION
        stored_rows = _stored_events_per_message(store, SENDBLUE_CONN_ID)
        statuses = store.message_statuses([(SENDBLUE_CONN_ID, m) for m in message_ids])
    stored = {message_id for (_, message_id) in statuses}
    lost = ledger.acknowledged - stored
    duplicates = {message_id: n for message_id, n in stored_rows.items() if n != 1}
    figures.add(
        "crash_receiver",
        case,
        tried=len(message_ids),
        acknowledged=len(ledger.acknowledged),
        stored=len(stored),
        unacknowledged_but_stored=len(ledger.unacknowledged & stored),
        lost=len(lost),
        duplicates=len(duplicates),
        crashes_survived=crashing.kills,
        processes_killed=crashing.processes_killed,
    )
    assert not lost, f"{len(lost)} acknowledged events are missing, e.g. {sorted(lost)[:5]}"
    assert not duplicates, f"events stored more than once: {dict(list(duplicates.items())[:5])}"
    assert set(stored_rows) == stored <= set(message_ids)
    assert {status.status for status in statuses.values()} == {Status.DELIVERED}


# -- 2. the triggerer --------------------------------------------------------------------------------

#: Seconds from a send to its read or failure in the cluster's sandbox: long enough for every wait to be
#: deferred first on a busy machine (the fixture reads this), so the triggerer is killed mid-wait.
CLUSTER_FATE_DELAY = 45
#: The campaign's deadline: the never-read contacts' waits end then, after the restart.
TRIGGERER_READ_WITHIN = 90
#: Seconds after its last heartbeat that a killed triggerer's triggers go to another triggerer (the
#: default is 30; the replacement's own setting decides, since it is the one claiming them).
TAKEOVER_SECONDS = 10


def _session_alive(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.slow
@pytest.mark.postgres
def test_triggerer_killed_mid_wait_resumes_every_wait_with_the_right_outcome(
    airflow_cluster: Cluster, figures: Figures
) -> None:
    """
    A deferred wait lives in the metadata database, not in the triggerer: when the triggerer dies
    with SIGKILL (no cleanup), another one takes the triggers over, the waits resume and each ends
    with what really happened to its message (read, never read, failed).
    """
    cluster = airflow_cluster
    cluster.wait_for_example_dags()
    run_id = f"crash_{uuid.uuid4().hex[:8]}"
    cluster.trigger(
        CAMPAIGN,
        run_id=run_id,
        conf={"contacts": CLUSTER_CONTACTS, "read_within_seconds": TRIGGERER_READ_WITHIN},
    )

    def deferred_waits() -> list[tuple[Any, ...]] | None:
        cluster.check_alive()
        rows = cluster.sql(
            "SELECT ti.map_index, t.triggerer_id FROM task_instance ti JOIN trigger t ON t.id = ti.trigger_id"
            " WHERE ti.dag_id = %s AND ti.run_id = %s AND ti.task_id = 'wait_for_read'"
            " AND ti.state = 'deferred'",
            CAMPAIGN,
            run_id,
        )
        # Every wait deferred and its trigger running in the triggerer (claimed by it).
        running = [row for row in rows if row[1] is not None]
        return running if len(running) == len(CLUSTER_CONTACTS) else None

    try:
        before = wait_until(deferred_waits, timeout=240, what="every wait to be deferred in the triggerer")
        old_triggerer = cluster.processes["triggerer"]
        assert old_triggerer.process is not None
        old_pid = old_triggerer.process.pid
        killed_at = time.time()
        old_triggerer.kill()
        # The whole triggerer is gone, its trigger-runner child included: nothing runs the waits now.
        wait_until(lambda: not _session_alive(old_pid), timeout=10, what="the killed triggerer's children")
        (killed_mid_wait,) = cluster.sql(
            "SELECT count(*) FROM task_instance WHERE dag_id = %s AND run_id = %s"
            " AND task_id = 'wait_for_read' AND state = 'deferred'",
            CAMPAIGN,
            run_id,
        )[0]
        old_job_ids = {triggerer_id for _, triggerer_id in before}

        replacement = ChildProcess(
            "airflow triggerer (restarted)",
            old_triggerer.command,
            env={
                **old_triggerer.env,
                "AIRFLOW__TRIGGERER__TRIGGERER_HEALTH_CHECK_THRESHOLD": str(TAKEOVER_SECONDS),
            },
            log_path=cluster.home / "triggerer-restarted.log",
        ).start()
        # The cluster's finalizer stops whatever is registered under this name.
        cluster.processes["triggerer"] = replacement

        taken_over: set[int] = set()

        def finished() -> str | None:
            cluster.check_alive()
            for (triggerer_id,) in cluster.sql(
                "SELECT t.triggerer_id FROM task_instance ti JOIN trigger t ON t.id = ti.trigger_id"
                " WHERE ti.dag_id = %s AND ti.run_id = %s AND t.triggerer_id IS NOT NULL",
                CAMPAIGN,
                run_id,
            ):
                if triggerer_id not in old_job_ids:
                    taken_over.add(triggerer_id)
            rows = cluster.sql(
                "SELECT state FROM dag_run WHERE dag_id = %s AND run_id = %s", CAMPAIGN, run_id
            )
            state = rows[0][0] if rows else None
            return state if state in ("success", "failed") else None

        state = wait_until(
            finished, timeout=300, what="the campaign run to finish after the crash", interval=0.5
        )
    except BaseException:
        print(cluster.logs())
        raise

    waits = cluster.xcom_values(CAMPAIGN, run_id, "wait_for_read")
    # What the sandbox says happened to each message (its plan, by recipient).
    fates = {
        m["recipient"]: m["fate"] for m in cluster.stack.state()["messages"] if m["vendor"] == "sendblue"
    }
    right = [w for w in waits.values() if w["outcome"] == fates.get(w["chat"]) == fate_for(w["chat"]).value]
    (completed_after_kill,) = cluster.sql(
        "SELECT count(*) FROM task_instance WHERE dag_id = %s AND run_id = %s AND task_id = 'wait_for_read'"
        " AND state = 'success' AND end_date > to_timestamp(%s)",
        CAMPAIGN,
        run_id,
        killed_at,
    )[0]
    figures.add(
        "crash_triggerer",
        "postgres",
        waits=len(CLUSTER_CONTACTS),
        killed_mid_wait=killed_mid_wait,
        resumed=completed_after_kill,
        right_outcome=len(right),
        crashes_survived=1,
    )
    assert state == "success", cluster.logs()
    assert killed_mid_wait == len(CLUSTER_CONTACTS)
    # The waits were finished by the new triggerer's job, after the kill.
    assert taken_over, "no trigger was ever claimed by the restarted triggerer"
    assert completed_after_kill == len(CLUSTER_CONTACTS)
    assert len(waits) == len(CLUSTER_CONTACTS)
    assert len(right) == len(CLUSTER_CONTACTS), (waits, fates)
    calls = cluster.xcom_values(CAMPAIGN, run_id, "call")
    assert sorted(call["to"] for call in calls.values()) == numbers_with(Fate.UNREAD, CLUSTER_CONTACTS)
