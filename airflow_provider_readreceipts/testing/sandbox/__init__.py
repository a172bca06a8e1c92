"""
A local vendor sandbox: Sendblue, Chert, RyzeAPI and Direct7 (plus a fake voice-call API) in one
process on loopback, delivering status webhooks to the receiver the way each vendor does.

    python -m airflow_provider_readreceipts.testing.sandbox --port 8090 \\
        --receiver-url http://127.0.0.1:8085/webhooks

It is built on the package's vendor fakes (:mod:`airflow_provider_readreceipts.testing.fakes`), so it
runs wherever the package is installed, from a wheel too. Every message's fate is decided by the
recipient's number (see :mod:`.fates`): the last digit says whether it is read, delivered but never
read, or fails. Each vendor reports what happens the way it does in production:

- Sendblue: status webhooks to the message's ``status_callback`` with the ``sb-signing-secret``
  header;
- Chert: nothing (Chert has no read webhook): its ``read_at`` shows only when polled, which the
  read sensor's reconcile does; inbound messages come as signed ``message.received`` events;
- RyzeAPI: ``message.status`` / ``message.exchange`` envelopes with the static ``Authorization``
  value;
- Direct7: delivery reports to the message's ``report_url`` (which carries the webhook token).

Webhooks are retried with backoff until the receiver answers 2xx (a bounded number of times), and
some are delivered twice on purpose, as vendors do. :func:`connections` gives the Airflow
connections that point at a sandbox and a receiver; this module imports nothing heavy.
"""

from __future__ import annotations

import json
from typing import Any

#: Connection ids the sandbox reports for (the receiver URL names the connection).
CONN_IDS = {
    "sendblue": "sendblue_default",
    "chert": "chert_default",
    "ryze": "ryze_default",
    "direct7": "direct7_default",
}
#: The HTTP connection of the fake voice-call API (any provider can be plugged in instead).
VOICE_CONN_ID = "voice_default"

# Sandbox-only credentials: the sandbox accepts exactly these, and signs its webhooks with them.
SENDBLUE_KEY_ID = "sandbox-sb-key-id"
SENDBLUE_API_SECRET = "sandbox-sb-api-secret"  # noqa: S105 - a sandbox credential
SENDBLUE_LINE = "+19175551234"
SENDBLUE_WEBHOOK_SECRET = "sandbox-sb-webhook-secret"  # noqa: S105
CHERT_TENANT = "sandbox-tenant"
CHERT_SIGNING_SECRET = "sandbox-chert-signing-secret"  # noqa: S105
CHERT_WEBHOOK_SECRET = "sandbox-chert-webhook-secret"  # noqa: S105
RYZE_TOKEN = "sandbox-ryze-token"  # noqa: S105
RYZE_INSTANCE = "sandbox-wa"
RYZE_WEBHOOK_AUTHORIZATION = "sandbox-ryze-webhook-authorization"
DIRECT7_API_TOKEN = "sandbox-d7-api-token"  # noqa: S105
DIRECT7_ORIGINATOR = "+971501234567"
DIRECT7_WEBHOOK_TOKEN = "sandbox-d7-webhook-token"  # noqa: S105
VOICE_API_TOKEN = "sandbox-voice-token"  # noqa: S105
VOICE_CALLER_ID = "+14155550999"


def connections(*, sandbox_url: str, receiver_url: str) -> dict[str, dict[str, Any]]:
    """
    The Airflow connections (id -> connection document) for a sandbox and a receiver.

    :param sandbox_url: the sandbox's base URL, e.g. ``http://127.0.0.1:8090``.
    :param receiver_url: the receiver's webhook base URL, e.g. ``http://127.0.0.1:8085/webhooks``;
        each connection's webhooks go to ``<receiver_url>/<conn_id>``.
    """
    sandbox_url = sandbox_url.rstrip("/")
    receiver_url = receiver_url.rstrip("/")
    return {
        CONN_IDS["sendblue"]: {
            "conn_type": "sendblue",
            "host": f"{sandbox_url}/sendblue",
            "login": SENDBLUE_KEY_ID,
            "password": SENDBLUE_API_SECRET,
            "extra": {
                "from_number": SENDBLUE_LINE,
                "webhook_secret": SENDBLUE_WEBHOOK_SECRET,
                "receiver_url": f"{receiver_url}/{CONN_IDS['sendblue']}",
            },
        },
        CONN_IDS["chert"]: {
            "conn_type": "chert",
            "host": f"{sandbox_url}/chert",
            "login": CHERT_TENANT,
            "password": CHERT_SIGNING_SECRET,
            "extra": {
                "auth_mode": "hmac",
                "webhook_secret": CHERT_WEBHOOK_SECRET,
                "webhook_signature_header": "X-Webhook-Signature",
            },
        },
        CONN_IDS["ryze"]: {
            "conn_type": "ryze",
            "host": f"{sandbox_url}/ryze",
            "password": RYZE_TOKEN,
            "extra": {"instance": RYZE_INSTANCE, "webhook_authorization": RYZE_WEBHOOK_AUTHORIZATION},
        },
        CONN_IDS["direct7"]: {
            "conn_type": "direct7",
            "host": f"{sandbox_url}/direct7",
            "password": DIRECT7_API_TOKEN,
            "extra": {
                "originator": DIRECT7_ORIGINATOR,
                "webhook_token": DIRECT7_WEBHOOK_TOKEN,
                "receiver_url": f"{receiver_url}/{CONN_IDS['direct7']}",
            },
        },
        VOICE_CONN_ID: {
            "conn_type": "http",
            "host": f"{sandbox_url}/voice",
            # providers-http sends every extra of an HTTP connection as a request header.
            "extra": {"Authorization": f"Bearer {VOICE_API_TOKEN}", "Content-Type": "application/json"},
        },
    }


def connection_environment(*, sandbox_url: str, receiver_url: str) -> dict[str, str]:
    """:func:`connections` as ``AIRFLOW_CONN_<ID>`` environment variables (JSON documents)."""
    return {
        f"AIRFLOW_CONN_{conn_id.upper()}": json.dumps(document)
        for conn_id, document in connections(sandbox_url=sandbox_url, receiver_url=receiver_url).items()
    }
