"""
The engine of the bulk send operators: register a step's rows, then send them through a pipeline.

The pipeline keeps ``2 * max_concurrency`` rows in flight: it claims rows (``pending`` ->
``sending``, one transaction per claim), sends them on a thread pool through the hook's session
(which draws from the vendor token's shared budget), and records what became of them in batches.
A task that dies mid-way leaves at most the rows in flight and the unrecorded results as
``sending``; the next try turns those into ``send_unknown`` (or, where the vendor takes an
idempotency key, sends them again) and goes on with the rest.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from airflow_provider_readreceipts.operators._common import invalid_input_fails_task
from airflow_provider_readreceipts.receipts import DeliveryUnknownError, InvalidInputError, VendorAPIError

if TYPE_CHECKING:
    from airflow.sdk import Context
    from jinja2 import Template

    from airflow_provider_readreceipts.operators._campaign_step import CampaignStepOperator, CampaignStepRef
    from airflow_provider_readreceipts.store import ReceiptStore
    from airflow_provider_readreceipts.store.campaigns import NewRecipient, RecipientRow, SendResult, StepInfo

#: Results recorded per transaction at most, and the longest they wait to be recorded.
RECORD_BATCH = 64
RECORD_EVERY_SECONDS = 0.25
#: Longest error text kept per row.
_ERROR_CHARS = 300


@dataclass(frozen=True)
class Sent:
    """What a vendor answered to one send: the message id, the conversation, our line."""

    message_id: str | None
    chat: str
    line: str = ""


def run_step(operator: CampaignStepOperator, context: Context) -> CampaignStepRef:
    """Register the step (or find it again), send what is left to send, and report."""
    from airflow_provider_readreceipts.store.campaigns import (
        finish_sending,
        recover_interrupted,
        step_counts,
    )

    store = _open_store(operator)
    try:
        with invalid_input_fails_task():
            campaign_id, step_name, source_step, source_outcome = _names(operator, context, store)
            operator.prepare()
            new_rows = _new_recipients(operator, context, store, campaign_id, source_step)
        ti = context["ti"]
        step = store.write(
            lambda conn: _create(
                conn,
                operator,
                campaign_id=campaign_id,
                step=step_name,
                kind=operator.step_kind,
                task_id=ti.task_id,
                dag_id=ti.dag_id,
                run_id=ti.run_id,
                source_step=source_step,
                source_outcome=source_outcome,
                rows=new_rows,
            )
        )
        recovered = store.write(
            lambda conn: recover_interrupted(
                conn, campaign_id, step.step, safe_to_resend=operator.idempotent_sends
            )
        )
        if recovered:
            operator.log.warning(
                "%d row(s) were being sent when an earlier try stopped: %s",
                recovered,
                "sending them again (the vendor dedups by idempotency key)"
                if operator.idempotent_sends
                else "recorded as send_unknown, not sent again",
            )
        operator.prepare_session()  # one session, built before the threads share it
        template = operator.get_template_env().from_string(operator.text)
        deferred = _send_all(operator, store, step, template, dict(context))
        if deferred == 0:
            store.write(lambda conn: finish_sending(conn, campaign_id, step.step))
        counts = store.read(lambda conn: step_counts(conn, campaign_id, step.step))
    finally:
        store.close()
    ref: CampaignStepRef = {
        "campaign_id": campaign_id,
        "step": step.step,
        "vendor": operator.sender,
        "conn_id": operator.sender_conn_id,
        "channel": operator.channel,
        "counts": counts,
        "total": counts["total"],
    }
    operator.log.info(
        "Campaign %s, step %s: %d sent, %d refused, %d of unknown outcome, %d still to send, of %d",
        campaign_id,
        step.step,
        counts["sent"],
        counts["refused"],
        counts["send_unknown"],
        counts["pending"],
        counts["total"],
    )
    _check_outcome(operator, ref, deferred)
    return ref


def _open_store(operator: CampaignStepOperator) -> ReceiptStore:
    from airflow.sdk.exceptions import AirflowFailException

    from airflow_provider_readreceipts.receipts import ReadReceiptsError
    from airflow_provider_readreceipts.store import ReceiptStore, store_url_from_airflow

    try:
        store = ReceiptStore(store_url_from_airflow(conn_id=operator.store_conn_id, path=operator.store_path))
        store.check_schema()
    except ReadReceiptsError as exc:
        raise AirflowFailException(f"the receipt store cannot be used: {exc}") from exc
    return store


def _names(
    operator: CampaignStepOperator, context: Context, store: ReceiptStore
) -> tuple[str, str, str, str]:
    """The campaign id, this step's name, and the step and outcome group it acts on."""
    from airflow_provider_readreceipts.operators._campaign_step import campaign_id_for
    from airflow_provider_readreceipts.store.campaigns import check_group, require_step

    ti = context["ti"]
    step_name = (operator.step or "").strip() or ti.task_id
    reference = _reference(operator.campaign)
    if reference is None:
        campaign_id = (operator.campaign_id or "").strip() or campaign_id_for(
            dag_id=ti.dag_id, run_id=ti.run_id, task_id=ti.task_id
        )
        return campaign_id, step_name, "", ""
    campaign_id, referenced_step = reference
    if operator.outcome is None:
        return campaign_id, step_name, "", ""
    group = check_group(str(operator.outcome).strip())
    wanted = (operator.source_step or "").strip() or referenced_step
    source = store.read(lambda conn: require_step(conn, campaign_id, wanted))
    return campaign_id, step_name, source.step, group


