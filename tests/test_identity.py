"""The identity graph: every rule, and properties over random event sequences."""

from __future__ import annotations

import pickle
import subprocess
import sys

from hypothesis import given, settings
from hypothesis import strategies as st

from transforms.events import IDENTIFIER_FIELDS, Event
from transforms.identity import KIND_PREFIX, IdentityConfig, IdentityGraph, Resolution

U, E, D, A = IDENTIFIER_FIELDS  # user_id, email, device_id, anonymous_id
NO_LIMITS = IdentityConfig(
    max_user_ids_per_identifier=10**9,
    max_anonymous_ids_per_identifier=10**9,
    max_identifiers_per_customer=10**9,
    merge_user_ids=True,
)


def test_single_new_identifiers_get_todays_ids_with_email_above_anonymous() -> None:
    graph = IdentityGraph()
    assert graph.resolve([(U, "u1")], 1) == Resolution("user:u1", (), ())
    assert graph.resolve([(A, "a1")], 1).customer_id == "anon:a1"
    assert graph.resolve([(D, "d1")], 1).customer_id == "device:d1"
    # all new and unlinked: the highest-priority identifier, whatever the order given
    assert graph.resolve([(A, "a2"), (E, "h2")], 2).customer_id == "email:h2"
    event = Event("e1", "page_view", 3, anonymous_id="a3", email="h3")
    assert event.customer_key == "anon:a3"
    assert graph.resolve(event.identifiers(), event.ts).customer_id == "email:h3"
    assert len(graph) == 7


def test_login_merges_the_anonymous_customer_into_the_user() -> None:
    graph = IdentityGraph()
    graph.resolve([(A, "a1")], 1)
    graph.resolve([(D, "d1"), (A, "a1")], 2)
    login = graph.resolve([(U, "u1"), (A, "a1")], 3)
    assert login.customer_id == "user:u1"
    assert login.absorbed == ("device:d1",)  # the anonymous customer was already labelled by its device
    assert login.refused == ()
    assert graph.lookup(A, "a1") == graph.lookup(D, "d1") == "user:u1"
    assert graph.members("user:u1") == [(U, "u1"), (D, "d1"), (A, "a1")]
    assert graph.members("device:d1") == []  # no longer canonical
    assert graph.resolve([(A, "a1")], 4).customer_id == "user:u1"


def test_login_absorbed_names_the_previous_anonymous_id() -> None:
    graph = IdentityGraph()
    graph.resolve([(A, "a1")], 1)
    assert graph.resolve([(A, "a1"), (U, "u1")], 2).absorbed == ("anon:a1",)
    # a known user bringing a new anonymous id absorbs nothing: its canonical id does not change
    assert graph.resolve([(U, "u1"), (A, "a2")], 3) == Resolution("user:u1", (), ())


def test_absorbed_lists_every_merged_customer_sorted() -> None:
    graph = IdentityGraph()
    graph.resolve([(A, "b")], 1)
    graph.resolve([(A, "a")], 2)
    graph.resolve([(D, "d")], 3)
    result = graph.resolve([(A, "b"), (D, "d"), (A, "a")], 4)
    assert result.customer_id == "device:d"
    assert result.absorbed == ("anon:a", "anon:b")


def test_canonical_is_the_earliest_first_seen_of_the_best_kind() -> None:
    graph = IdentityGraph()
    graph.resolve([(E, "late")], 200)
    graph.resolve([(E, "early")], 100)
    assert graph.resolve([(E, "late"), (E, "early")], 300).customer_id == "email:early"
    # first seen is the ts of the first resolve that saw it, not the smallest ts seen later
    graph.resolve([(E, "x")], 500)
    graph.resolve([(E, "x")], 1)
    assert graph.resolve([(E, "x"), (E, "late")], 600).customer_id == "email:early"
    assert graph.resolve([(E, "x")], 700).customer_id == "email:early"


def test_canonical_ties_on_first_seen_go_to_the_smallest_string() -> None:
    graph = IdentityGraph()
    result = graph.resolve([(D, "zz"), (D, "aa"), (D, "mm")], 5)
    assert result.customer_id == "device:aa"
    assert result.absorbed == ()
    graph2 = IdentityGraph()
    graph2.resolve([(D, "zz")], 5)
    graph2.resolve([(D, "aa")], 5)
    assert graph2.resolve([(D, "zz"), (D, "aa")], 6) == Resolution("device:aa", ("device:zz",), ())


