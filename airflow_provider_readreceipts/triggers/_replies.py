"""
Replies for the shared poller: the inbound messages that answer a waiting message.

:class:`ReplyWatch` follows the store's inbound messages by event id (ids only grow), so its cost
per poll grows with the messages that arrived, not with the waits. A wait that starts looks once
for replies written since its message was sent. A reply counts for a wait when it came on the
wait's connection, to its conversation, after its send, from a participant its policy accepts,
and the message it answers (:func:`~airflow_provider_readreceipts.store.replies.answered_message`)
is the wait's own.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from airflow_provider_readreceipts.replies import CompiledChoices, classify

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

    from airflow_provider_readreceipts.store import AsyncReceiptStore
    from airflow_provider_readreceipts.store.replies import Inbound

#: Inbound messages read per query while following the store.
PAGE = 5_000


@dataclass(frozen=True)
class Reply:
    """A reply that answers a waiting message: what the wait's result reports of it."""

    message_id: str
    sender: str
    at: datetime
    text: str
    label: str


@dataclass(frozen=True)
class ReplyRequest:
    """
    What a wait counts as a reply to its message, as its trigger asks the poller for it.

    :param chat_key: the message's conversation, by identity.
    :param sent_at: when it was sent.
    :param senders: in a group, the participants whose reply counts (identities); empty for anyone.
    :param choices: the compiled ``reply_choices``.
    """

    chat_key: str
    sent_at: datetime
    senders: frozenset[str] = frozenset()
    choices: CompiledChoices = ()


@dataclass(eq=False)
class ReplyInterest:
    """
    What one wait wants of replies.

    :param conn_id: the message's connection.
    :param message_id: the message.
    :param chat_key: its conversation, by identity.
    :param sent_at: when it was sent (replies before it answer something else).
    :param deadline: replies written after it are late: they do not count.
    :param senders: for a group: the participants whose reply counts (identities); empty for any.
    :param choices: the wait's compiled ``reply_choices``.
    :param on_reply: called once with the reply.
    """

    conn_id: str
    message_id: str
    chat_key: str
    sent_at: datetime
    deadline: datetime
    senders: frozenset[str]
    choices: CompiledChoices
    on_reply: Callable[[Reply], None]
    checked_history: bool = field(default=False)

    def accepts(self, inbound: Inbound) -> bool:
        if inbound.conn_id != self.conn_id or inbound.chat_key != self.chat_key:
            return False
        if not self.sent_at <= inbound.at <= self.deadline:
            return False
        return not self.senders or (inbound.participant_id or inbound.participant) in self.senders


def reply_of(inbound: Inbound, choices: CompiledChoices) -> Reply:
    """The reply an inbound message makes, its text classified by ``choices``."""
    from airflow_provider_readreceipts.vendors import SPECS, hook_class_for

    text = ""
    try:
        payload = json.loads(inbound.payload)
    except ValueError:
        payload = {}
    if isinstance(payload, dict) and inbound.vendor in SPECS:
        text = hook_class_for(inbound.vendor).inbound_text(payload)
    return Reply(
        message_id=inbound.message_id,
        sender=inbound.participant_id or inbound.participant or inbound.chat_key,
        at=inbound.at,
        text=text,
        label=classify(text, choices),
    )


def find_replies(
    conn: Connection, interests: Sequence[ReplyInterest], inbound: Sequence[Inbound]
) -> list[tuple[ReplyInterest, Inbound]]:
    """The first message of ``inbound`` that answers each interest, by the store's one rule."""
    from airflow_provider_readreceipts.store.replies import answered_message, latest_sends

    candidates = [
        (interest, message) for message in inbound for interest in interests if interest.accepts(message)
    ]
    if not candidates:
        return []
    sends: dict[tuple[str, str], list[tuple[datetime, str]]] = {}
    for conn_id in {interest.conn_id for interest, _ in candidates}:
        keys = {interest.chat_key for interest, _ in candidates if interest.conn_id == conn_id}
        for chat_key, rows in latest_sends(conn, conn_id, keys).items():
            sends[(conn_id, chat_key)] = rows
    found: dict[int, tuple[ReplyInterest, Inbound]] = {}
    for interest, message in candidates:
        if id(interest) in found:
            continue
        answered = answered_message(sends.get((interest.conn_id, interest.chat_key), []), message.at)
        if answered == interest.message_id:
            found[id(interest)] = (interest, message)
    return list(found.values())


