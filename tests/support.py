"""
The test suite's plain helpers: everything the fixture modules (``tests/fixtures_*.py``) and the
tests share that is not itself a fixture.

* PostgreSQL: one server for the whole suite, ``READRECEIPTS_TEST_POSTGRES_URL`` (default
  ``postgresql+psycopg://postgres@127.0.0.1:5432/test``, the server's admin user). Every URL,
  libpq connection string and Airflow ``postgres`` connection the tests use is derived from it, and
  :func:`skip_or_fail_without_postgres` is the one rule for its absence: skip with the reason, or
  fail when ``READRECEIPTS_REQUIRE_POSTGRES=1`` (as on CI).
* Receipt events (:func:`build_event`, :func:`receipt`) and vendor webhook bodies.
* Connection documents for ``AIRFLOW_CONN_<ID>`` variables, and the credentials they carry.
* Processes and servers: the receiver on a uvicorn thread, the standalone receiver, the sandbox and
  Airflow's components as child processes, and waiting on them (:func:`wait_until`).
* ``dag.test()`` results, the reliability suite's scale and figures, and what counts as a secret in
  a connection (the session's secret scan and its own tests share it).

Nothing here imports Airflow, SQLAlchemy or a database driver at import time.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn
from urllib.parse import parse_qsl, unquote, urlsplit

import httpx
import pytest

from airflow_provider_readreceipts.receipts import ReceiptEvent, Status

if TYPE_CHECKING:
    import psycopg

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_DAGS = REPO / "example_dags"
#: Airflow's first import is slow on a busy machine: how long a process may take to answer.
STARTUP_TIMEOUT = 240.0

# -- PostgreSQL ----------------------------------------------------------------------------------------

POSTGRES_URL_ENV = "READRECEIPTS_TEST_POSTGRES_URL"
REQUIRE_POSTGRES_ENV = "READRECEIPTS_REQUIRE_POSTGRES"
#: The test server as its admin user (SQLAlchemy URL, psycopg driver); its database is the one the
#: tests connect to when they create databases, roles and schemas of their own.
POSTGRES_ADMIN_URL = os.environ.get(POSTGRES_URL_ENV, "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REQUIRE_POSTGRES = os.environ.get(REQUIRE_POSTGRES_ENV) == "1"


def postgres_server_url(*, database: str | None = None, **query: str) -> str:
    """
    A SQLAlchemy URL (psycopg driver) on the test server, with the password kept.

    :param database: another database than the admin URL's.
    :param query: query parameters, e.g. ``options="-csearch_path=s1"``.
    """
    from sqlalchemy.engine import make_url

    url = make_url(POSTGRES_ADMIN_URL).set(drivername="postgresql+psycopg")
    if database is not None:
        url = url.set(database=database)
    if query:
        url = url.update_query_dict(query)
    return url.render_as_string(hide_password=False)


def postgres_display_url() -> str:
    """The test server's URL with the password hidden, for messages."""
    from sqlalchemy.engine import make_url

    return make_url(POSTGRES_ADMIN_URL).render_as_string(hide_password=True)


