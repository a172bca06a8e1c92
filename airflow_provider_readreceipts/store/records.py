"""What the receipt store hands out: a message's current status, a stored event, the store's errors."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from airflow_provider_readreceipts.receipts import (
    ReadReceiptsError,
    ReceiptEvent,
    Status,
)

if TYPE_CHECKING:
    pass


class StoreError(ReadReceiptsError):
    """The receipt store is misconfigured or cannot be used; the message says what to do."""


class StoreSchemaError(StoreError):
    """The store's schema is missing or not the version this package uses."""


@dataclass(frozen=True)
class MessageStatus:
    """
    The current status of one message, as the ladder decides it from every event stored for it.

    :param conn_id: the vendor connection the message belongs to.
    :param message_id: the vendor's id of the message.
    :param vendor: the vendor's name.
    :param chat_id: the conversation, from the first event that named one.
    :param status: the current status (the highest rank seen; the first one on a tie).
    :param raw_status: the vendor's own status string of the deciding event.
    :param updated_at: when the store learned the current status (UTC).
    :param read_at: when it was first read: the earliest READ's vendor time (its arrival time when
        the vendor gave none); ``None`` when unread.
    :param readers: group participants who read it, earliest first; a READ without a participant
        (a one-to-one chat) counts for ``read_at`` but adds no reader.
    :param delivered_at: the earliest DELIVERED event's time, even when READ outranks it.
    :param failed_code: the vendor's error code of the first FAILED event; ``""`` when none.
    :param failed_reason: the vendor's reason of the first FAILED event; ``""`` when none.
    :param source: how the deciding event was learned: ``"webhook"`` or ``"reconcile"``.
    :param reader_read_at: when each reader in ``readers`` read it.
    """

    conn_id: str
    message_id: str
    vendor: str
    chat_id: str
    status: Status
    raw_status: str
    updated_at: datetime
    read_at: datetime | None
    readers: list[str]
    delivered_at: datetime | None
    failed_code: str
    failed_reason: str
    source: str
    reader_read_at: dict[str, datetime] = field(default_factory=dict)


@dataclass(frozen=True)
class StoredEvent:
    """
    One stored event: a :class:`~airflow_provider_readreceipts.receipts.ReceiptEvent` and where it came from.

    :param id: the row id; it only grows, so it serves as a cursor.
    :param received_at: when the store committed it (UTC).
    :param source: ``"webhook"`` or ``"reconcile"``.
    :param payload: the vendor's raw payload.
    :param participant_id: the participant by identity
        (:func:`~airflow_provider_readreceipts.identity.normalize_identity`).
    :param chat_key: the conversation by identity: what replies are matched by.

    The other fields are those of :class:`~airflow_provider_readreceipts.receipts.ReceiptEvent`.
    """

    id: int
    conn_id: str
    vendor: str
    message_id: str
    status: Status
    raw_status: str
    participant: str
    chat_id: str
    occurred_at: datetime | None
    received_at: datetime
    event_id: str
    error_code: str
    error_message: str
    source: str
    payload: dict[str, Any]
    #: The participant and the conversation by identity (schema version 2).
    participant_id: str = ""
    chat_key: str = ""

    def to_receipt_event(self) -> ReceiptEvent:
        """The event as the vendor adapters produce it."""
        return ReceiptEvent(
            vendor=self.vendor,
            conn_id=self.conn_id,
            message_id=self.message_id,
            status=self.status,
            raw_status=self.raw_status,
            participant=self.participant,
            chat_id=self.chat_id,
            occurred_at=self.occurred_at,
            event_id=self.event_id,
            error_code=self.error_code,
            error_message=self.error_message,
            payload=self.payload,
        )