def _reference(campaign: Any) -> tuple[str, str | None] | None:
    """``(campaign_id, step)`` from a step's XCom, a campaign wait's, or a bare id."""
    import ast
    import json

    if campaign is None or campaign == "":
        return None
    if isinstance(campaign, str):
        text = campaign.strip()
        if text[:1] in ("{", "["):
            try:
                campaign = json.loads(text)
            except ValueError:
                try:
                    campaign = ast.literal_eval(text)
                except (ValueError, SyntaxError):
                    raise InvalidInputError("campaign", f"not a campaign reference: {text[:200]!r}") from None
        else:
            return text, None
    if isinstance(campaign, dict) and isinstance(campaign.get("campaign_id"), str):
        step = campaign.get("step")
        return campaign["campaign_id"], step if isinstance(step, str) and step else None
    raise InvalidInputError(
        "campaign",
        f"expected a campaign id or a step's XCom (with campaign_id), got {type(campaign).__name__}",
    )


def _new_recipients(
    operator: CampaignStepOperator,
    context: Context,
    store: ReceiptStore,
    campaign_id: str,
    source_step: str,
) -> list[NewRecipient]:
    from airflow_provider_readreceipts.store.campaigns import NewRecipient

    rows: list[NewRecipient] = []
    seen: set[str] = set()
    duplicates = 0
    for raw, fields in _input_rows(operator, store, campaign_id, source_step):
        try:
            key, chat = operator.address(raw)
            refused = ""
        except InvalidInputError as exc:
            key, chat, refused = raw.strip() or "(empty)", "", f"{exc.problem}"[:_ERROR_CHARS]
        if key in seen:
            duplicates += 1
            continue
        seen.add(key)
        rows.append(NewRecipient(recipient=key, chat=chat, fields=fields, refused=refused))
    if duplicates:
        operator.log.info("Skipped %d duplicate recipients (the same person twice)", duplicates)
    return rows


def _input_rows(
    operator: CampaignStepOperator, store: ReceiptStore, campaign_id: str, source_step: str
) -> Iterator[tuple[str, dict[str, Any]]]:
    from airflow_provider_readreceipts.operators._recipients import rows_from_file, rows_from_values

    if operator.recipients_file is not None:
        for row in rows_from_file(str(operator.recipients_file), column=operator.recipient_column):
            yield row.pop("recipient"), row
        return
    if operator.recipients is not None:
        for row in rows_from_values(
            operator.recipients, argument="recipients", column=operator.recipient_column
        ):
            yield row.pop("recipient"), row
        return
    yield from _group_rows(operator, store, campaign_id, source_step)


def _group_rows(
    operator: CampaignStepOperator, store: ReceiptStore, campaign_id: str, source_step: str
) -> Iterator[tuple[str, dict[str, Any]]]:
    from airflow_provider_readreceipts.store.campaigns import labelled_recipients, recipients_page

    excluded = (
        store.read(lambda conn: labelled_recipients(conn, campaign_id, operator.exclude_labels))
        if operator.exclude_labels
        else set()
    )
    if excluded:
        operator.log.info(
            "Leaving out %d recipient(s) whose reply was %s",
            len(excluded),
            " or ".join(operator.exclude_labels),
        )
    after = -1
    while True:
        page = store.read(
            lambda conn, after=after: recipients_page(  # type: ignore[misc]
                conn, campaign_id, source_step, group=operator.outcome, after_seq=after, limit=5000
            )
        )
        for row in page:
            if row.recipient not in excluded:
                yield row.recipient, row.fields
        if len(page) < 5000:
            return
        after = page[-1].seq


def _create(conn: Any, operator: CampaignStepOperator, *, rows: list[NewRecipient], **names: Any) -> StepInfo:
    from airflow_provider_readreceipts.store.campaigns import create_step

    return create_step(
        conn,
        vendor=operator.sender,
        conn_id=operator.sender_conn_id,
        channel=operator.channel,
        new_recipients=rows,
        **names,
    )


def idempotency_key(campaign_id: str, step: str, recipient: str) -> str:
    """A recipient's idempotency key in a step: the same on every try, different for everyone else."""
    identity = "\n".join((campaign_id, step, recipient))
    return "rr-campaign-" + hashlib.sha256(identity.encode()).hexdigest()[:40]


