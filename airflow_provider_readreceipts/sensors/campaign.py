"""
Wait for every recipient of a campaign step at once: one deferred task, whatever the step's size.

Light to import on purpose (the scheduler imports sensor modules at every DAG parse): the store
and the trigger are imported only when the task runs.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, NoReturn, TypedDict

from airflow.sdk import BaseSensorOperator

from airflow_provider_readreceipts.receipts import InvalidInputError, ReadReceiptsError
from airflow_provider_readreceipts.replies import compile_choices
from airflow_provider_readreceipts.sensors._target import resolve_store_location
from airflow_provider_readreceipts.waits import (
    FAULT_CONFIGURATION,
    ReadReceiptWaitError,
    as_utc,
    reads_by_polling_only,
    seconds,
)

if TYPE_CHECKING:
    from airflow.sdk import Context

#: Slack on top of the last deadline for Airflow's own timeout of the deferral: it fires only
#: when the trigger could not report at all, and then the task fails.
TIMEOUT_SLACK = timedelta(minutes=15)
UNTIL = ("read", "reply")


class CampaignWaitResult(TypedDict):
    """What the campaign wait pushes to XCom: the step, and how many recipients got each outcome."""

    campaign_id: str
    step: str
    vendor: str
    conn_id: str
    #: Rows per outcome (``read``, ``replied``, ``unread``, ``failed``) and send state.
    counts: dict[str, int]
    waited_seconds: float


class CampaignWaitSensor(BaseSensorOperator):
    """
    Wait until every sent recipient of a campaign step is read, replied, failed or past its
    deadline; then return counts per outcome. The recipients' outcomes are in the receipt store,
    where the next steps act on them by group (``outcome="unread"``).

    A sibling of :class:`~airflow_provider_readreceipts.sensors.read_receipt.ReadReceiptSensor`
    rather than a mode of it: it waits on a campaign step, not a message; its deadlines are per
    recipient; its result is counts, not one message's status; and its state lives in the store's
    campaign rows, not in the trigger. Sharing one class would give every argument two meanings.

    - Deadline per recipient (``read_within`` after its send) or absolute (``deadline``).
    - ``until="read"``: a READ or a reply decides a recipient (``read`` or ``replied``);
      ``until="reply"``: only a reply does, so that a DAG can nudge who read but did not answer
      (they end ``read``, who did not read ``unread``).
    - Replies are classified by ``reply_choices`` (label -> regular expression); STOP-like labels
      let later steps leave those people out (their ``exclude_labels``).
    - Finishes early when every recipient is decided. Survives a triggerer restart.
    - Reconcile: the waiting rows nearest their deadline are looked up at the vendor's status API,
      within the vendor's budget (required for Chert, whose reads are only visible there).

    Deferrable only: a campaign wait is one trigger, however many recipients it has.

    :param campaign: the step to wait on: the bulk send's XCom (``send.output``) or a campaign id
        (templated).
    :param step: the step's name, when ``campaign`` is an id (default: the campaign's latest step).
    :param read_within: each recipient has this long after its send (``timedelta`` or seconds).
    :param deadline: instead: one absolute deadline for every recipient (datetime or ISO 8601).
    :param until: ``"read"`` (default) or ``"reply"``.
    :param reply_choices: label -> regular expression, matched case-insensitively against a
        reply's text; the first that matches labels it.
    :param mark_reply_read: after the wait, mark each reply read at the vendor.
    :param poll_interval: seconds between store polls when nothing happens.
    :param reconcile_interval: seconds between two look-ups of one message at the vendor; ``None``
        turns reconcile off (not allowed for Chert).
    :param reconcile_rate_per_minute: look-ups a minute; default the vendor registry's.
    :param store_conn_id: the receipt store's connection; default ``readreceipts_store_default``
        when it exists, else the SQLite file.
    :param store_path: the SQLite file when no store connection is used.
    :param store_error_grace: seconds the store may stay unreachable before the wait fails.
    """

    template_fields: Sequence[str] = ("campaign", "step", "deadline", "store_conn_id", "store_path")
    ui_color = "#d7f0e4"

    def __init__(
        self,
        *,
        campaign: str | Mapping[str, Any],
        step: str | None = None,
        read_within: timedelta | float | None = None,
        deadline: datetime | str | None = None,
        until: str = "read",
        reply_choices: Mapping[str, str] | None = None,
        mark_reply_read: bool = False,
        poll_interval: timedelta | float = 5.0,
        reconcile_interval: timedelta | float | None = 120.0,
        reconcile_rate_per_minute: float | None = None,
        store_conn_id: str | None = None,
        store_path: str | None = None,
        store_error_grace: timedelta | float = 60.0,
        **kwargs: Any,
    ) -> None:
        for flag in ("soft_fail", "never_fail", "silent_fail"):
            if kwargs.get(flag):
                raise ValueError(
                    f"CampaignWaitSensor does not support {flag}=True: a fault of our own would look like"
                    " an ordinary end of the wait."
                )
        if kwargs.get("mode") not in (None, "poke") or kwargs.get("deferrable") is False:
            raise ValueError(
                "CampaignWaitSensor is deferrable only: the wait is one trigger in the triggerer"
            )
        kwargs.pop("deferrable", None)
        super().__init__(**kwargs)
        if (deadline is None) == (read_within is None):
            raise ValueError("CampaignWaitSensor needs exactly one of deadline= and read_within=")
        if until not in UNTIL:
            raise ValueError(f"until must be one of {', '.join(UNTIL)}, not {until!r}")
        self.campaign = campaign
        self.step = step
        self.read_within = seconds(read_within, field="read_within", allow_none=True)
        self.deadline = deadline
        self.until = until
        # Compiled now: an invalid expression fails the DAG's parse, naming its label.
        compile_choices(reply_choices)
        self.reply_choices = dict(reply_choices or {})
        self.mark_reply_read = mark_reply_read
        self.poll_interval = seconds(poll_interval, field="poll_interval")
        self.reconcile_interval = seconds(reconcile_interval, field="reconcile_interval", allow_none=True)
        self.reconcile_rate_per_minute = reconcile_rate_per_minute
        self.store_conn_id = store_conn_id
        self.store_path = store_path
        self.store_error_grace = seconds(store_error_grace, field="store_error_grace")

    def execute(self, context: Context) -> None:
        from airflow_provider_readreceipts.store import ReceiptStore, store_url_from_airflow
        from airflow_provider_readreceipts.store.campaigns import CampaignError, require_step
        from airflow_provider_readreceipts.triggers.campaign import CampaignWaitTrigger

        try:
            campaign_id, step_name = _reference(self.campaign, self.step)
            deadline = as_utc(self.deadline, field="deadline") if self.deadline is not None else None
            store_conn_id, store_path = resolve_store_location(self.store_conn_id, self.store_path)
            with ReceiptStore(store_url_from_airflow(conn_id=store_conn_id, path=store_path)) as store:
                store.check_schema()
                step = store.read(lambda conn: require_step(conn, campaign_id, step_name))
                last_sent = store.read(lambda conn: _last_sent(conn, campaign_id, step.step))
        except (InvalidInputError, CampaignError, ReadReceiptsError) as exc:
            self._fail(FAULT_CONFIGURATION, str(exc))
        if reads_by_polling_only(step.vendor) and not self.reconcile_interval:
            self._fail(
                FAULT_CONFIGURATION,
                f"{step.vendor} reports reads only through its status API: reconcile_interval cannot be None",
            )
        self.log.info(
            "waiting on campaign %s, step %s (%d recipients on %s); %s",
            campaign_id,
            step.step,
            step.recipients,
            step.conn_id,
            f"deadline {deadline.isoformat()}" if deadline else f"{self.read_within:.0f}s after each send",
        )
        now = datetime.now(timezone.utc)
        last_deadline = deadline or (last_sent or now) + timedelta(seconds=self.read_within or 0)
        trigger = CampaignWaitTrigger(
            campaign_id=campaign_id,
            step=step.step,
            conn_id=step.conn_id,
            vendor=step.vendor,
            until=self.until,
            read_within=self.read_within,
            deadline=deadline.isoformat() if deadline else None,
            reply_choices=self.reply_choices,
            poll_interval=self.poll_interval or 5.0,
            reconcile_interval=self.reconcile_interval,
            reconcile_rate_per_minute=self.reconcile_rate_per_minute,
            store_conn_id=store_conn_id,
            store_path=store_path,
            store_error_grace=self.store_error_grace or 60.0,
        )
        remaining = max(last_deadline - now, timedelta(0))
        self.defer(trigger=trigger, method_name="execute_complete", timeout=remaining + TIMEOUT_SLACK)

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> CampaignWaitResult:
        """Resume from the trigger: the counts, or a task failure on a fault of our own."""
        if not isinstance(event, dict) or "counts" not in event:
            kind = event.get("kind", "internal") if isinstance(event, dict) else "internal"
            message = event.get("error") if isinstance(event, dict) else f"unexpected trigger event {event!r}"
            self._fail(str(kind), str(message))
        counts = event["counts"]
        self.log.info(
            "campaign %s, step %s: %d read, %d replied, %d unread, %d failed (of %d)",
            event["campaign_id"],
            event["step"],
            counts.get("read", 0),
            counts.get("replied", 0),
            counts.get("unread", 0),
            counts.get("failed", 0),
            counts.get("total", 0),
        )
        if self.mark_reply_read and counts.get("replied"):
            from airflow_provider_readreceipts.operators._reply_receipts import mark_replies_read

            mark_replies_read(
                self,
                event["campaign_id"],
                event["step"],
                resolve_store_location(self.store_conn_id, self.store_path),
            )
        result: CampaignWaitResult = {
            "campaign_id": event["campaign_id"],
            "step": event["step"],
            "vendor": event["vendor"],
            "conn_id": event["conn_id"],
            "counts": counts,
            "waited_seconds": event.get("waited_seconds", 0.0),
        }
        return result

    def _fail(self, kind: str, message: str) -> NoReturn:
        fault = ReadReceiptWaitError(kind, f"{kind}: {message}")
        if fault.permanent:
            from airflow.sdk.exceptions import AirflowFailException

            raise AirflowFailException(str(fault)) from fault
        raise fault


def _reference(campaign: Any, step: str | None) -> tuple[str, str | None]:
    """``(campaign_id, step)`` from a step's XCom (or its rendered text) or a campaign id."""
    if isinstance(campaign, str):
        text = campaign.strip()
        if text[:1] == "{":
            try:
                campaign = json.loads(text)
            except ValueError:
                try:
                    campaign = ast.literal_eval(text)
                except (ValueError, SyntaxError):
                    raise InvalidInputError("campaign", f"not a campaign reference: {text[:200]!r}") from None
        elif text:
            return text, step or None
    if isinstance(campaign, Mapping) and isinstance(campaign.get("campaign_id"), str):
        referenced = campaign.get("step")
        return campaign["campaign_id"], step or (referenced if isinstance(referenced, str) else None)
    raise InvalidInputError(
        "campaign", f"expected a campaign id or a bulk send's XCom, got {campaign!r}"[:300]
    )


def _last_sent(conn: Any, campaign_id: str, step: str) -> datetime | None:
    import sqlalchemy as sa

    from airflow_provider_readreceipts.store.campaigns import recipients

    return conn.execute(
        sa.select(sa.func.max(recipients.sent_at)).where(
            recipients.campaign_id == campaign_id, recipients.step == step
        )
    ).scalar()
