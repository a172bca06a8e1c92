"""
The one-command demo: the follow-up campaign against the local vendor sandbox, end to end.

    make demo                      # creates .venv on first use, then runs this
    .venv/bin/python scripts/demo.py [--keep] [--verbose]

What it does, with nothing to configure:

1. makes a temporary ``AIRFLOW_HOME`` and migrates Airflow's metadata DB there (SQLite);
2. starts the vendor sandbox (``python -m airflow_provider_readreceipts.testing.sandbox``) and the
   standalone webhook receiver (``python -m airflow_provider_readreceipts.webhooks.standalone``,
   SQLite receipt store) as child processes, with ``AIRFLOW_CONN_*`` variables pointing everything
   at the sandbox;
3. runs ``example_dags/follow_up_campaign.py`` with ``dag.test()``;
4. prints who read (and how fast), who was called, who failed and was reached on WhatsApp;
5. stops its processes and removes the temporary folder, also on Ctrl-C or failure.

Exit status 0 when the run succeeded and every contact took the path the sandbox's rule predicts.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from airflow_provider_readreceipts.testing.sandbox import connection_environment
from airflow_provider_readreceipts.testing.sandbox.fates import fate_for

REPO = Path(__file__).resolve().parents[1]
DAG_FILE = REPO / "example_dags" / "follow_up_campaign.py"
DAG_ID = "readreceipts_follow_up_campaign"
#: How long the sandbox and the receiver may take to start (Airflow's first import is slow).
STARTUP_TIMEOUT = 180.0


def say(message: str) -> None:
    """Print a line of the demo's output at once."""
    print(message, flush=True)


def free_port() -> int:
    """A loopback TCP port nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _die_with_parent() -> None:
    # Linux: the child gets SIGTERM if the demo dies without cleaning up (kill -9). Best effort.
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Processes:
    """Child processes that are stopped (SIGTERM, then SIGKILL) when the block ends, however it ends."""

    def __init__(self) -> None:
        self.running: list[tuple[str, subprocess.Popen[bytes], Path]] = []

    def start(self, name: str, command: Sequence[str], *, log: Path, env: dict[str, str]) -> None:
        with log.open("wb") as output:
            process = subprocess.Popen(  # noqa: S603 - our own interpreter and modules
                list(command),
                stdout=output,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=REPO,
                # Own session: Ctrl-C reaches only the demo, which then stops the children in order.
                start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
        self.running.append((name, process, log))

    def check(self) -> None:
        for name, process, log in self.running:
            if process.poll() is not None:
                raise RuntimeError(
                    f"{name} exited ({process.returncode}):\n{log.read_text(errors='replace')}"
                )

    def stop(self) -> None:
        for _, process, _ in reversed(self.running):
            if process.poll() is None:
                process.terminate()
        for _, process, _ in reversed(self.running):
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        self.running.clear()


def wait_healthy(url: str, processes: Processes, *, timeout: float = STARTUP_TIMEOUT) -> None:
    """Wait until ``url`` answers 200, failing early if a child process died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        processes.check()
        with contextlib.suppress(urllib.error.URLError, OSError):
            with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - loopback http
                if response.status == 200:
                    return
        time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f}s")


def get_json(url: str) -> Any:
    """GET a loopback URL and decode its JSON answer."""
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - loopback http
        return json.load(response)


@contextlib.contextmanager
def step(title: str) -> Iterator[None]:
    """Print ``title``, run the block, then how long it took (or that it failed)."""
    print(f"- {title} ...", end="", flush=True)
    started = time.monotonic()
    try:
        yield
    except BaseException:
        print(" failed", flush=True)
        raise
    print(f" {time.monotonic() - started:.1f}s", flush=True)


