"""Apache Airflow provider for messaging read receipts: Sendblue, Chert, RyzeAPI and Direct7."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_PACKAGE = "airflow_provider_readreceipts"


def _field(
    label: str,
    description: str,
    *,
    example: str | None = None,
    default: str | None = None,
    secret: bool = False,
) -> dict[str, Any]:
    """
    One extra field of a connection form.

    The 3.3 UI shows ``examples`` as the field's hint (a pick list); secrets are masked, so they get
    a description and no example value.
    """
    schema: dict[str, Any] = {"type": ["string", "null"]}
    if secret:
        schema["format"] = "password"
    if example is not None:
        schema["examples"] = [example]
    if default is not None:
        schema["default"] = default
    return {"label": label, "description": description, "schema": schema}


def _connection_type(
    conn_type: str,
    hook_class: str,
    hook_name: str,
    *,
    hidden: list[str],
    relabeling: dict[str, str],
    placeholders: dict[str, str],
    fields: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    # Older UIs read extra-field placeholders from ui-field-behaviour; the 3.3 UI reads examples.
    for name, field in fields.items():
        examples = field["schema"].get("examples")
        if examples and name not in placeholders:
            placeholders = {**placeholders, name: examples[0]}
    return {
        "connection-type": conn_type,
        "hook-class-name": f"{_PACKAGE}.hooks.{hook_class}",
        "hook-name": hook_name,
        "ui-field-behaviour": {
            "hidden-fields": ["schema", "port", *hidden],
            "relabeling": relabeling,
            "placeholders": placeholders,
        },
        "conn-fields": fields,
    }


def _receiver_url(conn_id: str) -> dict[str, Any]:
    return _field(
        "Receiver URL",
        "Public URL of this connection's webhook receiver: <Airflow API server>/readreceipts/webhooks/"
        "<conn_id>, or the standalone receiver's. Send operators give it to the vendor as the status "
        "callback.",
        example=f"https://airflow.example.com/readreceipts/webhooks/{conn_id}",
    )


# Declarative connection forms (Airflow 3.2+): the UI renders them without importing the hooks.
# Extra names avoid the words Airflow masks by name ("secret", "token", "auth_header", ...) unless
# the value really is a secret, so settings such as header names stay readable in the form.
_CONNECTION_TYPES: list[dict[str, Any]] = [
    _connection_type(
        "sendblue",
        "sendblue.SendblueHook",
        "Sendblue (iMessage)",
        hidden=[],
        relabeling={"host": "API base URL", "login": "API key ID", "password": "API secret key"},
        placeholders={
            "host": "https://api.sendblue.co (leave empty for the default)",
            "login": "sb-api-key-id from the Sendblue dashboard",
            "password": "sb-api-secret-key from the Sendblue dashboard",
        },
        fields={
            "from_number": _field(
                "Default from number",
                "Your Sendblue line in E.164, used when a task names none.",
                example="+19175551234",
            ),
            "webhook_secret": _field(
                "Webhook secret",
                "The secret Sendblue sends with every webhook (set it on your Sendblue webhooks); the "
                "receiver refuses webhooks without it.",
                secret=True,
            ),
            "webhook_header_name": _field(
                "Webhook secret header",
                "Header that carries the webhook secret.",
                example="sb-signing-secret",
                default="sb-signing-secret",
            ),
            "receiver_url": _receiver_url("sendblue_default"),
        },
    ),
    _connection_type(
        "chert",
        "chert.ChertHook",
        "Chert (iMessage)",
        hidden=[],
        relabeling={
            "host": "API base URL",
            "login": "Tenant slug (HMAC mode)",
            "password": "Signing secret or bearer token",
        },
        placeholders={
            "host": "https://console.trychert.com/api/v1 (leave empty for the default)",
            "login": "your-tenant (leave empty to use the secret as a bearer token)",
            "password": "HMAC signing secret, or the bearer token",
        },
        fields={
            "auth_mode": _field(
                "Auth mode",
                "hmac: sign each request with the secret (needs the tenant slug); bearer: send the "
                "secret as a bearer token. Default: hmac when a tenant slug is set, else bearer.",
                example="hmac",
            ),
            "webhook_secret": _field(
                "Webhook secret",
                "The subscription secret Chert signs webhooks with (HMAC-SHA256).",
                secret=True,
            ),
            "webhook_signature_header": _field(
                "Webhook signature header",
                "Header carrying the webhook signature. Chert's docs name both X-Webhook-Signature and "
                "x-chert-signature; leave empty to accept either.",
                example="X-Webhook-Signature",
            ),
        },
    ),
    _connection_type(
        "ryze",
        "ryze.RyzeHook",
        "RyzeAPI (WhatsApp)",
        hidden=["login"],
        relabeling={"host": "API base URL", "password": "API token"},
        placeholders={
            "host": "https://ryzeapi.cloud (leave empty for the default)",
            "password": "instance or account token",
        },
        fields={
            "instance": _field(
                "Instance",
                "The RyzeAPI instance (your connected WhatsApp number's instance name); required.",
                example="my-instance",
            ),
            "auth_scheme": _field(
                "Token header",
                "token: send the token in a 'token' header (default); bearer: Authorization: Bearer.",
                example="token",
                default="token",
            ),
            "webhook_authorization": _field(
                "Webhook authorization",
                "The exact value RyzeAPI sends as the Authorization header of its webhooks, scheme "
                "included (e.g. Bearer <secret>). Keep the webhook's byEvents option off.",
                secret=True,
            ),
            # RyzeAPI does not document the layout of message.status data: these paths map it.
            "webhook_message_id_path": _field(
                "Webhook message id path",
                "Dotted path from the webhook envelope to the message id (or list of ids); comma-"
                "separated alternatives. Empty: data.messageId, data.messageIds, data.message_id, "
                "data.id, data.ids, data.key.id.",
                example="data.messageId",
            ),
            "webhook_status_path": _field(
                "Webhook status path",
                "Dotted path to the status (name or number). Empty: data.status, data.status_code, "
                "data.ack, data.type.",
                example="data.status",
            ),
            "webhook_chat_path": _field(
                "Webhook chat path",
                "Dotted path to the chat JID. Empty: data.chat.jid, data.chat, data.chatJid, "
                "data.chat_jid, data.key.remoteJid, data.remoteJid, data.from.",
                example="data.chat.jid",
            ),
            "webhook_participant_path": _field(
                "Webhook participant path",
                "Dotted path to the reader's JID in group chats. Empty: data.sender.jid, data.sender, "
                "data.participant, data.key.participant.",
                example="data.sender.jid",
            ),
            "webhook_timestamp_path": _field(
                "Webhook timestamp path",
                "Dotted path to the event time (ISO 8601 or unix). Empty: data.timestamp, "
                "data.messageTimestamp, data.time.",
                example="data.timestamp",
            ),
        },
    ),
    _connection_type(
        "direct7",
        "direct7.Direct7Hook",
        "Direct7 Networks (WhatsApp)",
        hidden=["login"],
        relabeling={"host": "API base URL", "password": "API token"},
        placeholders={
            "host": "https://api.d7networks.com (leave empty for the default)",
            "password": "the Direct7 API token (Bearer)",
        },
        fields={
            "originator": _field(
                "Originator",
                "Your WhatsApp business number in E.164, used to send.",
                example="+971501234567",
            ),
            "webhook_token": _field(
                "Webhook token",
                "Direct7 signs nothing: the receiver accepts only reports carrying this token, as a "
                "?token= query parameter (send operators add it to the report URL) or an "
                "X-Webhook-Token header.",
                secret=True,
            ),
            "webhook_header_name": _field(
                "Webhook token header",
                "Header that may carry the webhook token instead of ?token=.",
                example="x-webhook-token",
                default="x-webhook-token",
            ),
            # Direct7 does not document its inbound (user-initiated) webhook: these name its fields.
            "inbound_message_id_field": _field(
                "Inbound message id field",
                "Field of Direct7's inbound webhook holding the message id. Empty: message_id, msg_id or id.",
                example="message_id",
            ),
            "inbound_sender_field": _field(
                "Inbound sender field",
                "Field of Direct7's inbound webhook holding the sender. Empty: from, sender or originator.",
                example="from",
            ),
            "receiver_url": _receiver_url("direct7_default"),
        },
    ),
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
            for name in ("Sendblue", "Chert", "RyzeAPI", "Direct7", "Read Receipts")
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
        "operators": [
            {
                "integration-name": name,
                "python-modules": [f"{_PACKAGE}.operators.mark_read", f"{_PACKAGE}.operators.send_message"],
            }
            for name in ("Sendblue", "Chert", "RyzeAPI", "Direct7")
        ],
        "sensors": [
            {
                "integration-name": "Read Receipts",
                "python-modules": [f"{_PACKAGE}.sensors.read_receipt"],
            }
        ],
        "triggers": [
            {
                "integration-name": "Read Receipts",
                "python-modules": [f"{_PACKAGE}.triggers.read_receipt"],
            }
        ],
        "connection-types": _CONNECTION_TYPES,
    }
