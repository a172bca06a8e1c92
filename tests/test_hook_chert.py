from __future__ import annotations

import json
import logging
import time
from datetime import datetime, timezone

import pytest

from airflow_provider_readreceipts.hooks import chert as chert_module
from airflow_provider_readreceipts.hooks.base import WebhookRequest
from airflow_provider_readreceipts.hooks.chert import ChertHook, receipt_events_from_message
from airflow_provider_readreceipts.receipts import (
    DeliveryUnknownError,
    InvalidInputError,
    Status,
    VendorAPIError,
    WebhookAuthError,
    WebhookPayloadError,
)
from airflow_provider_readreceipts.testing.fakes import chert as fake
from airflow_provider_readreceipts.testing.fakes.server import Fault

CONTACT = "+14155551234"


@pytest.fixture
def chert(vendors) -> fake.ChertFake:
    return vendors.fakes["chert"]


@pytest.fixture
def make_hook(vendors, airflow_connection):
    def make(conn_id: str = "chert_test", **fields) -> ChertHook:
        fields.setdefault("host", vendors.url("chert"))
        fields.setdefault("password", fake.SIGNING_SECRET)
        fields.setdefault("extra", {"webhook_secret": fake.WEBHOOK_SECRET})
        if fields.get("login", "") is None:
            del fields["login"]
        airflow_connection(conn_id, "chert", **fields)
        return ChertHook(chert_conn_id=conn_id, retry_max_seconds=5)

    return make


@pytest.fixture
def hook(make_hook) -> ChertHook:
    """HMAC mode: the tenant is set, so it is the default."""
    return make_hook(login=fake.TENANT)


@pytest.fixture
def bearer_hook(make_hook) -> ChertHook:
    """Bearer mode: no tenant, so it is the default."""
    return make_hook("chert_bearer", login=None)


def _signature_parts(request) -> tuple[str, str, str]:
    version, timestamp, digest = request.header("x-chert-signature").split(",")
    return version, timestamp, digest


# -- auth -------------------------------------------------------------------------------------------


def test_hmac_mark_read_signs_the_empty_body(hook, vendors, chert):
    chat_id = chert.add_chat()

    result = hook.mark_read(chat_id=chat_id)

    assert result == {"chat_id": chat_id, "status": "read"}
    assert chert.marked_read == [chat_id]
    (request,) = vendors.requests_to("chert", "/mark-read")
    assert (request.method, request.path, request.body) == ("POST", f"/chats/{chat_id}/mark-read", b"")
    version, timestamp, digest = _signature_parts(request)
    assert version == "v1" and abs(int(timestamp) - time.time()) < 5
    assert digest == fake.sign(fake.SIGNING_SECRET, timestamp, b"")
    assert request.header("x-chert-tenant") == fake.TENANT
    assert "authorization" not in request.headers
    assert fake.SIGNING_SECRET not in str(request.headers)


def test_hmac_signature_covers_the_exact_bytes_sent(hook, vendors, chert):
    sent = hook.send_message(phone="+1 (415) 555-1234", body="Hi Sam - got a minute?")

    (request,) = vendors.requests_to("chert", "/send")
    assert json.loads(request.body) == {"phone": CONTACT, "body": "Hi Sam - got a minute?"}
    _, timestamp, digest = _signature_parts(request)
    assert digest == fake.sign(fake.SIGNING_SECRET, timestamp, request.body)
    assert request.header("content-type") == "application/json"
    assert sent["status"] == "sent"
    assert [m["id"] for m in chert.messages()] == [sent["message_id"]]


def test_bearer_mode_sends_the_token(bearer_hook, vendors, chert):
    chat_id = chert.add_chat()

    bearer_hook.mark_read(chat_id=chat_id)

    (request,) = vendors.requests_to("chert")
    assert request.header("authorization") == f"Bearer {fake.SIGNING_SECRET}"
    assert "x-chert-signature" not in request.headers
    assert "x-chert-tenant" not in request.headers


