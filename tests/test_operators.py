"""
The mark-read and send operators, over real HTTP against the vendor fakes.

Most tests call ``execute`` directly with a small context (fast, and the request is what is under
test); templating, dynamic task mapping and task retries run real DAGs with ``dag.test()``.
"""

from __future__ import annotations

import heapq
import json
import random
import subprocess
import sys
from typing import Any

import pytest
from airflow.sdk.exceptions import AirflowException, AirflowFailException
from hypothesis import given, settings
from hypothesis import strategies as st

from airflow_provider_readreceipts.operators.mark_read import (
    ChertBulkMarkReadOperator,
    ChertMarkReadOperator,
    Direct7BulkMarkReadOperator,
    Direct7MarkReadOperator,
    RyzeBulkMarkReadOperator,
    RyzeMarkReadOperator,
    SendblueBulkMarkReadOperator,
    SendblueMarkReadOperator,
)
from airflow_provider_readreceipts.operators.send_message import (
    SEND_STATE_KEY,
    ChertSendMessageOperator,
    Direct7SendMessageOperator,
    RyzeSendMessageOperator,
    SendblueSendMessageOperator,
    idempotency_key_for,
)
from airflow_provider_readreceipts.rate_limits import SlidingWindowRateLimiter
from airflow_provider_readreceipts.receipts import VendorAPIError
from airflow_provider_readreceipts.testing.fakes import direct7 as direct7_fake
from airflow_provider_readreceipts.testing.fakes import sendblue as sendblue_fake
from airflow_provider_readreceipts.testing.fakes.server import Fault
from tests.operator_context import MemoryStateStore, make_context
from tests.support import D7_RECEIVER, D7_WEBHOOK_TOKEN, SB_RECEIVER

CONTACT = "+14155551234"
OTHER = "+14155550123"
WA_CONTACT = "+5511987654321"


# -- mark read, one at a time -----------------------------------------------------------------------


def test_sendblue_mark_read(conns, vendors):
    result = SendblueMarkReadOperator(task_id="t", number="+1 (415) 555-1234", sendblue_conn_id="sb").execute(
        make_context()
    )

    assert result == {"vendor": "sendblue", "conn_id": "sb", "target": CONTACT, "outcome": "read"}
    (request,) = vendors.requests_to("sendblue", "/api/mark-read")
    assert request.json() == {"number": CONTACT, "from_number": sendblue_fake.LINE}


def test_chert_mark_read(conns, vendors):
    chert = vendors.fakes["chert"]
    chat_id = chert.add_chat(CONTACT)
    chert.add_inbound(chat_id)

    result = ChertMarkReadOperator(task_id="t", chat_id=chat_id, chert_conn_id="chert").execute(
        make_context()
    )

    assert result == {"vendor": "chert", "conn_id": "chert", "target": chat_id, "outcome": "read"}
    (request,) = vendors.requests_to("chert", "/mark-read")
    assert request.path == f"/chats/{chat_id}/mark-read"
    assert chert.marked_read == [chat_id]


def test_ryze_mark_read_one_message(conns, vendors):
    result = RyzeMarkReadOperator(
        task_id="t", number=WA_CONTACT, message_id="3EB0ABC", ryze_conn_id="ryze"
    ).execute(make_context())

    assert result == {"vendor": "ryze", "conn_id": "ryze", "target": "3EB0ABC", "outcome": "read"}
    (request,) = vendors.requests_to("ryze", "/api/chat/markRead/")
    assert request.json() == {"messageId": "3EB0ABC", "number": WA_CONTACT.lstrip("+")}


def test_ryze_mark_read_whole_chat(conns, vendors):
    result = RyzeMarkReadOperator(
        task_id="t", number="120363041234567890@g.us", whole_chat=True, ryze_conn_id="ryze"
    ).execute(make_context())

    assert result["target"] == "120363041234567890@g.us"
    (request,) = vendors.requests_to("ryze", "/api/chat/markChatRead/")
    assert request.json() == {"number": "120363041234567890@g.us", "read": True}


def test_direct7_mark_read(conns, vendors):
    message_id = vendors.fakes["direct7"].add_inbound(sender=WA_CONTACT)

    result = Direct7MarkReadOperator(task_id="t", message_id=message_id, direct7_conn_id="d7").execute(
        make_context()
    )

    assert result == {"vendor": "direct7", "conn_id": "d7", "target": message_id, "outcome": "read"}
    assert vendors.fakes["direct7"].marked_read == [message_id]