def libpq_conninfo(url: str = POSTGRES_ADMIN_URL, *, database: str | None = None) -> str:
    """A SQLAlchemy PostgreSQL URL as the connection string psycopg (libpq) takes."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if database is not None:
        parsed = parsed.set(database=database)
    return parsed.set(drivername="postgresql").render_as_string(hide_password=False)


def connect_postgres(url: str = POSTGRES_ADMIN_URL) -> psycopg.Connection[Any]:
    """An autocommit psycopg connection to ``url``; raises when the server cannot be reached."""
    import psycopg

    return psycopg.connect(libpq_conninfo(url), autocommit=True, connect_timeout=5)


def skip_or_fail_without_postgres(error: BaseException) -> NoReturn:
    """
    The suite's one rule for a PostgreSQL it cannot reach: skip the test with the reason, or fail it
    when ``READRECEIPTS_REQUIRE_POSTGRES=1`` (CI), so that a missing server is never a silent pass.
    """
    reason = f"PostgreSQL at {postgres_display_url()} is unreachable ({type(error).__name__}: {error})"
    if REQUIRE_POSTGRES:
        pytest.fail(f"{reason}, and {REQUIRE_POSTGRES_ENV}=1", pytrace=False)
    pytest.skip(f"{reason}; set {REQUIRE_POSTGRES_ENV}=1 to fail instead of skipping")


def postgres_admin_connection() -> psycopg.Connection[Any]:
    """An autocommit connection to the server as its admin user, or :func:`skip_or_fail_without_postgres`."""
    try:
        return connect_postgres()
    except Exception as error:
        skip_or_fail_without_postgres(error)


def reset_postgres_database(url: str) -> None:
    """Empty a test database: end other sessions on it (leftover pools), recreate its public schema."""
    from sqlalchemy.engine import make_url

    database = make_url(url).database
    with connect_postgres(url) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()",
            (database,),
        )
        conn.execute("DROP SCHEMA IF EXISTS public CASCADE")
        conn.execute("CREATE SCHEMA public")
        # ALTER DATABASE settings made by a test (e.g. synchronous_commit=off) end with it too.
        conn.execute(f'ALTER DATABASE "{database}" RESET ALL')


def postgres_connection_fields(url: str = POSTGRES_ADMIN_URL, **overrides: Any) -> dict[str, Any]:
    """
    The fields of an Airflow ``postgres`` connection to ``url`` (for the ``airflow_connection``
    fixture, or a connection document).

    :param overrides: fields to replace, e.g. ``port=9`` for a server that is not there.
    """
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    fields: dict[str, Any] = {
        "host": parsed.host or "127.0.0.1",
        "port": parsed.port or 5432,
        "login": parsed.username,
        "schema": parsed.database,
    }
    if parsed.password:
        fields["password"] = parsed.password
    fields.update(overrides)
    return fields


# -- receipt events ------------------------------------------------------------------------------------


def build_event(
    status: Status | str = Status.SENT,
    *,
    message_id: str = "msg-1",
    conn_id: str = "sendblue_default",
    vendor: str = "sendblue",
    raw_status: str | None = None,
    **fields: Any,
) -> ReceiptEvent:
    """A ReceiptEvent with defaults for what a test does not care about."""
    status = Status(status)
    return ReceiptEvent(
        vendor=vendor,
        conn_id=conn_id,
        message_id=message_id,
        status=status,
        raw_status=status.value if raw_status is None else raw_status,
        **fields,
    )


def receipt(
    message_id: str,
    status: Status | str,
    *,
    conn_id: str = "sb_wait",
    vendor: str = "sendblue",
    participant: str = "",
    occurred_at: datetime | None = None,
    error_code: str = "",
    error_message: str = "",
) -> ReceiptEvent:
    """A receipt event as a receiver would store it, for the read-wait tests' connection ``sb_wait``."""
    status = Status(status)
    return ReceiptEvent(
        vendor=vendor,
        conn_id=conn_id,
        message_id=message_id,
        status=status,
        raw_status=status.value,
        participant=participant,
        chat_id="+14155550100",
        occurred_at=occurred_at or datetime.now(timezone.utc),
        error_code=error_code,
        error_message=error_message,
        payload={"test": True},
    )


@dataclass
class WaitStore:
    """A migrated store for one read-wait test, and how a sensor or trigger names it."""

    kind: str
    url: str
    #: Keyword arguments that point a sensor or trigger at this store.
    target: dict[str, Any]
    _store: Any = field(default=None, repr=False)

    @property
    def store(self) -> Any:
        if self._store is None:
            from airflow_provider_readreceipts.hooks.store import ReceiptStore

            self._store = ReceiptStore(self.url)
        return self._store

    def heartbeat(self, receiver_id: str = "test-receiver") -> None:
        self.store.heartbeat(receiver_id)

    def record(self, *events: ReceiptEvent, source: str = "webhook") -> list[bool]:
        return self.store.record(list(events), source=source)

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None


# -- connections and webhooks --------------------------------------------------------------------------

#: The receiver tests' Sendblue and Direct7 connections.
SENDBLUE_CONN_ID = "sb_receiver"
SENDBLUE_WEBHOOK_SECRET = "sb-receiver-secret-7Qk2"
SENDBLUE_SECRET_HEADER = "sb-signing-secret"
DIRECT7_CONN_ID = "d7_receiver"
DIRECT7_WEBHOOK_TOKEN = "d7-receiver-token-Vw9x"
#: The receiver fixtures' body limit: small enough to test 413 cheaply, far above any real webhook.
TEST_MAX_BODY_BYTES = 64 * 1024
#: Receiver URLs and the Direct7 webhook token of the operator tests' connections (``conns``).
SB_RECEIVER = "https://airflow.example.com/readreceipts/webhooks/sb"
D7_RECEIVER = "https://airflow.example.com/readreceipts/webhooks/d7"
D7_WEBHOOK_TOKEN = "d7-webhook-token-51f0"


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


