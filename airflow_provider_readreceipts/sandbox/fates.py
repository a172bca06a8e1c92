"""The sandbox's fates at their former path (:mod:`airflow_provider_readreceipts.testing.sandbox.fates`)."""

from __future__ import annotations

from airflow_provider_readreceipts.testing.sandbox.fates import Fate, Timing, fate_for, last_digit

__all__ = ["Fate", "Timing", "fate_for", "last_digit"]
