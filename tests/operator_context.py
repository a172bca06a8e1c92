"""
The ``context`` an operator's ``execute()`` gets from Airflow, for tests that call it directly:
a task instance and Airflow 3.3's task state store (kept across tries), in memory.
"""

from __future__ import annotations

import json
from typing import Any


class MemoryStateStore:
    """``context["task_state_store"]`` as Airflow 3.3 gives it, kept in memory."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}

    def get(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)

    def set(self, key: str, value: Any, **kwargs: Any) -> None:
        self.values[key] = json.loads(json.dumps(value))  # stored as JSON, as Airflow does

    def delete(self, key: str) -> None:
        self.values.pop(key, None)


class StubTaskInstance:
    def __init__(self, *, try_number: int = 1, map_index: int = -1) -> None:
        self.dag_id, self.run_id, self.task_id = "dag", "manual__1", "task"
        self.map_index = map_index
        self.try_number = try_number
        self.xcoms: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        self.xcoms[key] = value


def make_context(store: MemoryStateStore | None = None, **ti: Any) -> dict[str, Any]:
    return {"ti": StubTaskInstance(**ti), "task_state_store": store or MemoryStateStore()}
