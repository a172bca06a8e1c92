"""
The webhook receiver over real HTTP: the app on a real uvicorn server (a thread) or the standalone
server (child processes), writing to a real SQLite file and the real PostgreSQL.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import io
import json
import logging
import random
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from typing import Any

import httpx
import pytest
import structlog
from fastapi import FastAPI
from fastapi.testclient import TestClient

from airflow_provider_readreceipts.hooks.store import ReceiptStore
from airflow_provider_readreceipts.receipts import InvalidInputError, Status
from airflow_provider_readreceipts.webhooks import (
    RedactSecretsFilter,
    install_access_log_redaction,
    redact_secrets,
)
from airflow_provider_readreceipts.webhooks.app import Receiver, create_app
from airflow_provider_readreceipts.webhooks.plugin import URL_PREFIX, ReadReceiptsPlugin
from airflow_provider_readreceipts.webhooks.standalone import build_parser, log_config
from tests.support import (
    DIRECT7_CONN_ID,
    DIRECT7_WEBHOOK_TOKEN,
    SENDBLUE_CONN_ID,
    SENDBLUE_SECRET_HEADER,
    SENDBLUE_WEBHOOK_SECRET,
    TEST_MAX_BODY_BYTES,
    StandaloneReceiver,
    connection_document,
    direct7_connection_fields,
    receiver_environment,
    sendblue_connection_fields,
    sendblue_payload,
)

#: Seconds a request to a standalone receiver may take (its first webhook loads the vendor's hook).
REQUEST_TIMEOUT = 60.0

# -- the core flow ------------------------------------------------------------------------------------


def test_read_is_stored_once_after_two_deliveries(running_receiver, store):
    payload = sendblue_payload("msg-read-1", "READ")

    first = running_receiver.post_sendblue(payload)
    second = running_receiver.post_sendblue(payload)

    assert (first.status_code, first.json()) == (200, {"stored": 1, "duplicates": 0})
    assert (second.status_code, second.json()) == (200, {"stored": 0, "duplicates": 1})
    (event,) = store.events(SENDBLUE_CONN_ID, "msg-read-1")
    assert (event.status, event.raw_status, event.source) == (Status.READ, "READ", "webhook")
    assert event.payload["accountEmail"] == "ops@example.com"  # the raw payload is kept for audit
    assert store.message_status(SENDBLUE_CONN_ID, "msg-read-1").status is Status.READ


@pytest.mark.parametrize(
    ("secret", "headers"),
    [
        (None, None),
        ("not-the-secret", None),
        (SENDBLUE_WEBHOOK_SECRET[:-1], None),
        # The right secret in a header the connection does not name proves nothing.
        (None, {"x-webhook-secret": SENDBLUE_WEBHOOK_SECRET}),
    ],
    ids=["missing", "wrong", "prefix", "other-header"],
)
def test_bad_or_missing_secret_is_401_and_stores_nothing(running_receiver, store, secret, headers):
    answer = running_receiver.post_sendblue(sendblue_payload("msg-forged"), secret=secret, headers=headers)

    assert answer.status_code == 401
    assert "sb-signing-secret" in answer.json()["detail"]
    assert SENDBLUE_WEBHOOK_SECRET not in answer.text
    assert store.events(SENDBLUE_CONN_ID, "msg-forged") == []


def test_unknown_connection_is_404_naming_it(running_receiver):
    answer = running_receiver.post_sendblue(sendblue_payload("m"), conn_id="no_such_account")

    assert answer.status_code == 404
    assert "no_such_account" in answer.json()["detail"]
    # Mounted in Airflow (not standalone), so no claim about where connections come from.
    assert "AIRFLOW_CONN_" not in answer.json()["detail"]


def test_connection_of_another_type_is_404_naming_the_type(running_receiver, airflow_connection):
    airflow_connection("plain_http", "http", host="example.com")

    answer = running_receiver.post_sendblue(sendblue_payload("m"), conn_id="plain_http")

    assert answer.status_code == 404
    assert "'plain_http' is of type 'http'" in answer.json()["detail"]


def test_the_openapi_document_describes_the_webhook_route_it_serves():
    app = create_app()
    served = {route.path for route in app.routes if "POST" in (getattr(route, "methods", None) or ())}
    operation = app.openapi()["paths"]["/webhooks/{conn_id}"]["post"]

    assert "/webhooks/{conn_id}" in served
    assert operation["operationId"] == "receive_webhook"
    assert "only after its events are committed" in operation["description"]
    parameters = [(param["name"], param["in"], param["required"]) for param in operation["parameters"]]
    assert parameters == [("conn_id", "path", True)]
    assert set(operation["responses"]) == {"200", "401", "404", "413", "422", "503"}


@pytest.mark.parametrize("conn_id", ["bad%20id", "semi;colon", "x" * 251, "caf%C3%A9", "%2e%2e%2fetc"])
def test_conn_id_of_impossible_shape_is_404(running_receiver, conn_id):
    answer = running_receiver.client.post(f"/webhooks/{conn_id}", content=b"{}")

    assert answer.status_code == 404
    # "../etc" is no longer a path under /webhooks/: the router's own 404.
    assert answer.json()["detail"] in (
        "Not Found",
        "not a valid connection id: use at most 250 letters, digits, underscores, hyphens and dots",
    )


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b'{"message_handle": "m", "status": ', "not valid JSON"),
        (b'["message_handle", "status"]', "must be a JSON object"),
        (b'"READ"', "must be a JSON object"),
        (json.dumps({"status": "READ"}).encode(), "message_handle is missing"),
        (json.dumps({"message_handle": "m-no-status"}).encode(), "status is missing"),
        (json.dumps({"message_handle": 17, "status": "READ"}).encode(), "message_handle is missing"),
    ],
    ids=["truncated", "array", "string", "no-id", "no-status", "numeric-id"],
)
def test_malformed_payload_is_422_with_the_reason(running_receiver, store, body, reason):
    answer = running_receiver.post_sendblue(body)

    assert answer.status_code == 422
    assert reason in answer.json()["detail"]
    assert store.events(SENDBLUE_CONN_ID, "m-no-status") == []


def test_oversized_body_is_413_by_content_length(running_receiver):
    padding = "x" * (TEST_MAX_BODY_BYTES + 1)

    answer = running_receiver.post_sendblue(sendblue_payload("msg-big", content=padding))

    assert answer.status_code == 413
    assert str(TEST_MAX_BODY_BYTES) in answer.json()["detail"]


def test_oversized_body_is_413_while_streaming(running_receiver, store):
    # Chunked transfer: no Content-Length to judge by, so the cap holds while reading.
    def chunks():
        yield json.dumps(sendblue_payload("msg-chunked"))[:-1].encode() + b', "padding": "'
        for _ in range(TEST_MAX_BODY_BYTES // 4096 + 2):
            yield b"y" * 4096
        yield b'"}'

    answer = running_receiver.client.post(
        f"/webhooks/{SENDBLUE_CONN_ID}",
        content=chunks(),
        headers={SENDBLUE_SECRET_HEADER: SENDBLUE_WEBHOOK_SECRET},
    )

    assert answer.status_code == 413
    assert store.events(SENDBLUE_CONN_ID, "msg-chunked") == []


def test_chunked_body_within_the_cap_is_accepted(running_receiver, store):
    body = json.dumps(sendblue_payload("msg-chunked-ok")).encode()

    answer = running_receiver.client.post(
        f"/webhooks/{SENDBLUE_CONN_ID}",
        content=iter([body[:10], body[10:]]),
        headers={SENDBLUE_SECRET_HEADER: SENDBLUE_WEBHOOK_SECRET},
    )

    assert answer.status_code == 200
    assert len(store.events(SENDBLUE_CONN_ID, "msg-chunked-ok")) == 1


def test_unknown_status_is_stored_raw(running_receiver, store):
    answer = running_receiver.post_sendblue(sendblue_payload("msg-odd", "TELEPORTED"))

    assert answer.json() == {"stored": 1, "duplicates": 0}
    (event,) = store.events(SENDBLUE_CONN_ID, "msg-odd")
    assert (event.status, event.raw_status) == (Status.UNKNOWN, "TELEPORTED")


def test_inbound_message_is_stored(running_receiver, store):
    inbound = sendblue_payload(
        "msg-inbound", "RECEIVED", is_outbound=False, number="+14155551234", to_number="+19175550100"
    )

    answer = running_receiver.post_sendblue(inbound)

    assert answer.json() == {"stored": 1, "duplicates": 0}
    (event,) = store.events(SENDBLUE_CONN_ID, "msg-inbound")
    assert (event.status, event.chat_id) == (Status.RECEIVED, "+14155551234")


def test_statuses_out_of_order_end_read(running_receiver, store):
    for status in ("READ", "SENT", "DELIVERED", "ERROR"):
        assert running_receiver.post_sendblue(sendblue_payload("msg-ladder", status)).status_code == 200

    assert store.message_status(SENDBLUE_CONN_ID, "msg-ladder").status is Status.READ
    assert len(store.events(SENDBLUE_CONN_ID, "msg-ladder")) == 4


NASTY_BODIES: dict[str, tuple[bytes, str]] = {
    "deep-array": (b"[" * 100_000 + b"]" * 100_000, "application/json"),
    "deep-object-in-payload": (
        b'{"message_handle": "m-deep", "status": "READ", "x": ' + b'{"a":' * 5000 + b"1" + b"}" * 5000 + b"}",
        "application/json",
    ),
    "invalid-utf8": (b'{"message_handle": "m-\xff\xfe", "status": "READ"}', "application/json"),
    "utf16": ('{"message_handle": "m-utf16", "status": "READ"}'.encode("utf-16"), "application/json"),
    "huge-float": (b'{"message_handle": "m-huge-float", "status": "READ", "n": 1e999}', "application/json"),
    "huge-int": (
        b'{"message_handle": "m-huge-int", "status": "READ", "n": ' + b"9" * 50_000 + b"}",
        "text/plain",
    ),
    "nan": (b'{"message_handle": "m-nan", "status": "READ", "n": NaN}', "application/json"),
    "nul-in-id": (b'{"message_handle": "m-\\u0000", "status": "READ"}', "application/json"),
    "surrogate-in-id": (b'{"message_handle": "m-\\ud800", "status": "READ"}', "application/json"),
    "nul-in-payload": (
        b'{"message_handle": "m-nul-payload", "status": "READ", "x": "\\u0000"}',
        "application/json",
    ),
    "long-id": (json.dumps({"message_handle": "m" * 5000, "status": "READ"}).encode(), "application/json"),
    "status-object": (b'{"message_handle": "m-obj", "status": {"READ": true}}', "application/json"),
    "form-encoded": (b"message_handle=m&status=READ", "application/x-www-form-urlencoded"),
    "multipart": (b"--x\r\nContent-Disposition: form-data; name=a\r\n\r\n1\r\n--x--", "multipart/form-data"),
    "empty": (b"", "application/json"),
    "null": (b"null", "application/json"),
    "binary": (bytes(range(256)) * 4, "application/octet-stream"),
    "bom": (b'\xef\xbb\xbf{"message_handle": "m-bom", "status": "READ"}', "application/json"),
}


@pytest.mark.parametrize("name", sorted(NASTY_BODIES))
def test_no_input_gets_a_5xx(running_receiver, name):
    body, content_type = NASTY_BODIES[name]

    answer = running_receiver.post_sendblue(body, headers={"content-type": content_type})

    assert answer.status_code < 500, answer.text
    assert answer.json()["detail" if answer.status_code >= 400 else "stored"] is not None


def test_an_unstorable_webhook_fails_alone_when_handed_over_with_others(running_receiver, store):
    """Webhooks arriving together go to the writer together; a poisoned one must not sink the rest."""
    good = [json.dumps(sendblue_payload(f"msg-batch-{index}")).encode() for index in range(40)]
    poisoned = [b'{"message_handle": "m-\\u0000-%d", "status": "READ"}' % index for index in range(5)]
    bodies = good[:20] + poisoned + good[20:]

    with concurrent.futures.ThreadPoolExecutor(24) as pool:
        answers = list(pool.map(running_receiver.post_sendblue, bodies))

    codes = [answer.status_code for answer in answers]
    assert codes == [200] * 20 + [422] * 5 + [200] * 20
    assert all(len(store.events(SENDBLUE_CONN_ID, f"msg-batch-{index}")) == 1 for index in range(40))


async def test_requests_of_one_turn_share_a_hand_off_and_resolve_after_its_commit(store, make_event):
    receiver = Receiver(store=store, heartbeat_seconds=3600)
    await receiver.start()
    try:
        good = [[make_event(message_id=f"turn-{index}")] for index in range(5)]
        bad = [make_event(message_id="turn-\x00")]

        outcomes = await asyncio.gather(
            *(receiver.record(events) for events in [*good[:2], bad, *good[2:]]), return_exceptions=True
        )
        again = await receiver.record(good[0])
    finally:
        await receiver.stop()

    assert outcomes[:2] == [[True], [True]] and outcomes[3:] == [[True]] * 3
    assert isinstance(outcomes[2], InvalidInputError)
    assert again == [False]
    assert all(store.events(event.conn_id, event.message_id) for (event,) in good)


def test_content_type_is_not_trusted_the_body_is_parsed(running_receiver, store):
    answer = running_receiver.post_sendblue(
        sendblue_payload("msg-text-plain"), headers={"content-type": "text/plain; charset=latin-1"}
    )

    assert answer.status_code == 200
    assert len(store.events(SENDBLUE_CONN_ID, "msg-text-plain")) == 1


def test_receiver_still_serves_after_nasty_input(running_receiver):
    for body, content_type in NASTY_BODIES.values():
        running_receiver.post_sendblue(body, headers={"content-type": content_type})

    assert running_receiver.post_sendblue(sendblue_payload("msg-after-nasty")).status_code == 200
    assert running_receiver.client.get("/healthz").status_code == 200


# -- acknowledgement and the store ----------------------------------------------------------------


def test_ack_comes_only_after_the_row_is_visible_from_another_connection(running_receiver, store_url):
    """Every 200 means committed: a separate engine sees the event the moment the answer arrives."""
    observer = ReceiptStore(store_url)
    lock = threading.Lock()
    invisible: list[str] = []

    def deliver(index: int) -> None:
        message_id = f"msg-visible-{index}"
        answer = running_receiver.post_sendblue(sendblue_payload(message_id, "DELIVERED"))
        assert answer.status_code == 200
        if not observer.events(SENDBLUE_CONN_ID, message_id):
            with lock:
                invisible.append(message_id)

    try:
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            list(pool.map(deliver, range(120)))
    finally:
        observer.close()
    assert invisible == []


def test_store_failure_is_503_and_nothing_is_acknowledged(
    start_receiver, sendblue_connection, sqlite_store_url, tmp_path
):
    """A store that cannot commit (another process holds SQLite's write lock) must not be acked."""
    store = ReceiptStore(sqlite_store_url, busy_timeout=0.2)
    store.migrate()
    server = start_receiver(store=store)
    assert server.post_sendblue(sendblue_payload("msg-warm-up")).status_code == 200
    database = sqlite_store_url.removeprefix("sqlite:///")
    blocker = sqlite3.connect(database, isolation_level=None)
    try:
        blocker.execute("BEGIN EXCLUSIVE")
        answer = server.post_sendblue(sendblue_payload("msg-during-outage"))
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()

    assert answer.status_code == 503
    assert "retry" in answer.json()["detail"]
    assert store.events(SENDBLUE_CONN_ID, "msg-during-outage") == []
    # The vendor retries: now it is stored, once.
    retried = server.post_sendblue(sendblue_payload("msg-during-outage"))
    assert (retried.status_code, retried.json()) == (200, {"stored": 1, "duplicates": 0})
    store.close()


def test_commit_slower_than_the_timeout_is_503_and_the_retry_a_duplicate(
    start_receiver, sendblue_connection, sqlite_store_url
):
    """A 503 is no acknowledgement: the events may still commit, and the retry is then a duplicate."""
    store = ReceiptStore(sqlite_store_url, busy_timeout=10)
    store.migrate()
    server = start_receiver(store=store, commit_timeout=0.5)
    blocker = sqlite3.connect(sqlite_store_url.removeprefix("sqlite:///"), isolation_level=None)
    try:
        blocker.execute("BEGIN EXCLUSIVE")
        answer = server.post_sendblue(sendblue_payload("msg-slow-commit"))
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    retried = server.post_sendblue(sendblue_payload("msg-slow-commit"))

    assert answer.status_code == 503
    assert retried.status_code == 200
    assert retried.json()["stored"] + retried.json()["duplicates"] == 1
    assert len(store.events(SENDBLUE_CONN_ID, "msg-slow-commit")) == 1
    store.close()


def test_unreachable_store_is_503_for_webhooks_and_healthz(start_receiver, sendblue_connection):
    # Nothing listens on this port: the store is down from the start. The receiver still starts
    # (inside the API server a failed startup would take Airflow's whole API down with it).
    down = ReceiptStore("postgresql+psycopg://nobody@127.0.0.1:1/none?connect_timeout=1")
    server = start_receiver(store=down)

    webhook = server.post_sendblue(sendblue_payload("msg-nowhere"))
    health = server.client.get("/healthz")

    assert webhook.status_code == 503
    assert health.status_code == 503
    assert health.json()["status"] == "unavailable"
    assert health.json()["store"] == "postgresql+psycopg://nobody@127.0.0.1:1/none?connect_timeout=1"
    down.close()


def test_store_that_comes_back_is_used_without_a_restart(start_receiver, sendblue_connection, tmp_path):
    # The store's directory is a file at startup, so SQLite cannot open it; then it is fixed.
    blocked = tmp_path / "later"
    blocked.write_text("not a directory")
    server = start_receiver(store_factory=lambda: ReceiptStore(f"sqlite:///{blocked}/store.db"))

    assert server.post_sendblue(sendblue_payload("msg-early")).status_code == 503
    blocked.unlink()
    answer = server.post_sendblue(sendblue_payload("msg-early"))

    assert (answer.status_code, answer.json()) == (200, {"stored": 1, "duplicates": 0})
    assert server.client.get("/healthz").status_code == 200


def test_healthz_reports_the_store(running_receiver, store):
    answer = running_receiver.client.get("/healthz")

    assert answer.status_code == 200
    body = answer.json()
    assert (body["status"], body["store"], body["dialect"]) == (
        "ok",
        store.url_for_display,
        store.dialect,
    )
    assert body["receiver_id"]


def test_heartbeat_is_written_at_startup_and_periodically(running_receiver, store):
    first = store.last_heartbeat()
    assert first is not None
    # Every 0.2 s; the bound is for a loaded machine, the loop ends at the first new heartbeat.
    deadline = time.monotonic() + 60
    while store.last_heartbeat() == first and time.monotonic() < deadline:
        time.sleep(0.05)
    assert store.last_heartbeat() > first


def test_secret_rotation_takes_effect_after_the_cache_expires(start_receiver, store, airflow_connection):
    airflow_connection(SENDBLUE_CONN_ID, "sendblue", **sendblue_connection_fields("old-secret-1"))
    server = start_receiver(store=store, connection_cache_seconds=0.3)
    assert server.post_sendblue(sendblue_payload("msg-rot-1"), secret="old-secret-1").status_code == 200

    airflow_connection(SENDBLUE_CONN_ID, "sendblue", **sendblue_connection_fields("new-secret-2"))
    time.sleep(0.4)

    assert server.post_sendblue(sendblue_payload("msg-rot-2"), secret="old-secret-1").status_code == 401
    assert server.post_sendblue(sendblue_payload("msg-rot-2"), secret="new-secret-2").status_code == 200


class _ExplodingAdapter:
    """Stands in for a vendor hook with a bug: parsing raises something other than WebhookPayloadError."""

    def verify_webhook(self, request: Any) -> None:
        return None

    def parse_webhook(self, request: Any) -> list[Any]:
        raise KeyError("an adapter bug")


def test_adapter_bug_is_4xx_not_500(running_receiver, monkeypatch):
    resolver = running_receiver.app.state.resolver

    async def exploding_hook(conn_id: str) -> Any:
        return _ExplodingAdapter()

    monkeypatch.setattr(resolver, "hook_for", exploding_hook)

    answer = running_receiver.post_sendblue(sendblue_payload("msg-bug"))

    assert answer.status_code == 422
    assert "KeyError" in answer.json()["detail"]


# -- the other vendors ---------------------------------------------------------------------------------


def test_direct7_report_with_token_in_query_is_stored(running_receiver, store, airflow_connection):
    airflow_connection(DIRECT7_CONN_ID, "direct7", **direct7_connection_fields())
    report = {
        "event_type": "DELIVERY_EVENTS",
        "timestamp": 1695645887348,
        "request_id": "d7-req-1",
        "msg_id": "d7-msg-1",
        "recipient": "+971509752655",
        "originator": "+971501234567",
        "status": "Read",
    }
    url = f"/webhooks/{DIRECT7_CONN_ID}"

    accepted = running_receiver.client.post(url, params={"token": DIRECT7_WEBHOOK_TOKEN}, json=report)
    refused = running_receiver.client.post(url, params={"token": "guess"}, json={**report, "request_id": "x"})

    assert (accepted.status_code, accepted.json()) == (200, {"stored": 1, "duplicates": 0})
    assert refused.status_code == 401
    (event,) = store.events(DIRECT7_CONN_ID, "d7-req-1")
    assert event.status is Status.READ


def test_chert_signed_webhook_is_stored_and_forgery_refused(running_receiver, store, airflow_connection):
    from airflow_provider_readreceipts.testing.fakes import chert as chert_fake

    airflow_connection(
        "chert_receiver",
        "chert",
        password=chert_fake.SIGNING_SECRET,
        extra={"webhook_secret": chert_fake.WEBHOOK_SECRET},
    )
    body = json.dumps(
        chert_fake.message_received_event(chat_id="chat-7", message_id="chert-msg-1", event_id="evt-r-1")
    ).encode()
    url = "/webhooks/chert_receiver"

    signed = running_receiver.client.post(
        url, content=body, headers={"X-Webhook-Signature": chert_fake.webhook_signature(body)}
    )
    forged = running_receiver.client.post(
        url,
        content=body.replace(b"chert-msg-1", b"chert-msg-2"),
        headers={"X-Webhook-Signature": chert_fake.webhook_signature(body)},
    )

    assert (signed.status_code, signed.json()) == (200, {"stored": 1, "duplicates": 0})
    assert forged.status_code == 401
    (event,) = store.events("chert_receiver", "chert-msg-1")
    assert event.status is Status.RECEIVED


def test_ryze_status_webhook_is_stored(running_receiver, store, airflow_connection):
    from airflow_provider_readreceipts.testing.fakes import ryze as ryze_fake

    authorization = "Bearer ryze-receiver-Qm3"
    airflow_connection(
        "ryze_receiver",
        "ryze",
        password=ryze_fake.TOKEN,
        extra={"instance": ryze_fake.INSTANCE, "webhook_authorization": authorization},
    )
    body = {
        "event": "message.status",
        "data": {
            "messageId": "ryze-msg-1",
            "status": "read",
            "chat": {"jid": "5511987654321@s.whatsapp.net"},
        },
        "instanceData": {"instance": ryze_fake.INSTANCE},
    }
    url = "/webhooks/ryze_receiver"

    accepted = running_receiver.client.post(url, json=body, headers={"authorization": authorization})
    refused = running_receiver.client.post(url, json=body, headers={"authorization": "Bearer guess"})

    assert (accepted.status_code, accepted.json()) == (200, {"stored": 1, "duplicates": 0})
    assert refused.status_code == 401
    (event,) = store.events("ryze_receiver", "ryze-msg-1")
    assert event.status is Status.READ


# -- secrets stay out of logs --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("/webhooks/d7?token=s3cr3t-value", "/webhooks/d7?token=***"),
        ("/w?a=1&webhook_token=s3cr3t-value&b=2", "/w?a=1&webhook_token=***&b=2"),
        ('1.2.3.4 - "POST /w?Token=s3cr3t-value HTTP/1.1" 200', '1.2.3.4 - "POST /w?Token=*** HTTP/1.1" 200'),
        ("/w?tok%65n=s3cr3t-value", "/w?tok%65n=***"),
        ("/w?api_key=s3cr3t-value;sig=s3cr3t-value", "/w?api_key=***;sig=***"),
        ("/w?page=2&status=READ", "/w?page=2&status=READ"),
    ],
)
def test_redact_secrets(line, expected):
    assert redact_secrets(line) == expected


