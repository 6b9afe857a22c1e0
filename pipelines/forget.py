"""The right to erasure outside the core: Redis, JSONL outputs, the stored engine state, receipts.

A forget (a ``forget`` event processed by the core engine, or ``segstream forget``) removes, in one
atomic Lua script (:data:`FORGET_SCRIPT`), everything Redis holds about the customer and the
customers absorbed into it (aliases): the profile hashes, the identifier index entries, segment
memberships, the change-stream entries (changes and identity-merge records), and its queued and
dead-lettered webhook deliveries. It keeps only the customer's exits with reason ``forget``: they are
the notification downstream (in the change stream, the webhook queues and ``--changes-out``) and the
one place its id remains. The dead letters that carry one of its identifiers (:class:`Traces`: in
any form cleaning would read as it, in a payload however broken) go next, read and matched here
(matching needs Unicode whitespace and the salted email hash, which Lua has not) and deleted by id.

JSONL outputs are rewritten atomically without the customer's lines (:func:`scrub_jsonl`, same rules:
one :class:`Traces` decides for the dead-letter stream and for the files alike).
Every forget leaves a :class:`transforms.privacy.DeletionReceipt` in ``{prefix}:receipts`` (and in
``--receipts-out``): counts only, and a salted hash of the customer id.

Every engine runs a forget event in two parts (:class:`Eraser`): :meth:`Eraser.erase` (Redis, once its
forget exits are written) and :meth:`Eraser.finish` (the JSONL files, then the receipt). The core loop
does both at once; Beam and Flink keep what is erased in Redis in a :class:`SinkForgets` and finish
it at the end of the run (the files are written by other operators, or cut back to checkpointed
sizes on a restore, so they can only be rewritten once the job is done with them).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import redis

from pipelines.customer_store import promote_state, saved_state
from pipelines.redis_store import RedisSink, retrying
from pipelines.snapshot_store import SnapshotStore
from transforms.changes import SegmentChange, change_id
from transforms.features import Features
from transforms.identifiers import hash_email, normalize_email, normalize_identifier
from transforms.identity import KIND_OF_PREFIX, KIND_PREFIX
from transforms.privacy import DeletionReceipt, Forget, customer_ref, key_identifier

RECEIPTS_MAXLEN = 1_000_000
COUNTED = ("redis_keys", "identifier_index", "segment_memberships", "stream_entries", "deliveries")
PAGE = 1000  # dead letters read at a time

# ARGV: prefix, customer id, then the customer's identifiers as "kind:value" (kind as in events: user_id ...).
# Returns the counts of COUNTED, then the customer ids erased (the customer and its aliases).
FORGET_SCRIPT = """
local prefix, cid = ARGV[1], ARGV[2]
local idents = {}
for i = 3, #ARGV do idents[ARGV[i]] = true end
local heads = {user_id = 'user:', email = 'email:', device_id = 'device:', anonymous_id = 'anon:'}
local ids, order = {[cid] = true}, {cid}
local grown = true
while grown do  -- aliases: absorbed profiles pointing at the customer or at one of its aliases
  grown = false
  for ident, _ in pairs(idents) do
    local kind, value = string.match(ident, '^([^:]+):(.*)$')
    local alias = heads[kind] and (heads[kind] .. value)
    if alias and not ids[alias] then
      local into = redis.call('HGET', prefix .. ':profile:' .. alias, 'merged_into')
      if into and ids[into] then ids[alias] = true; table.insert(order, alias); grown = true end
    end
  end
end
local n = {keys = 0, index = 0, members = 0, entries = 0, deliveries = 0}
local function scan(pattern, each)
  local cursor = '0'
  repeat
    local page = redis.call('SCAN', cursor, 'MATCH', pattern, 'COUNT', 1000)
    cursor = page[1]
    for _, key in ipairs(page[2]) do each(key) end
  until cursor == '0'
end
local function fields(entry)
  local t = {}
  for i = 1, #entry, 2 do t[entry[i]] = entry[i + 1] end
  return t
