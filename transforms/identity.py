"""Identity graph: resolve every identifier of one person into one canonical customer id, in a stream.

An event's identifiers (``Event.identifiers()``: user_id, email, device_id, anonymous_id) are linked: the
customers they belong to merge into one. The canonical id of a customer is its identifier of the
highest-priority kind (user_id > email > device_id > anonymous_id); among those, the one first seen earliest
(the ``ts`` of the first ``resolve`` that saw it), ties by the smallest string. Ids look like today's
``Event.customer_key``: ``user:<id>``, ``email:<hash>``, ``device:<id>``, ``anon:<id>``.

Guardrails (each refused link is counted in ``IdentityGraph.refusals`` and listed in ``Resolution.refused``):

* ``user_conflict``: two customers each holding a different user id never merge (unless
  ``merge_user_ids``); the event goes to the customer of its own user id.
* ``shared``: a non-user identifier seen with more than ``max_user_ids_per_identifier`` user ids, or an
  email / device id linked to more than ``max_anonymous_ids_per_identifier`` anonymous ids, is marked
  shared and never links again; an event carrying only shared identifiers goes to a customer of its own,
  ``shared:<kind prefix>:<value>``. Past merges are not undone: the identifier stays a member of the
  customer it belonged to, and its other identifiers keep resolving there.
* ``cap``: a customer holding ``max_identifiers_per_customer`` identifiers links no new one; a new
  identifier refused for the cap is not stored (its later events start their own customer).

Deterministic: the same sequence of ``resolve`` calls gives the same results, whatever the process.

>>> graph = IdentityGraph()
>>> graph.resolve([("anonymous_id", "a1")], ts=1).customer_id
'anon:a1'
>>> login = graph.resolve([("user_id", "u1"), ("anonymous_id", "a1")], ts=2)
>>> login.customer_id, login.absorbed
('user:u1', ('anon:a1',))
>>> graph.lookup("anonymous_id", "a1")
'user:u1'
>>> graph.members("user:u1")
[('user_id', 'u1'), ('anonymous_id', 'a1')]
>>> other = graph.resolve([("user_id", "u2"), ("anonymous_id", "a1")], ts=3)  # a family computer
>>> other.customer_id, other.refused
('user:u2', (('shared', 'anon:a1'),))
>>> graph.resolve([("anonymous_id", "a1")], ts=4).customer_id
'shared:anon:a1'
>>> graph.refusals["shared"], len(graph)
(1, 3)
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

KIND_PREFIX = {"user_id": "user", "email": "email", "device_id": "device", "anonymous_id": "anon"}
SHARED_PREFIX = "shared:"
REASONS = ("shared", "user_conflict", "cap")

_HEAD = {kind: prefix + ":" for kind, prefix in KIND_PREFIX.items()}  # kind -> "user:" ...
KIND_OF_PREFIX = {prefix: kind for kind, prefix in KIND_PREFIX.items()}  # "user" -> "user_id" ...
_RANK = {prefix: rank for rank, prefix in enumerate(KIND_PREFIX.values())}  # "user" -> 0 ... "anon" -> 3
_USER = "user:"
_ANON = "anon:"
_ANON_COUNTED = ("email:", "device:")  # kinds whose anonymous ids are counted (junk emails, kiosk devices)
_STATE_VERSION = 1


@dataclass(frozen=True, slots=True)
class IdentityConfig:
    max_user_ids_per_identifier: int = 1  # an identifier linked to more distinct user ids is shared
    max_anonymous_ids_per_identifier: int = 20  # an email/device_id linked to more distinct anonymous ids is shared
    max_identifiers_per_customer: int = 100  # a customer at the cap links no new identifier
    merge_user_ids: bool = False  # whether two customers with different user ids may merge


@dataclass(frozen=True, slots=True)
class Resolution:
    customer_id: str  # the canonical id the event is routed to
    absorbed: tuple[str, ...]  # canonical ids this event merged into customer_id (sorted)
    refused: tuple[tuple[str, str], ...]  # (reason, "kind:value") of the links this event did not make


class _Group:
    """A customer with more than one identifier: its canonical id, that id's first-seen ts, its members."""

    __slots__ = ("label", "members", "ts")

    def __init__(self, label: str, ts: int, members: list[str]) -> None:
        self.label = label
        self.ts = ts
        self.members = members


def _split(key: str) -> tuple[str, str]:
    prefix, _, value = key.partition(":")
    return KIND_OF_PREFIX[prefix], value


