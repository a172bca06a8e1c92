"""
Vendor faults, every vendor by every fault: the operators retry within bounds, fail clearly, and
never send a message twice.

The vendor fakes run on a real loopback HTTP server and misbehave on script (``Fault``): a run of
503s that clears, 503s that never clear, a 429 with ``Retry-After``, an answer slower than the
hook's timeout (the fake still carries the request out, after the client gave up), and a connection
dropped after the request was read. Each case runs the real operator (send or mark read) with a
hook built with small timeouts and retry budgets (the hook's own parameters), and records in the
``vendor_faults`` figures: calls made, requests the vendor saw, duplicates sent, the outcome and
the time taken.

What must hold, per the README's "Errors you will meet":

* mark read is safe to repeat: retried on 429, 5xx, timeouts and drops; it succeeds once the fault
  clears, or fails with a ``VendorAPIError`` naming the vendor, status and message, in bounded time;
* a send without an idempotency key (Sendblue, RyzeAPI, Direct7) is retried only after a 429; after
  a 5xx, a timeout or a drop its outcome is unknown: ``DeliveryUnknownError``, exactly one request,
  and a later try of the same task instance sends nothing;
* a Chert send carries the task instance's idempotency key: it is retried and Chert stores the
  message once, even when an earlier attempt was carried out but its answer was lost.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import pytest
from airflow.sdk.exceptions import AirflowFailException

from airflow_provider_readreceipts.hooks.chert import ChertHook
from airflow_provider_readreceipts.hooks.direct7 import Direct7Hook
from airflow_provider_readreceipts.hooks.ryze import RyzeHook
from airflow_provider_readreceipts.hooks.sendblue import SendblueHook
from airflow_provider_readreceipts.operators.mark_read import (
    ChertMarkReadOperator,
    Direct7MarkReadOperator,
    RyzeMarkReadOperator,
    SendblueMarkReadOperator,
)
from airflow_provider_readreceipts.operators.send_message import (
    SEND_STATE_KEY,
    ChertSendMessageOperator,
    Direct7SendMessageOperator,
    RyzeSendMessageOperator,
    SendblueSendMessageOperator,
)
from airflow_provider_readreceipts.receipts import DeliveryUnknownError, VendorAPIError
from airflow_provider_readreceipts.testing.fakes.server import Fault, VendorFakeServer
from tests.operator_context import MemoryStateStore, make_context

pytestmark = pytest.mark.reliability

CONTACT = "+14155551234"
WA_CONTACT = "+5511987654321"
#: The hook's timeout for connecting and for each read; the slow fault answers after twice that.
TIMEOUT = 0.4
SLOW = 2 * TIMEOUT
#: Retry-After the 429 fault asks for: small, but a real (integer) HTTP value.
RETRY_AFTER = 1
VENDOR_NAMES = {"sendblue": "Sendblue", "chert": "Chert", "ryze": "RyzeAPI", "direct7": "Direct7"}
SEND_PATHS = {
    "sendblue": "/api/send-message",
    "chert": "/send",
    "ryze": "/api/message/text/",
    "direct7": "/whatsapp/v2/send",
}


@dataclass(frozen=True)
class Budget:
    """Retry bounds per scale: ``full`` runs longer fault runs against a larger budget."""

    max_attempts: int
    retry_max_seconds: float
    #: 503s in a run that clears (fewer than ``max_attempts``).
    transient_503s: int


BUDGETS = {"ci": Budget(3, 5.0, 2), "full": Budget(5, 20.0, 4)}


# -- the matrix ------------------------------------------------------------------------------------


def build_hook(vendor: str, conn_id: str, budget: Budget) -> Any:
    options: dict[str, Any] = {
        "timeout": TIMEOUT,
        "max_attempts": budget.max_attempts,
        "retry_max_seconds": budget.retry_max_seconds,
    }
    if vendor == "sendblue":
        return SendblueHook(sendblue_conn_id=conn_id, **options)
    if vendor == "chert":
        return ChertHook(chert_conn_id=conn_id, **options)
    if vendor == "ryze":
        return RyzeHook(ryze_conn_id=conn_id, **options)
    return Direct7Hook(direct7_conn_id=conn_id, **options)


def build_operator(vendor: str, operation: str, conn_id: str, vendors: VendorFakeServer) -> Any:
    """The real operator; its ``hook`` is the vendor hook with this suite's timeout and budget."""
    if operation == "mark_read":
        if vendor == "sendblue":
            return SendblueMarkReadOperator(task_id="t", number=CONTACT, sendblue_conn_id=conn_id)
        if vendor == "chert":
            chert: Any = vendors.fakes["chert"]
            chat_id = chert.add_chat(CONTACT)
            chert.add_inbound(chat_id)
            return ChertMarkReadOperator(task_id="t", chat_id=chat_id, chert_conn_id=conn_id)
        if vendor == "ryze":
            return RyzeMarkReadOperator(
                task_id="t", number=WA_CONTACT, message_id="3EB0F00D", ryze_conn_id=conn_id
            )
        direct7: Any = vendors.fakes["direct7"]
        message_id = direct7.add_inbound(sender=WA_CONTACT)
        return Direct7MarkReadOperator(task_id="t", message_id=message_id, direct7_conn_id=conn_id)
    if vendor == "sendblue":
        return SendblueSendMessageOperator(
            task_id="t", number=CONTACT, content="Fault test", sendblue_conn_id=conn_id
        )
    if vendor == "chert":
        return ChertSendMessageOperator(task_id="t", phone=CONTACT, body="Fault test", chert_conn_id=conn_id)
    if vendor == "ryze":
        return RyzeSendMessageOperator(
            task_id="t", number=WA_CONTACT, message="Fault test", ryze_conn_id=conn_id
        )
    return Direct7SendMessageOperator(
        task_id="t", number=WA_CONTACT, body="Fault test", direct7_conn_id=conn_id
    )


