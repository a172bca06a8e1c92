"""
End-to-end fixtures: the vendor sandbox and the standalone webhook receiver as real processes, the
example DAGs run with ``dag.test()``, and a real Airflow (API server, scheduler, triggerer, DAG
processor) on a fresh PostgreSQL metadata database.

* ``e2e_stack``: sandbox + receiver + receipt store, parametrised over a SQLite store and a
  PostgreSQL store (module scope: started once per store; :meth:`Stack.reset` between tests). The
  ``AIRFLOW_CONN_*`` variables that point the example DAGs at them are set while it lives.
* ``airflow_cluster``: a whole Airflow on PostgreSQL with its own sandbox and receiver (module
  scope). Needs PostgreSQL: skipped when it is absent, failed under ``READRECEIPTS_REQUIRE_POSTGRES=1``.

Every process is stopped in the fixtures' finalizers, whatever the tests did. The process and stack
classes they build on are in :mod:`tests.support`.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator

import pytest

from tests.support import (
    AIRFLOW_COMPONENTS,
    EXAMPLE_DAGS,
    REPO,
    STARTUP_TIMEOUT,
    ChildProcess,
    Cluster,
    Stack,
    StandaloneReceiver,
    free_port,
    postgres_admin_connection,
    postgres_server_url,
    stack_environment,
    start_sandbox,
)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "slow: runs a real Airflow (scheduler, triggerer, DAG processor, API server); part of CI"
    )


@pytest.fixture(scope="module")
def fresh_postgres_database() -> Iterator[Callable[[str], str]]:
    """Create uniquely named PostgreSQL databases (psycopg URL); all are dropped at the end."""
    postgres_admin_connection().close()  # skipped, or failed on CI, when PostgreSQL is absent
    created: list[str] = []

    def create(purpose: str) -> str:
        name = f"rr_e2e_{purpose}_{os.getpid()}_{uuid.uuid4().hex[:8]}"
        with postgres_admin_connection() as admin:
            admin.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
        created.append(name)
        return postgres_server_url(database=name)

    yield create
    with postgres_admin_connection() as admin:
        for name in created:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


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
    receiver = StandaloneReceiver(
        store_url=store_url, environment={}, log_path=folder / "receiver.log", arguments=["--no-access-log"]
    )
    sandbox, sandbox_url = start_sandbox(
        receiver_url=receiver.url("/webhooks"), log_path=folder / "sandbox.log", env=os.environ
    )
    try:
        env = stack_environment(kind, store_url, sandbox_url, receiver.url())
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
    api_port = free_port()
    receiver = StandaloneReceiver(
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
        stack_env = stack_environment("postgres", store_url, sandbox_url, receiver.url())
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
