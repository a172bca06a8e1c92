"""
The engine behind the bulk operators: many calls over one hook, concurrently, within a rate limit.

:func:`run_bulk` runs the calls in a thread pool and reports each item's outcome; the limit is a
:class:`~airflow_provider_readreceipts.rate_limits.SlidingWindowRateLimiter` in front of the hook's
session (:mod:`airflow_provider_readreceipts.rate_limits`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypedDict

from airflow_provider_readreceipts.receipts import InvalidInputError, VendorAPIError

if TYPE_CHECKING:
    import logging


#: Per-item outcomes in a bulk report.
READ = "read"
FAILED = "failed"
INVALID = "invalid"

#: Failures named in a task's error message; the report and the log list all of them.
_FAILURES_IN_MESSAGE = 20
#: Failures logged one by one before the log only counts them.
_FAILURES_LOGGED = 100
#: Longest error text kept per item, so a report of thousands of failures stays a small XCom.
_ERROR_CHARS = 300


@dataclass(frozen=True)
class BulkItem:
    """
    One call of a bulk run.

    :param target: how reports name the item (a number, a chat id, a message id).
    :param argument: where the item came from, e.g. ``numbers[17]``, for input errors.
    :param call: the hook call; raises on failure.
    :param field: the hook argument the whole item is passed as (``number``); an input error about
        another field (``sender``) is reported as ``numbers[17].sender``.
    """

    target: str
    argument: str
    call: Callable[[], object]
    field: str = ""


class BulkFailure(TypedDict):
    """One item that was not marked read."""

    target: str
    #: :data:`FAILED` (the vendor refused or could not be reached) or :data:`INVALID` (bad input,
    #: refused before any HTTP call).
    outcome: str
    error: str


class BulkReport(TypedDict):
    """What a bulk operator pushes to XCom: counts, and every item that was not marked read."""

    vendor: str
    conn_id: str
    total: int
    read: int
    failed: int
    invalid: int
    failures: list[BulkFailure]


def invalid_item(*, argument: str, target: str, error: InvalidInputError, field: str = "") -> BulkFailure:
    """
    A failure for an item whose input is unusable, naming where it came from: ``numbers[3]: ...``,
    or ``chats[3].sender: ...`` when the problem is in one field of a mapping item.
    """
    where = argument if error.field in ("", argument, field) else f"{argument}.{error.field}"
    return {"target": target, "outcome": INVALID, "error": f"{where}: {error.problem}"[:_ERROR_CHARS]}


def _run_one(item: BulkItem) -> BulkFailure | None:
    try:
        item.call()
    except InvalidInputError as exc:
        return invalid_item(argument=item.argument, target=item.target, error=exc, field=item.field)
    except VendorAPIError as exc:
        return {"target": item.target, "outcome": FAILED, "error": str(exc)[:_ERROR_CHARS]}
    except Exception as exc:
        # Not the vendor's answer (a bug, an unreadable response): counted as a failure of this item
        # rather than aborting the other thousands; the threshold still fails the task.
        error = f"{type(exc).__name__}: {exc}"[:_ERROR_CHARS]
        return {"target": item.target, "outcome": FAILED, "error": error}
    return None


def run_bulk(
    items: Sequence[BulkItem],
    *,
    vendor: str,
    conn_id: str,
    workers: int,
    log: logging.Logger | Any,
    rejected: Sequence[BulkFailure] = (),
) -> BulkReport:
    """
    Run every item's call on a pool of ``workers`` threads and report the outcomes.

    :param items: the calls; they share one hook (one session), which must be ready (connection
        loaded, session built) before this starts, so the threads do not race to build it.
    :param rejected: items refused before the run (unusable input), counted in the report.
    """
    started = time.monotonic()
    failures: list[BulkFailure] = list(rejected)
    if items:
        with ThreadPoolExecutor(
            max_workers=max(1, min(workers, len(items))), thread_name_prefix="bulk"
        ) as pool:
            failures.extend(failure for failure in pool.map(_run_one, items) if failure is not None)
    elapsed = time.monotonic() - started

    invalid = sum(1 for failure in failures if failure["outcome"] == INVALID)
    total = len(items) + len(rejected)
    report: BulkReport = {
        "vendor": vendor,
        "conn_id": conn_id,
        "total": total,
        "read": total - len(failures),
        "failed": len(failures) - invalid,
        "invalid": invalid,
        "failures": failures,
    }
    for failure in failures[:_FAILURES_LOGGED]:
        log.warning("Not marked read: %s (%s): %s", failure["target"], failure["outcome"], failure["error"])
    if len(failures) > _FAILURES_LOGGED:
        log.warning(
            "... and %d more not marked read (all in the XCom report)", len(failures) - _FAILURES_LOGGED
        )
    log.info(
        "Marked %d of %d read in %.1fs (%d failed, %d invalid)",
        report["read"],
        total,
        elapsed,
        report["failed"],
        report["invalid"],
    )
    return report


def threshold_exceeded(
    report: Mapping[str, Any], *, max_failures: int | None, max_failure_rate: float | None
) -> str | None:
    """Why the failures in ``report`` fail the task, or ``None`` when they stay within the threshold."""
    bad = report["failed"] + report["invalid"]
    if max_failures is not None and bad > max_failures:
        return f"more than max_failures={max_failures}"
    total = report["total"]
    if max_failure_rate is not None and total and bad / total > max_failure_rate:
        return f"{bad / total:.1%} of the items, more than max_failure_rate={max_failure_rate:g}"
    return None


def describe_failures(report: BulkReport, reason: str) -> str:
    """The task's error message: counts, the threshold passed, and the failed items by name."""
    failures = report["failures"]
    named = "; ".join(f"{f['target'] or '?'} ({f['error']})" for f in failures[:_FAILURES_IN_MESSAGE])
    more = len(failures) - _FAILURES_IN_MESSAGE
    tail = f"; and {more} more (the XCom 'report' of this task lists them all)" if more > 0 else ""
    return (
        f"{len(failures)} of {report['total']} could not be marked read "
        f"({report['failed']} failed, {report['invalid']} invalid), {reason}. Not marked read: {named}{tail}"
    )
