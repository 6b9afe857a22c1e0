"""Cost of the identity graph: resolutions per second and state bytes per identifier.

A generated stream of people until it holds ``--identifiers`` distinct identifiers (untimed, in memory):
each person browses anonymously (one anonymous id, sometimes two), some log in (an event linking the
anonymous id and the user id, often with the email hash), some send a device id, a few share a family
device with other users, and guests type junk emails. About 70% of the events carry one identifier.

1. **Per event**: the baseline routes every event by a plain dict lookup of its first identifier's key
   (``"kind:value"``, what ``Event.customer_key`` costs today); then ``IdentityGraph.resolve`` per event.
   Printed: resolutions per second, microseconds per event and the ratio to the baseline (best of ``--repeat``).
2. **State bytes per identifier**: ``tracemalloc`` of building the graph (everything it keeps), and
   ``len(pickle.dumps(graph))``.

Run from the repository root (the package installed, e.g. ``pip install -e .``)::

    python bench/identity.py                        # 1,000,000 identifiers
    python bench/identity.py --identifiers 20000    # quick
"""

from __future__ import annotations

import argparse
import gc
import pickle
import random
import time
import tracemalloc
from collections.abc import Callable

from transforms.identity import KIND_PREFIX, IdentityConfig, IdentityGraph

Stream = list[tuple[tuple[tuple[str, str], ...], int]]
HOUR = 3_600_000


def generate(identifiers: int, seed: int) -> Stream:
    """Events of generated people, in time order, until ``identifiers`` distinct identifiers were used."""
    rng = random.Random(seed)
    timed: list[tuple[int, int, tuple[tuple[str, str], ...]]] = []
    used = 0
    person = 0
    family_devices: list[tuple[str, str]] = []
    junk_emails = [("email", f"{rng.getrandbits(256):064x}") for _ in range(5)]

    def new_id(kind: str) -> tuple[str, str]:
        nonlocal used
        used += 1
        if kind == "email":
            return (kind, f"{rng.getrandbits(256):064x}")
        return (kind, f"{rng.getrandbits(128):032x}")

    while used < identifiers:
        person += 1
        start = rng.randrange(30 * 24 * HOUR)
        anons = [new_id("anonymous_id") for _ in range(2 if rng.random() < 0.2 else 1)]
        events: list[tuple[tuple[str, str], ...]] = []
        for anon in anons:
            events.extend([(anon,)] * rng.randint(1, 2))  # anonymous browsing
        device = new_id("device_id") if rng.random() < 0.25 else None
        if device is not None:
            events.append((device, anons[0]))  # the app sends its device id with the anonymous id
            events.append((device,))
        if rng.random() < 0.4:
            user = new_id("user_id")
            email = new_id("email") if rng.random() < 0.6 else None
            for anon in anons:  # login on each browser
                events.append((user, email, anon) if email is not None else (user, anon))
            events.extend([(user,)] * rng.randint(1, 2))  # logged-in activity
            if device is not None:
                events.append((user, device))
            if rng.random() < 0.03:  # a family computer: several users log in on it
                if family_devices and rng.random() < 0.7:
                    events.append((user, rng.choice(family_devices)))
                else:
                    family = new_id("device_id")
                    family_devices.append(family)
                    events.append((user, family))
        elif rng.random() < 0.02:  # a guest typing a junk email
            events.append((rng.choice(junk_emails), anons[0]))
        for i, ids in enumerate(events):
            timed.append((start + i * 60_000 + rng.randrange(60_000), person, tuple(i for i in ids if i is not None)))
    timed.sort(key=lambda t: (t[0], t[1]))
    return [(ids, ts) for ts, _, ids in timed]


def best_seconds(repeat: int, run: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(repeat):
        gc.collect()
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return best


def per_event(stream: Stream, config: IdentityConfig, repeat: int) -> IdentityGraph:
    heads = {kind: prefix + ":" for kind, prefix in KIND_PREFIX.items()}
    graphs: list[IdentityGraph] = []

    def baseline() -> None:
        keys: dict[str, str] = {}
        for ids, _ in stream:
            kind, value = ids[0]
            key = heads[kind] + value
            if keys.get(key) is None:
                keys[key] = key

    def resolve() -> None:
        graph = IdentityGraph(config)
        for ids, ts in stream:
            graph.resolve(ids, ts)
        graphs[:] = [graph]

    base = best_seconds(repeat, baseline)
    seconds = best_seconds(repeat, resolve)
    graph = graphs[0]
    singles = sum(len(ids) == 1 for ids, _ in stream)
    print(
        f"\n{len(stream):,} events ({singles / len(stream):.0%} with one identifier), {len(graph):,} identifiers, "
        f"refused links {dict(sorted(graph.refusals.items()))}, best of {repeat}"
    )
    print("| stage | events/s | µs per event | vs baseline |\n|---|---:|---:|---:|")
    for name, s in (("plain dict lookup per event (baseline)", base), ("IdentityGraph.resolve", seconds)):
        print(f"| {name} | {len(stream) / s:,.0f} | {s / len(stream) * 1e6:.2f} | {s / base:.2f}x |")
    return graph


def state_bytes(stream: Stream, config: IdentityConfig, graph: IdentityGraph) -> None:
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    traced = IdentityGraph(config)
    for ids, ts in stream:
        traced.resolve(ids, ts)
    gc.collect()
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    pickled = len(pickle.dumps(graph, protocol=pickle.HIGHEST_PROTOCOL))
    n = len(graph)
    customers = {graph.lookup(kind, value) for ids, _ in stream for kind, value in ids}
    print(f"\nState of {n:,} identifiers ({len(customers):,} customers among them)")
    print("| measure | bytes | bytes per identifier |\n|---|---:|---:|")
    print(f"| tracemalloc (all the graph keeps) | {held:,} | {held / n:.0f} |")
    print(f"| pickle.dumps | {pickled:,} | {pickled / n:.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--identifiers", type=int, default=1_000_000, help="distinct identifiers in the stream")
    parser.add_argument("--repeat", type=int, default=3, help="best of this many runs per stage")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    config = IdentityConfig()
    started = time.perf_counter()
    stream = generate(args.identifiers, args.seed)
    print(f"generated {len(stream):,} events in {time.perf_counter() - started:.1f} s (untimed)")
    graph = per_event(stream, config, args.repeat)
    state_bytes(stream, config, graph)


if __name__ == "__main__":
    main()
