"""
Send a message and return its reference, for the read sensor to wait on.

Every send operator returns a :class:`~airflow_provider_readreceipts.receipts.MessageRef`
(``vendor``, ``conn_id``, ``message_id``, ``chat``, ``sent_at``), which the read sensor accepts as
it is through XCom.

**No task retry sends a message twice.** One task instance (DAG, run, task, map index) sends at
most one message, however often Airflow runs it:

- Chert takes an idempotency key: the operator derives one from the DAG id, run id, task id and
  map index (:func:`idempotency_key_for`), the same on every try, and Chert answers a repeated
  request with the original message.
- Sendblue, RyzeAPI and Direct7 take none. Before the request goes out, the operator records "sending"
  in the task instance's state store (``context["task_state_store"]``, Airflow 3.3+, kept across
  tries of the same task instance), and "sent" with the message reference once the vendor accepted.
  On a later try:

  - "sent": the message went out; the stored reference is returned and nothing is sent again.
  - "sending": an earlier try may or may not have sent it (the worker died, or the answer was lost).
    The task fails at once, without retrying, asking you to check the vendor instead.

  Within a try, an answer that proves nothing was sent (a 4xx refusal, a 429, a refused connection)
  clears the record, so Airflow's retry sends normally. An unknown outcome (a timeout, a dropped
  connection or a 5xx after the request went out: the hook's ``DeliveryUnknownError``) fails the
  task without retrying.

  To send anyway after checking the vendor, delete the state key ``readreceipts.send`` of that task
  instance (REST API: ``DELETE /api/v2/dags/<dag_id>/dagRuns/<run_id>/taskInstances/<task_id>/
  state-store/readreceipts.send?map_index=<n>``), then clear the task. Clearing alone does not
  delete it: a cleared task that had sent returns the stored reference.

Where the vendor takes a status callback (Sendblue ``status_callback``, Direct7 ``report_url``), the
operator fills it from the connection's ``receiver_url`` extra unless the task gives one (an empty
string sends none). Direct7 signs nothing, so its report URL carries the connection's
``webhook_token`` as the ``token`` query parameter; that URL is a secret and is never logged.

Hooks are imported when a task runs, never at DAG parse time.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, ClassVar, cast

from airflow_provider_readreceipts.operators._base import HookT, VendorOperator
from airflow_provider_readreceipts.operators._common import invalid_input_fails_task
from airflow_provider_readreceipts.receipts import (
    DeliveryUnknownError,
    InvalidInputError,
    MessageRef,
    VendorAPIError,
)
from airflow_provider_readreceipts.vendors.chert import SPEC as CHERT
from airflow_provider_readreceipts.vendors.direct7 import SPEC as DIRECT7
from airflow_provider_readreceipts.vendors.ryze import SPEC as RYZE
from airflow_provider_readreceipts.vendors.sendblue import SPEC as SENDBLUE

if TYPE_CHECKING:
    from airflow.sdk import Context

    # Named in the operators' base-class type parameters (strings, so nothing is imported at parse
    # time), which ruff does not count as uses.
    from airflow_provider_readreceipts.hooks.chert import ChertHook  # noqa: F401
    from airflow_provider_readreceipts.hooks.direct7 import Direct7Hook  # noqa: F401
    from airflow_provider_readreceipts.hooks.ryze import RyzeHook  # noqa: F401
    from airflow_provider_readreceipts.hooks.sendblue import SendblueHook  # noqa: F401


__all__ = [
    "SEND_STATE_KEY",
    "ChertSendMessageOperator",
    "Direct7SendMessageOperator",
    "RyzeSendMessageOperator",
    "SendblueSendMessageOperator",
    "idempotency_key_for",
]

#: The task state store key that records a send across the tries of one task instance.
SEND_STATE_KEY = "readreceipts.send"
_SENDING = "sending"
_SENT = "sent"


def idempotency_key_for(*, dag_id: str, run_id: str, task_id: str, map_index: int | None) -> str:
    """
    The idempotency key of the message a task instance sends: the same on every try of it, and
    different for every other task instance (another run, task or map index).
    """
    identity = "\n".join((dag_id, run_id, task_id, str(-1 if map_index is None else map_index)))
    return "airflow-" + hashlib.sha256(identity.encode()).hexdigest()[:40]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


class _SendMessageOperator(VendorOperator[HookT]):
    """Base of the send operators: the send record that keeps retries from sending twice."""

    #: Whether the send record guards retries; off where the vendor dedups (idempotency key).
    guard_retries: ClassVar[bool] = True

    def prepare(self, context: Context) -> Callable[[], MessageRef]:
        """
        Check every argument and return the call that sends; raise ``InvalidInputError`` for bad
        input. Makes no HTTP call, so bad input fails before anything is recorded or sent.
        """
        raise NotImplementedError

    def execute(self, context: Context) -> MessageRef:
        from airflow.sdk.exceptions import AirflowFailException

        store = context.get("task_state_store") if self.guard_retries else None
        if self.guard_retries and store is None:
            self.log.warning(
                "No task_state_store in the context (Airflow < 3.3?): a retry after a lost worker "
                "cannot tell whether the message went out"
            )
        if store is not None:
            previous = store.get(SEND_STATE_KEY)
            if isinstance(previous, dict) and previous.get("state") == _SENT:
                self.log.info("An earlier try sent this message; returning its reference, not sending again")
                return cast("MessageRef", previous["message_ref"])
            if previous is not None:
                raise AirflowFailException(self._previous_try_message(context, previous))

        with invalid_input_fails_task():
            send = self.prepare(context)

        ti = context["ti"]
        if store is not None:
            store.set(SEND_STATE_KEY, {"state": _SENDING, "try_number": ti.try_number, "started_at": _now()})
        try:
            ref = send()
        except InvalidInputError as exc:
            self._forget(store)
            raise AirflowFailException(f"invalid {exc}") from exc
        except DeliveryUnknownError as exc:
            raise AirflowFailException(
                f"{exc} The task fails without retrying: check {self.vendor_name} before sending it again."
            ) from exc
        except VendorAPIError:
            # A refusal or a request that never reached the vendor: nothing was sent, a retry may send.
            self._forget(store)
            raise
        # Anything else may have happened after the request went out: the "sending" record stays.
        if store is not None:
            store.set(SEND_STATE_KEY, {"state": _SENT, "message_ref": cast("dict[str, Any]", ref)})
        self.log.info("%s accepted message %s to %s", self.vendor_name, ref["message_id"], ref["chat"])
        return ref

    def _forget(self, store: Any) -> None:
        if store is not None:
            store.delete(SEND_STATE_KEY)

    def _previous_try_message(self, context: Context, previous: Any) -> str:
        ti = context["ti"]
        when = previous.get("started_at", "?") if isinstance(previous, dict) else "?"
        which = previous.get("try_number", "?") if isinstance(previous, dict) else "?"
        map_index = ti.map_index if ti.map_index is not None else -1
        return (
            f"Try {which} of this task started sending this message at {when} and its outcome is "
            f"unknown (the worker stopped or the answer was lost), so it was not sent again. Check "
            f"{self.vendor_name}'s dashboard or status API. To send it anyway, delete the task state "
            f"key {SEND_STATE_KEY!r} (DELETE /api/v2/dags/{ti.dag_id}/dagRuns/{ti.run_id}/taskInstances/"
            f"{ti.task_id}/state-store/{SEND_STATE_KEY}?map_index={map_index}) and clear the task."
        )

    def _ref(self, message_id: Any, chat: str, response: Any, id_field: str, *, recipient: str) -> MessageRef:
        if not isinstance(message_id, str) or not message_id:
            from airflow.sdk.exceptions import AirflowFailException

            # The vendor accepted the request, so the message most likely went out: never re-send.
            raise AirflowFailException(
                f"{self.vendor_name} accepted the message but its response has no {id_field}, so there "
                f"is nothing to wait on; it is not sent again. Response fields: {sorted(response or {})}"
            )
        return MessageRef(
            vendor=self.vendor,
            conn_id=self.conn_id,
            message_id=message_id,
            chat=chat,
            recipient=recipient,
            sent_at=_now(),
        )


class SendblueSendMessageOperator(_SendMessageOperator["SendblueHook"]):
    """
    Send an iMessage (or SMS/RCS) through Sendblue; returns its message reference.

    Sendblue has no idempotency key: retries are guarded by the send record (see the module).

    :param number: the recipient, E.164 (templated).
    :param content: the text (templated).
    :param from_number: your Sendblue line, E.164 (templated); defaults to the connection's
        ``from_number`` extra.
    :param status_callback: URL for this message's status webhooks (templated); defaults to the
        connection's ``receiver_url`` extra; ``""`` sends none.
    :param media_url: URL of a picture or file to attach (templated).
    :param sendblue_conn_id: the Sendblue connection (templated).
    """

    vendor = SENDBLUE.conn_type
    template_fields: Sequence[str] = (
        "number",
        "content",
        "from_number",
        "status_callback",
        "media_url",
        "sendblue_conn_id",
    )

    def __init__(
        self,
        *,
        number: str,
        content: str,
        from_number: str | None = None,
        status_callback: str | None = None,
        media_url: str | None = None,
        sendblue_conn_id: str = SENDBLUE.default_conn_id,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.number = number
        self.content = content
        self.from_number = from_number
        self.status_callback = status_callback
        self.media_url = media_url
        self.sendblue_conn_id = sendblue_conn_id

    def prepare(self, context: Context) -> Callable[[], MessageRef]:
        from airflow_provider_readreceipts.hooks.base import normalize_e164, require_text

        hook = self.hook
        number = normalize_e164(self.number, field="number")
        content = require_text(self.content, field="content")
        line = normalize_e164(self.from_number or hook.extra("from_number"), field="from_number")
        callback = self.status_callback if self.status_callback is not None else hook.extra("receiver_url")

        def send() -> MessageRef:
            response = hook.send_message(
                number=number,
                content=content,
                from_number=line,
                status_callback=callback or None,
                media_url=self.media_url or None,
            )
            return self._ref(
                (response or {}).get("message_handle"), number, response, "message_handle", recipient=number
            )

        return send


class ChertSendMessageOperator(_SendMessageOperator["ChertHook"]):
    """
    Send an iMessage through Chert; returns its message reference (``chat`` is Chert's chat id).

    Every request carries an idempotency key, derived by default from the DAG id, run id, task id
    and map index (:func:`idempotency_key_for`): a retry repeats the same request and Chert answers
    it with the original message instead of sending another.

    :param phone: the recipient, E.164 (templated).
    :param body: the text (templated).
    :param idempotency_key: your own key (templated); unique per message.
    :param chert_conn_id: the Chert connection (templated).
    """

    vendor = CHERT.conn_type
    guard_retries = False
    template_fields: Sequence[str] = ("phone", "body", "idempotency_key", "chert_conn_id")

    def __init__(
        self,
        *,
        phone: str,
        body: str,
        idempotency_key: str | None = None,
        chert_conn_id: str = CHERT.default_conn_id,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.phone = phone
        self.body = body
        self.idempotency_key = idempotency_key
        self.chert_conn_id = chert_conn_id

    def prepare(self, context: Context) -> Callable[[], MessageRef]:
        from airflow_provider_readreceipts.hooks.base import normalize_e164, require_text

        phone = normalize_e164(self.phone, field="phone")
        body = require_text(self.body, field="body")
        if self.idempotency_key is not None:
            key = require_text(self.idempotency_key, field="idempotency_key")
        else:
            ti = context["ti"]
            key = idempotency_key_for(
                dag_id=ti.dag_id, run_id=ti.run_id, task_id=ti.task_id, map_index=ti.map_index
            )
        hook = self.hook

        def send() -> MessageRef:
            response = hook.send_message(phone=phone, body=body, idempotency_key=key)
            chat = str((response or {}).get("lead_id") or "")
            return self._ref(
                (response or {}).get("message_id"), chat, response, "message_id", recipient=phone
            )

        return send


class RyzeSendMessageOperator(_SendMessageOperator["RyzeHook"]):
    """
    Send a WhatsApp text through RyzeAPI; returns its message reference.

    RyzeAPI has no idempotency key: retries are guarded by the send record (see the module). Status
    webhooks are configured per instance at RyzeAPI, not per message.

    :param number: the recipient: an E.164 phone number or a JID (templated).
    :param message: the text (templated).
    :param ryze_conn_id: the RyzeAPI connection (templated).
    """

    vendor = RYZE.conn_type
    template_fields: Sequence[str] = ("number", "message", "ryze_conn_id")

    def __init__(
        self, *, number: str, message: str, ryze_conn_id: str = RYZE.default_conn_id, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.number = number
        self.message = message
        self.ryze_conn_id = ryze_conn_id

    def prepare(self, context: Context) -> Callable[[], MessageRef]:
        from airflow_provider_readreceipts.hooks.base import require_text
        from airflow_provider_readreceipts.hooks.ryze import normalize_recipient, sent_message_id
        from airflow_provider_readreceipts.identity import normalize_identity

        chat = normalize_recipient(self.number, field="number")
        text = require_text(self.message, field="message")
        hook = self.hook

        def send() -> MessageRef:
            response = hook.send_message(number=chat, message=text)
            return self._ref(
                sent_message_id(response), chat, response, "messageId", recipient=normalize_identity(chat)
            )

        return send


class Direct7SendMessageOperator(_SendMessageOperator["Direct7Hook"]):
    """
    Send a WhatsApp text through Direct7; returns its message reference (the id is the
    ``request_id``, which Direct7's reports and status API name).

    Direct7 has no idempotency key: retries are guarded by the send record (see the module).

    :param number: the recipient, E.164 (templated).
    :param body: the text (templated).
    :param originator: your WhatsApp business number, E.164 (templated); defaults to the
        connection's ``originator`` extra.
    :param report_url: URL for this message's delivery reports (templated), used as given.
        Defaults to the connection's ``receiver_url`` with its ``webhook_token`` as the ``token``
        query parameter (Direct7 signs nothing; the token is what the receiver checks); ``""``
        sends none (Direct7 then uses the callback URL set in its dashboard).
    :param direct7_conn_id: the Direct7 connection (templated).
    """

    vendor = DIRECT7.conn_type
    template_fields: Sequence[str] = ("number", "body", "originator", "report_url", "direct7_conn_id")

    def __init__(
        self,
        *,
        number: str,
        body: str,
        originator: str | None = None,
        report_url: str | None = None,
        direct7_conn_id: str = DIRECT7.default_conn_id,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.number = number
        self.body = body
        self.originator = originator
        self.report_url = report_url
        self.direct7_conn_id = direct7_conn_id

    def prepare(self, context: Context) -> Callable[[], MessageRef]:
        from airflow_provider_readreceipts.hooks.base import normalize_e164, require_text

        hook = self.hook
        number = normalize_e164(self.number, field="number")
        body = require_text(self.body, field="body")
        originator = normalize_e164(self.originator or hook.extra("originator"), field="originator")
        report_url = self.report_url if self.report_url is not None else hook.report_url_from_connection()

        def send() -> MessageRef:
            response = hook.send_message(
                number=number, body=body, originator=originator, report_url=report_url or None
            )
            return self._ref(
                (response or {}).get("request_id"), number, response, "request_id", recipient=number
            )

        return send
