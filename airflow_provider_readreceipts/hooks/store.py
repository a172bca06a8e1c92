"""
Kept for existing imports: the receipt store now lives in :mod:`airflow_provider_readreceipts.store`.

It never was a hook; import from ``airflow_provider_readreceipts.store`` in new code.
"""

from __future__ import annotations

from airflow_provider_readreceipts.store import *  # noqa: F403
from airflow_provider_readreceipts.store import __all__  # noqa: F401
