"""
Fixtures for the reliability and security suite (``tests/test_reliability_*.py``).

The suite runs at one of two scales, chosen by ``READRECEIPTS_RELIABILITY_SCALE``:

* ``ci`` (the default, what ``make test`` runs): every check, with smaller counts;
* ``full``: the counts the figures in ``bench/results/reliability.md`` are measured with
  (``python bench/bench_reliability.py`` runs the suite this way and writes that file).

Each check records what it did in the session-wide ``figures`` fixture:

    def test_storm(figures, scale):
        ...
        figures.add("storms", "sqlite", delivered=n, stored=s, duplicates_stored=0, lost=0)

and, when ``READRECEIPTS_RELIABILITY_REPORT`` names a file, the figures of the whole session are
written there as JSON at the end (``bench/bench_reliability.py`` turns them into the report).
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

SCALE_ENV = "READRECEIPTS_RELIABILITY_SCALE"
REPORT_ENV = "READRECEIPTS_RELIABILITY_REPORT"


@dataclass(frozen=True)
class Scale:
    """How hard each reliability check pushes; ``full`` is what the recorded figures use."""

    name: str
    #: Generated requests per vendor route in the property-based fuzzing.
    fuzz_requests_per_vendor: int
    #: Requests schemathesis generates per vendor route.
    schema_examples: int
    #: Events sent while a receiver is killed with SIGKILL, per store.
    crash_events: int
    #: How many times the receiver is killed and restarted, per store.
    crash_kills: int
    #: Distinct events in a storm (each delivered ``storm_repeats`` times, shuffled).
    storm_events: int
    storm_repeats: int
    #: Receiver processes a storm is spread over.
    storm_receivers: int


SCALES = {
    "ci": Scale(
        "ci",
        fuzz_requests_per_vendor=400,
        schema_examples=100,
        crash_events=1_500,
        crash_kills=1,
        storm_events=200,
        storm_repeats=10,
        storm_receivers=2,
    ),
    "full": Scale(
        "full",
        fuzz_requests_per_vendor=10_000,
        schema_examples=2_000,
        crash_events=20_000,
        crash_kills=3,
        storm_events=2_000,
        storm_repeats=10,
        storm_receivers=3,
    ),
}


@dataclass
class Figures:
    """What the reliability checks measured, by section and case (e.g. ``storms`` / ``sqlite``)."""

    scale: str
    sections: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, section: str, case: str, **numbers: Any) -> None:
        """
        Record (or add to) the figures of one case; numbers add up, anything else is replaced.

        :param section: e.g. ``"fuzzing"``, ``"authenticity"``, ``"crash"``, ``"storms"``.
        :param case: e.g. a vendor or a store kind.
        :param numbers: e.g. ``tried=…, refused=…, stored=…, lost=0``.
        """
        with self._lock:
            entry = self.sections.setdefault(section, {}).setdefault(case, {})
            for name, value in numbers.items():
                previous = entry.get(name)
                if isinstance(value, (int, float)) and not isinstance(value, bool) and previous is not None:
                    entry[name] = previous + value
                else:
                    entry[name] = value

    def as_json(self) -> dict[str, Any]:
        return {"scale": self.scale, "sections": self.sections}


def _scale_name() -> str:
    name = os.environ.get(SCALE_ENV, "ci")
    if name not in SCALES:
        raise pytest.UsageError(f"{SCALE_ENV}={name!r}: use one of {', '.join(SCALES)}")
    return name


@pytest.fixture(scope="session")
def scale() -> Scale:
    """The reliability suite's scale (``READRECEIPTS_RELIABILITY_SCALE``: ``ci`` or ``full``)."""
    return SCALES[_scale_name()]


@pytest.fixture(scope="session")
def figures() -> Iterator[Figures]:
    """The session's reliability figures; written to ``READRECEIPTS_RELIABILITY_REPORT`` at the end."""
    recorded = Figures(_scale_name())
    yield recorded
    report = os.environ.get(REPORT_ENV)
    if report:
        Path(report).write_text(json.dumps(recorded.as_json(), indent=2, sort_keys=True) + "\n")