def test_every_vendor_returns_the_same_small_json_result(conns, vendors):
    chat_id = vendors.fakes["chert"].add_chat(CONTACT)
    d7_message = vendors.fakes["direct7"].add_inbound(sender=WA_CONTACT)
    operators = [
        SendblueMarkReadOperator(task_id="a", number=CONTACT, sendblue_conn_id="sb"),
        ChertMarkReadOperator(task_id="b", chat_id=chat_id, chert_conn_id="chert"),
        RyzeMarkReadOperator(task_id="c", number=WA_CONTACT, whole_chat=True, ryze_conn_id="ryze"),
        Direct7MarkReadOperator(task_id="d", message_id=d7_message, direct7_conn_id="d7"),
    ]

    results = [op.execute(make_context()) for op in operators]

    assert {tuple(sorted(r)) for r in results} == {("conn_id", "outcome", "target", "vendor")}
    assert [r["vendor"] for r in results] == ["sendblue", "chert", "ryze", "direct7"]
    assert json.loads(json.dumps(results)) == results


GROUP = "120363041234567890@g.us"
SB, CH, RY, D7 = (
    {"sendblue_conn_id": "sb"},
    {"chert_conn_id": "chert"},
    {"ryze_conn_id": "ryze"},
    {"direct7_conn_id": "d7"},
)


@pytest.mark.parametrize(
    ("operator", "arguments", "vendor", "named"),
    [
        (SendblueMarkReadOperator, {**SB, "number": "4155551234"}, "sendblue", "number"),
        (SendblueMarkReadOperator, {**SB, "number": CONTACT, "from_number": "+1"}, "sendblue", "from_number"),
        (ChertMarkReadOperator, {**CH, "chat_id": "  "}, "chert", "chat_id"),
        (RyzeMarkReadOperator, {**RY, "number": GROUP, "message_id": "3EB0"}, "ryze", "sender"),
        (RyzeMarkReadOperator, {**RY, "number": WA_CONTACT}, "ryze", "message_id"),
        (RyzeMarkReadOperator, {**RY, "number": "not-a-jid@x", "whole_chat": True}, "ryze", "number"),
        (Direct7MarkReadOperator, {**D7, "message_id": ""}, "direct7", "message_id"),
        (SendblueSendMessageOperator, {**SB, "number": "+1415", "content": "hi"}, "sendblue", "number"),
        (SendblueSendMessageOperator, {**SB, "number": CONTACT, "content": " "}, "sendblue", "content"),
        (ChertSendMessageOperator, {**CH, "phone": "555-1234", "body": "hi"}, "chert", "phone"),
        (RyzeSendMessageOperator, {**RY, "number": "123", "message": "hi"}, "ryze", "number"),
        (Direct7SendMessageOperator, {**D7, "number": WA_CONTACT, "body": ""}, "direct7", "body"),
    ],
)
def test_bad_input_fails_before_any_http_call_naming_the_argument(
    conns, vendors, operator, arguments, vendor, named
):
    context = make_context()

    with pytest.raises(AirflowFailException, match=rf"^invalid {named}: "):
        operator(task_id="t", **arguments).execute(context)

    assert vendors.requests_to(vendor) == []
    assert context["task_state_store"].values == {}  # nothing recorded: a retry would not be refused


def test_a_vendor_refusal_fails_the_task_with_the_vendors_reason(conns, vendors):
    with pytest.raises(VendorAPIError, match="Chat not found"):
        ChertMarkReadOperator(task_id="t", chat_id="no-such-chat", chert_conn_id="chert").execute(
            make_context()
        )


def test_operators_build_their_hook_lazily(conns):
    operator = SendblueMarkReadOperator(task_id="t", number=CONTACT, sendblue_conn_id="sb")
    assert "hook" not in vars(operator)


def test_operator_modules_import_no_hook_at_parse_time():
    code = (
        "import sys\n"
        "from airflow.sdk import DAG, BaseOperator  # what every DAG file imports anyway\n"
        "before = set(sys.modules)\n"
        "import airflow_provider_readreceipts.operators.mark_read\n"
        "import airflow_provider_readreceipts.operators.send_message\n"
        "added = set(sys.modules) - before\n"
        "heavy = sorted(m for m in added if m.startswith(('airflow_provider_readreceipts.hooks', "
        "'airflow.providers.http', 'aiohttp', 'requests', 'phonenumbers', 'concurrent.futures.thread')))\n"
        "print(heavy)\n"
    )
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)  # noqa: S603
    assert output.stdout.strip().splitlines()[-1] == "[]"


