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

Connections come from ``AIRFLOW_CONN_*`` variables (the ``airflow_connection`` fixture).
"""

from __future__ import annotations

import importlib.util
import os
import textwrap
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """A migrated SQLite metadata DB in the temporary ``AIRFLOW_HOME``, once per session."""
    from airflow.utils import db

    db.upgradedb()
    return Path(os.environ["AIRFLOW_HOME"])


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


def _record_failures(dag: Any) -> dict[tuple[str, int], list[BaseException]]:
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
        failures = _record_failures(dag)
        try:
            dag_run = dag.test(**test_kwargs)
        finally:
            # Parsed again by the next run's sync otherwise; one file per run keeps that fast.
            path.unlink(missing_ok=True)
        return DagTestRun(dag.dag_id, dag_run.run_id, str(dag_run.state), dict(failures))

    yield run
    for path in written:
        path.unlink(missing_ok=True)
