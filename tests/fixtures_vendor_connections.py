"""
``conns``: one Airflow connection per vendor, pointing at the loopback vendor fakes (``vendors``),
for the operator tests and the vendor-fault tests alike.
"""

from __future__ import annotations

import pytest

from airflow_provider_readreceipts.testing.fakes import chert as chert_fake
from airflow_provider_readreceipts.testing.fakes import direct7 as direct7_fake
from airflow_provider_readreceipts.testing.fakes import ryze as ryze_fake
from airflow_provider_readreceipts.testing.fakes import sendblue as sendblue_fake
from tests.support import D7_RECEIVER, D7_WEBHOOK_TOKEN, SB_RECEIVER


@pytest.fixture
def conns(vendors, airflow_connection) -> dict[str, str]:
    """One connection per vendor, pointing at the fakes."""
    return {
        "sendblue": airflow_connection(
            "sb",
            "sendblue",
            host=vendors.url("sendblue"),
            login=sendblue_fake.API_KEY_ID,
            password=sendblue_fake.API_SECRET,
            extra={"from_number": sendblue_fake.LINE, "receiver_url": SB_RECEIVER},
        ),
        "chert": airflow_connection(
            "chert",
            "chert",
            host=vendors.url("chert"),
            login=chert_fake.TENANT,
            password=chert_fake.SIGNING_SECRET,
        ),
        "ryze": airflow_connection(
            "ryze",
            "ryze",
            host=vendors.url("ryze"),
            password=ryze_fake.TOKEN,
            extra={"instance": ryze_fake.INSTANCE},
        ),
        "direct7": airflow_connection(
            "d7",
            "direct7",
            host=vendors.url("direct7"),
            password=direct7_fake.API_TOKEN,
            extra={
                "originator": direct7_fake.ORIGINATOR,
                "webhook_token": D7_WEBHOOK_TOKEN,
                "receiver_url": D7_RECEIVER,
            },
        ),
    }
