"""Direct7Hook over real HTTP against the Direct7 fake, and its webhook adapter."""

from __future__ import annotations

import json
import logging

import pytest

from airflow_provider_readreceipts.hooks import hook_for
from airflow_provider_readreceipts.hooks.base import WebhookRequest
from airflow_provider_readreceipts.hooks.direct7 import PROBE_REQUEST_ID, Direct7Hook
from airflow_provider_readreceipts.receipts import (
    DeliveryUnknownError,
    InvalidInputError,
    Status,
    VendorAPIError,
    WebhookAuthError,
    WebhookPayloadError,
)
from airflow_provider_readreceipts.testing.fakes import direct7 as fake
from airflow_provider_readreceipts.testing.fakes.server import Fault

CONTACT = "+14155551234"
WEBHOOK_TOKEN = "d7-webhook-token-Rk2p"


@pytest.fixture
def make_hook(vendors, airflow_connection):
    def make(*, password: str = fake.API_TOKEN, extra: dict | None = None, **kwargs) -> Direct7Hook:
        conn_id = airflow_connection(
            "d7_test",
            "direct7",
            host=vendors.url("direct7"),
            password=password,
            extra={
                "originator": fake.ORIGINATOR,
                "webhook_token": WEBHOOK_TOKEN,
                "receiver_url": "https://airflow.example.com/readreceipts/webhooks/d7_test",
                **(extra or {}),
            },
        )
        kwargs.setdefault("retry_max_seconds", 10)
        return Direct7Hook(direct7_conn_id=conn_id, **kwargs)

    return make


@pytest.fixture
def hook(make_hook) -> Direct7Hook:
    return make_hook()


@pytest.fixture
def direct7(vendors) -> fake.Direct7Fake:
    return vendors.fakes["direct7"]


def test_hook_identity_and_registry():
    assert (Direct7Hook.conn_name_attr, Direct7Hook.conn_type, Direct7Hook.hook_name) == (
        "direct7_conn_id",
        "direct7",
        "Direct7 Networks (WhatsApp)",
    )
    assert Direct7Hook.default_base_url == "https://api.d7networks.com"
    assert Direct7Hook.secret_extras == ("webhook_token",)
    hook = hook_for("some_d7", "direct7")
    assert isinstance(hook, Direct7Hook) and hook.direct7_conn_id == "some_d7"


# -- mark read ------------------------------------------------------------------------------------


def test_mark_read_sends_the_documented_request(hook, vendors, direct7):
    message_id = direct7.add_inbound(sender=CONTACT)

    result = hook.mark_read(message_id=message_id)

    assert result == {"message": "Message successfully marked as read"}
    (request,) = vendors.requests_to("direct7")
    assert (request.method, request.path) == ("POST", f"/whatsapp/v2/read-receipt/{message_id}")
    assert request.body == b"{}", "the official SDK sends an empty JSON object"
    assert request.header("content-type") == "application/json"
    assert request.header("authorization") == f"Bearer {fake.API_TOKEN}"
    assert direct7.marked_read == [message_id]


def test_mark_read_can_show_typing(hook, vendors, direct7):
    hook.mark_read(message_id=direct7.add_inbound(sender=CONTACT), show_typing=True)
    assert vendors.requests_to("direct7")[0].json() == {"typing": True}


def test_mark_read_is_idempotent_and_retried_after_5xx(hook, vendors, direct7):
    message_id = direct7.add_inbound(sender=CONTACT)
    vendors.inject("direct7", Fault(status=503, body={"detail": "upstream down"}))

    hook.mark_read(message_id=message_id)
    hook.mark_read(message_id=message_id)

    assert len(vendors.requests_to("direct7", "/read-receipt/")) == 3
    assert direct7.marked_read == [message_id, message_id]