def test_explicit_bearer_mode_with_a_tenant_sends_both(make_hook, vendors, chert):
    hook = make_hook(login=fake.TENANT, extra={"auth_mode": "Bearer"})
    chat_id = chert.add_chat()

    hook.mark_read(chat_id=chat_id)

    (request,) = vendors.requests_to("chert")
    assert request.header("authorization") == f"Bearer {fake.SIGNING_SECRET}"
    assert request.header("x-chert-tenant") == fake.TENANT
    assert "x-chert-signature" not in request.headers


@pytest.mark.parametrize("offset", [-400, 400])
def test_a_clock_off_by_more_than_five_minutes_gets_2013(hook, vendors, chert, monkeypatch, offset):
    monkeypatch.setattr(chert_module, "_unix_now", lambda: int(time.time()) + offset)

    with pytest.raises(VendorAPIError) as caught:
        hook.mark_read(chat_id=chert.add_chat())

    error = caught.value
    assert (error.status_code, error.code, error.retryable) == (401, "2013", False)
    assert error.trace_id and error.trace_id in str(error)
    assert len(vendors.requests_to("chert")) == 1, "an auth failure is not retried"
    assert chert.marked_read == []


def test_a_clock_off_by_four_minutes_is_still_accepted(hook, chert, monkeypatch):
    monkeypatch.setattr(chert_module, "_unix_now", lambda: int(time.time()) - 240)
    assert hook.mark_read(chat_id=chert.add_chat())["status"] == "read"


@pytest.mark.parametrize("login", [fake.TENANT, None], ids=["hmac", "bearer"])
def test_wrong_secret_is_refused_without_leaking_it(make_hook, vendors, chert, login):
    hook = make_hook("chert_wrong", login=login, password="wrong-secret-Zq81")

    with pytest.raises(VendorAPIError) as caught:
        hook.mark_read(chat_id=chert.add_chat())

    assert (caught.value.status_code, caught.value.code) == (401, "2004")
    assert "wrong-secret-Zq81" not in f"{caught.value} {caught.value!r}"
    assert len(vendors.requests_to("chert")) == 1


@pytest.mark.parametrize(
    ("fields", "field", "says"),
    [
        ({"login": fake.TENANT, "password": None}, "connection 'chert_bad'", "as password"),
        ({"login": None, "extra": {"auth_mode": "hmac"}}, "connection 'chert_bad'", "tenant slug as login"),
        ({"login": fake.TENANT, "extra": {"auth_mode": "basic"}}, "auth_mode", "'hmac' or 'bearer'"),
    ],
)
def test_unusable_connections_are_refused_before_any_request(make_hook, vendors, fields, field, says):
    fields = dict(fields)
    if fields.get("password", "") is None:
        fields["password"] = ""
    hook = make_hook("chert_bad", **fields)

    with pytest.raises(InvalidInputError) as caught:
        hook.mark_read(chat_id="chat-1")

    assert caught.value.field == field
    assert says in str(caught.value)
    assert fake.SIGNING_SECRET not in str(caught.value)
    assert vendors.requests_to("chert") == []


def test_empty_host_means_the_public_api_and_a_bare_host_gets_the_api_root(make_hook):
    default = make_hook("chert_default_host", host="", login=fake.TENANT)
    default.get_conn()
    bare = make_hook("chert_bare_host", host="console.trychert.example", login=fake.TENANT)
    bare.get_conn()

    assert default.base_url == "https://console.trychert.com/api/v1"
    assert bare.base_url == "https://console.trychert.example/api/v1"
    assert default.url_from_endpoint("/chats/c1/mark-read") == (
        "https://console.trychert.com/api/v1/chats/c1/mark-read"
    )


# -- documented errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "status"),
    [(1002, 422), (4099, 501), (2002, 404)],
)
def test_mark_read_errors_that_retrying_cannot_fix(hook, vendors, chert, code, status):
    chat_id = chert.add_chat()
    chert.fail_mark_read(chat_id, code)

    with pytest.raises(VendorAPIError) as caught:
        hook.mark_read(chat_id=chat_id)

    error = caught.value
    assert (error.vendor, error.status_code, error.code, error.retryable) == (
        "Chert",
        status,
        str(code),
        False,
    )
    assert error.message == fake.MARK_READ_ERRORS[code][1]
    assert len(vendors.requests_to("chert")) == 1, "not retried"
    assert error.trace_id and len(error.trace_id) == 12
    assert f"Chert mark_read failed: HTTP {status}, code {code}" in str(error)


