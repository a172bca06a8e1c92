"""Sendblue (iMessage, SMS, RCS): the vendor's facts. Its code is in :mod:`..hooks.sendblue`."""

from __future__ import annotations

from airflow_provider_readreceipts.vendors._spec import (
    ConnectionForm,
    FormField,
    RateLimit,
    VendorSpec,
    receiver_url_field,
)

SPEC = VendorSpec(
    conn_type="sendblue",
    name="Sendblue",
    integration="Sendblue",
    hook_name="Sendblue (iMessage)",
    channel="iMessage",
    default_conn_id="sendblue_default",
    conn_id_param="sendblue_conn_id",
    hook_class="airflow_provider_readreceipts.hooks.sendblue.SendblueHook",
    default_base_url="https://api.sendblue.co",
    secret_extras=("webhook_secret",),
    reads_via="webhook",
    # Sendblue publishes no API limit; plans have historically allowed one message a second per line.
    rate_limit=RateLimit(
        60, 60.0, documented=False, source="no published limit; historically one message a second per line"
    ),
    reconcile_rate_per_minute=30.0,
    form=ConnectionForm(
        relabeling={"host": "API base URL", "login": "API key ID", "password": "API secret key"},
        placeholders={
            "host": "https://api.sendblue.co (leave empty for the default)",
            "login": "sb-api-key-id from the Sendblue dashboard",
            "password": "sb-api-secret-key from the Sendblue dashboard",
        },
        fields={
            "from_number": FormField(
                "Default from number",
                "Your Sendblue line in E.164, used when a task names none.",
                example="+19175551234",
            ),
            "webhook_secret": FormField(
                "Webhook secret",
                "The secret Sendblue sends with every webhook (set it on your Sendblue webhooks); the "
                "receiver refuses webhooks without it.",
                secret=True,
            ),
            "webhook_header_name": FormField(
                "Webhook secret header",
                "Header that carries the webhook secret.",
                example="sb-signing-secret",
                default="sb-signing-secret",
            ),
            "receiver_url": receiver_url_field("sendblue_default"),
        },
    ),
)