def test_mark_read_of_an_unknown_message_is_a_clear_404(hook, vendors):
    with pytest.raises(VendorAPIError) as caught:
        hook.mark_read(message_id="492a17b0-9cd7-11ef-b4bf-0242ac1b0024")

    error = caught.value
    assert (error.vendor, error.status_code, error.code, error.retryable) == (
        "Direct7",
        404,
        "WHATSAPP_MESSAGE_NOT_EXISTS",
        False,
    )
    assert error.message.startswith("Given whatsapp message id not exists")
    assert len(vendors.requests_to("direct7")) == 1, "a 404 is not retried"


def test_message_id_cannot_change_the_endpoint(hook, vendors):
    with pytest.raises(VendorAPIError) as caught:
        hook.mark_read(message_id="../send?x=1")

    assert caught.value.status_code == 404
    (request,) = vendors.requests_to("direct7")
    assert request.path == "/whatsapp/v2/read-receipt/..%2Fsend%3Fx%3D1"
    assert request.query == {}


def test_429_waits_for_retry_after(hook, vendors, direct7):
    message_id = direct7.add_inbound(sender=CONTACT)
    vendors.inject("direct7", Fault(status=429, body={"detail": "Too many"}, headers={"Retry-After": "1"}))

    hook.mark_read(message_id=message_id)

    first, second = vendors.requests_to("direct7")
    assert second.received_at - first.received_at >= 0.9
    assert direct7.marked_read == [message_id]


# -- send -----------------------------------------------------------------------------------------


def test_send_sends_the_documented_body(hook, vendors, direct7):
    sent = hook.send_message(
        number="+1 (415) 555-1234", body="Hi there", report_url="https://hooks.example/d7"
    )

    assert sent["status"] == "accepted"
    assert sent["request_id"] in direct7.reports
    (request,) = vendors.requests_to("direct7", "/whatsapp/v2/send")
    assert request.json() == {
        "messages": [
            {
                "originator": fake.ORIGINATOR,
                "recipients": [{"recipient": CONTACT}],
                "content": {"message_type": "TEXT", "text": {"body": "Hi there"}},
                "report_url": "https://hooks.example/d7",
            }
        ]
    }
    assert request.header("authorization") == f"Bearer {fake.API_TOKEN}"


def test_send_without_report_url_leaves_it_out_and_takes_an_explicit_originator(hook, vendors):
    hook.send_message(number=CONTACT, body="Hi", originator="+971 50 975 2655")

    (request,) = vendors.requests_to("direct7", "/whatsapp/v2/send")
    message = request.json()["messages"][0]
    assert message["originator"] == "+971509752655"
    assert "report_url" not in message


def test_report_url_from_connection_carries_the_token(make_hook):
    hook = make_hook(extra={"receiver_url": "https://airflow.example.com/hooks/d7?env=prod&token=old"})
    assert (
        hook.report_url_from_connection()
        == f"https://airflow.example.com/hooks/d7?env=prod&token={WEBHOOK_TOKEN}"
    )


def test_report_url_from_connection_without_receiver_or_token(make_hook):
    assert make_hook(extra={"receiver_url": ""}).report_url_from_connection() is None
    with pytest.raises(InvalidInputError, match="no webhook_token"):
        make_hook(extra={"webhook_token": ""}).report_url_from_connection()


def test_send_then_status(hook, direct7):
    request_id = hook.send_message(number=CONTACT, body="Hi")["request_id"]
    direct7.set_status(request_id, "read", reason="Read by the user")

    report = hook.get_status(request_id)

    assert report["request_id"] == request_id
    (message,) = report["messages"]
    assert (message["recipient"], message["status"]) == (CONTACT, "read")


