"""
What a read wait waits on, once its templates are rendered: the message, its deadline and policy,
who it went to, and the store. Used by the read sensor when its task starts; the helpers that read
a rendered template back (``_literal``, ``message_ref``) are light enough for DAG parse time.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from airflow_provider_readreceipts.receipts import InvalidInputError
from airflow_provider_readreceipts.waits import WaitPolicy, as_utc, reads_by_polling_only


@dataclass(frozen=True)
class MessageTarget:
    """The message, deadline and policy once templates are rendered and references resolved."""

    conn_id: str
    message_id: str
    vendor: str
    chat: str
    sent_at: str | None
    deadline: datetime
    policy: WaitPolicy
    store_conn_id: str | None
    store_path: str | None
    #: Who it went to, by identity, and the conversation replies are matched by.
    recipient: str = ""
    chat_key: str = ""

    @property
    def reply_from(self) -> list[str]:
        """The participants whose reply counts: the policy's names, or anyone (empty)."""
        return list(self.policy.names) if self.policy.kind in ("named", "all") else []


def resolve_target(sensor: Any) -> MessageTarget:
    """
    The sensor's target from its rendered arguments and message reference.

    :raises InvalidInputError: naming the argument that is unusable.
    """
    ref = message_ref(sensor.message)
    conn_id = _pick("conn_id", sensor.conn_id, ref)
    message_id = _pick("message_id", sensor.message_id, ref)
    if not conn_id or not message_id:
        raise InvalidInputError("message", "the message reference has no conn_id or message_id")
    vendor = _pick("vendor", sensor.vendor, ref) or _vendor_of(conn_id)
    chat = _pick("chat", sensor.chat, ref) or ""
    sent_at_value = _pick("sent_at", sensor.sent_at, ref)
    sent_at = as_utc(sent_at_value, field="sent_at").isoformat() if sent_at_value else None
    if sensor.deadline is not None and str(sensor.deadline).strip():
        deadline = as_utc(sensor.deadline, field="deadline")
    else:
        if sent_at is None:
            raise InvalidInputError(
                "read_within",
                "counts from the message's sent_at, which is unknown: pass sent_at= or deadline=",
            )
        assert sensor.read_within is not None
        deadline = as_utc(sent_at, field="sent_at") + timedelta(seconds=sensor.read_within)
    if reads_by_polling_only(vendor) and not sensor.reconcile_interval:
        raise InvalidInputError("reconcile_interval", reconcile_required(vendor))
    policy = WaitPolicy.parse(literal(sensor.wait_for), literal(sensor.participants))
    store_conn_id, store_path = resolve_store_location(sensor.store_conn_id, sensor.store_path)
    from airflow_provider_readreceipts.identity import normalize_identity

    # Replies are matched by the conversation: Chert's chat id, else the other party's identity.
    chat_key = normalize_identity(str(chat)) if chat else ""
    recipient = str(ref.get("recipient") or "") or chat_key
    return MessageTarget(
        conn_id=str(conn_id),
        message_id=str(message_id),
        vendor=str(vendor),
        chat=str(chat),
        sent_at=sent_at,
        deadline=deadline,
        policy=policy,
        store_conn_id=store_conn_id,
        store_path=store_path,
        recipient=recipient,
        chat_key=chat_key,
    )


def _vendor_of(conn_id: str) -> str:
    from airflow.sdk import BaseHook

    conn_type = BaseHook.get_connection(conn_id).conn_type
    if not conn_type:
        raise InvalidInputError("vendor", f"connection {conn_id!r} has no type; pass vendor=")
    return str(conn_type)


def resolve_store_location(
    store_conn_id: str | None, store_path: str | None
) -> tuple[str | None, str | None]:
    """
    Which store to wait on, decided in the worker: the triggerer may see a different
    ``AIRFLOW_HOME`` or environment, and must wait on the store the task means. Returns
    ``(store_conn_id, store_path)`` for the trigger.
    """
    from sqlalchemy.engine import make_url

    from airflow_provider_readreceipts.receipts import ReadReceiptsError
    from airflow_provider_readreceipts.store import DEFAULT_STORE_CONN_ID, store_url_from_airflow

    try:
        url = make_url(store_url_from_airflow(conn_id=store_conn_id, path=store_path))
    except ReadReceiptsError as exc:
        raise InvalidInputError("store_conn_id", str(exc)) from None
    if url.get_backend_name() == "sqlite" and store_conn_id is None:
        return None, str(url.database)
    return store_conn_id or DEFAULT_STORE_CONN_ID, None


def templated(value: Any) -> bool:
    return isinstance(value, str) and "{{" in value


def literal(value: Any) -> Any:
    """A rendered template of a list or number (``"['+1415...']"``, ``"2"``) back to the value."""
    if isinstance(value, str) and value.strip()[:1] in ("[", "("):
        try:
            return ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            return value
    return value


def message_ref(message: Any) -> Mapping[str, Any]:
    """The reference as a mapping; a template renders a dict to its repr, so parse that back."""
    if message is None or message == "":
        return {}
    if isinstance(message, str):
        text = message.strip()
        try:
            message = json.loads(text)
        except ValueError:
            try:
                message = ast.literal_eval(text)
            except (ValueError, SyntaxError):
                raise InvalidInputError("message", f"not a message reference: {text[:200]!r}") from None
    if isinstance(message, list) and len(message) == 1:
        message = message[0]
    if not isinstance(message, Mapping):
        raise InvalidInputError(
            "message",
            "expected one message reference (a dict with conn_id and message_id), got"
            f" {type(message).__name__}; for many messages, map the sensor over them with"
            " .expand(message=...)",
        )
    return message


def _pick(field: str, explicit: Any, ref: Mapping[str, Any]) -> Any:
    from_ref = ref.get(field)
    if explicit not in (None, "") and from_ref not in (None, "") and str(explicit) != str(from_ref):
        raise InvalidInputError(field, f"given as {explicit!r} but the message reference says {from_ref!r}")
    return explicit if explicit not in (None, "") else from_ref


def reconcile_required(vendor: str) -> str:
    return (
        f"{vendor} reports reads only through its status API (it has no read webhook): reconcile_interval"
        " cannot be None"
    )
