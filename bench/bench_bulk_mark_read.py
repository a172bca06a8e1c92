"""
Benchmark: mark 1,000 conversations read against the local vendor fakes, in one process.

Compares, in the same run and against the same loopback server:

1. a plain loop of ``requests.post`` without a shared session (a new TCP connection per request),
   as a DAG author might write it;
2. the bulk operator's engine (``SendblueBulkMarkReadOperator``) with one worker: one reused
   session, no concurrency;
3. the same operator with its default concurrency (8 requests in flight over one session).

Then the rate limit: ``RyzeBulkMarkReadOperator`` marks 300 chats read with a limit of 100 requests
per **6-second** window (RyzeAPI's 100 per 60 s, scaled down tenfold so the run takes seconds), against
the RyzeAPI fake enforcing the same limit. It records the largest number of requests the fake saw in
any 6-second window (it must never exceed 100) and how many it refused with 429 (must be 0).

Run: ``python bench/bench_bulk_mark_read.py`` (about a minute, most of it importing Airflow).
Writes ``bench/results/bulk_mark_read.md`` and ``.json``.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="bench-airflow-"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import requests

from airflow_provider_readreceipts.testing.fakes import ryze as ryze_fake
from airflow_provider_readreceipts.testing.fakes import sendblue as sendblue_fake
from airflow_provider_readreceipts.testing.fakes.ryze import RyzeFake
from airflow_provider_readreceipts.testing.fakes.sendblue import SendblueFake
from airflow_provider_readreceipts.testing.fakes.server import VendorFakeServer

CONVERSATIONS = 1_000
RATE_LIMIT = 100
RATE_WINDOW = 6.0  # seconds: RyzeAPI's 60 s window scaled down tenfold
RATE_LIMITED_CHATS = 300
BULK_WORKERS = 8
LATENCY = 0.020  # seconds per request in the latency scenario
RESULTS = Path(__file__).resolve().parent / "results"


class _StubTaskInstance:
    def xcom_push(self, key: str, value: Any) -> None:
        pass


def numbers(count: int, prefix: str = "+1415555", width: int = 4) -> list[str]:
    """``count`` valid, distinct phone numbers in E.164."""
    return [f"{prefix}{n:0{width}d}" for n in range(count)]


def plain_loop(url: str, contacts: list[str]) -> float:
    """What a DAG author might write: one ``requests.post`` per conversation, no session."""
    headers = {"sb-api-key-id": sendblue_fake.API_KEY_ID, "sb-api-secret-key": sendblue_fake.API_SECRET}
    started = time.perf_counter()
    for number in contacts:
        response = requests.post(
            f"{url}/api/mark-read",
            json={"number": number, "from_number": sendblue_fake.LINE},
            headers=headers,
            timeout=30,
        )
        response.raise_for_status()
    return time.perf_counter() - started


def bulk_operator(contacts: list[str], **kwargs: Any) -> tuple[float, dict[str, Any]]:
    from airflow_provider_readreceipts.operators.mark_read import SendblueBulkMarkReadOperator

    operator = SendblueBulkMarkReadOperator(
        task_id="bench", numbers=contacts, sendblue_conn_id="bench_sb", **kwargs
    )
    started = time.perf_counter()
    report = operator.execute({"ti": _StubTaskInstance()})  # type: ignore[arg-type]
    elapsed = time.perf_counter() - started
    operator.hook.close()
    return elapsed, dict(report)


def rate_limited_run(server: VendorFakeServer) -> dict[str, Any]:
    from airflow_provider_readreceipts.operators.mark_read import RyzeBulkMarkReadOperator

    fake: RyzeFake = server.fakes["ryze"]  # type: ignore[assignment]
    fake.rate_limit, fake.window_seconds = RATE_LIMIT, RATE_WINDOW
    operator = RyzeBulkMarkReadOperator(
        task_id="bench_ryze",
        chats=numbers(RATE_LIMITED_CHATS, "+55119876", 5),
        ryze_conn_id="bench_ryze",
        rate_limit=RATE_LIMIT,
        rate_limit_period=RATE_WINDOW,
    )
    started = time.perf_counter()
    report = operator.execute({"ti": _StubTaskInstance()})  # type: ignore[arg-type]
    elapsed = time.perf_counter() - started
    arrivals = sorted(r.received_at for r in server.requests_to("ryze"))
    return {
        "requests": len(arrivals),
        "read": report["read"],
        "seconds": round(elapsed, 2),
        "peak_in_any_window": fake.peak_requests_per_window(),
        "peak_from_arrival_times": _peak(arrivals, RATE_WINDOW),
        # Each chat read took one accepted request; anything beyond that was refused (429) and retried.
        "refused_429": len(arrivals) - report["read"],
        "limit": RATE_LIMIT,
        "window_seconds": RATE_WINDOW,
    }


def _peak(times: list[float], window: float) -> int:
    peak, start = 0, 0
    for end, at in enumerate(times):
        while at - times[start] >= window:
            start += 1
        peak = max(peak, end - start + 1)
    return peak


def with_latency(fake: Any, seconds: float) -> None:
    """Make the fake answer after ``seconds``, as a vendor across the internet would."""
    dispatch = type(fake).dispatch

    def delayed(request: Any) -> Any:
        time.sleep(seconds)  # outside the fake's lock: concurrent requests wait side by side
        return dispatch(fake, request)

    fake.dispatch = delayed


def compare(server: VendorFakeServer, contacts: list[str], *, one_worker: bool) -> dict[str, Any]:
    def rate(seconds: float) -> dict[str, float]:
        return {"seconds": round(seconds, 2), "per_second": round(len(contacts) / seconds, 1)}

    server.reset()
    runs: dict[str, Any] = {"plain_loop": rate(plain_loop(server.url("sendblue"), contacts))}
    if one_worker:
        seconds, report = bulk_operator(contacts, max_concurrency=1)
        assert report["read"] == len(contacts), report
        runs["bulk_one_worker"] = rate(seconds)
    seconds, report = bulk_operator(contacts, max_concurrency=BULK_WORKERS)
    assert report["read"] == len(contacts), report
    runs["bulk"] = {**rate(seconds), "workers": BULK_WORKERS}
    runs["ratio_bulk_vs_plain"] = round(runs["bulk"]["per_second"] / runs["plain_loop"]["per_second"], 2)
    if one_worker:
        ratio = runs["bulk_one_worker"]["per_second"] / runs["plain_loop"]["per_second"]
        runs["ratio_one_worker_vs_plain"] = round(ratio, 2)
    marked = len(server.fakes["sendblue"].marked_read)  # type: ignore[attr-defined]
    assert marked == len(contacts) * (3 if one_worker else 2), marked
    return runs


def main() -> dict[str, Any]:
    with VendorFakeServer(SendblueFake(), RyzeFake()) as server:
        os.environ["AIRFLOW_CONN_BENCH_SB"] = json.dumps(
            {
                "conn_type": "sendblue",
                "host": server.url("sendblue"),
                "login": sendblue_fake.API_KEY_ID,
                "password": sendblue_fake.API_SECRET,
                "extra": {"from_number": sendblue_fake.LINE},
            }
        )
        os.environ["AIRFLOW_CONN_BENCH_RYZE"] = json.dumps(
            {
                "conn_type": "ryze",
                "host": server.url("ryze"),
                "password": ryze_fake.TOKEN,
                "extra": {"instance": ryze_fake.INSTANCE},
            }
        )
        contacts = numbers(CONVERSATIONS)
        bulk_operator(contacts[:20])  # warm-up: imports, phonenumbers metadata

        loopback = compare(server, contacts, one_worker=True)
        with_latency(server.fakes["sendblue"], LATENCY)
        latency = compare(server, contacts, one_worker=False)

        server.reset()
        limited = rate_limited_run(server)

    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
        },
        "conversations": CONVERSATIONS,
        "loopback": loopback,
        "latency_ms": round(LATENCY * 1000),
        "with_latency": latency,
        "rate_limited": limited,
    }


def write(results: dict[str, Any]) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bulk_mark_read.json").write_text(json.dumps(results, indent=2) + "\n")
    loopback, latency, limited = results["loopback"], results["with_latency"], results["rate_limited"]
    ms = results["latency_ms"]

    def row(name: str, run: dict[str, Any]) -> str:
        return f"| {name} | {run['seconds']} | {run['per_second']} |"

    table = "\n".join(
        [
            row("plain `requests.post` loop, no session", loopback["plain_loop"]),
            row("bulk operator, 1 worker (one session)", loopback["bulk_one_worker"]),
            row(f"bulk operator, {BULK_WORKERS} workers (one session)", loopback["bulk"]),
            row(f"plain `requests.post` loop, {ms} ms vendor latency", latency["plain_loop"]),
            row(f"bulk operator, {BULK_WORKERS} workers, {ms} ms vendor latency", latency["bulk"]),
        ]
    )
    limit, window = limited["limit"], f"{limited['window_seconds']:g}"
    peak = f"**{limited['peak_in_any_window']}** (limit {limit})"
    (RESULTS / "bulk_mark_read.md").write_text(
        f"""# Bulk mark-read benchmark

