"""
What the shipped testing package promises: fakes on the standard library alone, a sandbox package
that is cheap to import, and the sandbox's old import paths naming the same objects as the new ones.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

#: Run in a fresh interpreter: which modules importing ``{module}`` loaded, beyond the standard library.
_IMPORTED_BEYOND_STDLIB = """
import json, sys
before = set(sys.modules)
import {module}
new = set(sys.modules) - before
print(json.dumps(sorted(m for m in new if m.split(".")[0] not in sys.stdlib_module_names)))
"""


def _imported_beyond_stdlib(module: str) -> list[str]:
    code = _IMPORTED_BEYOND_STDLIB.format(module=module)
    # Our own interpreter importing our own module: no untrusted input.
    done = subprocess.run(  # noqa: S603
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True
    )
    return list(json.loads(done.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize("vendor", ["server", "sendblue", "chert", "ryze", "direct7"])
def test_a_vendor_fake_imports_only_the_standard_library_and_the_other_fakes(vendor: str) -> None:
    imported = _imported_beyond_stdlib(f"airflow_provider_readreceipts.testing.fakes.{vendor}")

    # The packages that hold the fakes, and the fakes themselves: nothing else.
    fakes = "airflow_provider_readreceipts.testing.fakes"
    holders = {"airflow_provider_readreceipts", "airflow_provider_readreceipts.testing", fakes}
    assert [m for m in imported if m not in holders and not m.startswith(f"{fakes}.")] == []


@pytest.mark.parametrize(
    "module", ["airflow_provider_readreceipts.testing.sandbox", "airflow_provider_readreceipts.sandbox"]
)
def test_the_sandbox_package_imports_nothing_heavy(module: str) -> None:
    imported = _imported_beyond_stdlib(module)

    assert [m for m in imported if not m.startswith("airflow_provider_readreceipts")] == []


def test_the_old_sandbox_paths_name_the_new_objects() -> None:
    from airflow_provider_readreceipts import sandbox as old
    from airflow_provider_readreceipts.sandbox import fates as old_fates
    from airflow_provider_readreceipts.testing import sandbox as new
    from airflow_provider_readreceipts.testing.sandbox import fates as new_fates

    for name in old.__all__:
        assert getattr(old, name) is getattr(new, name), name
    assert (old_fates.Fate, old_fates.Timing, old_fates.fate_for) == (
        new_fates.Fate,
        new_fates.Timing,
        new_fates.fate_for,
    )
    assert old.connections(sandbox_url="http://127.0.0.1:1", receiver_url="http://127.0.0.1:2") == (
        new.connections(sandbox_url="http://127.0.0.1:1", receiver_url="http://127.0.0.1:2")
    )
