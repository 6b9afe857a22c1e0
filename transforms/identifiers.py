"""Identifier hygiene: trimming, placeholder rejection, email normalization and salted hashing.

>>> normalize_identifier("  abc-123 ")
'abc-123'
>>> normalize_identifier("undefined") is None
True
>>> hash_email("  Ann@Example.COM ", salt="s") == hash_email("ann@example.com", salt="s")
True
>>> normalize_email("Test@Test.com") is None, normalize_email("noemail@shop.example") is None
(True, True)
"""

from __future__ import annotations

import hashlib
import hmac
import re

PLACEHOLDER_IDS = frozenset(
    {
        "",
        "null",
        "none",
        "nil",
        "undefined",
        "nan",
        "na",
        "n/a",
        "0",
        "-1",
        "guest",
        "anonymous",
        "anon",
        "unknown",
        "test",
        "default",
        "user",
        "(null)",
        "[object object]",
        "{}",
        "[]",
    }
)
_ZEROS = re.compile(r"^[0\-\s]+$")  # all-zero UUIDs and the like
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
# Local parts people type when a form insists on an address: shared by many, they never identify one.
JUNK_EMAIL_LOCAL_PARTS = frozenset(
    {
        "a", "abc", "asd", "asdf", "dummy", "email", "fake", "guest", "na", "n/a", "no", "noemail", "no-email",
        "nomail", "none", "noreply", "no-reply", "donotreply", "do-not-reply", "nobody", "null", "sample",
        "test", "testing", "unknown", "x", "xx", "xxx",
    }
)  # fmt: skip
MAX_IDENTIFIER_LENGTH = 256


def normalize_identifier(value: str) -> str | None:
    """Trim ``value``; return None for placeholders, all-zero ids and absurdly long values."""
    text = value.strip()
    if text.lower() in PLACEHOLDER_IDS or _ZEROS.match(text) or len(text) > MAX_IDENTIFIER_LENGTH:
        return None
    return text


def normalize_email(value: str) -> str | None:
    """Lower-case and trim; None when it is not shaped like an address or is a placeholder address
    (a junk local part such as ``test@``, ``noemail@``, or the local part repeating the domain, ``a@a.com``)."""
    text = value.strip().lower()
    # The length check first: _EMAIL backtracks quadratically on a long address-like text.
    if len(text) > MAX_IDENTIFIER_LENGTH or not _EMAIL.match(text):
        return None
    local, _, domain = text.partition("@")
    if local in JUNK_EMAIL_LOCAL_PARTS or local == domain.split(".")[0]:
        return None
    return text


def hash_email(value: str, salt: str) -> str:
    """HMAC-SHA256 of the normalized address, keyed by ``salt``: the only form an email is kept in."""
    normalized = value.strip().lower()
    return hmac.new(salt.encode(), normalized.encode(), hashlib.sha256).hexdigest()