def messages_stored(vendor: str, vendors: VendorFakeServer) -> int:
    """Outbound messages the vendor fake holds (what the recipient would receive)."""
    fake: Any = vendors.fakes[vendor]
    if vendor == "chert":
        return sum(1 for message in fake.messages() if message["direction"] == "outbound")
    if vendor == "direct7":
        return sum(len(report["messages"]) for report in fake.reports.values())
    return len(fake.messages)


def faults_for(kind: str, budget: Budget) -> list[Fault]:
    if kind == "503_run":
        return [
            Fault(status=503, body={"message": "Service temporarily unavailable"})
        ] * budget.transient_503s
    if kind == "503_persistent":
        return [Fault(status=503, body={"message": "Service temporarily unavailable"})] * (
            budget.max_attempts + 2
        )
    if kind == "429_retry_after":
        return [
            Fault(
                status=429, body={"message": "Too many requests"}, headers={"Retry-After": str(RETRY_AFTER)}
            )
        ]
    if kind == "slow":
        return [Fault(delay=SLOW)]
    if kind == "drop":
        return [Fault(drop=True)]
    raise AssertionError(kind)


FAULT_KINDS = ["503_run", "503_persistent", "429_retry_after", "slow", "drop"]


def expected_requests(vendor: str, operation: str, kind: str, budget: Budget) -> int:
    """How many requests the vendor must see: retries where safe, exactly one where not."""
    retried = operation == "mark_read" or vendor == "chert"
    if kind == "503_run":
        return budget.transient_503s + 1 if retried else 1
    if kind == "503_persistent":
        return budget.max_attempts if retried else 1
    if kind == "429_retry_after":
        return 2  # a 429 proves nothing was done: every call retries it
    return 2 if retried else 1  # slow, drop


def expected_success(vendor: str, operation: str, kind: str) -> bool:
    if kind == "503_persistent":
        return False
    return operation == "mark_read" or vendor == "chert" or kind == "429_retry_after"