`python bench/bench_bulk_mark_read.py`, {results["date"]}, Python {results["machine"]["python"]},
{results["machine"]["cpus"]} CPUs ({results["machine"]["platform"]}). The vendor fakes
(`airflow_provider_readreceipts/testing/fakes/`) run on loopback in the same process as the client,
so client and server share one interpreter (and its GIL). Nagle's algorithm is switched off on the
fake's sockets, as real API front ends do (see the comment in the script).

## {results["conversations"]:,} Sendblue conversations marked read

| client | seconds | conversations/s |
|---|---|---|
{table}

- Zero latency (loopback): bulk operator vs plain loop **{loopback["ratio_bulk_vs_plain"]}x**; one
  worker alone (session reuse, no concurrency) {loopback["ratio_one_worker_vs_plain"]}x. Here every
  request costs CPU only, shared by client and fake in one interpreter on a small machine, so these
  two ratios vary from run to run and understate what reuse and concurrency save over a network.
- With {ms} ms of vendor latency per request (added in the fake before it answers), as with a real
  vendor API: **{latency["ratio_bulk_vs_plain"]}x**, because requests overlap.

The operator's time includes validating every number with `phonenumbers` and the hook's retry and
error handling; the plain loop sends pre-formatted numbers and checks nothing.

## Rate limit

RyzeAPI publishes 100 requests a minute. To keep the run short the window is scaled down tenfold:
**{limit} requests per {window} s**, enforced by the RyzeAPI fake and set on
`RyzeBulkMarkReadOperator` (`rate_limit={limit}, rate_limit_period={window}`), {limited["requests"]} chats.

| | |
|---|---|
| chats marked read | {limited["read"]} of {limited["requests"]} requests |
| time | {limited["seconds"]} s |
| most requests in any {window}-second window (fake's count) | {peak} |
| most requests in any window (from arrival times) | {limited["peak_from_arrival_times"]} |
| requests refused with 429 | {limited["refused_429"]} |

The limiter counts a request from its start until one window after its response, so no window at
the vendor can hold more than the limit whatever the latency; the price is that a full window takes
a little longer than the window itself.
"""
    )


if __name__ == "__main__":
    figures = main()
    write(figures)
    print(json.dumps(figures, indent=2))