def test_union_relabels_every_member_of_both_sides() -> None:
    graph = IdentityGraph()
    for i in range(5):
        graph.resolve([(D, "big"), (A, f"a{i}")], i)
    graph.resolve([(E, "h"), (A, "x")], 10)
    result = graph.resolve([(A, "a0"), (A, "x")], 11)
    assert result.customer_id == "email:h"
    assert result.absorbed == ("device:big",)
    assert {graph.lookup(k, v) for k, v in graph.members("email:h")} == {"email:h"}
    assert len(graph.members("email:h")) == 8


def test_user_conflict_keeps_users_apart_and_the_event_goes_to_its_own_user() -> None:
    graph = IdentityGraph(IdentityConfig(max_user_ids_per_identifier=2))
    graph.resolve([(U, "u1"), (A, "a1")], 1)
    result = graph.resolve([(U, "u2"), (A, "a1")], 2)
    assert result == Resolution("user:u2", (), (("user_conflict", "anon:a1"),))
    assert graph.lookup(A, "a1") == "user:u1"  # not moved
    assert not graph.is_shared(A, "a1")
    assert graph.refusals == {"user_conflict": 1}
    # the refused user id is remembered: a third user makes the identifier shared
    third = graph.resolve([(U, "u3"), (A, "a1")], 3)
    assert third.refused == (("shared", "anon:a1"),)
    assert graph.is_shared(A, "a1")


def test_user_conflict_without_a_user_id_in_the_event() -> None:
    graph = IdentityGraph()
    graph.resolve([(U, "u1"), (A, "a1")], 1)
    graph.resolve([(U, "u2"), (E, "h2")], 2)
    result = graph.resolve([(A, "a1"), (E, "h2")], 3)  # the email ranks first: its user's customer
    assert result == Resolution("user:u2", (), (("user_conflict", "anon:a1"),))
    assert graph.lookup(A, "a1") == "user:u1"
    assert graph.members("user:u2") == [(U, "u2"), (E, "h2")]


def test_merge_user_ids_allows_user_customers_to_merge() -> None:
    config = IdentityConfig(max_user_ids_per_identifier=5, merge_user_ids=True)
    graph = IdentityGraph(config)
    graph.resolve([(U, "u2")], 1)
    graph.resolve([(U, "u1"), (A, "a1")], 2)
    result = graph.resolve([(U, "u2"), (A, "a1")], 3)
    assert result == Resolution("user:u2", ("user:u1",), ())  # u2 was seen first
    assert graph.lookup(U, "u1") == "user:u2"


def test_shared_by_user_ids_family_computer() -> None:
    graph = IdentityGraph()
    graph.resolve([(U, "mum"), (D, "pc")], 1)
    kid = graph.resolve([(U, "kid"), (D, "pc"), (A, "k1")], 2)
    assert kid == Resolution("user:kid", (), (("shared", "device:pc"),))
    assert graph.is_shared(D, "pc")
    assert graph.lookup(D, "pc") == "user:mum"  # past merges are not undone
    assert graph.lookup(A, "k1") == "user:kid"  # the rest of the event still links
    # a shared identifier never links again, even to a customer without a user id
    later = graph.resolve([(D, "pc"), (A, "new")], 3)
    assert later == Resolution("anon:new", (), (("shared", "device:pc"),))
    assert graph.lookup(A, "new") == "anon:new"
    # an event carrying only shared identifiers goes to a customer of its own
    assert graph.resolve([(D, "pc")], 4) == Resolution("shared:device:pc", (), ())
    assert graph.members("shared:device:pc") == []
    # ... but an event with the shared id and an identifier of its customer goes to that customer
    assert graph.resolve([(U, "mum"), (D, "pc")], 5) == Resolution("user:mum", (), ())
    assert graph.refusals == {"shared": 2}


def test_shared_by_anonymous_ids_junk_email() -> None:
    graph = IdentityGraph(IdentityConfig(max_anonymous_ids_per_identifier=3))
    for i in range(3):
        assert graph.resolve([(E, "junk"), (A, f"g{i}")], i).refused == ()
    assert graph.lookup(A, "g2") == "email:junk"
    # the same anonymous id again is not a new one
    assert graph.resolve([(E, "junk"), (A, "g0")], 5).refused == ()
    fourth = graph.resolve([(E, "junk"), (A, "g3")], 6)
    assert fourth == Resolution("anon:g3", (), (("shared", "email:junk"),))
    assert graph.is_shared(E, "junk")
    assert graph.lookup(A, "g3") == "anon:g3"
    assert graph.resolve([(E, "junk")], 7).customer_id == "shared:email:junk"
    # anonymous ids do not make a user id or an anonymous id shared
    other = IdentityGraph(IdentityConfig(max_anonymous_ids_per_identifier=1))
    for i in range(4):
        other.resolve([(U, "u"), (A, f"g{i}")], i)
    assert other.refusals == {}
    assert len(other.members("user:u")) == 5


