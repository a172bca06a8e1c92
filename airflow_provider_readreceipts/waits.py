"""
The wait contract: what a wait for a read receipt can end with, and how that is decided.

Shared by the read sensor (poke and reschedule modes, in the worker) and its trigger (in the
triggerer), so both reach the same verdict on the same data, and public, so that DAG code and other
packages can type what they receive:

- :data:`OUTCOMES` and :class:`WaitResult`, the sensor's XCom value;
- :class:`WaitPolicy`, which reads end a wait on a group message, and :func:`verdict`;
- :class:`ReadReceiptWaitError`, a fault of our own, which fails the task and is never "unread".

Pure functions over the store's view of one message: no I/O, nothing heavy imported, so the sensor
module can use it at DAG-parse time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, TypedDict

from airflow_provider_readreceipts.receipts import InvalidInputError, ReadReceiptsError, Status
from airflow_provider_readreceipts.vendors import SPECS

#: The outcomes a wait can end with; each is a normal, green end of the sensor task.
OUTCOME_READ = "read"
OUTCOME_REPLIED = "replied"
OUTCOME_UNREAD = "unread"
OUTCOME_FAILED = "failed"
OUTCOMES = (OUTCOME_READ, OUTCOME_REPLIED, OUTCOME_UNREAD, OUTCOME_FAILED)
#: What ends a wait: a READ (or a reply, which proves the message was read), or only a reply.
UNTIL_READ, UNTIL_REPLY = "read", "reply"
UNTIL = (UNTIL_READ, UNTIL_REPLY)
#: Not an outcome: a fault of our own (store, configuration); the sensor fails the task on it.
OUTCOME_ERROR = "error"

#: Kinds of own faults, carried in an error event so the sensor can decide whether a retry may help.
FAULT_STORE = "store_unreachable"
FAULT_NO_SOURCE = "no_receiver"
FAULT_CONFIGURATION = "bad_configuration"
FAULT_INTERNAL = "internal"
#: Faults a task retry cannot fix: the sensor fails without retrying.
PERMANENT_FAULTS = frozenset({FAULT_CONFIGURATION, FAULT_NO_SOURCE})


def reads_by_polling_only(vendor: str) -> bool:
    """Whether ``vendor``'s READ is only visible through its status API (no read webhook)."""
    spec = SPECS.get(vendor)
    return spec is not None and spec.reads_by_polling_only


class WaitResult(TypedDict):
    """
    What a wait ends with: the read sensor's XCom value, and its trigger's event.

    ``outcome`` is ``"read"``, ``"replied"`` (an answer came: it proves the message was read),
    ``"unread"`` (the deadline passed first) or ``"failed"`` (the vendor reported FAILED; its
    reason in ``failure_reason``). With ``until="reply"``, ``"read"`` means read but not answered
    by the deadline.
    """

    outcome: str
    #: What ended the wait: ``"read"`` (a READ or a reply) or ``"reply"`` (only a reply).
    until: str
    #: The message's normalised status when the wait ended, and the vendor's own word for it.
    status: str | None
    raw_status: str | None
    #: When it was first read (ISO 8601, UTC), and how long after ``sent_at``.
    read_at: str | None
    time_to_read_seconds: float | None
    #: Group participants who read it, earliest first.
    readers: list[str]
    #: ``"webhook"`` or ``"reconcile"`` (the vendor's status API).
    learned_via: str | None
    vendor: str
    conn_id: str
    message_id: str
    #: The vendor's own name of the conversation (a Chert chat id, RyzeAPI's digits, a number).
    chat: str
    #: Who it was sent to, the same way for every vendor: E.164 for a phone number, the group's id
    #: for a group. What a fallback on another channel, or a phone call, needs.
    recipient: str
    sent_at: str | None
    deadline: str
    checked_at: str
    failure_code: str | None
    failure_reason: str | None
    #: The reply (``"replied"`` only): when, its text, the label ``reply_choices`` gave it, its
    #: message id and sender, and how long after the send it came.
    replied_at: str | None
    reply_text: str | None
    reply_label: str | None
    reply_message_id: str | None
    reply_sender: str | None
    time_to_reply_seconds: float | None
    note: str | None


class WaitErrorEvent(TypedDict):
    """The trigger's event for a fault of our own; the sensor turns it into a task failure."""

    outcome: str
    kind: str
    error: str


