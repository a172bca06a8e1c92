"""RyzeHook over real HTTP against the RyzeAPI fake, and its webhook adapter."""

from __future__ import annotations

import json
import logging
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from airflow_provider_readreceipts.hooks.base import WebhookRequest
from airflow_provider_readreceipts.hooks.ryze import RyzeHook, normalize_status
from airflow_provider_readreceipts.receipts import (
    DeliveryUnknownError,
    InvalidInputError,
    Status,
    VendorAPIError,
    WebhookAuthError,
    WebhookPayloadError,
)
from airflow_provider_readreceipts.testing.fakes import ryze as fake
from airflow_provider_readreceipts.testing.fakes.server import FakeRequest, Fault

CONTACT = "+55 11 98765-4321"
CONTACT_DIGITS = "5511987654321"
CONTACT_JID = "5511987654321@s.whatsapp.net"
GROUP_JID = "120363123456789@g.us"
READER_JID = "5511912345678@s.whatsapp.net"
WEBHOOK_AUTHORIZATION = "Bearer ryze-webhook-Zp4q"
MESSAGE_ID = "3EB08FCF27E532F1B0F5"


@pytest.fixture
def make_hook(vendors, airflow_connection):
    def make(*, conn_id: str = "ryze_test", password: str = fake.TOKEN, **kwargs) -> RyzeHook:
        extra = {"instance": fake.INSTANCE, "webhook_authorization": WEBHOOK_AUTHORIZATION}
        extra.update(kwargs.pop("extra", {}))
        airflow_connection(conn_id, "ryze", host=vendors.url("ryze"), password=password, extra=extra)
        kwargs.setdefault("retry_max_seconds", 10)
        return RyzeHook(ryze_conn_id=conn_id, **kwargs)

    return make


@pytest.fixture
def hook(make_hook) -> RyzeHook:
    return make_hook()


@pytest.fixture
def ryze(vendors) -> fake.RyzeFake:
    return vendors.fakes["ryze"]


# -- outbound calls ---------------------------------------------------------------------------------


def test_mark_read_sends_the_documented_request(hook, vendors, ryze):
    result = hook.mark_read(message_id=MESSAGE_ID, number=CONTACT)

    assert result == {
        "success": True,
        "message": "Message marked as read successfully",
        "message_id": MESSAGE_ID,
        "chat_jid": CONTACT_JID,
    }
    (request,) = vendors.requests_to("ryze")
    assert (request.method, request.path) == ("POST", f"/api/chat/markRead/{fake.INSTANCE}")
    # Digits only, as RyzeAPI documents; no sender in a one-to-one chat.
    assert request.json() == {"messageId": MESSAGE_ID, "number": CONTACT_DIGITS}
    assert request.header("token") == fake.TOKEN
    assert request.header("authorization") is None
    assert request.header("content-type") == "application/json"
    assert ryze.marked_read == [{"messageId": MESSAGE_ID, "number": CONTACT_DIGITS}]


def test_mark_read_in_a_group_sends_the_sender_as_a_jid(hook, vendors):
    hook.mark_read(message_id=MESSAGE_ID, number=GROUP_JID, sender="+55 11 91234-5678")

    (request,) = vendors.requests_to("ryze")
    assert request.json() == {"messageId": MESSAGE_ID, "number": GROUP_JID, "sender": READER_JID}


def test_group_without_sender_is_refused_before_any_request(hook, vendors):
    with pytest.raises(InvalidInputError) as caught:
        hook.mark_read(message_id=MESSAGE_ID, number=GROUP_JID)

    assert caught.value.field == "sender"
    assert vendors.requests_to("ryze") == []


@pytest.mark.parametrize(
    ("number", "sent_as"),
    [
        (CONTACT_JID, CONTACT_JID),
        (" 5511987654321@S.WhatsApp.Net ", CONTACT_JID),
        ("123456789012345@lid", "123456789012345@lid"),
        ("120363422585881117@newsletter", "120363422585881117@newsletter"),
        ("+1 (415) 555-1234", "14155551234"),
        # RyzeAPI's own digits-only form, so the hook's output is valid input again.
        (CONTACT_DIGITS, CONTACT_DIGITS),
    ],
)
def test_jids_and_phone_numbers_accepted_as_number(hook, vendors, number, sent_as):
    hook.mark_chat_read(number=number)
    (request,) = vendors.requests_to("ryze")
    assert request.json() == {"number": sent_as, "read": True}


