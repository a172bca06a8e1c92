"""Provider metadata for Airflow's providers manager, built from the vendor registry."""

from __future__ import annotations

from typing import Any

from airflow_provider_readreceipts import __version__
from airflow_provider_readreceipts.vendors import SPECS

_PACKAGE = "airflow_provider_readreceipts"
#: The integration of what is not one vendor's: the sensor, the triggers, the store.
_SHARED_INTEGRATION = "Read Receipts"


def get_provider_info() -> dict[str, Any]:
    """The ``apache_airflow_provider`` entry point: what Airflow lists, and the connection forms."""
    specs = list(SPECS.values())
    return {
        "package-name": "airflow-provider-readreceipts",
        "name": "Read Receipts",
        "description": "Read receipts for iMessage (Sendblue, Chert) and WhatsApp (RyzeAPI, Direct7).",
        "versions": [__version__],
        "integrations": [
            {"integration-name": name, "tags": ["service"]}
            for name in (*(spec.integration for spec in specs), _SHARED_INTEGRATION)
        ],
        "hooks": [
            {"integration-name": spec.integration, "python-modules": [spec.hook_module]} for spec in specs
        ],
        "operators": [
            {
                "integration-name": spec.integration,
                "python-modules": [f"{_PACKAGE}.operators.mark_read", f"{_PACKAGE}.operators.send_message"],
            }
            for spec in specs
        ],
        "sensors": [
            {"integration-name": _SHARED_INTEGRATION, "python-modules": [f"{_PACKAGE}.sensors.read_receipt"]}
        ],
        "triggers": [
            {
                "integration-name": _SHARED_INTEGRATION,
                "python-modules": [f"{_PACKAGE}.triggers.read_receipt", f"{_PACKAGE}.triggers.events"],
            }
        ],
        "connection-types": [spec.connection_type() for spec in specs],
    }
