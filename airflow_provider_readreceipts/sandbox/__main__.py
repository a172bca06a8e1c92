"""
``python -m airflow_provider_readreceipts.sandbox``: the sandbox's former command, still working.

The same as ``python -m airflow_provider_readreceipts.testing.sandbox`` (see that module).
"""

from __future__ import annotations

import sys

from airflow_provider_readreceipts.testing.sandbox.__main__ import main

if __name__ == "__main__":
    sys.exit(main(prog="python -m airflow_provider_readreceipts.sandbox"))