def store_connection_document(store_url: str) -> str:
    """The ``readreceipts_store_default`` connection (postgres type) for a PostgreSQL store URL."""
    return connection_document("postgres", **postgres_connection_fields(store_url))


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


#: Connection fields that hold secrets, besides any extra named like one.
SECRET_FIELDS = ("password", "webhook_secret", "webhook_token", "webhook_authorization")
SECRET_NAME = re.compile(r"secret|token|authorization|password", re.IGNORECASE)
#: Extras named like a secret that hold a header name or a mode, not a secret.
NOT_SECRET_NAME = re.compile(r"header|mode", re.IGNORECASE)


def secrets_of_connection(document: str, name: str) -> Iterator[tuple[str, str]]:
    """``(value, kind)`` for the secrets of an ``AIRFLOW_CONN_*`` value (JSON or URI form)."""
    text = document.strip()
    fields: dict[str, Any] = {}
    extras: Any = {}
    if text.startswith("{"):
        try:
            parsed = json.loads(text)
        except ValueError:
            return
        if not isinstance(parsed, dict):
            return
        fields = parsed
        extras = parsed.get("extra") or {}
        if isinstance(extras, str):
            try:
                extras = json.loads(extras)
            except ValueError:
                extras = {}
    elif "://" in text:
        parts = urlsplit(text)
        fields = {"password": unquote(parts.password) if parts.password else None}
        extras = dict(parse_qsl(parts.query))
    for key in SECRET_FIELDS:
        if isinstance(fields.get(key), str):
            yield fields[key], f"{name} {key}"
    if isinstance(extras, Mapping):
        for key, value in extras.items():
            if (
                isinstance(value, str)
                and SECRET_NAME.search(str(key))
                and not NOT_SECRET_NAME.search(str(key))
            ):
                yield value, f"{name} extra {key}"


# -- waiting, ports, processes --------------------------------------------------------------------------