def test_vendor_422_names_the_fields(hook, vendors):
    # The hook validates first, so reach Direct7's own 422 with a raw request.
    bad_body = {"messages": [{"originator": fake.ORIGINATOR, "recipients": [{}], "content": {}}]}
    with pytest.raises(VendorAPIError) as caught:
        hook.request("send_message", "POST", "/whatsapp/v2/send", json_body=bad_body, idempotent=False)

    error = caught.value
    assert (error.status_code, error.retryable) == (422, False)
    assert error.message == (
        "invalid request: messages[0].recipients[0].recipient: field required; "
        "messages[0].content.message_type: field required"
    )
    assert not isinstance(error, DeliveryUnknownError)
    assert len(vendors.requests_to("direct7")) == 1


def test_insufficient_credit_is_a_402_not_retried(hook, vendors, direct7):
    direct7.insufficient_credit = True

    with pytest.raises(VendorAPIError) as caught:
        hook.send_message(number=CONTACT, body="Hi")

    error = caught.value
    assert (error.status_code, error.code, error.retryable) == (402, "INSUFFICIENT_CREDIT", False)
    assert not isinstance(error, DeliveryUnknownError), "a 402 surely sent nothing"
    assert "recharge" in error.message
    assert len(vendors.requests_to("direct7")) == 1
    assert direct7.reports == {}


@pytest.mark.parametrize(
    ("fault", "expected"),
    [
        (Fault(status=503, body={"detail": "upstream"}), "may have been sent"),
        (Fault(status=500), "may have been sent"),
        (Fault(delay=1.5), "did not answer in time"),
        (Fault(drop=True), "connection failed"),
    ],
    ids=["503", "500", "timeout", "dropped"],
)
def test_send_with_an_unknown_outcome_is_not_repeated(make_hook, vendors, fault, expected):
    vendors.inject("direct7", fault)

    with pytest.raises(DeliveryUnknownError, match=expected):
        make_hook(timeout=0.5).send_message(number=CONTACT, body="Hi")

    assert len(vendors.requests_to("direct7", "/whatsapp/v2/send")) == 1


def test_send_after_429_is_retried_once_it_surely_did_nothing(hook, vendors, direct7):
    vendors.inject("direct7", Fault(status=429, headers={"Retry-After": "0"}))

    sent = hook.send_message(number=CONTACT, body="Hi")

    assert len(vendors.requests_to("direct7", "/whatsapp/v2/send")) == 2
    assert list(direct7.reports) == [sent["request_id"]]


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda h: h.mark_read(message_id="  "), "message_id"),
        (lambda h: h.mark_read(message_id=None), "message_id"),
        (lambda h: h.send_message(number="0501234567", body="Hi"), "number"),
        (lambda h: h.send_message(number="+1 555", body="Hi"), "number"),
        (lambda h: h.send_message(number=CONTACT, body=""), "body"),
        (lambda h: h.send_message(number=CONTACT, body="x" * 4097), "body"),
        (lambda h: h.send_message(number=CONTACT, body="Hi", originator="D7 Shop"), "originator"),
        (lambda h: h.send_message(number=CONTACT, body="Hi", report_url="ftp://x.example"), "report_url"),
        (lambda h: h.send_message(number=CONTACT, body="Hi", report_url="hooks.example/d7"), "report_url"),
        (lambda h: h.get_status(""), "request_id"),
    ],
)
def test_bad_input_fails_before_any_request(hook, vendors, call, field):
    with pytest.raises(InvalidInputError) as caught:
        call(hook)
    assert caught.value.field == field
    assert vendors.requests_to("direct7") == []


def test_send_without_any_originator_names_the_field(make_hook, vendors):
    with pytest.raises(InvalidInputError) as caught:
        make_hook(extra={"originator": ""}).send_message(number=CONTACT, body="Hi")
    assert caught.value.field == "originator"
    assert vendors.requests_to("direct7") == []


def test_bad_report_url_error_does_not_quote_the_url(hook):
    with pytest.raises(InvalidInputError) as caught:
        hook.send_message(number=CONTACT, body="Hi", report_url=f"ftp://x.example/?token={WEBHOOK_TOKEN}")
    assert WEBHOOK_TOKEN not in str(caught.value)


# -- credentials, connection test, secrets --------------------------------------------------------


