"""
One hook per vendor. Import the vendor module you need; nothing is imported here eagerly.

The look-up from a connection type to its hook lives in the vendor registry
(:mod:`airflow_provider_readreceipts.vendors`); these names are kept for existing imports.
"""

from __future__ import annotations

from airflow_provider_readreceipts.vendors import SPECS, hook_class_for, hook_for

#: Connection type -> hook class path (from the vendor registry).
HOOK_CLASSES: dict[str, str] = {conn_type: spec.hook_class for conn_type, spec in SPECS.items()}

__all__ = ["HOOK_CLASSES", "hook_class_for", "hook_for"]
