"""
Authenticity: forged signatures, wrong secrets, missing headers and replayed Chert deliveries are
refused over real HTTP (the receiver on a real uvicorn server, a real SQLite file and the real
PostgreSQL), and none of them leaves a row in the store. Secrets are compared in constant time.

Replays of a Chert delivery:

* **outside** the 300 s window: 401, nothing stored (the signature's timestamp is too old);
* **inside** the window: the identical request is acknowledged as a duplicate (200, ``stored: 0``)
  and the store keeps the event once. It is deliberately *not* 401: a vendor retry after a lost
  acknowledgement (the event committed, the 200 never arrived; or 503 on a commit that did land)
  is byte for byte the same request, and must get a 2xx or the vendor retries it until it gives up
  on the endpoint. Nothing the replayer can change gets through: the body is signed, and the store
  keeps one row per event id and per (message, status).
"""

from __future__ import annotations

import ast
import hashlib
import hmac
import inspect
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_readreceipts.hooks import chert, direct7, ryze, sendblue
from airflow_provider_readreceipts.hooks.base import WebhookRequest
from airflow_provider_readreceipts.hooks.store import ReceiptStore
from tests.support import Figures, ReceiverServer, sendblue_payload

pytestmark = pytest.mark.reliability

SENDBLUE_SECRET = "au-sendblue-secret-Jd83"
CHERT_SECRET = "au-chert-subscription-secret-Qp02"
RYZE_AUTHORIZATION = "Bearer au-ryze-hook-Lm55"
RYZE_INSTANCE = "auth-wa"
DIRECT7_TOKEN = "au-direct7-token-Zr61"

CONNECTIONS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "sendblue": (
        "au_sendblue",
        "sendblue",
        {"login": "k", "password": "s", "extra": {"webhook_secret": SENDBLUE_SECRET}},
    ),
    "chert": (
        "au_chert",
        "chert",
        {"login": "tenant", "password": "signing", "extra": {"webhook_secret": CHERT_SECRET}},
    ),
    "ryze": (
        "au_ryze",
        "ryze",
        {"password": "t", "extra": {"instance": RYZE_INSTANCE, "webhook_authorization": RYZE_AUTHORIZATION}},
    ),
    "direct7": (
        "au_direct7",
        "direct7",
        {"password": "t", "extra": {"originator": "+971501234567", "webhook_token": DIRECT7_TOKEN}},
    ),
}


def chert_signature(body: bytes, *, secret: str = CHERT_SECRET, at: int | None = None) -> str:
    timestamp = str(int(time.time()) if at is None else at)
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"v1,{timestamp},{digest}"


def body_for(vendor: str, message_id: str) -> bytes:
    """A well-formed webhook body of the vendor naming ``message_id``."""
    documents: dict[str, Any] = {
        "sendblue": sendblue_payload(message_id, "READ"),
        "chert": {
            "event": "message.received",
            "event_id": f"evt-{message_id}",
            "data": {"message": {"id": message_id, "text": "hi"}, "chat": {"id": "chat-au"}},
        },
        "ryze": {
            "event": "message.status",
            "data": {
                "messageId": message_id,
                "status": "read",
                "chat": {"jid": "5511987654321@s.whatsapp.net"},
            },
            "instanceData": {"instance": RYZE_INSTANCE},
        },
        "direct7": {"event_type": "DELIVERY_EVENTS", "request_id": message_id, "status": "Read"},
    }
    return json.dumps(documents[vendor]).encode()


def genuine_auth(vendor: str, body: bytes) -> tuple[dict[str, str], dict[str, str]]:
    """(headers, query) the vendor itself would send."""
    if vendor == "sendblue":
        return {"sb-signing-secret": SENDBLUE_SECRET}, {}
    if vendor == "chert":
        return {"x-webhook-signature": chert_signature(body)}, {}
    if vendor == "ryze":
        return {"authorization": RYZE_AUTHORIZATION}, {}
    return {"x-webhook-token": DIRECT7_TOKEN}, {}


def _secret_header(vendor: str) -> tuple[str, str]:
    return {
        "sendblue": ("sb-signing-secret", SENDBLUE_SECRET),
        "chert": ("x-webhook-signature", ""),
        "ryze": ("authorization", RYZE_AUTHORIZATION),
        "direct7": ("x-webhook-token", DIRECT7_TOKEN),
    }[vendor]


