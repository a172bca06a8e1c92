"""
Checks of what a DAG author passes in, shared by every vendor: phone numbers and required text.

Each raises :class:`~airflow_provider_readreceipts.receipts.InvalidInputError` naming the argument,
before any HTTP call. Light to import (``phonenumbers`` only): operators call these at task start.
"""

from __future__ import annotations

from typing import Any

import phonenumbers

from airflow_provider_readreceipts.receipts import InvalidInputError


def normalize_e164(value: Any, *, field: str) -> str:
    """
    Check a phone number and return it in E.164 (``+14155551234``).

    Numbers must carry their country code; national formats are refused rather than guessed.

    :param value: what the caller passed.
    :param field: the argument's name, for the error message.
    """
    if not isinstance(value, str) or not value.strip():
        raise InvalidInputError(field, "a phone number in E.164 format is required, e.g. +14155551234")
    text = value.strip()
    if not text.startswith("+"):
        raise InvalidInputError(
            field, f"{text!r} has no country code; write it in E.164 format, e.g. +14155551234"
        )
    try:
        number = phonenumbers.parse(text, None)
    except phonenumbers.NumberParseException as exc:
        raise InvalidInputError(field, f"{text!r} is not a phone number ({exc})") from None
    if not phonenumbers.is_valid_number(number):
        raise InvalidInputError(field, f"{text!r} is not a valid phone number")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def require_text(value: Any, *, field: str) -> str:
    """Return ``value`` stripped, or raise :class:`InvalidInputError` naming ``field`` if it is empty."""
    if not isinstance(value, str) or not value.strip():
        raise InvalidInputError(field, "must be a non-empty string")
    return value.strip()
