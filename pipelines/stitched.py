"""Identity stitching on Beam and Flink without a cycle: customers that will merge share one key.

A merge moves the absorbed customer's state into the survivor's. In a keyed engine the two live
under different keys, and carrying one into the other would need an edge from the keyed step back
to itself: a cycle, which neither engine allows. So the keyed step is keyed by *component* instead:

1. **Plan** (:func:`plan_components`, before the job, one pass at parallelism 1): the identity
   graph resolves every cleaned event of the bounded input in input order, as the core loop does,
   and a union-find joins every survivor with what it absorbed. Customers that ever merge form one
   component; its key is the first of them the plan met. Only the components of more than one
   customer are kept (:class:`Components`); every other customer is its own component.
2. **Read** (the engine's reader, parallelism 1, in input order): :class:`Stitcher` resolves each
   event again with the same graph (the reader's state), marks the identifiers the graph gave
   someone else (``Event.foreign``) and tags the event with its canonical customer, the customers
   it absorbed, and the component key it is sent to.
3. **Customer step** (keyed by component, any parallelism): :class:`ComponentDriver` keeps every
   customer of the component (:class:`Component`) and runs :class:`pipelines.watermarked.CustomerDriver`
   on each; a merge folds the absorbed customers into the survivor there, in the component's own
   state (:meth:`transforms.customer.CustomerLogic.absorb`), and emits the
   :class:`transforms.changes.IdentityMerge` record. No state crosses keys.

The plan needs the whole input first, so stitching runs on bounded inputs (file replays) only.
Memory: the reader's graph (every identifier) and the plan's map (customers in multi-customer
components); throughput: the reader's resolution (one core) and the plan's pass, which cleans the
input once more.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.job import JobSpec, clean_record
from pipelines.sources import read_records
from pipelines.watermarked import CHANGE, COUNTS, Counts, CustomerDriver, Keyed, Tagged
from transforms.changes import IdentityMerge
from transforms.customer import CustomerLogic
from transforms.events import FORGET, Event
from transforms.identity import IdentityConfig, IdentityGraph, Resolution

MERGE = "merge"  # output kind: an IdentityMerge record, for the change stream and the changes file


def resolve(graph: IdentityGraph, event: Event) -> Resolution:
    """The core loop's resolution of one event; marks the identifiers of someone else on the event.

    >>> graph = IdentityGraph()
    >>> _ = resolve(graph, Event("e1", "page_view", 1, user_id="u1", anonymous_id="a1"))
    >>> event = Event("e2", "page_view", 2, user_id="u2", anonymous_id="a1")
    >>> resolve(graph, event).customer_id, event.foreign
    ('user:u2', (('anonymous_id', 'a1'),))
    """
    identifiers = event.identifiers()
    resolution = graph.resolve(identifiers, event.ts)
    owner = resolution.customer_id
    event.foreign = tuple(i for i in identifiers if graph.lookup(*i) not in (None, owner))
    return resolution


class Components:
    """Union-find over the merges of a bounded input: which customers share a component key.

    >>> components = Components()
    >>> components.join("user:u1", ["anon:a1"])
    >>> components.join("user:u1", ["anon:a2"])
    >>> components.key("anon:a2"), components.key("user:u9")
    ('user:u1', 'user:u9')
    """

    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def _root(self, key: str) -> str:
        parent = self.parent
        root = key
        while (up := parent.get(root, root)) != root:
            root = up
        while key != root:  # path compression
            parent[key], key = root, parent[key]
        return root

    def join(self, survivor: str, absorbed: Iterable[str]) -> None:
        root = self._root(survivor)
        for other in absorbed:
            other_root = self._root(other)
            if other_root != root:
                self.parent[other_root] = root
                self.parent.setdefault(root, root)

    def key(self, customer_id: str) -> str:
        """The component key of ``customer_id`` (itself when it never merged)."""
        return self._root(customer_id) if customer_id in self.parent else customer_id

    def frozen(self) -> dict[str, str]:
        """Every customer of a multi-customer component -> its key: what the reader needs."""
        return {key: self._root(key) for key in self.parent}


def plan_file(spec: JobSpec) -> dict[str, str]:
    """Step 1 over the bounded input file of ``spec``."""
    assert spec.config.identity is not None
    cleaner = spec.cleaner()
    records = read_records(Path(spec.source), spec.config.cleaning.max_record_bytes, spec.progress)
    cleaned = (clean_record(cleaner, record, spec.now_ms) for record in records)
    return plan_components((e for e in cleaned if isinstance(e, Event)), spec.config.identity)


def plan_components(events: Iterable[Event], config: IdentityConfig) -> dict[str, str]:
    """Step 1 over the cleaned events of a bounded input, in input order (see the module docstring)."""
    graph = IdentityGraph(config)
    components = Components()
    for event in events:
        resolution = resolve(graph, event)
        if resolution.absorbed:
            components.join(resolution.customer_id, resolution.absorbed)
        if event.type == FORGET:
            graph.forget(resolution.customer_id)
    return components.frozen()


@dataclass
class Stitcher:
    """Step 2: the reader's identity graph and the plan's component keys."""

    config: IdentityConfig
    components: dict[str, str]
    graph: IdentityGraph = field(init=False)

    def __post_init__(self) -> None:
        self.graph = IdentityGraph(self.config)

    def restore(self, graph: IdentityGraph | None, unsent: Iterable[Tagged]) -> None:
        """Continue from a checkpoint: the graph as of the last batch sent, then the resolutions of
        the events read since (the same calls in the same order give the same graph)."""
        self.graph = graph if graph is not None else IdentityGraph(self.config)
        for record in unsent:
            if record.event is not None:
                self.tag(record.event, record.tag)

    def tag(self, event: Event, tag: int) -> tuple[Tagged, Counts]:
        """The event on its way to its component, and the refused links it counts."""
        resolution = resolve(self.graph, event)
        customer = resolution.customer_id
        if event.type == FORGET:
            self.graph.forget(customer)
        counts: Counts = Counter(("identity_refused", reason) for reason, _ in resolution.refused)
        key = self.components.get(customer, customer)
        return Tagged(key, tag, event, customer=customer, absorbed=resolution.absorbed), counts


@dataclass(slots=True)
class Component:
    """Step 3's keyed value: every customer of one component, by customer id."""

    members: dict[str, Keyed] = field(default_factory=dict)

    @property
    def touched(self) -> bool:
        return any(keyed.touched for keyed in self.members.values())