def attacks(vendor: str) -> dict[str, Callable[[bytes], tuple[dict[str, str], dict[str, str]]]]:
    """Attack kind -> (headers, query) for a body; none of them proves anything."""
    name, secret = _secret_header(vendor)
    now = int(time.time())
    if vendor == "chert":
        return {
            "missing_header": lambda body: ({}, {}),
            "wrong_secret": lambda body: ({name: chert_signature(body, secret="not-the-secret")}, {}),
            "forged_signature": lambda body: ({name: f"v1,{now},{'ab' * 32}"}, {}),
            "signature_of_other_body": lambda body: ({name: chert_signature(body + b" ")}, {}),
            "replay_outside_window_old": lambda body: ({name: chert_signature(body, at=now - 301)}, {}),
            "replay_outside_window_future": lambda body: ({name: chert_signature(body, at=now + 400)}, {}),
            "malformed_header": lambda body: ({name: "v1," + chert_signature(body)}, {}),
            "other_header_name": lambda body: ({"x-signature": chert_signature(body)}, {}),
        }
    forged: dict[str, Callable[[bytes], tuple[dict[str, str], dict[str, str]]]] = {
        "missing_header": lambda body: ({}, {}),
        "wrong_secret": lambda body: ({name: "not-the-secret"}, {}),
        "empty_secret": lambda body: ({name: ""}, {}),
        "secret_prefix": lambda body: ({name: secret[:-1]}, {}),
        "secret_plus_junk": lambda body: ({name: secret + "0"}, {}),
        "other_header_name": lambda body: ({"x-secret": secret}, {}),
    }
    if vendor == "direct7":
        forged["wrong_query_token"] = lambda body: ({}, {"token": DIRECT7_TOKEN[:-1] + "X"})
        forged["token_in_other_parameter"] = lambda body: ({}, {"secret": DIRECT7_TOKEN})
    return forged


@pytest.fixture
def auth_receiver(
    start_receiver: Callable[..., ReceiverServer],
    store: ReceiptStore,
    airflow_connection: Callable[..., str],
) -> ReceiverServer:
    """The receiver on a real uvicorn server with one connection per vendor, writing to ``store``."""
    for conn_id, conn_type, fields in CONNECTIONS.values():
        airflow_connection(conn_id, conn_type, **fields)
    return start_receiver(store=store)


def post(
    server: ReceiverServer, vendor: str, body: bytes, auth: tuple[dict[str, str], dict[str, str]]
) -> Any:
    headers, query = auth
    return server.client.post(
        f"/webhooks/{CONNECTIONS[vendor][0]}",
        content=body,
        headers={"content-type": "application/json", **headers},
        params=query,
    )


@pytest.mark.parametrize("vendor", list(CONNECTIONS))
def test_forgeries_are_refused_with_401_and_store_nothing(
    vendor: str, auth_receiver: ReceiverServer, store: ReceiptStore, figures: Figures
) -> None:
    """
    Every attack on a vendor's proof of origin gets 401 and leaves no row; the same body with the
    genuine proof is accepted, so each refusal is the proof's doing and not the body's.
    """
    conn_id = CONNECTIONS[vendor][0]
    for kind, forge in attacks(vendor).items():
        message_id = f"forged-{vendor}-{kind}"
        body = body_for(vendor, message_id)
        answer = post(auth_receiver, vendor, body, forge(body))
        stored = len(store.events(conn_id, message_id))
        figures.add(
            "authenticity",
            f"{vendor}/{kind}",
            tried=1,
            refused_401=int(answer.status_code == 401),
            stored=stored,
        )
        assert answer.status_code == 401, (kind, answer.status_code, answer.text)
        assert stored == 0, kind

    control = f"genuine-{vendor}"
    body = body_for(vendor, control)
    answer = post(auth_receiver, vendor, body, genuine_auth(vendor, body))
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"stored": 1, "duplicates": 0}
    assert len(store.events(conn_id, control)) == 1


def test_a_chert_replay_inside_the_window_is_a_duplicate_stored_once(
    auth_receiver: ReceiverServer, store: ReceiptStore, figures: Figures
) -> None:
    """
    The identical signed request twice within the window: acknowledged both times (a vendor retry
    after a lost 200 looks exactly like this), stored once. Replayed under another event id, still
    stored once: the store's (message, status) key holds.
    """
    body = body_for("chert", "replayed-in-window")
    auth = genuine_auth("chert", body)
    first = post(auth_receiver, "chert", body, auth)
    assert first.status_code == 200 and first.json() == {"stored": 1, "duplicates": 0}, first.text
    replay = post(auth_receiver, "chert", body, auth)
    other_id = post(auth_receiver, "chert", body, ({**auth[0], "x-webhook-event-id": "evt-other"}, {}))
    events = store.events("au_chert", "replayed-in-window")
    figures.add(
        "authenticity",
        "chert/replay_inside_window",
        tried=2,
        refused_401=int(replay.status_code == 401) + int(other_id.status_code == 401),
        stored=len(events) - 1,
    )
    assert replay.status_code == 200 and replay.json() == {"stored": 0, "duplicates": 1}, replay.text
    assert other_id.status_code in (200, 401), other_id.text
    if other_id.status_code == 200:
        assert other_id.json()["stored"] == 0
    assert len(events) == 1


