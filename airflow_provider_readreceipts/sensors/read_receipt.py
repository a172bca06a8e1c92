"""
Wait until a sent message is read, with three outcomes a DAG can branch on.

Light to import on purpose (the scheduler imports sensor modules at every DAG parse): the store
(SQLAlchemy), the hooks (aiohttp) and the trigger are imported only when the task runs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, NoReturn, cast

from airflow.sdk import BaseSensorOperator, PokeReturnValue

from airflow_provider_readreceipts.receipts import InvalidInputError, ReadReceiptsError
from airflow_provider_readreceipts.replies import compile_choices
from airflow_provider_readreceipts.sensors._target import (
    MessageTarget,
    literal,
    reconcile_required,
    resolve_target,
    templated,
)
from airflow_provider_readreceipts.waits import (
    FAULT_CONFIGURATION,
    FAULT_NO_SOURCE,
    OUTCOME_REPLIED,
    OUTCOME_UNREAD,
    OUTCOMES,
    UNTIL,
    UNTIL_READ,
    ReadReceiptWaitError,
    WaitPolicy,
    WaitResult,
    as_utc,
    deadline_outcome,
    reads_by_polling_only,
    result,
    seconds,
    verdict,
)

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_provider_readreceipts.receipts import MessageRef
    from airflow_provider_readreceipts.store import ReceiptStore

#: Slack on top of the deadline for Airflow's own timeout of a deferral or a poke loop. It only
#: fires when the trigger could not report at all (a triggerer down for that long): the task then
#: fails, as a fault of ours must, rather than ending "unread".
TIMEOUT_SLACK = timedelta(minutes=15)


class ReadReceiptSensor(BaseSensorOperator):
    """
    Wait until a message is read, fails at the vendor, or its deadline passes; never confuse the three.

    The task ends **green** on each of them and returns (to XCom) a dict to branch on:

    - ``outcome``: ``"read"`` (by the group policy ``wait_for``), ``"unread"`` (the deadline passed
      first) or ``"failed"`` (the vendor reported FAILED: the wait ends at once, not at the deadline);
    - ``status``, ``raw_status``, ``read_at``, ``time_to_read_seconds`` (from ``sent_at``),
      ``readers`` (group participants who read), ``learned_via`` (``"webhook"`` or ``"reconcile"``),
      ``failure_code`` and ``failure_reason`` (the vendor's, for ``"failed"``), ``vendor``,
      ``conn_id``, ``message_id``, ``chat``, ``sent_at``, ``deadline``, ``checked_at``, ``note``.

    A fault of our own **fails the task** and is never reported as "unread" (which would set off an
    escalation for a message that may well have been read): the receipt store unreachable, a store
    no webhook receiver ever wrote to while reconcile is off, or bad configuration. Airflow's
    ``soft_fail``, ``never_fail`` and ``silent_fail`` would turn those into skips or "unread" and are
    refused.

    The deadline is absolute: ``deadline``, or ``read_within`` counted from the reference's
    ``sent_at``. Deferring again, rescheduling or retrying the task never extends it; the sensor's
    own ``timeout`` is derived from it. Branch downstream on the outcome::

        from datetime import timedelta

        from airflow.sdk import task

        wait = ReadReceiptSensor(
            task_id="wait_for_read",
            message=send.output,  # the MessageRef a send operator returned
            read_within=timedelta(hours=4),
        )


        @task.branch
        def route(result: dict) -> str:
            return {"read": "follow_up", "unread": "call", "failed": "other_channel"}[result["outcome"]]


        route(wait.output) >> [follow_up, call, other_channel]

    Modes: deferrable (default when ``[operators] default_deferrable`` is on; recommended: thousands
    of waits share one store query per interval in the triggerer), ``poke`` or ``reschedule``.

    :param message: the message reference (``MessageRef``) a send operator returned: an XComArg
        (``send.output``), a dict, or a template rendering to one (``"{{ ti.xcom_pull('send') }}"``).
    :param conn_id: instead of ``message``: the vendor connection.
    :param message_id: instead of ``message``: the vendor's message id.
    :param vendor: the vendor (connection type); read from the reference or the connection if not given.
    :param chat: the conversation (needed for Chert's reconcile); from the reference if not given.
    :param sent_at: when the message was sent (ISO 8601 or datetime), for ``read_within`` and
        time-to-read; from the reference if not given.
    :param deadline: when the wait ends "unread": an absolute datetime (or ISO 8601 text).
    :param read_within: instead of ``deadline``: a ``timedelta`` (or seconds) after ``sent_at``.
    :param wait_for: group chats: ``"any"`` reader (default), ``"all"`` (needs ``participants``), an
        int N (at least N distinct readers) or a list of participants who must all read.
    :param participants: everyone in the group chat, for ``wait_for="all"``.
    :param poll_interval: seconds (or ``timedelta``) between store reads; in the triggerer one read
        serves every wait. Also the poke interval in ``poke`` mode unless ``poke_interval`` is given.
    :param reconcile_interval: seconds (or ``timedelta``) between look-ups at the vendor's status API,
        for lost webhooks and for vendors (Chert) whose reads are only visible that way. ``None``
        turns reconcile off (not allowed for Chert). What reconcile learns is recorded in the store.
    :param reconcile_rate_per_minute: the connection's budget of status look-ups per minute in one
        triggerer (shared by all its waits, nearest deadline first); default per vendor.
    :param store_conn_id: the receipt store's connection (PostgreSQL); by default
        ``readreceipts_store_default`` when it exists, else the SQLite file.
    :param store_path: the SQLite file when no store connection is used; by default
        ``READRECEIPTS_STORE_PATH`` or ``$AIRFLOW_HOME/readreceipts.db``.
    :param store_error_grace: seconds the store may stay unreachable before the wait fails.
    :param deferrable: defer to the triggerer; default ``[operators] default_deferrable``.
    """

    template_fields: Sequence[str] = (
        "message",
        "conn_id",
        "message_id",
        "vendor",
        "chat",
        "sent_at",
        "deadline",
        "wait_for",
        "participants",
        "store_conn_id",
        "store_path",
    )
    ui_color = "#d7f0e4"

    def __init__(
        self,
        *,
        message: MessageRef | Mapping[str, Any] | str | None = None,
        conn_id: str | None = None,
        message_id: str | None = None,
        vendor: str | None = None,
        chat: str | None = None,
        sent_at: datetime | str | None = None,
        deadline: datetime | str | None = None,
        read_within: timedelta | float | None = None,
        wait_for: str | int | Sequence[str] = "any",
        participants: Sequence[str] | None = None,
        poll_interval: timedelta | float = 5.0,
        reconcile_interval: timedelta | float | None = 120.0,
        reconcile_rate_per_minute: float | None = None,
        store_conn_id: str | None = None,
        store_path: str | None = None,
        store_error_grace: timedelta | float = 60.0,
        until: str = UNTIL_READ,
        reply_choices: Mapping[str, str] | None = None,
        mark_reply_read: bool = False,
        deferrable: bool | None = None,
        **kwargs: Any,
    ) -> None:
        for flag in ("soft_fail", "never_fail", "silent_fail"):
            if kwargs.get(flag):
                raise ValueError(
                    f"ReadReceiptSensor does not support {flag}=True: it would turn a fault of our own "
                    '(receipt store down, misconfiguration) into a skip or an "unread" outcome. '
                    "Branch on the returned outcome instead."
                )
        poll = seconds(poll_interval, field="poll_interval")
        reconcile = seconds(reconcile_interval, field="reconcile_interval", allow_none=True)
        assert poll is not None
        if "poke_interval" not in kwargs:
            # Reschedule mode frees the worker between pokes and reconciles at each one.
            mode = kwargs.get("mode", "poke")
            kwargs["poke_interval"] = max(poll, reconcile or 0.0) if mode == "reschedule" else poll
        super().__init__(**kwargs)
        if message is None and not (conn_id and message_id):
            raise ValueError("ReadReceiptSensor needs message=<MessageRef> or both conn_id and message_id")
        if (deadline is None) == (read_within is None):
            raise ValueError("ReadReceiptSensor needs exactly one of deadline= and read_within=")
        if until not in UNTIL:
            raise ValueError(f"until must be one of {', '.join(UNTIL)}, not {until!r}")
        # Compiled now: an invalid expression fails the DAG's parse (or the task's start, when
        # rendered), naming its label, never in the triggerer.
        compile_choices(reply_choices)
        self.until = until
        self.reply_choices = dict(reply_choices or {})
        self.mark_reply_read = mark_reply_read
        self.message = message
        self.conn_id = conn_id
        self.message_id = message_id
        self.vendor = vendor
        self.chat = chat
        self.sent_at = sent_at
        self.deadline = deadline
        self.read_within = seconds(read_within, field="read_within", allow_none=True)
        self.wait_for = wait_for
        self.participants = participants
        self.poll_interval = poll
        self.reconcile_interval = reconcile
        self.reconcile_rate_per_minute = reconcile_rate_per_minute
        self.store_conn_id = store_conn_id
        self.store_path = store_path
        self.store_error_grace = seconds(store_error_grace, field="store_error_grace")
        if deferrable is None:
            from airflow.sdk.configuration import conf

            deferrable = conf.getboolean("operators", "default_deferrable", fallback=False)
        self.deferrable = deferrable
        # Checked now when written literally, so a DAG with a typo fails at parse time.
        if not templated(wait_for):
            literal_participants = literal(participants) if not templated(participants) else ["?"]
            WaitPolicy.parse(literal(wait_for), literal_participants, identities=False)
        if isinstance(vendor, str) and reads_by_polling_only(vendor) and reconcile is None:
            raise ValueError(reconcile_required(vendor))
        self._target: MessageTarget | None = None
        self._store: ReceiptStore | None = None
        self._has_receiver: bool | None = None
        self._reconcile_ok = False
        self._reconcile_error: str | None = None
        self._last_reconcile: float | None = None

    # -- execute ----------------------------------------------------------------------------------

    def execute(self, context: Context) -> Any:
        target = self._resolve_target(context)
        self._target = target
        now = datetime.now(timezone.utc)
        self.log.info(
            "waiting for %s/%s (%s) to be read by %s readers (until %s); deadline %s",
            target.conn_id,
            target.message_id,
            target.vendor,
            target.policy.kind,
            self.until,
            target.deadline.isoformat(),
        )
        self._register(target)
        if self.deferrable:
            self._defer(target, now)
        # Poke and reschedule modes: the deadline, not Airflow's timeout, ends the wait as "unread";
        # the timeout is only a backstop, counted from when this try started waiting.
        started = now
        if self.reschedule:
            first = context["ti"].get_first_reschedule_date(context)
            started = as_utc(first, field="first_reschedule_date") if first else now
        self.timeout = ((target.deadline - started) + TIMEOUT_SLACK).total_seconds()
        try:
            return super().execute(context)
        finally:
            if self._store is not None:
                self._store.close()
                self._store = None

    def _defer(self, target: MessageTarget, now: datetime) -> None:
        from airflow_provider_readreceipts.triggers.read_receipt import ReadReceiptTrigger

        trigger = ReadReceiptTrigger(
            conn_id=target.conn_id,
            message_id=target.message_id,
            vendor=target.vendor,
            deadline=target.deadline.isoformat(),
            chat=target.chat,
            sent_at=target.sent_at,
            policy=target.policy.to_kwargs(),
            poll_interval=self.poll_interval,
            reconcile_interval=self.reconcile_interval,
            reconcile_rate_per_minute=self.reconcile_rate_per_minute,
            store_conn_id=target.store_conn_id,
            store_path=target.store_path,
            store_error_grace=self.store_error_grace or 60.0,
            until=self.until,
            recipient=target.recipient,
            chat_key=target.chat_key,
            reply_choices=self.reply_choices,
            reply_from=target.reply_from,
        )
        # The trigger reports "unread" itself at the deadline. Airflow's timeout (restarted by every
        # defer, hence computed from the absolute deadline) only catches a trigger that never
        # reports, and fails the task.
        remaining = max(target.deadline - now, timedelta(0))
        self.defer(trigger=trigger, method_name="execute_complete", timeout=remaining + TIMEOUT_SLACK)

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> WaitResult:
        """Resume from the trigger: return the outcome, or fail the task on a fault of our own."""
        if not isinstance(event, dict) or event.get("outcome") not in OUTCOMES:
            kind = event.get("kind", "internal") if isinstance(event, dict) else "internal"
            message = event.get("error") if isinstance(event, dict) else f"unexpected trigger event {event!r}"
            self._raise_fault(kind, str(message))
        return self._finish(cast("WaitResult", event))

    def _register(self, target: MessageTarget) -> None:
        """
        Record the message by its conversation, so that a reply is matched to it (or to a later
        message sent to the same chat). Best effort: without it, replies are matched to the other
        messages the store knows.
        """
        from airflow_provider_readreceipts.store.replies import register_outbound

        if not target.chat_key:
            return
        try:
            store = self._sync_store(target)
            store.write(
                lambda conn: register_outbound(
                    conn,
                    conn_id=target.conn_id,
                    message_id=target.message_id,
                    vendor=target.vendor,
                    chat_key=target.chat_key,
                    recipient=target.recipient,
                    sent_at=as_utc(target.sent_at or datetime.now(timezone.utc), field="sent_at"),
                )
            )
        except Exception as exc:
            self.log.warning(
                "could not record %s/%s for reply matching: %s", target.conn_id, target.message_id, exc
            )
        finally:
            if self.deferrable and self._store is not None:
                self._store.close()
                self._store = None

    def _finish(self, outcome: WaitResult) -> WaitResult:
        if outcome["outcome"] == OUTCOME_REPLIED and self.mark_reply_read:
            self._mark_reply_read(outcome)
        self.log.info(
            "%s/%s: %s (status %s, readers %s, learned via %s)%s",
            outcome["conn_id"],
            outcome["message_id"],
            outcome["outcome"].upper(),
            outcome["status"],
            outcome["readers"],
            outcome["learned_via"],
            f"; {outcome['failure_reason']}" if outcome.get("failure_reason") else "",
        )
        if outcome["outcome"] == OUTCOME_REPLIED:
            self.log.info(
                "reply from %s after %.1fs: %r (label %s)",
                outcome["reply_sender"],
                outcome["time_to_reply_seconds"] or 0.0,
                (outcome["reply_text"] or "")[:200],
                outcome["reply_label"],
            )
        return outcome

    def _mark_reply_read(self, outcome: WaitResult) -> None:
        """Mark the reply read at the vendor; a receipt that does not go out is logged, not fatal."""
        from airflow_provider_readreceipts.operators._reply_receipts import mark_reply_read
        from airflow_provider_readreceipts.receipts import VendorAPIError
        from airflow_provider_readreceipts.vendors import hook_for

        try:
            hook = hook_for(outcome["conn_id"], outcome["vendor"], max_attempts=3, timeout=30.0)
            mark_reply_read(
                hook,
                chat=outcome["chat"],
                reply_message_id=outcome["reply_message_id"] or "",
                sender=outcome["reply_sender"] or outcome["recipient"],
                is_group=len(outcome["readers"]) > 1 or "@g.us" in outcome["chat"],
            )
            self.log.info("marked the reply %s read", outcome["reply_message_id"])
        except (VendorAPIError, InvalidInputError) as exc:
            self.log.warning("the reply could not be marked read: %s", exc)

    def _raise_fault(self, kind: str, message: str) -> NoReturn:
        fault = ReadReceiptWaitError(kind, f"{kind}: {message}")
        if fault.permanent:
            from airflow.sdk.exceptions import AirflowFailException

            # The same configuration fails the same way: no retry.
            raise AirflowFailException(str(fault)) from fault
        raise fault

    # -- poke and reschedule modes ----------------------------------------------------------------

    def poke(self, context: Context) -> bool | PokeReturnValue:
        target = self._target or self._resolve_target(context)
        store = self._sync_store(target)
        if self._has_receiver is None:
            self._check_source(store)
        now = datetime.now(timezone.utc)
        past_deadline = now >= target.deadline
        if self.reconcile_interval and (past_deadline or self._reconcile_due(target)):
            self._reconcile(target, store)
        # Read the store after any reconcile: a READ committed before this point is seen, so
        # "unread" below means unread at the deadline.
        checked_at = datetime.now(timezone.utc)
        status = self._read_status(store, target)
        reply = self._find_reply(store, target)
        outcome = OUTCOME_REPLIED if reply is not None else verdict(status, target.policy, self.until)
        if outcome is None and checked_at >= target.deadline:
            if not self._has_receiver and not self._reconcile_ok:
                self._raise_fault(
                    FAULT_NO_SOURCE,
                    "no receiver has ever written to the receipt store and the vendor's status API never"
                    f" answered (last error: {self._reconcile_error}): the status is unknown, not unread",
                )
            outcome = deadline_outcome(status, target.policy, self.until)
        if outcome is None:
            left = (target.deadline - checked_at).total_seconds()
            self.poke_interval = max(min(self.poke_interval, left), 0.5)
            return False
        note = None
        if outcome == OUTCOME_UNREAD and self._reconcile_error:
            note = f"the vendor's status API failed after the deadline: {self._reconcile_error}"
        return PokeReturnValue(
            is_done=True,
            xcom_value=self._finish(
                result(
                    outcome,
                    status,
                    vendor=target.vendor,
                    conn_id=target.conn_id,
                    message_id=target.message_id,
                    chat=target.chat,
                    sent_at=target.sent_at,
                    deadline=target.deadline,
                    checked_at=checked_at,
                    recipient=target.recipient,
                    until=self.until,
                    reply=_reply_fields(reply, target.sent_at),
                    note=note,
                )
            ),
        )

    def _find_reply(self, store: ReceiptStore, target: MessageTarget) -> Any:
        """The reply that answers the message, if one came before the deadline (poke modes)."""
        from airflow_provider_readreceipts.triggers._replies import find_reply_now

        if not target.chat_key or not target.sent_at:
            return None
        sent_at = as_utc(target.sent_at, field="sent_at")
        try:
            return store.read(
                lambda conn: find_reply_now(
                    conn,
                    conn_id=target.conn_id,
                    message_id=target.message_id,
                    chat_key=target.chat_key,
                    sent_at=sent_at,
                    deadline=target.deadline,
                    senders=frozenset(target.reply_from),
                    choices=compile_choices(self.reply_choices),
                )
            )
        except Exception as exc:
            raise ReadReceiptWaitError(
                "store_unreachable", f"the receipt store {store.url_for_display} could not be read: {exc}"
            ) from exc

    def _sync_store(self, target: MessageTarget) -> ReceiptStore:
        if self._store is None:
            from airflow_provider_readreceipts.store import ReceiptStore, store_url_from_airflow

            try:
                self._store = ReceiptStore(
                    store_url_from_airflow(conn_id=target.store_conn_id, path=target.store_path)
                )
            except ReadReceiptsError as exc:
                self._raise_fault(FAULT_CONFIGURATION, str(exc))
        assert self._store is not None
        return self._store

    def _check_source(self, store: ReceiptStore) -> None:
        from airflow_provider_readreceipts.store import StoreError

        try:
            store.check_schema()
            self._has_receiver = store.last_heartbeat() is not None
        except StoreError as exc:
            self._raise_fault(FAULT_CONFIGURATION, str(exc))
        except Exception as exc:
            raise ReadReceiptWaitError(
                "store_unreachable", f"the receipt store {store.url_for_display} could not be read: {exc}"
            ) from exc
        if not self._has_receiver and not self.reconcile_interval:
            self._raise_fault(
                FAULT_NO_SOURCE,
                f"no webhook receiver has ever written to the receipt store {store.url_for_display}, and"
                " reconcile is off: nothing could ever report this message as read. Point the sensor at"
                " the store the receiver writes to, start the receiver, or turn reconcile on.",
            )

    def _read_status(self, store: ReceiptStore, target: MessageTarget) -> Any:
        try:
            return store.message_status(target.conn_id, target.message_id)
        except Exception as exc:
            raise ReadReceiptWaitError(
                "store_unreachable", f"the receipt store {store.url_for_display} could not be read: {exc}"
            ) from exc

    def _reconcile_due(self, target: MessageTarget) -> bool:
        if self.reschedule:
            return True  # each poke is a new process; its poke interval is the reconcile interval
        if self._last_reconcile is None:
            if reads_by_polling_only(target.vendor) or not self._has_receiver:
                return True  # the vendor's API is the only source: ask it at once
            self._last_reconcile = time.monotonic()  # webhooks come first; reconcile covers lost ones
            return False
        assert self.reconcile_interval is not None
        return time.monotonic() - self._last_reconcile >= self.reconcile_interval

    def _reconcile(self, target: MessageTarget, store: ReceiptStore) -> None:
        """Ask the vendor's status API once and record what it says in the store."""
        from airflow.sdk.exceptions import AirflowNotFoundException

        from airflow_provider_readreceipts.hooks import hook_for
        from airflow_provider_readreceipts.receipts import VendorAPIError

        self._last_reconcile = time.monotonic()
        try:
            hook = hook_for(target.conn_id, target.vendor, max_attempts=2, timeout=30.0)
        except KeyError as exc:
            self._raise_fault(FAULT_CONFIGURATION, str(exc))

        async def fetch() -> list[Any]:
            try:
                return await hook.afetch_receipt_events(message_id=target.message_id, chat=target.chat)
            finally:
                await hook.aclose()

        try:
            events = [e for e in asyncio.run(fetch()) if e.message_id == target.message_id]
            if events:
                store.record(events, source="reconcile")
            self._reconcile_ok = True
            self._reconcile_error = None
        except (InvalidInputError, AirflowNotFoundException) as exc:
            self._raise_fault(FAULT_CONFIGURATION, f"reconcile on connection {target.conn_id!r}: {exc}")
        except VendorAPIError as exc:
            if exc.status_code in (401, 403):
                self._raise_fault(FAULT_CONFIGURATION, str(exc))
            self._reconcile_error = str(exc)
            self.log.warning("reconcile of %s/%s failed: %s", target.conn_id, target.message_id, exc)

    # -- resolving the message reference ----------------------------------------------------------

    def _resolve_target(self, context: Context) -> MessageTarget:
        try:
            return resolve_target(self)
        except InvalidInputError as exc:
            self._raise_fault(FAULT_CONFIGURATION, str(exc))
            raise  # unreachable: _raise_fault always raises


def _reply_fields(reply: Any, sent_at: str | None) -> dict[str, Any] | None:
    if reply is None:
        return None
    from airflow_provider_readreceipts.triggers._replies import result_fields

    return result_fields(reply, sent_at)