def demo_environment(home: Path, *, sandbox_url: str, receiver_url: str, verbose: bool) -> dict[str, str]:
    """Everything the demo configures, as environment variables (inherited by its child processes)."""
    env = {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAG_FILE.parent),
        # The receipt store: the receiver writes to this SQLite file, the read sensor reads it.
        "READRECEIPTS_STORE_PATH": str(home / "readreceipts.db"),
        **connection_environment(sandbox_url=sandbox_url, receiver_url=receiver_url),
    }
    if not verbose:
        # Task logs go to files under AIRFLOW_HOME; the demo prints its own summary.
        env["AIRFLOW__LOGGING__LOGGING_LEVEL"] = "CRITICAL"
    return env


def run_campaign() -> tuple[str, str]:
    """Parse the campaign DAG (as the DAG processor would) and run it with dag.test()."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAG_FILE))
    if bag.import_errors:
        raise RuntimeError(f"{DAG_FILE} does not parse: {bag.import_errors}")
    run = bag.get_dag(DAG_ID).test()
    return run.run_id, str(run.state)


def xcoms(run_id: str, task_id: str) -> dict[int, Any]:
    """A task's return values in the run, by map index."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.scalars(
            select(XComModel).where(
                XComModel.dag_id == DAG_ID,
                XComModel.run_id == run_id,
                XComModel.task_id == task_id,
                XComModel.key == "return_value",
            )
        ).all()
        return {row.map_index: XComModel.deserialize_value(row) for row in rows}


def states(run_id: str, task_id: str) -> dict[int, str]:
    """A task's states in the run, by map index."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.scalars(
            select(TaskInstance).where(
                TaskInstance.dag_id == DAG_ID, TaskInstance.run_id == run_id, TaskInstance.task_id == task_id
            )
        ).all()
        return {ti.map_index: str(ti.state) for ti in rows}


def summarise(run_id: str, sandbox_state: dict[str, Any]) -> list[str]:
    """Print the campaign's outcome per contact; return the contacts whose path surprised us."""
    results = xcoms(run_id, "wait_for_read")
    report = xcoms(run_id, "report").get(-1) or {}
    names = {entry["number"]: entry["name"] for entries in report.values() for entry in entries}
    # The next steps are mapped over one list per outcome: find each contact's by number.
    follow_ups = {ref["chat"]: ref for ref in xcoms(run_id, "follow_up").values()}
    calls = {call["to"]: call for call in xcoms(run_id, "call").values()}
    whatsapp = {ref["chat"]: ref for ref in xcoms(run_id, "switch_to_whatsapp").values()}
    say("")
    say(f"{'contact':<10} {'number':<14} {'outcome':<8} {'time to read':>12}  next step")
    say(f"{'-' * 10} {'-' * 14} {'-' * 8} {'-' * 12}  {'-' * 44}")
    surprises = []
    for index in sorted(results):
        result = results[index]
        number, outcome = result["chat"], result["outcome"]
        took = (
            f"{result['time_to_read_seconds']:.1f} s" if result["time_to_read_seconds"] is not None else "-"
        )
        if number in follow_ups:
            action = "follow-up sent (iMessage)"
        elif number in calls:
            action = f"escalated: phone call {calls[number]['call_id']} placed"
        elif number in whatsapp:
            reason = (result.get("failure_reason") or "failed").split(" (")[0]
            action = f"{reason}: sent on WhatsApp (Direct7) instead"
        else:
            action = "no next step ran"
        say(f"{names.get(number, '?'):<10} {number:<14} {outcome:<8} {took:>12}  {action}")
        expected = fate_for(number).value
        took_path = {"read": follow_ups, "unread": calls, "failed": whatsapp}[expected]
        if outcome != expected or number not in took_path:
            surprises.append(
                f"{number}: the sandbox's rule says {expected}; the run says {outcome} ({action})"
            )
    acknowledged = [d for d in sandbox_state["deliveries"] if d["acknowledged"]]
    duplicates = [d for d in acknowledged if d["duplicate_of"] is not None]
    retried = [d for d in acknowledged if len(d["attempts"]) > 1]
    say("")
    say(
        f"webhooks: {len(acknowledged)} acknowledged by the receiver ({len(duplicates)} duplicate deliveries,"
        f" stored once; {len(retried)} needed a retry); calls placed: {len(sandbox_state['calls'])}"
    )
    return surprises