def test_a_chert_retry_of_a_refused_delivery_is_still_accepted(
    auth_receiver: ReceiverServer, store: ReceiptStore
) -> None:
    """
    A delivery refused for its timestamp (its first attempt was not acknowledged), re-signed by
    the vendor on retry, is stored: refusing a replay must not poison the event for good.
    """
    body = body_for("chert", "retried-after-401")
    stale = post(auth_receiver, "chert", body, ({"x-webhook-signature": chert_signature(body, at=1)}, {}))
    assert stale.status_code == 401
    assert store.events("au_chert", "retried-after-401") == []
    retry = post(auth_receiver, "chert", body, genuine_auth("chert", body))
    assert retry.status_code == 200 and retry.json() == {"stored": 1, "duplicates": 0}, retry.text
    assert len(store.events("au_chert", "retried-after-401")) == 1


# -- constant-time comparison ------------------------------------------------------------------------


@pytest.mark.parametrize("vendor", list(CONNECTIONS))
def test_each_adapter_compares_the_secret_with_hmac_compare_digest(
    vendor: str, airflow_connection: Callable[..., str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    A spy around the real ``hmac.compare_digest`` sees the expected secret (for Chert: the
    expected digest) when the adapter verifies a genuine and a wrong webhook. The spy calls the
    real function, so verification's outcome is the real one.
    """
    from airflow_provider_readreceipts.hooks import hook_for

    conn_id, conn_type, fields = CONNECTIONS[vendor]
    airflow_connection(conn_id, conn_type, **fields)
    hook = hook_for(conn_id, conn_type)
    real = hmac.compare_digest
    calls: list[tuple[Any, Any]] = []

    def spy(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    body = body_for(vendor, "spied")
    received_at = time.time()
    headers, query = genuine_auth(vendor, body)
    hook.verify_webhook(WebhookRequest(conn_id, headers, query, body, received_at))
    if vendor == "chert":
        timestamp = headers["x-webhook-signature"].split(",")[1]
        expected: bytes = chert.sign(CHERT_SECRET, timestamp, body).encode()
    else:
        expected = _secret_header(vendor)[1].encode()
    assert any(expected in pair for pair in calls), calls

    calls.clear()
    wrong = {name: "x" * len(value) for name, value in headers.items()}
    with pytest.raises(Exception, match=r"(?i)wrong|does not match|not in the form"):
        hook.verify_webhook(WebhookRequest(conn_id, wrong, {}, body, received_at))
    if vendor != "chert":  # a malformed Chert header is refused before any digest is compared
        assert any(expected in pair for pair in calls), calls


SECRET_WORDS = ("secret", "token", "authorization", "signature", "digest", "expected", "given")


@pytest.mark.parametrize(
    "module", [sendblue, chert, ryze, direct7], ids=lambda m: m.__name__.rsplit(".", 1)[1]
)
def test_no_adapter_compares_secrets_with_equality(module: Any) -> None:
    """
    Read the adapters' source: no ``==``/``!=`` has an operand named like a secret (a plain
    comparison returns at the first differing byte and leaks the secret's prefix by timing).
    """
    tree = ast.parse(Path(inspect.getfile(module)).read_text())
    suspicious = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and any(isinstance(op, (ast.Eq, ast.NotEq)) for op in node.ops):
            operands = [node.left, *node.comparators]
            names = {
                part.lower()
                for operand in operands
                for sub in ast.walk(operand)
                for part in (
                    [sub.id]
                    if isinstance(sub, ast.Name)
                    else [sub.attr]
                    if isinstance(sub, ast.Attribute)
                    else []
                )
                # Module constants (header and parameter names) are not secrets.
                if not part.isupper()
            }
            if any(word in name for name in names for word in SECRET_WORDS):
                suspicious.append(f"line {node.lineno}: {ast.unparse(node)}")
    assert suspicious == []
    # And the constant-time helper they share is used for every webhook check.
    source = inspect.getsource(module)
    assert "secrets_equal(" in source