def test_wrong_token_fails_the_connection_test(make_hook, vendors):
    ok, message = make_hook(password="wrong-token-777").test_connection()

    assert not ok
    assert "HTTP 401" in message and "ACCESS_TOKEN_SIGNATURE_VERIFICATION_FAILED" in message
    assert "wrong-token-777" not in message
    assert len(vendors.requests_to("direct7")) == 1, "a 401 is not retried"


def test_test_connection_is_a_read_only_report_lookup(hook, vendors, direct7):
    ok, message = hook.test_connection()

    assert ok, message
    assert message == f"Connected to Direct7 at {vendors.url('direct7')}"
    (request,) = vendors.requests_to("direct7")
    assert (request.method, request.path) == ("GET", f"/whatsapp/v2/report/{PROBE_REQUEST_ID}")
    assert direct7.reports == {} and direct7.marked_read == []


def test_test_connection_reports_a_server_error(make_hook, vendors):
    vendors.inject("direct7", *[Fault(status=503, body={"detail": "maintenance"}) for _ in range(2)])
    ok, message = make_hook(max_attempts=2).test_connection()
    assert not ok and "maintenance" in message


def test_connection_without_a_token_is_refused(vendors, airflow_connection):
    conn_id = airflow_connection("d7_empty", "direct7", host=vendors.url("direct7"))
    with pytest.raises(InvalidInputError, match="API token as the password"):
        Direct7Hook(direct7_conn_id=conn_id).get_status("r-1")
    assert vendors.requests_to("direct7") == []


def test_empty_host_means_the_public_api(airflow_connection):
    conn_id = airflow_connection("d7_default_host", "direct7", password="t")
    hook = Direct7Hook(direct7_conn_id=conn_id)
    hook.get_conn()
    assert hook.base_url == "https://api.d7networks.com"


def test_no_extras_leak_as_headers(hook, vendors, direct7):
    hook.mark_read(message_id=direct7.add_inbound(sender=CONTACT))
    (request,) = vendors.requests_to("direct7")
    assert WEBHOOK_TOKEN not in str(request.headers)
    assert "originator" not in request.headers and "webhook_token" not in request.headers


def test_secrets_stay_out_of_logs_errors_and_repr(make_hook, vendors, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    vendors.inject("direct7", Fault(status=503), Fault(status=503))
    hook = make_hook(max_attempts=2)

    with pytest.raises(VendorAPIError) as caught:
        hook.get_status("r-1")

    logs = capsys.readouterr().out + caplog.text
    exposed = "\n".join([logs, str(caught.value), repr(caught.value), repr(hook), repr(hook.get_conn().auth)])
    assert "retrying" in logs
    for secret in (fake.API_TOKEN, WEBHOOK_TOKEN):
        assert secret not in exposed


# -- async status and reconcile -------------------------------------------------------------------


async def test_async_status_uses_the_same_auth_and_errors(hook, vendors, direct7):
    request_id = hook.send_message(number=CONTACT, body="Hi")["request_id"]
    direct7.set_status(request_id, "Delivered")
    try:
        report = await hook.aget_status(request_id)
        with pytest.raises(VendorAPIError) as caught:
            await hook.aget_status("no-such-request")
    finally:
        await hook.aclose()

    assert report["messages"][0]["status"] == "Delivered"
    assert (caught.value.status_code, caught.value.code) == (404, "WHATSAPP_LOG_NOT_EXISTS")
    gets = vendors.requests_to("direct7", method="GET")
    assert [r.header("authorization") for r in gets] == [f"Bearer {fake.API_TOKEN}"] * 2


async def test_async_calls_never_load_the_connection_with_a_blocking_call(hook, direct7, monkeypatch):
    request_id = hook.send_message(number=CONTACT, body="Hi")["request_id"]
    direct7.set_status(request_id, "read")
    fresh = Direct7Hook(direct7_conn_id="d7_test")

    def blocking_lookup(*args, **kwargs):
        raise AssertionError("a blocking connection look-up inside the event loop")

    monkeypatch.setattr(fresh, "get_connection", blocking_lookup)
    try:
        (event,) = await fresh.afetch_receipt_events(message_id=request_id)
    finally:
        await fresh.aclose()

    assert (event.message_id, event.status) == (request_id, Status.READ)


async def test_async_status_honours_retry_after(hook, vendors, direct7):
    request_id = hook.send_message(number=CONTACT, body="Hi")["request_id"]
    vendors.inject("direct7", Fault(status=429, headers={"Retry-After": "1"}, method="GET"))
    try:
        await hook.aget_status(request_id)
    finally:
        await hook.aclose()

    first, second = vendors.requests_to("direct7", method="GET")
    assert second.received_at - first.received_at >= 0.9


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("read", Status.READ), ("Delivered", Status.DELIVERED), ("accepted", Status.QUEUED)],
)
async def test_reconcile_maps_the_report_to_events_on_the_request_id(hook, direct7, raw, expected):
    request_id = hook.send_message(number=CONTACT, body="Hi")["request_id"]
    direct7.set_status(request_id, raw)
    try:
        (event,) = await hook.afetch_receipt_events(message_id=request_id, chat=CONTACT)
    finally:
        await hook.aclose()

    assert (event.vendor, event.conn_id, event.message_id) == ("direct7", "d7_test", request_id)
    assert (event.status, event.raw_status, event.chat_id) == (expected, raw, CONTACT)
    assert event.payload["msg_id"] == direct7.reports[request_id]["messages"][0]["msg_id"]
    assert event.error_message == ""