# -- send -------------------------------------------------------------------------------------------


def test_sendblue_send_returns_a_message_ref_and_fills_the_status_callback(conns, vendors):
    context = make_context()
    ref = SendblueSendMessageOperator(
        task_id="t", number=CONTACT, content="Hi", sendblue_conn_id="sb"
    ).execute(context)

    (request,) = vendors.requests_to("sendblue", "/api/send-message")
    assert request.json() == {
        "number": CONTACT,
        "from_number": sendblue_fake.LINE,
        "content": "Hi",
        "status_callback": SB_RECEIVER,
    }
    assert set(ref) == {"vendor", "conn_id", "message_id", "chat", "recipient", "sent_at"}
    assert ref["recipient"] == CONTACT
    assert ref["message_id"] in vendors.fakes["sendblue"].messages
    assert (ref["vendor"], ref["conn_id"], ref["chat"]) == ("sendblue", "sb", CONTACT)
    assert ref["sent_at"].endswith("+00:00")
    assert context["task_state_store"].values[SEND_STATE_KEY] == {"state": "sent", "message_ref": ref}


@pytest.mark.parametrize(
    ("given", "sent"), [("https://dag.example/cb", "https://dag.example/cb"), ("", None)]
)
def test_sendblue_status_callback_given_by_the_dag_wins(conns, vendors, given, sent):
    SendblueSendMessageOperator(
        task_id="t", number=CONTACT, content="Hi", status_callback=given, sendblue_conn_id="sb"
    ).execute(make_context())

    (request,) = vendors.requests_to("sendblue", "/api/send-message")
    assert request.json().get("status_callback") == sent


def test_direct7_send_fills_the_report_url_with_the_webhook_token(conns, vendors):
    ref = Direct7SendMessageOperator(
        task_id="t", number=WA_CONTACT, body="Hello", direct7_conn_id="d7"
    ).execute(make_context())

    (request,) = vendors.requests_to("direct7", "/whatsapp/v2/send")
    (message,) = request.json()["messages"]
    assert message["report_url"] == f"{D7_RECEIVER}?token={D7_WEBHOOK_TOKEN}"
    assert message["originator"] == direct7_fake.ORIGINATOR
    assert ref["message_id"] in vendors.fakes["direct7"].reports  # the request_id
    assert (ref["vendor"], ref["chat"]) == ("direct7", WA_CONTACT)


def test_direct7_report_url_given_by_the_dag_is_used_as_given(conns, vendors):
    Direct7SendMessageOperator(
        task_id="t",
        number=WA_CONTACT,
        body="Hello",
        report_url="https://other.example/r",
        direct7_conn_id="d7",
    ).execute(make_context())

    (request,) = vendors.requests_to("direct7", "/whatsapp/v2/send")
    assert request.json()["messages"][0]["report_url"] == "https://other.example/r"


def test_ryze_send(conns, vendors):
    ref = RyzeSendMessageOperator(task_id="t", number=WA_CONTACT, message="Olá", ryze_conn_id="ryze").execute(
        make_context()
    )

    (request,) = vendors.requests_to("ryze", "/api/message/text/")
    assert request.json() == {"number": WA_CONTACT.lstrip("+"), "message": "Olá"}
    assert ref["message_id"] in vendors.fakes["ryze"].messages
    assert (ref["vendor"], ref["conn_id"], ref["chat"]) == ("ryze", "ryze", WA_CONTACT.lstrip("+"))


def test_chert_send_carries_an_idempotency_key_of_the_task_instance(conns, vendors):
    ref = ChertSendMessageOperator(task_id="t", phone=CONTACT, body="Hi", chert_conn_id="chert").execute(
        make_context(map_index=3)
    )

    (request,) = vendors.requests_to("chert", "/send")
    key = idempotency_key_for(dag_id="dag", run_id="manual__1", task_id="task", map_index=3)
    assert request.json() == {"phone": CONTACT, "body": "Hi", "idempotency_key": key}
    (message,) = vendors.fakes["chert"].messages()
    assert (ref["message_id"], ref["chat"]) == (message["id"], message["chat_id"])


