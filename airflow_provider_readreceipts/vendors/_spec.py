"""
The shape of a vendor's facts: :class:`VendorSpec`, its connection form and its rate limit.

Pure data, standard library only: the provider info, the scheduler's DAG parsing (operators,
sensors) and the receiver all read specs, and none of them may pay for an import to do so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

#: How a vendor tells us a message was read: by webhook, or only through its status API.
ReadsVia = Literal["webhook", "polling"]


@dataclass(frozen=True)
class FormField:
    """
    One extra field of a connection form (Airflow 3.2+ declarative ``conn-fields``).

    The 3.3 UI shows ``example`` as the field's hint; secrets are masked, so they get a description
    and no example value.

    :param label: what the form calls it.
    :param description: what goes there, shown under the field.
    :param example: a hint value (never for a secret).
    :param default: the value used when the field is left empty.
    :param secret: masked in the form and registered with the log masker.
    """

    label: str
    description: str
    example: str | None = None
    default: str | None = None
    secret: bool = False

    def to_conn_field(self) -> dict[str, Any]:
        """The ``conn-fields`` entry of this field."""
        schema: dict[str, Any] = {"type": ["string", "null"]}
        if self.secret:
            schema["format"] = "password"
        if self.example is not None:
            schema["examples"] = [self.example]
        if self.default is not None:
            schema["default"] = self.default
        return {"label": self.label, "description": self.description, "schema": schema}


@dataclass(frozen=True)
class ConnectionForm:
    """
    The Add Connection form of a vendor's connection type.

    :param relabeling: labels of the standard fields (``host``, ``login``, ``password``).
    :param placeholders: placeholders of the standard fields.
    :param hidden: standard fields hidden besides ``schema`` and ``port``.
    :param fields: the extra fields, by extra name.
    """

    relabeling: dict[str, str]
    placeholders: dict[str, str]
    fields: dict[str, FormField]
    hidden: tuple[str, ...] = ()


@dataclass(frozen=True)
class RateLimit:
    """
    How many requests one vendor token may make, shared by every call of this package in a process.

    :param requests: requests allowed per window.
    :param period: the window, in seconds.
    :param documented: whether the vendor publishes this limit; ``False`` means a safe default of
        ours where the vendor publishes none (raise it to your plan's limit with ``rate_limit``).
    :param source: where the figure comes from.
    """

    requests: int
    period: float
    documented: bool
    source: str

    @property
    def per_minute(self) -> float:
        return self.requests * 60.0 / self.period


@dataclass(frozen=True)
class VendorSpec:
    """
    Everything this package knows about a vendor that is not code: written once, read everywhere.

    :param conn_type: the Airflow connection type, which is also the vendor's key in this package.
    :param name: the vendor as people write it, used in every message (``"Sendblue"``).
    :param integration: the provider info's integration name.
    :param hook_name: the connection type's name in the Airflow UI.
    :param channel: what the vendor carries (``"iMessage"``, ``"WhatsApp"``).
    :param default_conn_id: the connection used when a task names none.
    :param conn_id_param: the keyword that names the connection in this vendor's hook and operators
        (``sendblue_conn_id``), as providers do.
    :param hook_class: dotted path of the vendor's hook.
    :param default_base_url: the vendor's public API root, used when the connection's host is empty.
    :param secret_extras: connection extras that hold secrets.
    :param form: the connection form.
    :param reads_via: ``"webhook"`` when a READ comes by webhook (reconcile only covers lost ones);
        ``"polling"`` when it is only visible through the vendor's status API.
    :param rate_limit: the request budget of one token, shared in a process by bulk operators,
        sends and reconcile.
    :param reconcile_rate_per_minute: status look-ups a minute the waits of one triggerer may make
        on one connection by default (within ``rate_limit``, leaving room for sends and mark-reads).
    """

    conn_type: str
    name: str
    integration: str
    hook_name: str
    channel: str
    default_conn_id: str
    conn_id_param: str
    hook_class: str
    default_base_url: str
    form: ConnectionForm
    reads_via: ReadsVia
    rate_limit: RateLimit
    reconcile_rate_per_minute: float
    secret_extras: tuple[str, ...] = ()

    @property
    def reads_by_polling_only(self) -> bool:
        """Whether a READ is visible only through the status API (no read webhook)."""
        return self.reads_via == "polling"

    @property
    def hook_module(self) -> str:
        return self.hook_class.rpartition(".")[0]

    def connection_type(self) -> dict[str, Any]:
        """This vendor's ``connection-types`` entry of the provider info."""
        placeholders = dict(self.form.placeholders)
        # Older UIs read extra-field placeholders from ui-field-behaviour; the 3.3 UI reads examples.
        for name, form_field in self.form.fields.items():
            if form_field.example is not None:
                placeholders.setdefault(name, form_field.example)
        return {
            "connection-type": self.conn_type,
            "hook-class-name": self.hook_class,
            "hook-name": self.hook_name,
            "ui-field-behaviour": {
                "hidden-fields": ["schema", "port", *self.form.hidden],
                "relabeling": dict(self.form.relabeling),
                "placeholders": placeholders,
            },
            "conn-fields": {name: f.to_conn_field() for name, f in self.form.fields.items()},
        }


def receiver_url_field(conn_id: str) -> FormField:
    """The form field of a connection's public webhook URL, for vendors that take a callback per send."""
    return FormField(
        "Receiver URL",
        "Public URL of this connection's webhook receiver: <Airflow API server>/readreceipts/webhooks/"
        "<conn_id>, or the standalone receiver's. Send operators give it to the vendor as the status "
        "callback.",
        example=f"https://airflow.example.com/readreceipts/webhooks/{conn_id}",
    )
