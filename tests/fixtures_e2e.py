"""
End-to-end fixtures: the vendor sandbox and the standalone webhook receiver as real processes, the
example DAGs run with ``dag.test()``, and a real Airflow (API server, scheduler, triggerer, DAG
processor) on a fresh PostgreSQL metadata database.

* ``e2e_stack``: sandbox + receiver + receipt store, parametrised over a SQLite store and a
  PostgreSQL store (module scope: started once per store; :meth:`Stack.reset` between tests). The
  ``AIRFLOW_CONN_*`` variables that point the example DAGs at them are set while it lives.
* ``airflow_cluster``: a whole Airflow on PostgreSQL with its own sandbox and receiver (module
  scope). Needs PostgreSQL: skipped when it is absent, failed under ``READRECEIPTS_REQUIRE_POSTGRES=1``.

Every process is stopped in the fixtures' finalizers, whatever the tests did.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from airflow_provider_readreceipts.testing.sandbox import connection_environment

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_DAGS = REPO / "example_dags"
#: Airflow's first import is slow on a busy machine: how long a process may take to answer.
STARTUP_TIMEOUT = 240.0
#: The Airflow processes of the real-Airflow tier, in the order they are stopped.
AIRFLOW_COMPONENTS = ("scheduler", "triggerer", "dag-processor", "api-server")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "slow: runs a real Airflow (scheduler, triggerer, DAG processor, API server); part of CI"
    )


def example_source(name: str) -> str:
    """The text of ``example_dags/<name>.py``, for the ``run_dag`` fixture."""
    return (EXAMPLE_DAGS / f"{name}.py").read_text()


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
            os.killpg(self.process.pid, 9)
            self.process.wait(10)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def _receiver_fixtures() -> Any:
    # Imported when first used, not when pytest loads this plugin: pytest must load (and rewrite
    # the asserts of) the other fixture modules itself.
    from tests import fixtures_receiver

    return fixtures_receiver


def start_sandbox(
    *, receiver_url: str, log_path: Path, env: Mapping[str, str], arguments: Sequence[str] = ()
) -> tuple[ChildProcess, str]:
    """The vendor sandbox as a child process, ready; returns it and its URL."""
    port = _receiver_fixtures().free_port()
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


def _admin_connection() -> Any:
    import psycopg
    from sqlalchemy.engine import make_url

    from tests.fixtures_store import POSTGRES_ADMIN_URL

    url = make_url(POSTGRES_ADMIN_URL).set(drivername="postgresql")
    return psycopg.connect(url.render_as_string(hide_password=False), autocommit=True, connect_timeout=5)


def _require_postgres() -> None:
    from tests.fixtures_store import POSTGRES_ADMIN_URL, REQUIRE_POSTGRES

    try:
        _admin_connection().close()
    except Exception as error:
        reason = f"PostgreSQL at {POSTGRES_ADMIN_URL.split('@')[-1]} is unreachable ({type(error).__name__})"
        if REQUIRE_POSTGRES:
            pytest.fail(f"{reason}, and READRECEIPTS_REQUIRE_POSTGRES=1", pytrace=False)
        pytest.skip(f"{reason}; set READRECEIPTS_REQUIRE_POSTGRES=1 to fail instead of skipping")


@pytest.fixture(scope="module")
def fresh_postgres_database() -> Iterator[Callable[[str], str]]:
    """Create uniquely named PostgreSQL databases (psycopg URL); all are dropped at the end."""
    _require_postgres()
    from sqlalchemy.engine import make_url

    from tests.fixtures_store import POSTGRES_ADMIN_URL

    created: list[str] = []

    def create(purpose: str) -> str:
        name = f"rr_e2e_{purpose}_{os.getpid()}_{uuid.uuid4().hex[:8]}"
        with _admin_connection() as admin:
            admin.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
        created.append(name)
        return make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(hide_password=False)

    yield create
    with _admin_connection() as admin:
        for name in created:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def store_connection_document(store_url: str) -> str:
    """The ``readreceipts_store_default`` connection (postgres type) for a PostgreSQL store URL."""
    from sqlalchemy.engine import make_url

    url = make_url(store_url)
    return json.dumps(
        {
            "conn_type": "postgres",
            "host": url.host,
            "port": url.port,
            "login": url.username,
            "password": url.password,
            "schema": url.database,
        }
    )


def _stack_environment(kind: str, store_url: str, sandbox_url: str, receiver_url: str) -> dict[str, str]:
    env = connection_environment(sandbox_url=sandbox_url, receiver_url=f"{receiver_url}/webhooks")
    if kind == "postgres":
        env["AIRFLOW_CONN_READRECEIPTS_STORE_DEFAULT"] = store_connection_document(store_url)
    else:
        env["READRECEIPTS_STORE_PATH"] = store_url.removeprefix("sqlite:///")
    return env


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def e2e_stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The sandbox and the standalone receiver on a SQLite store, then on a PostgreSQL store."""
    kind = request.param
    folder = tmp_path_factory.mktemp(f"e2e-{kind}")
    if kind == "postgres":
        store_url = request.getfixturevalue("fresh_postgres_database")("store")
    else:
        store_url = f"sqlite:///{folder / 'receipts.db'}"
    # The receiver's port is chosen first: the sandbox needs its URL, the receiver the connections.
    receiver = _receiver_fixtures().StandaloneReceiver(
        store_url=store_url, environment={}, log_path=folder / "receiver.log", arguments=["--no-access-log"]
    )
    sandbox, sandbox_url = start_sandbox(
        receiver_url=receiver.url("/webhooks"), log_path=folder / "sandbox.log", env=os.environ
    )
    try:
        env = _stack_environment(kind, store_url, sandbox_url, receiver.url())
        receiver.environment = {**os.environ, **env}
        receiver.start()
        sandbox.wait_http(f"{sandbox_url}/_sandbox/healthz")
        receiver.wait_ready(STARTUP_TIMEOUT)
        stack = Stack(kind, store_url, sandbox_url, receiver.url(), env)
        with pytest.MonkeyPatch.context() as patch:
            for name, value in env.items():
                patch.setenv(name, value)
            yield stack
        stack.client.close()
    finally:
        receiver.stop()
        sandbox.stop()