def test_mark_read_of_an_unknown_chat_is_404_2002(hook, vendors):
    with pytest.raises(VendorAPIError) as caught:
        hook.mark_read(chat_id="no-such-chat")

    assert (caught.value.status_code, caught.value.code, caught.value.retryable) == (404, "2002", False)
    assert len(vendors.requests_to("chert")) == 1


def test_502_4001_flagged_retryable_is_retried(hook, vendors, chert):
    chat_id = chert.add_chat()
    chert.fail_mark_read(chat_id, 4001, retryable=True, times=1)

    assert hook.mark_read(chat_id=chat_id) == {"chat_id": chat_id, "status": "read"}
    assert len(vendors.requests_to("chert", "/mark-read")) == 2
    assert chert.marked_read == [chat_id]


def test_502_4001_flagged_not_retryable_is_not_retried(hook, vendors, chert):
    chat_id = chert.add_chat()
    chert.fail_mark_read(chat_id, 4001, retryable=False, times=1)

    with pytest.raises(VendorAPIError) as caught:
        hook.mark_read(chat_id=chat_id)

    assert (caught.value.status_code, caught.value.code, caught.value.retryable) == (502, "4001", False)
    assert len(vendors.requests_to("chert", "/mark-read")) == 1


def test_the_vendors_flag_wins_over_the_http_status(hook, vendors, chert):
    # A 400 that Chert flags retryable is retried; the HTTP status alone would say otherwise.
    chat_id = chert.add_chat()
    vendors.inject("chert", fake.chert_fault(400, 1001, retryable=True))

    assert hook.mark_read(chat_id=chat_id)["status"] == "read"
    assert len(vendors.requests_to("chert")) == 2


def test_429_1007_waits_for_retry_after(hook, vendors, chert):
    chat_id = chert.add_chat()
    vendors.inject("chert", fake.rate_limited(retry_after=1))

    assert hook.mark_read(chat_id=chat_id)["status"] == "read"

    first, second = vendors.requests_to("chert")
    assert second.received_at - first.received_at >= 0.9
    # Each attempt is signed afresh, never replayed.
    assert _signature_parts(first)[2] == fake.sign(fake.SIGNING_SECRET, _signature_parts(first)[1], b"")
    assert _signature_parts(second)[2] == fake.sign(fake.SIGNING_SECRET, _signature_parts(second)[1], b"")


def test_a_proxy_error_without_the_envelope_is_still_readable(hook, vendors, chert):
    vendors.inject("chert", *[Fault(status=503, body="Service Unavailable") for _ in range(5)])

    hook.max_attempts = 2
    with pytest.raises(VendorAPIError) as caught:
        hook.mark_read(chat_id=chert.add_chat())

    assert (caught.value.status_code, caught.value.code, caught.value.retryable) == (503, None, True)
    assert caught.value.message == "Service Unavailable"
    assert len(vendors.requests_to("chert")) == 2


# -- sends ------------------------------------------------------------------------------------------


def test_send_with_an_idempotency_key_is_retried_and_sent_once(hook, vendors, chert):
    chert.lose_next_answers(1)  # the first attempt sends, but its answer is a 503

    sent = hook.send_message(phone=CONTACT, body="Hi", idempotency_key="run-42-send")

    first, second = vendors.requests_to("chert", "/send")
    assert (
        json.loads(first.body)
        == json.loads(second.body)
        == {
            "phone": CONTACT,
            "body": "Hi",
            "idempotency_key": "run-42-send",
        }
    )
    assert [m["id"] for m in chert.messages()] == [sent["message_id"]]


