"""
The deferred wait for a read receipt: :class:`ReadReceiptTrigger`.

It is what the read sensor
(:class:`~airflow_provider_readreceipts.sensors.read_receipt.ReadReceiptSensor`) defers to. Its
waits share one poller per store in the triggerer (see :mod:`._poller`), so 10,000 deferred
sensors cost one store query per interval, not 10,000.

:class:`~.events.ReceiptEventTrigger`, the event trigger for asset watchers, lives in
:mod:`.events`; it is importable from here too, as it always was.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_provider_readreceipts.triggers._replies import result_fields
from airflow_provider_readreceipts.triggers._store_url import cached_store_url
from airflow_provider_readreceipts.triggers.events import ReceiptEventTrigger, event_payload
from airflow_provider_readreceipts.waits import (
    FAULT_CONFIGURATION,
    FAULT_INTERNAL,
    FAULT_NO_SOURCE,
    FAULT_STORE,
    ReadReceiptWaitError,
    WaitErrorEvent,
    WaitPolicy,
    WaitResult,
    as_utc,
    result,
)

if TYPE_CHECKING:
    from airflow_provider_readreceipts.triggers._poller import StorePoller
    from airflow_provider_readreceipts.triggers._replies import ReplyRequest

__all__ = ["DEFAULT_STORE_ERROR_GRACE", "ReadReceiptTrigger", "ReceiptEventTrigger", "event_payload"]

log = logging.getLogger(__name__)

#: Seconds the store may stay unreachable before the waits on it fail (a short outage is retried).
DEFAULT_STORE_ERROR_GRACE = 60.0


class ReadReceiptTrigger(BaseTrigger):
    """
    Wait until a message is read (by the group policy) or answered, fails at the vendor, or its
    deadline passes.

    Fires exactly one event whose payload is the sensor's result (``outcome`` ``"read"``,
    ``"replied"``, ``"unread"`` or ``"failed"``), or ``{"outcome": "error", "kind": ..., "error":
    ...}`` for a fault of our own, which the sensor turns into a task failure. The deadline is
    enforced here, not by Airflow's trigger timeout (``dag.test()`` runs triggers without one).

    :param conn_id: the vendor connection of the message.
    :param message_id: the vendor's message id.
    :param vendor: the vendor (connection type), for reconcile.
    :param deadline: when the wait ends "unread", ISO 8601 UTC (absolute: a re-deferral or a retry
        never moves it).
    :param chat: the conversation (Chert's reconcile needs it).
    :param sent_at: when the message was sent, ISO 8601 UTC (for time-to-read).
    :param policy: the group policy, :meth:`WaitPolicy.to_kwargs` form; default: any reader.
    :param poll_interval: seconds between store queries (shared: the smallest among the waits wins).
    :param reconcile_interval: seconds between vendor status look-ups; ``None`` turns reconcile off.
    :param reconcile_rate_per_minute: the connection's budget of status look-ups a minute; default
        per vendor (RyzeAPI's documented 100 a minute less a margin; 30 for the others).
    :param store_conn_id: the store's Airflow connection; ``None``: ``readreceipts_store_default``
        when defined, else the SQLite file.
    :param store_path: the SQLite file when no store connection is used.
    :param store_error_grace: seconds the store may stay unreachable before the wait fails.
    :param until: ``"read"`` (a READ or a reply ends the wait) or ``"reply"`` (only a reply does).
    :param recipient: who the message went to, by identity (E.164, a group id); in the result.
    :param chat_key: the conversation by identity, which replies are matched by; ``""`` turns
        replies off (a wait from an older sensor).
    :param reply_choices: label -> regular expression (already checked by the sensor).
    :param reply_from: in a group, the participants (identities) whose reply counts; empty for all.
    """

    def __init__(
        self,
        *,
        conn_id: str,
        message_id: str,
        vendor: str,
        deadline: str,
        chat: str = "",
        sent_at: str | None = None,
        policy: dict[str, Any] | None = None,
        poll_interval: float = 5.0,
        reconcile_interval: float | None = None,
        reconcile_rate_per_minute: float | None = None,
        store_conn_id: str | None = None,
        store_path: str | None = None,
        store_error_grace: float = DEFAULT_STORE_ERROR_GRACE,
        until: str = "read",
        recipient: str = "",
        chat_key: str = "",
        reply_choices: dict[str, str] | None = None,
        reply_from: list[str] | None = None,
    ) -> None:
        super().__init__()
        self.conn_id = conn_id
        self.message_id = message_id
        self.vendor = vendor
        self.deadline = deadline
        self.chat = chat
        self.sent_at = sent_at
        self.policy = policy or WaitPolicy("any").to_kwargs()
        self.poll_interval = poll_interval
        self.reconcile_interval = reconcile_interval
        self.reconcile_rate_per_minute = reconcile_rate_per_minute
        self.store_conn_id = store_conn_id
        self.store_path = store_path
        self.store_error_grace = store_error_grace
        self.until = until
        self.recipient = recipient
        self.chat_key = chat_key
        self.reply_choices = dict(reply_choices or {})
        self.reply_from = list(reply_from or [])
        self._leases: list[StorePoller] = []

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "conn_id": self.conn_id,
                "message_id": self.message_id,
                "vendor": self.vendor,
                "deadline": self.deadline,
                "chat": self.chat,
                "sent_at": self.sent_at,
                "policy": self.policy,
                "poll_interval": self.poll_interval,
                "reconcile_interval": self.reconcile_interval,
                "reconcile_rate_per_minute": self.reconcile_rate_per_minute,
                "store_conn_id": self.store_conn_id,
                "store_path": self.store_path,
                "store_error_grace": self.store_error_grace,
                "until": self.until,
                "recipient": self.recipient,
                "chat_key": self.chat_key,
                "reply_choices": self.reply_choices,
                "reply_from": self.reply_from,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        # Everything is released before the event is yielded: dag.test() takes the first event
        # and never resumes the generator, and the triggerer may not either.
        try:
            payload = await self._wait()
        finally:
            await self._release()
        yield TriggerEvent(payload)

    async def cleanup(self) -> None:
        # run() releases on every path; this covers a run cancelled at an unusual point.
        await self._release()

    async def _release(self) -> None:
        from airflow_provider_readreceipts.triggers._poller import release_poller

        while self._leases:
            poller = self._leases.pop()
            if not poller.closed:
                await release_poller(poller)

    def _reply_request(self) -> ReplyRequest | None:
        if not self.chat_key or not self.sent_at:
            return None
        from airflow_provider_readreceipts.replies import compile_choices
        from airflow_provider_readreceipts.triggers._replies import ReplyRequest

        return ReplyRequest(
            chat_key=self.chat_key,
            sent_at=as_utc(self.sent_at, field="sent_at"),
            senders=frozenset(self.reply_from),
            choices=compile_choices(self.reply_choices),
        )

    async def _wait(self) -> WaitResult | WaitErrorEvent:
        from airflow_provider_readreceipts.store import StoreError
        from airflow_provider_readreceipts.triggers._poller import acquire_poller

        try:
            deadline = as_utc(self.deadline, field="deadline")
            policy = WaitPolicy.from_kwargs(self.policy)
            url = await cached_store_url(self.store_conn_id, self.store_path)
            poller = acquire_poller(url)
            self._leases.append(poller)
            try:
                has_receiver = await poller.receiver_seen()
            except StoreError as exc:
                raise ReadReceiptWaitError(FAULT_CONFIGURATION, str(exc)) from None
            except Exception as exc:
                raise ReadReceiptWaitError(
                    FAULT_STORE, f"the receipt store could not be read: {type(exc).__name__}: {exc}"
                ) from None
            if not has_receiver and not self.reconcile_interval:
                raise ReadReceiptWaitError(
                    FAULT_NO_SOURCE,
                    f"no webhook receiver has ever written to the receipt store {poller.display_url},"
                    " and reconcile is off: nothing could ever report this message as read. Point the"
                    " sensor at the store the receiver writes to (store_conn_id / store_path), start the"
                    " receiver, or turn reconcile on.",
                )
            wait = poller.register(
                (self.conn_id, self.message_id),
                vendor=self.vendor,
                chat=self.chat,
                policy=policy,
                deadline=deadline.timestamp(),
                poll_interval=float(self.poll_interval),
                reconcile_interval=float(self.reconcile_interval) if self.reconcile_interval else None,
                reconcile_rate_per_minute=self.reconcile_rate_per_minute,
                has_receiver=has_receiver,
                store_error_grace=float(self.store_error_grace),
                until=self.until,
                replies=self._reply_request(),
            )
            try:
                end = await wait.future
            finally:
                poller.unregister(wait)
        except ReadReceiptWaitError as fault:
            self.log.error("read-receipt wait for %s/%s failed: %s", self.conn_id, self.message_id, fault)
            return fault.to_event()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug or an unexpected library error: fail, never "unread"
            self.log.exception("read-receipt wait for %s/%s crashed", self.conn_id, self.message_id)
            return ReadReceiptWaitError(FAULT_INTERNAL, f"{type(exc).__name__}: {exc}").to_event()
        payload = result(
            end.outcome,
            end.status,
            vendor=self.vendor,
            conn_id=self.conn_id,
            message_id=self.message_id,
            chat=self.chat,
            sent_at=self.sent_at,
            deadline=deadline,
            checked_at=end.checked_at,
            recipient=self.recipient,
            until=self.until,
            reply=result_fields(end.reply, self.sent_at) if end.reply is not None else None,
            note=end.note,
        )
        self.log.info(
            "message %s/%s: %s (status %s)", self.conn_id, self.message_id, end.outcome, payload["status"]
        )
        return payload


# -- the event trigger -------------------------------------------------------------------------------
