"""
The vendor registry: one :class:`~._spec.VendorSpec` per vendor, each in its own module.

Everything that needs a vendor's facts (provider info and connection forms, the hook look-up, the
operators, the waits, the receiver, the sandbox) reads them here. Adding a vendor means adding its
spec module here, its hook module under :mod:`airflow_provider_readreceipts.hooks`, its fake under
:mod:`airflow_provider_readreceipts.testing.fakes`, its tests and a README section (the README's
"Adding a vendor" recipe).

Standard library only: imported at every DAG parse.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from airflow_provider_readreceipts.vendors import chert, direct7, ryze, sendblue
from airflow_provider_readreceipts.vendors._spec import (
    ConnectionForm,
    FormField,
    RateLimit,
    ReadsVia,
    VendorSpec,
)

if TYPE_CHECKING:
    from airflow_provider_readreceipts.hooks.base import ReadReceiptsHook

__all__ = [
    "SPECS",
    "ConnectionForm",
    "FormField",
    "RateLimit",
    "ReadsVia",
    "UnknownVendorError",
    "VendorSpec",
    "conn_types",
    "hook_class_for",
    "hook_for",
    "spec_for",
]

#: Every vendor, by connection type, in the order documentation lists them.
SPECS: dict[str, VendorSpec] = {
    spec.conn_type: spec for spec in (sendblue.SPEC, chert.SPEC, ryze.SPEC, direct7.SPEC)
}


class UnknownVendorError(KeyError):
    """A connection type that is not one of this package's vendors."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else super().__str__()


def conn_types() -> tuple[str, ...]:
    """The connection types of every vendor."""
    return tuple(SPECS)


def spec_for(conn_type: str | None) -> VendorSpec:
    """
    The spec of a vendor by its connection type.

    :raises UnknownVendorError: (a ``KeyError``) naming the type and the known ones.
    """
    spec = SPECS.get(conn_type or "")
    if spec is None:
        raise UnknownVendorError(
            f"connection type {conn_type!r} is not a read-receipts vendor; expected one of {sorted(SPECS)}"
        )
    return spec


def hook_class_for(conn_type: str | None) -> type[ReadReceiptsHook]:
    """The hook class of a vendor's connection type (imported now); see :func:`spec_for` for errors."""
    module_name, _, class_name = spec_for(conn_type).hook_class.rpartition(".")
    return getattr(importlib.import_module(module_name), class_name)


def hook_for(conn_id: str, conn_type: str, **kwargs: Any) -> ReadReceiptsHook:
    """
    A hook instance for ``conn_id`` of a known ``conn_type``.

    :param kwargs: hook settings (timeout, max_attempts, ...), see
        :class:`~airflow_provider_readreceipts.hooks.base.ReadReceiptsHook`.
    """
    spec = spec_for(conn_type)
    return hook_class_for(conn_type)(**{spec.conn_id_param: conn_id, **kwargs})
