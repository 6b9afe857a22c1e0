"""Identity stitching on DIGINETICA-shaped rows: the adapters' events through ``segstream run --engine core``.

A tiny inline views file and purchases file (the real files' columns, ``;``-separated, ``NA`` for anonymous):
session 1 browses anonymously and buys the next day logged in as user 5 (the purchase row carries both ids,
so the session is absorbed into user:5); session 2 is seen with user 7, then user 8, then anonymously (the
session id is refused as ``shared`` and its later anonymous event goes to a customer of its own).
"""

from __future__ import annotations

import json
from pathlib import Path

from pipelines.metrics import METRICS
from tests.conftest import read_jsonl
from tests.test_end_to_end import outputs, run_cli
from transforms.adapters.diginetica import iter_purchases, iter_views
from transforms.timestamps import parse_event_time

DEFAULT_CONFIG = Path(__file__).parents[1] / "transforms" / "default_config.yaml"
VIEWS = """session_id;user_id;item_id;timeframe;eventdate
1;NA;100;1000;2016-05-09
1;NA;101;60000;2016-05-09
2;7;200;1000;2016-05-09
2;8;201;2000;2016-05-09
2;NA;202;3000;2016-05-09
"""
PURCHASES = """sessionId;userId;timeframe;eventdate;ordernumber;itemId
1;5;5000;2016-05-10;9001;100
"""
REFUSED = "segstream_identity_refused_links_total"


def _refused(reason: str) -> float:
    return METRICS.registry.get_sample_value(REFUSED, {"reason": reason}) or 0.0


def test_a_logged_in_purchase_links_its_session_and_a_session_of_two_users_is_shared(
    tmp_path: Path, redis_url: str
) -> None:
    (tmp_path / "views.csv").write_text(VIEWS, encoding="utf-8")
    (tmp_path / "purchases.csv").write_text(PURCHASES, encoding="utf-8")
    events = [*iter_views(tmp_path / "views.csv"), *iter_purchases(tmp_path / "purchases.csv")]
    purchase = events[-1]
    assert (purchase["anonymous_id"], purchase["user_id"]) == ("dgn-session-1", "5")  # one event, both ids
    events.sort(key=lambda event: parse_event_time(event["ts"]))
    source = tmp_path / "merged.jsonl"
    source.write_text("".join(json.dumps(event) + "\n" for event in events), encoding="utf-8")
    config = tmp_path / "stitch.yaml"
    config.write_text(DEFAULT_CONFIG.read_text(encoding="utf-8") + "\nidentity:\n  stitch: true\n", "utf-8")
    before = {reason: _refused(reason) for reason in ("shared", "user_conflict", "cap")}

    out = tmp_path / "out"
    summary = run_cli("--source", str(source), "--engine", "core", "--config", str(config), "--redis-url", redis_url,
                      *outputs(out))  # fmt: skip

    assert (summary["events_in"], summary["accepted"]) == (6, 6)
    merges = [line for line in read_jsonl(out / "changes.jsonl") if line.get("kind") == "identity_merge"]
    assert [(m["customer_id"], m["absorbed"], m["event_id"]) for m in merges] == [
        ("user:5", ["anon:dgn-session-1"], "dgn-purchase-1")
    ]
    profiles = {p["customer_id"]: p for p in read_jsonl(out / "profiles.jsonl")}
    assert set(profiles) == {"user:5", "user:7", "user:8", "shared:anon:dgn-session-2"}
    assert profiles["user:5"]["identifiers"] == {"user_id": ["5"], "anonymous_id": ["dgn-session-1"]}
    assert profiles["user:5"]["features"]["counts"] == {"product_view": 2, "purchase": 1}
    assert profiles["user:7"]["identifiers"]["anonymous_id"] == ["dgn-session-2"]  # the first user keeps it
    listed = [f"{kind}:{v}" for p in profiles.values() for kind, values in p["identifiers"].items() for v in values]
    assert len(listed) == len(set(listed))  # a refused link's identifier stays with its customer only
    assert profiles["user:8"]["features"]["counts"] == {"product_view": 1}  # not merged into user:7
    assert profiles["shared:anon:dgn-session-2"]["features"]["counts"] == {"product_view": 1}
    refused = {reason: _refused(reason) - n for reason, n in before.items()}
    assert refused == {"shared": 1, "user_conflict": 0, "cap": 0}
