"""
One function for who someone is, however a vendor or a DAG author writes it.

Vendors name the same person differently: Sendblue writes ``+14155550102``, RyzeAPI
``14155550102@s.whatsapp.net`` (or digits, or a device-suffixed JID), a DAG author
``+1 (415) 555-0102``. Group readers, reply senders and recipients are compared by
:func:`normalize_identity`, applied once where an identity enters the package (the receipt store
writes it beside the raw value; the sensor applies it to its arguments).

``phonenumbers`` is imported on first use, not with this module.
"""

from __future__ import annotations

import functools
import re

#: A WhatsApp person's JID: the phone number's digits, an optional device suffix, the server.
_PERSON_JID = re.compile(r"(?P<digits>\d{5,20})(?::\d{1,4})?@s\.whatsapp\.net")
#: Characters people put in phone numbers that carry no meaning.
_PHONE_PUNCTUATION = re.compile(r"[\s().\-/]")
_PHONE_LIKE = re.compile(r"\+?\d{5,20}")


@functools.lru_cache(maxsize=65_536)
def normalize_identity(value: str) -> str:
    """
    The canonical form of a person's or a chat's identity.

    - A phone number with its country code, in any formatting ``phonenumbers`` accepts
      (``+55 11 98888-7777``), becomes E.164 (``+5511988887777``); digits alone are read country
      code first, as WhatsApp gateways write them.
    - A WhatsApp person JID (``5511988887777@s.whatsapp.net``, device suffix allowed) becomes the
      E.164 number it stands for.
    - Other JIDs (``...@lid``, ``...@g.us``, ``...@newsletter``) stay JIDs, in lower case: a hidden
      number is not a phone number, and the vendor's mapping is needed to tell whose it is.
    - An e-mail address used as an iMessage handle is lower-cased.
    - Other numbers lose their punctuation (``+1 415`` is ``+1415``).
    - Anything else (a Chert chat id) is only stripped: opaque ids may be case-sensitive.

    :param value: the identity as written; ``""`` stays ``""``.
    """
    text = value.strip()
    if not text:
        return ""
    lowered = text.lower()
    jid = _PERSON_JID.fullmatch(lowered)
    if jid is not None:
        return _e164(jid["digits"]) or f"+{jid['digits']}"
    if "@" in lowered:
        return lowered
    compact = _PHONE_PUNCTUATION.sub("", text)
    if _PHONE_LIKE.fullmatch(compact) or (compact.startswith("+") and compact[1:].isdigit()):
        # A number phonenumbers does not know is still compared without its punctuation.
        return _e164(compact.lstrip("+")) or compact
    return text


def same_identity(a: str, b: str) -> bool:
    """Whether two written identities name the same person or chat."""
    return normalize_identity(a) == normalize_identity(b)


def _e164(digits: str) -> str | None:
    """``+<digits>`` when that is a valid phone number, else ``None``."""
    import phonenumbers

    try:
        number = phonenumbers.parse(f"+{digits}", None)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
