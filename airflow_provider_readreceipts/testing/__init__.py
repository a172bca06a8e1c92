"""
Test doubles shipped with the package, for this project's tests and anyone testing DAGs built on it.

- :mod:`.fakes`: each vendor's API (Sendblue, Chert, RyzeAPI, Direct7) as a real HTTP server on
  loopback, with scripted faults. Standard library only: they import nothing else, not even Airflow.
- :mod:`.sandbox`: the fakes grown into a local vendor sandbox that gives each message a fate and
  delivers each vendor's webhooks to the receiver
  (``python -m airflow_provider_readreceipts.testing.sandbox``).

Importing this package imports nothing.
"""

from __future__ import annotations
