"""Which parallel instance of a keyed Flink operator a string key goes to, computed in Python.

Flink assigns a key to a key group, ``murmurHash(key.hashCode()) % maxParallelism``, and a key
group to an operator instance, ``keyGroup * parallelism // maxParallelism``
(``KeyGroupRangeAssignment``). PyFlink's ``key_by(..., Types.STRING())`` keys by a one-field
``Row`` holding the Java ``String``, whose ``hashCode`` is the string's plus 62 (checked against
Flink's own assignment over random keys). The Flink job uses this to give each instance of its
customer step a key of its own (:func:`home_keys`), under which the instance keeps its models in
keyed state: PyFlink has no operator state.

>>> java_string_hash("hello")
99162322
>>> operator_index("models:0", max_parallelism=128, parallelism=2)
1
>>> [operator_index(key, 128, 2) for key in home_keys(2, 128)]
[0, 1]
"""

from __future__ import annotations

MASK = 0xFFFFFFFF


def _signed(value: int) -> int:
    value &= MASK
    return value - (1 << 32) if value & 0x80000000 else value


def _rotl(value: int, bits: int) -> int:
    value &= MASK
    return ((value << bits) | (value >> (32 - bits))) & MASK


def java_string_hash(text: str) -> int:
    """``String.hashCode()``: over the UTF-16 code units, as a signed 32-bit int."""
    h = 0
    data = text.encode("utf-16-be")
    for i in range(0, len(data), 2):
        h = (31 * h + ((data[i] << 8) | data[i + 1])) & MASK
    return _signed(h)


def murmur_hash(code: int) -> int:
    """Flink's ``MathUtils.murmurHash(int)``: non-negative."""
    code = (code * 0xCC9E2D51) & MASK
    code = _rotl(code, 15)
    code = (code * 0x1B873593) & MASK
    code = _rotl(code, 13)
    code = (code * 5 + 0xE6546B64) & MASK
    code ^= 4
    code ^= code >> 16  # bitMix
    code = (code * 0x85EBCA6B) & MASK
    code ^= code >> 13
    code = (code * 0xC2B2AE35) & MASK
    code ^= code >> 16
    signed = _signed(code)
    if signed >= 0:
        return signed
    return -signed if signed != -(2**31) else 0


def default_max_parallelism(parallelism: int) -> int:
    """``KeyGroupRangeAssignment.computeDefaultMaxParallelism``: 1.5 x parallelism rounded up to a
    power of two, within [128, 32768]."""
    wanted = parallelism + parallelism // 2
    power = 1
    while power < wanted:
        power *= 2
    return min(max(power, 128), 32768)


def row_hash(key: str) -> int:
    """``hashCode()`` of PyFlink's key: a ``Row`` of one ``String`` field."""
    return _signed(java_string_hash(key) + 62)


def operator_index(key: str, max_parallelism: int, parallelism: int) -> int:
    """The instance of a ``key_by(..., Types.STRING())`` operator that ``key`` goes to."""
    key_group = murmur_hash(row_hash(key)) % max_parallelism
    return key_group * parallelism // max_parallelism


def home_keys(parallelism: int, max_parallelism: int, prefix: str = "models:") -> list[str]:
    """One key per operator instance, in instance order: the first ``prefix<n>`` that lands there."""
    keys: dict[int, str] = {}
    n = 0
    while len(keys) < parallelism:
        key = f"{prefix}{n}"
        keys.setdefault(operator_index(key, max_parallelism, parallelism), key)
        n += 1
    return [keys[i] for i in range(parallelism)]
