"""
The campaign wait's work in the receipt store: follow new events by id, decide outcomes, expire.

One wait serves every recipient of a campaign step. Its cost per poll grows with the events that
arrived since the last poll, never with the number of recipients still waiting:

- :func:`follow` reads the events after the wait's cursor (``rr_events.id`` only grows), joins them
  to the step's rows by message id (statuses) and by conversation (replies), and decides the rows
  they touch. The first call, with no cursor yet, looks at every waiting row once instead.
- :func:`expire_due` decides in one statement every row whose deadline has passed, and
  :func:`next_deadline` tells when the next one does (an indexed ``min``).

Every function runs in the caller's transaction and keeps nothing in memory: the wait's state is
its cursor (``rr_cursors``) and the rows, so a restarted triggerer carries on where it stopped.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from airflow_provider_readreceipts.receipts import Status
from airflow_provider_readreceipts.store.campaigns import (
    FAILED,
    READ,
    REPLIED,
    SENT,
    UNREAD,
    campaign_recipients_table,
    campaign_steps_table,
    recipients,
    steps,
)
from airflow_provider_readreceipts.store.replies import answered_message, latest_sends
from airflow_provider_readreceipts.store.schema import (
    UTCDateTime,
    as_utc,
    events_table,
    messages_table,
    utcnow,
)

#: What ends a recipient's wait: a READ (or a reply), or only a reply.
UNTIL_READ, UNTIL_REPLY = "read", "reply"
#: Events read per query while following the store.
_EVENT_PAGE = 5_000

events = events_table.c
messages = messages_table.c


@dataclass(frozen=True)
class WaitPlan:
    """
    What one campaign wait waits for.

    :param campaign_id: the campaign.
    :param step: the step whose recipients it waits on.
    :param conn_id: the step's vendor connection.
    :param until: :data:`UNTIL_READ` or :data:`UNTIL_REPLY`.
    :param read_within: each recipient's deadline counts this many seconds from its send...
    :param deadline: ... or all share this absolute deadline (exactly one of the two is set).
    """

    campaign_id: str
    step: str
    conn_id: str
    until: str
    read_within: float | None = None
    deadline: datetime | None = None

    def deadline_of(self, sent_at: datetime) -> datetime:
        """A recipient's deadline."""
        if self.deadline is not None:
            return as_utc(self.deadline)
        assert self.read_within is not None
        return as_utc(sent_at) + timedelta(seconds=self.read_within)

    def _row_filter(self) -> Any:
        return sa.and_(recipients.campaign_id == self.campaign_id, recipients.step == self.step)


@dataclass(frozen=True)
class InboundMessage:
    """A stored inbound message that may answer a recipient, as :func:`follow` hands it to ``classify``."""

    event_row_id: int
    vendor: str
    message_id: str
    chat_key: str
    participant: str
    at: datetime
    payload: Any


@dataclass(frozen=True)
class Classified:
    """What ``classify`` makes of a reply: its text and the label its text matched ("" for none)."""

    text: str
    label: str


@dataclass(frozen=True)
class FollowResult:
    """What one :func:`follow` did: the new cursor and how many rows got each outcome."""

    cursor: int
    decided: Counter[str]
    replies: int


def begin_wait(conn: Connection, plan: WaitPlan) -> None:
    """Record on the step what its wait waits for (shown in reports), once."""
    conn.execute(
        sa.update(campaign_steps_table)
        .where(
            steps.campaign_id == plan.campaign_id, steps.step == plan.step, steps.wait_started_at.is_(None)
        )
        .values(
            wait_until=plan.until,
            read_within_seconds=plan.read_within,
            deadline_at=plan.deadline,
            wait_started_at=utcnow(),
        )
    )


def finish_wait(conn: Connection, plan: WaitPlan) -> None:
    """Record when the wait ended."""
    conn.execute(
        sa.update(campaign_steps_table)
        .where(steps.campaign_id == plan.campaign_id, steps.step == plan.step)
        .values(wait_finished_at=utcnow())
    )


def newest_event_id(conn: Connection) -> int:
    """The highest event id (0 for an empty store)."""
    return int(conn.execute(sa.select(sa.func.max(events.id))).scalar() or 0)


