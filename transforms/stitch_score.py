"""Scoring identity stitching against a generator's ground truth (``segstream generate --truth``).

Predicted clusters are the ``identifiers`` of the final profiles; identifiers the truth marks shared
(a family computer, a junk email) belong to several persons and are left out of every pair.

- **precision**: of the identifier pairs put in one customer, the share that belong to one person;
- **recall_linked**: of the pairs that well-formed events connect (the truth's ``linked_groups``:
  what deterministic stitching can find), the share put in one customer;
- **recall_person**: of all pairs of one person, the share put in one customer (devices that
  never log in cannot be found without probabilistic matching);
- **false_merges**: customers holding identifiers of more than one person.

>>> truth = {"identifiers": {"user_id:u1": "p1", "anonymous_id:a": "p1", "anonymous_id:b": "p2",
...          "anonymous_id:fam": ["p1", "p2"]}, "linked_groups": [["anonymous_id:a", "user_id:u1"]]}
>>> profiles = [{"identifiers": {"user_id": ["u1"], "anonymous_id": ["a", "fam"]}},
...             {"identifiers": {"anonymous_id": ["b"]}}]
>>> score = score_stitching(profiles, truth)
>>> score["precision"], score["recall_linked"], score["false_merges"]
(1.0, 1.0, 0)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any


def _pairs(n: int) -> int:
    return n * (n - 1) // 2


def score_stitching(profiles: Iterable[dict[str, Any]], truth: dict[str, Any]) -> dict[str, Any]:
    """Pairwise precision and recall of the profiles' identifier clusters against ``truth``."""
    person_of = {key: who for key, who in truth["identifiers"].items() if isinstance(who, str)}
    cluster_of: dict[str, int] = {}
    predicted = same_person = false_merges = customers = 0
    for number, profile in enumerate(profiles):
        keys = [f"{kind}:{value}" for kind, values in profile["identifiers"].items() for value in values]
        persons = Counter(person_of[key] for key in keys if key in person_of)
        for key in keys:
            cluster_of[key] = number
        customers += 1
        predicted += _pairs(sum(persons.values()))
        same_person += sum(_pairs(n) for n in persons.values())
        false_merges += len(persons) > 1
    linked = found = 0
    for group in truth["linked_groups"]:
        members = [key for key in group if key in person_of]
        linked += _pairs(len(members))
        found += sum(_pairs(n) for n in Counter(cluster_of.get(key, -1 - i) for i, key in enumerate(members)).values())
    persons_total = sum(_pairs(n) for n in Counter(person_of.values()).values())
    return {
        "customers": customers,
        "identifiers": len(cluster_of),
        "pairs_predicted": predicted,
        "precision": round(same_person / predicted, 6) if predicted else 1.0,
        "recall_linked": round(found / linked, 6) if linked else 1.0,
        "recall_person": round(same_person / persons_total, 6) if persons_total else 1.0,
        "false_merges": false_merges,
    }
