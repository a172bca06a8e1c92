"""
The vendor fakes: each vendor's API as its documentation describes it, on a real loopback server.

:mod:`.server` hosts them (one URL prefix per vendor, a request log, scripted faults); one module per
vendor holds its fake and the credentials it accepts. Standard library only, so a wheel install can
run them (the sandbox does) and a test imports them without Airflow.
"""

from __future__ import annotations