def follow(
    conn: Connection,
    plan: WaitPlan,
    *,
    after: int | None,
    classify: Callable[[InboundMessage], Classified],
) -> FollowResult:
    """
    Decide the rows that events after ``after`` touch; ``after=None`` looks at every waiting row.

    :param after: the cursor: every event up to it has been followed already.
    :param classify: the text and label of a reply (vendor-specific payload, the wait's choices).
    :return: the cursor to continue from, and the outcomes given.
    """
    newest = newest_event_id(conn)
    decided: Counter[str] = Counter()
    if after is not None and newest <= after:
        return FollowResult(after, decided, 0)
    touched = _touched_rows(conn, plan, after=after, upto=newest)
    status_changes = [change for row in touched if (change := _status_change(plan, row)) is not None]
    replies = _replies(conn, plan, after=after, upto=newest, classify=classify)
    # A reply decides its row whatever a READ in the same batch says: it is the stronger signal.
    replied_keys = {key for key, *_ in replies}
    status_changes = [change for change in status_changes if change["key"] not in replied_keys]
    _apply_status_changes(conn, plan, status_changes, decided)
    _apply_replies(conn, plan, replies, decided)
    return FollowResult(newest, decided, len(replies))


def _touched_rows(conn: Connection, plan: WaitPlan, *, after: int | None, upto: int) -> list[Any]:
    """Waiting rows with their message's current status: all, or those that events after ``after`` touch."""
    query = (
        sa.select(
            recipients.recipient,
            recipients.sent_at,
            recipients.read_at.label("row_read_at"),
            recipients.delivered_at.label("row_delivered_at"),
            messages.status,
            messages.read_at,
            messages.delivered_at,
            messages.failed_reason,
        )
        .select_from(campaign_recipients_table)
        .join(
            messages_table,
            sa.and_(messages.conn_id == recipients.conn_id, messages.message_id == recipients.message_id),
        )
        .where(plan._row_filter(), recipients.outcome.is_(None), recipients.send_state == SENT)
    )
    if after is not None:
        changed = (
            sa.select(events.conn_id, events.message_id)
            .where(events.id > after, events.id <= upto)
            .distinct()
            .subquery("changed")
        )
        query = query.join(
            changed,
            sa.and_(changed.c.conn_id == recipients.conn_id, changed.c.message_id == recipients.message_id),
        )
    return list(conn.execute(query).all())


def _status_change(plan: WaitPlan, row: Any) -> dict[str, Any] | None:
    """What the message's current status changes in its row; ``None`` when nothing."""
    read_at = None
    if row.status == Status.READ.value and row.read_at is not None:
        # A READ after the recipient's deadline is a late read: it does not count for the wait
        # (reports show it from rr_messages); the sweep decides the row.
        if as_utc(row.read_at) <= plan.deadline_of(row.sent_at):
            read_at = row.read_at
    outcome = None
    failure_reason = ""
    if row.status == Status.FAILED.value:
        outcome, failure_reason = FAILED, row.failed_reason or ""
    elif read_at is not None and plan.until == UNTIL_READ:
        outcome = READ
    if outcome is None and read_at == row.row_read_at and row.delivered_at == row.row_delivered_at:
        return None
    return {
        "key": row.recipient,
        "outcome": outcome,
        "read_at": read_at if read_at is not None else row.row_read_at,
        "delivered_at": row.delivered_at,
        "failure_reason": failure_reason,
    }


def _apply_status_changes(
    conn: Connection, plan: WaitPlan, changes: Sequence[dict[str, Any]], decided: Counter[str]
) -> None:
    if not changes:
        return
    now = utcnow()
    update = (
        sa.update(campaign_recipients_table)
        .where(plan._row_filter(), recipients.recipient == sa.bindparam("key"), recipients.outcome.is_(None))
        .values(
            outcome=sa.bindparam("outcome"),
            decided_at=sa.case(
                (sa.bindparam("outcome").is_(None), None), else_=sa.bindparam("now", type_=UTCDateTime)
            ),
            read_at=sa.bindparam("read_at", type_=UTCDateTime),
            delivered_at=sa.bindparam("delivered_at", type_=UTCDateTime),
            failure_reason=sa.bindparam("failure_reason"),
        )
    )
    conn.execute(update, [{**change, "now": now} for change in changes])
    decided.update(change["outcome"] for change in changes if change["outcome"] is not None)


