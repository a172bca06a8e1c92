"""
Running real DAGs in tests: a migrated Airflow metadata DB and a ``dag.test()`` helper.

``dag.test()`` needs a migrated metadata DB and the DAG file inside ``[core] dags_folder``
(conftest.py points ``AIRFLOW_HOME`` at a temporary folder before Airflow is imported). Tasks run
in-process, one at a time, with their retries, so a test can assert on task states, try numbers,
XComs and the error each failed try raised::

    def test_something(run_dag, airflow_connection):
        result = run_dag('''
            from airflow.sdk import DAG
            ...
            with DAG("my_dag", schedule=None) as dag:
                ...
        ''')
        assert result.state == "success"
        assert result.xcom("send") == {...}
        assert result.ti("send").try_number == 1
        assert "invalid number" in result.errors("mark_read")[0]

Connections come from ``AIRFLOW_CONN_*`` variables (the ``airflow_connection`` fixture). The result
is a :class:`tests.support.DagTestRun`.
"""

from __future__ import annotations

import importlib.util
import os
import textwrap
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import DagTestRun, record_failures


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """A migrated SQLite metadata DB in the temporary ``AIRFLOW_HOME``, once per session."""
    from airflow.utils import db

    db.upgradedb()
    return Path(os.environ["AIRFLOW_HOME"])


@pytest.fixture
def run_dag(airflow_db: Path) -> Iterator[Callable[..., DagTestRun]]:
    """
    Run a DAG given as source text with ``dag.test()``; returns a :class:`DagTestRun`.

    The source is written to a file in the dags folder for the run (``dag.test()`` parses it
    there) and removed afterwards. It must define exactly one DAG, or name it with ``dag_id``.
    """
    from airflow.configuration import conf

    dags_folder = Path(conf.get("core", "dags_folder"))
    dags_folder.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    def run(source: str, *, dag_id: str | None = None, **test_kwargs: Any) -> DagTestRun:
        from airflow.sdk import DAG

        name = f"test_dag_{uuid.uuid4().hex[:12]}"
        path = dags_folder / f"{name}.py"
        path.write_text(textwrap.dedent(source))
        written.append(path)
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        dags = [value for value in vars(module).values() if isinstance(value, DAG)]
        if dag_id is not None:
            dags = [dag for dag in dags if dag.dag_id == dag_id]
        assert len(dags) == 1, f"expected one DAG in the source, found {[d.dag_id for d in dags]}"
        (dag,) = dags
        failures = record_failures(dag)
        try:
            dag_run = dag.test(**test_kwargs)
        finally:
            # Parsed again by the next run's sync otherwise; one file per run keeps that fast.
            path.unlink(missing_ok=True)
        return DagTestRun(dag.dag_id, dag_run.run_id, str(dag_run.state), dict(failures))

    yield run
    for path in written:
        path.unlink(missing_ok=True)
