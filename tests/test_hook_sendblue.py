from __future__ import annotations

import json

import pytest

from airflow_provider_readreceipts.hooks.base import WebhookRequest
from airflow_provider_readreceipts.hooks.sendblue import SendblueHook
from airflow_provider_readreceipts.receipts import (
    InvalidInputError,
    Status,
    VendorAPIError,
    WebhookAuthError,
    WebhookPayloadError,
)
from airflow_provider_readreceipts.testing.fakes import sendblue as fake

CONTACT = "+14155551234"


@pytest.fixture
def hook(vendors, airflow_connection) -> SendblueHook:
    conn_id = airflow_connection(
        "sb_test",
        "sendblue",
        host=vendors.url("sendblue"),
        login=fake.API_KEY_ID,
        password=fake.API_SECRET,
        extra={"from_number": fake.LINE, "webhook_secret": "sb-webhook-secret-9"},
    )
    return SendblueHook(sendblue_conn_id=conn_id, retry_max_seconds=5)


def test_mark_read_sends_the_documented_request(hook, vendors):
    result = hook.mark_read(number="+1 (415) 555-1234")

    assert result == {"status": "OK", "message": "Mark read request sent", "number": CONTACT}
    (request,) = vendors.requests_to("sendblue", "/api/mark-read")
    assert request.json() == {"number": CONTACT, "from_number": fake.LINE}
    assert request.header("sb-api-key-id") == fake.API_KEY_ID
    assert request.header("sb-api-secret-key") == fake.API_SECRET
    assert request.header("content-type") == "application/json"
    assert vendors.fakes["sendblue"].marked_read == [(CONTACT, fake.LINE)]


def test_unregistered_line_is_a_clear_404(hook, vendors):
    with pytest.raises(VendorAPIError) as caught:
        hook.mark_read(number=CONTACT, from_number="+12125550123")

    error = caught.value
    assert (error.vendor, error.status_code, error.retryable) == ("Sendblue", 404, False)
    assert error.message == "The from_number is not registered"
    assert "Sendblue mark_read failed: HTTP 404" in str(error)
    assert len(vendors.requests_to("sendblue")) == 1


def test_vendor_400_names_the_missing_field(hook, vendors):
    # The hook validates first, so reach the vendor's own 400 with a raw request.
    with pytest.raises(VendorAPIError) as caught:
        hook.request(
            "mark_read", "POST", "/api/mark-read", json_body={"from_number": fake.LINE}, idempotent=True
        )

    assert caught.value.status_code == 400
    assert caught.value.message == "You must specify a `number` in the request body."


def test_send_then_status_and_typing(hook, vendors):
    sent = hook.send_message(number=CONTACT, content="Hi", status_callback="https://hooks.example/sb")
    handle = sent["message_handle"]
    (request,) = vendors.requests_to("sendblue", "/api/send-message")
    assert request.json() == {
        "number": CONTACT,
        "from_number": fake.LINE,
        "content": "Hi",
        "status_callback": "https://hooks.example/sb",
    }

    vendors.fakes["sendblue"].set_status(handle, "READ")
    assert hook.get_status(handle)["status"] == "READ"

    hook.send_typing_indicator(number=CONTACT)
    assert vendors.fakes["sendblue"].typing == [(CONTACT, fake.LINE)]


async def test_async_status_uses_the_same_auth(hook, vendors):
    handle = hook.send_message(number=CONTACT, content="Hi")["message_handle"]
    vendors.fakes["sendblue"].set_status(handle, "DELIVERED")
    try:
        status = await hook.aget_status(handle)
        with pytest.raises(VendorAPIError) as caught:
            await hook.aget_status("no-such-handle")
    finally:
        await hook.aclose()

    assert status["status"] == "DELIVERED"
    assert caught.value.status_code == 404
    assert caught.value.message == "Message not found"


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda h: h.mark_read(number="4155551234"), "number"),
        (lambda h: h.mark_read(number="+1 555"), "number"),
        (lambda h: h.mark_read(number=CONTACT, from_number="not a number"), "from_number"),
        (lambda h: h.send_message(number=CONTACT, content="  "), "content"),
        (lambda h: h.get_status(""), "message_id"),
    ],
)
def test_bad_input_fails_before_any_request(hook, vendors, call, field):
    with pytest.raises(InvalidInputError) as caught:
        call(hook)
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field}: ")
    assert vendors.requests_to("sendblue") == []


def test_wrong_credentials(vendors, airflow_connection):
    conn_id = airflow_connection(
        "sb_bad", "sendblue", host=vendors.url("sendblue"), login="sb-key-id-1", password="wrong-secret-123"
    )
    hook = SendblueHook(sendblue_conn_id=conn_id)

    ok, message = hook.test_connection()

    assert not ok
    assert "HTTP 401" in message and "Invalid API credentials" in message
    assert "wrong-secret-123" not in message
    assert len(vendors.requests_to("sendblue")) == 1, "a 401 is not retried"


