"""Chert (iMessage): the vendor's facts. Its code is in :mod:`..hooks.chert`."""

from __future__ import annotations

from airflow_provider_readreceipts.vendors._spec import ConnectionForm, FormField, RateLimit, VendorSpec

SPEC = VendorSpec(
    conn_type="chert",
    name="Chert",
    integration="Chert",
    hook_name="Chert (iMessage)",
    channel="iMessage",
    default_conn_id="chert_default",
    conn_id_param="chert_conn_id",
    hook_class="airflow_provider_readreceipts.hooks.chert.ChertHook",
    default_base_url="https://console.trychert.com/api/v1",
    secret_extras=("webhook_secret",),
    # Chert documents no read webhook: READ shows only as read_at on the chat's messages.
    reads_via="polling",
    rate_limit=RateLimit(
        60,
        60.0,
        documented=False,
        source="no published limit; Chert answers 429 (code 1007) with retry_after",
    ),
    reconcile_rate_per_minute=30.0,
    form=ConnectionForm(
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
            "auth_mode": FormField(
                "Auth mode",
                "hmac: sign each request with the secret (needs the tenant slug); bearer: send the "
                "secret as a bearer token. Default: hmac when a tenant slug is set, else bearer.",
                example="hmac",
            ),
            "webhook_secret": FormField(
                "Webhook secret",
                "The subscription secret Chert signs webhooks with (HMAC-SHA256).",
                secret=True,
            ),
            "webhook_signature_header": FormField(
                "Webhook signature header",
                "Header carrying the webhook signature. Chert's docs name both X-Webhook-Signature and "
                "x-chert-signature; leave empty to accept either.",
                example="X-Webhook-Signature",
            ),
        },
    ),
)