def test_idempotency_keys_differ_per_task_instance_and_not_per_try():
    base = {"dag_id": "d", "run_id": "r", "task_id": "t", "map_index": -1}
    keys = {
        idempotency_key_for(**base),
        idempotency_key_for(**{**base, "map_index": 0}),
        idempotency_key_for(**{**base, "run_id": "r2"}),
        idempotency_key_for(**{**base, "task_id": "t2"}),
        idempotency_key_for(**{**base, "dag_id": "d2"}),
    }
    assert len(keys) == 5
    assert idempotency_key_for(**base) == idempotency_key_for(**base)
    assert idempotency_key_for(**base) == idempotency_key_for(**{**base, "map_index": None})


def test_a_task_that_already_sent_returns_its_reference_and_sends_nothing(conns, vendors):
    store = MemoryStateStore()
    operator = SendblueSendMessageOperator(task_id="t", number=CONTACT, content="Hi", sendblue_conn_id="sb")

    first = operator.execute(make_context(store))
    again = operator.execute(make_context(store, try_number=2))

    assert again == first
    assert len(vendors.requests_to("sendblue", "/api/send-message")) == 1


def test_unknown_outcome_fails_without_retry_and_keeps_the_record(conns, vendors):
    vendors.inject("sendblue", Fault(drop=True, path="/api/send-message"))
    context = make_context()

    with pytest.raises(AirflowFailException, match="not sent again") as caught:
        SendblueSendMessageOperator(task_id="t", number=CONTACT, content="Hi", sendblue_conn_id="sb").execute(
            context
        )

    assert "check Sendblue" in str(caught.value)
    assert len(vendors.requests_to("sendblue", "/api/send-message")) == 1
    assert context["task_state_store"].values[SEND_STATE_KEY]["state"] == "sending"


def test_a_refused_send_clears_the_record_so_a_retry_may_send(conns, vendors):
    vendors.inject(
        "sendblue", Fault(status=401, body={"status": "ERROR", "message": "Invalid API credentials"})
    )
    context = make_context()

    with pytest.raises(VendorAPIError, match="HTTP 401"):
        SendblueSendMessageOperator(task_id="t", number=CONTACT, content="Hi", sendblue_conn_id="sb").execute(
            context
        )

    assert context["task_state_store"].values == {}


def test_a_2xx_without_a_message_id_is_not_sent_again(conns, vendors):
    vendors.inject("ryze", Fault(status=200, body={"success": True}, path="/api/message/text/"))
    context = make_context()

    with pytest.raises(AirflowFailException, match="no messageId"):
        RyzeSendMessageOperator(task_id="t", number=WA_CONTACT, message="Hi", ryze_conn_id="ryze").execute(
            context
        )
    with pytest.raises(AirflowFailException, match="outcome is unknown"):
        RyzeSendMessageOperator(task_id="t", number=WA_CONTACT, message="Hi", ryze_conn_id="ryze").execute(
            context
        )

    assert len(vendors.requests_to("ryze", "/api/message/text/")) == 1


# -- real DAG runs: templating, mapping, retries ----------------------------------------------------


def test_templating_and_dynamic_task_mapping_with_dag_test(conns, vendors, run_dag):
    result = run_dag(
        """
        from airflow.sdk import DAG
        from airflow_provider_readreceipts.operators.mark_read import SendblueMarkReadOperator
        from airflow_provider_readreceipts.operators.send_message import (
            ChertSendMessageOperator,
            SendblueSendMessageOperator,
        )

        with DAG("ops_mapping", schedule=None, params={"contact": "+14155551234"}) as dag:
            send = SendblueSendMessageOperator.partial(
                task_id="send", content="Hi from {{ run_id }}", sendblue_conn_id="{{ 'sb' }}"
            ).expand(number=["+14155551234", "+14155550123"])
            chert = ChertSendMessageOperator.partial(
                task_id="chert", body="Hello", chert_conn_id="chert"
            ).expand(phone=["+14155551234", "+14155550123", "+12125550147"])
            mark = SendblueMarkReadOperator(
                task_id="mark", number="{{ params.contact }}", sendblue_conn_id="sb"
            )
            send >> mark
        """
    )

    assert result.state == "success"
    refs = [result.xcom("send", map_index=i) for i in (0, 1)]
    assert [ref["chat"] for ref in refs] == [CONTACT, OTHER]
    sent = vendors.requests_to("sendblue", "/api/send-message")
    assert sorted(r.json()["content"] for r in sent) == [f"Hi from {result.run_id}"] * 2
    assert {ref["message_id"] for ref in refs} == set(vendors.fakes["sendblue"].messages)
    assert result.xcom("mark") == {
        "vendor": "sendblue",
        "conn_id": "sb",
        "target": CONTACT,
        "outcome": "read",
    }

    keys = [r.json()["idempotency_key"] for r in vendors.requests_to("chert", "/send")]
    expected = {
        idempotency_key_for(dag_id="ops_mapping", run_id=result.run_id, task_id="chert", map_index=i)
        for i in range(3)
    }
    assert set(keys) == expected
    assert [result.xcom("chert", map_index=i)["vendor"] for i in range(3)] == ["chert"] * 3


