"""
Campaigns in the receipt store: one row per recipient and step, for sending, waiting and reporting.

A *campaign* has an id and *steps*: the first send, then a follow-up, a fallback on another
channel, a call, each acting on an outcome group of an earlier step. A step has one row per
recipient in ``rr_campaign_recipients``; per-recipient state lives there, never in task instances
or XCom. The functions here take a SQLAlchemy connection inside the caller's transaction
(:meth:`ReceiptStore.write <airflow_provider_readreceipts.store.ReceiptStore.write>`); the
operators, the campaign wait and the reports build on them.

A row's life: ``pending`` -> ``sending`` (just before its request goes out) -> ``sent`` (with the
vendor's message id) or ``refused`` (bad input, or a vendor refusal: nothing was sent) or
``send_unknown`` (a timeout, a dropped connection, a 5xx, or the task stopped mid-request: the
message may have gone out, so it is never sent again automatically). A sent row then gets an
*outcome* once the campaign wait decides it: ``read``, ``replied``, ``failed`` or ``unread``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import Connection

from airflow_provider_readreceipts.receipts import ReadReceiptsError
from airflow_provider_readreceipts.store.schema import (
    UTCDateTime,
    campaign_recipients_table,
    campaign_steps_table,
    campaigns_table,
    outbound_table,
    utcnow,
)

#: Send states of a recipient row.
PENDING, SENDING, SENT, SEND_UNKNOWN, REFUSED = "pending", "sending", "sent", "send_unknown", "refused"
#: Outcomes the campaign wait decides.
READ, REPLIED, FAILED, UNREAD = "read", "replied", "failed", "unread"
OUTCOMES = (READ, REPLIED, FAILED, UNREAD)
#: Groups a later step may act on: an outcome, or ``not_sent`` (refused or send_unknown).
NOT_SENT = "not_sent"
GROUPS = (*OUTCOMES, NOT_SENT)
#: Kinds of step: a message to each recipient, or a call (any HTTP request) for each.
MESSAGE_STEP, CALL_STEP = "message", "call"

#: Rows written per statement when a step's recipients are registered.
_INSERT_CHUNK = 1_000
#: Examples named in an error about a changed recipient set.
_DIFFERENCE_EXAMPLES = 5

recipients = campaign_recipients_table.c
steps = campaign_steps_table.c


class CampaignError(ReadReceiptsError):
    """A campaign cannot be used as asked; the message names the campaign and what is wrong."""


@dataclass(frozen=True)
class NewRecipient:
    """
    One recipient of a new step, as the operator read it from its input.

    :param recipient: the identity (E.164, a group id, a JID), normalised: the row's key.
    :param chat: the vendor's own form of the conversation, where it is known before sending.
    :param fields: the input row's fields (name, ...), kept for templated texts and reports.
    :param refused: why the row cannot be sent to (an invalid number); ``""`` when it can.
    """

    recipient: str
    chat: str = ""
    fields: Mapping[str, Any] = field(default_factory=dict)
    refused: str = ""


@dataclass(frozen=True)
class StepInfo:
    """A campaign step as stored."""

    campaign_id: str
    step: str
    position: int
    kind: str
    vendor: str
    conn_id: str
    channel: str
    task_id: str
    source_step: str
    source_outcome: str
    recipients: int
    created_at: datetime
    send_finished_at: datetime | None
    wait_until: str
    read_within_seconds: float | None
    deadline_at: datetime | None
    wait_started_at: datetime | None
    wait_finished_at: datetime | None


@dataclass(frozen=True)
class RecipientRow:
    """One recipient of one step, as stored."""

    campaign_id: str
    step: str
    recipient: str
    seq: int
    vendor: str
    conn_id: str
    chat: str
    message_id: str | None
    send_state: str
    send_error: str
    fields: dict[str, Any]
    sent_at: datetime | None
    outcome: str | None
    decided_at: datetime | None
    delivered_at: datetime | None
    read_at: datetime | None
    replied_at: datetime | None
    reply_text: str
    reply_label: str
    reply_message_id: str
    reply_sender: str
    failure_reason: str
    note: str

    def public(self) -> dict[str, Any]:
        """JSON-friendly form (for ``@task`` code and reports)."""
        return {
            name: (value.isoformat() if isinstance(value, datetime) else value)
            for name, value in vars(self).items()
        }


@dataclass(frozen=True)
class SendResult:
    """
    What became of one recipient's send.

    :param recipient: the row's key.
    :param state: :data:`SENT`, :data:`REFUSED` or :data:`SEND_UNKNOWN`.
    :param message_id: the vendor's id of the message (sent only).
    :param chat: the vendor's name of the conversation.
    :param chat_key: the conversation's identity, for matching replies.
    :param line: our own line it went from, where the vendor has several (Sendblue).
    :param error: why it was refused, or why its outcome is unknown.
    :param at: when the vendor answered.
    """

    recipient: str
    state: str
    at: datetime
    message_id: str | None = None
    chat: str = ""
    chat_key: str = ""
    line: str = ""
    error: str = ""


def fingerprint(keys: Iterable[str]) -> str:
    """The SHA-256 of a recipient set, whatever its order."""
    digest = hashlib.sha256()
    for key in sorted(set(keys)):
        digest.update(key.encode())
        digest.update(b"\n")
    return digest.hexdigest()


def check_group(group: str) -> str:
    """``group`` if it names an outcome group; :class:`CampaignError` listing the valid ones else."""
    if group not in GROUPS:
        raise CampaignError(f"unknown outcome {group!r}: expected one of {', '.join(GROUPS)}")
    return group


# -- steps --------------------------------------------------------------------------------------------


def step_info(conn: Connection, campaign_id: str, step: str) -> StepInfo | None:
    """A step of a campaign; ``None`` when there is none."""
    row = conn.execute(
        sa.select(campaign_steps_table).where(steps.campaign_id == campaign_id, steps.step == step)
    ).one_or_none()
    return None if row is None else _step(row)


def campaign_steps(conn: Connection, campaign_id: str) -> list[StepInfo]:
    """The campaign's steps, first first."""
    rows = conn.execute(
        sa.select(campaign_steps_table).where(steps.campaign_id == campaign_id).order_by(steps.position)
    ).all()
    return [_step(row) for row in rows]