def test_uvicorn_access_log_line_is_redacted():
    record = logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        __file__,
        1,
        '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5000", "POST", "/webhooks/d7?token=s3cr3t-value", "1.1", 200),
        None,
    )

    assert RedactSecretsFilter().filter(record) is True
    assert "s3cr3t-value" not in record.getMessage()
    assert "token=***" in record.getMessage()


def test_install_access_log_redaction_is_idempotent():
    logger = logging.getLogger("readreceipts.test.access")
    handler = logging.StreamHandler(io.StringIO())
    logger.addHandler(handler)
    try:
        install_access_log_redaction(("readreceipts.test.access",))
        install_access_log_redaction(("readreceipts.test.access",))
        assert sum(isinstance(f, RedactSecretsFilter) for f in logger.filters) == 1
        assert sum(isinstance(f, RedactSecretsFilter) for f in handler.filters) == 1
    finally:
        logger.removeHandler(handler)


def test_standalone_log_config_redacts_on_every_handler():
    config = log_config()

    assert all("redact_secrets" in handler["filters"] for handler in config["handlers"].values())


def test_airflow_api_server_access_log_does_not_print_the_token(store, airflow_connection):
    """Mounted as a plugin, the API server's own access-log middleware logs our requests."""
    from airflow.api_fastapi.common.http_access_log import HttpAccessLogMiddleware

    airflow_connection(DIRECT7_CONN_ID, "direct7", **direct7_connection_fields())
    parent = FastAPI()
    parent.mount(URL_PREFIX, create_app(store=store))
    parent.add_middleware(HttpAccessLogMiddleware)

    with structlog.testing.capture_logs() as logs, TestClient(parent) as client:
        answer = client.post(
            f"{URL_PREFIX}/webhooks/{DIRECT7_CONN_ID}",
            params={"token": DIRECT7_WEBHOOK_TOKEN},
            json={"event_type": "DELIVERY_EVENTS", "request_id": "d7-mounted", "status": "Delivered"},
        )

    assert answer.status_code == 200
    access = [entry for entry in logs if entry.get("event") == "request finished"]
    assert access and access[0]["path"] == f"{URL_PREFIX}/webhooks/{DIRECT7_CONN_ID}"
    assert DIRECT7_WEBHOOK_TOKEN not in repr(logs)


