"""Identity stitching on the real DIGINETICA (CIKM Cup 2016) item views and purchases.

Both files go through the ``segstream import`` adapters (``diginetica-views``, ``diginetica-purchases``)
into a work directory, are merged into one stream ordered by event time, and run through the real job,
``segstream run --engine core`` (in this process, so the Prometheus counters can be read), with a config
that is the packaged default, the online models off (this measures stitching), plus ``identity: {stitch:
true}``; the same replay with stitching off is the
baseline (its customers are the distinct keys before stitching; its events/s the cost baseline).

How DIGINETICA links: every row has a ``sessionId``; a row of a logged-in session also has a ``userId``
(``NA`` when anonymous). The adapter gives each event ``anonymous_id = dgn-session-<sessionId>`` and, when
set, ``user_id``: a logged-in row is one event with both identifiers, which links the session to the user.
Some sessions have rows with and without a user id (a login part way), and a few have rows with two
different user ids (a shared computer, or reused session ids), which the guardrails refuse.

Printed: events in / accepted / dead letters; identifiers by kind; customers before vs after stitching;
identity merges (``"kind": "identity_merge"`` lines of ``--changes-out``) and absorbed ids per merge;
anonymous sessions linked to a user id; refused links by reason (``segstream_identity_refused_links_total``)
with explained examples; shared identifiers; events/s with stitching off and on. Refusal examples come from
replaying the same cleaned events through :class:`transforms.identity.IdentityGraph` (the engine's graph,
deterministic); its counts are checked against the job's metrics.

Run from the repository root (the package installed, e.g. ``pip install -e .``)::

    python bench/diginetica_identity.py
    python bench/diginetica_identity.py --repeat 3 --work-dir /tmp/dgn-identity   # keep the files
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import io
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipelines.cli import main as segstream
from pipelines.job import clean_record
from pipelines.metrics import METRICS
from pipelines.sources import read_records
from transforms.cleaning import Cleaner
from transforms.config import SALT_ENV, JobConfig, load_config
from transforms.events import Event
from transforms.identity import SHARED_PREFIX, IdentityGraph
from transforms.timestamps import parse_event_time

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
DEFAULT_CONFIG = REPO / "transforms" / "default_config.yaml"
NOW = "2026-01-01T00:00:00+00:00"  # fixed processing clock: the replay is the same every time
REFUSED = "segstream_identity_refused_links_total"
MERGES = "segstream_identity_merges_total"


def cli(*args: str) -> str:
    """Run a ``segstream`` command in this process; return what it printed."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        segstream.main(args=list(args), prog_name="segstream", standalone_mode=False)
    return out.getvalue()


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def metric(name: str, **labels: str) -> float:
    return METRICS.registry.get_sample_value(name, labels) or 0.0


# -- input ----------------------------------------------------------------------------------------------------


@dataclass
class Merged:
    path: Path
    views: int
    purchases: int
    notes: list[str]


def import_and_merge(views: Path, purchases: Path, work: Path) -> Merged:
    """Both files through the adapters, then one stream ordered by (event time, views first, row)."""
    paths = {"views": work / "views.jsonl", "purchases": work / "purchases.jsonl"}
    cli("import", "diginetica-views", str(views), str(paths["views"]))
    cli("import", "diginetica-purchases", str(purchases), str(paths["purchases"]))
    rows: list[tuple[int, int, int, str]] = []
    counts = {}
    for order, (name, path) in enumerate(paths.items()):
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle):
                rows.append((parse_event_time(json.loads(line)["ts"]), order, number, line))
        counts[name] = sum(1 for row in rows if row[1] == order)
    rows.sort()
    merged = work / "merged.jsonl"
    with merged.open("w", encoding="utf-8") as out:
        out.writelines(row[3] for row in rows)
    return Merged(merged, counts["views"], counts["purchases"], _time_notes(rows))