def test_mark_chat_read(hook, vendors, ryze):
    result = hook.mark_chat_read(number=GROUP_JID)

    (request,) = vendors.requests_to("ryze")
    assert request.path == f"/api/chat/markChatRead/{fake.INSTANCE}"
    assert request.json() == {"number": GROUP_JID, "read": True}
    assert result["chat_jid"] == GROUP_JID
    assert ryze.chats_marked_read == [GROUP_JID]


@pytest.mark.parametrize(
    ("call", "field"),
    [
        # Digits are read country code first, as RyzeAPI does: a national number is invalid then.
        (lambda h: h.mark_read(message_id=MESSAGE_ID, number="4155551234"), "number"),
        (lambda h: h.mark_read(message_id=MESSAGE_ID, number="(415) 555-1234"), "number"),
        (lambda h: h.mark_read(message_id=MESSAGE_ID, number="+1 555"), "number"),
        (lambda h: h.mark_read(message_id=MESSAGE_ID, number="abc@g.us"), "number"),
        (lambda h: h.mark_read(message_id=MESSAGE_ID, number="5511987654321@c.us"), "number"),
        (lambda h: h.mark_read(message_id=MESSAGE_ID, number="5511987654321:12@s.whatsapp.net"), "number"),
        (lambda h: h.mark_read(message_id=MESSAGE_ID, number=GROUP_JID, sender=GROUP_JID), "sender"),
        (lambda h: h.mark_read(message_id=MESSAGE_ID, number=GROUP_JID, sender="12345"), "sender"),
        (lambda h: h.mark_read(message_id=" ", number=CONTACT), "message_id"),
        (lambda h: h.mark_chat_read(number=""), "number"),
        (lambda h: h.send_message(number=CONTACT, message="  "), "message"),
        (lambda h: h.send_message(number="not a number", message="Hi"), "number"),
        (lambda h: h.get_status(""), "message_id"),
    ],
)
def test_bad_input_fails_before_any_request(hook, vendors, call, field):
    with pytest.raises(InvalidInputError) as caught:
        call(hook)
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field}: ")
    assert vendors.requests_to("ryze") == []


def test_send_then_status(hook, vendors, ryze):
    sent = hook.send_message(number=CONTACT, message="Olá")

    (request,) = vendors.requests_to("ryze")
    assert request.path == f"/api/message/text/{fake.INSTANCE}"
    assert request.json() == {"number": CONTACT_DIGITS, "message": "Olá"}
    message_id = sent["messageId"]
    assert ryze.messages[message_id]["text"] == "Olá"

    assert hook.get_status(message_id)["status"] == "sent"
    ryze.set_status(message_id, "read")
    status = hook.get_status(message_id)
    assert (status["status"], status["status_code"], status["chat_jid"]) == ("read", 4, CONTACT_JID)
    (lookup,) = vendors.requests_to("ryze", "/api/chat/status/", "GET")[-1:]
    assert lookup.query == {"messageId": message_id}


def test_send_reads_a_message_id_nested_under_data(hook, vendors):
    nested = {"success": True, "message": "Message sent successfully", "data": {"messageId": "3EB0NESTED"}}
    vendors.inject("ryze", Fault(status=200, body=nested))

    assert hook.send_message(number=CONTACT, message="Hi")["messageId"] == "3EB0NESTED"


def test_send_after_5xx_is_not_repeated(hook, vendors, ryze):
    ryze.connected = False

    with pytest.raises(DeliveryUnknownError) as caught:
        hook.send_message(number=CONTACT, message="Hi")

    assert caught.value.status_code == 503
    assert caught.value.message == "Instance is not connected to WhatsApp"
    assert len(vendors.requests_to("ryze")) == 1