# -- the Airflow plugin ---------------------------------------------------------------------------------


def test_plugin_declares_one_fastapi_app_the_api_server_accepts():
    from airflow.api_fastapi.app import RESERVED_URL_PREFIXES
    from airflow.plugins_manager import is_valid_plugin

    (entry,) = ReadReceiptsPlugin().fastapi_apps

    assert is_valid_plugin(ReadReceiptsPlugin)
    assert set(entry) == {"app", "url_prefix", "name"}
    assert isinstance(entry["app"], FastAPI)
    assert entry["url_prefix"] == "/readreceipts"
    assert not any(entry["url_prefix"].startswith(prefix) for prefix in RESERVED_URL_PREFIXES)
    assert ReadReceiptsPlugin.fastapi_apps is ReadReceiptsPlugin().fastapi_apps  # built once


def test_plugin_module_is_cheap_and_opens_nothing_at_import():
    script = (
        "import sys\n"
        "import airflow_provider_readreceipts.webhooks.plugin as plugin\n"
        "store = 'airflow_provider_readreceipts.hooks.store'\n"
        "heavy = [m for m in ('fastapi', 'uvicorn', store) if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "plugin.ReadReceiptsPlugin().fastapi_apps\n"
        "assert 'fastapi' in sys.modules\n"
        "assert store not in sys.modules, 'building the app opened the store'\n"
    )

    subprocess.run([sys.executable, "-c", script], check=True, timeout=300, capture_output=True)  # noqa: S603


