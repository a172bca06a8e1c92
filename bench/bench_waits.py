"""
Deferred read waits at scale, and how fast a READ reaches its waiting trigger.

    python bench/bench_waits.py                       # SQLite and PostgreSQL, about 3 minutes
    python bench/bench_waits.py --waits 2000 --window 10 --skip-postgres

(1) **10,000 concurrent waits in one trigger process.** Each wait is a real
:class:`~airflow_provider_readreceipts.triggers.read_receipt.ReadReceiptTrigger` run by Airflow's own
trigger runner coroutine (``airflow.jobs.triggerer_job_runner.TriggerRunner.run_trigger``: the
greenback portal, log binding, event queue and ``cleanup()`` of the real triggerer) in one event
loop. What this leaves out: the triggerer's supervisor process, the metadata database and the
comms socket that feed the runner its workloads (``[triggerer] capacity``, 1,000 by default, must
be raised to 10,000 for this load). Against it, in the same run and on the same store, the naive
trigger: each wait queries the store for its own message once per interval (with one shared
engine, which is already kinder than one engine per trigger). Each approach runs in a fresh
subprocess, so its memory is its own. Measured: store queries per second, their mean duration,
RSS, CPU, and the event loop's lag (how late a 100 ms timer fires).

(2) **Latency from the receiver's acknowledgement of a READ to the trigger's event**, p50 and p95.
The real receiver (``readreceipts-webhooks``, one uvicorn worker, another process) gets a signed
Sendblue READ webhook over loopback HTTP; the clock starts when its 2xx arrives (it answers only
after the commit) and stops when the waiting trigger yields its event, with 1,000 other waits on
the same poller. On SQLite the poller finds it at its next interval; on PostgreSQL the store's
``NOTIFY`` wakes it, and it reads only the new events (by id) and the messages they name.

(3) Import cost: ``bench/bench_import.py``.

Results: ``bench/results/waits.md`` and ``bench/results/waits.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import suppress
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
PG_ADMIN_URL = os.environ.get("READRECEIPTS_BENCH_PG_URL", "postgresql://root@127.0.0.1:5432/test")
CONN_ID = "sb_bench_waits"
SECRET = "sb-bench-waits-secret-7Tq2"


# -- helpers ------------------------------------------------------------------------------------------


def rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 1e6


def cpu_seconds() -> float:
    import psutil

    times = psutil.Process().cpu_times()
    return times.user + times.system


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def quiet_logging() -> None:
    """The runner logs two lines per trigger at INFO; keep the measurement about the waits."""
    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("airflow_provider_readreceipts").setLevel(logging.ERROR)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Store:
    """A migrated store for one backend: a SQLite file or a fresh PostgreSQL schema."""

    def __init__(self, backend: str, workdir: Path) -> None:
        self.backend = backend
        self.schema: str | None = None
        if backend == "sqlite":
            self.url = f"sqlite:///{workdir / 'receipts.db'}"
        else:
            import psycopg

            self.schema = f"rr_bench_{uuid.uuid4().hex[:10]}"
            with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
                admin.execute(f'CREATE SCHEMA "{self.schema}"')
            self.url = f"{PG_ADMIN_URL}?options=-csearch_path%3D{self.schema}"
        from airflow_provider_readreceipts.store import ReceiptStore

        self.store = ReceiptStore(self.url)
        self.store.migrate()

    def seed(self, count: int) -> None:
        """``count`` delivered, unread messages: the waits find real rows, as in production."""
        from airflow_provider_readreceipts.receipts import ReceiptEvent, Status

        self.store.heartbeat("bench")
        now = datetime.now(timezone.utc)
        for start in range(0, count, 1000):
            self.store.record(
                [
                    ReceiptEvent(
                        vendor="sendblue",
                        conn_id=CONN_ID,
                        message_id=f"wait-{i}",
                        status=Status.DELIVERED,
                        raw_status="DELIVERED",
                        occurred_at=now,
                    )
                    for i in range(start, min(start + 1000, count))
                ]
            )

    def drop(self) -> None:
        self.store.close()
        if self.schema:
            import psycopg

            with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
                admin.execute(f'DROP SCHEMA "{self.schema}" CASCADE')


# -- (1) many waits in one trigger process ------------------------------------------------------------


class NaiveCounters:
    queries = 0
    errors = 0
    query_seconds = 0.0


def naive_trigger_class() -> type:
    """One query per wait per interval: what a trigger without a shared poller does."""
    from airflow.triggers.base import BaseTrigger, TriggerEvent

    from airflow_provider_readreceipts.waits import WaitPolicy, verdict

    class NaiveReadTrigger(BaseTrigger):
        store: Any = None  # one AsyncReceiptStore for the whole process

        def __init__(self, *, message_id: str, deadline: float, poll_interval: float) -> None:
            super().__init__()
            self.message_id = message_id
            self.deadline = deadline
            self.poll_interval = poll_interval

        def serialize(self) -> tuple[str, dict[str, Any]]:
            return ("bench.NaiveReadTrigger", {"message_id": self.message_id})

        async def run(self) -> AsyncIterator[TriggerEvent]:
            key = (CONN_ID, self.message_id)
            policy = WaitPolicy("any")
            # Spread the first queries over one interval, as triggers starting over time would.
            await asyncio.sleep(random.uniform(0, self.poll_interval))
            while True:
                started = time.perf_counter()
                try:
                    status = (await self.store.statuses([key])).get(key)
                    NaiveCounters.queries += 1
                except Exception:
                    NaiveCounters.errors += 1
                    status = None
                NaiveCounters.query_seconds += time.perf_counter() - started
                outcome = verdict(status, policy)
                if outcome or time.time() >= self.deadline:
                    yield TriggerEvent({"outcome": outcome or "unread"})
                    return
                await asyncio.sleep(self.poll_interval)

    return NaiveReadTrigger


async def loop_lag(samples: list[float], stop: asyncio.Event) -> None:
    """How late a 100 ms timer fires: what every other trigger in the process also suffers."""
    while not stop.is_set():
        started = time.perf_counter()
        await asyncio.sleep(0.1)
        samples.append(time.perf_counter() - started - 0.1)


async def waits_phase(
    approach: str, url: str, waits: int, window: float, poll_interval: float
) -> dict[str, Any]:
    from airflow.jobs.triggerer_job_runner import TriggerRunner

    from airflow_provider_readreceipts.store import AsyncReceiptStore
    from airflow_provider_readreceipts.triggers import _poller
    from airflow_provider_readreceipts.triggers.read_receipt import ReadReceiptTrigger

    quiet_logging()
    rss_before = rss_mb()
    runner = TriggerRunner()
    deadline = datetime.now(timezone.utc) + timedelta(hours=1)
    naive_cls = naive_trigger_class()
    naive_store = None
    if approach == "naive":
        naive_store = naive_cls.store = AsyncReceiptStore(url)
    query_seconds = [0.0]

    started_at = time.perf_counter()
    for i in range(waits):
        if approach == "shared":
            trigger: Any = ReadReceiptTrigger(
                conn_id=CONN_ID,
                message_id=f"wait-{i}",
                vendor="sendblue",
                deadline=deadline.isoformat(),
                poll_interval=poll_interval,
                reconcile_interval=None,
                **({"store_path": url.removeprefix("sqlite:///")} if url.startswith("sqlite") else {}),
                **({"store_conn_id": "rr_bench_store"} if not url.startswith("sqlite") else {}),
            )
        else:
            trigger = naive_cls(
                message_id=f"wait-{i}", deadline=deadline.timestamp(), poll_interval=poll_interval
            )
        runner.triggers[i] = {"task": None, "is_watcher": False, "name": f"wait-{i}", "events": 0}
        runner.triggers[i]["task"] = asyncio.create_task(runner.run_trigger(i, trigger, None, None))
        if i % 500 == 0:
            await asyncio.sleep(0)

    poller = None
    if approach == "shared":
        while not _poller.active_pollers() or _poller.active_pollers()[0].wait_count < waits:
            await asyncio.sleep(0.05)
        poller = _poller.active_pollers()[0]
        original = poller.store.statuses

        async def timed(keys: Any) -> Any:
            began = time.perf_counter()
            try:
                return await original(keys)
            finally:
                query_seconds[0] += time.perf_counter() - began

        poller.store.statuses = timed  # type: ignore[method-assign]
    registered_after = time.perf_counter() - started_at
    await asyncio.sleep(poll_interval)  # settle into the steady state

    lag: list[float] = []
    stop = asyncio.Event()
    lag_task = asyncio.create_task(loop_lag(lag, stop))
    queries_before = poller.queries if poller else NaiveCounters.queries
    NaiveCounters.query_seconds = 0.0
    cpu_before, wall_before = cpu_seconds(), time.perf_counter()
    await asyncio.sleep(window)
    elapsed = time.perf_counter() - wall_before
    cpu = cpu_seconds() - cpu_before
    queries = (poller.queries if poller else NaiveCounters.queries) - queries_before
    rss_steady = rss_mb()
    stop.set()
    await lag_task

    # The triggerer cancels triggers when their tasks leave: nothing may be left behind.
    for details in runner.triggers.values():
        details["task"].cancel()
    await asyncio.gather(*(d["task"] for d in runner.triggers.values()), return_exceptions=True)
    leaked = len(_poller.active_pollers())
    if naive_store is not None:
        await naive_store.dispose()
    spent = query_seconds[0] if approach == "shared" else NaiveCounters.query_seconds
    return {
        "approach": approach,
        "waits": waits,
        "poll_interval_s": poll_interval,
        "window_s": round(elapsed, 2),
        "registration_s": round(registered_after, 2),
        "queries": queries,
        "queries_per_second": round(queries / elapsed, 2),
        "queries_per_second_needed": round(waits / poll_interval, 1),
        "mean_query_ms": round(1000 * spent / queries, 2) if queries else None,
        "query_errors": NaiveCounters.errors
        if approach == "naive"
        else (poller.failed_queries if poller else 0),
        "cpu_percent": round(100 * cpu / elapsed, 1),
        "rss_before_mb": round(rss_before, 1),
        "rss_steady_mb": round(rss_steady, 1),
        "rss_per_wait_kb": round(1000 * (rss_steady - rss_before) / waits, 2),
        "loop_lag_p50_ms": round(1000 * percentile(lag, 0.5), 1),
        "loop_lag_p95_ms": round(1000 * percentile(lag, 0.95), 1),
        "pollers_left_after_cancel": leaked,
    }


def run_waits_phase(args: argparse.Namespace) -> None:
    result = asyncio.run(waits_phase(args.approach, args.url, args.waits, args.window, args.poll_interval))
    print("RESULT " + json.dumps(result))


def spawn_waits_phase(approach: str, store: Store, args: argparse.Namespace) -> dict[str, Any]:
    environment = {**os.environ, "AIRFLOW__CORE__LOAD_EXAMPLES": "False"}
    if store.backend == "postgresql":
        environment["AIRFLOW_CONN_RR_BENCH_STORE"] = json.dumps(
            {
                "conn_type": "postgres",
                "host": "127.0.0.1",
                "port": 5432,
                "login": "root",
                "schema": "test",
                "extra": {"options": f"-csearch_path={store.schema}"},
            }
        )
    command = [
        sys.executable,
        __file__,
        "--phase=waits",
        f"--approach={approach}",
        f"--url={store.url}",
        f"--waits={args.waits}",
        f"--window={args.window}",
        f"--poll-interval={args.poll_interval}",
    ]
    completed = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=600)
    for line in completed.stdout.splitlines():
        if line.startswith("RESULT "):
            result: dict[str, Any] = json.loads(line.removeprefix("RESULT "))
            result["backend"] = store.backend
            print(f"  {store.backend:10} {approach:6} {json.dumps(result)}", flush=True)
            return result
    raise RuntimeError(f"{approach} phase failed:\n{completed.stdout[-3000:]}\n{completed.stderr[-3000:]}")


# -- (2) latency from the receiver's 2xx to the trigger's event ----------------------------------------


def start_receiver(store: Store, workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    import httpx

    port = free_port()
    environment = {
        **os.environ,
        "AIRFLOW_HOME": str(workdir / "airflow"),
        f"AIRFLOW_CONN_{CONN_ID.upper()}": json.dumps(
            {"conn_type": "sendblue", "login": "k", "password": "s", "extra": {"webhook_secret": SECRET}}
        ),
    }
    log = open(workdir / f"receiver-{store.backend}.log", "wb")  # closed when this process exits
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "airflow_provider_readreceipts.webhooks.standalone",
            "--host=127.0.0.1",
            f"--port={port}",
            "--workers=1",
            f"--store-url={store.url}",
            "--no-access-log",
            "--log-level=warning",
        ],
        cwd=REPO,
        env=environment,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with suppress(httpx.HTTPError):
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return process, base
        if process.poll() is not None:
            break
        time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"the receiver did not start; see {workdir}/receiver-{store.backend}.log")


async def latency_phase(
    store: Store, base_url: str, samples: int, background: int, poll_interval: float
) -> dict[str, Any]:
    import httpx

    from airflow_provider_readreceipts.triggers import _poller
    from airflow_provider_readreceipts.triggers.read_receipt import ReadReceiptTrigger

    quiet_logging()
    deadline = (datetime.now(timezone.utc) + timedelta(hours=1)).isoformat()
    target = (
        {"store_path": store.url.removeprefix("sqlite:///")}
        if store.backend == "sqlite"
        else {"store_conn_id": "rr_bench_store"}
    )

    def trigger(message_id: str) -> ReadReceiptTrigger:
        return ReadReceiptTrigger(
            conn_id=CONN_ID,
            message_id=message_id,
            vendor="sendblue",
            deadline=deadline,
            poll_interval=poll_interval,
            reconcile_interval=None,
            **target,
        )

    async def wait(message_id: str) -> float:
        async for event in trigger(message_id).run():
            assert event.payload["outcome"] == "read", event.payload
            return time.perf_counter()
        raise AssertionError("no event")

    others = [asyncio.create_task(wait(f"wait-{i}")) for i in range(background)]
    while not _poller.active_pollers() or _poller.active_pollers()[0].wait_count < background:
        await asyncio.sleep(0.05)
    poller = _poller.active_pollers()[0]

    async def sample(client: httpx.AsyncClient, index: int) -> float:
        message_id = f"latency-{uuid.uuid4().hex}"
        waiting = asyncio.create_task(wait(message_id))
        while (CONN_ID, message_id) not in poller._waits:
            await asyncio.sleep(0.01)
        # A random moment within the poll interval, as a contact reading at any time would.
        await asyncio.sleep(random.uniform(0.2, 0.2 + poll_interval))
        body = {
            "message_handle": message_id,
            "number": "+14155551234",
            "from_number": "+19175551234",
            "status": "READ",
            "is_outbound": True,
            "message_type": "message",
            "date_updated": datetime.now(timezone.utc).isoformat(),
        }
        response = await client.post(
            f"{base_url}/webhooks/{CONN_ID}", json=body, headers={"sb-signing-secret": SECRET}
        )
        acknowledged = time.perf_counter()
        assert response.status_code == 200, response.text
        return (await waiting) - acknowledged

    async with httpx.AsyncClient(timeout=30) as client:
        latencies: list[float] = []
        for start in range(0, samples, 10):  # ten at a time, staggered within the interval
            batch = [sample(client, i) for i in range(start, min(start + 10, samples))]
            latencies.extend(await asyncio.gather(*batch))
    listening = poller.listening
    for task in others:
        task.cancel()
    await asyncio.gather(*others, return_exceptions=True)
    milliseconds = [1000 * value for value in latencies]
    return {
        "backend": store.backend,
        "samples": len(milliseconds),
        "background_waits": background,
        "poll_interval_s": poll_interval,
        "woken_by_notify": listening,
        "p50_ms": round(percentile(milliseconds, 0.5), 1),
        "p95_ms": round(percentile(milliseconds, 0.95), 1),
        "max_ms": round(max(milliseconds), 1),
        "mean_ms": round(statistics.fmean(milliseconds), 1),
    }


# -- the report ---------------------------------------------------------------------------------------


def write_results(summary: dict[str, Any]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "waits.json").write_text(json.dumps(summary, indent=2) + "\n")
    settings = summary["settings"]
    lines = [
        "# Deferred read waits",
        "",
        f"Measured {summary['measured_at']} on {summary['machine']} by `python bench/bench_waits.py`"
        f" (loopback only).",
        "",
        f"## (1) {settings['waits']:,} concurrent waits in one trigger process",
        "",
        f"Every wait a real `ReadReceiptTrigger` run by Airflow's own `TriggerRunner.run_trigger` in one"
        f" event loop, poll interval {settings['poll_interval_s']} s, deadline an hour away, store seeded"
        f" with {settings['waits']:,} delivered messages. Steady state measured over"
        f" {settings['window_s']} s, each approach in its own process. *Left out*: the triggerer's"
        " supervisor process, metadata DB and comms socket (which hand the runner its workloads; raise"
        " `[triggerer] capacity` from its default 1,000 for this load). *naive* = one store query per"
        " wait per interval (one shared engine).",
        "",
        "*queries/s (needed)*: status queries made, and how many the approach needs to look at every"
        " wait once per interval. *mean query*: from asking to the answer, waiting for a pooled"
        " connection included (the naive waits mostly queue; *errors* are pool time-outs).",
        "",
        "| store | approach | queries/s (needed) | mean query | errors | CPU | RSS steady | RSS/wait"
        " | loop lag p50 / p95 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in summary["waits"]:
        shared = row["approach"] == "shared"
        needed = 1 / row["poll_interval_s"] if shared else row["queries_per_second_needed"]
        lines.append(
            f"| {row['backend']} | {row['approach']} | {row['queries_per_second']} ({needed:g})"
            f" | {row['mean_query_ms']} ms | {row['query_errors']} | {row['cpu_percent']} %"
            f" | {row['rss_steady_mb']} MB | {row['rss_per_wait_kb']} kB"
            f" | {row['loop_lag_p50_ms']} / {row['loop_lag_p95_ms']} ms |"
        )
    lines += [
        "",
        "After the measurement every trigger task is cancelled (as the triggerer does); pollers left"
        f" afterwards: {sorted({row['pollers_left_after_cancel'] for row in summary['waits']})}.",
        "",
        "## (2) Receiver acknowledgement of a READ → trigger event",
        "",
        "The real receiver (one uvicorn worker, another process) gets a Sendblue READ webhook over"
        " loopback; the clock runs from its 2xx (sent after the commit) to the waiting trigger's event,"
        f" with {settings['latency_background_waits']:,} other waits on the same poller. Reads arrive"
        " at random moments within the poll interval.",
        "",
        "| store | poll interval | woken by NOTIFY | samples | p50 | p95 | max |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in summary["latency"]:
        lines.append(
            f"| {row['backend']} | {row['poll_interval_s']} s | {'yes' if row['woken_by_notify'] else 'no'}"
            f" | {row['samples']} | {row['p50_ms']} ms | {row['p95_ms']} ms | {row['max_ms']} ms |"
        )
    lines += [
        "",
        "SQLite has no notifications: a READ waits for the next poll, so its latency is about half the"
        " poll interval on average (lower `poll_interval` to trade queries for latency; one query serves"
        " every wait). On PostgreSQL the store's `NOTIFY` after each commit wakes the poller at once,"
        " which then reads only the events newer than the last it saw (by id) and the status of the"
        " messages they name, not all the waits' (that full sweep stays once per interval).",
        "",
        "The mean query time of the shared poller is the store's one status query for all 10,000"
        " messages (SQLAlchemy turning 10,000 rows into status records); it runs once per interval,"
        " and the event loop lag above includes it.",
        "",
        "## (3) Import cost",
        "",
        "See [import_cost.md](import_cost.md) (`python bench/bench_import.py`).",
        "",
    ]
    (RESULTS / "waits.md").write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--waits", type=int, default=10_000)
    parser.add_argument("--window", type=float, default=20.0, help="seconds measured per approach")
    parser.add_argument("--poll-interval", type=float, default=5.0)
    parser.add_argument("--latency-samples", type=int, default=40)
    parser.add_argument("--latency-background", type=int, default=1000)
    parser.add_argument("--latency-poll-interval", type=float, default=1.0)
    parser.add_argument("--skip-postgres", action="store_true")
    # Internal: one approach in a subprocess.
    parser.add_argument("--phase", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--approach", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--url", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    if args.phase == "waits":
        run_waits_phase(args)
        return

    workdir = Path(tempfile.mkdtemp(prefix="rr-bench-waits-"))
    os.environ.setdefault("AIRFLOW_HOME", str(workdir / "airflow"))
    backends = ["sqlite"] if args.skip_postgres else ["sqlite", "postgresql"]
    summary: dict[str, Any] = {
        "measured_at": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "settings": {
            "waits": args.waits,
            "window_s": args.window,
            "poll_interval_s": args.poll_interval,
            "latency_background_waits": args.latency_background,
        },
        "waits": [],
        "latency": [],
    }
    for backend in backends:
        store = Store(backend, workdir)
        try:
            store.seed(args.waits)
            print(f"(1) {backend}: {args.waits} waits", flush=True)
            for approach in ("shared", "naive"):
                summary["waits"].append(spawn_waits_phase(approach, store, args))
            print(f"(2) {backend}: latency", flush=True)
            process, base_url = start_receiver(store, workdir)
            try:
                if backend == "postgresql":
                    os.environ["AIRFLOW_CONN_RR_BENCH_STORE"] = json.dumps(
                        {
                            "conn_type": "postgres",
                            "host": "127.0.0.1",
                            "port": 5432,
                            "login": "root",
                            "schema": "test",
                            "extra": {"options": f"-csearch_path={store.schema}"},
                        }
                    )
                interval = args.latency_poll_interval if backend == "sqlite" else args.poll_interval
                row = asyncio.run(
                    latency_phase(store, base_url, args.latency_samples, args.latency_background, interval)
                )
                print(f"  {json.dumps(row)}", flush=True)
                summary["latency"].append(row)
            finally:
                process.terminate()
                process.wait(timeout=30)
        finally:
            store.drop()
    write_results(summary)
    print(f"wrote {RESULTS / 'waits.md'}")


if __name__ == "__main__":
    main()
