"""
The example DAGs as the DAG processor sees them: each parses with no import error, serialises the
way the scheduler stores it, and is built the way its documentation says. They run end to end in
``test_e2e.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.support import EXAMPLE_DAGS

EXPECTED_DAGS = {
    "readreceipts_follow_up_campaign",
    "readreceipts_inbound",
    "readreceipts_inbox_sweep",
}


@pytest.fixture(scope="module")
def dagbag() -> Iterator[Any]:
    from airflow.dag_processing.dagbag import DagBag

    yield DagBag(dag_folder=str(EXAMPLE_DAGS))


def test_every_example_parses_without_import_errors(dagbag: Any) -> None:
    assert dagbag.import_errors == {}
    assert set(dagbag.dag_ids) == EXPECTED_DAGS


@pytest.mark.parametrize("dag_id", sorted(EXPECTED_DAGS))
def test_every_example_documents_itself_and_serialises(dagbag: Any, dag_id: str) -> None:
    from airflow.serialization.serialized_objects import DagSerialization

    dag = dagbag.dags[dag_id]
    assert dag.doc_md and dag.doc_md.lstrip().startswith("### ")
    assert "readreceipts" in dag.tags
    # What the DAG processor stores and the scheduler reads back.
    restored = DagSerialization.deserialize_dag(DagSerialization.serialize_dag(dag))
    assert set(restored.task_ids) == set(dag.task_ids)


def test_campaign_maps_over_contacts_and_waits_deferred_with_a_deadline(dagbag: Any) -> None:
    from airflow_provider_readreceipts.sensors.read_receipt import ReadReceiptSensor

    dag = dagbag.dags["readreceipts_follow_up_campaign"]
    wait = dag.get_task("wait_for_read")
    assert wait.is_mapped and wait.operator_class is ReadReceiptSensor
    assert wait.partial_kwargs["deferrable"] is True
    assert "params.read_within_seconds" in wait.partial_kwargs["deadline"]
    assert {"follow_up", "call", "switch_to_whatsapp"} <= set(dag.task_ids)
    assert dag.get_task("call").operator_class.__name__ == "HttpOperator"
    assert dag.get_task("call").partial_kwargs["http_conn_id"] == "voice_default"
    # The report runs whichever next steps were skipped for lack of contacts.
    assert dag.get_task("report").trigger_rule == "none_failed"
    assert len(dag.params["contacts"]) >= 3


def test_inbound_dag_is_started_by_the_event_trigger_on_received_messages(dagbag: Any) -> None:
    from airflow_provider_readreceipts.triggers.read_receipt import ReceiptEventTrigger

    dag = dagbag.dags["readreceipts_inbound"]
    (asset,) = dag.timetable.asset_condition.objects
    (watcher,) = asset.watchers
    assert isinstance(watcher.trigger, ReceiptEventTrigger)
    assert watcher.trigger.statuses == ["RECEIVED"]
    assert {f"mark_read_{vendor}" for vendor in ("sendblue", "chert", "ryze", "direct7")} <= set(dag.task_ids)


def test_inbox_sweep_marks_the_inbox_read_in_one_bulk_task_and_starts_paused(dagbag: Any) -> None:
    from airflow_provider_readreceipts.operators.mark_read import RyzeBulkMarkReadOperator

    dag = dagbag.dags["readreceipts_inbox_sweep"]
    assert isinstance(dag.get_task("mark_inbox_read"), RyzeBulkMarkReadOperator)
    assert dag.is_paused_upon_creation is True
