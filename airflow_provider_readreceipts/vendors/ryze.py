"""RyzeAPI (WhatsApp): the vendor's facts. Its code is in :mod:`..hooks.ryze`."""

from __future__ import annotations

from airflow_provider_readreceipts.vendors._spec import ConnectionForm, FormField, RateLimit, VendorSpec

SPEC = VendorSpec(
    conn_type="ryze",
    name="RyzeAPI",
    integration="RyzeAPI",
    hook_name="RyzeAPI (WhatsApp)",
    channel="WhatsApp",
    default_conn_id="ryze_default",
    conn_id_param="ryze_conn_id",
    hook_class="airflow_provider_readreceipts.hooks.ryze.RyzeHook",
    default_base_url="https://ryzeapi.cloud",
    secret_extras=("webhook_authorization",),
    reads_via="webhook",
    rate_limit=RateLimit(100, 60.0, documented=True, source="RyzeAPI docs: 100 requests a minute per token"),
    # Below the token's 100 a minute, so that waits leave room for sends and mark-reads.
    reconcile_rate_per_minute=90.0,
    form=ConnectionForm(
        hidden=("login",),
        relabeling={"host": "API base URL", "password": "API token"},
        placeholders={
            "host": "https://ryzeapi.cloud (leave empty for the default)",
            "password": "instance or account token",
        },
        fields={
            "instance": FormField(
                "Instance",
                "The RyzeAPI instance (your connected WhatsApp number's instance name); required.",
                example="my-instance",
            ),
            "auth_scheme": FormField(
                "Token header",
                "token: send the token in a 'token' header (default); bearer: Authorization: Bearer.",
                example="token",
                default="token",
            ),
            "webhook_authorization": FormField(
                "Webhook authorization",
                "The exact value RyzeAPI sends as the Authorization header of its webhooks, scheme "
                "included (e.g. Bearer <secret>). Keep the webhook's byEvents option off.",
                secret=True,
            ),
            # RyzeAPI does not document the layout of message.status data: these paths map it.
            "webhook_message_id_path": FormField(
                "Webhook message id path",
                "Dotted path from the webhook envelope to the message id (or list of ids); comma-"
                "separated alternatives. Empty: data.messageId, data.messageIds, data.message_id, "
                "data.id, data.ids, data.key.id.",
                example="data.messageId",
            ),
            "webhook_status_path": FormField(
                "Webhook status path",
                "Dotted path to the status (name or number). Empty: data.status, data.status_code, "
                "data.ack, data.type.",
                example="data.status",
            ),
            "webhook_chat_path": FormField(
                "Webhook chat path",
                "Dotted path to the chat JID. Empty: data.chat.jid, data.chat, data.chatJid, "
                "data.chat_jid, data.key.remoteJid, data.remoteJid, data.from.",
                example="data.chat.jid",
            ),
            "webhook_participant_path": FormField(
                "Webhook participant path",
                "Dotted path to the reader's JID in group chats. Empty: data.sender.jid, data.sender, "
                "data.participant, data.key.participant.",
                example="data.sender.jid",
            ),
            "webhook_timestamp_path": FormField(
                "Webhook timestamp path",
                "Dotted path to the event time (ISO 8601 or unix). Empty: data.timestamp, "
                "data.messageTimestamp, data.time.",
                example="data.timestamp",
            ),
        },
    ),
)
