from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

# Airflow reads AIRFLOW_HOME when first imported: point it at a throwaway folder before that.
os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="readreceipts-airflow-"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")

import pytest

from tests.fakes.sendblue import SendblueFake
from tests.fakes.server import VendorFakeServer

#: Every vendor fake the suite knows; later fakes register here.
FAKES: list[type] = [SendblueFake]


@pytest.fixture(scope="session")
def vendor_server() -> Iterator[VendorFakeServer]:
    """One loopback server hosting every vendor fake, for the whole session."""
    with VendorFakeServer(*(fake() for fake in FAKES)) as server:
        yield server


@pytest.fixture
def vendors(vendor_server: VendorFakeServer) -> Iterator[VendorFakeServer]:
    """The vendor fakes with a clean state, request log and fault queue for this test."""
    vendor_server.reset()
    yield vendor_server
    vendor_server.reset()


@pytest.fixture
def airflow_connection(monkeypatch: pytest.MonkeyPatch) -> Callable[..., str]:
    """Define an Airflow connection for this test through its ``AIRFLOW_CONN_<ID>`` variable."""

    def define(conn_id: str, conn_type: str, **fields: Any) -> str:
        extra = fields.pop("extra", None)
        document: dict[str, Any] = {"conn_type": conn_type, **fields}
        if extra is not None:
            document["extra"] = extra
        monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(document))
        return conn_id

    return define