def test_chert_retry_reuses_the_idempotency_key_and_sends_once(conns, vendors, run_dag):
    vendors.fakes["chert"].lose_next_answers(1)  # the message is sent, the answer lost: the task fails

    result = run_dag(
        """
        from datetime import timedelta
        from functools import cached_property

        from airflow.sdk import DAG
        from airflow_provider_readreceipts.hooks.chert import ChertHook
        from airflow_provider_readreceipts.operators.send_message import ChertSendMessageOperator

        class OneAttempt(ChertSendMessageOperator):
            @cached_property
            def hook(self):  # no retry inside the try: the task retry is what is under test
                return ChertHook(chert_conn_id=self.chert_conn_id, max_attempts=1)

        with DAG("ops_chert_retry", schedule=None) as dag:
            OneAttempt(task_id="send", phone="+14155551234", body="Hi", chert_conn_id="chert",
                       retries=1, retry_delay=timedelta(0))
        """
    )

    assert result.state == "success"
    assert result.ti("send").try_number == 2
    assert "Upstream timeout" in result.errors("send")[0]
    requests = vendors.requests_to("chert", "/send")
    assert len(requests) == 2
    assert requests[0].json()["idempotency_key"] == requests[1].json()["idempotency_key"]
    (message,) = vendors.fakes["chert"].messages()
    assert result.xcom("send")["message_id"] == message["id"]


CRASH_AFTER_SENDING = """
from datetime import timedelta
from functools import cached_property

from airflow.sdk import DAG
from airflow_provider_readreceipts.hooks.sendblue import SendblueHook
from airflow_provider_readreceipts.operators.send_message import SendblueSendMessageOperator


class WorkerLostAfterSending(SendblueHook):
    crashes = [1]  # shared by every try of the task

    def send_message(self, **kwargs):
        response = super().send_message(**kwargs)
        if self.crashes:
            self.crashes.pop()
            raise RuntimeError("worker lost after the request went out")
        return response


class Send(SendblueSendMessageOperator):
    @cached_property
    def hook(self):
        return WorkerLostAfterSending(sendblue_conn_id=self.sendblue_conn_id)


with DAG("ops_no_double_send", schedule=None) as dag:
    Send(task_id="send", number="+14155551234", content="Hi", sendblue_conn_id="sb",
         retries=2, retry_delay=timedelta(0))
"""


def test_retry_after_an_unknown_outcome_does_not_send_again(conns, vendors, run_dag):
    result = run_dag(CRASH_AFTER_SENDING)

    assert result.state == "failed"
    assert result.ti("send").try_number == 2  # one retry ran, and it refused to send
    first, second = result.errors("send")
    assert "worker lost" in first
    assert "outcome is unknown" in second
    assert "not sent again" in second
    assert "state-store/readreceipts.send" in second
    assert len(vendors.requests_to("sendblue", "/api/send-message")) == 1
    assert len(vendors.fakes["sendblue"].messages) == 1


def test_a_dropped_connection_fails_at_once_despite_retries(conns, vendors, run_dag):
    vendors.inject("sendblue", Fault(drop=True, path="/api/send-message"))

    result = run_dag(
        """
        from datetime import timedelta
        from airflow.sdk import DAG
        from airflow_provider_readreceipts.operators.send_message import SendblueSendMessageOperator

        with DAG("ops_dropped", schedule=None) as dag:
            SendblueSendMessageOperator(task_id="send", number="+14155551234", content="Hi",
                                        sendblue_conn_id="sb", retries=3, retry_delay=timedelta(0))
        """
    )

    assert result.ti("send").state == "failed"
    assert result.ti("send").try_number == 1
    assert "may have been sent" in result.errors("send")[0]
    assert len(vendors.requests_to("sendblue", "/api/send-message")) == 1


