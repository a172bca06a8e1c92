"""
The vendor sandbox's former home, kept so that existing commands and imports go on working.

The sandbox now lives in :mod:`airflow_provider_readreceipts.testing.sandbox`, beside the vendor
fakes it is built on; start it with ``python -m airflow_provider_readreceipts.testing.sandbox``.
``python -m airflow_provider_readreceipts.sandbox``, these names and
:mod:`airflow_provider_readreceipts.sandbox.fates` still work. Like the sandbox's own package, this
imports nothing heavy.
"""

from __future__ import annotations

from airflow_provider_readreceipts.testing.sandbox import (
    CHERT_SIGNING_SECRET,
    CHERT_TENANT,
    CHERT_WEBHOOK_SECRET,
    CONN_IDS,
    DIRECT7_API_TOKEN,
    DIRECT7_ORIGINATOR,
    DIRECT7_WEBHOOK_TOKEN,
    RYZE_INSTANCE,
    RYZE_TOKEN,
    RYZE_WEBHOOK_AUTHORIZATION,
    SENDBLUE_API_SECRET,
    SENDBLUE_KEY_ID,
    SENDBLUE_LINE,
    SENDBLUE_WEBHOOK_SECRET,
    VOICE_API_TOKEN,
    VOICE_CALLER_ID,
    VOICE_CONN_ID,
    connection_environment,
    connections,
)

__all__ = [
    "CHERT_SIGNING_SECRET",
    "CHERT_TENANT",
    "CHERT_WEBHOOK_SECRET",
    "CONN_IDS",
    "DIRECT7_API_TOKEN",
    "DIRECT7_ORIGINATOR",
    "DIRECT7_WEBHOOK_TOKEN",
    "RYZE_INSTANCE",
    "RYZE_TOKEN",
    "RYZE_WEBHOOK_AUTHORIZATION",
    "SENDBLUE_API_SECRET",
    "SENDBLUE_KEY_ID",
    "SENDBLUE_LINE",
    "SENDBLUE_WEBHOOK_SECRET",
    "VOICE_API_TOKEN",
    "VOICE_CALLER_ID",
    "VOICE_CONN_ID",
    "connection_environment",
    "connections",
]
