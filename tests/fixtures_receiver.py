"""
Fixtures for anything that needs a running webhook receiver: the receiver app on a real uvicorn
server on a loopback port (in a thread), or the standalone server as its own process.

    def test_something(running_receiver, sendblue_connection):
        answer = running_receiver.post_sendblue(sendblue_payload("m-1", "READ"))

The receipt store comes from the store fixtures (``store`` on ``store_url``: a SQLite file and
the real PostgreSQL). Connections are ``AIRFLOW_CONN_<ID>`` environment variables, the only source a
process outside the Airflow API server reads besides secrets backends.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from airflow_provider_readreceipts.hooks.store import ReceiptStore
from airflow_provider_readreceipts.webhooks.app import create_app

SENDBLUE_CONN_ID = "sb_receiver"
SENDBLUE_WEBHOOK_SECRET = "sb-receiver-secret-7Qk2"
SENDBLUE_SECRET_HEADER = "sb-signing-secret"
DIRECT7_CONN_ID = "d7_receiver"
DIRECT7_WEBHOOK_TOKEN = "d7-receiver-token-Vw9x"
#: Small enough to test 413 cheaply, far above any real webhook.
TEST_MAX_BODY_BYTES = 64 * 1024


def connection_document(conn_type: str, **fields: Any) -> str:
    """An Airflow connection as the JSON an ``AIRFLOW_CONN_<ID>`` variable holds."""
    return json.dumps({"conn_type": conn_type, **fields})


def sendblue_connection_fields(secret: str = SENDBLUE_WEBHOOK_SECRET) -> dict[str, Any]:
    """A Sendblue connection that accepts webhooks carrying ``secret``."""
    return {
        "login": "sb-key-id",
        "password": "sb-api-secret",
        "extra": {"webhook_secret": secret, "from_number": "+19175550100"},
    }


def direct7_connection_fields(token: str = DIRECT7_WEBHOOK_TOKEN) -> dict[str, Any]:
    """A Direct7 connection whose delivery reports must carry ``token``."""
    return {"password": "d7-api-token", "extra": {"originator": "+971501234567", "webhook_token": token}}


def receiver_environment(**connections: str) -> dict[str, str]:
    """
    ``AIRFLOW_CONN_<ID>`` variables for a receiver process.

    :param connections: connection id to JSON document (see :func:`connection_document`).
    """
    return {f"AIRFLOW_CONN_{conn_id.upper()}": document for conn_id, document in connections.items()}


def sendblue_payload(message_id: str, status: str = "READ", **fields: Any) -> dict[str, Any]:
    """A Sendblue status webhook body as the vendor documents it."""
    return {
        "accountEmail": "ops@example.com",
        "content": "Your order shipped",
        "is_outbound": True,
        "status": status,
        "error_code": None,
        "error_message": None,
        "message_handle": message_id,
        "date_sent": "2026-11-22T10:00:00.000Z",
        "date_updated": "2026-11-22T10:00:05.000Z",
        "from_number": "+19175550100",
        "number": "+14155551234",
        "to_number": "+14155551234",
        "was_downgraded": False,
        "message_type": "message",
        "service": "iMessage",
        **fields,
    }


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class ReceiverServer:
    """
    An ASGI app on a real uvicorn server on 127.0.0.1, in a background thread with its own loop.

    The socket is bound before the server starts, so the port is known and never raced for.

    :param app: the app to serve (its lifespan runs: store migrated, writer and heartbeat started).
    """

    def __init__(self, app: Any) -> None:
        self.app = app
        self._socket = socket.socket()
        self._socket.bind(("127.0.0.1", 0))
        self.port = int(self._socket.getsockname()[1])
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, name="receiver-server", daemon=True
        )
        self.client = httpx.Client(base_url=self.url(), timeout=30.0)

    def url(self, path: str = "") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def start(self, timeout: float = 30.0) -> ReceiverServer:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the receiver server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.client.close()
        self._server.should_exit = True
        self._thread.join(30)
        self._socket.close()

    def __enter__(self) -> ReceiverServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def post_sendblue(
        self,
        payload: Mapping[str, Any] | bytes,
        *,
        conn_id: str = SENDBLUE_CONN_ID,
        secret: str | None = SENDBLUE_WEBHOOK_SECRET,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        """POST a Sendblue webhook the way Sendblue does: JSON body, the secret in its header."""
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        sent = {"content-type": "application/json", **(headers or {})}
        if secret is not None:
            sent[SENDBLUE_SECRET_HEADER] = secret
        return self.client.post(f"/webhooks/{conn_id}", content=body, headers=sent)


class StandaloneReceiver:
    """
    ``python -m airflow_provider_readreceipts.webhooks.standalone`` as a child process on loopback.

    Its stdout and stderr (uvicorn's access and error logs) go to ``log_path``.

    :param store_url: the receipt store (``--store-url``).
    :param environment: extra environment variables, e.g. from :func:`receiver_environment`.
    :param log_path: where the process's output goes.
    :param workers: ``--workers``.
    :param arguments: more command-line arguments.
    """

    def __init__(
        self,
        *,
        store_url: str,
        environment: Mapping[str, str],
        log_path: Path,
        workers: int = 1,
        arguments: Sequence[str] = (),
    ) -> None:
        self.port = free_port()
        self.log_path = log_path
        self.command = [
            sys.executable,
            "-m",
            "airflow_provider_readreceipts.webhooks.standalone",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            str(workers),
            "--store-url",
            store_url,
            *arguments,
        ]
        self.environment = {**os.environ, **environment}
        self.process: subprocess.Popen[bytes] | None = None

    def url(self, path: str = "") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def start(self) -> StandaloneReceiver:
        with self.log_path.open("wb") as log_file:
            # Our own interpreter running our own module: no untrusted input in the command.
            self.process = subprocess.Popen(  # noqa: S603
                self.command, stdout=log_file, stderr=subprocess.STDOUT, env=self.environment
            )
        return self

    def wait_ready(self, timeout: float = 180.0) -> StandaloneReceiver:
        """Wait until ``/healthz`` answers 200 (Airflow's first import is slow on a busy machine)."""
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the standalone receiver exited:\n{self.output()}")
            try:
                if httpx.get(self.url("/healthz"), timeout=2.0).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"the standalone receiver did not become healthy:\n{self.output()}")

    def stop(self) -> str:
        """Stop the process the way a service manager does (SIGTERM); return its output."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        return self.output()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


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
