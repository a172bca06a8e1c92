from __future__ import annotations

import importlib
import inspect
import json
import os
import pkgutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

# Airflow reads AIRFLOW_HOME when first imported: point it at a throwaway folder before that.
os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="readreceipts-airflow-"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")

import pytest

from airflow_provider_readreceipts.testing import fakes
from airflow_provider_readreceipts.testing.fakes.server import VendorFake, VendorFakeServer

# Fixture modules (tests/fixtures_*.py) are loaded as plugins, so each part of the suite keeps its
# fixtures in its own file.
pytest_plugins = sorted(f"tests.{path.stem}" for path in Path(__file__).parent.glob("fixtures_*.py"))


def vendor_fakes() -> list[type[VendorFake]]:
    """Every vendor fake in :mod:`airflow_provider_readreceipts.testing.fakes`, one class per module."""
    found = []
    for module_info in pkgutil.iter_modules(fakes.__path__):
        module = importlib.import_module(f"{fakes.__name__}.{module_info.name}")
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, VendorFake) and cls.__module__ == module.__name__ and cls.prefix:
                found.append(cls)
    return found


@pytest.fixture(scope="session")
def vendor_server() -> Iterator[VendorFakeServer]:
    """One loopback server hosting every vendor fake, for the whole session."""
    with VendorFakeServer(*(fake() for fake in vendor_fakes())) as server:
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