def test_mounted_app_runs_its_lifespan_inside_the_api_server(store, sendblue_connection):
    """The API server enters mounted apps' lifespans: the store is migrated and the writer started."""
    from airflow.api_fastapi.app import lifespan

    parent = FastAPI(lifespan=lifespan)
    parent.mount(URL_PREFIX, create_app(store=store))

    with TestClient(parent) as client:
        answer = client.post(
            f"{URL_PREFIX}/webhooks/{SENDBLUE_CONN_ID}",
            json=sendblue_payload("msg-mounted"),
            headers={SENDBLUE_SECRET_HEADER: SENDBLUE_WEBHOOK_SECRET},
        )
        health = client.get(f"{URL_PREFIX}/healthz")

    assert (answer.status_code, answer.json()) == (200, {"stored": 1, "duplicates": 0})
    assert health.status_code == 200


# -- the standalone server ----------------------------------------------------------------------------


def test_standalone_help_says_where_connections_come_from():
    text = build_parser().format_help()

    assert "AIRFLOW_CONN_<CONN_ID>" in text
    assert "secrets backend" in text
    assert "metadata database" in text
    for option in ("--host", "--port", "--workers", "--store-url"):
        assert option in text


def _standalone_environment() -> dict[str, str]:
    return receiver_environment(
        **{
            SENDBLUE_CONN_ID: connection_document("sendblue", **sendblue_connection_fields()),
            DIRECT7_CONN_ID: connection_document("direct7", **direct7_connection_fields()),
        }
    )


