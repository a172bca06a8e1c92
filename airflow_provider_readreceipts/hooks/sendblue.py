"""
Sendblue (iMessage, SMS, RCS): everything vendor-specific in one place.

Auth is a pair of headers (``sb-api-key-id``, ``sb-api-secret-key``) from the connection's login and
password. Read receipts mark a whole conversation, are iMessage-only and best effort, and must be
enabled for the account by Sendblue.
"""

from __future__ import annotations

from typing import Any

from airflow_provider_readreceipts.hooks.base import ReadReceiptsHook, normalize_e164, require_text
from airflow_provider_readreceipts.receipts import InvalidInputError


class SendblueHook(ReadReceiptsHook):
    """
    Talk to the Sendblue API.

    The connection: login is the API key id, password the API secret key, host an optional base
    URL (default ``https://api.sendblue.co``), extra ``from_number`` the default line.

    :param sendblue_conn_id: the Airflow connection of the Sendblue account.
    :param kwargs: timeouts and retry bounds, see :class:`ReadReceiptsHook`.
    """

    conn_name_attr = "sendblue_conn_id"
    default_conn_name = "sendblue_default"
    conn_type = "sendblue"
    hook_name = "Sendblue (iMessage)"
    vendor_name = "Sendblue"
    default_base_url = "https://api.sendblue.co"
    secret_extras = ("webhook_secret",)

    def __init__(self, *, sendblue_conn_id: str = default_conn_name, **kwargs: Any) -> None:
        super().__init__(conn_id=sendblue_conn_id, **kwargs)
        self.sendblue_conn_id = sendblue_conn_id

    def _check_connection(self, conn: Any) -> None:
        if not conn.login or not conn.password:
            raise InvalidInputError(
                f"connection {conn.conn_id!r}",
                "Sendblue needs the API key id as login and the API secret key as password",
            )

    def auth_headers(self, method: str, path: str, body: bytes) -> dict[str, str]:
        conn = self.connection
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

    def probe(self) -> None:
        # A status look-up of a handle that cannot exist: 404 proves the credentials were accepted.
        try:
            self.get_status("airflow-connection-test")
        except Exception as exc:
            if getattr(exc, "status_code", None) == 404:
                return
            raise
