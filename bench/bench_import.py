"""
What importing every operator and sensor module of the package adds to ``import airflow.sdk``.

    python bench/bench_import.py            # 9 rounds, about a minute on an idle machine
    python bench/bench_import.py --rounds 5

The scheduler's DAG processor imports these modules at every parse of a DAG file that uses them, so
the budget is 50 ms on top of ``import airflow.sdk``. Each round is a fresh interpreter that first
imports ``airflow.sdk`` and then times the import of the modules; the median of the rounds is
reported, interleaved with the same measure for:

* ``nothing``: the same script importing nothing (the floor of the method);
* ``sdk bases``: ``from airflow.sdk import DAG, BaseOperator, BaseSensorOperator``, which every DAG
  file using operators pays anyway (our modules need those classes too);
* ``providers-http``: ``HttpOperator`` and ``HttpSensor``, for scale.

Also lists the modules each import loads that are not loaded by ``import airflow.sdk``, the heaviest
first (``python -X importtime``), and checks that none of SQLAlchemy, aiohttp, FastAPI, asyncpg,
aiosqlite, requests or a hook module is among ours. Results: ``bench/results/import_cost.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
PACKAGE = REPO / "airflow_provider_readreceipts"
BUDGET_MS = 50.0
HEAVY = ("sqlalchemy", "aiohttp", "fastapi", "starlette", "asyncpg", "aiosqlite", "requests", "psycopg")


def our_modules() -> list[str]:
    """Every public operator and sensor module (private helpers are imported through them)."""
    found = []
    for folder in ("operators", "sensors"):
        for path in sorted((PACKAGE / folder).glob("*.py")):
            if not path.name.startswith("_"):
                found.append(f"airflow_provider_readreceipts.{folder}.{path.stem}")
    return found


CASES = {
    "nothing": [],
    "sdk bases": ["airflow.sdk:DAG,BaseOperator,BaseSensorOperator"],
    "readreceipts": None,  # filled in main()
    "providers-http": ["airflow.providers.http.operators.http", "airflow.providers.http.sensors.http"],
}


def script(imports: list[str]) -> str:
    lines = [
        "import time, sys, json",
        "import airflow.sdk",
        "before = set(sys.modules)",
        "t = time.perf_counter()",
    ]
    for spec in imports:
        module, _, names = spec.partition(":")
        lines.append(f"from {module} import {names}" if names else f"import {module}")
    lines.append("elapsed = time.perf_counter() - t")
    lines.append("print(json.dumps({'ms': elapsed * 1000, 'new': sorted(set(sys.modules) - before)}))")
    return "\n".join(lines)


def run_once(imports: list[str], environment: dict[str, str]) -> dict[str, object]:
    completed = subprocess.run(
        [sys.executable, "-c", script(imports)], capture_output=True, text=True, check=True, env=environment
    )
    return json.loads(completed.stdout.strip().splitlines()[-1])


def importtime_top(imports: list[str], environment: dict[str, str], top: int = 8) -> list[tuple[str, int]]:
    """The modules with the largest cumulative import time, among those loaded after airflow.sdk."""
    code = script(imports)
    completed = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True, env=environment
    )
    lines = completed.stderr.splitlines()
    # Only what is imported after airflow.sdk: from the first line of our imports on.
    rows: list[tuple[str, int]] = []
    started = False
    first = imports[0].partition(":")[0].split(".")[0] if imports else ""
    for line in lines:
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, cumulative, name = (part.strip() for part in line.removeprefix("import time:").split("|"))
        if not started and name.strip().startswith(first):
            started = True
        if started and cumulative.isdigit():
            rows.append((name.strip(), int(cumulative)))
    rows.sort(key=lambda row: -row[1])
    return rows[:top]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()

    modules = our_modules()
    cases = dict(CASES)
    cases["readreceipts"] = modules
    environment = {
        **os.environ,
        "AIRFLOW_HOME": tempfile.mkdtemp(prefix="rr-bench-import-"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "PYTHONPATH": str(REPO),
    }
    run_once([], environment)  # warm the file system cache and the .pyc files
    samples: dict[str, list[float]] = {name: [] for name in cases}
    new_modules: dict[str, list[str]] = {}
    for _ in range(args.rounds):
        for name, imports in cases.items():
            result = run_once(imports, environment)
            samples[name].append(float(result["ms"]))  # type: ignore[arg-type]
            new_modules[name] = list(result["new"])  # type: ignore[call-overload]
    medians = {name: round(statistics.median(values), 1) for name, values in samples.items()}
    ours = new_modules["readreceipts"]
    heavy = sorted(
        m for m in ours if m.split(".")[0] in HEAVY or m.startswith("airflow_provider_readreceipts.hooks")
    )
    summary = {
        "measured_at": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "load_average_1m": round(os.getloadavg()[0], 1),
        "rounds": args.rounds,
        "modules": modules,
        "median_ms": medians,
        "p90_ms": {name: round(sorted(v)[int(0.9 * (len(v) - 1))], 1) for name, v in samples.items()},
        # The least disturbed round: what the imports cost when nothing else competes for the CPU.
        "min_ms": {name: round(min(v), 1) for name, v in samples.items()},
        "budget_ms": BUDGET_MS,
        "within_budget": medians["readreceipts"] <= BUDGET_MS,
        "modules_loaded": {name: len(mods) for name, mods in new_modules.items()},
        "heavy_modules_loaded": heavy,
        "top_importtime_us": importtime_top(modules, environment),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "import_cost.json").write_text(json.dumps(summary, indent=2) + "\n")
    lines = [
        "# Import cost of the operator and sensor modules",
        "",
        f"Measured {summary['measured_at']} on {summary['machine']} (load average"
        f" {summary['load_average_1m']} at the end) by `python bench/bench_import.py`:",
        f"{args.rounds} rounds, each a fresh interpreter that imports `airflow.sdk` and then times the",
        "imports below (median and 90th percentile of the rounds; cases interleaved).",
        "",
        f"Modules: {', '.join(f'`{m}`' for m in modules)}.",
        "",
        "| imported after `import airflow.sdk` | median | p90 | min | modules loaded |",
        "|---|---|---|---|---|",
    ]
    labels = {
        "nothing": "nothing (floor of the method)",
        "sdk bases": "`from airflow.sdk import DAG, BaseOperator, BaseSensorOperator`",
        "readreceipts": "**every operator and sensor module of this package**",
        "providers-http": "providers-http `HttpOperator` + `HttpSensor` (for scale)",
    }
    for name in cases:
        lines.append(
            f"| {labels[name]} | {medians[name]} ms | {summary['p90_ms'][name]} ms"
            f" | {summary['min_ms'][name]} ms | {summary['modules_loaded'][name]} |"
        )
    verdict = "within" if summary["within_budget"] else "OVER"
    ratio = medians["readreceipts"] / medians["providers-http"] if medians["providers-http"] else 0.0
    lines += [
        "",
        f"Budget: {BUDGET_MS:g} ms on top of `import airflow.sdk`: **{verdict}**"
        f" ({medians['readreceipts']} ms,"
        f" of which about {medians['sdk bases']} ms is the SDK's own `BaseOperator`/`BaseSensorOperator`,"
        " which any DAG using operators loads anyway).",
        "",
        f"Relative to providers-http's two modules in the same run: {ratio:.1%}. Timings scale with the"
        " machine's load (every case runs in the same interleaved rounds, so the ratio holds better than"
        " the absolute numbers).",
        "",
        "Heavy modules (SQLAlchemy, aiohttp, FastAPI, asyncpg, aiosqlite, requests, psycopg, hook modules)"
        f" loaded by our modules: {heavy or 'none'}.",
        "",
        "Largest cumulative import times after `airflow.sdk` (`python -X importtime`, one run):",
        "",
        "| module | cumulative |",
        "|---|---|",
        *[f"| `{name}` | {micro / 1000:.1f} ms |" for name, micro in summary["top_importtime_us"]],
        "",
    ]
    (RESULTS / "import_cost.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
