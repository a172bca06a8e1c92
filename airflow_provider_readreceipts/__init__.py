"""Apache Airflow provider for messaging read receipts: Sendblue, Chert, RyzeAPI and Direct7."""

from __future__ import annotations

__version__ = "0.1.0"