def _order(key: str, ts: int) -> tuple[int, int, str]:
    """Sort key of a canonical candidate: kind priority, first seen, string."""
    return _RANK[key[: key.index(":")]], ts, key


class IdentityGraph:
    """Streaming identity resolution (see the module docstring for the rules).

    State: one dict from identifier key (``"kind_prefix:value"``, the same string as the id it would have
    as a customer of its own) to either its first-seen ts (an ``int``: the identifier is a customer of its own)
    or the shared ``_Group`` of its customer (label, ts, members in order). Merges relabel the smaller side.
    Side tables hold only what is non-empty: the shared identifiers, the anonymous-id link counts of emails
    and device ids, and the user ids seen with identifiers whose link to them was refused.
    """

    __slots__ = ("_anon_links", "_node", "_shared", "_users_seen", "config", "refusals")

    def __init__(self, config: IdentityConfig = IdentityConfig()) -> None:
        self.config = config
        self.refusals: collections.Counter[str] = collections.Counter()
        self._node: dict[str, int | _Group] = {}
        self._shared: set[str] = set()
        self._anon_links: dict[str, int] = {}
        self._users_seen: dict[str, tuple[str, ...]] = {}

    # -- queries ---------------------------------------------------------------------------------------------

    def __len__(self) -> int:
        """Identifiers known."""
        return len(self._node)

    def lookup(self, kind: str, value: str) -> str | None:
        """The current canonical id of an identifier; None when it was never stored."""
        key = _HEAD[kind] + value
        v = self._node.get(key)
        if v is None:
            return None
        return v.label if type(v) is _Group else key

    def members(self, customer_id: str) -> list[tuple[str, str]]:
        """The identifiers of a customer, in the order they joined it; [] for an unknown or non-canonical id.

        A ``shared:...`` customer has no members (the shared identifier stays a member of its old customer).
        The customer an event goes to comes first; the members of customers it absorbs follow, in turn.
        """
        v = self._node.get(customer_id)
        if v is None:
            return []
        if type(v) is _Group:
            return [_split(m) for m in v.members] if v.label == customer_id else []
        return [_split(customer_id)]

    def is_shared(self, kind: str, value: str) -> bool:
        return _HEAD[kind] + value in self._shared

    # -- resolution ------------------------------------------------------------------------------------------

    def resolve(self, identifiers: Sequence[tuple[str, str]], ts: int) -> Resolution:
        """Link the identifiers of one event; return the customer it goes to and what the links changed."""
        if len(identifiers) == 1:  # the common case: nothing to link
            kind, value = identifiers[0]
            try:
                key = _HEAD[kind] + value
            except KeyError:
                raise ValueError(f"unknown identifier kind {kind!r}") from None
            node = self._node
            v = node.get(key)
            if v is None:
                node[key] = ts
                return Resolution(key, (), ())
            if key in self._shared:
                return Resolution(SHARED_PREFIX + key, (), ())
            return Resolution(v.label if type(v) is _Group else key, (), ())
        if not identifiers:
            raise ValueError("an event needs at least one identifier")
        return self._resolve_many(identifiers, ts)

    def _resolve_many(self, identifiers: Sequence[tuple[str, str]], ts: int) -> Resolution:
        node = self._node
        shared = self._shared
        ranked = []
        for i, (kind, value) in enumerate(identifiers):
            try:
                head = _HEAD[kind]
            except KeyError:
                raise ValueError(f"unknown identifier kind {kind!r}") from None
            ranked.append((_RANK[head[:-1]], i, head + value))
        ranked.sort()
        keys: list[str] = []
        for _, _, key in ranked:
            if key not in keys:
                keys.append(key)
        # The customer (token) of each key before this event: its _Group, itself when alone, None when new.
        pre: dict[str, Any] = {}
        for key in keys:
            v = node.get(key)
            pre[key] = None if v is None else (v if type(v) is _Group else key)
        first = pre[keys[0]]
        if first is not None and all(pre[k] == first for k in keys):  # already one customer: nothing to link
            if shared and all(k in shared for k in keys):
                return Resolution(SHARED_PREFIX + keys[0], (), ())
            return Resolution(first.label if type(first) is _Group else first, (), ())
        return self._link(keys, pre, ts)

    def _link(self, keys: list[str], pre: dict[str, Any], ts: int) -> Resolution:
        config = self.config
        node = self._node
        shared = self._shared
        refused: list[tuple[str, str]] = []
        event_users = [k for k in keys if k.startswith(_USER)]  # user ids are never shared
        was_shared = [k for k in keys if k in shared]
        live = [k for k in keys if k not in shared]
        # Mark newly shared identifiers, from what they were seen with before and in this event.
        anons = [k for k in live if k.startswith(_ANON)]
        for key in [k for k in live if not k.startswith(_USER)]:
            tok = pre[key]
            users = set(event_users)
            users.update(self._users_seen.get(key, ()))
            if tok is not None:
                users.update(self._users_of(tok))
            too_many = len(users) > config.max_user_ids_per_identifier
            if not too_many and anons and key.startswith(_ANON_COUNTED):
                new_anons = sum(1 for g in anons if pre[g] is None or pre[g] != tok)
                too_many = new_anons > 0 and self._anon_links.get(key, 0) + new_anons > (
                    config.max_anonymous_ids_per_identifier
                )
            if too_many:
                shared.add(key)
                self._users_seen.pop(key, None)
                self._anon_links.pop(key, None)
                if tok is None:
                    node[key] = ts  # known from now on, as a customer of its own that never links
                    pre[key] = key
                live.remove(key)
                if key in anons:
                    anons.remove(key)
                refused.append(("shared", key))
        if not live:  # only shared identifiers: a customer of its own, never merged
            refused.extend(("shared", k) for k in was_shared)
            return self._finish(SHARED_PREFIX + keys[0], [], refused)
        # Customers of the live identifiers, in the order of their best key (new keys are customers of their own).
        customers: dict[Any, list[str]] = {}
        for key in live:
            customers.setdefault(pre[key] if pre[key] is not None else key, []).append(key)
        order = list(customers)
        target = order[0]
        if not config.merge_user_ids:
            target = next((c for c in order if self._label(c).startswith(_USER)), target)
        absorbed: list[str] = []
        if pre[customers[target][0]] is None:
            node[target] = ts
        else:
            absorbed.append(self._label(target))
        cap = config.max_identifiers_per_customer
        for c in order:
            if c is target:
                continue
            is_new = pre[customers[c][0]] is None
            if not config.merge_user_ids and self._label(c).startswith(_USER):
                reason = "user_conflict"  # the target holds the event's (or the first) user id
                if is_new:
                    node[c] = ts  # a second, new user id: a customer of its own
            elif self._size(target) + (1 if is_new else self._size(c)) > cap:
                reason = "cap"  # a new identifier refused for the cap is not stored
            else:
                if is_new:
                    node[c] = ts
                else:
                    absorbed.append(self._label(c))
                target = self._merge(target, c)
                continue
            for key in customers[c]:
                refused.append((reason, key))
                if not is_new and not key.startswith(_USER):
                    self._remember_users(key, pre[key], event_users)
        label = self._label(target)
        # Count the anonymous ids that joined the customer of each (still linking) email / device id.
        if anons:
            for key in live:
                if key.startswith(_ANON_COUNTED) and key not in shared and self._in(key, target):
                    tok = pre[key]
                    joined = sum(1 for g in anons if (pre[g] is None or pre[g] != tok) and self._in(g, target))
                    if joined:
                        self._anon_links[key] = self._anon_links.get(key, 0) + joined
        refused.extend(("shared", k) for k in was_shared if not self._in(k, target))
        return self._finish(label, sorted(set(absorbed) - {label}), refused)

    def _finish(self, customer_id: str, absorbed: list[str], refused: list[tuple[str, str]]) -> Resolution:
        for reason, _ in refused:
            self.refusals[reason] += 1
        return Resolution(customer_id, tuple(absorbed), tuple(refused))

    # -- customers (tokens: a _Group, or the key of an identifier that is a customer of its own) ---------------

    def _label(self, tok: Any) -> str:
        return tok.label if type(tok) is _Group else tok

    def _size(self, tok: Any) -> int:
        return len(tok.members) if type(tok) is _Group else 1

    def _in(self, key: str, tok: Any) -> bool:
        v = self._node.get(key)
        return v is tok if type(tok) is _Group else (key == tok and v is not None and type(v) is not _Group)

    def _users_of(self, tok: Any) -> Iterable[str]:
        """User ids of a customer (at most one, its canonical id, unless user ids may merge)."""
        if type(tok) is _Group:
            if self.config.merge_user_ids:
                return [m for m in tok.members if m.startswith(_USER)]
            return (tok.label,) if tok.label.startswith(_USER) else ()
        return (tok,) if tok.startswith(_USER) else ()

    def _remember_users(self, key: str, tok: Any, event_users: list[str]) -> None:
        """A refused link: keep the event's user ids the identifier's own customer does not hold."""
        own = set(self._users_of(tok))
        seen = self._users_seen.get(key, ())
        extra = [u for u in event_users if u not in own and u not in seen]
        if extra:
            self._users_seen[key] = (*seen, *extra)

    def _merge(self, target: Any, other: Any) -> _Group:
        """Merge customer ``other`` into ``target`` (both stored); relabel the smaller side's members."""
        node = self._node
        lt, tt = (target.label, target.ts) if type(target) is _Group else (target, node[target])
        lo, to = (other.label, other.ts) if type(other) is _Group else (other, node[other])
        label, first = (lo, to) if _order(lo, to) < _order(lt, tt) else (lt, tt)
        if type(target) is not _Group:
            if type(other) is not _Group:
                group = _Group(label, first, [target, other])
                for key in (target, other):  # re-insert so the dict keys are the very strings in members
                    del node[key]
                    node[key] = group
                return group
            other.members.insert(0, target)
            del node[target]
            node[target] = other
            group = other
        elif type(other) is not _Group:
            target.members.append(other)
            del node[other]
            node[other] = target
            group = target
        else:
            if len(target.members) >= len(other.members):
                group, moved = target, other.members
                target.members.extend(moved)
            else:
                group, moved = other, target.members
                other.members[:0] = moved
            for key in moved:
                node[key] = group
        group.label = label
        group.ts = first
        return group

    # -- erasure ---------------------------------------------------------------------------------------------

    def forget(self, customer_id: str) -> int:
        """Remove the customer holding ``customer_id`` (its canonical id or any member) and every trace of its
        identifiers (shared marks, link counts, user ids seen beside other identifiers); return how many
        identifiers were removed. The identifiers are unknown afterwards: a later event starts a new customer."""
        v = self._node.get(customer_id)
        if v is None:
            return 0
        keys = list(v.members) if type(v) is _Group else [customer_id]
        for key in keys:
            del self._node[key]
            self._shared.discard(key)
            self._anon_links.pop(key, None)
            self._users_seen.pop(key, None)
        gone = set(keys)
        for key, users in list(self._users_seen.items()):
            kept = tuple(u for u in users if u not in gone)
            if len(kept) != len(users):
                if kept:
                    self._users_seen[key] = kept
                else:
                    del self._users_seen[key]
        return len(keys)

    # -- state -----------------------------------------------------------------------------------------------

    def __getstate__(self) -> tuple[Any, ...]:
        singles: dict[str, int] = {}
        groups: list[tuple[int, int, list[str]]] = []
        seen: set[int] = set()
        for key, v in self._node.items():
            if type(v) is _Group:
                if id(v) not in seen:
                    seen.add(id(v))
                    groups.append((v.members.index(v.label), v.ts, v.members))
            else:
                singles[key] = v
        return (
            _STATE_VERSION,
            self.config,
            singles,
            groups,
            sorted(self._shared),
            self._anon_links,
            self._users_seen,
            dict(self.refusals),
        )

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        version, config, singles, groups, shared, anon_links, users_seen, refusals = state
        if version != _STATE_VERSION:
            raise ValueError(f"unsupported identity graph state version {version}")
        self.config = config
        node: dict[str, int | _Group] = dict(singles)
        for label_index, first, members in groups:
            group = _Group(members[label_index], first, members)
            for key in members:
                node[key] = group
        self._node = node
        self._shared = set(shared)
        self._anon_links = dict(anon_links)
        self._users_seen = dict(users_seen)
        self.refusals = collections.Counter(refusals)

    def _comparable(self) -> tuple[Any, ...]:
        _, config, singles, groups, shared, anon_links, users_seen, refusals = self.__getstate__()
        by_label = {members[i]: (first, members) for i, first, members in groups}
        return config, singles, by_label, shared, anon_links, users_seen, {k: v for k, v in refusals.items() if v}

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, IdentityGraph):
            return NotImplemented
        return self._comparable() == other._comparable()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"IdentityGraph({len(self)} identifiers, {len(self._shared)} shared, {self.config})"