def test_send_after_timeout_is_not_repeated(make_hook, vendors, ryze):
    vendors.inject("ryze", Fault(delay=1.2))

    with pytest.raises(DeliveryUnknownError, match="did not answer in time"):
        make_hook(timeout=0.4).send_message(number=CONTACT, message="Hi")

    assert len(vendors.requests_to("ryze", "/api/message/text/")) == 1


def test_bearer_auth_header(make_hook, vendors):
    hook = make_hook(conn_id="ryze_bearer", extra={"auth_scheme": "Bearer"})

    hook.mark_read(message_id=MESSAGE_ID, number=CONTACT)

    (request,) = vendors.requests_to("ryze")
    assert request.header("authorization") == f"Bearer {fake.TOKEN}"
    assert request.header("token") is None


def test_instance_names_are_quoted_into_paths(make_hook, vendors, ryze):
    ryze.instance = "sales team/br"
    hook = make_hook(conn_id="ryze_spaced", extra={"instance": "sales team/br"})

    hook.mark_read(message_id=MESSAGE_ID, number=CONTACT)

    (request,) = vendors.requests_to("ryze")
    assert request.path == "/api/chat/markRead/sales%20team%2Fbr"


async def test_async_status_on_a_quoted_instance(make_hook, vendors, ryze):
    ryze.instance = "sales team/br"
    hook = make_hook(conn_id="ryze_spaced_async", extra={"instance": "sales team/br"})
    message_id = hook.send_message(number=CONTACT, message="Hi")["messageId"]
    ryze.set_status(message_id, "delivered")
    try:
        status = await hook.aget_status(message_id)
        with pytest.raises(VendorAPIError) as caught:
            await hook.aget_status("no-such-message")
    finally:
        await hook.aclose()

    assert status["status"] == "delivered"
    assert (caught.value.status_code, caught.value.message) == (404, "Message not found")
    lookup = vendors.requests_to("ryze", "/api/chat/status/")[0]
    assert lookup.path == "/api/chat/status/sales%20team%2Fbr"
    assert lookup.header("token") == fake.TOKEN


# -- documented errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("endpoint", "body", "message"),
    [
        (f"/api/chat/markRead/{fake.INSTANCE}", {"number": CONTACT_DIGITS}, "messageId is required"),
        (f"/api/chat/markRead/{fake.INSTANCE}", {"messageId": MESSAGE_ID}, "Number is required"),
        (
            f"/api/chat/markRead/{fake.INSTANCE}",
            {"messageId": MESSAGE_ID, "number": GROUP_JID},
            "sender is required for group messages",
        ),
        (f"/api/chat/markRead/{fake.INSTANCE}", [1, 2], "Invalid request body: expected a JSON object"),
        (
            "/api/chat/markRead/",
            {"messageId": MESSAGE_ID, "number": CONTACT_DIGITS},
            "Instance name is required",
        ),
    ],
)
def test_vendor_400s_are_clear_and_not_retried(hook, vendors, endpoint, body, message):
    # The hook validates first, so reach the vendor's own 400s with raw requests.
    with pytest.raises(VendorAPIError) as caught:
        hook.request("mark_read", "POST", endpoint, json_body=body, idempotent=True)

    error = caught.value
    assert (error.vendor, error.status_code, error.message, error.retryable) == (
        "RyzeAPI",
        400,
        message,
        False,
    )
    assert error.code is None
    assert len(vendors.requests_to("ryze")) == 1


