"""Customer state between runs (``--resume``) and what a changed rule set does to it.

Both file-replay drivers keep customers in a :class:`~pipelines.snapshot_store.SnapshotStore`: a
temporary one by default, ``STATE_FILE`` in the state directory with ``--resume``. At the end of
a run every customer is stored with its next timer, beside the rules version and the RFM
population; the next run with ``--resume`` continues from there. If the rules changed in between,
every stored customer is evaluated again first, and the changes it causes are emitted with reason
``rule`` and the new ``rules_version``.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from pipelines.snapshot_store import SnapshotStore
from transforms.customer import CustomerLogic, Snapshot, Step

STATE_FILE = "customers.db"


@contextmanager
def customer_store(state_file: Path | None) -> Iterator[SnapshotStore]:
    """The run's store: ``state_file`` (kept) or a temporary file (removed at the end)."""
    with tempfile.TemporaryDirectory(prefix="segstream-customers-") as tmp:
        path = state_file if state_file is not None else Path(tmp) / STATE_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        store = SnapshotStore(path)
        try:
            yield store
        finally:
            store.close()


def restore_shared(store: SnapshotStore, logic: CustomerLogic) -> None:
    """Give ``logic`` the RFM population the store's customers belong to, and the models they
    trained (unless the models' settings changed: then they start afresh)."""
    population = store.get_shared("population")
    if population is not None:
        logic.model.population = population
    models = store.get_shared("models")
    if models is not None:
        logic.use_models(models)


def save_worker_state(store: SnapshotStore, logic: CustomerLogic) -> None:
    """The state the worker's customers share: the RFM population and the models."""
    store.put_shared("population", logic.model.population)
    if logic.models is not None:
        store.put_shared("models", logic.models)


def save_shared(store: SnapshotStore, logic: CustomerLogic) -> None:
    save_worker_state(store, logic)
    store.put_shared("rules_version", logic.rules.version)
    store.commit()


def reevaluate_on_new_rules(store: SnapshotStore, logic: CustomerLogic, emit: Callable[[Step], None]) -> int:
    """If the stored customers were evaluated with other rules, evaluate each again at its clock
    (``emit`` gets each customer's changes); return how many customers were evaluated."""
    previous = store.get_shared("rules_version")
    if previous is None or previous == logic.rules.version:
        return 0
    count = 0
    for key in store.all_keys():
        snapshot = store.get(key)
        if snapshot is None or snapshot.state.clock is None:
            continue
        step = logic.advance(snapshot.state, [], snapshot.state.clock)
        emit(step)
        store.put(key, Snapshot(snapshot.state, snapshot.pending), logic.next_wake(snapshot.state))
        count += 1
    store.put_shared("rules_version", logic.rules.version)
    store.commit()
    return count
