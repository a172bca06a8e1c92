"""
Direct7 Networks (WhatsApp): everything vendor-specific in one place.

Auth is a bearer token (the connection's password). Three ids matter, and they are easy to mix up:

- ``request_id``: what ``POST /whatsapp/v2/send`` answers with. It is the only id a sender learns, so
  this package uses it as the message id of an outbound message: delivery reports and status
  look-ups are normalised to ``message_id = request_id``.
- ``msg_id``: Direct7's id of each message inside a request. Kept in the event payload, never used
  as the id, because nothing that waits for a receipt ever learns it.
- the id of an inbound (user-initiated) message: what :meth:`Direct7Hook.mark_read` needs.

Direct7 signs no webhook. The receiver accepts a report only when it carries the connection's
``webhook_token``, either as a ``token`` query parameter (append ``?token=<it>`` to the report URL,
see :meth:`Direct7Hook.report_url_from_connection`) or in a header (``x-webhook-token`` by default).

Phone numbers go out in E.164 with the leading ``+``: Direct7's docs write recipients and
originators in that form (``+971509752xxx``) and ask for the country code on every recipient.
Numbers that come back without it (Direct7's own examples show both forms) gain it in ``chat_id``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from airflow_provider_readreceipts.hooks.base import ReadReceiptsHook
from airflow_provider_readreceipts.hooks.inputs import normalize_e164, require_text
from airflow_provider_readreceipts.hooks.payload import (
    WebhookRequest,
    first_text,
    parse_timestamp,
    secrets_equal,
    text,
)
from airflow_provider_readreceipts.receipts import (
    InvalidInputError,
    ReceiptEvent,
    Status,
    VendorAPIError,
    WebhookAuthError,
    WebhookPayloadError,
)
from airflow_provider_readreceipts.vendors.direct7 import SPEC

#: Direct7's report statuses, compared in lower case (reports write "Read", status look-ups "read").
STATUS_MAP: dict[str, Status] = {
    "queued": Status.QUEUED,
    "accepted": Status.QUEUED,
    "sent": Status.SENT,
    "delivered": Status.DELIVERED,
    "read": Status.READ,
    "dropped": Status.FAILED,
    "undelivered": Status.FAILED,
}
DELIVERY_EVENTS = "DELIVERY_EVENTS"
WEBHOOK_TOKEN_QUERY_PARAMETER = "token"  # noqa: S105 - a parameter name, not a secret
DEFAULT_WEBHOOK_TOKEN_HEADER = "x-webhook-token"  # noqa: S105 - a header name, not a secret
#: WhatsApp refuses text bodies longer than this.
MAX_TEXT_LENGTH = 4096
#: A request id that cannot exist. The path parameter may be typed as a UUID at Direct7 (its errors
#: are FastAPI's), so anything else could answer 422 instead of the 404 the probe relies on.
PROBE_REQUEST_ID = "00000000-0000-0000-0000-000000000000"

# Inbound (user-initiated) webhooks: Direct7's public pages document delivery reports but not the
# inbound payload, so the id and sender are looked up under the names such payloads use, after
# the ones a connection names in its ``inbound_message_id_field`` / ``inbound_sender_field`` extras.
INBOUND_ID_FIELDS = ("message_id", "msg_id", "id")
INBOUND_SENDER_FIELDS = ("from", "sender", "from_number", "originator")

_DIGITS_ONLY = re.compile(r"\d{6,15}")


class Direct7Hook(ReadReceiptsHook, spec=SPEC):
    """
    Talk to the Direct7 Networks WhatsApp API.

    The connection: password is the API token (sent as ``Authorization: Bearer``), host an optional
    base URL (default ``https://api.d7networks.com``), extras ``originator`` (your WhatsApp
    business number, E.164, the default sender), ``webhook_token`` (the secret delivery reports
    must carry), ``webhook_header_name`` (header that may carry it, default ``x-webhook-token``)
    and ``receiver_url`` (this connection's webhook receiver).

    :param direct7_conn_id: the Airflow connection of the Direct7 account.
    :param kwargs: timeouts and retry bounds, see :class:`ReadReceiptsHook`.
    """

    def __init__(self, *, direct7_conn_id: str = SPEC.default_conn_id, **kwargs: Any) -> None:
        super().__init__(conn_id=direct7_conn_id, **kwargs)
        self.direct7_conn_id = direct7_conn_id

    def _check_connection(self, conn: Any) -> None:
        if not conn.password:
            raise InvalidInputError(
                f"connection {conn.conn_id!r}", "Direct7 needs the API token as the password"
            )

    def auth_headers(self, method: str, path: str, body: bytes) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._current_connection().password or ''}"}

    def parse_error_body(self, body: Any) -> tuple[str | None, str | None, bool | None]:
        # FastAPI-style errors: {"detail": {"code", "message"}} for the documented 401/402/404,
        # {"detail": [{"loc", "msg", "type"}, ...]} for a 422 validation failure.
        if not isinstance(body, Mapping) or "detail" not in body:
            return super().parse_error_body(body)
        detail = body["detail"]
        if isinstance(detail, Mapping):
            code = detail.get("code")
            message = detail.get("message")
            return (
                None if code is None else str(code),
                None if message is None else str(message),
                None,
            )
        if isinstance(detail, list):
            return None, "invalid request: " + "; ".join(_describe_validation_error(e) for e in detail), None
        if isinstance(detail, str):
            return None, detail, None
        return None, None, None

    # -- outbound -----------------------------------------------------------------------------------

    def mark_read(self, *, message_id: str, show_typing: bool = False) -> dict[str, Any]:
        """
        Mark an inbound (user-initiated) message read: the sender sees two blue ticks.

        Safe to repeat: marking a read message read again changes nothing, so it is retried like
        any idempotent call. Direct7 answers 404 ``WHATSAPP_MESSAGE_NOT_EXISTS`` for ids it does not
        know.

        :param message_id: Direct7's id of the inbound message, as its webhook or report gave it.
        :param show_typing: also show the typing indicator (Direct7's own n8n node sends
            ``{"typing": true}``); by default the body is ``{}``, as the official Python SDK sends.
        """
        identifier = require_text(message_id, field="message_id")
        body: dict[str, Any] = {"typing": True} if show_typing else {}
        result = self.request(
            "mark_read",
            "POST",
            f"/whatsapp/v2/read-receipt/{_path_segment(identifier)}",
            json_body=body,
            idempotent=True,
        )
        # The docs promise only "200 - Message successfully marked as read", not a body shape.
        return result if isinstance(result, dict) else {"message_id": identifier, "response": result}

    def send_message(
        self,
        *,
        number: str,
        body: str,
        originator: str | None = None,
        report_url: str | None = None,
    ) -> dict[str, Any]:
        """
        Send a WhatsApp text; the response's ``request_id`` is the id to wait on for receipts.

        Free-form text reaches a user only inside WhatsApp's customer-service window (24 hours after
        their last message). Direct7 has no idempotency key, so a send is retried only when it surely
        did not reach Direct7; after a timeout, a dropped connection or a 5xx,
        :class:`~airflow_provider_readreceipts.receipts.DeliveryUnknownError` is raised instead of
        sending twice. A 402 (insufficient credit) is not retried.

        :param number: the recipient, E.164 (``+971501234567``).
        :param body: the text, at most 4096 characters.
        :param originator: your WhatsApp business number, E.164; defaults to the connection's
            ``originator``.
        :param report_url: URL that receives this message's delivery reports; without it Direct7
            uses the callback URL set in its dashboard. See :meth:`report_url_from_connection`.
        """
        message: dict[str, Any] = {
            "originator": normalize_e164(originator or self.extra("originator"), field="originator"),
            "recipients": [{"recipient": normalize_e164(number, field="number")}],
            "content": {"message_type": "TEXT", "text": {"body": _text_body(body)}},
        }
        if report_url is not None:
            message["report_url"] = _http_url(report_url, field="report_url")
        return self.request(
            "send_message", "POST", "/whatsapp/v2/send", json_body={"messages": [message]}, idempotent=False
        )

    def get_status(self, request_id: str) -> dict[str, Any]:
        """
        The report of a send request: ``messages[]`` with each message's ``msg_id``, ``recipient``
        and ``status`` (e.g. ``read``), and the request's ``request_stage``.

        :param request_id: the ``request_id`` returned by :meth:`send_message`.
        """
        identifier = require_text(request_id, field="request_id")
        return self.request("get_status", "GET", _report_path(identifier), idempotent=True)

    async def aget_status(self, request_id: str) -> dict[str, Any]:
        """
        Async twin of :meth:`get_status`, for triggers.

        :param request_id: the ``request_id`` returned by :meth:`send_message`.
        """
        identifier = require_text(request_id, field="request_id")
        return await self.arequest("get_status", "GET", _report_path(identifier))

    def report_url_from_connection(self) -> str | None:
        """
        The connection's ``receiver_url`` with ``?token=<webhook_token>`` added, for ``report_url``.

        Direct7 signs nothing, so the token in the URL is what proves a report comes from it. The
        returned URL contains the secret: pass it to :meth:`send_message`, never log it yourself
        (the token is registered with Airflow's log masker). ``None`` when no ``receiver_url`` is set.
        """
        receiver_url = self.extra("receiver_url")
        if not receiver_url:
            return None
        url = _http_url(receiver_url, field="receiver_url")
        token = self.extra("webhook_token")
        if not token:
            raise InvalidInputError(
                f"connection {self.direct7_conn_id!r}",
                "has a receiver_url but no webhook_token; the receiver would refuse every report",
            )
        parts = urlsplit(url)
        query = [(k, v) for k, v in parse_qsl(parts.query) if k != WEBHOOK_TOKEN_QUERY_PARAMETER]
        query.append((WEBHOOK_TOKEN_QUERY_PARAMETER, str(token)))
        return urlunsplit(parts._replace(query=urlencode(query)))

    # -- reconcile ----------------------------------------------------------------------------------

    async def afetch_receipt_events(self, *, message_id: str, chat: str = "") -> list[ReceiptEvent]:
        """
        Ask Direct7's report API about one send request; one event per message in it.

        :param message_id: the ``request_id`` of the send (the message id this package uses).
        :param chat: the recipient, used when the report does not name one.
        """
        report = await self.aget_status(message_id)
        messages = report.get("messages") if isinstance(report, Mapping) else None
        events = []
        for message in messages if isinstance(messages, list) else []:
            if not isinstance(message, Mapping):
                continue
            raw_status = message.get("status")
            if not isinstance(raw_status, str) or not raw_status:
                continue
            events.append(
                _delivery_event(
                    conn_id=self.direct7_conn_id,
                    request_id=message_id,
                    raw_status=raw_status,
                    report={"request_id": message_id, **message},
                    default_chat=chat,
                )
            )
        return events

    # -- webhooks -----------------------------------------------------------------------------------

    def verify_webhook(self, request: WebhookRequest) -> None:
        """
        Direct7 signs nothing: accept only a webhook that carries the connection's ``webhook_token``.

        Either as the ``token`` query parameter of the report URL, or in a header: ``x-webhook-token``
        unless the connection's ``webhook_header_name`` names another. Both are compared in constant
        time, and both always, so the answer's timing does not tell which one was tried.
        """
        expected = self.extra("webhook_token")
        if not expected:
            raise WebhookAuthError(f"connection {self.direct7_conn_id!r} has no webhook_token configured")
        header = str(self.extra("webhook_header_name", DEFAULT_WEBHOOK_TOKEN_HEADER)).lower()
        in_query = secrets_equal(request.query.get(WEBHOOK_TOKEN_QUERY_PARAMETER), str(expected))
        in_header = secrets_equal(request.headers.get(header), str(expected))
        if not (in_query or in_header):
            raise WebhookAuthError(
                f"missing or wrong webhook token (the {WEBHOOK_TOKEN_QUERY_PARAMETER!r} query parameter"
                f" or the {header} header)"
            )

    def parse_webhook(self, request: WebhookRequest) -> list[ReceiptEvent]:
        """
        Normalise a delivery report, an inbound message, or a batch of either.

        Delivery reports (``event_type`` ``DELIVERY_EVENTS``, or any object with a ``request_id``)
        become events with ``message_id = request_id`` and ``chat_id = recipient``; ``msg_id`` stays
        in the payload. Inbound messages become ``RECEIVED`` events whose ``message_id`` is the id
        :meth:`mark_read` takes and whose ``chat_id`` is the sender. A JSON list, or an object with a
        ``messages`` list (whose items inherit the object's other fields), is read item by item.
        Other event types that carry neither shape are acknowledged with no event.
        """
        document = request.json()
        events: list[ReceiptEvent] = []
        for item in _items(document):
            events.extend(self._parse_item(request.conn_id, item))
        return events

    def _parse_item(self, conn_id: str, item: Mapping[str, Any]) -> list[ReceiptEvent]:
        event_type = item.get("event_type")
        if event_type is not None and not isinstance(event_type, str):
            raise WebhookPayloadError("event_type must be a string")
        if (event_type or "").upper() == DELIVERY_EVENTS or (event_type is None and "request_id" in item):
            return [self._parse_delivery_report(conn_id, item)]
        message_id = (
            first_text(item, self._inbound_fields("inbound_message_id_field", INBOUND_ID_FIELDS)) or None
        )
        sender = first_text(item, self._inbound_fields("inbound_sender_field", INBOUND_SENDER_FIELDS)) or None
        if message_id is None and sender is None:
            if event_type is not None:
                return []  # an event type this package does not use (no message, no status)
            raise WebhookPayloadError(
                "neither a delivery report (no request_id) nor an inbound message (no id and no sender)"
            )
        if message_id is None:
            raise WebhookPayloadError("inbound message without an id (message_id, msg_id or id)")
        if sender is None:
            raise WebhookPayloadError("inbound message without a sender (from, sender or originator)")
        return [
            ReceiptEvent(
                vendor=SPEC.conn_type,
                conn_id=conn_id,
                message_id=message_id,
                status=Status.RECEIVED,
                raw_status=event_type or "RECEIVED",
                chat_id=_phone_text(sender),
                occurred_at=_timestamp(item.get("timestamp")),
                payload=dict(item),
            )
        ]

    def _parse_delivery_report(self, conn_id: str, report: Mapping[str, Any]) -> ReceiptEvent:
        request_id = report.get("request_id")
        if not isinstance(request_id, str) or not request_id.strip():
            raise WebhookPayloadError("request_id is missing from the delivery report")
        raw_status = report.get("status")
        if not isinstance(raw_status, str) or not raw_status.strip():
            raise WebhookPayloadError("status is missing from the delivery report")
        return _delivery_event(
            conn_id=conn_id, request_id=request_id.strip(), raw_status=raw_status.strip(), report=report
        )

    def _inbound_fields(self, extra_name: str, defaults: tuple[str, ...]) -> tuple[str, ...]:
        configured = self.extra(extra_name)
        return (str(configured), *defaults) if configured else defaults

    @classmethod
    def inbound_text(cls, payload: Mapping[str, Any]) -> str:
        """An inbound message's text: Direct7 documents no inbound payload, so the usual places."""
        return first_text(payload, ("text", "body", "message", "content.text.body", "content.text"))

    # -- connection test ----------------------------------------------------------------------------

    def probe(self) -> None:
        # A report look-up of a request id that cannot exist: 404 (WHATSAPP_LOG_NOT_EXISTS) proves the
        # token was accepted; a bad token answers 401 first. Read-only: nothing is sent or charged.
        try:
            self.get_status(PROBE_REQUEST_ID)
        except VendorAPIError as exc:
            if exc.status_code == 404:
                return
            raise


def _delivery_event(
    *,
    conn_id: str,
    request_id: str,
    raw_status: str,
    report: Mapping[str, Any],
    default_chat: str = "",
) -> ReceiptEvent:
    status = STATUS_MAP.get(raw_status.lower(), Status.UNKNOWN)
    failed = status is Status.FAILED
    recipient = report.get("recipient")
    return ReceiptEvent(
        vendor=SPEC.conn_type,
        conn_id=conn_id,
        # The send operator only learns request_id, and the read sensor waits on it.
        message_id=request_id,
        status=status,
        raw_status=raw_status,
        chat_id=_phone_text(recipient) if recipient else default_chat,
        occurred_at=_timestamp(report.get("timestamp")),
        error_code=text(report.get("error_code")) if failed else "",
        error_message=text(report.get("reason") or report.get("error_message")) if failed else "",
        payload=dict(report),
    )


def _items(document: Any) -> Iterator[Mapping[str, Any]]:
    """The objects of a webhook body: itself, the elements of a list, or of a ``messages`` list."""
    if isinstance(document, list):
        if not document:
            raise WebhookPayloadError("the body is an empty list")
        for element in document:
            if not isinstance(element, Mapping):
                raise WebhookPayloadError("every element of a batch must be a JSON object")
            yield from _items(element)
        return
    if not isinstance(document, Mapping):
        raise WebhookPayloadError("the body must be a JSON object or a list of objects")
    nested = document.get("messages")
    if nested is None:
        yield document
        return
    if not isinstance(nested, list) or not nested:
        raise WebhookPayloadError("messages must be a non-empty list")
    shared = {key: value for key, value in document.items() if key != "messages"}
    for element in nested:
        if not isinstance(element, Mapping):
            raise WebhookPayloadError("every element of messages must be a JSON object")
        yield {**shared, **element}


def _describe_validation_error(entry: Any) -> str:
    """One FastAPI validation error as ``field: problem``, e.g. ``messages[0].originator: field required``."""
    if not isinstance(entry, Mapping):
        return str(entry)
    location = entry.get("loc")
    parts = [part for part in location if part != "body"] if isinstance(location, list) else []
    field = ""
    for part in parts:
        field += f"[{part}]" if isinstance(part, int) else (f".{part}" if field else str(part))
    problem = text(entry.get("msg")) or text(entry.get("type")) or "invalid"
    return f"{field}: {problem}" if field else problem


def _phone_text(value: Any) -> str:
    """A number as E.164 text where it plainly is one (``9715...`` gains its ``+``); else as given."""
    given = text(value).strip()
    compact = re.sub(r"[\s\-()]", "", given)
    return f"+{compact}" if _DIGITS_ONLY.fullmatch(compact) else given


def _timestamp(value: Any) -> datetime | None:
    # Direct7 sends unix milliseconds, as a number or (in some payloads) as digits in a string.
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    return parse_timestamp(value)


def _text_body(value: Any) -> str:
    body = require_text(value, field="body")
    if len(body) > MAX_TEXT_LENGTH:
        raise InvalidInputError("body", f"{len(body)} characters; WhatsApp accepts at most {MAX_TEXT_LENGTH}")
    return body


def _http_url(value: Any, *, field: str) -> str:
    url = require_text(value, field=field)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        # Not quoting the URL: a report URL carries the webhook token.
        raise InvalidInputError(field, "must be an http:// or https:// URL with a host")
    return url


def _path_segment(value: str) -> str:
    # Quote everything, "/" and "?" included, so an id can never change the endpoint it is sent to.
    return quote(value, safe="")


def _report_path(request_id: str) -> str:
    return f"/whatsapp/v2/report/{_path_segment(request_id)}"
