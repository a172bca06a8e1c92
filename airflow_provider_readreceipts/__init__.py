"""Apache Airflow provider for messaging read receipts: Sendblue, Chert, RyzeAPI and Direct7."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_PACKAGE = "airflow_provider_readreceipts"
_HIDDEN_STANDARD_FIELDS = ["schema", "port"]


def _secret(label: str, description: str) -> dict[str, Any]:
    return {
        "label": label,
        "description": description,
        "schema": {"type": ["string", "null"], "format": "password"},
    }


def _text(label: str, description: str, default: str | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": ["string", "null"]}
    if default is not None:
        schema["default"] = default
    return {"label": label, "description": description, "schema": schema}


_RECEIVER_URL = _text(
    "Receiver URL",
    "Public URL of this connection's webhook receiver, e.g. https://airflow.example.com/readreceipts"
    "/webhooks/<conn_id>. Send operators pass it to the vendor as the status callback.",
)

# Declarative connection forms (Airflow 3.2+): the UI renders them without importing the hooks.
_CONNECTION_TYPES: list[dict[str, Any]] = [
    {
        "connection-type": "sendblue",
        "hook-class-name": f"{_PACKAGE}.hooks.sendblue.SendblueHook",
        "hook-name": "Sendblue (iMessage)",
        "ui-field-behaviour": {
            "hidden-fields": _HIDDEN_STANDARD_FIELDS,
            "relabeling": {"host": "API base URL", "login": "API key ID", "password": "API secret key"},
            "placeholders": {
                "host": "https://api.sendblue.co (leave empty for the default)",
                "login": "sb-api-key-id from the Sendblue dashboard",
                "password": "sb-api-secret-key from the Sendblue dashboard",
                "from_number": "+19175551234 (your Sendblue line, E.164)",
                "webhook_secret": "the signing secret set on your Sendblue webhooks",
                "webhook_secret_header": "sb-signing-secret",
                "receiver_url": "https://airflow.example.com/readreceipts/webhooks/sendblue_default",
            },
        },
        "conn-fields": {
            "from_number": _text(
                "Default from number", "Your Sendblue line in E.164, used when a task names none."
            ),
            "webhook_secret": _secret(
                "Webhook secret", "The secret Sendblue sends with every webhook; the receiver checks it."
            ),
            "webhook_secret_header": _text(
                "Webhook secret header", "Header that carries the webhook secret.", "sb-signing-secret"
            ),
            "receiver_url": _RECEIVER_URL,
        },
    },
    {
        "connection-type": "chert",
        "hook-class-name": f"{_PACKAGE}.hooks.chert.ChertHook",
        "hook-name": "Chert (iMessage)",
        "ui-field-behaviour": {
            "hidden-fields": _HIDDEN_STANDARD_FIELDS,
            "relabeling": {
                "host": "API base URL",
                "login": "Tenant slug (HMAC mode)",
                "password": "Signing secret or bearer token",
            },
            "placeholders": {
                "host": "https://console.trychert.com/api/v1 (leave empty for the default)",
                "login": "your-tenant (leave empty to use the secret as a bearer token)",
                "password": "HMAC signing secret, or the bearer token",
                "auth_mode": "hmac or bearer (default: hmac when a tenant is set)",
                "webhook_secret": "the subscription secret of your Chert webhook",
                "webhook_signature_header": "X-Webhook-Signature",
            },
        },
        "conn-fields": {
            "auth_mode": _text(
                "Auth mode",
                "hmac: sign each request with the secret (needs the tenant slug); bearer: send the "
                "secret as a bearer token. Default: hmac when a tenant slug is set, else bearer.",
            ),
            "webhook_secret": _secret(
                "Webhook secret", "The subscription secret Chert signs webhooks with (HMAC-SHA256)."
            ),
            "webhook_signature_header": _text(
                "Webhook signature header",
                "Header carrying the webhook signature. Chert's docs name both X-Webhook-Signature and "
                "x-chert-signature; leave empty to accept either.",
            ),
        },
    },
    {
        "connection-type": "ryze",
        "hook-class-name": f"{_PACKAGE}.hooks.ryze.RyzeHook",
        "hook-name": "RyzeAPI (WhatsApp)",
        "ui-field-behaviour": {
            "hidden-fields": [*_HIDDEN_STANDARD_FIELDS, "login"],
            "relabeling": {"host": "API base URL", "password": "API token"},
            "placeholders": {
                "host": "https://ryzeapi.cloud (leave empty for the default)",
                "password": "instance or account token",
                "instance": "the name of your connected WhatsApp instance",
                "auth_header": "token (or bearer)",
                "webhook_authorization": "the authorization value set on your RyzeAPI webhook",
            },
        },
        "conn-fields": {
            "instance": _text("Instance", "The RyzeAPI instance (connected WhatsApp number); required."),
            "auth_header": _text(
                "Auth header",
                "token: send a 'token' header (default); bearer: Authorization: Bearer.",
                "token",
            ),
            "webhook_authorization": _secret(
                "Webhook authorization",
                "The static value RyzeAPI sends as the Authorization header of its webhooks.",
            ),
        },
    },
    {
        "connection-type": "direct7",
        "hook-class-name": f"{_PACKAGE}.hooks.direct7.Direct7Hook",
        "hook-name": "Direct7 Networks (WhatsApp)",
        "ui-field-behaviour": {
            "hidden-fields": [*_HIDDEN_STANDARD_FIELDS, "login"],
            "relabeling": {"host": "API base URL", "password": "API token"},
            "placeholders": {
                "host": "https://api.d7networks.com (leave empty for the default)",
                "password": "the Direct7 API token (Bearer)",
                "originator": "+97150000000 (your WhatsApp business number, E.164)",
                "webhook_token": "a long random string; append ?token=<it> to the report URL",
                "receiver_url": "https://airflow.example.com/readreceipts/webhooks/direct7_default",
            },
        },
        "conn-fields": {
            "originator": _text("Originator", "Your WhatsApp business number in E.164, used to send."),
            "webhook_token": _secret(
                "Webhook token",
                "Direct7 signs nothing: the receiver accepts only reports carrying this token.",
            ),
            "receiver_url": _RECEIVER_URL,
        },
    },
]


def get_provider_info() -> dict[str, Any]:
    """Provider metadata for Airflow's providers manager (the ``apache_airflow_provider`` entry point)."""
    return {
        "package-name": "airflow-provider-readreceipts",
        "name": "Read Receipts",
        "description": "Read receipts for iMessage (Sendblue, Chert) and WhatsApp (RyzeAPI, Direct7).",
        "versions": [__version__],
        "integrations": [
            {"integration-name": name, "tags": ["service"]}
            for name in ("Sendblue", "Chert", "RyzeAPI", "Direct7")
        ],
        "hooks": [
            {
                "integration-name": name,
                "python-modules": [f"{_PACKAGE}.hooks.{module}"],
            }
            for name, module in (
                ("Sendblue", "sendblue"),
                ("Chert", "chert"),
                ("RyzeAPI", "ryze"),
                ("Direct7", "direct7"),
            )
        ],
        "connection-types": _CONNECTION_TYPES,
    }