def test_a_refused_send_is_retried_and_sent_once(conns, vendors, run_dag):
    vendors.inject("sendblue", Fault(status=400, body={"status": "ERROR", "message": "Try later"}))

    result = run_dag(
        """
        from datetime import timedelta
        from airflow.sdk import DAG
        from airflow_provider_readreceipts.operators.send_message import SendblueSendMessageOperator

        with DAG("ops_refused", schedule=None) as dag:
            SendblueSendMessageOperator(task_id="send", number="+14155551234", content="Hi",
                                        sendblue_conn_id="sb", retries=1, retry_delay=timedelta(0))
        """
    )

    assert result.state == "success"
    assert result.ti("send").try_number == 2
    assert "Try later" in result.errors("send")[0]
    assert len(vendors.requests_to("sendblue", "/api/send-message")) == 2
    (handle,) = vendors.fakes["sendblue"].messages
    assert result.xcom("send")["message_id"] == handle


def test_bulk_takes_its_items_from_an_upstream_xcom(conns, vendors, run_dag):
    chert = vendors.fakes["chert"]
    chats = [chert.add_chat(f"+1415555{n:04d}") for n in range(5)]

    result = run_dag(
        f"""
        from airflow.sdk import DAG, task
        from airflow_provider_readreceipts.operators.mark_read import ChertBulkMarkReadOperator

        with DAG("ops_bulk_xcom", schedule=None) as dag:
            @task
            def unread_chats():
                return {chats!r}

            ChertBulkMarkReadOperator(task_id="mark_all", chat_ids=unread_chats(), chert_conn_id="chert")
        """
    )

    assert result.state == "success"
    report = result.xcom("mark_all")
    assert (report["total"], report["read"], report["failures"]) == (5, 5, [])
    assert sorted(chert.marked_read) == sorted(chats)


# -- many at once -----------------------------------------------------------------------------------


@pytest.fixture
def inbox(vendors) -> dict[str, list[Any]]:
    """560 Chert chats: 520 that exist, 25 unknown to Chert, 10 refused with 4099, 5 unusable ids."""
    chert = vendors.fakes["chert"]
    known = [chert.add_chat(f"+1415{n:07d}") for n in range(530)]
    refused = known[-10:]
    for chat_id in refused:
        chert.fail_mark_read(chat_id, 4099)
    unknown = [f"missing-{n}" for n in range(25)]
    invalid: list[Any] = ["", "   ", None, 42, {"chat": "x"}]
    items: list[Any] = [*known, *unknown, *invalid, known[0], known[1]]  # two duplicates
    random.Random(7).shuffle(items)
    return {"items": items, "known": known[:-10], "refused": refused, "unknown": unknown, "invalid": invalid}


def test_bulk_reports_every_item_and_passes_within_the_threshold(conns, vendors, inbox):
    operator = ChertBulkMarkReadOperator(
        task_id="t", chat_ids=inbox["items"], chert_conn_id="chert", max_failures=None, max_failure_rate=0.1
    )

    report = operator.execute(make_context())

    assert (report["vendor"], report["conn_id"]) == ("chert", "chert")
    assert (report["total"], report["read"], report["failed"], report["invalid"]) == (560, 520, 35, 5)
    assert sorted(vendors.fakes["chert"].marked_read) == sorted(inbox["known"])
    failed = {f["target"]: f for f in report["failures"] if f["outcome"] == "failed"}
    assert set(failed) == set(inbox["unknown"]) | set(inbox["refused"])
    assert "Chat not found" in failed[inbox["unknown"][0]]["error"]
    assert "HTTP 501" in failed[inbox["refused"][0]]["error"]
    invalid = [f["error"] for f in report["failures"] if f["outcome"] == "invalid"]
    assert len(invalid) == 5
    assert all(error.startswith("chat_ids[") for error in invalid)
    # Invalid items and duplicates never reach the vendor; nothing is asked twice.
    assert len(vendors.requests_to("chert", "/mark-read")) == 555
    assert json.loads(json.dumps(report)) == report