def _replies(
    conn: Connection,
    plan: WaitPlan,
    *,
    after: int | None,
    upto: int,
    classify: Callable[[InboundMessage], Classified],
) -> list[tuple[str, InboundMessage, Classified, bool, bool]]:
    """
    ``(recipient, message, classified, decides, late)`` for each inbound message that answers a
    row of this step: it came to the row's conversation after the row's send, and no later send to
    that conversation came before it (the latest message sent before a reply is the one it answers).
    """
    happened = sa.func.coalesce(events.occurred_at, events.received_at)
    query = (
        sa.select(
            recipients.recipient,
            recipients.message_id.label("sent_message_id"),
            recipients.sent_at,
            recipients.outcome,
            recipients.replied_at,
            events.id,
            events.vendor,
            events.message_id,
            events.chat_key,
            events.participant,
            happened.label("happened_at"),
            events.payload,
        )
        .select_from(campaign_recipients_table)
        .join(
            events_table,
            sa.and_(
                events.conn_id == recipients.conn_id,
                events.chat_key == recipients.chat_key,
                events.status == Status.RECEIVED.value,
                happened >= recipients.sent_at,
            ),
        )
        .where(plan._row_filter(), recipients.send_state == SENT, recipients.replied_at.is_(None))
        .order_by(events.id)
    )
    if after is not None:
        query = query.where(events.id > after, events.id <= upto)
    else:
        query = query.where(events.id <= upto)
    candidates = conn.execute(query).all()
    if not candidates:
        return []
    latest = latest_sends(conn, plan.conn_id, {row.chat_key for row in candidates})
    found: list[tuple[str, InboundMessage, Classified, bool, bool]] = []
    seen: set[str] = set()
    for row in candidates:
        if row.recipient in seen:
            continue  # the first reply answers; later ones are the conversation going on
        at = as_utc(row.happened_at)
        answered = answered_message(latest.get(row.chat_key, []), at)
        if answered != row.sent_message_id:
            continue
        seen.add(row.recipient)
        message = InboundMessage(
            event_row_id=row.id,
            vendor=row.vendor,
            message_id=row.message_id,
            chat_key=row.chat_key,
            participant=row.participant,
            at=at,
            payload=row.payload,
        )
        late = at > plan.deadline_of(row.sent_at)
        found.append((row.recipient, message, classify(message), row.outcome is None and not late, late))
    return found


def _apply_replies(
    conn: Connection,
    plan: WaitPlan,
    replies: Sequence[tuple[str, InboundMessage, Classified, bool, bool]],
    decided: Counter[str],
) -> None:
    if not replies:
        return
    now = utcnow()
    record = (
        sa.update(campaign_recipients_table)
        .where(plan._row_filter(), recipients.recipient == sa.bindparam("key"))
        .values(
            replied_at=sa.bindparam("replied_at", type_=UTCDateTime),
            reply_text=sa.bindparam("reply_text"),
            reply_label=sa.bindparam("reply_label"),
            reply_message_id=sa.bindparam("reply_message_id"),
            reply_sender=sa.bindparam("reply_sender"),
            note=sa.bindparam("reply_note"),
        )
    )
    conn.execute(
        record,
        [
            {
                "key": key,
                "replied_at": message.at,
                "reply_text": classified.text,
                "reply_label": classified.label,
                "reply_message_id": message.message_id,
                "reply_sender": message.participant or message.chat_key,
                "reply_note": "late reply: after the recipient's deadline" if late else "",
            }
            for key, message, classified, _, late in replies
        ],
    )
    deciding = [(key, message) for key, message, _, decides, _ in replies if decides]
    if deciding:
        # A reply proves the message was read: read_at is the earlier of the READ and the reply.
        conn.execute(
            sa.update(campaign_recipients_table)
            .where(
                plan._row_filter(), recipients.recipient == sa.bindparam("key"), recipients.outcome.is_(None)
            )
            .values(
                outcome=REPLIED,
                decided_at=sa.bindparam("now", type_=UTCDateTime),
                read_at=sa.case(
                    (
                        sa.or_(
                            recipients.read_at.is_(None),
                            recipients.read_at > sa.bindparam("replied_at", type_=UTCDateTime),
                        ),
                        sa.bindparam("replied_at", type_=UTCDateTime),
                    ),
                    else_=recipients.read_at,
                ),
            ),
            [{"key": key, "now": now, "replied_at": message.at} for key, message in deciding],
        )
        decided[REPLIED] += len(deciding)


def expire_due(conn: Connection, plan: WaitPlan, *, now: datetime, reconcile_interval: float | None) -> int:
    """
    Decide every waiting row whose deadline has passed: ``unread``, or ``read`` when the wait is
    for a reply and the recipient read but did not answer. Returns how many.

    Call it only after :func:`follow` in a poll that started after ``now``'s deadline, so that a
    READ committed before the deadline has been seen.

    :param reconcile_interval: when the wait reconciles, a row not looked up at the vendor within
        this many seconds before its deadline gets a note saying so.
    """
    if plan.deadline is not None:
        if now < as_utc(plan.deadline):
            return 0
        due: Any = sa.true()
    else:
        assert plan.read_within is not None
        due = recipients.sent_at <= now - timedelta(seconds=plan.read_within)
    outcome = (
        sa.case((recipients.read_at.is_not(None), READ), else_=UNREAD)
        if plan.until == UNTIL_REPLY
        else UNREAD
    )
    note: Any = recipients.note
    if reconcile_interval:
        horizon = timedelta(seconds=reconcile_interval)
        unchecked = sa.or_(
            recipients.reconciled_at.is_(None),
            recipients.reconciled_at < sa.bindparam("looked_since", now - horizon, type_=UTCDateTime),
        )
        note = sa.case(
            (
                sa.and_(unchecked, recipients.note == ""),
                "not looked up at the vendor's status API before the deadline (reconcile budget)",
            ),
            else_=recipients.note,
        )
    result = conn.execute(
        sa.update(campaign_recipients_table)
        .where(plan._row_filter(), recipients.outcome.is_(None), recipients.send_state == SENT, due)
        .values(outcome=outcome, decided_at=now, note=note)
    )
    return int(result.rowcount or 0)