def test_test_connection_changes_nothing(hook, vendors):
    ok, message = hook.test_connection()

    assert ok, message
    assert [r.method for r in vendors.requests_to("sendblue")] == ["GET"]
    assert vendors.fakes["sendblue"].messages == {}


def test_connection_without_credentials_is_refused(vendors, airflow_connection):
    conn_id = airflow_connection("sb_empty", "sendblue", host=vendors.url("sendblue"))
    with pytest.raises(InvalidInputError, match="API key id as login"):
        SendblueHook(sendblue_conn_id=conn_id).mark_read(number=CONTACT, from_number=fake.LINE)
    assert vendors.requests_to("sendblue") == []


# -- webhooks ---------------------------------------------------------------------------------------


def _webhook(body, headers=None) -> WebhookRequest:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return WebhookRequest(
        conn_id="sb_test",
        headers=headers if headers is not None else {"sb-signing-secret": "sb-webhook-secret-9"},
        query={},
        body=raw,
        received_at=0.0,
    )


STATUS_WEBHOOK = {
    "accountEmail": "demo@example.com",
    "message_handle": "h-1",
    "number": CONTACT,
    "from_number": fake.LINE,
    "status": "READ",
    "date_updated": "2026-11-22T10:00:05.000Z",
    "is_outbound": True,
    "message_type": "message",
    "service": "iMessage",
    "surprise_field": {"kept": True},
}


@pytest.mark.parametrize(
    "headers",
    [{}, {"sb-signing-secret": "wrong"}, {"x-webhook-secret": "sb-webhook-secret-9"}],
)
def test_webhook_without_the_right_secret_is_refused(hook, headers):
    with pytest.raises(WebhookAuthError) as caught:
        hook.verify_webhook(_webhook(STATUS_WEBHOOK, headers))
    assert "sb-webhook-secret-9" not in str(caught.value)


def test_webhook_header_name_is_configurable(vendors, airflow_connection):
    conn_id = airflow_connection(
        "sb_hdr",
        "sendblue",
        login="k",
        password="s",
        extra={"webhook_secret": "abc123", "webhook_header_name": "X-Webhook-Secret"},
    )
    hook = SendblueHook(sendblue_conn_id=conn_id)
    hook.verify_webhook(_webhook(STATUS_WEBHOOK, {"x-webhook-secret": "abc123"}))
    with pytest.raises(WebhookAuthError):
        hook.verify_webhook(_webhook(STATUS_WEBHOOK, {"sb-signing-secret": "abc123"}))


def test_status_webhook_is_normalised(hook):
    hook.verify_webhook(_webhook(STATUS_WEBHOOK))
    (event,) = hook.parse_webhook(_webhook(STATUS_WEBHOOK))

    assert (event.vendor, event.conn_id, event.message_id) == ("sendblue", "sb_test", "h-1")
    assert (event.status, event.raw_status, event.participant, event.chat_id) == (
        Status.READ,
        "READ",
        "",
        CONTACT,
    )
    assert event.occurred_at is not None and event.occurred_at.isoformat() == "2026-11-22T10:00:05+00:00"
    assert event.payload["surprise_field"] == {"kept": True}


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("PENDING", Status.QUEUED),
        ("SUCCESS", Status.SENT),
        ("DECLINED", Status.FAILED),
        ("WOBBLY", Status.UNKNOWN),
    ],
)
def test_status_ladder_mapping(hook, raw, expected):
    (event,) = hook.parse_webhook(_webhook({**STATUS_WEBHOOK, "status": raw}))
    assert (event.status, event.raw_status) == (expected, raw)


def test_seed_payload_with_message_id_and_failure(hook):
    body = {"message_id": "h-2", "status": "ERROR", "error_code": 4001, "error_message": "not iMessage"}
    (event,) = hook.parse_webhook(_webhook(body))
    assert (event.message_id, event.status, event.error_code, event.error_message) == (
        "h-2",
        Status.FAILED,
        "4001",
        "not iMessage",
    )


def test_group_read_names_the_reader(hook):
    body = {**STATUS_WEBHOOK, "message_type": "group", "group_id": "g-9", "number": "+14155550000"}
    (event,) = hook.parse_webhook(_webhook(body))
    assert (event.participant, event.chat_id) == ("+14155550000", "g-9")


def test_inbound_message(hook):
    body = {
        "message_handle": "in-1",
        "is_outbound": False,
        "number": CONTACT,
        "content": "hello",
        "status": "",
    }
    (event,) = hook.parse_webhook(_webhook(body))
    assert (event.status, event.chat_id, event.is_inbound) == (Status.RECEIVED, CONTACT, True)


@pytest.mark.parametrize(
    "body",
    [b"{not json", b"\xff\xfe", b"[1, 2]", {"status": "READ"}, {"message_handle": "h", "status": None}],
)
def test_unusable_payloads_are_payload_errors(hook, body):
    with pytest.raises(WebhookPayloadError):
        hook.parse_webhook(_webhook(body))