def test_bulk_fails_past_the_threshold_naming_the_failed_items(conns, vendors, inbox):
    ti_context = make_context()
    operator = ChertBulkMarkReadOperator(
        task_id="t", chat_ids=inbox["items"], chert_conn_id="chert", max_failures=30
    )

    with pytest.raises(AirflowException) as caught:
        operator.execute(ti_context)

    message = str(caught.value)
    assert not isinstance(caught.value, AirflowFailException)  # vendor failures: a retry may help
    assert message.startswith(
        "40 of 560 could not be marked read (35 failed, 5 invalid), more than max_failures=30"
    )
    report = ti_context["ti"].xcoms["report"]
    named = [f["target"] for f in report["failures"][:20]]
    assert all(target in message for target in named if target)
    assert "and 20 more" in message
    assert report["read"] == 520


def test_bulk_failure_rate_threshold(conns, vendors, inbox):
    operator = ChertBulkMarkReadOperator(
        task_id="t", chat_ids=inbox["items"], chert_conn_id="chert", max_failures=None, max_failure_rate=0.05
    )

    with pytest.raises(AirflowException, match=r"7\.1% of the items, more than max_failure_rate=0\.05"):
        operator.execute(make_context())


def test_bulk_with_only_bad_input_fails_without_retry(conns, vendors):
    operator = SendblueBulkMarkReadOperator(
        task_id="t", numbers=[CONTACT, "+1415", "4155550123"], sendblue_conn_id="sb"
    )

    with pytest.raises(AirflowFailException) as caught:
        operator.execute(make_context())

    assert "numbers[1]: '+1415' is not a valid phone number" in str(caught.value)
    assert "numbers[2]: '4155550123' has no country code" in str(caught.value)
    assert vendors.fakes["sendblue"].marked_read == [(CONTACT, sendblue_fake.LINE)]


def test_bulk_task_wide_bad_input_fails_before_any_http_call(conns, vendors):
    with pytest.raises(AirflowFailException, match=r"^invalid from_number: "):
        SendblueBulkMarkReadOperator(
            task_id="t", numbers=[CONTACT], from_number="12", sendblue_conn_id="sb"
        ).execute(make_context())
    with pytest.raises(AirflowFailException, match=r"^invalid numbers: must be a list, not str"):
        SendblueBulkMarkReadOperator(task_id="t", numbers="{{ x }}", sendblue_conn_id="sb").execute(
            make_context()
        )
    assert vendors.requests_to("sendblue") == []


def test_bulk_transient_errors_are_retried_by_the_hook(conns, vendors):
    numbers = [f"+1415555{n:04d}" for n in range(40)]
    vendors.inject("sendblue", *[Fault(status=503, headers={"Retry-After": "0"}) for _ in range(5)])

    report = SendblueBulkMarkReadOperator(task_id="t", numbers=numbers, sendblue_conn_id="sb").execute(
        make_context()
    )

    assert (report["read"], report["failures"]) == (40, [])
    assert len(vendors.requests_to("sendblue", "/api/mark-read")) == 45


def test_ryze_bulk_chats_and_messages_with_per_item_errors(conns, vendors):
    group = "120363041234567890@g.us"
    items = [
        WA_CONTACT,
        WA_CONTACT.lstrip("+"),  # the same chat in RyzeAPI's digits-only form: marked once
        group,
        {"number": group, "message_id": "3EB0AA", "sender": "+5511912345678"},
        {"number": group, "message_id": "3EB0BB"},  # a group message without its author
        {"number": WA_CONTACT, "message_id": "3EB0CC", "extra": 1},
        "123",
    ]

    report = RyzeBulkMarkReadOperator(
        task_id="t", chats=items, ryze_conn_id="ryze", max_failures=None
    ).execute(make_context())

    ryze = vendors.fakes["ryze"]
    assert sorted(ryze.chats_marked_read) == sorted([WA_CONTACT.lstrip("+"), group])
    assert [m["messageId"] for m in ryze.marked_read] == ["3EB0AA"]
    errors = sorted(f["error"] for f in report["failures"])
    assert errors[0].startswith("chats[4].sender: is required for a group chat")
    assert errors[1].startswith("chats[5]: unknown keys ['extra']")
    assert errors[2].startswith("chats[6]: '123' read country code first")
    assert (report["total"], report["read"], report["invalid"]) == (6, 3, 3)


def test_direct7_bulk(conns, vendors):
    direct7 = vendors.fakes["direct7"]
    ids = [direct7.add_inbound(sender=WA_CONTACT) for _ in range(12)]

    report = Direct7BulkMarkReadOperator(
        task_id="t", message_ids=[*ids, "unknown-id"], direct7_conn_id="d7", max_failures=1
    ).execute(make_context())

    assert report["read"] == 12
    (failure,) = report["failures"]
    assert failure["target"] == "unknown-id"
    assert "WHATSAPP_MESSAGE_NOT_EXISTS" in failure["error"]
    assert sorted(direct7.marked_read) == sorted(ids)