async def test_reconcile_of_a_dropped_message_keeps_the_reason(hook, direct7):
    request_id = hook.send_message(number=CONTACT, body="Hi")["request_id"]
    direct7.set_status(request_id, "Dropped", reason="Re-engagement window closed")
    try:
        (event,) = await hook.afetch_receipt_events(message_id=request_id)
    finally:
        await hook.aclose()

    assert (event.status, event.error_message) == (Status.FAILED, "Re-engagement window closed")


# -- webhooks: authenticity -----------------------------------------------------------------------


def _webhook(body, *, query=None, headers=None) -> WebhookRequest:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return WebhookRequest(
        conn_id="d7_test",
        headers=headers if headers is not None else {},
        query=query if query is not None else {"token": WEBHOOK_TOKEN},
        body=raw,
        received_at=0.0,
    )


REPORT = {
    "event_type": "DELIVERY_EVENTS",
    "timestamp": 1695645887348,
    "date": "2023-September-25",
    "request_id": "d9835609-a4e0-10ea-a26a-eeafbe700fef",
    "msg_id": "7053a678-75fe-11ed-9e31-0242ac14001c",
    "conversation_type": "marketing",
    "message_type": "TEXT",
    "recipient": "+971509752655",
    "originator": "+971501234567",
    "cust_ref": "order-7",
    "status": "Read",
    "surprise_field": {"kept": True},
}


def test_token_in_the_query_is_accepted(hook):
    hook.verify_webhook(_webhook(REPORT, query={"token": WEBHOOK_TOKEN}))


def test_token_in_the_header_is_accepted(hook):
    hook.verify_webhook(_webhook(REPORT, query={}, headers={"x-webhook-token": WEBHOOK_TOKEN}))


def test_token_header_name_is_configurable(make_hook):
    hook = make_hook(extra={"webhook_header_name": "X-D7-Secret"})
    hook.verify_webhook(_webhook(REPORT, query={}, headers={"x-d7-secret": WEBHOOK_TOKEN}))
    with pytest.raises(WebhookAuthError):
        hook.verify_webhook(_webhook(REPORT, query={}, headers={"x-webhook-token": WEBHOOK_TOKEN}))