def test_the_same_key_twice_returns_the_original_message(hook, chert):
    first = hook.send_message(phone=CONTACT, body="Hi", idempotency_key="k-1")
    again = hook.send_message(phone=CONTACT, body="Hi", idempotency_key="k-1")
    other = hook.send_message(phone=CONTACT, body="Hi", idempotency_key="k-2")

    assert again == first
    assert other["message_id"] != first["message_id"]
    assert other["lead_id"] == first["lead_id"] and other["lead_created"] is False
    assert len(chert.messages()) == 2


def test_send_without_a_key_is_not_repeated_after_a_5xx(hook, vendors, chert):
    chert.lose_next_answers(1)

    with pytest.raises(DeliveryUnknownError) as caught:
        hook.send_message(phone=CONTACT, body="Hi")

    assert "may have been sent" in str(caught.value)
    assert len(vendors.requests_to("chert", "/send")) == 1
    assert len(chert.messages()) == 1, "it was sent once, and not again"


def test_send_without_a_key_is_retried_after_429(hook, vendors, chert):
    vendors.inject("chert", fake.rate_limited(retry_after=0))

    hook.send_message(phone=CONTACT, body="Hi")

    assert len(vendors.requests_to("chert", "/send")) == 2
    assert len(chert.messages()) == 1


def test_send_to_chat_wraps_the_text_in_message_parts(hook, vendors, chert):
    chat_id = hook.send_message(phone=CONTACT, body="Hi")["lead_id"]
    chert.lose_next_answers(1)

    followup = hook.send_to_chat(chat_id=chat_id, body="How about 3pm PT?", idempotency_key="f-1")

    first, second = vendors.requests_to("chert", f"/chats/{chat_id}/messages", method="POST")
    assert first.body == second.body, "the retry repeats the same key"
    assert json.loads(second.body) == {
        "message": {"parts": [{"type": "text", "value": "How about 3pm PT?"}], "idempotency_key": "f-1"}
    }
    assert followup["message"]["status"] == "sent"
    assert len(chert.messages()) == 2


def test_send_to_chat_without_a_key_is_not_repeated(hook, vendors, chert):
    chat_id = chert.add_chat()
    chert.lose_next_answers(1)

    with pytest.raises(DeliveryUnknownError):
        hook.send_to_chat(chat_id=chat_id, body="Hello")

    assert len(vendors.requests_to("chert", "/messages")) == 1


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda h: h.mark_read(chat_id=""), "chat_id"),
        (lambda h: h.mark_read(chat_id="   "), "chat_id"),
        (lambda h: h.mark_read(chat_id=None), "chat_id"),
        (lambda h: h.list_messages(""), "chat_id"),
        (lambda h: h.send_message(phone="4155551234", body="Hi"), "phone"),
        (lambda h: h.send_message(phone="+1 555", body="Hi"), "phone"),
        (lambda h: h.send_message(phone=CONTACT, body=" "), "body"),
        (lambda h: h.send_message(phone=CONTACT, body="Hi", idempotency_key=""), "idempotency_key"),
        (lambda h: h.send_to_chat(chat_id="", body="Hi"), "chat_id"),
        (lambda h: h.send_to_chat(chat_id="c", body=""), "body"),
    ],
)
def test_bad_input_fails_before_any_request(hook, vendors, call, field):
    with pytest.raises(InvalidInputError) as caught:
        call(hook)
    assert caught.value.field == field
    assert vendors.requests_to("chert") == []


def test_chat_ids_are_quoted_into_the_path(hook, vendors, chert):
    chat_id = chert.add_chat(chat_id="odd/chat?id#1")

    assert hook.mark_read(chat_id=chat_id)["chat_id"] == chat_id

    (request,) = vendors.requests_to("chert")
    assert request.path == "/chats/odd%2Fchat%3Fid%231/mark-read"


# -- secrets ----------------------------------------------------------------------------------------