class ReadReceiptWaitError(ReadReceiptsError):
    """
    A fault of our own that must fail the wait, never turn into "unread": the receipt store
    unreachable, no receiver and no reconcile, bad configuration.

    :param kind: one of the ``FAULT_*`` constants.
    :param message: what went wrong and what to do about it.
    """

    def __init__(self, kind: str, message: str) -> None:
        self.kind = kind
        self.message = message
        super().__init__(message)

    @property
    def permanent(self) -> bool:
        """Whether a task retry cannot fix it (the same configuration fails the same way)."""
        return self.kind in PERMANENT_FAULTS

    def to_event(self) -> WaitErrorEvent:
        """The trigger's event for this fault."""
        return {"outcome": OUTCOME_ERROR, "kind": self.kind, "error": self.message}


def as_utc(value: datetime | str, *, field: str) -> datetime:
    """An aware UTC datetime from a datetime or ISO 8601 text; naive values are read as UTC."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise InvalidInputError(field, f"{value!r} is not an ISO 8601 date and time") from None
    if not isinstance(value, datetime):
        raise InvalidInputError(field, f"expected a datetime or ISO 8601 text, got {type(value).__name__}")
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def seconds(value: timedelta | float | int | None, *, field: str, allow_none: bool = False) -> float | None:
    """A positive duration in seconds from a ``timedelta`` or a number."""
    if value is None:
        if allow_none:
            return None
        raise InvalidInputError(field, "is required")
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise InvalidInputError(field, f"must be a positive number of seconds or a timedelta, got {value!r}")
    return float(value)


def normalise_participant(name: Any) -> str:
    """
    A participant by identity (:func:`~airflow_provider_readreceipts.identity.normalize_identity`):
    ``+5511988887777`` and ``5511988887777@s.whatsapp.net`` are one reader. Imports
    ``phonenumbers``: call it when a task runs, not at DAG parse time.
    """
    from airflow_provider_readreceipts.identity import normalize_identity

    return normalize_identity(str(name))


@dataclass(frozen=True)
class WaitPolicy:
    """
    Which reads end a wait on a group message.

    :param kind: ``"any"``, ``"all"``, ``"count"`` or ``"named"``.
    :param count: for ``"count"``: how many distinct readers.
    :param names: for ``"named"`` (who must read) and ``"all"`` (everyone in the chat).
    """

    kind: str
    count: int = 1
    names: tuple[str, ...] = ()

    @classmethod
    def parse(
        cls, wait_for: Any, participants: Sequence[str] | None = None, *, identities: bool = True
    ) -> WaitPolicy:
        """
        Read ``wait_for`` as the sensor accepts it.

        :param wait_for: ``"any"``, ``"all"``, an int N (at least N readers), or a list of named
            participants who must all read.
        :param participants: everyone in the chat; ``"all"`` needs it (the store only knows who read).
        :param identities: compare names by identity (a task running); ``False`` only checks the
            shape, at DAG parse time, without importing ``phonenumbers``.
        """
        if isinstance(wait_for, str) and wait_for.strip().lower() == "any":
            return cls("any")
        if isinstance(wait_for, str) and wait_for.strip().lower() == "all":
            if not participants:
                raise InvalidInputError(
                    "wait_for",
                    '"all" needs the chat\'s participants: pass participants=[...] (the store only '
                    "knows who has read, not who is in the chat)",
                )
            return cls("all", names=_names(participants, field="participants", identities=identities))
        if isinstance(wait_for, str) and wait_for.strip().isdigit():
            wait_for = int(wait_for.strip())
        if isinstance(wait_for, int) and not isinstance(wait_for, bool):
            if wait_for < 1:
                raise InvalidInputError("wait_for", f"a number of readers must be at least 1, got {wait_for}")
            return cls("count", count=wait_for)
        if isinstance(wait_for, (list, tuple)):
            return cls("named", names=_names(wait_for, field="wait_for", identities=identities))
        raise InvalidInputError(
            "wait_for",
            f'expected "any", "all", a number of readers or a list of participants; got {wait_for!r}',
        )

    def to_kwargs(self) -> dict[str, Any]:
        """JSON-friendly form for trigger kwargs."""
        return {"kind": self.kind, "count": self.count, "names": list(self.names)}

    @classmethod
    def from_kwargs(cls, data: Mapping[str, Any]) -> WaitPolicy:
        return cls(str(data["kind"]), int(data.get("count", 1)), tuple(data.get("names") or ()))

    def satisfied(self, readers: Sequence[str]) -> bool:
        """Whether the readers seen so far end the wait (called only once the message is READ)."""
        if self.kind == "any":
            return True
        # A one-to-one chat's READ names no participant: it still is one reader.
        seen = {normalise_participant(r) for r in readers if r} or {""}
        if self.kind == "count":
            return len(seen) >= self.count
        return set(self.names) <= seen


def _names(values: Sequence[Any], *, field: str, identities: bool) -> tuple[str, ...]:
    written = [str(v).strip() for v in values if str(v).strip()]
    names = tuple(sorted({normalise_participant(v) for v in written} if identities else set(written)))
    if not names:
        raise InvalidInputError(field, "the list of participants is empty")
    return names


def attribute(status: Any, name: str, default: Any = None) -> Any:
    """A field of a store status row, whether the store hands out objects or mappings."""
    if status is None:
        return default
    if isinstance(status, Mapping):
        return status.get(name, default)
    return getattr(status, name, default)


def read_by_policy(status: Any, policy: WaitPolicy) -> bool:
    """Whether the store's status of a message says it was read, as the group policy counts readers."""
    if status is None or str(attribute(status, "status", "")) != Status.READ.value:
        return False
    return policy.satisfied(list(attribute(status, "readers", None) or []))