class ReplyWatch:
    """The inbound messages after a cursor, matched to the waits that want replies."""

    def __init__(self) -> None:
        self.cursor: int | None = None
        self._interests: dict[tuple[str, str], set[ReplyInterest]] = {}

    def __len__(self) -> int:
        return sum(len(interests) for interests in self._interests.values())

    def add(self, interest: ReplyInterest) -> None:
        self._interests.setdefault((interest.conn_id, interest.chat_key), set()).add(interest)

    def remove(self, interest: ReplyInterest) -> None:
        interests = self._interests.get((interest.conn_id, interest.chat_key))
        if interests is not None:
            interests.discard(interest)
            if not interests:
                del self._interests[(interest.conn_id, interest.chat_key)]

    async def poll(self, store: AsyncReceiptStore) -> int:
        """Hand every reply found since the last poll to its wait; return the queries made."""
        if not self._interests:
            return 0
        interests = [interest for group in self._interests.values() for interest in group]
        answered = await store.read(lambda conn: self._find(conn, interests))
        for interest, message in answered:
            self.remove(interest)
            interest.on_reply(reply_of(message, interest.choices))
        return 1

    def _find(self, conn: Connection, interests: list[ReplyInterest]) -> list[tuple[ReplyInterest, Inbound]]:
        from airflow_provider_readreceipts.store.campaign_waits import newest_event_id
        from airflow_provider_readreceipts.store.replies import inbound_after, inbound_in_chat

        newest = newest_event_id(conn)
        found: list[tuple[ReplyInterest, Inbound]] = []
        # New waits: the replies written since their send, up to where the cursor starts.
        start = self.cursor if self.cursor is not None else newest
        for interest in interests:
            if not interest.checked_history:
                history = inbound_in_chat(
                    conn, interest.conn_id, interest.chat_key, since=interest.sent_at, upto=start
                )
                found += find_replies(conn, [interest], history)
                interest.checked_history = True
        done = {id(interest) for interest, _ in found}
        waiting = [interest for interest in interests if id(interest) not in done]
        cursor = start
        while waiting and cursor < newest:
            page = inbound_after(conn, cursor, upto=newest, limit=PAGE)
            if not page:
                break
            matched = find_replies(conn, waiting, page)
            found += matched
            answered_ids = {id(interest) for interest, _ in matched}
            waiting = [interest for interest in waiting if id(interest) not in answered_ids]
            cursor = page[-1].event_row_id if len(page) == PAGE else newest
        self.cursor = newest
        return found


def find_reply_now(
    conn: Connection,
    *,
    conn_id: str,
    message_id: str,
    chat_key: str,
    sent_at: datetime,
    deadline: datetime,
    senders: frozenset[str],
    choices: CompiledChoices,
) -> Reply | None:
    """The reply that answers one message, if one is stored: the poke modes' look, in one query."""
    from airflow_provider_readreceipts.store.campaign_waits import newest_event_id
    from airflow_provider_readreceipts.store.replies import inbound_in_chat

    found: list[Reply] = []
    interest = ReplyInterest(
        conn_id=conn_id,
        message_id=message_id,
        chat_key=chat_key,
        sent_at=sent_at,
        deadline=deadline,
        senders=senders,
        choices=choices,
        on_reply=found.append,
    )
    history = inbound_in_chat(conn, conn_id, chat_key, since=sent_at, upto=newest_event_id(conn))
    matched = find_replies(conn, [interest], history)
    return reply_of(matched[0][1], choices) if matched else None


def result_fields(reply: Reply | None, sent_at: Any) -> dict[str, Any]:
    """A wait result's reply fields (all ``None`` without a reply)."""
    from airflow_provider_readreceipts.waits import as_utc

    if reply is None:
        return {
            "replied_at": None,
            "reply_text": None,
            "reply_label": None,
            "reply_message_id": None,
            "reply_sender": None,
            "time_to_reply_seconds": None,
        }
    time_to_reply = None
    if sent_at:
        time_to_reply = max((reply.at - as_utc(sent_at, field="sent_at")).total_seconds(), 0.0)
    return {
        "replied_at": reply.at.isoformat(),
        "reply_text": reply.text,
        "reply_label": reply.label or None,
        "reply_message_id": reply.message_id,
        "reply_sender": reply.sender,
        "time_to_reply_seconds": time_to_reply,
    }