@pytest.mark.parametrize(
    ("query", "headers"),
    [
        ({}, {}),
        ({"token": "wrong"}, {}),
        ({}, {"x-webhook-token": "wrong"}),
        ({"token": ""}, {"x-webhook-token": ""}),
        ({"Token": WEBHOOK_TOKEN}, {"authorization": f"Bearer {WEBHOOK_TOKEN}"}),
        ({"token": WEBHOOK_TOKEN[:-1]}, {}),
    ],
    ids=["missing", "wrong-query", "wrong-header", "empty", "other-names", "prefix"],
)
def test_webhook_without_the_right_token_is_refused(hook, query, headers):
    with pytest.raises(WebhookAuthError) as caught:
        hook.verify_webhook(_webhook(REPORT, query=query, headers=headers))
    assert caught.value.status_code == 401
    assert WEBHOOK_TOKEN not in str(caught.value)
    assert "token" in caught.value.reason


def test_connection_without_a_webhook_token_refuses_everything(make_hook):
    with pytest.raises(WebhookAuthError, match="no webhook_token configured"):
        make_hook(extra={"webhook_token": ""}).verify_webhook(_webhook(REPORT, query={"token": ""}))


# -- webhooks: normalisation ----------------------------------------------------------------------


def test_delivery_report_is_normalised_on_the_request_id(hook):
    (event,) = hook.parse_webhook(_webhook(REPORT))

    assert (event.vendor, event.conn_id, event.message_id) == (
        "direct7",
        "d7_test",
        "d9835609-a4e0-10ea-a26a-eeafbe700fef",
    )
    assert (event.status, event.raw_status, event.chat_id, event.participant) == (
        Status.READ,
        "Read",
        "+971509752655",
        "",
    )
    assert event.occurred_at is not None
    assert event.occurred_at.isoformat() == "2023-09-25T12:44:47.348000+00:00"
    assert event.payload["msg_id"] == "7053a678-75fe-11ed-9e31-0242ac14001c"
    assert event.payload["surprise_field"] == {"kept": True}


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Queued", Status.QUEUED),
        ("accepted", Status.QUEUED),
        ("Sent", Status.SENT),
        ("Delivered", Status.DELIVERED),
        ("DELIVERED", Status.DELIVERED),
        ("Read", Status.READ),
        ("read", Status.READ),
        ("Dropped", Status.FAILED),
        ("undelivered", Status.FAILED),
        ("Wobbly", Status.UNKNOWN),
    ],
)
def test_status_ladder_mapping(hook, raw, expected):
    (event,) = hook.parse_webhook(_webhook({**REPORT, "status": raw}))
    assert (event.status, event.raw_status) == (expected, raw)


def test_failed_report_keeps_the_reason_and_others_do_not(hook):
    (failed,) = hook.parse_webhook(_webhook({**REPORT, "status": "Dropped", "reason": "Invalid number"}))
    (read,) = hook.parse_webhook(_webhook({**REPORT, "reason": "Read by the user"}))
    assert failed.error_message == "Invalid number"
    assert read.error_message == ""


def test_report_without_event_type_and_with_digit_timestamp(hook):
    body = {k: v for k, v in REPORT.items() if k != "event_type"}
    (event,) = hook.parse_webhook(
        _webhook({**body, "timestamp": "1695645887348", "recipient": "971509752655"})
    )
    assert event.status is Status.READ
    assert event.chat_id == "+971509752655", "a number without its + gains it, like the sends' numbers"
    assert event.occurred_at is not None and event.occurred_at.year == 2023


def test_reports_from_the_fake_round_trip(hook, direct7):
    request_id = hook.send_message(number=CONTACT, body="Hi")["request_id"]
    direct7.set_status(request_id, "Delivered")

    (event,) = hook.parse_webhook(_webhook(direct7.delivery_reports(request_id)))

    assert (event.message_id, event.status, event.chat_id) == (request_id, Status.DELIVERED, CONTACT)


