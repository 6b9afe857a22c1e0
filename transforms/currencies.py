"""ISO 4217 currency codes (from ``pycountry``).

>>> normalize_currency(" gbp ")
'GBP'
>>> normalize_currency("XYZ") is None
True
"""

from __future__ import annotations

from functools import cache

import pycountry


@cache
def iso4217_codes() -> frozenset[str]:
    return frozenset(currency.alpha_3 for currency in pycountry.currencies)


def normalize_currency(value: str) -> str | None:
    """Upper-case and trim; None unless it is an ISO 4217 code."""
    code = value.strip().upper()
    return code if code in iso4217_codes() else None