def test_standalone_server_never_logs_the_direct7_token(start_standalone, sqlite_store_url):
    receiver: StandaloneReceiver = start_standalone(
        store_url=sqlite_store_url, environment=_standalone_environment()
    ).wait_ready()
    report = {"event_type": "DELIVERY_EVENTS", "request_id": "d7-logged", "status": "Delivered"}

    # A first webhook loads the vendor's hook in the receiver: on a loaded machine that can take
    # longer than httpx's 5-second default.
    accepted = httpx.post(
        receiver.url(f"/webhooks/{DIRECT7_CONN_ID}"),
        params={"token": DIRECT7_WEBHOOK_TOKEN},
        json=report,
        timeout=REQUEST_TIMEOUT,
    )
    wrong = httpx.post(
        receiver.url(f"/webhooks/{DIRECT7_CONN_ID}?token=wrong-{DIRECT7_WEBHOOK_TOKEN}"),
        json=report,
        timeout=REQUEST_TIMEOUT,
    )
    unknown = httpx.post(receiver.url("/webhooks/not_defined_here"), json=report, timeout=REQUEST_TIMEOUT)
    output = receiver.stop()

    assert (accepted.status_code, wrong.status_code, unknown.status_code) == (200, 401, 404)
    # Standalone: the 404 says which connection and where it was looked for.
    assert "'not_defined_here'" in unknown.json()["detail"]
    assert "AIRFLOW_CONN_<CONN_ID>" in unknown.json()["detail"]
    assert "metadata database" in unknown.json()["detail"]
    assert f"/webhooks/{DIRECT7_CONN_ID}?token=***" in output  # the access log did print the request
    assert DIRECT7_WEBHOOK_TOKEN not in output
    assert SENDBLUE_WEBHOOK_SECRET not in output