def wait_until(condition: Callable[[], Any], *, timeout: float, what: str, interval: float = 0.3) -> Any:
    """Poll ``condition`` until it returns something truthy; return that, or fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


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
        import uvicorn

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


class ChildProcess:
    """
    A command run as a child process in its own session, output to a log file, stopped by SIGTERM.

    :param name: for messages.
    :param command: the command line.
    :param env: its whole environment.
    :param log_path: where stdout and stderr go.
    """

    def __init__(self, name: str, command: Sequence[str], *, env: Mapping[str, str], log_path: Path) -> None:
        self.name = name
        self.command = list(command)
        self.env = dict(env)
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> ChildProcess:
        with self.log_path.open("wb") as log_file:
            # Our own interpreter and Airflow's own command line: no untrusted input.
            self.process = subprocess.Popen(  # noqa: S603
                self.command,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=REPO,
                start_new_session=True,
            )
        return self

    def check_alive(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            pytest.fail(f"{self.name} exited with {self.process.returncode}:\n{self.output()[-4000:]}")

    def wait_http(self, url: str, *, timeout: float = STARTUP_TIMEOUT) -> None:
        """Wait until ``url`` answers 200, failing at once if the process died."""

        def answers() -> bool:
            self.check_alive()
            try:
                return httpx.get(url, timeout=2.0).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(answers, timeout=timeout, what=f"{self.name} at {url}")

    def terminate(self) -> None:
        """Ask the process to stop (SIGTERM); :meth:`stop` waits for it."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()

    def kill(self) -> None:
        """SIGKILL the whole session (the process and its children), as a crash would; wait for it."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(30)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            # The whole session: Airflow's components have children of their own.
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


# -- the sandbox, the example DAGs, a whole Airflow -------------------------------------------------------

#: The example DAGs' ids.
CAMPAIGN = "readreceipts_follow_up_campaign"
INBOUND = "readreceipts_inbound"
#: Six contacts for the real-Airflow tier, two of each outcome; the readers' numbers end in 0 (read
#: ``CLUSTER_FATE_DELAY`` seconds after the send, see the ``airflow_cluster`` fixture).
CLUSTER_CONTACTS = [
    {"name": f"Contact {n}", "number": f"+141555504{n}"} for n in ("40", "50", "45", "46", "48", "49")
]
#: The Airflow processes of the real-Airflow tier, in the order they are stopped.
AIRFLOW_COMPONENTS = ("scheduler", "triggerer", "dag-processor", "api-server")


def example_source(name: str) -> str:
    """The text of ``example_dags/<name>.py``, for the ``run_dag`` fixture."""
    return (EXAMPLE_DAGS / f"{name}.py").read_text()


def numbers_with(fate: Any, contacts: Sequence[Mapping[str, str]]) -> list[str]:
    """The numbers of ``contacts`` whose messages the sandbox gives ``fate``."""
    from airflow_provider_readreceipts.testing.sandbox.fates import fate_for

    return [c["number"] for c in contacts if fate_for(c["number"]) is fate]


def start_sandbox(
    *, receiver_url: str, log_path: Path, env: Mapping[str, str], arguments: Sequence[str] = ()
) -> tuple[ChildProcess, str]:
    """The vendor sandbox as a child process (not waited for); returns it and its URL."""
    port = free_port()
    sandbox = ChildProcess(
        "the vendor sandbox",
        [
            sys.executable,
            "-m",
            "airflow_provider_readreceipts.testing.sandbox",
            "--port",
            str(port),
            "--receiver-url",
            receiver_url,
            "--max-runtime",
            "1800",
            *arguments,
        ],
        env=env,
        log_path=log_path,
    ).start()
    return sandbox, f"http://127.0.0.1:{port}"


def stack_environment(kind: str, store_url: str, sandbox_url: str, receiver_url: str) -> dict[str, str]:
    """What points Airflow at a sandbox, a receiver and its store: connections, store settings."""
    from airflow_provider_readreceipts.testing.sandbox import connection_environment

    env = connection_environment(sandbox_url=sandbox_url, receiver_url=f"{receiver_url}/webhooks")
    if kind == "postgres":
        env["AIRFLOW_CONN_READRECEIPTS_STORE_DEFAULT"] = store_connection_document(store_url)
    else:
        env["READRECEIPTS_STORE_PATH"] = store_url.removeprefix("sqlite:///")
    return env


@dataclass
class Stack:
    """
    A running sandbox, receiver and receipt store, and how to talk to them.

    :param kind: ``"sqlite"`` or ``"postgres"``, the receipt store's database.
    :param store_url: the receipt store.
    :param sandbox_url: the sandbox's base URL.
    :param receiver_url: the receiver's base URL.
    :param environment: what points Airflow at them (connections, store).
    """

    kind: str
    store_url: str
    sandbox_url: str
    receiver_url: str
    environment: dict[str, str]
    client: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=30.0))

    def state(self) -> dict[str, Any]:
        """The sandbox's state: planned messages, deliveries, calls, what each vendor received."""
        return self.client.get(f"{self.sandbox_url}/_sandbox/state").raise_for_status().json()

    def reset(self) -> None:
        self.client.post(f"{self.sandbox_url}/_sandbox/reset").raise_for_status()

    def inbound(self, vendor: str, sender: str, text: str = "Hello, is anyone there?") -> dict[str, Any]:
        """A contact writes to us through ``vendor``; returns the message's vendor, id and chat."""
        answer = self.client.post(
            f"{self.sandbox_url}/_sandbox/inbound", json={"vendor": vendor, "from": sender, "text": text}
        )
        return answer.raise_for_status().json()

    def settled(self, *, timeout: float = 60.0) -> dict[str, Any]:
        """Wait until the sandbox has nothing pending and every webhook was acknowledged."""

        def quiet() -> dict[str, Any] | None:
            state = self.state()
            deliveries = state["deliveries"]
            done = all(d["acknowledged"] or d["gave_up"] for d in deliveries)
            return state if done and state["pending_actions"] == 0 else None

        state: dict[str, Any] = wait_until(quiet, timeout=timeout, what="the sandbox's webhooks to settle")
        return state