def test_secrets_stay_out_of_logs_errors_and_repr(hook, vendors, chert, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    hook.max_attempts = 2
    chat_id = chert.add_chat()
    chert.fail_mark_read(chat_id, 4001, retryable=True)

    with pytest.raises(VendorAPIError) as caught:
        hook.mark_read(chat_id=chat_id)

    logs = capsys.readouterr().out + caplog.text
    exposed = "\n".join([logs, str(caught.value), repr(caught.value), repr(hook), repr(hook.get_conn().auth)])
    assert "retrying" in logs
    for secret in (fake.SIGNING_SECRET, fake.WEBHOOK_SECRET):
        assert secret not in exposed


# -- list, test_connection --------------------------------------------------------------------------


def test_list_messages(hook, chert):
    sent = hook.send_message(phone=CONTACT, body="Hi")
    chert.add_inbound(sent["lead_id"], "Sure")

    listing = hook.list_messages(sent["lead_id"])

    assert listing["has_more"] is False
    assert [(m["id"] == sent["message_id"], m["direction"]) for m in listing["messages"]] == [
        (True, "outbound"),
        (False, "inbound"),
    ]


async def test_async_list_uses_the_async_connection_only(hook, chert, monkeypatch):
    sent = hook.send_message(phone=CONTACT, body="Hi")
    fresh = ChertHook(chert_conn_id="chert_test")

    def no_blocking_lookup(*args, **kwargs):
        raise AssertionError("a blocking connection look-up inside the event loop")

    monkeypatch.setattr(fresh, "get_connection", no_blocking_lookup)
    try:
        listing = await fresh.alist_messages(sent["lead_id"])
        with pytest.raises(VendorAPIError) as caught:
            await fresh.alist_messages("no-such-chat")
    finally:
        await fresh.aclose()

    assert [m["id"] for m in listing["messages"]] == [sent["message_id"]]
    assert (caught.value.status_code, caught.value.code) == (404, "2002")


@pytest.mark.parametrize("hook_name", ["hook", "bearer_hook"])
def test_test_connection_changes_nothing(request, vendors, chert, hook_name):
    ok, message = request.getfixturevalue(hook_name).test_connection()

    assert ok, message
    assert [r.method for r in vendors.requests_to("chert")] == ["GET"]
    assert chert.chats == {} and chert.marked_read == []


def test_test_connection_with_a_wrong_secret_fails(make_hook, vendors):
    ok, message = make_hook("chert_wrong", login=fake.TENANT, password="wrong-secret-Zq81").test_connection()

    assert not ok
    assert "HTTP 401" in message and "2004" in message
    assert "wrong-secret-Zq81" not in message


def test_test_connection_needs_chert_to_say_2002(make_hook, vendors):
    # A 404 from a wrong base URL (no Chert envelope) proves nothing about the credentials.
    hook = make_hook("chert_wrong_url", login=fake.TENANT, host=vendors.url("chert") + "/nowhere")

    ok, message = hook.test_connection()

    assert not ok and "HTTP 404" in message


def test_test_connection_reports_an_unusable_connection(make_hook, vendors):
    ok, message = make_hook("chert_no_tenant", login=None, extra={"auth_mode": "hmac"}).test_connection()

    assert not ok and "tenant slug" in message
    assert vendors.requests_to("chert") == []


# -- reconcile --------------------------------------------------------------------------------------


async def test_reconcile_follows_the_message_up_the_ladder(hook, chert):
    sent = hook.send_message(phone=CONTACT, body="Hi")
    message_id, chat_id = sent["message_id"], sent["lead_id"]
    try:
        just_sent = await hook.afetch_receipt_events(message_id=message_id, chat=chat_id)
        chert.deliver(message_id, at="2026-05-01T12:00:00Z")
        delivered = await hook.afetch_receipt_events(message_id=message_id, chat=chat_id)
        chert.read(message_id, at="2026-05-01T12:03:00Z")
        read = await hook.afetch_receipt_events(message_id=message_id, chat=chat_id)
        unknown = await hook.afetch_receipt_events(message_id="not-in-this-chat", chat=chat_id)
    finally:
        await hook.aclose()

    assert [e.status for e in just_sent] == [Status.SENT]
    assert [(e.status, e.occurred_at) for e in delivered] == [
        (Status.DELIVERED, datetime(2026, 5, 1, 12, 0, tzinfo=timezone.utc))
    ]
    assert [(e.status, e.occurred_at) for e in read] == [
        (Status.READ, datetime(2026, 5, 1, 12, 3, tzinfo=timezone.utc)),
        (Status.DELIVERED, datetime(2026, 5, 1, 12, 0, tzinfo=timezone.utc)),
    ]
    assert {(e.vendor, e.conn_id, e.message_id, e.chat_id) for e in read} == {
        ("chert", "chert_test", message_id, chat_id)
    }
    assert unknown == []


async def test_reconcile_reports_a_failure(hook, chert):
    sent = hook.send_message(phone=CONTACT, body="Hi")
    chert.fail(sent["message_id"], code=4001, reason="Not an iMessage user")
    try:
        (event,) = await hook.afetch_receipt_events(message_id=sent["message_id"], chat=sent["lead_id"])
    finally:
        await hook.aclose()

    assert (event.status, event.raw_status, event.error_code, event.error_message) == (
        Status.FAILED,
        "failed",
        "4001",
        "Not an iMessage user",
    )


async def test_reconcile_needs_the_chat(hook, vendors):
    with pytest.raises(InvalidInputError) as caught:
        await hook.afetch_receipt_events(message_id="m-1", chat="")
    assert caught.value.field == "chat"
    assert vendors.requests_to("chert") == []


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ({"status": "sent", "direction": "outbound"}, [(Status.SENT, "sent")]),
        (
            {"status": "read", "read_at": "2026-05-01T12:03:00Z", "delivered_at": "2026-05-01T12:00:00Z"},
            [(Status.READ, "read_at"), (Status.DELIVERED, "delivered_at")],
        ),
        # READ arrives before DELIVERED is known: still read.
        ({"status": "read", "read_at": "2026-05-01T12:03:00Z"}, [(Status.READ, "read_at")]),
        # A status word without the timestamp that proves it is kept, not trusted.
        ({"status": "read"}, [(Status.UNKNOWN, "read")]),
        ({"status": "sent", "error": {"code": 4001, "message": "x"}}, [(Status.SENT, "sent")]),
        ({"status": "queued_upstream"}, [(Status.UNKNOWN, "queued_upstream")]),
        ({"status": "error", "error_code": 4002}, [(Status.FAILED, "error")]),
        ({"status": "", "error": {"code": 4001, "message": "x"}}, [(Status.FAILED, "error")]),
        (
            {"status": "delivered", "direction": "inbound", "read_at": "2026-05-01T12:03:00Z"},
            [(Status.RECEIVED, "delivered")],
        ),
        ({"status": None}, []),
    ],
)
def test_message_fields_to_events(message, expected):
    events = receipt_events_from_message({"id": "m-1", **message}, conn_id="c", chat_id="chat-1")

    assert [(e.status, e.raw_status) for e in events] == expected
    assert all((e.message_id, e.chat_id, e.conn_id) == ("m-1", "chat-1", "c") for e in events)


