"""
Campaigns end to end: a bulk send, one wait for every recipient, next steps on outcome groups, all
against the vendor sandbox, the real receiver and the receipt store (SQLite and PostgreSQL).
"""

from __future__ import annotations

from typing import Any

from airflow_provider_readreceipts.testing.sandbox.fates import Fate, fate_for
from tests.support import Stack

CAMPAIGN_DAG = """
from airflow.sdk import DAG

from airflow_provider_readreceipts.operators.bulk_send import (
    Direct7BulkSendMessageOperator,
    SendblueBulkSendMessageOperator,
)
from airflow_provider_readreceipts.sensors.campaign import CampaignWaitSensor

with DAG("campaign_smoke", schedule=None) as dag:
    send = SendblueBulkSendMessageOperator(
        task_id="invite",
        recipients={recipients!r},
        text="Hi {{{{ recipient.name }}}}, you're invited!",
        max_failure_rate=0.5,
    )
    wait = CampaignWaitSensor(
        task_id="wait", campaign=send.output, read_within={read_within}, poll_interval=0.5,
        reconcile_interval=None,
    )
    follow_up = SendblueBulkSendMessageOperator(
        task_id="follow_up", campaign=wait.output, outcome="read", text="Thanks {{{{ recipient.name }}}}!"
    )
    fallback = Direct7BulkSendMessageOperator(
        task_id="whatsapp", campaign=wait.output, outcome="failed", text="We could not reach you on iMessage"
    )
    send >> wait >> [follow_up, fallback]
"""

RECIPIENTS = [
    {"number": "+14155550300", "name": "Ada"},
    {"number": "+14155550311", "name": "Grace"},
    {"number": "+14155550325", "name": "Linus"},
    {"number": "+14155550336", "name": "Ken"},
    {"number": "+14155550348", "name": "Margaret"},
    {"number": "4155550349", "name": "NoCountryCode"},
]


def _rows(stack: Stack, campaign_id: str, step: str) -> dict[str, Any]:
    from airflow_provider_readreceipts.store import ReceiptStore
    from airflow_provider_readreceipts.store.campaigns import recipients_page

    with ReceiptStore(stack.store_url) as store:
        return {
            row.recipient: row
            for row in store.read(lambda conn: recipients_page(conn, campaign_id, step, limit=100))
        }


def test_a_campaign_sends_waits_once_and_acts_on_each_outcome_group(run_dag: Any, e2e_stack: Stack) -> None:
    e2e_stack.reset()
    source = CAMPAIGN_DAG.format(recipients=RECIPIENTS, read_within=12)
    result = run_dag(source, dag_id="campaign_smoke")
    assert result.state == "success", result.failures

    sent = result.xcom("invite")
    assert sent["counts"]["sent"] == 5 and sent["counts"]["refused"] == 1, sent
    waited = result.xcom("wait")
    campaign_id = waited["campaign_id"]
    counts = waited["counts"]
    assert (counts["read"], counts["unread"], counts["failed"]) == (2, 2, 1), counts

    rows = _rows(e2e_stack, campaign_id, "invite")
    for number in [r["number"] for r in RECIPIENTS[:5]]:
        assert rows[number].outcome == fate_for(number).value, rows[number]
    refused = rows["4155550349"]
    assert refused.send_state == "refused" and "country code" in refused.send_error
    # The next steps went to their groups only, and recorded their own rows in the campaign.
    readers = {n for n in rows if rows[n].outcome == "read"}
    assert set(_rows(e2e_stack, campaign_id, "follow_up")) == readers
    assert set(_rows(e2e_stack, campaign_id, "whatsapp")) == {
        n for n in rows if rows[n].outcome == Fate.FAILED.value
    }
    state = e2e_stack.settled()
    assert sorted(state["vendors"]["sendblue"]["sent"]) == sorted(
        [r["number"] for r in RECIPIENTS[:5]] + sorted(readers)
    )
    # Every XCom is small: ids and counts, never the recipients.
    for task_id in ("invite", "wait", "follow_up", "whatsapp"):
        assert len(str(result.xcom(task_id))) < 2_000
