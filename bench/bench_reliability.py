"""
The reliability and security suite at full scale, and its figures as a report.

    python bench/bench_reliability.py                 # full scale (what the recorded figures use)
    python bench/bench_reliability.py --scale ci      # the smaller counts `make test` runs
    python bench/bench_reliability.py --keep-going    # do not stop at the first failing check

Runs ``pytest`` on ``tests/test_reliability_*.py`` plus the store's durability checks in
``tests/test_store.py``, with ``READRECEIPTS_RELIABILITY_SCALE`` set to the scale and
``READRECEIPTS_RELIABILITY_REPORT`` naming a JSON file that the suite's ``figures`` fixture fills
(``tests/fixtures_reliability.py``) and the secret scan adds to (``tests/fixtures_secrets.py``: it
scans this session's logs, outputs, exception texts and log files). Then writes
``bench/results/reliability.json`` (the figures with the run's details) and
``bench/results/reliability.md``: a table per section (a section no check recorded shows "not run"),
the totals (requests tried, refused, stored, lost, duplicates, crashes survived, 5xx) and whether
the run passed.

The exit status is pytest's: 0 only when every check and the secret scan passed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"

#: Sections in report order, with what each one checks.
SECTIONS = {
    "vendor_faults": "Operators against vendor fakes answering 503s, 429 with Retry-After, slow answers and "
    "dropped connections (`tests/test_reliability_faults.py`).",
    "durability": "Durability settings read off the receiver writer's own connections; PostgreSQL with "
    "`synchronous_commit=off` as the role's and database's default (`tests/test_reliability_durability.py`).",
    "secret_hygiene": "Every log record, captured output, exception text and log file of the run, "
    "scanned for the suite's secrets (`tests/fixtures_secrets.py`).",
    "fuzzing": "Hostile webhook input, property-based (`tests/test_reliability_fuzz.py`).",
    "schema_fuzzing": "Webhook requests generated from each vendor's payload schema "
    "(`tests/test_reliability_fuzz.py`).",
    "authenticity": "Forged, replayed and unsigned webhooks (`tests/test_reliability_auth.py`).",
    "crash_receiver": "The receiver killed with SIGKILL under load (`tests/test_reliability_crash.py`).",
    "crash_triggerer": "The triggerer killed with SIGKILL while waiting (`tests/test_reliability_crash.py`).",
    "storms": "Duplicate and out-of-order webhook storms over several receivers "
    "(`tests/test_reliability_storms.py`).",
}

#: Totals: each case counts the first of these figures it recorded (so one request is not counted twice).
TOTALS: dict[str, tuple[tuple[str, ...], bool]] = {
    # name: (figure names, sum all of them (True) or take the first present (False))
    "requests tried": (("tried", "delivered", "requests_seen_by_vendor"), False),
    "refused": (("refused",), False),
    "stored": (("stored", "reached_store", "events_stored"), False),
    "lost": (("lost", "acknowledged_missing"), True),
    "duplicates": (("duplicates", "duplicates_stored", "duplicates_sent"), True),
    "crashes survived": (("crashes_survived",), True),
    "5xx": (("server_errors", "5xx"), True),
}

DURABILITY_CHECKS = [
    "tests/test_store.py::test_sqlite_connections_use_wal_full_sync_and_busy_timeout",
    "tests/test_store.py::test_postgres_connections_force_synchronous_commit_on",
]


def machine() -> str:
    python = platform.python_version()
    return f"{platform.machine()}, {os.cpu_count()} CPUs, Python {python}, {platform.platform()}"


def run_suite(scale: str, report: Path, keep_going: bool, extra: list[str]) -> tuple[int, float, str]:
    files = sorted(str(path.relative_to(REPO)) for path in (REPO / "tests").glob("test_reliability_*.py"))
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-p",
        "no:cacheprovider",
        "-q",
        "-rfE",
        *files,
        *DURABILITY_CHECKS,
    ]
    if not keep_going:
        command.append("-x")
    command += extra
    env = {
        **os.environ,
        "READRECEIPTS_RELIABILITY_SCALE": scale,
        "READRECEIPTS_RELIABILITY_REPORT": str(report),
    }
    print("$", " ".join(command[1:]), flush=True)
    started = time.monotonic()
    # Our own interpreter running pytest on the repository's tests: no untrusted input.
    result = subprocess.run(command, cwd=REPO, env=env, check=False)
    return result.returncode, time.monotonic() - started, " ".join(["python", *command[1:]])


def totals(sections: dict[str, dict[str, dict[str, Any]]]) -> dict[str, int | float]:
    summed: dict[str, int | float] = {name: 0 for name in TOTALS}
    for cases in sections.values():
        for numbers in cases.values():
            for name, (keys, all_of_them) in TOTALS.items():
                present = [numbers[key] for key in keys if _is_number(numbers.get(key))]
                if present:
                    summed[name] += sum(present) if all_of_them else present[0]
    return summed


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:,.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, (list, tuple)):
        return ", ".join(str(item) for item in value)
    return str(value).replace("|", "\\|")


def section_table(cases: dict[str, dict[str, Any]]) -> list[str]:
    columns: list[str] = []
    for numbers in cases.values():
        columns += [name for name in numbers if name not in columns]
    lines = [
        "| case | " + " | ".join(columns) + " |",
        "|---|" + "|".join("---:" if _numeric_column(cases, c) else "---" for c in columns) + "|",
    ]
    for case, numbers in sorted(cases.items()):
        lines.append(f"| {_cell(case)} | " + " | ".join(_cell(numbers.get(c)) for c in columns) + " |")
    return lines


def _numeric_column(cases: dict[str, dict[str, Any]], column: str) -> bool:
    return all(_is_number(numbers.get(column)) for numbers in cases.values() if column in numbers)


def render(summary: dict[str, Any]) -> str:
    sections: dict[str, dict[str, dict[str, Any]]] = summary["sections"]
    sums = summary["totals"]
    verdict = "PASSED" if summary["passed"] else f"FAILED (pytest exit status {summary['exit_status']})"
    lines = [
        "# Reliability and security suite",
        "",
        f"Measured {summary['measured_at']} on {summary['machine']} by `python bench/bench_reliability.py"
        f"{'' if summary['scale'] == 'full' else ' --scale ' + summary['scale']}`: "
        f"scale **{summary['scale']}**, "
        f"runtime {summary['runtime_s'] / 60:.1f} min. Real HTTP on loopback, real SQLite files, the real "
        "PostgreSQL server.",
        "",
        f"**Run: {verdict}.**",
        "",
        "Totals: " + ", ".join(f"{name} **{_cell(value)}**" for name, value in sums.items()) + ".",
        "",
        "(Each case counts once per total: requests tried is `tried`, else `delivered`, else the "
        "requests the vendor fake saw; stored is `stored`, else `reached_store`, else `events_stored`; "
        "lost, duplicates, crashes survived and 5xx add up every such figure.)",
        "",
    ]
    order = list(SECTIONS) + sorted(name for name in sections if name not in SECTIONS)
    for name in order:
        lines += [f"## {name}", ""]
        if name in SECTIONS:
            lines += [SECTIONS[name], ""]
        if name not in sections or not sections[name]:
            lines += ["not run", ""]
            continue
        lines += [*section_table(sections[name]), ""]
    lines += [f"Command: `{summary['command']}`", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scale", choices=["ci", "full"], default="full")
    parser.add_argument("--keep-going", action="store_true", help="run every check even after a failure")
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder for reliability.md and .json")
    parser.add_argument("pytest_args", nargs="*", help="more pytest arguments (after --)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="readreceipts-reliability-") as folder:
        report = Path(folder) / "figures.json"
        exit_status, runtime, command = run_suite(args.scale, report, args.keep_going, args.pytest_args)
        try:
            figures = json.loads(report.read_text()) if report.exists() else {}
        except ValueError:
            figures = {}
    sections = figures.get("sections", {})
    summary = {
        "measured_at": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "scale": args.scale,
        "runtime_s": round(runtime, 1),
        "exit_status": exit_status,
        "passed": exit_status == 0,
        "command": command,
        "totals": totals(sections),
        "sections": sections,
    }
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "reliability.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    (args.results / "reliability.md").write_text(render(summary))
    print(f"\n{'passed' if summary['passed'] else 'FAILED'} in {runtime / 60:.1f} min; totals:")
    for name, value in summary["totals"].items():
        print(f"  {name}: {_cell(value)}")
    print(f"wrote {args.results / 'reliability.md'} and {args.results / 'reliability.json'}")
    return exit_status


if __name__ == "__main__":
    sys.exit(main())