@pytest.mark.parametrize("kind", FAULT_KINDS)
@pytest.mark.parametrize("operation", ["mark_read", "send"])
@pytest.mark.parametrize("vendor", ["sendblue", "chert", "ryze", "direct7"])
def test_operator_under_vendor_fault(vendor, operation, kind, conns, vendors, scale, figures):
    budget = BUDGETS[scale.name]
    operator = build_operator(vendor, operation, conns[vendor], vendors)
    # The operator builds its hook from the connection alone; give it this suite's bounds instead
    # (the same hook class, only the constructor's timeout and retry parameters differ).
    operator.__dict__["hook"] = build_hook(vendor, conns[vendor], budget)
    path = SEND_PATHS[vendor] if operation == "send" else None
    vendors.inject(vendor, *faults_for(kind, budget))
    store = MemoryStateStore()

    started = time.monotonic()
    error: BaseException | None = None
    try:
        result = operator.execute(make_context(store))
    except (VendorAPIError, AirflowFailException) as exc:
        error, result = exc, None
    seconds = time.monotonic() - started
    time.sleep(SLOW if kind == "slow" else 0)  # let a slow answer the client gave up on finish
    seen = vendors.requests_to(vendor, path, "POST")
    stored = messages_stored(vendor, vendors) if operation == "send" else 0
    # A message the recipient gets more than once. (A repeated request after a 429 is no duplicate:
    # the 429 proves the first was not carried out; the request counts are asserted below.)
    duplicates = max(stored - 1, 0)

    succeeded = error is None
    if succeeded:
        outcome = f"succeeded after {len(seen) - 1} retries"
    else:
        cause = error.__cause__ if isinstance(error, AirflowFailException) else error
        outcome = f"failed clearly: {type(cause).__name__}"
    figures.add(
        "vendor_faults",
        f"{vendor} {operation} {kind}",
        calls=1,
        requests_seen_by_vendor=len(seen),
        duplicates_sent=duplicates,
        outcome=outcome,
        seconds=round(seconds, 2),
    )

    assert succeeded is expected_success(vendor, operation, kind), error
    assert len(seen) == expected_requests(vendor, operation, kind, budget)
    assert duplicates == 0
    # Bounded: attempts times the timeout, plus the waits the budget allows, plus slack.
    assert seconds < budget.max_attempts * (TIMEOUT + 0.5) + budget.retry_max_seconds + 5
    if kind == "429_retry_after":
        assert seen[1].received_at - seen[0].received_at >= RETRY_AFTER - 0.1

    if operation == "send" and succeeded:
        assert stored == 1
        assert result is not None and result["vendor"] == vendor and result["message_id"]
        if vendor == "chert":
            # Every attempt carried the same idempotency key: that is what made the retries safe.
            keys = {json.loads(r.body)["idempotency_key"] for r in seen}
            assert len(keys) == 1
    if succeeded:
        return

    cause = error.__cause__ if isinstance(error, AirflowFailException) else error
    assert isinstance(cause, VendorAPIError)
    text = str(error)
    assert VENDOR_NAMES[vendor] in text
    if kind.startswith("503"):
        assert cause.status_code == 503
        assert "HTTP 503" in text
        assert "Service temporarily unavailable" in text
    else:
        assert cause.status_code is None
    if operation == "send" and vendor != "chert":
        # Unknown outcome: said so, and a later try of the same task instance sends nothing.
        assert isinstance(cause, DeliveryUnknownError)
        assert "may have been sent" in text
        assert store.get(SEND_STATE_KEY)["state"] == "sending"
        with pytest.raises(AirflowFailException, match="outcome is unknown"):
            operator.execute(make_context(store, try_number=2))
        assert len(vendors.requests_to(vendor, path, "POST")) == 1
    elif operation == "send":
        assert stored == 0  # Chert never accepted it: the 503s came before the handler


def test_chert_send_whose_answers_are_lost_is_stored_once(conns, vendors, scale, figures):
    """
    Chert carries the send out but the answer is lost (503, retryable) on the first attempts: the
    retries carry the same idempotency key, Chert answers them with the original message, and the
    recipient gets it once. The same holds when the task itself is tried again.
    """
    budget = BUDGETS[scale.name]
    lost = budget.max_attempts - 1
    vendors.fakes["chert"].lose_next_answers(lost)
    operator = build_operator("chert", "send", conns["chert"], vendors)
    operator.__dict__["hook"] = build_hook("chert", conns["chert"], budget)

    started = time.monotonic()
    first = operator.execute(make_context(MemoryStateStore()))
    again = operator.execute(make_context(MemoryStateStore(), try_number=2))
    seconds = time.monotonic() - started

    seen = vendors.requests_to("chert", "/send", "POST")
    stored = messages_stored("chert", vendors)
    figures.add(
        "vendor_faults",
        "chert send 503_after_processing",
        calls=2,
        requests_seen_by_vendor=len(seen),
        duplicates_sent=max(stored - 1, 0),
        outcome=f"succeeded after {lost} retries",
        seconds=round(seconds, 2),
    )
    assert len(seen) == lost + 2
    assert stored == 1
    assert again["message_id"] == first["message_id"]
