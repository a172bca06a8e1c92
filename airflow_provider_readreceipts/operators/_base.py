"""
What every vendor operator shares: its connection, named the vendor's way, and one lazy hook.

As providers-http's ``HttpOperator`` does with ``http_conn_id``, each operator keeps its connection
in an argument named after its vendor (``sendblue_conn_id``, ``chert_conn_id``, ...): the vendor
registry says which, and which hook class serves it. Nothing heavy is imported here: the hook (and
``HttpHook``, ``aiohttp`` behind it) is built when a task first uses it.
"""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar, cast

from airflow.sdk import BaseOperator

from airflow_provider_readreceipts.vendors import VendorSpec, spec_for

if TYPE_CHECKING:
    from airflow_provider_readreceipts.hooks.base import ReadReceiptsHook

#: The vendor's hook class, for typing (``VendorOperator["SendblueHook"]``).
HookT = TypeVar("HookT", bound="ReadReceiptsHook")


class VendorOperator(BaseOperator, Generic[HookT]):
    """
    Base of the vendor operators: ``conn_id``, ``spec`` and a ``hook`` built on first use.

    A subclass sets :attr:`vendor` (a connection type of the vendor registry), stores its
    connection in the attribute the registry names (``spec.conn_id_param``), and names its hook
    class as the type parameter so that ``self.hook`` is typed::

        class SendblueMarkReadOperator(VendorOperator["SendblueHook"]):
            vendor = "sendblue"
    """

    #: The vendor's connection type in the vendor registry.
    vendor: ClassVar[str]

    @property
    def spec(self) -> VendorSpec:
        """The vendor's facts."""
        return spec_for(self.vendor)

    @property
    def vendor_name(self) -> str:
        """The vendor as people write it, for messages."""
        return self.spec.name

    @property
    def conn_id(self) -> str:
        """The Airflow connection of the vendor account (the vendor-named argument's value)."""
        return str(getattr(self, self.spec.conn_id_param))

    def hook_kwargs(self) -> dict[str, Any]:
        """Settings for the hook beyond its connection; subclasses add theirs."""
        return {}

    @cached_property
    def hook(self) -> HookT:
        """The vendor's hook, built on first use (never at DAG parse time)."""
        from airflow_provider_readreceipts.vendors import hook_for

        return cast("HookT", hook_for(self.conn_id, self.vendor, **self.hook_kwargs()))
