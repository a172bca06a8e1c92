"""
Marking replies read at the vendor, for the waits' ``mark_reply_read=True``.

Each vendor marks something else read (what its existing mark-read hook takes): Sendblue the whole
conversation with the sender, Chert the chat, RyzeAPI the reply itself (with its author in a
group), Direct7 the inbound message by its id.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow_provider_readreceipts.hooks.base import ReadReceiptsHook


def mark_reply_read(
    hook: ReadReceiptsHook, *, chat: str, reply_message_id: str, sender: str, is_group: bool = False
) -> None:
    """
    Mark one reply read with the vendor's mark-read call.

    :param hook: the vendor's hook (the connection the reply came through).
    :param chat: the conversation, as the vendor names it (a number, a Chert chat id, a JID).
    :param reply_message_id: the reply's own message id.
    :param sender: who wrote it (RyzeAPI needs the author in a group).
    :param is_group: whether the conversation is a group chat.
    """
    vendor = hook.conn_type
    if vendor == "sendblue":
        hook.mark_read(number=sender if sender.startswith("+") else chat)  # type: ignore[attr-defined]
    elif vendor == "chert":
        hook.mark_read(chat_id=chat)  # type: ignore[attr-defined]
    elif vendor == "ryze":
        hook.mark_read(  # type: ignore[attr-defined]
            message_id=reply_message_id, number=chat, sender=sender if is_group else None
        )
    elif vendor == "direct7":
        hook.mark_read(message_id=reply_message_id)  # type: ignore[attr-defined]
    else:  # pragma: no cover - every vendor of the registry is above
        raise NotImplementedError(f"no mark-read for {vendor!r}")


def mark_replies_read(
    operator: Any, campaign_id: str, step: str, store_location: tuple[str | None, str | None]
) -> None:
    """
    Mark every reply of a campaign step read, within the vendor token's budget, and log failures
    (a receipt that did not go out does not undo the wait's outcome).
    """
    from airflow_provider_readreceipts.operators._bulk import BulkItem, run_bulk
    from airflow_provider_readreceipts.store import ReceiptStore, store_url_from_airflow
    from airflow_provider_readreceipts.store.campaigns import REPLIED, recipients_page, step_info
    from airflow_provider_readreceipts.vendors import hook_for

    store_conn_id, store_path = store_location
    with ReceiptStore(store_url_from_airflow(conn_id=store_conn_id, path=store_path)) as store:
        info = store.read(lambda conn: step_info(conn, campaign_id, step))
        assert info is not None
        rows = []
        after = -1
        while True:
            page = store.read(
                lambda conn, after=after: recipients_page(  # type: ignore[misc]
                    conn, campaign_id, step, group=REPLIED, after_seq=after, limit=5000
                )
            )
            rows.extend(page)
            if len(page) < 5000:
                break
            after = page[-1].seq
    hook = hook_for(info.conn_id, info.vendor, max_connections=4)
    hook.share_rate_budget()
    hook.get_conn()

    def item(row: Any) -> BulkItem:
        def call() -> None:
            mark_reply_read(
                hook,
                chat=row.chat,
                reply_message_id=row.reply_message_id,
                sender=row.reply_sender or row.recipient,
                is_group="@g.us" in row.chat,
            )

        return BulkItem(target=row.recipient, argument="replies", call=call)

    report = run_bulk(
        [item(row) for row in rows], vendor=info.vendor, conn_id=info.conn_id, workers=4, log=operator.log
    )
    operator.log.info("Marked %d of %d replies read", report["read"], report["total"])
