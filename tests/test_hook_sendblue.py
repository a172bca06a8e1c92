from __future__ import annotations

import pytest

from airflow_provider_readreceipts.hooks.sendblue import SendblueHook
from airflow_provider_readreceipts.receipts import InvalidInputError, VendorAPIError
from tests.fakes import sendblue as fake

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
