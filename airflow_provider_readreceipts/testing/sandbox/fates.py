"""
What happens to a message in the sandbox, decided by the recipient's number alone.

The rule, by the last digit of the recipient's number (a phone number, or the digits of a JID):

=========  ==========================================================================
last digit fate
=========  ==========================================================================
0 to 4     **read**: delivered, then read ``read_delay * (1 + digit / 2)`` seconds after
           the send (so 0 reads first and 4 last)
5 to 7     **delivered, never read** (the read sensor reports "unread" at its deadline)
8, 9       **failed** at the vendor, ``fail_delay`` seconds after the send
=========  ==========================================================================

Deterministic on purpose: tests and the demo pick numbers for the path they want to show.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass


class Fate(str, enum.Enum):
    """What the sandbox does with a message after sending it."""

    READ = "read"
    UNREAD = "unread"
    FAILED = "failed"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Timing:
    """
    Delays of the sandbox's status changes, in seconds after the send.

    :param sent_delay: the vendor reports the message sent.
    :param deliver_delay: the recipient's device got it.
    :param read_delay: the base delay of a read (see the module's rule).
    :param fail_delay: the vendor gives up on it.
    """

    sent_delay: float = 0.1
    deliver_delay: float = 0.4
    read_delay: float = 1.0
    fail_delay: float = 0.8

    def read_after(self, digit: int) -> float:
        """Seconds after the send at which a message to a number ending in ``digit`` is read."""
        return max(self.read_delay * (1 + digit / 2), self.deliver_delay)


_DIGITS = re.compile(r"\d")


def last_digit(recipient: str) -> int:
    """
    The last digit of a phone number or of a JID's user part (``5511...21@s.whatsapp.net`` -> 1).

    :param recipient: the number or JID as the vendor received it.
    :raises ValueError: it holds no digit.
    """
    user = recipient.split("@", 1)[0]
    digits = _DIGITS.findall(user)
    if not digits:
        raise ValueError(f"{recipient!r} has no digit to decide its fate by")
    return int(digits[-1])


def fate_for(recipient: str) -> Fate:
    """The fate of every message sent to ``recipient`` (see the module's table)."""
    digit = last_digit(recipient)
    if digit <= 4:
        return Fate.READ
    if digit <= 7:
        return Fate.UNREAD
    return Fate.FAILED