def test_malformed_json_body_is_a_400(hook):
    response = hook.get_conn().post(
        hook.url_from_endpoint(f"/api/chat/markRead/{fake.INSTANCE}"),
        data=b"{not json",
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 400
    assert response.json()["error"]["message"].startswith("Invalid request body: ")


def test_unknown_instance_is_a_404(make_hook, vendors):
    hook = make_hook(conn_id="ryze_other", extra={"instance": "nobody"})

    with pytest.raises(VendorAPIError) as caught:
        hook.mark_read(message_id=MESSAGE_ID, number=CONTACT)

    assert (caught.value.status_code, caught.value.message) == (404, "Instance not found")
    assert len(vendors.requests_to("ryze")) == 1


def test_instance_not_connected_is_retried_for_idempotent_calls(make_hook, vendors, ryze):
    not_connected = {"success": False, "error": {"message": "Instance is not connected to WhatsApp"}}
    vendors.inject("ryze", Fault(status=503, body=not_connected))

    assert make_hook().mark_read(message_id=MESSAGE_ID, number=CONTACT)["success"] is True
    assert len(vendors.requests_to("ryze")) == 2

    ryze.connected = False
    with pytest.raises(VendorAPIError) as caught:
        make_hook(max_attempts=3).mark_read(message_id=MESSAGE_ID, number=CONTACT)
    assert (caught.value.status_code, caught.value.retryable) == (503, True)
    assert caught.value.message == "Instance is not connected to WhatsApp"
    assert len(vendors.requests_to("ryze")) == 2 + 3


def test_429_waits_for_x_ratelimit_reset(hook, vendors, ryze):
    ryze.rate_limit, ryze.window_seconds = 2, 1.0

    for _ in range(3):
        hook.mark_read(message_id=MESSAGE_ID, number=CONTACT)

    requests = vendors.requests_to("ryze")
    assert len(requests) == 4, "the third call met a 429 and was retried once"
    # The retry waited for the reset the 429 announced (unix seconds, rounded up).
    assert requests[3].received_at - requests[2].received_at >= 0.5
    assert ryze.peak_requests_per_window(fake.TOKEN) == 3
    assert len(ryze.marked_read) == 3


def test_429_with_a_reset_beyond_the_budget_is_raised_not_slept(hook, vendors):
    reset = int(time.time()) + 3600
    vendors.inject(
        "ryze",
        Fault(
            status=429,
            body={"success": False, "error": {"message": "Rate limit exceeded. Try again later."}},
            headers={
                "X-RateLimit-Limit": "100",
                "X-RateLimit-Remaining": "0",
                "X-RateLimit-Reset": str(reset),
            },
        ),
    )

    with pytest.raises(VendorAPIError) as caught:
        hook.mark_read(message_id=MESSAGE_ID, number=CONTACT)

    error = caught.value
    assert (error.status_code, error.retryable, error.message) == (
        429,
        True,
        "Rate limit exceeded. Try again later.",
    )
    assert error.retry_after is not None and 3500 < error.retry_after <= 3600
    assert len(vendors.requests_to("ryze")) == 1


def test_send_after_429_is_retried(hook, vendors, ryze):
    vendors.inject("ryze", Fault(status=429, headers={"X-RateLimit-Reset": str(int(time.time()))}))

    sent = hook.send_message(number=CONTACT, message="Hi")

    assert len(vendors.requests_to("ryze")) == 2
    assert list(ryze.messages) == [sent["messageId"]]


def test_every_response_carries_rate_limit_headers(hook, ryze):
    session = hook.get_conn()
    ok = session.get(hook.url_from_endpoint(f"/api/chat/status/{fake.INSTANCE}"), params={"messageId": "x"})
    ryze.tokens.discard(fake.TOKEN)
    refused = session.get(hook.url_from_endpoint(f"/api/chat/status/{fake.INSTANCE}"))
    ryze.tokens.add(fake.TOKEN)

    assert (ok.status_code, refused.status_code) == (404, 401)
    assert ok.headers["X-RateLimit-Limit"] == "100"
    assert ok.headers["X-RateLimit-Remaining"] == "99"
    assert refused.headers["X-RateLimit-Remaining"] == "98"
    assert int(ok.headers["X-RateLimit-Reset"]) >= time.time() + 58


def test_fake_counts_requests_per_token_in_a_sliding_window():
    now = [1_000.0]
    limited = fake.RyzeFake(rate_limit=3, window_seconds=60.0, clock=lambda: now[0])

    def call(token: str = fake.TOKEN) -> int:
        request = FakeRequest("ryze", "GET", f"/api/chat/status/{fake.INSTANCE}", {}, {"token": token}, b"")
        return limited.dispatch(request).status

    assert [call() for _ in range(3)] == [400, 400, 400]
    assert call() == 429
    assert call("another-token") == 401, "each token has its own bucket"
    now[0] += 59.0
    assert call() == 429, "the first request is still inside the window"
    now[0] += 1.5
    assert call() == 400
    assert limited.requests_in_window() == 1
    assert limited.peak_requests_per_window() == 5  # 3 accepted + 2 refused within 60 s


# -- connection and secrets -------------------------------------------------------------------------


def test_test_connection_changes_nothing(hook, vendors, ryze):
    ok, message = hook.test_connection()

    assert ok, message
    assert [(r.method, r.path) for r in vendors.requests_to("ryze")] == [
        ("GET", f"/api/chat/status/{fake.INSTANCE}")
    ]
    assert ryze.messages == {} and ryze.marked_read == []


def test_test_connection_with_a_wrong_token(make_hook, vendors):
    ok, message = make_hook(conn_id="ryze_bad_token", password="wrong-token-Hh3").test_connection()

    assert not ok
    assert "HTTP 401" in message and "Invalid token" in message
    assert "wrong-token-Hh3" not in message
    assert len(vendors.requests_to("ryze")) == 1, "a 401 is not retried"


def test_test_connection_with_an_unknown_instance(make_hook, vendors):
    ok, message = make_hook(conn_id="ryze_bad_instance", extra={"instance": "ghost"}).test_connection()

    assert not ok
    assert "HTTP 404" in message and "Instance not found" in message


@pytest.mark.parametrize(
    ("password", "extra", "named"),
    [
        (None, {"instance": fake.INSTANCE}, "password"),
        (fake.TOKEN, {}, "'instance'"),
        (fake.TOKEN, {"instance": "  "}, "'instance'"),
        (fake.TOKEN, {"instance": fake.INSTANCE, "auth_scheme": "basic"}, "'auth_scheme'"),
    ],
)
def test_incomplete_connection_is_refused_before_any_request(
    vendors, airflow_connection, password, extra, named
):
    fields = {"host": vendors.url("ryze"), "extra": extra}
    if password:
        fields["password"] = password
    conn_id = airflow_connection("ryze_incomplete", "ryze", **fields)

    with pytest.raises(InvalidInputError) as caught:
        RyzeHook(ryze_conn_id=conn_id).mark_read(message_id=MESSAGE_ID, number=CONTACT)

    assert named in str(caught.value)
    assert fake.TOKEN not in str(caught.value)
    assert vendors.requests_to("ryze") == []


def test_secrets_stay_out_of_logs_errors_and_repr(make_hook, vendors, ryze, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    ryze.connected = False
    hook = make_hook(max_attempts=2)

    with pytest.raises(VendorAPIError) as caught:
        hook.mark_read(message_id=MESSAGE_ID, number=CONTACT)
    with pytest.raises(WebhookAuthError) as refused:
        hook.verify_webhook(_webhook(STATUS_BODY, {"authorization": "Bearer guess"}))

    logs = capsys.readouterr().out + caplog.text
    exposed = "\n".join(
        [
            logs,
            str(caught.value),
            repr(caught.value),
            repr(hook),
            repr(hook.get_conn().auth),
            str(refused.value),
        ]
    )
    assert "retrying" in logs
    for secret in (fake.TOKEN, WEBHOOK_AUTHORIZATION, "ryze-webhook-Zp4q"):
        assert secret not in exposed


# -- reconcile --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("vendor_status", "expected"),
    [
        ("delivered", Status.DELIVERED),
        ("read", Status.READ),
        ("played", Status.READ),
        ("error", Status.FAILED),
        ("pending", None),
        ("sent", None),
    ],
)
async def test_reconcile_maps_the_status_api(hook, ryze, vendor_status, expected):
    message_id = hook.send_message(number=CONTACT, message="Hi")["messageId"]
    ryze.set_status(message_id, vendor_status)
    try:
        events = await hook.afetch_receipt_events(message_id=message_id, chat="fallback")
    finally:
        await hook.aclose()

    if expected is None:
        assert events == [], "nothing newer than sent"
        return
    (event,) = events
    assert (event.vendor, event.conn_id, event.message_id) == ("ryze", "ryze_test", message_id)
    assert (event.status, event.raw_status, event.chat_id) == (expected, vendor_status, CONTACT_JID)
    assert event.occurred_at is None, "the status API's timestamp is the send time, not the read time"


async def test_reconcile_falls_back_to_the_numeric_code(hook, vendors):
    vendors.inject("ryze", Fault(status=200, body={"success": True, "status": "", "status_code": 5}))
    try:
        (event,) = await hook.afetch_receipt_events(message_id=MESSAGE_ID, chat=CONTACT_JID)
    finally:
        await hook.aclose()

    assert (event.status, event.raw_status, event.chat_id) == (Status.READ, "5", CONTACT_JID)


async def test_reconcile_of_an_unknown_message_raises(hook):
    try:
        with pytest.raises(VendorAPIError, match="Message not found"):
            await hook.afetch_receipt_events(message_id="no-such-message")
    finally:
        await hook.aclose()


# -- webhooks ---------------------------------------------------------------------------------------


def _webhook(body, headers=None, conn_id: str = "ryze_test") -> WebhookRequest:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return WebhookRequest(
        conn_id=conn_id,
        headers=headers if headers is not None else {"authorization": WEBHOOK_AUTHORIZATION},
        query={},
        body=raw,
        received_at=0.0,
    )


def _envelope(event: str, data, instance: str = fake.INSTANCE) -> dict:
    return {
        "event": event,
        "data": data,
        "instanceData": {"baseUrl": "https://ryzeapi.cloud", "instance": instance, "token": fake.TOKEN},
    }


STATUS_BODY = _envelope(
    "message.status",
    {
        "messageId": MESSAGE_ID,
        "status": "read",
        "chat": {"jid": CONTACT_JID},
        "timestamp": "2026-11-22T10:00:05Z",
        "surprise_field": {"kept": True},
    },
)


def test_webhook_with_the_right_authorization_is_accepted(hook):
    hook.verify_webhook(_webhook(STATUS_BODY))


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"authorization": ""},
        {"authorization": "Bearer wrong"},
        {"authorization": "ryze-webhook-Zp4q"},  # the value must match exactly, scheme included
        {"token": WEBHOOK_AUTHORIZATION},
    ],
)
def test_webhook_without_the_right_authorization_is_refused(hook, headers):
    with pytest.raises(WebhookAuthError) as caught:
        hook.verify_webhook(_webhook(STATUS_BODY, headers))
    assert "ryze-webhook-Zp4q" not in str(caught.value)


