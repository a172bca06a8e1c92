"""
The vendor fakes of the test suite (``tests/fakes``), which the sandbox is built on.

They live in the repository's test suite, not in the installed package, so the sandbox runs from a
checkout: :func:`ensure_fakes_importable` puts the checkout's root on ``sys.path`` when ``tests`` is
not importable from the working directory.
"""

from __future__ import annotations

import sys
from pathlib import Path

#: The repository checkout this package was installed from (editable install) or runs in.
CHECKOUT_ROOT = Path(__file__).resolve().parents[2]


def ensure_fakes_importable() -> None:
    """
    Make ``tests.fakes`` importable, from any working directory of a checkout.

    :raises ImportError: not a checkout (the package was installed from a wheel).
    """
    if not (CHECKOUT_ROOT / "tests" / "fakes" / "server.py").is_file():
        raise ImportError(
            "the vendor sandbox is built on the vendor fakes in the repository's tests/fakes: run it "
            "from a checkout of airflow-provider-readreceipts (pip install -e .), not from a wheel"
        )
    if str(CHECKOUT_ROOT) not in sys.path:
        sys.path.insert(0, str(CHECKOUT_ROOT))