def start_services(processes: Processes, home: Path, *, sandbox_port: int, receiver_port: int) -> None:
    """The vendor sandbox and the standalone receiver (SQLite store), as child processes."""
    python = sys.executable
    receiver_url = f"http://127.0.0.1:{receiver_port}/webhooks"
    sandbox = ["-m", "airflow_provider_readreceipts.testing.sandbox", "--port", str(sandbox_port)]
    sandbox += ["--receiver-url", receiver_url, "--max-runtime", "900"]
    receiver = ["-m", "airflow_provider_readreceipts.webhooks.standalone", "--host", "127.0.0.1"]
    receiver += ["--port", str(receiver_port), "--store-url", f"sqlite:///{home / 'readreceipts.db'}"]
    processes.start("the sandbox", [python, *sandbox], log=home / "sandbox.log", env=dict(os.environ))
    processes.start("the receiver", [python, *receiver], log=home / "receiver.log", env=dict(os.environ))


def failed_tasks(run_id: str) -> list[str]:
    """The tasks of the run that did not succeed or skip, for the failure message."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.scalars(
            select(TaskInstance).where(TaskInstance.dag_id == DAG_ID, TaskInstance.run_id == run_id)
        ).all()
        return [
            f"{ti.task_id}[{ti.map_index}]: {ti.state}"
            for ti in rows
            if ti.state not in ("success", "skipped")
        ]


def main(argv: Sequence[str] | None = None) -> int:
    """
    Run the demo.

    :param argv: the arguments, without the program name.
    """
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the temporary AIRFLOW_HOME (logs, databases)"
    )
    parser.add_argument("--verbose", action="store_true", help="show Airflow's own logs")
    args = parser.parse_args(argv)

    # SIGTERM ends the demo as Ctrl-C does, through the cleanup below.
    def interrupted(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    started = time.monotonic()
    home = Path(tempfile.mkdtemp(prefix="readreceipts-demo-"))
    processes = Processes()
    succeeded = False
    try:
        sandbox_port, receiver_port = free_port(), free_port()
        sandbox_url, receiver = f"http://127.0.0.1:{sandbox_port}", f"http://127.0.0.1:{receiver_port}"
        env = demo_environment(
            home, sandbox_url=sandbox_url, receiver_url=f"{receiver}/webhooks", verbose=args.verbose
        )
        os.environ.update(env)  # before Airflow is imported: it reads its configuration once
        say(f"Read-receipts demo (AIRFLOW_HOME={home})")
        with step("starting the vendor sandbox and the webhook receiver"):
            start_services(processes, home, sandbox_port=sandbox_port, receiver_port=receiver_port)
        with step("migrating the Airflow metadata DB (SQLite)"):
            from airflow.utils import db

            db.upgradedb()
        with step("waiting for the sandbox and the receiver to answer"):
            wait_healthy(f"{sandbox_url}/_sandbox/healthz", processes)
            wait_healthy(f"{receiver}/healthz", processes)
        say("- running the campaign with dag.test(): sends, deferred waits (unread ones end at the")
        with step("  deadline, 30 s after the start), then follow-ups, calls and WhatsApp fallbacks"):
            run_id, state = run_campaign()
        surprises = summarise(run_id, get_json(f"{sandbox_url}/_sandbox/state"))
        say(f"\nDAG run {run_id}: {state} in {time.monotonic() - started:.0f}s")
        for problem in [*surprises, *failed_tasks(run_id)]:
            say(f"unexpected: {problem}")
        succeeded = state == "success" and not surprises
        return 0 if succeeded else 1
    except KeyboardInterrupt:
        say("\ninterrupted: stopping the sandbox and the receiver")
        return 130
    finally:
        processes.stop()
        if args.keep or not succeeded:
            say(f"logs and databases kept in {home} (the task logs are under logs/)")
        else:
            shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