def test_connection_without_webhook_authorization_refuses_every_webhook(make_hook):
    hook = make_hook(conn_id="ryze_no_webhook", extra={"webhook_authorization": ""})
    with pytest.raises(WebhookAuthError, match="no webhook_authorization configured"):
        hook.verify_webhook(_webhook(STATUS_BODY))


def test_status_webhook_is_normalised(hook):
    (event,) = hook.parse_webhook(_webhook(STATUS_BODY))

    assert (event.vendor, event.conn_id, event.message_id) == ("ryze", "ryze_test", MESSAGE_ID)
    assert (event.status, event.raw_status, event.participant, event.chat_id) == (
        Status.READ,
        "read",
        "",
        CONTACT_JID,
    )
    assert event.occurred_at is not None and event.occurred_at.isoformat() == "2026-11-22T10:00:05+00:00"
    assert event.payload["data"]["surprise_field"] == {"kept": True}
    assert "token" not in event.payload["instanceData"], "the instance token is not kept"
    assert event.payload["instanceData"]["instance"] == fake.INSTANCE


@pytest.mark.parametrize(
    ("raw", "expected", "raw_text"),
    [
        (0, Status.QUEUED, "0"),
        (1, Status.SENT, "1"),
        (2, Status.DELIVERED, "2"),
        (3, Status.DELIVERED, "3"),
        (4, Status.READ, "4"),
        (5, Status.READ, "5"),
        (-1, Status.FAILED, "-1"),
        ("4", Status.READ, "4"),
        (4.0, Status.READ, "4"),
        (9, Status.UNKNOWN, "9"),
        ("pending", Status.QUEUED, "pending"),
        ("sent", Status.SENT, "sent"),
        ("DELIVERED", Status.DELIVERED, "DELIVERED"),
        ("received", Status.DELIVERED, "received"),
        ("played", Status.READ, "played"),
        ("error", Status.FAILED, "error"),
        # We read their message on another device: not a read of ours.
        ("read_self", Status.UNKNOWN, "read_self"),
        ("played-self", Status.UNKNOWN, "played-self"),
        ("wobbly", Status.UNKNOWN, "wobbly"),
    ],
)
def test_status_by_name_or_number(hook, raw, expected, raw_text):
    body = _envelope("message.status", {"messageId": MESSAGE_ID, "status": raw})
    (event,) = hook.parse_webhook(_webhook(body))
    assert (event.status, event.raw_status) == (expected, raw_text)


