from __future__ import annotations

import pytest

# Imported before any test module or plugin: the helpers' asserts then explain themselves as a test's do.
pytest.register_assert_rewrite("tests.support")
