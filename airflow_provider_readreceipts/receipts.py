"""
The shared vocabulary of the package: the status ladder, receipt events, message references, errors.

Every vendor module maps its own statuses onto :class:`Status`; everything downstream (the receipt
store, the sensor, the operators' XCom results) speaks only this vocabulary. This module imports
nothing heavy: operator and sensor modules import it at DAG-parse time.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypedDict

from airflow_provider_readreceipts.vendors import SPECS

#: The vendors' connection types (the vendor registry's).
VENDORS = tuple(SPECS)


class Status(str, enum.Enum):
    """A message's status, normalised across vendors (the README's "Statuses" table maps each vendor's)."""

    QUEUED = "QUEUED"
    SENT = "SENT"
    FAILED = "FAILED"
    DELIVERED = "DELIVERED"
    READ = "READ"
    #: An inbound message (someone wrote to us); not a step on the outbound ladder.
    RECEIVED = "RECEIVED"
    #: A vendor status this package does not know; the raw value is kept alongside.
    UNKNOWN = "UNKNOWN"

    def __str__(self) -> str:
        return self.value


#: The ladder: a higher rank wins whatever order events arrive in. READ outranks everything (a READ
#: that arrives before DELIVERED still means read), DELIVERED outranks FAILED (a delivered message
#: was not lost, whatever a late error says), FAILED outranks QUEUED and SENT.
STATUS_RANK: Mapping[Status, int] = {
    Status.UNKNOWN: 0,
    Status.RECEIVED: 0,
    Status.QUEUED: 1,
    Status.SENT: 2,
    Status.FAILED: 3,
    Status.DELIVERED: 4,
    Status.READ: 5,
}


def status_rank(status: Status | str) -> int:
    """Rank of a status on the ladder; unknown strings rank lowest."""
    try:
        return STATUS_RANK[Status(status)]
    except ValueError:
        return 0


def current_status(statuses: Iterable[Status | str]) -> Status | None:
    """The status a message is in after all of ``statuses``, in any order; ``None`` for none."""
    best: Status | None = None
    for raw in statuses:
        try:
            status = Status(raw)
        except ValueError:
            status = Status.UNKNOWN
        if best is None or STATUS_RANK[status] > STATUS_RANK[best]:
            best = status
    return best


@dataclass(frozen=True)
class ReceiptEvent:
    """
    One thing a vendor told us about one message, normalised.

    :param vendor: one of :data:`VENDORS`.
    :param conn_id: the Airflow connection (vendor account) the event belongs to.
    :param message_id: the vendor's id of the message (Sendblue handle, Chert message id, ...).
    :param status: the normalised status.
    :param raw_status: the status exactly as the vendor sent it.
    :param participant: who read or received it, for group chats; ``""`` when not a group event.
    :param chat_id: the conversation: a chat id, a JID or the other party's number.
    :param occurred_at: when the vendor says it happened (UTC); ``None`` when it does not say.
    :param event_id: the vendor's delivery id, where it sends one (used to refuse replays).
    :param error_code: the vendor's error code for FAILED events.
    :param error_message: the vendor's reason for FAILED events.
    :param payload: the raw payload, kept for audit.
    """

    vendor: str
    conn_id: str
    message_id: str
    status: Status
    raw_status: str
    participant: str = ""
    chat_id: str = ""
    occurred_at: datetime | None = None
    event_id: str = ""
    error_code: str = ""
    error_message: str = ""
    payload: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def is_inbound(self) -> bool:
        return self.status is Status.RECEIVED


class MessageRef(TypedDict):
    """
    What a send operator pushes to XCom and the read sensor accepts as it is.

    JSON-serialisable on purpose: it travels through XCom and into trigger kwargs.
    """

    vendor: str
    conn_id: str
    message_id: str
    #: The conversation as the vendor names it: a Chert chat id, a RyzeAPI JID or digits, a number.
    chat: str
    #: Who it went to, the same way for every vendor: E.164 for a phone number, the group's id for
    #: a group (what a phone call or a fallback on another channel needs).
    recipient: str
    #: ISO 8601, UTC; the read deadline counts from here.
    sent_at: str


class ReadReceiptsError(Exception):
    """Base class of every error this package raises on purpose."""


class InvalidInputError(ReadReceiptsError, ValueError):
    """
    An argument is unusable; raised before any HTTP call.

    :param field: the argument's name, as the caller wrote it.
    :param problem: what is wrong with it.
    """

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"{field}: {problem}")


class VendorAPIError(ReadReceiptsError):
    """
    A vendor refused a request or could not be reached.

    :param vendor: the vendor's display name, e.g. ``"Sendblue"``.
    :param operation: what was attempted, e.g. ``"mark_read"``.
    :param status_code: the HTTP status, ``None`` when no response came.
    :param code: the vendor's own error code, if it sends one.
    :param message: the vendor's message (or the transport failure).
    :param retryable: whether trying again later may succeed.
    :param retry_after: seconds the vendor asked us to wait, if it said.
    :param trace_id: the vendor's request id for support tickets, if it sent one.
    """

    def __init__(
        self,
        *,
        vendor: str,
        operation: str,
        status_code: int | None,
        message: str,
        code: str | None = None,
        retryable: bool = False,
        retry_after: float | None = None,
        trace_id: str | None = None,
    ) -> None:
        self.vendor = vendor
        self.operation = operation
        self.status_code = status_code
        self.code = code
        self.message = message
        self.retryable = retryable
        self.retry_after = retry_after
        self.trace_id = trace_id
        super().__init__(self._describe())

    def _describe(self) -> str:
        where = f"HTTP {self.status_code}" if self.status_code is not None else "no response"
        code = f", code {self.code}" if self.code else ""
        trace = f", trace id {self.trace_id}" if self.trace_id else ""
        hint = "retryable" if self.retryable else "not retryable"
        return f"{self.vendor} {self.operation} failed: {where}{code}: {self.message} ({hint}{trace})"

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-only __init__: rebuild from the attributes so the error survives pickling
        # (Airflow ships task exceptions between processes).
        return (_rebuild_error, (type(self), self.__dict__.copy()))


class DeliveryUnknownError(VendorAPIError):
    """
    A send whose outcome is unknown: the request may or may not have reached the vendor.

    Raised instead of sending again after a timeout, a dropped connection or a 5xx on a send that
    has no vendor idempotency key, because a blind retry could deliver the message twice.
    """

    def _describe(self) -> str:
        return (
            super()._describe()
            + "; the message may have been sent, so it was not sent again. Check the vendor's"
            " dashboard or status API before retrying."
        )


class WebhookRejected(ReadReceiptsError):
    """
    A webhook the receiver refuses; ``status_code`` is the HTTP answer, ``str()`` the reason.

    The reason is sent back to the caller, so it never quotes a secret.
    """

    status_code = 400

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class WebhookAuthError(WebhookRejected):
    """The webhook did not prove it comes from the vendor (missing or wrong secret or signature)."""

    status_code = 401


class WebhookPayloadError(WebhookRejected):
    """The webhook is authentic but its payload cannot be used (malformed JSON, missing fields)."""

    status_code = 422


def _rebuild_error(cls: type[VendorAPIError], state: dict[str, Any]) -> VendorAPIError:
    error = cls.__new__(cls)
    error.__dict__.update(state)
    Exception.__init__(error, error._describe())
    return error