def verdict(status: Any, policy: WaitPolicy, until: str = UNTIL_READ) -> str | None:
    """
    ``"read"`` or ``"failed"`` when the store's status of a message ends the wait, else ``None``.

    With ``until="reply"`` a READ does not end the wait (only a reply, a failure or the deadline).
    """
    if status is None:
        return None
    if str(attribute(status, "status", "")) == Status.FAILED.value:
        return OUTCOME_FAILED
    if until == UNTIL_READ and read_by_policy(status, policy):
        return OUTCOME_READ
    return None


def deadline_outcome(status: Any, policy: WaitPolicy, until: str) -> str:
    """
    What a wait that reached its deadline ends with: ``"unread"``, or, waiting for a reply, ``"read"``
    when the message was read but not answered.
    """
    if until == UNTIL_REPLY and read_by_policy(status, policy):
        return OUTCOME_READ
    return OUTCOME_UNREAD


def _iso(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return as_utc(value, field="timestamp").isoformat()
    return str(value)


def result(
    outcome: str,
    status: Any,
    *,
    vendor: str,
    conn_id: str,
    message_id: str,
    chat: str,
    sent_at: str | None,
    deadline: datetime,
    checked_at: datetime,
    recipient: str = "",
    until: str = UNTIL_READ,
    reply: Mapping[str, Any] | None = None,
    note: str | None = None,
) -> WaitResult:
    """
    The sensor's XCom value: everything a downstream branch needs, JSON-serialisable.

    ``outcome`` is ``"read"``, ``"replied"``, ``"unread"`` (deadline passed) or ``"failed"`` (the
    vendor's reason in ``failure_reason``).

    :param reply: the reply's fields (``replied_at``, ``reply_text``, ...) when it ``"replied"``.
    """
    reply_fields = dict(reply or {})
    read_at = attribute(status, "read_at")
    if outcome == OUTCOME_REPLIED and reply_fields.get("replied_at"):
        # A reply proves the message was read: read_at is the earlier of the READ and the reply.
        replied_at = as_utc(reply_fields["replied_at"], field="replied_at")
        if read_at is None or as_utc(read_at, field="read_at") > replied_at:
            read_at = replied_at
    time_to_read: float | None = None
    if outcome in (OUTCOME_READ, OUTCOME_REPLIED) and read_at is not None and sent_at:
        read_dt = as_utc(read_at, field="read_at") if isinstance(read_at, (str, datetime)) else None
        if read_dt is not None:
            time_to_read = max((read_dt - as_utc(sent_at, field="sent_at")).total_seconds(), 0.0)
    raw_status = attribute(status, "status")
    failed = outcome == OUTCOME_FAILED
    return {
        "outcome": outcome,
        "until": until,
        "status": None if raw_status is None else str(raw_status),
        "raw_status": attribute(status, "raw_status"),
        "read_at": _iso(read_at),
        "time_to_read_seconds": time_to_read,
        "readers": list(attribute(status, "readers", None) or []),
        "learned_via": attribute(status, "source"),
        "vendor": vendor,
        "conn_id": conn_id,
        "message_id": message_id,
        "chat": chat,
        "recipient": recipient,
        "sent_at": sent_at,
        "deadline": deadline.isoformat(),
        "checked_at": checked_at.isoformat(),
        "failure_code": (attribute(status, "failed_code") or None) if failed else None,
        "failure_reason": (attribute(status, "failed_reason") or None) if failed else None,
        "replied_at": reply_fields.get("replied_at"),
        "reply_text": reply_fields.get("reply_text"),
        "reply_label": reply_fields.get("reply_label"),
        "reply_message_id": reply_fields.get("reply_message_id"),
        "reply_sender": reply_fields.get("reply_sender"),
        "time_to_reply_seconds": reply_fields.get("time_to_reply_seconds"),
        "note": note,
    }