class ComponentDriver:
    """Step 3: :class:`pipelines.watermarked.CustomerDriver` on each customer of a component, and
    the merges between them, as the core loop makes them. Same interface as ``CustomerDriver``."""

    def __init__(self, logic: CustomerLogic) -> None:
        self.customers = CustomerDriver(logic)
        self.logic = logic

    @property
    def final_started(self) -> bool:
        return self.customers.final_started

    def on_records(
        self, component: Component | None, records: list[Tagged]
    ) -> tuple[Component | None, list[tuple[str, Any]]]:
        component = component or Component()
        out: list[tuple[str, Any]] = []
        for record in records:
            if record.event is None:  # the end: every customer of the component
                for customer in list(component.members):
                    self._step(component, customer, record, out)
                continue
            customer = record.customer or record.key
            if record.absorbed:
                self._merge(component, customer, record, out)
            self._step(component, customer, record, out)
        return (component if component.members else None), out

    def _step(self, component: Component, customer: str, record: Tagged, out: list[tuple[str, Any]]) -> None:
        keyed, step = self.customers.on_record(component.members.get(customer), record, customer)
        out.extend(step)
        if keyed is None:
            component.members.pop(customer, None)
        else:
            component.members[customer] = keyed

    def _merge(self, component: Component, customer: str, record: Tagged, out: list[tuple[str, Any]]) -> None:
        """The core loop's ``_absorb``: each absorbed customer with state folds into ``customer``."""
        members = component.members
        for key in (customer, *record.absorbed):
            if key in members:
                self.customers.fire(members[key], record.tag, out)
        moved = []
        for other in record.absorbed:
            absorbed = members.pop(other, None)
            if absorbed is None:
                continue  # never had state: nothing to move
            into = members.get(customer)
            if into is None:
                into = members[customer] = Keyed(self.logic.new_state(customer), tag=record.tag)
            step = self.logic.absorb(into.state, absorbed.state)
            into.pending = into.pending + absorbed.pending
            wakes = [e.ts for e in into.pending] + [w for w in (self.logic.next_wake(into.state),) if w is not None]
            if wakes and (into.wake is None or min(wakes) < into.wake):
                into.wake = min(wakes)
            into.tag = max(into.tag, absorbed.tag)
            into.counts.update(absorbed.counts)
            into.touched = True
            out.extend((CHANGE, change) for change in step.changes)
            out.append((COUNTS, Counter({("identity_merges",): 1})))
            moved.append(other)
        if moved:
            event = record.event
            assert event is not None
            out.append((MERGE, IdentityMerge.of(customer, moved, event.event_id, event.ts)))

    def on_watermark(self, component: Component, watermark: int) -> list[tuple[str, Any]]:
        out: list[tuple[str, Any]] = []
        for customer, keyed in list(component.members.items()):
            out.extend(self.customers.on_watermark(keyed, watermark))
            if self.customers.gone(keyed):
                del component.members[customer]
        return out

    def gone(self, component: Component) -> bool:
        return not component.members

    @staticmethod
    def trigger(component: Component | None) -> int | None:
        if component is None:
            return None
        triggers = [t for keyed in component.members.values() if (t := CustomerDriver.trigger(keyed)) is not None]
        return min(triggers, default=None)

    def profiles(self, component: Component) -> Iterator[tuple[str, dict[str, Any]]]:
        for keyed in component.members.values():
            yield from self.customers.profiles(keyed)

    def final(self, component: Component) -> list[tuple[str, Any]]:
        return [item for keyed in component.members.values() for item in self.customers.final(keyed)]
