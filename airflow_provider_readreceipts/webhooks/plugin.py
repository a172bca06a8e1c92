"""
The Airflow plugin that mounts the webhook receiver on the Airflow API server at ``/readreceipts``.

Registered through the ``airflow.plugins`` entry point only (on Airflow 3.3 a
plugin named in ``get_provider_info()`` is skipped while provider discovery is lazy). Every Airflow
process loads plugins, the scheduler and the workers included, so this module imports nothing
heavy: the FastAPI app is built the first time the API server asks for ``fastapi_apps``, and the
receipt store is opened only when the API server starts the app's lifespan.

The API server mounts plugin apps without authentication: the receiver verifies every request
itself (each vendor's secret or signature). Its access log already redacts ``token`` query
parameters; the receiver adds its own redaction filter at startup as well.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk.plugins_manager import AirflowPlugin

#: Where the API server mounts the receiver: vendors post to
#: ``<API server URL>/readreceipts/webhooks/<conn_id>``.
URL_PREFIX = "/readreceipts"


class _ReceiverApps:
    """
    ``fastapi_apps`` as a lazily built list: the app (and FastAPI itself) is created on first access.

    Both the class and its instances see the same list, built once per process.
    """

    def __init__(self) -> None:
        self._apps: list[dict[str, Any]] | None = None

    def __get__(self, instance: object, owner: type | None = None) -> list[dict[str, Any]]:
        if self._apps is None:
            from airflow_provider_readreceipts.webhooks.app import create_app

            self._apps = [
                {
                    "app": create_app(),
                    "url_prefix": URL_PREFIX,
                    "name": "Read receipts webhook receiver",
                }
            ]
        return self._apps


class ReadReceiptsPlugin(AirflowPlugin):
    """Mounts the read-receipts webhook receiver (``POST /readreceipts/webhooks/<conn_id>``)."""

    name = "readreceipts"
    # A descriptor in place of the base class's plain list, so importing the plugin stays cheap.
    fastapi_apps = _ReceiverApps()