def test_ryze_bulk_keeps_to_its_default_rate_limit():
    operator = RyzeBulkMarkReadOperator(task_id="t", chats=[WA_CONTACT])
    assert (operator.rate_limit, operator.rate_limit_period) == (100, 60.0)
    assert SendblueBulkMarkReadOperator(task_id="s", numbers=[]).rate_limit is None


def test_rate_limit_holds_at_the_vendor_in_a_real_run(conns, vendors):
    ryze = vendors.fakes["ryze"]
    ryze.rate_limit, ryze.window_seconds = 6, 1.0  # the vendor refuses a 7th request in any second
    chats = [f"+55119876{n:05d}" for n in range(24)]

    report = RyzeBulkMarkReadOperator(
        task_id="t", chats=chats, ryze_conn_id="ryze", rate_limit=6, rate_limit_period=1.0, max_concurrency=8
    ).execute(make_context())

    assert (report["read"], report["failures"]) == (24, [])
    assert ryze.peak_requests_per_window() <= 6  # 429s included: none was needed
    arrivals = sorted(r.received_at for r in vendors.requests_to("ryze"))
    assert len(arrivals) == 24
    assert max_in_any_window(arrivals, 1.0) <= 6


# -- the limiter ------------------------------------------------------------------------------------


def max_in_any_window(times: list[float], period: float) -> int:
    times = sorted(times)
    peak, start = 0, 0
    for end, at in enumerate(times):
        while at - times[start] >= period:
            start += 1
        peak = max(peak, end - start + 1)
    return peak


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_limiter_counts_a_request_until_a_period_after_it_finished():
    clock = FakeClock()
    limiter = SlidingWindowRateLimiter(3, 10.0, clock=clock)

    assert [limiter.try_acquire() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.try_acquire() is None  # all three in flight: wait for one to finish
    clock.now = 2.0
    limiter.release()  # finished at 2.0: counted until 12.0
    assert limiter.try_acquire() == pytest.approx(10.0)
    clock.now = 11.9
    assert limiter.try_acquire() == pytest.approx(0.1)
    clock.now = 12.0
    assert limiter.try_acquire() == 0.0


def test_limiter_rejects_nonsense():
    with pytest.raises(ValueError, match="limit"):
        SlidingWindowRateLimiter(0)
    with pytest.raises(ValueError, match="period"):
        SlidingWindowRateLimiter(5, 0)


@settings(max_examples=60, deadline=None)
@given(
    limit=st.integers(1, 8),
    workers=st.integers(1, 12),
    durations=st.lists(st.floats(0.0, 3.0), min_size=1, max_size=60),
    arrival_points=st.lists(st.floats(0.0, 1.0), min_size=60, max_size=60),
)
def test_limiter_never_exceeds_the_limit_in_any_window_whatever_the_latency(
    limit, workers, durations, arrival_points
):
    """
    A discrete-event run on a fake clock: ``workers`` threads send requests that take ``durations``
    and reach the vendor at any point of their flight. Every window of the period at the vendor
    holds at most ``limit`` arrivals.
    """
    period = 1.0
    clock = FakeClock()
    limiter = SlidingWindowRateLimiter(limit, period, clock=clock)
    pending = list(enumerate(durations))
    arrivals: list[float] = []
    events: list[tuple[float, int, str, int]] = [(0.0, w, "free", -1) for w in range(workers)]
    heapq.heapify(events)
    while events:
        clock.now, worker, kind, _ = heapq.heappop(events)
        if kind == "done":
            limiter.release()
            kind = "free"
        if kind == "free" and pending:
            wait = limiter.try_acquire()
            if wait == 0.0:
                index, duration = pending.pop(0)
                arrivals.append(clock.now + arrival_points[index] * duration)
                heapq.heappush(events, (clock.now + duration, worker, "done", index))
            else:
                # None: every slot is in flight; look again at the next event (or a moment later).
                retry_at = clock.now + (wait if wait else 0.01)
                heapq.heappush(events, (retry_at, worker, "free", -1))

    assert len(arrivals) == len(durations)
    assert max_in_any_window(arrivals, period) <= limit
