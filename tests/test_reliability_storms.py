"""
Storms: every event delivered many times, shuffled out of order, to several receiver processes at
once on one store. Vendors retry until they get a 2xx and promise no order, and a deployment runs
several receivers: the store must keep each event once and each message's status must end where
the ladder says, whichever copy of which event landed first.

The expected status is computed here by a reference function written from CONTRACTS.md, not by
the package's own ranking code.
"""

from __future__ import annotations

import json
import random
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from airflow_provider_readreceipts.hooks.store import ReceiptStore, events_table
from tests.support import (
    SENDBLUE_CONN_ID,
    SENDBLUE_SECRET_HEADER,
    SENDBLUE_WEBHOOK_SECRET,
    Figures,
    Scale,
    StandaloneReceiver,
    connection_document,
    receiver_environment,
    sendblue_connection_fields,
    sendblue_payload,
)

pytestmark = pytest.mark.reliability

SEED = 20261128
SENDERS = 8
#: How often a delivery that got no 2xx is sent again, as the vendor would.
MAX_ATTEMPTS = 5
SENDBLUE_HEADERS = {"content-type": "application/json", SENDBLUE_SECRET_HEADER: SENDBLUE_WEBHOOK_SECRET}
#: Sendblue's raw statuses by the rung they stand for (CONTRACTS.md, "Shared vocabulary").
RAW_STATUSES = {
    "QUEUED": ["QUEUED", "PENDING", "REGISTERED", "ACCEPTED"],
    "SENT": ["SENT", "SUCCESS"],
    "DELIVERED": ["DELIVERED"],
    "READ": ["READ"],
    "FAILED": ["ERROR", "FAILED", "DECLINED"],
}
#: Statuses Sendblue may one day send that this package does not know: stored raw, ranked lowest.
UNKNOWN_RAW_STATUSES = ["SCHEDULED", "DOWNGRADED_TO_SMS", "RETRYING", "Carrier-Hold", "paused"]


def expected_status(rungs: set[str]) -> str:
    """
    The contract's ladder, as CONTRACTS.md words it: READ outranks everything, DELIVERED outranks
    FAILED, FAILED outranks QUEUED and SENT (and SENT QUEUED); only unknown statuses leave UNKNOWN.
    """
    for rung in ("READ", "DELIVERED", "FAILED", "SENT", "QUEUED"):
        if rung in rungs:
            return rung
    return "UNKNOWN"


@dataclass(frozen=True)
class StormEvent:
    """One distinct event: what the store must hold once, however many times it is delivered."""

    message_id: str
    rung: str  # the normalised status, or "UNKNOWN"
    raw_status: str
    reader: str = ""  # the participant of a group READ
    group_id: str = ""
    error_code: str = ""

    def payload(self) -> dict[str, Any]:
        fields: dict[str, Any] = {}
        if self.group_id:
            fields.update(message_type="group", group_id=self.group_id)
        if self.reader:
            fields.update(number=self.reader)
        if self.error_code:
            fields.update(error_code=self.error_code, error_message="Carrier rejected the message")
        return sendblue_payload(self.message_id, self.raw_status, **fields)


@dataclass
class Message:
    message_id: str
    events: list[StormEvent] = field(default_factory=list)

    @property
    def rungs(self) -> set[str]:
        return {event.rung for event in self.events}

    @property
    def readers(self) -> set[str]:
        return {event.reader for event in self.events if event.reader}


def build_storm(total_events: int, rng: random.Random, run: str) -> list[Message]:
    """
    Messages whose events add up to ``total_events``: one-to-one messages with a random set of rungs
    (each at most once, with a random raw synonym), group messages read by several participants,
    and unknown raw statuses sprinkled over both, some messages having nothing else.
    """
    messages: list[Message] = []
    count = 0
    while count < total_events:
        message = Message(f"storm-{run}-{len(messages)}")
        kind = len(messages) % 4
        if kind == 3:
            # A group message: one event per rung, and a READ from each participant who read.
            group_id = f"group-{run}-{len(messages)}"
            for rung in rng.sample(["QUEUED", "SENT", "DELIVERED", "FAILED"], rng.randint(0, 4)):
                message.events.append(
                    StormEvent(message.message_id, rung, rng.choice(RAW_STATUSES[rung]), group_id=group_id)
                )
            for reader in range(rng.randint(2, 5)):
                message.events.append(
                    StormEvent(
                        message.message_id, "READ", "READ", reader=f"+1415555{reader:04d}", group_id=group_id
                    )
                )
        elif kind != 2 or rng.random() < 0.5:
            for rung in rng.sample(list(RAW_STATUSES), rng.randint(1, 5)):
                code = f"E{rng.randint(1000, 9999)}" if rung == "FAILED" else ""
                message.events.append(
                    StormEvent(message.message_id, rung, rng.choice(RAW_STATUSES[rung]), error_code=code)
                )
        if kind == 2 or rng.random() < 0.2:
            for raw in rng.sample(UNKNOWN_RAW_STATUSES, rng.randint(1, 2)):
                message.events.append(StormEvent(message.message_id, "UNKNOWN", raw))
        message.events = message.events[: total_events - count]
        count += len(message.events)
        messages.append(message)
    return messages


