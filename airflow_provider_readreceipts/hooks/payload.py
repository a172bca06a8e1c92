"""
Reading what vendors send: the webhook as received, its secret, and values inside vendor JSON.

One set of helpers for every vendor module, so that "the first of these paths holding text" means
the same thing everywhere:

- :func:`dig` walks a dotted path (``data.key.id``; a digit indexes a list);
- :func:`first` returns the first path's value that a test accepts;
- :func:`first_text` the first that holds a string or a number, as stripped text;
- :func:`text` is a value as text, ``""`` for ``None``; :func:`optional_text` keeps ``None``.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from airflow_provider_readreceipts.receipts import WebhookPayloadError


def parse_timestamp(value: Any) -> datetime | None:
    """
    A vendor timestamp as an aware UTC datetime: ISO 8601 text, or unix seconds or milliseconds.

    Returns ``None`` for a missing or unreadable value (the event is still stored).
    """
    if value is None or value == "" or isinstance(value, bool):
        return None
    try:
        if isinstance(value, (int, float)):
            seconds = value / 1000 if value > 100_000_000_000 else value
            return datetime.fromtimestamp(seconds, tz=timezone.utc)
        if isinstance(value, str):
            parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
            return parsed.astimezone(timezone.utc) if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)
    except (ValueError, OverflowError, OSError):
        return None
    return None


def secrets_equal(given: str | bytes | None, expected: str | bytes | None) -> bool:
    """Compare a presented secret with the expected one in constant time; empty never matches."""
    if not given or not expected:
        return False
    a = given.encode() if isinstance(given, str) else given
    b = expected.encode() if isinstance(expected, str) else expected
    return hmac.compare_digest(a, b)


@dataclass(frozen=True)
class WebhookRequest:
    """
    A webhook as the receiver got it, before any parsing.

    :param conn_id: the connection named in the URL (``/webhooks/<conn_id>``).
    :param headers: the request headers, names in lower case.
    :param query: the query parameters.
    :param body: the raw body bytes (signatures cover them).
    :param received_at: unix time of receipt (signature windows count from it).
    """

    conn_id: str
    headers: Mapping[str, str]
    query: Mapping[str, str]
    body: bytes
    received_at: float

    def json(self) -> Any:
        """The body as JSON, or :class:`WebhookPayloadError` with a reason."""
        try:
            return json.loads(self.body)
        except UnicodeDecodeError:
            raise WebhookPayloadError("the body is not UTF-8 JSON") from None
        except ValueError as exc:
            raise WebhookPayloadError(f"the body is not valid JSON ({exc.args[0]})") from None
        except RecursionError:
            raise WebhookPayloadError("the body's JSON is nested too deeply") from None

    def json_object(self) -> Mapping[str, Any]:
        """The body as a JSON object, or :class:`WebhookPayloadError`."""
        document = self.json()
        if not isinstance(document, Mapping):
            raise WebhookPayloadError("the body must be a JSON object")
        return document


def text(value: Any) -> str:
    """``value`` as text; ``""`` for ``None``."""
    return "" if value is None else str(value)


def optional_text(value: Any) -> str | None:
    """``value`` as text; ``None`` stays ``None``."""
    return None if value is None else str(value)


def dig(document: Any, path: str) -> Any:
    """
    The value at a dotted path of JSON (``data.key.id``; a digit part indexes a list), or ``None``.

    :param document: decoded JSON.
    :param path: keys separated by dots.
    """
    current = document
    for part in path.split("."):
        if isinstance(current, Mapping):
            current = current.get(part)
        elif isinstance(current, list) and part.isdigit() and int(part) < len(current):
            current = current[int(part)]
        else:
            return None
        if current is None:
            return None
    return current


def first(document: Any, paths: Iterable[str], usable: Callable[[Any], bool]) -> Any:
    """The value of the first of ``paths`` that ``usable`` accepts, or ``None``."""
    for path in paths:
        value = dig(document, path)
        if usable(value):
            return value
    return None


def is_present(value: Any) -> bool:
    """Neither ``None`` nor ``""``."""
    return value is not None and value != ""


def is_text(value: Any) -> bool:
    """A string with something other than spaces in it."""
    return isinstance(value, str) and bool(value.strip())


def first_text(document: Any, paths: Iterable[str]) -> str:
    """
    The first of ``paths`` holding a string or a number (not a boolean), as stripped text; ``""``
    when none does.
    """
    for path in paths:
        value = dig(document, path)
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            continue
        stripped = str(value).strip()
        if stripped:
            return stripped
    return ""