def test_batch_as_a_list(hook):
    events = hook.parse_webhook(_webhook([{**REPORT, "status": "Delivered"}, REPORT]))
    assert [e.status for e in events] == [Status.DELIVERED, Status.READ]


def test_batch_as_an_object_with_messages_inherits_the_request_id(hook):
    body = {
        "request_id": "r-9",
        "messages": [
            {"msg_id": "m-1", "recipient": "+971509752655", "status": "read"},
            {"msg_id": "m-2", "recipient": CONTACT, "status": "Sent"},
        ],
    }
    events = hook.parse_webhook(_webhook(body))
    assert [(e.message_id, e.status, e.chat_id) for e in events] == [
        ("r-9", Status.READ, "+971509752655"),
        ("r-9", Status.SENT, CONTACT),
    ]


INBOUND = {
    "event_type": "USER_INITIATED",
    "timestamp": 1730800000000,
    "message_id": "492a17b0-9cd7-11ef-b4bf-0242ac1b0024",
    "from": "971509752655",
    "to": "+971501234567",
    "message_type": "TEXT",
    "text": {"body": "Where is my order?"},
}


def test_inbound_message_is_received_with_the_id_mark_read_needs(hook, direct7):
    (event,) = hook.parse_webhook(_webhook(INBOUND))

    assert (event.status, event.is_inbound, event.message_id, event.chat_id) == (
        Status.RECEIVED,
        True,
        "492a17b0-9cd7-11ef-b4bf-0242ac1b0024",
        "+971509752655",
    )
    assert event.raw_status == "USER_INITIATED"
    assert event.payload["text"] == {"body": "Where is my order?"}

    # The id is the one the read receipt takes.
    direct7.add_inbound(sender=event.chat_id, message_id=event.message_id)
    hook.mark_read(message_id=event.message_id)
    assert direct7.marked_read == [event.message_id]


@pytest.mark.parametrize(
    "body",
    [
        {"msg_id": "in-1", "originator": "+971509752655", "status": "received"},
        {"id": "in-1", "sender": "+971509752655"},
        {"messages": [{"id": "in-1", "from": "971509752655", "type": "text"}]},
    ],
    ids=["msg_id-originator", "id-sender", "nested-messages"],
)
def test_inbound_field_name_variants(hook, body):
    (event,) = hook.parse_webhook(_webhook(body))
    assert (event.status, event.message_id, event.chat_id) == (Status.RECEIVED, "in-1", "+971509752655")


def test_inbound_field_names_are_configurable(make_hook):
    hook = make_hook(extra={"inbound_message_id_field": "wa_msg", "inbound_sender_field": "mobile"})
    body = {"event_type": "INBOUND", "wa_msg": "in-7", "mobile": "+971509752655", "id": "other"}
    (event,) = hook.parse_webhook(_webhook(body))
    assert (event.message_id, event.chat_id) == ("in-7", "+971509752655")


def test_other_event_types_are_acknowledged_without_events(hook):
    assert hook.parse_webhook(_webhook({"event_type": "TEMPLATE_STATUS", "template_id": "t1"})) == []


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"\xff\xfe",
        b"42",
        b"[]",
        [1, 2],
        {"messages": "x"},
        {"messages": []},
        {"messages": [1]},
        {"status": "Read"},
        {"event_type": "DELIVERY_EVENTS", "status": "Read"},
        {**REPORT, "request_id": 7},
        {**REPORT, "status": None},
        {**REPORT, "status": ""},
        {"event_type": 5, "request_id": "r", "status": "Read"},
        {"message_id": "in-1"},
        {"from": "+971509752655"},
        {"event_type": "USER_INITIATED", "from": "+971509752655"},
    ],
)
def test_unusable_payloads_are_payload_errors(hook, body):
    with pytest.raises(WebhookPayloadError) as caught:
        hook.parse_webhook(_webhook(body))
    assert caught.value.status_code == 422