def next_deadline(conn: Connection, plan: WaitPlan) -> datetime | None:
    """When the next waiting row's deadline passes; ``None`` when no row is waiting."""
    earliest = conn.execute(
        sa.select(sa.func.min(recipients.sent_at)).where(
            plan._row_filter(), recipients.outcome.is_(None), recipients.send_state == SENT
        )
    ).scalar()
    return None if earliest is None else plan.deadline_of(earliest)


def waiting(conn: Connection, plan: WaitPlan) -> int:
    """Rows sent and not decided yet."""
    return int(
        conn.execute(
            sa.select(sa.func.count()).where(
                plan._row_filter(), recipients.outcome.is_(None), recipients.send_state == SENT
            )
        ).scalar_one()
    )


def sending_finished(conn: Connection, plan: WaitPlan) -> bool:
    """Whether the step's send task has finished (no row can still become sent)."""
    return (
        conn.execute(
            sa.select(steps.send_finished_at).where(
                steps.campaign_id == plan.campaign_id, steps.step == plan.step
            )
        ).scalar()
        is not None
    )


def reconcile_candidates(
    conn: Connection, plan: WaitPlan, *, limit: int, looked_before: datetime
) -> list[tuple[str, str, str]]:
    """
    Up to ``limit`` waiting rows to look up at the vendor, nearest deadline first (every row shares
    the same delay, so the earliest sent first), skipping those looked up since ``looked_before``:
    ``(recipient, message_id, chat)``.
    """
    rows = conn.execute(
        sa.select(recipients.recipient, recipients.message_id, recipients.chat)
        .where(
            plan._row_filter(),
            recipients.outcome.is_(None),
            recipients.send_state == SENT,
            sa.or_(recipients.reconciled_at.is_(None), recipients.reconciled_at < looked_before),
        )
        .order_by(recipients.sent_at)
        .limit(limit)
    ).all()
    return [(row.recipient, row.message_id or "", row.chat) for row in rows]


def mark_reconciled(conn: Connection, plan: WaitPlan, keys: Sequence[str], at: datetime) -> None:
    """Record that these rows were looked up at the vendor at ``at``."""
    if keys:
        conn.execute(
            sa.update(campaign_recipients_table)
            .where(plan._row_filter(), recipients.recipient.in_(list(keys)))
            .values(reconciled_at=at)
        )


@dataclass(frozen=True)
class PollResult:
    """One poll of a campaign wait: what it decided and what is left."""

    decided: Counter[str]
    replies: int
    expired: int
    waiting: int
    next_deadline: datetime | None
    sending_finished: bool
    cursor: int


def poll(
    conn: Connection,
    plan: WaitPlan,
    *,
    cursor_name: str,
    classify: Callable[[InboundMessage], Classified],
    now: datetime,
    reconcile_interval: float | None,
) -> PollResult:
    """
    One poll, in one transaction: follow the events after the saved cursor, save the new cursor,
    then decide the rows whose deadline passed before ``now`` (the time the poll started).
    """
    from airflow_provider_readreceipts.store.schema import cursors_table
    from airflow_provider_readreceipts.store.writes import set_cursor

    saved = conn.execute(sa.select(cursors_table.c.value).where(cursors_table.c.name == cursor_name)).scalar()
    followed = follow(conn, plan, after=None if saved is None else int(saved), classify=classify)
    if saved is None or followed.cursor != saved:
        set_cursor(conn, cursor_name, followed.cursor)
    expired = expire_due(conn, plan, now=now, reconcile_interval=reconcile_interval)
    decided = Counter(followed.decided)
    return PollResult(
        decided=decided,
        replies=followed.replies,
        expired=expired,
        waiting=waiting(conn, plan),
        next_deadline=next_deadline(conn, plan),
        sending_finished=sending_finished(conn, plan),
        cursor=followed.cursor,
    )
