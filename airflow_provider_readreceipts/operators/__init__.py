"""
Operators for DAG authors: send read receipts (:mod:`.mark_read`) and send messages (:mod:`.send_message`).

Import the module you need; nothing is imported here, so the scheduler's DAG parsing stays cheap. The
vendor hooks (and ``HttpHook``, ``aiohttp`` behind them) are imported only when a task runs.
"""

from __future__ import annotations