def test_a_message_row_without_an_id_proves_nothing():
    assert receipt_events_from_message({"status": "sent"}, conn_id="c") == []


# -- webhooks ---------------------------------------------------------------------------------------

RECEIVED_AT = 1_780_000_000.0


def _webhook(body, headers=None, *, received_at: float = RECEIVED_AT) -> WebhookRequest:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return WebhookRequest(
        conn_id="chert_test",
        headers={k.lower(): v for k, v in (headers or {}).items()},
        query={},
        body=raw,
        received_at=received_at,
    )


def _signed(
    body, *, header="X-Webhook-Signature", style="v1", ts=int(RECEIVED_AT), **kwargs
) -> WebhookRequest:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    signature = fake.webhook_signature(raw, timestamp=ts, style=style, **kwargs)
    return _webhook(raw, {header: signature, "X-Webhook-Event-Id": "evt-1"})


RECEIVED = fake.message_received_event(chat_id="chat-9", message_id="0D36042D", event_id="chert:msg:1")


@pytest.mark.parametrize("header", ["X-Webhook-Signature", "x-chert-signature"])
@pytest.mark.parametrize("style", ["v1", "t="])
def test_good_signatures_verify(hook, header, style):
    hook.verify_webhook(_signed(RECEIVED, header=header, style=style))


