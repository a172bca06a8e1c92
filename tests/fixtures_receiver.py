"""
Fixtures for anything that needs a running webhook receiver: the receiver app on a real uvicorn
server on a loopback port (in a thread), or the standalone server as its own process.

    def test_something(running_receiver, sendblue_connection):
        answer = running_receiver.post_sendblue(sendblue_payload("m-1", "READ"))

The servers are :class:`tests.support.ReceiverServer` and :class:`tests.support.StandaloneReceiver`;
the receipt store comes from the store fixtures (``store`` on ``store_url``: a SQLite file and
the real PostgreSQL). Connections are ``AIRFLOW_CONN_<ID>`` environment variables, the only source a
process outside the Airflow API server reads besides secrets backends.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_readreceipts.hooks.store import ReceiptStore
from airflow_provider_readreceipts.webhooks.app import create_app
from tests.support import (
    SENDBLUE_CONN_ID,
    TEST_MAX_BODY_BYTES,
    ReceiverServer,
    StandaloneReceiver,
    sendblue_connection_fields,
)


@pytest.fixture
def sendblue_connection(airflow_connection: Callable[..., str]) -> str:
    """The Sendblue connection the receiver fixtures' webhooks are for."""
    return airflow_connection(SENDBLUE_CONN_ID, "sendblue", **sendblue_connection_fields())


@pytest.fixture
def start_receiver() -> Iterator[Callable[..., ReceiverServer]]:
    """
    Start receiver apps on real uvicorn servers; each is stopped after the test.

    Takes :func:`~airflow_provider_readreceipts.webhooks.app.create_app`'s keyword arguments.
    """
    servers: list[ReceiverServer] = []

    def start(**app_options: Any) -> ReceiverServer:
        app_options.setdefault("max_body_bytes", TEST_MAX_BODY_BYTES)
        server = ReceiverServer(create_app(**app_options)).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def running_receiver(
    start_receiver: Callable[..., ReceiverServer], store: ReceiptStore, sendblue_connection: str
) -> ReceiverServer:
    """
    The receiver on a real uvicorn server with a Sendblue connection, writing to ``store`` (the store
    fixtures' migrated store: a SQLite file, then the real PostgreSQL), heartbeat every 0.2 s.
    """
    return start_receiver(store=store, heartbeat_seconds=0.2)


@pytest.fixture
def start_standalone(tmp_path: Path) -> Iterator[Callable[..., StandaloneReceiver]]:
    """
    Start standalone receiver processes (not waiting for them); each is stopped after the test.

    Takes :class:`StandaloneReceiver`'s keyword arguments except ``log_path``.
    """
    receivers: list[StandaloneReceiver] = []

    def start(**options: Any) -> StandaloneReceiver:
        log_path = tmp_path / f"standalone-{len(receivers)}.log"
        receiver = StandaloneReceiver(log_path=log_path, **options).start()
        receivers.append(receiver)
        return receiver

    yield start
    for receiver in receivers:
        receiver.stop()