@dataclass
class DeliveryLog:
    acknowledged: int = 0
    refused_then_retried: int = 0
    given_up: list[StormEvent] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def deliver(deliveries: list[StormEvent], receivers: list[StandaloneReceiver]) -> DeliveryLog:
    """
    Send every delivery from :data:`SENDERS` threads, delivery *i* to receiver *i mod n*, so the
    copies of one event land on different processes at about the same time; retry what gets no 2xx.
    """
    log = DeliveryLog()
    cursor = iter(range(len(deliveries)))
    cursor_lock = threading.Lock()
    urls = [receiver.url(f"/webhooks/{SENDBLUE_CONN_ID}") for receiver in receivers]

    def sender() -> None:
        with httpx.Client(timeout=60.0) as http:
            while True:
                with cursor_lock:
                    index = next(cursor, None)
                if index is None:
                    return
                event = deliveries[index]
                body = json.dumps(event.payload()).encode()
                for attempt in range(MAX_ATTEMPTS):
                    url = urls[(index + attempt) % len(urls)]
                    try:
                        ok = http.post(url, content=body, headers=SENDBLUE_HEADERS).is_success
                    except httpx.HTTPError:
                        ok = False
                    with log.lock:
                        if ok:
                            log.acknowledged += 1
                        else:
                            log.refused_then_retried += 1
                    if ok:
                        break
                else:
                    with log.lock:
                        log.given_up.append(event)

    threads = [threading.Thread(target=sender, name=f"storm-{n}", daemon=True) for n in range(SENDERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(600)
        assert not thread.is_alive(), "a storm sender hung"
    return log


def test_storm_of_repeated_shuffled_events_over_several_receivers_stores_each_once(
    store_url: str,
    start_standalone: Callable[..., StandaloneReceiver],
    scale: Scale,
    figures: Figures,
) -> None:
    """
    Each event delivered ``storm_repeats`` times, all shuffled, over ``storm_receivers`` processes:
    stored once each, no event lost, and each message's status, readers and times as the ladder says.
    """
    case = "postgres" if store_url.startswith("postgresql") else "sqlite"
    rng = random.Random(SEED)
    run = uuid.uuid4().hex[:8]
    messages = build_storm(scale.storm_events, rng, run)
    distinct = [event for message in messages for event in message.events]
    assert len(distinct) == len(set(distinct)) == scale.storm_events
    deliveries = distinct * scale.storm_repeats
    rng.shuffle(deliveries)

    # The schema is created before the receivers start, as a deployment's migration step would.
    with ReceiptStore(store_url) as store:
        store.migrate()
    environment = receiver_environment(
        **{SENDBLUE_CONN_ID: connection_document("sendblue", **sendblue_connection_fields())}
    )
    receivers = [
        start_standalone(store_url=store_url, environment=environment, arguments=["--no-access-log"])
        for _ in range(scale.storm_receivers)
    ]
    for receiver in receivers:
        receiver.wait_ready()
    log = deliver(deliveries, receivers)
    for receiver in receivers:
        receiver.stop()

    columns = events_table.c
    with ReceiptStore(store_url) as store:
        with store.engine.connect() as conn:
            rows = conn.execute(
                sa.select(columns.message_id, columns.status, columns.raw_status, columns.participant).where(
                    columns.conn_id == SENDBLUE_CONN_ID
                )
            ).all()
        statuses = store.message_statuses([(SENDBLUE_CONN_ID, m.message_id) for m in messages])

    sent = {(e.message_id, e.rung, e.raw_status, e.reader) for e in distinct}
    stored = [(message_id, status, raw, participant) for message_id, status, raw, participant in rows]
    duplicates_stored = len(stored) - len(set(stored))
    lost = sent - set(stored)
    unexpected = set(stored) - sent
    wrong: list[str] = []
    for message in messages:
        status = statuses.get((SENDBLUE_CONN_ID, message.message_id))
        problem = _status_problem(message, status)
        if problem:
            wrong.append(f"{message.message_id}: {problem}")
    figures.add(
        "storms",
        case,
        deliveries=len(deliveries),
        distinct_events=len(distinct),
        messages=len(messages),
        stored=len(stored),
        duplicates_stored=duplicates_stored,
        lost=len(lost),
        wrong_status=len(wrong),
        refused_then_retried=log.refused_then_retried,
        receivers=len(receivers),
    )
    assert not log.given_up, f"{len(log.given_up)} deliveries never got a 2xx"
    assert log.acknowledged == len(deliveries)
    assert duplicates_stored == 0
    assert not lost, f"{len(lost)} events missing, e.g. {sorted(lost)[:5]}"
    assert not unexpected, f"events nobody sent: {sorted(unexpected)[:5]}"
    assert not wrong, "\n".join(wrong[:20])


def _status_problem(message: Message, status: Any) -> str:
    """What is wrong with a message's stored status, by the reference ladder; ``""`` when right."""
    if status is None:
        return "no status stored"
    want = expected_status(message.rungs)
    if str(status.status) != want:
        return f"status {status.status}, the ladder says {want} (rungs {sorted(message.rungs)})"
    deciding_raws = {event.raw_status for event in message.events if event.rung == want}
    if status.raw_status not in deciding_raws:
        return f"raw status {status.raw_status!r}, not one of the deciding events' {sorted(deciding_raws)}"
    if set(status.readers) != message.readers:
        return f"readers {sorted(status.readers)}, sent {sorted(message.readers)}"
    if (status.read_at is not None) != ("READ" in message.rungs):
        return f"read_at {status.read_at} with rungs {sorted(message.rungs)}"
    if (status.delivered_at is not None) != ("DELIVERED" in message.rungs):
        return f"delivered_at {status.delivered_at} with rungs {sorted(message.rungs)}"
    failed_codes = {event.error_code for event in message.events if event.rung == "FAILED"}
    if status.failed_code != (next(iter(failed_codes)) if failed_codes else ""):
        return f"failed_code {status.failed_code!r}, sent {sorted(failed_codes)}"
    return ""