@pytest.mark.parametrize("skew", [-300, 300])
def test_the_window_edge_is_accepted(hook, skew):
    hook.verify_webhook(_signed(RECEIVED, ts=int(RECEIVED_AT) + skew))


@pytest.mark.parametrize(
    ("request_", "reason"),
    [
        (_signed(RECEIVED, secret="not-the-subscription-secret"), "signature does not match"),
        (_signed(RECEIVED, ts=int(RECEIVED_AT) - 301), "more than 300 s"),
        (_signed(RECEIVED, ts=int(RECEIVED_AT) + 301), "more than 300 s"),
        (
            _webhook(RECEIVED, {"X-Webhook-Event-Id": "evt-1"}),
            "missing x-webhook-signature or x-chert-signature",
        ),
        (_webhook(RECEIVED, {"X-Webhook-Signature": "sha256=abc"}), "not in the form"),
        (_webhook(RECEIVED, {"X-Webhook-Signature": "v1,12ab,deadbeef"}), "not in the form"),
        (_webhook(RECEIVED, {"X-Webhook-Signature": f"t={int(RECEIVED_AT)}"}), "not in the form"),
        (_webhook(RECEIVED, {"X-Webhook-Signature": "v1,\u0661\u0662,ff"}), "not in the form"),
        (
            _webhook(RECEIVED, {"X-Webhook-Signature": f"v1,{int(RECEIVED_AT)},\u00e9\u00e9"}),
            "does not match",
        ),
    ],
    ids=[
        "wrong-secret",
        "stale",
        "future",
        "missing",
        "foreign-format",
        "bad-ts",
        "no-digest",
        "digits",
        "utf8",
    ],
)
def test_bad_signatures_are_refused(hook, request_, reason):
    with pytest.raises(WebhookAuthError) as caught:
        hook.verify_webhook(request_)
    assert reason in str(caught.value)
    assert fake.WEBHOOK_SECRET not in str(caught.value)


def test_a_tampered_body_is_refused(hook):
    signed = _signed(RECEIVED)
    tampered = WebhookRequest(
        conn_id=signed.conn_id,
        headers=signed.headers,
        query={},
        body=signed.body.replace(b"0D36042D", b"0D36042E"),
        received_at=signed.received_at,
    )
    with pytest.raises(WebhookAuthError, match="does not match"):
        hook.verify_webhook(tampered)


def test_either_header_verifies_when_one_of_two_is_good(hook):
    raw = json.dumps(RECEIVED).encode()
    good = fake.webhook_signature(raw, timestamp=int(RECEIVED_AT))
    bad = fake.webhook_signature(raw, timestamp=int(RECEIVED_AT), secret="other")
    hook.verify_webhook(_webhook(raw, {"X-Webhook-Signature": bad, "x-chert-signature": good}))


def test_a_configured_signature_header_is_the_only_one_read(make_hook):
    hook = make_hook(
        "chert_hdr",
        login=fake.TENANT,
        extra={"webhook_secret": fake.WEBHOOK_SECRET, "webhook_signature_header": "X-Chert-Signature"},
    )
    hook.verify_webhook(_signed(RECEIVED, header="x-chert-signature"))
    with pytest.raises(WebhookAuthError, match="missing x-chert-signature"):
        hook.verify_webhook(_signed(RECEIVED, header="X-Webhook-Signature"))


def test_without_a_webhook_secret_nothing_verifies(make_hook):
    hook = make_hook("chert_nowh", login=fake.TENANT, extra={})
    with pytest.raises(WebhookAuthError, match="no webhook_secret"):
        hook.verify_webhook(_signed(RECEIVED))