def require_step(conn: Connection, campaign_id: str, step: str | None = None) -> StepInfo:
    """
    The named step, or the campaign's latest when ``step`` is ``None``.

    :raises CampaignError: no such campaign or step; the message lists the steps there are.
    """
    known = campaign_steps(conn, campaign_id)
    if not known:
        raise CampaignError(f"campaign {campaign_id!r} does not exist in the receipt store")
    if step is None:
        return known[-1]
    for info in known:
        if info.step == step:
            return info
    raise CampaignError(
        f"campaign {campaign_id!r} has no step {step!r}; its steps are {', '.join(i.step for i in known)}"
    )


def create_step(
    conn: Connection,
    *,
    campaign_id: str,
    step: str,
    kind: str,
    vendor: str,
    conn_id: str,
    channel: str,
    task_id: str,
    dag_id: str,
    run_id: str,
    source_step: str,
    source_outcome: str,
    new_recipients: Sequence[NewRecipient],
) -> StepInfo:
    """
    Register a step and its recipients, or find the same step registered by an earlier try.

    All in the caller's transaction: a step is there with every recipient row, or not at all.

    :raises CampaignError: the step exists with another recipient set (the message names the
        campaign and the difference), or for another vendor connection.
    """
    keys = [item.recipient for item in new_recipients]
    if len(set(keys)) != len(keys):
        raise CampaignError(f"campaign {campaign_id!r}, step {step!r}: recipients must be unique")
    recipient_set = fingerprint(keys)
    existing = step_info(conn, campaign_id, step)
    if existing is not None:
        if (existing.vendor, existing.conn_id) != (vendor, conn_id):
            raise CampaignError(
                f"campaign {campaign_id!r}, step {step!r} was created for {existing.vendor} connection"
                f" {existing.conn_id!r}, not {vendor} connection {conn_id!r}"
            )
        stored_print = conn.execute(
            sa.select(steps.fingerprint).where(steps.campaign_id == campaign_id, steps.step == step)
        ).scalar_one()
        if stored_print != recipient_set:
            raise CampaignError(_difference(conn, campaign_id, step, set(keys)))
        return existing
    now = utcnow()
    if (
        conn.execute(
            sa.select(campaigns_table.c.campaign_id).where(campaigns_table.c.campaign_id == campaign_id)
        ).first()
        is None
    ):
        conn.execute(
            campaigns_table.insert().values(
                campaign_id=campaign_id, dag_id=dag_id, run_id=run_id, created_at=now
            )
        )
    position = (
        conn.execute(sa.select(sa.func.max(steps.position)).where(steps.campaign_id == campaign_id)).scalar()
        or 0
    ) + 1
    conn.execute(
        campaign_steps_table.insert().values(
            campaign_id=campaign_id,
            step=step,
            position=position,
            kind=kind,
            vendor=vendor,
            conn_id=conn_id,
            channel=channel,
            task_id=task_id,
            source_step=source_step,
            source_outcome=source_outcome,
            recipients=len(keys),
            fingerprint=recipient_set,
            created_at=now,
        )
    )
    rows = [
        {
            "campaign_id": campaign_id,
            "step": step,
            "recipient": item.recipient,
            "seq": seq,
            "vendor": vendor,
            "conn_id": conn_id,
            "chat": item.chat,
            "chat_key": item.recipient,
            "send_state": REFUSED if item.refused else PENDING,
            "send_error": item.refused,
            "fields": json.dumps(dict(item.fields), default=str, separators=(",", ":")),
        }
        for seq, item in enumerate(new_recipients)
    ]
    for start in range(0, len(rows), _INSERT_CHUNK):
        conn.execute(campaign_recipients_table.insert(), rows[start : start + _INSERT_CHUNK])
    info = step_info(conn, campaign_id, step)
    assert info is not None
    return info