@dataclass
class Cluster:
    """
    A running Airflow on PostgreSQL with the example DAGs, a sandbox and a receiver.

    :param stack: the sandbox, receiver and (PostgreSQL) receipt store.
    :param metadata_url: Airflow's metadata database (psycopg URL).
    :param api_url: the API server's base URL.
    :param environment: the environment every Airflow process runs with.
    :param processes: the Airflow components, by name.
    """

    stack: Stack
    metadata_url: str
    api_url: str
    environment: dict[str, str]
    processes: dict[str, ChildProcess]
    home: Path

    def sql(self, query: str, *parameters: Any) -> list[tuple[Any, ...]]:
        """Rows of a query on the metadata database."""
        with connect_postgres(self.metadata_url) as conn:
            return list(conn.execute(query, parameters).fetchall())

    def check_alive(self) -> None:
        for process in self.processes.values():
            process.check_alive()

    def trigger(self, dag_id: str, *, run_id: str, conf: Mapping[str, Any]) -> None:
        """Start a DAG run through the REST API, as a user or another system would."""
        # All users are admins here ([core] simple_auth_manager_all_admins): a token for the asking.
        token = httpx.get(f"{self.api_url}/auth/token", timeout=30).raise_for_status().json()["access_token"]
        httpx.post(
            f"{self.api_url}/api/v2/dags/{dag_id}/dagRuns",
            json={"dag_run_id": run_id, "logical_date": None, "conf": dict(conf)},
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        ).raise_for_status()

    def logs(self) -> str:
        return "\n".join(f"==== {name}\n{p.output()[-3000:]}" for name, p in self.processes.items())

    def xcom_values(self, dag_id: str, run_id: str, task_id: str) -> dict[int, Any]:
        """The return values of a task's map indexes in one run."""
        rows = self.sql(
            "SELECT map_index, value FROM xcom WHERE dag_id = %s AND run_id = %s AND task_id = %s"
            " AND key = 'return_value'",
            dag_id,
            run_id,
            task_id,
        )
        return {index: value if not isinstance(value, str) else json.loads(value) for index, value in rows}

    def wait_for_example_dags(self) -> None:
        """Wait until the DAG processor has registered the campaign and the inbound DAG."""

        def registered() -> bool:
            self.check_alive()
            rows = self.sql("SELECT dag_id FROM serialized_dag WHERE dag_id IN (%s, %s)", CAMPAIGN, INBOUND)
            return len(rows) == 2

        wait_until(registered, timeout=240, what="the DAG processor to register the example DAGs", interval=1)


# -- dag.test() ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TaskTry:
    """A task instance as the metadata DB has it after the run."""

    task_id: str
    map_index: int
    state: str | None
    try_number: int


@dataclass
class DagTestRun:
    """What one ``dag.test()`` run left behind."""

    dag_id: str
    run_id: str
    state: str
    #: (task_id, map_index) -> the error of each failed try, in order.
    failures: dict[tuple[str, int], list[BaseException]] = field(default_factory=dict)

    def ti(self, task_id: str, map_index: int = -1) -> TaskTry:
        from airflow.models.taskinstance import TaskInstance
        from airflow.utils.session import create_session
        from sqlalchemy import select

        with create_session() as session:
            ti = session.scalars(
                select(TaskInstance).where(
                    TaskInstance.dag_id == self.dag_id,
                    TaskInstance.run_id == self.run_id,
                    TaskInstance.task_id == task_id,
                    TaskInstance.map_index == map_index,
                )
            ).one()
            return TaskTry(task_id, map_index, str(ti.state) if ti.state else None, ti.try_number)

    def tis(self, task_id: str) -> list[TaskTry]:
        """Every map index of ``task_id``, in order."""
        from airflow.models.taskinstance import TaskInstance
        from airflow.utils.session import create_session
        from sqlalchemy import select

        with create_session() as session:
            rows = session.scalars(
                select(TaskInstance)
                .where(
                    TaskInstance.dag_id == self.dag_id,
                    TaskInstance.run_id == self.run_id,
                    TaskInstance.task_id == task_id,
                )
                .order_by(TaskInstance.map_index)
            ).all()
            return [
                TaskTry(ti.task_id, ti.map_index, str(ti.state) if ti.state else None, ti.try_number)
                for ti in rows
            ]

    def xcom(self, task_id: str, map_index: int = -1, key: str = "return_value") -> Any:
        """The XCom value (deserialised), or ``None`` when there is none."""
        from airflow.models.xcom import XComModel
        from airflow.utils.session import create_session
        from sqlalchemy import select

        with create_session() as session:
            row = session.scalars(
                select(XComModel).where(
                    XComModel.dag_id == self.dag_id,
                    XComModel.run_id == self.run_id,
                    XComModel.task_id == task_id,
                    XComModel.map_index == map_index,
                    XComModel.key == key,
                )
            ).one_or_none()
            return None if row is None else XComModel.deserialize_value(row)

    def errors(self, task_id: str, map_index: int = -1) -> list[str]:
        """The message of the error each failed try of the task raised."""
        return [str(error) for error in self.failures.get((task_id, map_index), [])]