def test_message_received_is_normalised(hook):
    request_ = _signed(RECEIVED)
    hook.verify_webhook(request_)
    (event,) = hook.parse_webhook(request_)

    assert (event.vendor, event.conn_id, event.message_id, event.chat_id) == (
        "chert",
        "chert_test",
        "0D36042D",
        "chat-9",
    )
    assert (event.status, event.raw_status, event.is_inbound, event.participant) == (
        Status.RECEIVED,
        "message.received",
        True,
        "",
    )
    assert event.event_id == "chert:msg:1", "the signed body's event_id, not the unsigned header"
    assert event.occurred_at is not None
    assert event.payload["data"]["message"]["sender_handle"]["handle"] == CONTACT


def test_group_message_names_the_sender_and_body_event_id_is_the_fallback(hook):
    body = fake.message_received_event(chat_id="g-1", message_id="m-7", sender="+14155550000", is_group=True)
    (event,) = hook.parse_webhook(_webhook(body))

    assert (event.participant, event.chat_id) == ("+14155550000", "g-1")
    assert event.event_id == body["event_id"]


def test_legacy_flat_payload_is_accepted(hook):
    body = {"event": "message.received", "message_guid": "guid-1", "chat_id": "c-2", "from": CONTACT}
    (event,) = hook.parse_webhook(_webhook(body, {"X-Webhook-Event-Id": "evt-9"}))
    assert (event.message_id, event.chat_id, event.status, event.event_id) == (
        "guid-1",
        "c-2",
        Status.RECEIVED,
        "evt-9",
    )


def test_the_event_header_wins_over_a_bare_type_in_the_body(hook):
    body = {"type": "something.else", "data": {"message": {"id": "m-1"}, "chat": {"id": "c"}}}
    (event,) = hook.parse_webhook(_webhook(body, {"X-Webhook-Event": "message.received"}))
    assert event.status is Status.RECEIVED


def test_edited_headers_cannot_turn_a_signed_delivery_into_another_event(hook):
    """The signature covers the body only: what the body says wins over the unsigned headers."""
    body = fake.message_received_event(chat_id="chat-9", message_id="m-3", event_id="chert:msg:3")
    replayed = _webhook(body, {"X-Webhook-Event": "reaction.added", "X-Webhook-Event-Id": "evt-new"})

    (event,) = hook.parse_webhook(replayed)

    assert (event.raw_status, event.status, event.event_id) == (
        "message.received",
        Status.RECEIVED,
        "chert:msg:3",
    )


@pytest.mark.parametrize("name", ["reaction.added", "reaction.removed"])
def test_reactions_are_kept_for_audit(hook, name):
    body = {
        "event": name,
        "event_id": "chert:rx:1",
        "data": {"chat": {"id": "chat-9"}, "reaction": {"message_id": "m-out-1", "type": "love"}},
    }
    (event,) = hook.parse_webhook(_webhook(body))
    assert (event.status, event.raw_status, event.message_id, event.chat_id) == (
        Status.UNKNOWN,
        name,
        "m-out-1",
        "chat-9",
    )


def test_unknown_event_with_a_message_is_kept_raw_and_without_one_acknowledged(hook):
    with_message = {"event": "message.edited", "data": {"message": {"id": "m-2"}}}
    (event,) = hook.parse_webhook(_webhook(with_message))
    assert (event.status, event.raw_status) == (Status.UNKNOWN, "message.edited")

    assert hook.parse_webhook(_webhook({"event": "lead_reply", "summary": "..."})) == []


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"\xff\xfe",
        b"[1, 2]",
        b"null",
        {"data": {"message": {"id": "m"}}},
        {"event": "message.received", "data": {"message": {}}},
        {"event": "message.received", "data": ["not", "an", "object"]},
        {"event": "message.received", "data": {"message": {"id": {"nested": True}}}},
        {"event": "message.received", "data": {"message": {"id": True}}},
        {"event": "reaction.added", "data": {"reaction": {"type": "love"}}},
        {"event": ["message.received"], "data": {"message": {"id": "m"}}},
    ],
)
def test_unusable_payloads_are_payload_errors(hook, body):
    with pytest.raises(WebhookPayloadError):
        hook.parse_webhook(_webhook(body))