def _difference(conn: Connection, campaign_id: str, step: str, wanted: set[str]) -> str:
    stored = set(
        conn.execute(
            sa.select(recipients.recipient).where(
                recipients.campaign_id == campaign_id, recipients.step == step
            )
        ).scalars()
    )
    added, removed = sorted(wanted - stored), sorted(stored - wanted)

    def sample(items: list[str]) -> str:
        shown = ", ".join(items[:_DIFFERENCE_EXAMPLES])
        return shown + (
            f" and {len(items) - _DIFFERENCE_EXAMPLES} more" if len(items) > _DIFFERENCE_EXAMPLES else ""
        )

    parts = []
    if added:
        parts.append(f"{len(added)} recipient(s) not in it before ({sample(added)})")
    if removed:
        parts.append(f"{len(removed)} of its recipient(s) missing ({sample(removed)})")
    return (
        f"campaign {campaign_id!r}, step {step!r} already exists with another recipient set: "
        + "; ".join(parts)
        + ". A campaign id names one recipient set: give this send its own campaign_id or step."
    )


# -- sending ------------------------------------------------------------------------------------------


def recover_interrupted(conn: Connection, campaign_id: str, step: str, *, safe_to_resend: bool) -> int:
    """
    Rows an earlier try left ``sending`` (it stopped mid-request): ``pending`` again where the
    vendor dedups a repeated send (an idempotency key), ``send_unknown`` otherwise. Returns how many.
    """
    values: dict[str, Any] = (
        {"send_state": PENDING}
        if safe_to_resend
        else {
            "send_state": SEND_UNKNOWN,
            "send_error": "the task stopped while this message was being sent; it may have been sent,"
            " so it is not sent again",
        }
    )
    result = conn.execute(
        sa.update(campaign_recipients_table)
        .where(
            recipients.campaign_id == campaign_id, recipients.step == step, recipients.send_state == SENDING
        )
        .values(**values)
    )
    return int(result.rowcount or 0)


def claim_pending(conn: Connection, campaign_id: str, step: str, *, limit: int) -> list[RecipientRow]:
    """The next ``limit`` pending rows in input order, now marked ``sending``."""
    rows = conn.execute(
        sa.select(campaign_recipients_table)
        .where(
            recipients.campaign_id == campaign_id, recipients.step == step, recipients.send_state == PENDING
        )
        .order_by(recipients.seq)
        .limit(limit)
    ).all()
    if rows:
        conn.execute(
            sa.update(campaign_recipients_table)
            .where(
                recipients.campaign_id == campaign_id,
                recipients.step == step,
                recipients.recipient.in_([row.recipient for row in rows]),
                recipients.send_state == PENDING,
            )
            .values(send_state=SENDING, attempted_at=utcnow())
        )
    return [_row(row) for row in rows]