@pytest.mark.parametrize(
    "data",
    [
        {"key": {"id": MESSAGE_ID, "remoteJid": CONTACT_JID}, "status": 4},
        {"id": MESSAGE_ID, "status_code": 4, "chatJid": CONTACT_JID},
        {"message_id": MESSAGE_ID, "ack": "read", "chat": CONTACT_JID},
    ],
)
def test_default_paths_cover_plausible_layouts(hook, data):
    (event,) = hook.parse_webhook(_webhook(_envelope("message.status", data)))
    assert (event.message_id, event.status, event.chat_id) == (MESSAGE_ID, Status.READ, CONTACT_JID)


def test_one_receipt_for_several_messages_gives_one_event_each(hook):
    data = {"messageIds": ["m-1", "m-2", "m-1"], "status": "delivered", "chat": {"jid": CONTACT_JID}}
    events = hook.parse_webhook(_webhook(_envelope("message.status", data)))
    assert [(e.message_id, e.status) for e in events] == [
        ("m-1", Status.DELIVERED),
        ("m-2", Status.DELIVERED),
    ]


def test_field_paths_are_configurable(make_hook):
    hook = make_hook(
        conn_id="ryze_paths",
        extra={
            "webhook_message_id_path": "data.receipt.ids.0",
            "webhook_status_path": "data.receipt.state, data.state",
            "webhook_chat_path": "data.where",
            "webhook_participant_path": "data.who",
            "webhook_timestamp_path": "data.when",
        },
    )
    data = {
        # Defaults would find these and be wrong: configured paths replace them.
        "messageId": "decoy",
        "status": "error",
        "receipt": {"ids": ["m-7"]},
        "state": "played",
        "where": GROUP_JID,
        "who": READER_JID,
        "when": 1_795_000_000,
    }
    (event,) = hook.parse_webhook(_webhook(_envelope("message.status", data), conn_id="ryze_paths"))

    assert (event.message_id, event.status, event.raw_status) == ("m-7", Status.READ, "played")
    assert (event.chat_id, event.participant) == (GROUP_JID, READER_JID)
    assert event.occurred_at is not None and event.occurred_at.timestamp() == 1_795_000_000

    with pytest.raises(WebhookPayloadError, match=r"no message id at data\.receipt\.ids\.0"):
        hook.parse_webhook(_webhook(_envelope("message.status", {"messageId": "m"}), conn_id="ryze_paths"))


