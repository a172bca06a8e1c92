"""One hook per vendor. Import the vendor module you need; nothing is imported here eagerly."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow_provider_readreceipts.hooks.base import ReadReceiptsHook

#: Connection type -> hook class path. The receiver and the sensor pick the vendor from this.
HOOK_CLASSES: dict[str, str] = {
    "sendblue": "airflow_provider_readreceipts.hooks.sendblue.SendblueHook",
    "chert": "airflow_provider_readreceipts.hooks.chert.ChertHook",
    "ryze": "airflow_provider_readreceipts.hooks.ryze.RyzeHook",
    "direct7": "airflow_provider_readreceipts.hooks.direct7.Direct7Hook",
}


def hook_class_for(conn_type: str | None) -> type[ReadReceiptsHook]:
    """The hook class of a connection type; ``KeyError`` naming the type for anything else."""
    path = HOOK_CLASSES.get(conn_type or "")
    if path is None:
        raise KeyError(
            f"connection type {conn_type!r} is not a read-receipts vendor; "
            f"expected one of {sorted(HOOK_CLASSES)}"
        )
    module_name, _, class_name = path.rpartition(".")
    return getattr(importlib.import_module(module_name), class_name)


def hook_for(conn_id: str, conn_type: str, **kwargs: Any) -> ReadReceiptsHook:
    """A hook instance for ``conn_id`` of a known ``conn_type``."""
    cls = hook_class_for(conn_type)
    arguments: dict[str, Any] = {cls.conn_name_attr: conn_id, **kwargs}
    return cls(**arguments)