end
local function each_entry(stream, drop)  -- XDEL the entries drop(fields) says; returns how many
  local removed, from = 0, '-'
  while true do
    local page = redis.call('XRANGE', stream, from, '+', 'COUNT', 1000)
    if #page == 0 then return removed end
    for _, e in ipairs(page) do
      if drop(fields(e[2])) then redis.call('XDEL', stream, e[1]); removed = removed + 1 end
    end
    from = '(' .. page[#page][1]
  end
end
local function decode(text)
  local ok, value = pcall(cjson.decode, text or '')
  if ok and type(value) == 'table' then return value end
  return nil
end
local function not_forget_exit(body)
  local change = decode(body)
  return not (change and change.reason == 'forget')
end
for _, id in ipairs(order) do
  n.keys = n.keys + redis.call('DEL', prefix .. ':profile:' .. id)
end
local index = prefix .. ':identifiers'
for ident, _ in pairs(idents) do n.index = n.index + redis.call('HDEL', index, ident) end
local cursor = '0'
repeat
  local page = redis.call('HSCAN', index, cursor, 'COUNT', 1000)
  cursor = page[1]
  for i = 1, #page[2], 2 do
    if ids[page[2][i + 1]] then n.index = n.index + redis.call('HDEL', index, page[2][i]) end
  end
until cursor == '0'
scan(prefix .. ':segment:*', function(key)
  if redis.call('TYPE', key).ok == 'set' then
    for _, id in ipairs(order) do n.members = n.members + redis.call('SREM', key, id) end
  end
end)
n.entries = each_entry(prefix .. ':changes', function(f)
  if f.change then
    local change = decode(f.change)
    return change ~= nil and ids[change.customer_id] == true and change.reason ~= 'forget'
  end
  local merge = decode(f.merge)
  if merge == nil then return false end
  if ids[merge.customer_id] then return true end
  for _, absorbed in ipairs(merge.absorbed or {}) do if ids[absorbed] then return true end end
  return false
end)
scan(prefix .. ':webhooks:*', function(key)
  if (string.sub(key, -6) == ':queue' or string.sub(key, -5) == ':dead') and redis.call('TYPE', key).ok == 'stream' then
    n.deliveries = n.deliveries + each_entry(key, function(f)
      return ids[f.customer_id] == true and not_forget_exit(f.body)
    end)
  end
end)
local out = {n.keys, n.index, n.members, n.entries, n.deliveries}
for _, id in ipairs(order) do table.insert(out, id) end
return out
"""


def receipts_key(prefix: str) -> str:
    return f"{prefix}:receipts"


# What delimits a token in a dead letter or a line: start and end of text, whitespace as str.strip()
# sees it (Unicode's: cleaning trims identifiers with it), quotes, the punctuation of JSON and of
# query strings, and U+FFFD (what a byte cut in the middle of a character decodes to). Nothing else:
# a letter, digit, '-', '.', '_', '@' or '/' next to an identifier makes it part of another token.
_EDGE = r"\s\"'`{}\[\](),:;=<>&|\ufffd"
# Address-shaped tokens (their hash is compared): the local part starts a token and never backtracks.
_ADDRESS = re.compile(rf"(?<![^{_EDGE}@])[^{_EDGE}@]++@[^{_EDGE}@]+")
# JSON string escapes: \uXXXX (an incomplete one, a payload cut inside it, decodes to nothing), the others.
_UNICODE = re.compile(r"\\u(?:([0-9a-fA-F]{4})|[0-9a-fA-F]{0,3}(?![0-9a-fA-F]))")
_SIMPLE = (('\\"', '"'), ("\\/", "/"), ("\\b", "\b"), ("\\f", "\f"), ("\\n", "\n"), ("\\r", "\r"), ("\\t", "\t"))
MAX_ESCAPE_LEVELS = 4  # a raw line within a payload within a dead letter within a stream entry: 3


def _unescape(text: str) -> str:
    """``text`` with its JSON string escapes decoded, surrogate pairs joined (wherever they stand: a
    broken payload has no reliable string boundaries). Split at the escaped backslashes, every other
    backslash starts an escape: string replacements decode the usual ones (``\\"``) at C speed."""
    parts = []
    for part in text.split("\\\\"):
        for escape, char in _SIMPLE:
            part = part.replace(escape, char)
        parts.append(_UNICODE.sub(lambda m: chr(int(m[1], 16)) if m[1] else "", part) if "\\u" in part else part)
    decoded = "\\".join(parts)
    return decoded.encode("utf-16", "surrogatepass").decode("utf-16", "replace") if "\\u" in text else decoded


def _forms(text: str) -> Iterator[str]:
    """``text``, then each level of JSON escaping undone (up to :data:`MAX_ESCAPE_LEVELS`)."""
    yield text
    for _ in range(MAX_ESCAPE_LEVELS):
        if "\\" not in text or (decoded := _unescape(text)) == text:
            return
        text = decoded
        yield text


class Traces:
    """Whether a text (a dead letter as stored in Redis, a line of an output file) carries one of a
    customer's identifiers, however broken the payload in it is (not JSON, cut short, escaped once
    or more, the identifier nested anywhere, padded).

    The rule: the text, or a form of it with JSON escapes undone, holds an identifier as a whole
    token, that is with an edge (:data:`_EDGE`: start or end, any Unicode whitespace, a quote, JSON
    or query-string punctuation) on both sides. Edges include the whitespace cleaning trims, so a
    padded ``"\\u00a0user-7\\u2003"`` is ``user-7``, and nothing an identifier may continue
    with, so ``user-7`` is not in ``user-70``, ``user-7.5``, ``xuser-7`` or ``User-7`` (cleaning
    keeps the case of ids). Emails are kept hashed (the 64 hex digits are a token like any id); an
    address left in clear, in any case and padding, matches when its hash (:func:`hash_email`, the
    normalization cleaning applies) is the customer's.

    It never reads one identifier as another, but in two cases where the text cannot tell, both on
    the side of erasure: a payload cut right after ``user-7`` of ``user-70`` (an oversized line's
    head) matches ``user-7``; an identifier that is also a common token (a bare number such as
    ``12``) matches it wherever it stands (a quantity too).
    """

    def __init__(self, identifiers: Iterable[str], salt: str) -> None:
        """``identifiers``: ``kind:value`` as events hold them (emails hashed with ``salt``)."""
        pairs = [ident.partition(":")[::2] for ident in identifiers]
        self.values = sorted({value for _, value in pairs if value}, key=len, reverse=True)
        self.emails = {value for kind, value in pairs if kind == "email"}
        self.salt = salt
        alternatives = "|".join(map(re.escape, self.values))
        self._token = re.compile(rf"(?<![^{_EDGE}])(?:{alternatives})(?![^{_EDGE}])")

    def __call__(self, text: str) -> bool:
        for form in _forms(text):  # the plain substring and "@" tests first: they skip most texts
            if any(value in form for value in self.values) and self._token.search(form):
                return True
            if self.emails and "@" in form and any(self._hashed(m[0]) for m in _ADDRESS.finditer(form)):
                return True
        return False

    def _hashed(self, address: str) -> bool:
        return hash_email(address, self.salt) in self.emails


def mentions(line: str, customer_ids: set[str], carries: Traces) -> bool:
    """Whether an output line is about the customer (the rules of :data:`FORGET_SCRIPT` and of the
    dead letters): a change of theirs other than a ``forget`` exit, an identity merge or profile
    naming them; any other line (a dead letter, a line that is not JSON) that ``carries`` one of
    their identifiers."""
    try:
        record = json.loads(line)
    except ValueError:
        record = None
    if isinstance(record, dict) and record.get("kind") == "identity_merge":
        return record.get("customer_id") in customer_ids or any(a in customer_ids for a in record.get("absorbed", []))
    if isinstance(record, dict) and "customer_id" in record:
        return record["customer_id"] in customer_ids and record.get("reason") != "forget"
    return carries(line)


def scrub_jsonl(path: Path, customer_ids: set[str], carries: Traces) -> int:
    """Rewrite ``path`` without the lines about the customer (atomically: a new file replaces it;
    the other lines byte for byte); return how many lines went."""
    if not path.exists():
        return 0
    removed = 0
    handle, tmp = tempfile.mkstemp(prefix=".forget-", dir=path.parent)
    text = {"encoding": "utf-8", "errors": "surrogateescape", "newline": ""}
    try:
        with os.fdopen(handle, "w", **text) as out, path.open(**text) as lines:
            for line in lines:
                if mentions(line, customer_ids, carries):
                    removed += 1
                else:
                    out.write(line)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return removed


@dataclass
class Erasure:
    """What one forget removed, by kind (the receipt's ``removed``), and the customer ids erased."""

    counts: dict[str, int] = field(default_factory=dict)
    customer_ids: set[str] = field(default_factory=set)

    def add(self, kind: str, n: int) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + n


@dataclass
class Erased:
    """A forget event whose customer is erased from Redis: its files and receipt still to do."""

    forget: Forget
    erasure: Erasure
    identifiers: set[str]  # "kind:value" of every identifier of the customer (the files' rule)
    letters_read: str = "-"  # the last dead letter the erase read: finish reads those written since


class Eraser:
    """Runs :data:`FORGET_SCRIPT` and writes receipts, for the sinks and for ``segstream forget``."""

    def __init__(self, client: redis.Redis, prefix: str, salt: str) -> None:
        self.client = client
        self.prefix = prefix
        self.salt = salt
        self._script = client.register_script(FORGET_SCRIPT)

    def redis(self, customer_id: str, identifiers: Iterable[tuple[str, str]], erasure: Erasure) -> str:
        """Erase the customer from Redis (one atomic script, then the dead letters carrying one of its
        identifiers); add the counts and ids to ``erasure``; return the last dead letter read."""
        idents = sorted({f"{kind}:{value}" for kind, value in identifiers})
        answer = retrying(
            lambda _: self._script(keys=[], args=[self.prefix, customer_id, *idents]), "forget a customer"
        )
        for kind, n in zip(COUNTED, answer, strict=False):
            erasure.add(kind, int(n))
        erasure.customer_ids.update(value.decode() for value in answer[len(COUNTED) :])
        return self.dead_letters(Traces(idents, self.salt), erasure)

    def dead_letters(self, carries: Traces, erasure: Erasure, after: str = "-") -> str:
        """Delete the dead letters after entry ``after`` that ``carries`` (a page at a time, to the end
        of the stream: letters written meanwhile too); add how many to ``erasure``; return the last
        entry read (``after`` when none)."""
        stream, removed = f"{self.prefix}:dead_letters", 0

        def page_after(last: str) -> list[tuple[bytes, dict[bytes, bytes]]]:
            start = last if last == "-" else f"({last}"
            return retrying(lambda _: self.client.xrange(stream, start, "+", count=PAGE), "read dead letters")

        def delete(entries: list[bytes]) -> int:
            return retrying(lambda _: self.client.xdel(stream, *entries), "delete dead letters")

        while page := page_after(after):
            doomed = [
                entry for entry, fields in page if any(carries(v.decode("utf-8", "replace")) for v in fields.values())
            ]
            removed += delete(doomed) if doomed else 0
            after = page[-1][0].decode()
        erasure.add("dead_letters", removed)
        return after

    def erase(self, forget: Forget, identifiers: Iterable[tuple[str, str]] = (), graph: int = 0) -> Erased:
        """A forget event's customer out of Redis, after its forget exits were written. ``identifiers``:
        more of theirs (the identity graph's), ``graph``: how many the identity graph removed."""
        known = {*forget.identifiers, *identifiers}
        erasure = Erasure({"identifiers": len(known), "segments": forget.segments})
        if graph:
            erasure.add("identity_graph", graph)
        read = self.redis(forget.customer_id, known, erasure)
        return Erased(forget, erasure, {f"{kind}:{value}" for kind, value in known}, read)

    def finish(self, erased: Erased, files: Iterable[Path], receipts_out: Path | None) -> DeletionReceipt:
        """The customer's dead letters written to Redis since the erase (Beam and Flink write them from
        other operators) and its lines out of ``files`` (closed by their writers), both by one
        :class:`Traces`; then the receipt (Redis and ``receipts_out``)."""
        erasure = erased.erasure
        carries = Traces(erased.identifiers, self.salt)
        self.dead_letters(carries, erasure, erased.letters_read)
        for path in files:
            erasure.add("output_lines", scrub_jsonl(path, erasure.customer_ids, carries))
        forget = erased.forget
        receipt = self.receipt(forget.customer_id, f"event:{forget.event_id}", forget.event_time, erasure)
        append_receipts(receipts_out, [receipt])
        return receipt

    def receipt(self, customer_id: str, requested_by: str, event_time: int | None, erasure: Erasure) -> DeletionReceipt:
        """The receipt of a forget, appended to ``{prefix}:receipts``."""
        receipt = DeletionReceipt(
            customer_ref(customer_id, self.salt), requested_by, event_time, int(time.time() * 1000), erasure.counts
        )
        body = json.dumps(receipt.to_dict())
        retrying(
            lambda _: self.client.xadd(
                receipts_key(self.prefix), {"receipt": body}, maxlen=RECEIPTS_MAXLEN, approximate=True
            ),
            "write a deletion receipt",
        )
        return receipt


def append_receipts(path: Path | None, receipts: Iterable[DeletionReceipt]) -> None:
    """Append receipts to the ``--receipts-out`` file (one JSON object a line)."""
    lines = [json.dumps(r.to_dict()) + "\n" for r in receipts]
    if path is not None and lines:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as out:
            out.writelines(lines)


class SinkForgets:
    """Forget events at the sink of Beam and Flink: the Redis part at once (:meth:`forget`, called once
    the customer's forget exits are written), the files and the receipt at the end of the run
    (:meth:`finish`), or at once when the job writes no JSONL file.

    ``pending`` (picklable :class:`Erased` values) is what a checkpoint must keep."""

    def __init__(
        self, client: redis.Redis, prefix: str, salt: str, files: Iterable[Path | None], receipts_out: Path | None
    ) -> None:
        self.eraser = Eraser(client, prefix, salt)
        self.files = [path for path in files if path is not None]
        self.receipts_out = receipts_out
        self.pending: list[Erased] = []

    def forget(self, forget: Forget) -> None:
        erased = self.eraser.erase(forget)
        if self.files:
            self.pending.append(erased)
        else:
            self.eraser.finish(erased, [], self.receipts_out)

    def finish(self, pending: Iterable[Erased] | None = None) -> list[DeletionReceipt]:
        """Scrub the files of every pending forget (their writers closed) and write the receipts."""
        done = list(self.pending if pending is None else pending)
        self.pending = []
        return [self.eraser.finish(erased, self.files, self.receipts_out) for erased in done]


def parse_identifier(text: str, salt: str) -> tuple[str, str]:
    """``KIND:VALUE`` of ``segstream forget --identifier`` as an event identifier ``(kind, value)``; an
    email in clear is normalized and hashed with ``salt`` as cleaning does. ValueError when malformed."""
    head, _, value = text.partition(":")
    kind = KIND_OF_PREFIX.get(head)
    if kind is None or not value:
        raise ValueError(f"--identifier {text!r}: expected KIND:VALUE with KIND one of {', '.join(KIND_OF_PREFIX)}")
    if kind == "email" and "@" in value:
        email = normalize_email(value)
        if email is None:
            raise ValueError(f"--identifier {text!r}: not a usable email address")
        return kind, hash_email(email, salt)
    clean = normalize_identifier(value)
    if clean is None:
        raise ValueError(f"--identifier {text!r}: a placeholder, never stored")
    return kind, clean


def forget_stored(store: SnapshotStore, customer_id: str, erasure: Erasure) -> list[tuple[str, str]]:
    """Remove a customer from the core engine's saved state (its snapshot, the identity graph, the RFM
    population); return the identifiers it held."""
    held: list[tuple[str, str]] = []
    snapshot = store.get(customer_id)
    if snapshot is not None:
        held += [(kind, value) for kind, values in snapshot.state.identifiers.items() for value in values]
        population = store.get_shared("population")
        if population is not None and snapshot.state.profile.rfm is not None:
            population.move(snapshot.state.profile.rfm, Features())
            store.put_shared("population", population)
        store.delete(customer_id)
        erasure.add("state_entries", 1)
    graph = store.get_shared("identity")
    if graph is not None:
        held += graph.members(customer_id)
        erasure.add("identity_graph", graph.forget(customer_id))
        store.put_shared("identity", graph)
    store.commit()
    return held


def resolve(identifier: tuple[str, str], client: redis.Redis, prefix: str, store: SnapshotStore | None) -> str:
    """The customer an identifier belongs to: the identity graph's canonical id, else the Redis
    identifier index, else the customer the identifier alone makes (``user:u1``)."""
    kind, value = identifier
    graph = store.get_shared("identity") if store is not None else None
    if graph is not None and (found := graph.lookup(kind, value)) is not None:
        return found
    owner = client.hget(f"{prefix}:identifiers", f"{kind}:{value}")
    if owner is not None:
        return owner.decode()
    return f"{KIND_PREFIX[kind]}:{value}"


def forget_exits(client: redis.Redis, prefix: str, customer_id: str) -> list[SegmentChange]:
    """The exits (reason ``forget``) from the segments the customer's Redis profile holds, at its clock,
    numbered after its last change: what a forget event would emit, for the command line."""
    profile_json, change_seq = client.hmget(f"{prefix}:profile:{customer_id}", "profile", "change_seq")
    if profile_json is None:
        return []
    profile = json.loads(profile_json)
    seq = max(int(change_seq or 0), profile["seq"])
    return [
        SegmentChange(
            change_id(customer_id, segment, "exited", seq + n), customer_id, segment, "exited", seq + n,
            profile["as_of"] or 0, "forget", profile["rules_version"],
        )
        for n, segment in enumerate(sorted(profile["segments"]), start=1)
    ]  # fmt: skip


def forget_customers(
    client: redis.Redis,
    prefix: str,
    salt: str,
    identifiers: list[tuple[str, str]],
    state_file: Path | None,
    scrub: Iterable[Path] = (),
    receipts_out: Path | None = None,
) -> list[DeletionReceipt]:
    """``segstream forget``: erase the customers of ``identifiers`` from Redis, the saved core state
    (``state_file``, when it exists) and the ``scrub`` files; one receipt per customer."""
    saved = state_file if state_file is not None and state_file.exists() else None
    eraser = Eraser(client, prefix, salt)
    receipts = []
    with ExitStack() as stack:  # the saved state is replaced whole once every customer is erased
        store = stack.enter_context(saved_state(saved)) if saved is not None else None
        customers: dict[str, list[tuple[str, str]]] = {}
        for identifier in identifiers:
            customers.setdefault(resolve(identifier, client, prefix, store), []).append(identifier)
        for customer_id, given in customers.items():
            erasure = Erasure()
            held = forget_stored(store, customer_id, erasure) if store is not None else []
            own = key_identifier(customer_id)
            known = {*given, *held, *([own] if own is not None else [])}
            erasure.add("identifiers", len(known))
            exits = forget_exits(client, prefix, customer_id)
            if exits:
                RedisSink(client, prefix).write(exits, [])
            erasure.add("segments", len(exits))
            eraser.redis(customer_id, known, erasure)
            carries = Traces((f"{kind}:{value}" for kind, value in known), salt)
            for path in scrub:
                erasure.add("output_lines", scrub_jsonl(path, erasure.customer_ids, carries))
            receipts.append(eraser.receipt(customer_id, "cli", None, erasure))
    if saved is not None:
        promote_state(saved)
    append_receipts(receipts_out, receipts)
    return receipts