def test_group_receipt_names_the_reader(hook):
    data = {
        "messageId": MESSAGE_ID,
        "status": "read",
        "chat": {"jid": GROUP_JID},
        "sender": {"jid": READER_JID},
    }
    (event,) = hook.parse_webhook(_webhook(_envelope("message.status", data)))
    assert (event.chat_id, event.participant) == (GROUP_JID, READER_JID)

    one_to_one = {**data, "chat": {"jid": CONTACT_JID}}
    (event,) = hook.parse_webhook(_webhook(_envelope("message.status", one_to_one)))
    assert event.participant == "", "no participant outside groups"


def test_fake_status_webhook_round_trips(hook, ryze):
    message_id = hook.send_message(number=CONTACT, message="Hi")["messageId"]
    ryze.set_status(message_id, "played")

    (event,) = hook.parse_webhook(_webhook(ryze.status_webhook(message_id)))

    assert (event.message_id, event.status, event.chat_id) == (message_id, Status.READ, CONTACT_JID)


def test_inbound_message_is_received(hook, ryze):
    message_id = ryze.receive(number=CONTACT_DIGITS, text="oi")

    (event,) = hook.parse_webhook(_webhook(ryze.exchange_webhook(message_id)))

    assert (event.message_id, event.status, event.is_inbound) == (message_id, Status.RECEIVED, True)
    assert (event.chat_id, event.participant) == (CONTACT_JID, "")
    assert event.occurred_at is not None