# -- a whole Airflow -----------------------------------------------------------------------------------


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
        import psycopg
        from sqlalchemy.engine import make_url

        url = make_url(self.metadata_url).set(drivername="postgresql").render_as_string(hide_password=False)
        with psycopg.connect(url, autocommit=True) as conn:
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


@pytest.fixture(scope="module")
def airflow_cluster(
    request: pytest.FixtureRequest,
    fresh_postgres_database: Callable[[str], str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Cluster]:
    """
    Airflow's API server, scheduler (LocalExecutor), triggerer and DAG processor on a fresh PostgreSQL
    metadata database, parsing ``example_dags/``, with a sandbox, a receiver and a PostgreSQL store.

    The API server is needed: LocalExecutor's workers run tasks through its execution API. Log
    serving is off (``--skip-serve-logs``), so no fixed port is taken on a shared machine. A test
    module may set ``CLUSTER_FATE_DELAY`` (seconds from a send to its read or failure; default 20).
    """
    home = tmp_path_factory.mktemp("airflow-cluster")
    metadata_url = fresh_postgres_database("meta")
    store_url = fresh_postgres_database("store")
    api_port = _receiver_fixtures().free_port()
    receiver = _receiver_fixtures().StandaloneReceiver(
        store_url=store_url, environment={}, log_path=home / "receiver.log", arguments=["--no-access-log"]
    )
    # Nothing of the test session's own Airflow configuration (its AIRFLOW_HOME, its SQLite DB).
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "READRECEIPTS"))}
    # Slow fates (reads and failures 20 s after the send), so that every wait is deferred before
    # its message is read or fails, however slowly the tasks start.
    fate_delay = str(getattr(request.module, "CLUSTER_FATE_DELAY", 20))
    sandbox, sandbox_url = start_sandbox(
        receiver_url=receiver.url("/webhooks"),
        log_path=home / "sandbox.log",
        env=base_env,
        arguments=["--deliver-delay", "2", "--read-delay", fate_delay, "--fail-delay", fate_delay],
    )
    processes: dict[str, ChildProcess] = {"sandbox": sandbox}
    try:
        stack_env = _stack_environment("postgres", store_url, sandbox_url, receiver.url())
        env = {
            **base_env,
            **stack_env,
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(EXAMPLE_DAGS),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": metadata_url,
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": "4",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{api_port}/execution/",
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
            "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(32),
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
        }
        receiver.environment = env
        receiver.start()
        migrate = subprocess.run(
            [sys.executable, "-m", "airflow", "db", "migrate"],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            cwd=REPO,
            check=False,
        )
        if migrate.returncode != 0:
            pytest.fail(f"airflow db migrate failed:\n{migrate.stdout[-3000:]}\n{migrate.stderr[-3000:]}")
        # The receiver created the receipt store's schema meanwhile; the triggers need it.
        receiver.wait_ready(STARTUP_TIMEOUT)
        arguments_of = {
            "scheduler": ["scheduler", "--skip-serve-logs"],
            "triggerer": ["triggerer", "--skip-serve-logs"],
            "dag-processor": ["dag-processor"],
            "api-server": ["api-server", "--host", "127.0.0.1", "--port", str(api_port), "--workers", "1"],
        }
        for name in AIRFLOW_COMPONENTS:
            processes[name] = ChildProcess(
                f"airflow {name}",
                [sys.executable, "-m", "airflow", *arguments_of[name]],
                env=env,
                log_path=home / f"{name}.log",
            ).start()
        sandbox.wait_http(f"{sandbox_url}/_sandbox/healthz")
        processes["api-server"].wait_http(f"http://127.0.0.1:{api_port}/api/v2/monitor/health")
        stack = Stack("postgres", store_url, sandbox_url, receiver.url(), stack_env)
        yield Cluster(stack, metadata_url, f"http://127.0.0.1:{api_port}", env, processes, home)
        stack.client.close()
    finally:
        # All at once (each takes seconds to shut down), the scheduler first so that it starts no
        # task while the others go away.
        components = [processes[name] for name in AIRFLOW_COMPONENTS if name in processes]
        for component in components:
            component.terminate()
        for component in components:
            component.stop()
        receiver.stop()
        sandbox.stop()
