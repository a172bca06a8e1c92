"""
Sendblue (iMessage, SMS, RCS): everything vendor-specific in one place.

Auth is a pair of headers (``sb-api-key-id``, ``sb-api-secret-key``) from the connection's login and
password. Read receipts mark a whole conversation, are iMessage-only and best effort, and must be
enabled for the account by Sendblue.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

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
    WebhookAuthError,
    WebhookPayloadError,
)
from airflow_provider_readreceipts.vendors.sendblue import SPEC

STATUS_MAP: dict[str, Status] = {
    **dict.fromkeys(("QUEUED", "PENDING", "REGISTERED", "ACCEPTED"), Status.QUEUED),
    **dict.fromkeys(("SENT", "SUCCESS"), Status.SENT),
    "DELIVERED": Status.DELIVERED,
    "READ": Status.READ,
    **dict.fromkeys(("ERROR", "FAILED", "DECLINED"), Status.FAILED),
}
DEFAULT_WEBHOOK_SECRET_HEADER = "sb-signing-secret"  # noqa: S105 - a header name, not a secret


class SendblueHook(ReadReceiptsHook, spec=SPEC):
    """
    Talk to the Sendblue API.

    The connection: login is the API key id, password the API secret key, host an optional base
    URL (default ``https://api.sendblue.co``), extra ``from_number`` the default line.

    :param sendblue_conn_id: the Airflow connection of the Sendblue account.
    :param kwargs: timeouts and retry bounds, see :class:`ReadReceiptsHook`.
    """

    def __init__(self, *, sendblue_conn_id: str = SPEC.default_conn_id, **kwargs: Any) -> None:
        super().__init__(conn_id=sendblue_conn_id, **kwargs)
        self.sendblue_conn_id = sendblue_conn_id

    def _check_connection(self, conn: Any) -> None:
        if not conn.login or not conn.password:
            raise InvalidInputError(
                f"connection {conn.conn_id!r}",
                "Sendblue needs the API key id as login and the API secret key as password",
            )

    def auth_headers(self, method: str, path: str, body: bytes) -> dict[str, str]:
        conn = self._current_connection()
        return {"sb-api-key-id": conn.login or "", "sb-api-secret-key": conn.password or ""}

    def parse_error_body(self, body: Any) -> tuple[str | None, str | None, bool | None]:
        # {"status": "ERROR", "message": "..."}; send errors also carry error_code / error_message.
        if isinstance(body, dict):
            code = body.get("error_code")
            message = body.get("error_message") or body.get("message")
            return (None if code is None else str(code)), message, None
        return None, None, None

    def _from_number(self, from_number: str | None) -> str:
        return normalize_e164(from_number or self.extra("from_number"), field="from_number")

    def mark_read(self, *, number: str, from_number: str | None = None) -> dict[str, Any]:
        """
        Send a read receipt for the whole conversation with ``number``.

        :param number: the other party, E.164.
        :param from_number: your Sendblue line, E.164; defaults to the connection's ``from_number``.
        """
        body = {
            "number": normalize_e164(number, field="number"),
            "from_number": self._from_number(from_number),
        }
        return self.request("mark_read", "POST", "/api/mark-read", json_body=body, idempotent=True)

    def send_message(
        self,
        *,
        number: str,
        content: str,
        from_number: str | None = None,
        status_callback: str | None = None,
        media_url: str | None = None,
    ) -> dict[str, Any]:
        """
        Send a message; the response's ``message_handle`` is its id.

        Sendblue has no idempotency key, so a send is retried only when it surely did not reach
        Sendblue; after a timeout or a 5xx,
        :class:`~airflow_provider_readreceipts.receipts.DeliveryUnknownError` is raised instead of
        sending twice.

        :param number: the recipient, E.164.
        :param content: the text.
        :param from_number: your Sendblue line, E.164; defaults to the connection's ``from_number``.
        :param status_callback: URL that receives this message's status webhooks.
        :param media_url: URL of a picture or file to attach.
        """
        body: dict[str, Any] = {
            "number": normalize_e164(number, field="number"),
            "from_number": self._from_number(from_number),
            "content": require_text(content, field="content"),
        }
        if status_callback:
            body["status_callback"] = status_callback
        if media_url:
            body["media_url"] = media_url
        return self.request("send_message", "POST", "/api/send-message", json_body=body, idempotent=False)

    def get_status(self, message_id: str) -> dict[str, Any]:
        """
        The message as Sendblue knows it now (``status`` among others).

        :param message_id: the ``message_handle`` returned by :meth:`send_message`.
        """
        handle = require_text(message_id, field="message_id")
        return self.request("get_status", "GET", "/api/status", params={"handle": handle}, idempotent=True)

    async def aget_status(self, message_id: str) -> dict[str, Any]:
        """Async twin of :meth:`get_status`, for triggers."""
        handle = require_text(message_id, field="message_id")
        return await self.arequest("get_status", "GET", "/api/status", params={"handle": handle})

    async def afetch_receipt_events(self, *, message_id: str, chat: str = "") -> list[ReceiptEvent]:
        message = await self.aget_status(message_id)
        raw_status = str((message or {}).get("status") or "")
        status = STATUS_MAP.get(raw_status.upper(), Status.UNKNOWN)
        if not raw_status:
            return []
        return [
            ReceiptEvent(
                vendor=SPEC.conn_type,
                conn_id=self.sendblue_conn_id,
                message_id=message_id,
                status=status,
                raw_status=raw_status,
                chat_id=text(message.get("number")) or chat,
                occurred_at=parse_timestamp(message.get("date_updated")),
                error_code=text(message.get("error_code")),
                error_message=text(message.get("error_message")),
                payload=message,
            )
        ]

    def send_typing_indicator(self, *, number: str, from_number: str | None = None) -> dict[str, Any]:
        """
        Show the typing bubble to ``number``.

        :param number: the other party, E.164.
        :param from_number: your Sendblue line, E.164; defaults to the connection's ``from_number``.
        """
        body = {
            "number": normalize_e164(number, field="number"),
            "from_number": self._from_number(from_number),
        }
        return self.request(
            "send_typing_indicator", "POST", "/api/send-typing-indicator", json_body=body, idempotent=True
        )

    # -- webhooks ---------------------------------------------------------------------------------

    def verify_webhook(self, request: WebhookRequest) -> None:
        """
        Sendblue signs nothing: it sends the configured secret itself in a header.

        The header is ``sb-signing-secret`` unless the connection's ``webhook_header_name`` says
        otherwise (some set-ups use ``x-webhook-secret``).
        """
        expected = self.extra("webhook_secret")
        if not expected:
            raise WebhookAuthError(f"connection {self.sendblue_conn_id!r} has no webhook_secret configured")
        header = str(self.extra("webhook_header_name", DEFAULT_WEBHOOK_SECRET_HEADER)).lower()
        if not secrets_equal(request.headers.get(header), expected):
            raise WebhookAuthError(f"missing or wrong {header} header")

    def parse_webhook(self, request: WebhookRequest) -> list[ReceiptEvent]:
        """One event per webhook: a status change of an outbound message, or an inbound message."""
        body = request.json_object()
        # The docs name the id message_handle; older payloads (seed 001) call it message_id.
        message_id = body.get("message_handle") or body.get("message_id")
        if not isinstance(message_id, str) or not message_id:
            raise WebhookPayloadError("message_handle is missing")
        raw_status = body.get("status")
        inbound = body.get("is_outbound") is False
        if not inbound and (not isinstance(raw_status, str) or not raw_status):
            raise WebhookPayloadError("status is missing")
        status = Status.RECEIVED if inbound else STATUS_MAP.get(str(raw_status).upper(), Status.UNKNOWN)
        group = body.get("message_type") == "group" or bool(body.get("group_id"))
        number = text(body.get("number")) or text(
            body.get("from_number") if inbound else body.get("to_number")
        )
        return [
            ReceiptEvent(
                vendor=SPEC.conn_type,
                conn_id=request.conn_id,
                message_id=message_id,
                status=status,
                raw_status=str(raw_status or "RECEIVED"),
                # In a group, each reader produces its own READ, naming the reader in `number`.
                participant=number if group and status is Status.READ else "",
                chat_id=(text(body.get("group_id")) if group else number) or "",
                occurred_at=parse_timestamp(body.get("date_updated") or body.get("date_sent")),
                error_code=text(body.get("error_code")),
                error_message=text(body.get("error_message")),
                payload=body,
            )
        ]

    @classmethod
    def inbound_text(cls, payload: Mapping[str, Any]) -> str:
        """A receive webhook's ``content``."""
        return first_text(payload, ("content", "text"))

    def probe(self) -> None:
        # A status look-up of a handle that cannot exist: 404 proves the credentials were accepted.
        try:
            self.get_status("airflow-connection-test")
        except Exception as exc:
            if getattr(exc, "status_code", None) == 404:
                return
            raise
