"""
What may be stored: events no database could hold are refused before they join a shared transaction.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from airflow_provider_readreceipts.receipts import (
    InvalidInputError,
    ReceiptEvent,
    Status,
)

# Longest accepted key field (ids, participant): PostgreSQL refuses btree entries over ~2.7 kB.
MAX_KEY_LENGTH = 512
_MAX_RAW_STATUS_IN_KEY = 100


def dedup_status(event: ReceiptEvent) -> str:
    """
    The status part of an event's uniqueness key.

    The normalised status, except for UNKNOWN, where the raw status is kept (``UNKNOWN:<raw>``) so
    that different statuses this package does not know stay different events. A long raw status is
    shortened to its first 64 characters and a digest of the whole.

    :param event: the event.
    """
    status = Status(event.status)
    if status is not Status.UNKNOWN:
        return status.value
    raw = event.raw_status
    if len(raw) > _MAX_RAW_STATUS_IN_KEY:
        raw = f"{raw[:64]}#sha256:{hashlib.sha256(raw.encode()).hexdigest()[:32]}"
    return f"UNKNOWN:{raw}"


def validate_events(events: Iterable[ReceiptEvent]) -> None:
    """
    Refuse events no database could store, before they reach a transaction shared with others.

    :raises InvalidInputError: a field is not a string, holds a NUL character or an unpaired
        surrogate (neither fits PostgreSQL text), or a key field is longer than 512 characters.
    """
    for event in events:
        try:
            Status(event.status)
        except ValueError:
            raise InvalidInputError("status", f"{event.status!r} is not a Status") from None
        for name in ("vendor", "conn_id", "message_id", "participant", "event_id"):
            value = getattr(event, name)
            check_text(name, value)
            if len(value) > MAX_KEY_LENGTH:
                raise InvalidInputError(name, f"longer than {MAX_KEY_LENGTH} characters")
        for name in ("raw_status", "chat_id", "error_code", "error_message"):
            check_text(name, getattr(event, name))
        if not event.conn_id or not event.message_id:
            raise InvalidInputError("message_id" if event.conn_id else "conn_id", "must not be empty")
        if event.occurred_at is not None and not isinstance(event.occurred_at, datetime):
            raise InvalidInputError("occurred_at", "must be a datetime or None")
        if event.payload is not None and not isinstance(event.payload, Mapping):
            raise InvalidInputError("payload", f"must be a mapping, not {type(event.payload).__name__}")


def check_source(source: str) -> None:
    """Refuse a ``source`` no database can store, as :func:`validate_events` does for events."""
    check_text("source", source)


def check_text(name: str, value: Any) -> None:
    if type(value) is not str and not isinstance(value, str):
        raise InvalidInputError(name, f"must be a string, not {type(value).__name__}")
    if "\x00" in value:
        raise InvalidInputError(name, "contains a NUL character")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidInputError(name, "is not valid Unicode (unpaired surrogate)") from None


# One encoder for every payload (json.dumps builds a new one per call when given options).
_PAYLOAD_JSON = json.JSONEncoder(default=str, separators=(",", ":"))


class EncodedPayload(dict):
    """
    A payload that arrives already encoded as the text the store keeps (see :func:`payload_text`),
    e.g. one nested too deeply to pickle on its way to the receiver's writer process. It reads as
    an empty mapping; the text is in :attr:`text`.

    :param text: the payload as :func:`payload_text` encodes it.
    """

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def __reduce__(self) -> tuple[Any, ...]:
        return (EncodedPayload, (self.text,))


def payload_text(payload: Mapping[str, Any] | None) -> str:
    """
    The text the store keeps of an event's raw payload: compact, ASCII-escaped JSON, so that it
    fits both databases whatever the payload holds.

    :param payload: the event's payload.
    """
    if isinstance(payload, EncodedPayload):
        return payload.text
    return _PAYLOAD_JSON.encode(dict(payload or {}))
