"""
### Inbox sweep: mark a whole support inbox read in one task

At the end of each working day, every WhatsApp conversation that wrote to the support line
(RyzeAPI) in the last day is marked read by one bulk task: concurrent requests over one HTTP
session, within RyzeAPI's published 100 requests a minute, one outcome per conversation, and a
failure threshold, so a handful of refusals do not fail the sweep while a broken connection does.

Who wrote comes from the receipt store, where the webhook receiver keeps every inbound message.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone
from typing import Any

import pendulum
from airflow.sdk import DAG, Param, task

from airflow_provider_readreceipts.operators.mark_read import RyzeBulkMarkReadOperator

SUPPORT_CONN_ID = "ryze_default"


async def chats_that_wrote(conn_id: str, since: datetime) -> list[str]:
    """Every chat with an inbound message on ``conn_id`` stored since ``since``, oldest first."""
    from airflow_provider_readreceipts.store import AsyncReceiptStore

    chats: dict[str, None] = {}
    async with await AsyncReceiptStore.from_airflow() as store:
        cursor = 0
        while events := await store.events_after(cursor, conn_id=conn_id, statuses=["RECEIVED"], limit=1000):
            chats.update((event.chat_id, None) for event in events if event.received_at >= since)
            cursor = events[-1].id
    return list(chats)


with DAG(
    dag_id="readreceipts_inbox_sweep",
    schedule="0 18 * * 1-5",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    # It touches every conversation of the line: switch it on once the connection is the right one.
    is_paused_upon_creation=True,
    params={
        "lookback_hours": Param(24, type="integer", minimum=1, description="Sweep chats active this recently")
    },
    tags=["readreceipts", "example"],
    doc_md=__doc__,
) as dag:

    @task
    def support_inbox(params: dict[str, Any]) -> list[str]:
        """The conversations to mark read."""
        since = datetime.now(timezone.utc) - timedelta(hours=params["lookback_hours"])
        return asyncio.run(chats_that_wrote(SUPPORT_CONN_ID, since))

    RyzeBulkMarkReadOperator(
        task_id="mark_inbox_read",
        chats=support_inbox(),
        ryze_conn_id=SUPPORT_CONN_ID,
        max_concurrency=8,
        # Up to 5% of the chats may fail (a chat deleted meanwhile); more means something is wrong.
        max_failures=None,
        max_failure_rate=0.05,
    )
