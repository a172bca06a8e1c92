"""Direct7 Networks (WhatsApp): the vendor's facts. Its code is in :mod:`..hooks.direct7`."""

from __future__ import annotations

from airflow_provider_readreceipts.vendors._spec import (
    ConnectionForm,
    FormField,
    RateLimit,
    VendorSpec,
    receiver_url_field,
)

SPEC = VendorSpec(
    conn_type="direct7",
    name="Direct7",
    integration="Direct7",
    hook_name="Direct7 Networks (WhatsApp)",
    channel="WhatsApp",
    default_conn_id="direct7_default",
    conn_id_param="direct7_conn_id",
    hook_class="airflow_provider_readreceipts.hooks.direct7.Direct7Hook",
    default_base_url="https://api.d7networks.com",
    secret_extras=("webhook_token",),
    reads_via="webhook",
    rate_limit=RateLimit(60, 60.0, documented=False, source="no published limit for the WhatsApp API"),
    reconcile_rate_per_minute=30.0,
    form=ConnectionForm(
        hidden=("login",),
        relabeling={"host": "API base URL", "password": "API token"},
        placeholders={
            "host": "https://api.d7networks.com (leave empty for the default)",
            "password": "the Direct7 API token (Bearer)",
        },
        fields={
            "originator": FormField(
                "Originator",
                "Your WhatsApp business number in E.164, used to send.",
                example="+971501234567",
            ),
            "webhook_token": FormField(
                "Webhook token",
                "Direct7 signs nothing: the receiver accepts only reports carrying this token, as a "
                "?token= query parameter (send operators add it to the report URL) or an "
                "X-Webhook-Token header.",
                secret=True,
            ),
            "webhook_header_name": FormField(
                "Webhook token header",
                "Header that may carry the webhook token instead of ?token=.",
                example="x-webhook-token",
                default="x-webhook-token",
            ),
            # Direct7 does not document its inbound (user-initiated) webhook: these name its fields.
            "inbound_message_id_field": FormField(
                "Inbound message id field",
                "Field of Direct7's inbound webhook holding the message id. Empty: message_id, msg_id or id.",
                example="message_id",
            ),
            "inbound_sender_field": FormField(
                "Inbound sender field",
                "Field of Direct7's inbound webhook holding the sender. Empty: from, sender or originator.",
                example="from",
            ),
            "receiver_url": receiver_url_field("direct7_default"),
        },
    ),
)
