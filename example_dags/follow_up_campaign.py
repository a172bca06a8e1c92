"""
### Follow-up campaign: send, wait for each read, then follow up, call or switch channel

Sends an iMessage (Sendblue) to every contact, one mapped task each, and waits for each read with
a deadline. Then, contact by contact:

- **read**: a follow-up message on the same channel;
- **unread** at the deadline: a phone call through a voice-call API (an `HttpOperator` on the
  `voice_default` HTTP connection, so any provider can be plugged in);
- **failed** at the vendor: the same invitation on WhatsApp (Direct7) instead.

The run is green on every path; `report` sums up who read, how fast, who was called and who was
reached on WhatsApp. The defaults fit the local sandbox (`make demo`), where the last digit of a
number decides its fate: 0-4 read, 5-7 never read, 8-9 failed.
"""

from __future__ import annotations

import json
import logging
from datetime import timedelta
from typing import Any

from airflow.providers.http.operators.http import HttpOperator
from airflow.sdk import DAG, Param, task

from airflow_provider_readreceipts.operators.send_message import (
    Direct7SendMessageOperator,
    SendblueSendMessageOperator,
)
from airflow_provider_readreceipts.sensors.read_receipt import ReadReceiptSensor

log = logging.getLogger(__name__)

CONTACTS = [
    {"name": "Ada", "number": "+14155550100"},
    {"name": "Grace", "number": "+14155550142"},
    {"name": "Linus", "number": "+14155550155"},
    {"name": "Margaret", "number": "+14155550178"},
]
#: How long everyone has to read, from the start of the run: short, so that the demo ends quickly.
#: A real campaign gives people hours.
READ_WITHIN_SECONDS = 30
#: When a wait ends "unread". Absolute (the run's start plus the time allowed), so a retried or
#: re-deferred wait never gets longer.
DEADLINE = "{{ (dag_run.run_after + macros.timedelta(seconds=params.read_within_seconds)).isoformat() }}"
#: Which task each outcome of the wait leads to.
NEXT_STEP = {"read": "follow_up", "unread": "call", "failed": "switch_to_whatsapp"}


def call_request(number: str) -> str:
    """The voice API's request body: whom to call, and what to say."""
    return json.dumps({"to": number, "say": "You have an invitation waiting in your messages."})


with DAG(
    dag_id="readreceipts_follow_up_campaign",
    schedule=None,
    params={
        "contacts": Param(CONTACTS, type="array", description="Who gets the campaign: name and number"),
        "read_within_seconds": Param(
            READ_WITHIN_SECONDS, type="integer", minimum=1, description="How long everyone has to read"
        ),
    },
    tags=["readreceipts", "example"],
    doc_md=__doc__,
) as dag:

    @task
    def invitations(params: dict[str, Any]) -> list[dict[str, str]]:
        """One send per contact: in real life, read the list from your CRM here."""
        return [
            {
                "number": contact["number"],
                "content": f"Hi {contact['name']}, you're invited! Reply YES to join.",
            }
            for contact in params["contacts"]
        ]

    send = SendblueSendMessageOperator.partial(task_id="send_invitation").expand_kwargs(invitations())

    # Deferrable: each wait is a few bytes in the triggerer, not a worker slot, and all waits share
    # one store query per poll interval. Sendblue reports reads by webhook; reconcile (a look at
    # Sendblue's status API) only covers webhooks that got lost, so it can be infrequent.
    wait = ReadReceiptSensor.partial(
        task_id="wait_for_read",
        deadline=DEADLINE,
        deferrable=True,
        poll_interval=1.0,
        reconcile_interval=timedelta(minutes=2),
    ).expand(message=send.output)

    # Each next step is mapped over the contacts it is for, listed by a task of its own (Airflow maps
    # only over a task's whole return value). A mapped @task.branch would read more naturally, but
    # Airflow 3.3 does not apply the skips of a mapped branch task: every contact would take all
    # three paths.
    @task
    def numbers_with(outcome: str, results: list[dict[str, Any]]) -> list[str]:
        """The contacts whose wait ended ``read``, ``unread`` or ``failed`` (never confused)."""
        return [result["chat"] for result in results if result["outcome"] == outcome]

    readers = numbers_with.override(task_id="who_read")("read", wait.output)
    non_readers = numbers_with.override(task_id="who_did_not_read")("unread", wait.output)
    unreachable = numbers_with.override(task_id="who_failed")("failed", wait.output)

    follow_up = SendblueSendMessageOperator.partial(
        task_id="follow_up", content="Thanks for reading! Here are the details: https://example.com/event"
    ).expand(number=readers)

    call = HttpOperator.partial(
        task_id="call",
        http_conn_id="voice_default",
        endpoint="/v1/calls",
        method="POST",
        headers={"Content-Type": "application/json"},
        response_filter=lambda response: response.json(),
    ).expand(data=non_readers.map(call_request))

    switch_to_whatsapp = Direct7SendMessageOperator.partial(
        task_id="switch_to_whatsapp",
        body="Hi! We could not reach you on iMessage: you're invited, reply YES to join.",
    ).expand(number=unreachable)

    # none_failed: a step with nobody to reach is skipped, which must not stop the report.
    @task(trigger_rule="none_failed")
    def report(results: list[dict[str, Any]], params: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
        """Who read (and how fast), who was called, who was reached on WhatsApp instead."""
        names = {contact["number"]: contact["name"] for contact in params["contacts"]}
        summary: dict[str, list[dict[str, Any]]] = {outcome: [] for outcome in NEXT_STEP}
        for result in results:
            entry = {
                "name": names.get(result["chat"], result["chat"]),
                "number": result["chat"],
                "next_step": NEXT_STEP[result["outcome"]],
                "time_to_read_seconds": result["time_to_read_seconds"],
                "failure_reason": result["failure_reason"],
            }
            summary[result["outcome"]].append(entry)
        log.info("Campaign: %s", {outcome: len(entries) for outcome, entries in summary.items()})
        return summary

    [follow_up, call, switch_to_whatsapp] >> report(wait.output)