def _send_all(
    operator: CampaignStepOperator,
    store: ReceiptStore,
    step: StepInfo,
    template: Template,
    context: dict[str, Any],
) -> int:
    """Send every pending row; returns how many were put back to pending (the vendor was unavailable)."""
    from airflow_provider_readreceipts.store.campaigns import claim_pending, record_sends

    window = operator.max_concurrency * 2
    in_flight: set[Future[SendResult]] = set()
    unrecorded: list[SendResult] = []
    last_record = time.monotonic()
    exhausted = False
    deferred = 0

    def record() -> None:
        nonlocal unrecorded, last_record
        if unrecorded:
            batch, unrecorded = unrecorded, []
            store.write(lambda conn: record_sends(conn, step.campaign_id, step.step, batch))
        last_record = time.monotonic()

    with ThreadPoolExecutor(max_workers=operator.max_concurrency, thread_name_prefix="campaign-send") as pool:
        while True:
            if not exhausted and len(in_flight) < window:
                room = window - len(in_flight)
                claimed = store.write(
                    lambda conn, room=room: claim_pending(  # type: ignore[misc]
                        conn, step.campaign_id, step.step, limit=room
                    )
                )
                if not claimed:
                    exhausted = True
                for row in claimed:
                    in_flight.add(pool.submit(_send_row, operator, step, row, template, context))
            if not in_flight:
                record()
                return deferred
            done, in_flight = wait(in_flight, timeout=RECORD_EVERY_SECONDS, return_when=FIRST_COMPLETED)
            for future in done:
                result = future.result()
                unrecorded.append(result)
                if result.state == "pending":
                    deferred += 1
                    exhausted = True  # the vendor is not taking sends now: stop, let a retry resume
            if len(unrecorded) >= RECORD_BATCH or time.monotonic() - last_record >= RECORD_EVERY_SECONDS:
                record()


def _send_row(
    operator: CampaignStepOperator,
    step: StepInfo,
    row: RecipientRow,
    template: Template,
    context: dict[str, Any],
) -> SendResult:
    from airflow_provider_readreceipts.identity import normalize_identity
    from airflow_provider_readreceipts.store.campaigns import PENDING, REFUSED, SEND_UNKNOWN, SENT, SendResult

    def now() -> datetime:
        return datetime.now(timezone.utc)

    try:
        text = template.render({**context, "recipient": {**row.fields, "recipient": row.recipient}}).strip()
    except Exception as exc:
        return SendResult(
            row.recipient, REFUSED, now(), error=f"the text template failed: {exc}"[:_ERROR_CHARS]
        )
    if not text:
        return SendResult(row.recipient, REFUSED, now(), error="the text rendered empty for this recipient")
    key = idempotency_key(step.campaign_id, step.step, row.recipient)
    try:
        sent = operator.send_one(row, text, idempotency_key=key)
    except InvalidInputError as exc:
        return SendResult(row.recipient, REFUSED, now(), error=str(exc)[:_ERROR_CHARS])
    except DeliveryUnknownError as exc:
        return SendResult(row.recipient, SEND_UNKNOWN, now(), error=str(exc)[:_ERROR_CHARS])
    except VendorAPIError as exc:
        # Retryable and given up on (429, refused connections): it never reached the vendor.
        state = PENDING if exc.retryable else REFUSED
        return SendResult(row.recipient, state, now(), error=str(exc)[:_ERROR_CHARS])
    except Exception as exc:
        # Not the vendor's answer: the request may have gone out, so it is not sent again.
        return SendResult(
            row.recipient, SEND_UNKNOWN, now(), error=f"{type(exc).__name__}: {exc}"[:_ERROR_CHARS]
        )
    if not sent.message_id:
        return SendResult(
            row.recipient,
            SEND_UNKNOWN,
            now(),
            chat=sent.chat,
            error=f"{operator.sender_name} accepted the message but named no message id;"
            " it is not sent again",
        )
    chat = sent.chat or row.chat
    return SendResult(
        row.recipient,
        SENT,
        now(),
        message_id=str(sent.message_id),
        chat=chat,
        # The conversation's identity, which replies are matched by: the vendor's chat id where it
        # has one of its own (Chert), else the recipient.
        chat_key=row.recipient if not sent.chat or sent.chat == row.chat else normalize_identity(chat),
        line=sent.line,
    )


def _check_outcome(operator: CampaignStepOperator, ref: CampaignStepRef, deferred: int) -> None:
    from airflow.sdk.exceptions import AirflowException

    counts = ref["counts"]
    if deferred:
        raise AirflowException(
            f"{deferred} row(s) of campaign {ref['campaign_id']!r}, step {ref['step']!r} could not be"
            f" sent now ({operator.sender_name} rate-limited or unavailable after retries); nothing was"
            " sent to them."
            " The task fails so that a retry sends them (and only them)."
        )
    bad = counts["refused"] + counts["send_unknown"]
    total = counts["total"]
    reason = None
    if operator.max_failures is not None and bad > operator.max_failures:
        reason = f"more than max_failures={operator.max_failures}"
    elif operator.max_failure_rate is not None and total and bad / total > operator.max_failure_rate:
        reason = f"{bad / total:.1%} of the rows, more than max_failure_rate={operator.max_failure_rate:g}"
    if reason is not None:
        raise AirflowException(
            f"campaign {ref['campaign_id']!r}, step {ref['step']!r}: {counts['refused']} refused and"
            f" {counts['send_unknown']} of unknown outcome of {total} ({reason}). The reasons are in the"
            " receipt store: `readreceipts report` lists them."
        )
