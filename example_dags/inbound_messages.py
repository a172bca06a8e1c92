"""
### Inbound messages: handle each one, then mark it read

Event-driven: an `AssetWatcher` runs `ReceiptEventTrigger` in the triggerer, which turns every
inbound message the webhook receiver stored (status `RECEIVED`, any vendor, any connection) into an
asset event, and each asset event starts this DAG. It handles each message, then marks it read with
the matching vendor's operator, so the contact sees that we read it.

The scheduler may fold several asset events into one run, and the trigger delivers each event at
least once (after a triggerer restart an event can come again), so `handle_messages` works on a
list and drops repeated event ids. Marking read twice does no harm either.

On Airflow 3.3, an event that arrives while the scheduler is creating a run for the one before it
waits for the next event's run (apache/airflow#54659; the queue is reworked for 3.4 in #70972): in
a burst of messages, the last few are handled when the next message comes in.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from airflow.sdk import DAG, Asset, AssetWatcher, Param, task

from airflow_provider_readreceipts.operators.mark_read import (
    ChertMarkReadOperator,
    Direct7MarkReadOperator,
    RyzeMarkReadOperator,
    SendblueMarkReadOperator,
)
from airflow_provider_readreceipts.triggers.read_receipt import ReceiptEventTrigger

log = logging.getLogger(__name__)

INBOUND_MESSAGES = Asset(
    "readreceipts_inbound_messages",
    watchers=[
        AssetWatcher(
            name="readreceipts_inbound_messages",
            trigger=ReceiptEventTrigger(statuses=["RECEIVED"], poll_interval=1.0),
        )
    ],
)


# What each vendor's mark-read operator needs, from the event the trigger delivered. The event
# names its connection, so messages to two accounts of one vendor are marked read on the right one.
def sendblue_read(event: dict[str, Any]) -> dict[str, Any]:
    return {"number": event["chat_id"], "sendblue_conn_id": event["conn_id"]}


def chert_read(event: dict[str, Any]) -> dict[str, Any]:
    return {"chat_id": event["chat_id"], "chert_conn_id": event["conn_id"]}


def ryze_read(event: dict[str, Any]) -> dict[str, Any]:
    # In a group chat RyzeAPI needs the message's author: the event's participant.
    return {
        "number": event["chat_id"],
        "message_id": event["message_id"],
        "sender": event["participant"] or None,
        "ryze_conn_id": event["conn_id"],
    }


def direct7_read(event: dict[str, Any]) -> dict[str, Any]:
    return {"message_id": event["message_id"], "direct7_conn_id": event["conn_id"]}


#: Each vendor's mark-read operator, and what it takes from an event.
MARK_READ: dict[str, tuple[type[Any], Callable[[dict[str, Any]], dict[str, Any]]]] = {
    "sendblue": (SendblueMarkReadOperator, sendblue_read),
    "chert": (ChertMarkReadOperator, chert_read),
    "ryze": (RyzeMarkReadOperator, ryze_read),
    "direct7": (Direct7MarkReadOperator, direct7_read),
}


with DAG(
    dag_id="readreceipts_inbound",
    schedule=[INBOUND_MESSAGES],
    params={
        "events": Param(
            [],
            type="array",
            description="For a manual run only (dag.test() cannot deliver asset events): the receipt "
            "events to handle, as ReceiptEventTrigger delivers them",
        )
    },
    tags=["readreceipts", "example"],
    doc_md=__doc__,
) as dag:

    @task
    def handle_messages(triggering_asset_events: Any = None, params: Any = None) -> list[dict[str, Any]]:
        """Handle each inbound message once, however many times its event arrived."""
        if triggering_asset_events:
            events = [
                asset_event.extra["payload"] for asset_event in triggering_asset_events[INBOUND_MESSAGES]
            ]
        else:
            events = list(params["events"])
        unique = {event["event_id"]: event for event in events}  # the store's id: unique per event
        for event in unique.values():
            # Here a real DAG would open a ticket, answer, or route the message to a person.
            log.info("%s message %s from %s", event["vendor"], event["message_id"], event["chat_id"])
        if len(unique) < len(events):
            log.info("Dropped %d repeated events", len(events) - len(unique))
        return list(unique.values())

    # One task per vendor to split the list: Airflow maps only over a task's whole return value.
    @task
    def for_vendor(vendor: str, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The handled messages that came through ``vendor``."""
        return [event for event in events if event["vendor"] == vendor]

    handled = handle_messages()
    for vendor, (operator, arguments) in MARK_READ.items():
        messages = for_vendor.override(task_id=f"from_{vendor}")(vendor, handled)
        # One mapped task per vendor; a vendor with no message this run is simply skipped.
        operator.partial(task_id=f"mark_read_{vendor}").expand_kwargs(messages.map(arguments))