def test_shared_only_event_with_several_identifiers_goes_to_its_best() -> None:
    graph = IdentityGraph(IdentityConfig(max_anonymous_ids_per_identifier=0))
    graph.resolve([(D, "d"), (E, "h")], 1)
    assert graph.resolve([(D, "d"), (A, "g")], 2).refused == (("shared", "device:d"),)  # over 0 anonymous ids
    graph.resolve([(U, "u1"), (A, "a")], 3)
    graph.resolve([(U, "u2"), (A, "a")], 4)  # a: shared
    assert graph.is_shared(D, "d") and graph.is_shared(A, "a")
    result = graph.resolve([(A, "a"), (D, "d")], 5)
    assert result == Resolution("shared:device:d", (), (("shared", "device:d"), ("shared", "anon:a")))
    assert graph.lookup(D, "d") == "email:h" and graph.lookup(A, "a") == "user:u1"
    # a shared identifier next to a live one: the event goes to the live one's customer
    assert graph.resolve([(D, "d"), (A, "g")], 6) == Resolution("anon:g", (), (("shared", "device:d"),))


def test_cap_links_no_new_identifier() -> None:
    graph = IdentityGraph(IdentityConfig(max_identifiers_per_customer=3))
    graph.resolve([(U, "u"), (A, "a1")], 1)
    graph.resolve([(U, "u"), (A, "a2")], 2)
    result = graph.resolve([(U, "u"), (E, "h")], 3)
    assert result == Resolution("user:u", (), (("cap", "email:h"),))
    assert graph.lookup(E, "h") is None  # not stored
    assert len(graph) == 3
    assert graph.resolve([(E, "h")], 4).customer_id == "email:h"  # its own customer from now on
    # an existing customer that would push it over the cap is not merged either
    graph.resolve([(D, "d"), (A, "x")], 5)
    assert graph.resolve([(A, "a1"), (D, "d")], 6) == Resolution("user:u", (), (("cap", "device:d"),))
    assert graph.lookup(A, "x") == "device:d"
    assert graph.refusals == {"cap": 2}
    assert len(graph.members("user:u")) == 3


def test_refusals_counted_over_the_graphs_life() -> None:
    graph = IdentityGraph(IdentityConfig(max_identifiers_per_customer=2))
    graph.resolve([(U, "u1"), (A, "a")], 1)
    graph.resolve([(U, "u1"), (A, "b")], 2)  # cap
    graph.resolve([(U, "u2"), (A, "a")], 3)  # shared
    graph.resolve([(U, "u3"), (A, "a")], 4)  # shared again
    graph.resolve([(U, "u4"), (E, "h")], 5)
    graph.resolve([(U, "u1"), (U, "u4")], 6)  # user_conflict
    assert graph.refusals == {"cap": 1, "shared": 2, "user_conflict": 1}
    assert graph.lookup(U, "u4") == "user:u4"


def test_unknown_kind_and_empty_event_are_errors() -> None:
    graph = IdentityGraph()
    for bad in ([("phone", "1")], [(U, "u"), ("phone", "1")], []):
        try:
            graph.resolve(bad, 1)
        except ValueError:
            continue
        raise AssertionError(f"{bad} accepted")


def test_pickle_round_trip_is_equal_and_compact() -> None:
    graph = IdentityGraph(IdentityConfig(max_identifiers_per_customer=4))
    for i in range(200):
        graph.resolve([(A, f"a{i}")], i)
        if i % 3 == 0:
            graph.resolve([(U, f"u{i % 7}"), (A, f"a{i}"), (D, f"d{i % 5}")], i)
    copy = pickle.loads(pickle.dumps(graph))
    assert copy == graph
    assert copy.refusals == graph.refusals and len(copy) == len(graph)
    assert copy.resolve([(A, "a3")], 999) == graph.resolve([(A, "a3")], 999)
    graph.resolve([(A, "fresh")], 1000)
    assert copy != graph
    assert len(pickle.dumps(graph)) < 40 * len(graph)