def record_sends(conn: Connection, campaign_id: str, step: str, results: Sequence[SendResult]) -> None:
    """Record what became of sends (in the caller's transaction); sent messages join ``rr_outbound``."""
    if not results:
        return
    info = step_info(conn, campaign_id, step)
    assert info is not None, f"unknown step {campaign_id}/{step}"
    update = (
        sa.update(campaign_recipients_table)
        .where(
            recipients.campaign_id == campaign_id,
            recipients.step == step,
            recipients.recipient == sa.bindparam("key"),
        )
        .values(
            send_state=sa.bindparam("new_state"),
            message_id=sa.bindparam("new_message_id"),
            chat=sa.bindparam("new_chat"),
            chat_key=sa.bindparam("new_chat_key"),
            send_error=sa.bindparam("new_error"),
            sent_at=sa.bindparam("new_sent_at", type_=UTCDateTime),
        )
    )
    conn.execute(
        update,
        [
            {
                "key": result.recipient,
                "new_state": result.state,
                "new_message_id": result.message_id,
                "new_chat": result.chat,
                "new_chat_key": result.chat_key or result.recipient,
                "new_error": result.error,
                "new_sent_at": result.at if result.state == SENT else None,
            }
            for result in results
        ],
    )
    # Calls are no conversation a reply could answer.
    sent = [result for result in results if result.state == SENT and result.message_id]
    if sent and info.kind != CALL_STEP:
        dialect_insert = pg.insert if conn.dialect.name == "postgresql" else sqlite.insert
        conn.execute(
            dialect_insert(outbound_table).on_conflict_do_nothing(),
            [
                {
                    "conn_id": info.conn_id,
                    "message_id": result.message_id,
                    "vendor": info.vendor,
                    "chat_key": result.chat_key or result.recipient,
                    "recipient": result.recipient,
                    "line": result.line,
                    "sent_at": result.at,
                    "campaign_id": campaign_id,
                    "step": step,
                }
                for result in sent
            ],
        )


def finish_sending(conn: Connection, campaign_id: str, step: str) -> None:
    """Mark the step's sending done (the campaign wait ends only after it is)."""
    conn.execute(
        sa.update(campaign_steps_table)
        .where(steps.campaign_id == campaign_id, steps.step == step)
        .values(send_finished_at=utcnow())
    )


# -- reading ------------------------------------------------------------------------------------------


def step_counts(conn: Connection, campaign_id: str, step: str) -> dict[str, int]:
    """
    How many rows are in each state: every send state, every outcome, and ``waiting`` (sent, not
    decided yet).
    """
    counts = dict.fromkeys((PENDING, SENDING, SENT, SEND_UNKNOWN, REFUSED, *OUTCOMES, "waiting"), 0)
    rows = conn.execute(
        sa.select(recipients.send_state, recipients.outcome, sa.func.count())
        .where(recipients.campaign_id == campaign_id, recipients.step == step)
        .group_by(recipients.send_state, recipients.outcome)
    ).all()
    for send_state, outcome, count in rows:
        counts[send_state] = counts.get(send_state, 0) + count
        if outcome is not None:
            counts[outcome] = counts.get(outcome, 0) + count
        elif send_state == SENT:
            counts["waiting"] += count
    counts["total"] = sum(count for _, _, count in rows)
    return counts


def group_filter(group: str | None) -> Any:
    """The SQL condition of an outcome group (``None``: every row)."""
    if group is None:
        return sa.true()
    check_group(group)
    if group == NOT_SENT:
        return recipients.send_state.in_((REFUSED, SEND_UNKNOWN))
    return recipients.outcome == group


def recipients_page(
    conn: Connection,
    campaign_id: str,
    step: str,
    *,
    group: str | None = None,
    after_seq: int = -1,
    limit: int = 1000,
    search: str | None = None,
) -> list[RecipientRow]:
    """
    Up to ``limit`` rows of a step after ``after_seq``, in input order.

    :param group: only this outcome group (see :data:`GROUPS`); ``None`` for all.
    :param search: only recipients whose identity contains this text.
    """
    query = (
        sa.select(campaign_recipients_table)
        .where(recipients.campaign_id == campaign_id, recipients.step == step, recipients.seq > after_seq)
        .where(group_filter(group))
        .order_by(recipients.seq)
        .limit(limit)
    )
    if search:
        query = query.where(recipients.recipient.contains(search, autoescape=True))
    return [_row(row) for row in conn.execute(query)]


def labelled_recipients(conn: Connection, campaign_id: str, labels: Sequence[str]) -> set[str]:
    """Recipients whose reply, in any step of the campaign, was classified under one of ``labels``."""
    if not labels:
        return set()
    return set(
        conn.execute(
            sa.select(recipients.recipient)
            .where(recipients.campaign_id == campaign_id, recipients.reply_label.in_(list(labels)))
            .distinct()
        ).scalars()
    )


def _step(row: Any) -> StepInfo:
    mapping = row._mapping
    return StepInfo(**{name: mapping[name] for name in StepInfo.__dataclass_fields__})


def _row(row: Any) -> RecipientRow:
    mapping = row._mapping
    try:
        fields = json.loads(mapping["fields"] or "{}")
    except ValueError:
        fields = {}
    return RecipientRow(
        **{name: mapping[name] for name in RecipientRow.__dataclass_fields__ if name != "fields"},
        fields=fields if isinstance(fields, dict) else {},
    )