def _deliver_overlapping(
    receivers: list[StandaloneReceiver], events: int, copies: int
) -> list[tuple[str, int, Any]]:
    """Each event ``copies`` times, to different receivers, all at once, in shuffled order."""
    deliveries = [
        (f"msg-multi-{index}", receivers[(index + copy) % len(receivers)])
        for index in range(events)
        for copy in range(copies)
    ]
    random.Random(7).shuffle(deliveries)
    body_of = {
        message_id: json.dumps(sendblue_payload(message_id, "READ")).encode() for message_id, _ in deliveries
    }
    local = threading.local()

    def deliver(delivery: tuple[str, StandaloneReceiver]) -> tuple[str, int, Any]:
        message_id, receiver = delivery
        if not hasattr(local, "client"):
            local.client = httpx.Client(timeout=60.0)
        answer = local.client.post(
            receiver.url(f"/webhooks/{SENDBLUE_CONN_ID}"),
            content=body_of[message_id],
            headers={SENDBLUE_SECRET_HEADER: SENDBLUE_WEBHOOK_SECRET, "content-type": "application/json"},
        )
        return message_id, answer.status_code, answer.json()

    with concurrent.futures.ThreadPoolExecutor(24) as pool:
        return list(pool.map(deliver, deliveries))


@pytest.mark.parametrize("store_kind", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_several_receiver_processes_store_each_acknowledged_event_exactly_once(
    request, start_standalone, store_kind
):
    store_url = request.getfixturevalue(
        "sqlite_store_url" if store_kind == "sqlite" else "postgres_store_url"
    )
    environment = _standalone_environment()
    receivers = [start_standalone(store_url=store_url, environment=environment) for _ in range(3)]
    for receiver in receivers:
        receiver.wait_ready()

    results = _deliver_overlapping(receivers, events=150, copies=3)
    outputs = [receiver.stop() for receiver in receivers]

    statuses = Counter(status for _, status, _ in results)
    assert statuses == {200: 450}, (statuses, outputs)
    stored_by = Counter(message_id for message_id, _, body in results for _ in range(body["stored"]))
    # Across three processes, exactly one delivery of each event reports it stored; the rest are duplicates.
    assert stored_by == {f"msg-multi-{index}": 1 for index in range(150)}
    store = ReceiptStore(store_url)
    try:
        for index in range(150):
            (event,) = store.events(SENDBLUE_CONN_ID, f"msg-multi-{index}")
            assert event.status is Status.READ
        heartbeats = store.last_heartbeat()
    finally:
        store.close()
    assert heartbeats is not None
    assert not [output for output in outputs if "Traceback" in output]


def test_standalone_with_two_workers_serves(start_standalone, sqlite_store_url):
    receiver = start_standalone(
        store_url=sqlite_store_url, environment=_standalone_environment(), workers=2
    ).wait_ready()

    # A connection per request, as before, so that both workers may take some.
    answers = [
        httpx.post(
            receiver.url(f"/webhooks/{SENDBLUE_CONN_ID}"),
            json=sendblue_payload(f"msg-workers-{index}"),
            headers={SENDBLUE_SECRET_HEADER: SENDBLUE_WEBHOOK_SECRET},
            timeout=REQUEST_TIMEOUT,
        )
        for index in range(20)
    ]
    receiver.stop()

    assert [answer.status_code for answer in answers] == [200] * 20
    store = ReceiptStore(sqlite_store_url)
    try:
        assert all(len(store.events(SENDBLUE_CONN_ID, f"msg-workers-{index}")) == 1 for index in range(20))
    finally:
        store.close()