def test_module_does_not_import_an_engine() -> None:
    code = (
        "import sys\nimport transforms.identity\n"
        "print([m for m in sys.modules if m.startswith(('apache_beam', 'pyflink'))])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# -- properties ----------------------------------------------------------------------------------------------

identifier = st.tuples(st.sampled_from(IDENTIFIER_FIELDS), st.sampled_from("abcd"))
event = st.tuples(st.lists(identifier, min_size=1, max_size=3), st.integers(0, 30))
streams = st.lists(event, max_size=40)
configs = st.builds(
    IdentityConfig,
    max_user_ids_per_identifier=st.integers(0, 3),
    max_anonymous_ids_per_identifier=st.integers(0, 3),
    max_identifiers_per_customer=st.integers(1, 6),
    merge_user_ids=st.booleans(),
)


def key(kind: str, value: str) -> str:
    return f"{KIND_PREFIX[kind]}:{value}"


def run(graph: IdentityGraph, stream: list[tuple[list[tuple[str, str]], int]]) -> list[Resolution]:
    return [graph.resolve(ids, ts) for ids, ts in stream]


@settings(max_examples=300, deadline=None)
@given(streams)
def test_without_guardrails_customers_are_the_connected_components(stream) -> None:
    graph = IdentityGraph(NO_LIMITS)
    parent: dict[str, str] = {}
    first_seen: dict[str, int] = {}

    def find(x: str) -> str:
        while parent[x] != x:
            x = parent[x]
        return x

    for ids, ts in stream:
        result = graph.resolve(ids, ts)
        keys = [key(*i) for i in ids]
        for k in keys:
            if k not in parent:
                parent[k] = k
                first_seen[k] = ts
        for k in keys[1:]:
            parent[find(k)] = find(keys[0])
        assert result.refused == ()
        assert graph.lookup(*ids[0]) == result.customer_id
    rank = {prefix: i for i, prefix in enumerate(KIND_PREFIX.values())}
    components: dict[str, set[str]] = {}
    for k in parent:
        components.setdefault(find(k), set()).add(k)
    assert len(graph) == len(parent)
    assert graph.refusals == {}
    for component in components.values():
        expected = min(component, key=lambda k: (rank[k.split(":")[0]], first_seen[k], k))
        for k in component:
            kind, value = k.split(":")
            assert graph.lookup({v: k for k, v in KIND_PREFIX.items()}[kind], value) == expected
        assert {key(*m) for m in graph.members(expected)} == component


@settings(max_examples=300, deadline=None)
@given(configs, streams)
def test_guardrails_hold_and_resolution_is_deterministic(config, stream) -> None:
    graph = IdentityGraph(config)
    results = run(graph, stream)
    assert run(IdentityGraph(config), stream) == results
    customers: dict[str, list[tuple[str, str]]] = {}
    for kind in IDENTIFIER_FIELDS:
        for value in "abcd":
            if (canonical := graph.lookup(kind, value)) is not None:
                customers.setdefault(canonical, []).append((kind, value))
    assert sum(len(m) for m in customers.values()) == len(graph)
    for canonical, found in customers.items():
        members = graph.members(canonical)
        assert sorted(members) == sorted(found)
        assert len(members) <= config.max_identifiers_per_customer
        assert canonical in {key(*m) for m in members}
        if not config.merge_user_ids:
            assert sum(kind == U for kind, _ in members) <= 1
    for result in results:
        assert all(reason in ("shared", "user_conflict", "cap") for reason, _ in result.refused)
        assert list(result.absorbed) == sorted(set(result.absorbed))
        assert result.customer_id not in result.absorbed
        if result.customer_id.startswith("shared:"):
            kind_prefix, value = result.customer_id.split(":")[1:]
            assert graph.is_shared({v: k for k, v in KIND_PREFIX.items()}[kind_prefix], value)
    assert sum(graph.refusals.values()) == sum(len(r.refused) for r in results)


@settings(max_examples=200, deadline=None)
@given(configs, streams, st.data())
def test_pickle_mid_stream_then_continuing_gives_the_same_resolutions(config, stream, data) -> None:
    cut = data.draw(st.integers(0, len(stream)))
    straight = IdentityGraph(config)
    expected = run(straight, stream)
    graph = IdentityGraph(config)
    head = run(graph, stream[:cut])
    restored = pickle.loads(pickle.dumps(graph))
    assert restored == graph
    assert head + run(restored, stream[cut:]) == expected
    assert restored == straight