def record_failures(dag: Any) -> dict[tuple[str, int], list[BaseException]]:
    """Add failure and retry callbacks to every task that keep the error each failed try raised."""
    failures: dict[tuple[str, int], list[BaseException]] = defaultdict(list)

    def record(context: Any) -> None:
        ti = context["ti"]
        map_index = ti.map_index if ti.map_index is not None else -1
        failures[(ti.task_id, map_index)].append(context.get("exception"))

    for task in dag.tasks:
        for callback in ("on_failure_callback", "on_retry_callback"):
            if hasattr(task, "partial_kwargs"):  # a mapped task: the callback goes to every expansion
                task.partial_kwargs[callback] = [record]
            else:
                setattr(task, callback, [record])
    return failures


# -- the reliability suite -----------------------------------------------------------------------------

SCALE_ENV = "READRECEIPTS_RELIABILITY_SCALE"
REPORT_ENV = "READRECEIPTS_RELIABILITY_REPORT"


@dataclass(frozen=True)
class Scale:
    """How hard each reliability check pushes; ``full`` is what the recorded figures use."""

    name: str
    #: Generated requests per vendor route in the property-based fuzzing.
    fuzz_requests_per_vendor: int
    #: Requests schemathesis generates per vendor route.
    schema_examples: int
    #: Events sent while a receiver is killed with SIGKILL, per store.
    crash_events: int
    #: How many times the receiver is killed and restarted, per store.
    crash_kills: int
    #: Distinct events in a storm (each delivered ``storm_repeats`` times, shuffled).
    storm_events: int
    storm_repeats: int
    #: Receiver processes a storm is spread over.
    storm_receivers: int


SCALES = {
    "ci": Scale(
        "ci",
        fuzz_requests_per_vendor=400,
        schema_examples=100,
        crash_events=1_500,
        crash_kills=1,
        storm_events=200,
        storm_repeats=10,
        storm_receivers=2,
    ),
    "full": Scale(
        "full",
        fuzz_requests_per_vendor=10_000,
        schema_examples=2_000,
        crash_events=20_000,
        crash_kills=3,
        storm_events=2_000,
        storm_repeats=10,
        storm_receivers=3,
    ),
}


def scale_name() -> str:
    """The reliability suite's scale, from ``READRECEIPTS_RELIABILITY_SCALE`` (default ``ci``)."""
    name = os.environ.get(SCALE_ENV, "ci")
    if name not in SCALES:
        raise pytest.UsageError(f"{SCALE_ENV}={name!r}: use one of {', '.join(SCALES)}")
    return name


@dataclass
class Figures:
    """What the reliability checks measured, by section and case (e.g. ``storms`` / ``sqlite``)."""

    scale: str
    sections: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, section: str, case: str, **numbers: Any) -> None:
        """
        Record (or add to) the figures of one case; numbers add up, anything else is replaced.

        :param section: e.g. ``"fuzzing"``, ``"authenticity"``, ``"crash"``, ``"storms"``.
        :param case: e.g. a vendor or a store kind.
        :param numbers: e.g. ``tried=…, refused=…, stored=…, lost=0``.
        """
        with self._lock:
            entry = self.sections.setdefault(section, {}).setdefault(case, {})
            for name, value in numbers.items():
                previous = entry.get(name)
                if isinstance(value, (int, float)) and not isinstance(value, bool) and previous is not None:
                    entry[name] = previous + value
                else:
                    entry[name] = value

    def as_json(self) -> dict[str, Any]:
        return {"scale": self.scale, "sections": self.sections}