def _time_notes(rows: list[tuple[int, int, int, str]]) -> list[str]:
    """Whether view and purchase times are comparable: what each is anchored to, and what that does."""
    day = 86_400_000
    offsets: dict[int, list[int]] = {0: [], 1: []}
    first_view: dict[str, int] = {}
    first_purchase: dict[str, int] = {}
    for ts, order, _, line in rows:
        offsets[order].append(ts % day)
        session = json.loads(line).get("session_id")
        if session is not None:
            (first_view if order == 0 else first_purchase).setdefault(session, ts)
    both = set(first_view) & set(first_purchase)
    same_day = [s for s in both if first_view[s] // day == first_purchase[s] // day]
    first = sum(1 for s in same_day if first_purchase[s] < first_view[s])
    return [
        f"views: UTC midnight of eventdate + timeframe (offset into the day {min(offsets[0]) / 1000:.0f}s to "
        f"{max(offsets[0]) / 60_000:.1f} min)",
        f"purchases: UTC midnight of eventdate ({sum(1 for o in offsets[1] if o == 0):,} of {len(offsets[1]):,} "
        "exactly at 00:00:00.000; the file's timeframe is ms since session start, kept in properties)",
        "=> comparable to the day only, not within a day: a purchase sorts before every view of its day",
        f"   sessions in both files: {len(both):,}; first view and first purchase on the same day: "
        f"{len(same_day):,}, of which the purchase sorts first: {first:,}",
    ]


# -- the job --------------------------------------------------------------------------------------------------


@dataclass
class Run:
    summary: dict[str, Any]
    refused: dict[str, float]
    merges_metric: float
    out: Path


def run_job(source: Path, config: Path | None, out: Path, state: Path) -> Run:
    """``segstream run --engine core`` over ``source``; the summary and the identity metrics it moved."""
    out.mkdir(parents=True, exist_ok=True)
    reasons = ("shared", "user_conflict", "cap")
    before = {r: metric(REFUSED, reason=r) for r in reasons}
    merges_before = metric(MERGES)
    args = ["run", "--engine", "core", "--source", str(source), "--now", NOW, "--no-progress"]
    args += ["--state-dir", str(state), "--summary-out", str(out / "summary.json")]
    args += ["--changes-out", str(out / "changes.jsonl"), "--profiles-out", str(out / "profiles.jsonl")]
    args += ["--dead-letter-out", str(out / "dead_letters.jsonl")]
    if config is not None:
        args += ["--config", str(config)]
    cli(*args)
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    refused = {r: metric(REFUSED, reason=r) - before[r] for r in reasons}
    return Run(summary, refused, metric(MERGES) - merges_before, out)


def jsonl(path: Path) -> Iterator[dict[str, Any]]:
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                yield json.loads(line)


# -- the same events through the identity graph, for examples -------------------------------------------------


@dataclass
class Replay:
    graph: IdentityGraph
    events: int = 0
    shapes: collections.Counter[str] = field(default_factory=collections.Counter)
    keys_before: set[str] = field(default_factory=set)
    users_of: dict[str, list[str]] = field(default_factory=dict)  # anonymous id -> user ids, first seen first
    anon_only_before_link: set[str] = field(default_factory=set)  # sessions with anonymous events before a link
    refusals: list[tuple[str, str, Event, str]] = field(default_factory=list)  # reason, key, event, customer
    to_shared: collections.Counter[str] = field(default_factory=collections.Counter)  # events of shared:* ids


def replay_graph(source: Path, config: JobConfig) -> Replay:
    """Clean ``source`` as the job does and resolve every event in the identity graph."""
    assert config.identity is not None
    cleaner = Cleaner(config.cleaning)
    now_ms = parse_event_time(NOW)
    replay = Replay(IdentityGraph(config.identity))
    for record in read_records(source, config.cleaning.max_record_bytes):
        event = clean_record(cleaner, record, now_ms)
        if not isinstance(event, Event):
            continue
        replay.events += 1
        ids = event.identifiers()
        replay.shapes[" + ".join(kind for kind, _ in ids)] += 1
        replay.keys_before.add(event.customer_key)
        anon = event.anonymous_id
        if anon is not None:
            if event.user_id is None:
                if anon not in replay.users_of:
                    replay.anon_only_before_link.add(anon)
            else:
                users = replay.users_of.setdefault(anon, [])
                if event.user_id not in users:
                    users.append(event.user_id)
        resolution = replay.graph.resolve(ids, event.ts)
        for reason, key in resolution.refused:
            replay.refusals.append((reason, key, event, resolution.customer_id))
        if resolution.customer_id.startswith(SHARED_PREFIX):
            replay.to_shared[resolution.customer_id] += 1
    return replay


# -- report ---------------------------------------------------------------------------------------------------


def distribution(counter: collections.Counter[int]) -> str:
    return ", ".join(f"{k}: {v:,}" for k, v in sorted(counter.items())) or "-"


def report(merged: Merged, on: Run, off: Run, replay: Replay, timing: dict[str, list[float]]) -> None:
    s_on, s_off = on.summary, off.summary
    print(f"DIGINETICA identity stitching: {merged.views:,} views + {merged.purchases:,} purchases, core engine")
    print("\nevent times (adapter):")
    for note in merged.notes:
        print(f"  {note}")

    print("\nevents (stitching on | off):")
    for name in ("events_in", "accepted", "duplicates"):
        print(f"  {name:<12} {s_on[name]:>8,} | {s_off[name]:,}")
    dead = sum(s_on["dead_letters"].values())
    print(f"  {'dead letters':<12} {dead:>8,} | {sum(s_off['dead_letters'].values()):,}  {s_on['dead_letters'] or ''}")
    print("  identifiers per event: " + ", ".join(f"{k}: {v:,}" for k, v in replay.shapes.most_common()))

    by_kind = collections.Counter(kind for kind in _graph_kinds(replay.graph))
    print("\nidentifiers by kind: " + ", ".join(f"{k}: {v:,}" for k, v in sorted(by_kind.items())))

    profiles = list(jsonl(on.out / "profiles.jsonl"))
    prefixes = collections.Counter(_prefix(p["customer_id"]) for p in profiles)
    print("\ncustomers:")
    print(f"  before stitching (distinct user:/anon: keys, run off): {s_off['customers']:,}"
          f" (graph replay: {len(replay.keys_before):,})")  # fmt: skip
    print(f"  after stitching (run on): {s_on['customers']:,}  by kind: "
          + ", ".join(f"{k}: {v:,}" for k, v in sorted(prefixes.items())))  # fmt: skip

    merges = [line for line in jsonl(on.out / "changes.jsonl") if line.get("kind") == "identity_merge"]
    absorbed = collections.Counter(len(m["absorbed"]) for m in merges)
    absorbed_kinds = collections.Counter(_prefix(a) for m in merges for a in m["absorbed"])
    survivors = collections.Counter(_prefix(m["customer_id"]) for m in merges)
    print("\nidentity merges (--changes-out kind=identity_merge):")
    print(f"  merges: {len(merges):,} (metric {MERGES}: {on.merges_metric:,.0f} customers absorbed)")
    print(f"  absorbed ids per merge: {distribution(absorbed)}; absorbed kinds: {dict(absorbed_kinds)}; "
          f"survivor kinds: {dict(survivors)}")  # fmt: skip
    for m in merges[:2]:
        print(f"  e.g. {m['event_id']} at {iso(m['event_time'])}: {', '.join(m['absorbed'])} -> {m['customer_id']}")

    graph = replay.graph
    sessions = [a for a in replay.users_of] + [a for a in replay.anon_only_before_link if a not in replay.users_of]
    linked = [a for a in set(sessions) if (graph.lookup("anonymous_id", a) or "").startswith("user:")]
    anon_sessions = {a for a in replay.anon_only_before_link}
    mixed = [a for a in linked if a in anon_sessions]
    users_with_sessions = collections.Counter(graph.lookup("anonymous_id", a) for a in linked)
    print("\nanonymous sessions (anonymous_id) linked to a user id:")
    print(f"  sessions: {len({*replay.users_of, *replay.anon_only_before_link}):,}; seen with a user id: "
          f"{len(replay.users_of):,}; now in a user:<id> customer: {len(linked):,}")  # fmt: skip
    print(f"  of which also had anonymous (NA) events: {len(mixed):,}"
          f" ({sum(1 for a in mixed if a in _absorbed_sessions(merges)):,} absorbed by a merge, the rest were"
          " linked before their first anonymous event and needed none)")  # fmt: skip
    print(f"  sessions per user customer: {distribution(collections.Counter(users_with_sessions.values()))}")

    print("\nrefused links (metric " + REFUSED + "{reason}):")
    print("  " + ", ".join(f"{r}: {n:,.0f}" for r, n in on.refused.items())
          + f"  (graph replay: {dict(graph.refusals) or '{}'})")  # fmt: skip
    for reason, key, event, customer in _examples(replay.refusals):
        anon = key.removeprefix("anon:")
        users = replay.users_of.get(anon, [])
        print(f"  e.g. {reason}: {key} at {event.event_id} ({event.type}, {iso(event.ts)}, user_id {event.user_id}):")
        print(f"       the session was seen with user ids {users}; it stays with {graph.lookup('anonymous_id', anon)}, "
              f"this event goes to {customer}, its anonymous-only events from now on to "
              f"{SHARED_PREFIX}{key} ({replay.to_shared.get(SHARED_PREFIX + key, 0)} events)")  # fmt: skip

    shared = sorted(k for k in graph_keys(graph) if graph.is_shared(*_kind_value(k)))
    print(f"\nshared identifiers: {len(shared):,} ({', '.join(shared[:8])}{' ...' if len(shared) > 8 else ''})")
    print(f"  events routed to shared:* customers: {sum(replay.to_shared.values()):,}; "
          f"shared:* profiles: {prefixes.get('shared', 0):,}")  # fmt: skip
    listed = collections.Counter(
        f"{kind}:{value}" for p in profiles for kind, values in p["identifiers"].items() for value in values
    )
    multi = sorted(k for k, n in listed.items() if n > 1)
    print(f"  identifiers listed in more than one final profile: {len(multi):,} ({', '.join(multi[:3])}"
          f"{' ...' if len(multi) > 3 else ''}); expected 0: a profile lists only the identifiers the graph"
          " gives its customer, as Redis {prefix}:identifiers does")  # fmt: skip

    best = {name: max(rates) for name, rates in timing.items()}
    print(f"\ntime cost (same replay, {s_on['events_in']:,} events, best of {len(timing['on'])}; summary events/s):")
    print(f"  stitch off: {best['off']:,.0f} events/s   runs: {', '.join(f'{r:,.0f}' for r in timing['off'])}")
    print(f"  stitch on:  {best['on']:,.0f} events/s   runs: {', '.join(f'{r:,.0f}' for r in timing['on'])}")
    print(f"  ratio on/off: {best['on'] / best['off']:.2f}x ({100 * (best['off'] / best['on'] - 1):+.1f}% time)")


def graph_keys(graph: IdentityGraph) -> list[str]:
    """Every identifier the graph stores, as ``prefix:value`` (from its pickled state: singles, then groups)."""
    state = graph.__getstate__()
    return list(state[2]) + [m for _, _, members in state[3] for m in members]


def _graph_kinds(graph: IdentityGraph) -> Iterator[str]:
    for key in graph_keys(graph):
        yield _kind_value(key)[0]


def _kind_value(key: str) -> tuple[str, str]:
    prefix, _, value = key.partition(":")
    return {"user": "user_id", "anon": "anonymous_id", "email": "email", "device": "device_id"}[prefix], value


def _prefix(customer_id: str) -> str:
    return customer_id.partition(":")[0]


def _absorbed_sessions(merges: list[dict[str, Any]]) -> set[str]:
    return {a.removeprefix("anon:") for m in merges for a in m["absorbed"] if a.startswith("anon:")}


def _examples(refusals: list[tuple[str, str, Event, str]]) -> list[tuple[str, str, Event, str]]:
    """One example of each reason, two of the first one."""
    out: list[tuple[str, str, Event, str]] = []
    for reason in dict.fromkeys(r for r, *_ in refusals):
        out += [r for r in refusals if r[0] == reason][: 2 if not out else 1]
    return out


# -- main -----------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--views", type=Path, default=DATA / "diginetica_item_views_sample.csv")
    parser.add_argument("--purchases", type=Path, default=DATA / "diginetica_purchases.csv")
    parser.add_argument("--work-dir", type=Path, help="keep the imported files and outputs here (default: a temp "
                        "dir, removed at the end)")  # fmt: skip
    parser.add_argument("--repeat", type=int, default=2, help="runs per setting for the time cost (best of)")
    args = parser.parse_args()
    for path in (args.views, args.purchases):
        if not path.is_file():
            parser.error(f"no such file: {path}")
    os.environ.setdefault(SALT_ENV, "bench-diginetica")  # no emails in DIGINETICA; silences the demo-salt warning
    with contextlib.ExitStack() as stack:
        if args.work_dir is None:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="segstream-dgn-identity-")))
        else:
            work = args.work_dir
            work.mkdir(parents=True, exist_ok=True)
        merged = import_and_merge(args.views, args.purchases, work)
        base = DEFAULT_CONFIG.read_text(encoding="utf-8") + "\nmodels:\n  enabled: false\n"  # stitching alone
        plain, stitch = work / "plain.yaml", work / "stitch.yaml"
        plain.write_text(base, "utf-8")
        stitch.write_text(base + "identity:\n  stitch: true\n", "utf-8")
        runs: dict[str, list[Run]] = {"off": [], "on": []}
        for i in range(max(1, args.repeat)):
            for name, config in (("off", plain), ("on", stitch)):
                runs[name].append(run_job(merged.path, config, work / f"{name}-{i}", work / f"redis-{name}-{i}"))
        replay = replay_graph(merged.path, load_config(stitch))
        for name, got in (("refusals", dict(replay.graph.refusals)), ("events", replay.events)):
            want: Any = {r: int(n) for r, n in runs["on"][0].refused.items() if n} if name == "refusals" else (
                runs["on"][0].summary["accepted"] + runs["on"][0].summary["duplicates"])  # fmt: skip
            if got != want:
                print(f"warning: graph replay {name} {got} differ from the job's {want}")
        timing = {name: [r.summary["events_per_second"] for r in rs] for name, rs in runs.items()}
        report(merged, runs["on"][0], runs["off"][0], replay, timing)
        if args.work_dir is not None:
            print(f"\nfiles kept in {work}")


if __name__ == "__main__":
    main()
