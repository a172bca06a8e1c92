"""
Fixtures for the reliability and security suite (``tests/test_reliability_*.py``).

The suite runs at one of two scales, chosen by ``READRECEIPTS_RELIABILITY_SCALE``:

* ``ci`` (the default, what ``make test`` runs): every check, with smaller counts;
* ``full``: the counts the figures in ``bench/results/reliability.md`` are measured with
  (``python bench/bench_reliability.py`` runs the suite this way and writes that file).

Each check records what it did in the session-wide ``figures`` fixture (a
:class:`tests.support.Figures`; the scales are :data:`tests.support.SCALES`):

    def test_storm(figures, scale):
        ...
        figures.add("storms", "sqlite", delivered=n, stored=s, duplicates_stored=0, lost=0)

and, when ``READRECEIPTS_RELIABILITY_REPORT`` names a file, the figures of the whole session are
written there as JSON at the end (``bench/bench_reliability.py`` turns them into the report).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import REPORT_ENV, SCALES, Figures, Scale, scale_name


@pytest.fixture(scope="session")
def scale() -> Scale:
    """The reliability suite's scale (``READRECEIPTS_RELIABILITY_SCALE``: ``ci`` or ``full``)."""
    return SCALES[scale_name()]


@pytest.fixture(scope="session")
def figures() -> Iterator[Figures]:
    """The session's reliability figures; written to ``READRECEIPTS_RELIABILITY_REPORT`` at the end."""
    recorded = Figures(scale_name())
    yield recorded
    report = os.environ.get(REPORT_ENV)
    if report:
        Path(report).write_text(json.dumps(recorded.as_json(), indent=2, sort_keys=True) + "\n")