def test_inbound_group_message_names_its_author(hook, ryze):
    message_id = ryze.receive(number=GROUP_JID, text="oi")

    (event,) = hook.parse_webhook(_webhook(ryze.exchange_webhook(message_id, author=READER_JID)))

    # Exactly what mark_read needs for a group: number=chat_id, sender=participant.
    assert (event.chat_id, event.participant) == (GROUP_JID, READER_JID)


@pytest.mark.parametrize(
    "data",
    [
        {"id": "m-out", "direction": "outgoing", "chat": {"jid": CONTACT_JID}},
        {"key": {"id": "m-out", "fromMe": True, "remoteJid": CONTACT_JID}},
        {"id": "m-out", "fromMe": True},
    ],
)
def test_outbound_echoes_give_no_event(hook, data):
    assert hook.parse_webhook(_webhook(_envelope("message.exchange", data))) == []


@pytest.mark.parametrize("event", ["call.update", "group.flow", "instance.state", "contact.update"])
def test_other_events_give_no_event(hook, event):
    assert hook.parse_webhook(_webhook(_envelope(event, {"anything": [1, 2]}))) == []


def test_envelope_for_another_instance_is_refused(hook):
    with pytest.raises(WebhookPayloadError, match="'other-instance'"):
        hook.parse_webhook(_webhook(_envelope("message.status", STATUS_BODY["data"], "other-instance")))
    with pytest.raises(WebhookPayloadError):
        hook.parse_webhook(_webhook(_envelope("call.update", {}, "other-instance")))


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"\xff\xfe",
        b"[1, 2]",
        {"data": {}, "instanceData": {"instance": fake.INSTANCE}},
        {"event": 5, "data": {}, "instanceData": {"instance": fake.INSTANCE}},
        {"event": "message.status", "data": {"messageId": MESSAGE_ID, "status": "read"}},
        {"event": "message.status", "data": {}, "instanceData": "airflow-wa"},
        _envelope("message.status", "read"),
        _envelope("message.status", {"status": "read"}),
        _envelope("message.status", {"messageId": MESSAGE_ID}),
        _envelope("message.status", {"messageId": MESSAGE_ID, "status": {"name": "read"}}),
        _envelope("message.status", {"messageId": MESSAGE_ID, "status": True}),
        _envelope("message.status", {"messageId": [MESSAGE_ID, 7], "status": "read"}),
        _envelope("message.exchange", {"direction": "incoming", "chat": {"jid": CONTACT_JID}}),
        _envelope("message.exchange", None),
    ],
)
def test_unusable_payloads_are_payload_errors(hook, body):
    with pytest.raises(WebhookPayloadError):
        hook.parse_webhook(_webhook(body))


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=20,
)
_data_keys = st.sampled_from(
    [
        "messageId",
        "messageIds",
        "id",
        "key",
        "status",
        "status_code",
        "chat",
        "sender",
        "timestamp",
        "direction",
    ]
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    event=st.sampled_from(["message.status", "message.exchange", "call.update"]) | st.text(max_size=10),
    data=st.dictionaries(_data_keys, _json_values, max_size=6) | _json_values,
)
def test_no_payload_raises_anything_but_a_payload_error(hook, event, data):
    try:
        events = hook.parse_webhook(_webhook(_envelope(event, data)))
    except WebhookPayloadError:
        return
    assert all(isinstance(e.status, Status) for e in events)


def test_normalize_status_is_exported_for_other_callers():
    assert normalize_status("READ") == (Status.READ, "READ")
    assert normalize_status(False) == (Status.UNKNOWN, "false")
