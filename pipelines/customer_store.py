"""Customer state between runs (``--resume``) and what a changed rule set does to it.

Both file-replay drivers keep customers in a :class:`~pipelines.snapshot_store.SnapshotStore`: a
temporary one by default, ``STATE_FILE`` in the state directory with ``--resume``. At the end of
a run every customer is stored with its next timer, beside the rules version and the RFM
population; the next run with ``--resume`` continues from there. If the rules changed in between,
every stored customer is evaluated again first, and the changes it causes are emitted with reason
``rule`` and the new ``rules_version``.

A saved state is replaced whole or not at all. A run works on a copy beside it
(``customers.db.run``); the engine closes it once its outputs are flushed, and the command puts it
in place (:func:`promote_state`: an fsync, then an atomic rename) as the last thing a run that
ended well does. A run that stops any other way (``kill -9``, Ctrl-C, a full disk, Redis gone)
leaves the state of the last run that ended well, and the same input run again with ``--resume``
gives the changes of an uninterrupted run (with the same change ids, which Redis's seq guards and
webhook receivers deduplicate). A run stopped after that last step has saved its state: the state
remembers the digest of every input applied to it (:func:`applied_before`), so the same input
again is refused instead of being counted twice.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import sqlite3
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from pipelines.snapshot_store import SnapshotStore, StateFileError, check_state_file
from transforms.customer import CustomerLogic, Snapshot, Step

STATE_FILE = "customers.db"


@contextmanager
def customer_store(state_file: Path | None) -> Iterator[SnapshotStore]:
    """The run's store: ``state_file`` (see :func:`saved_state`) or a temporary file."""
    if state_file is not None:
        with saved_state(state_file) as store:
            yield store
        return
    with tempfile.TemporaryDirectory(prefix="segstream-customers-") as tmp:
        store = SnapshotStore(Path(tmp) / STATE_FILE)
        try:
            yield store
        finally:
            store.abandon()


@contextmanager
def saved_state(state_file: Path) -> Iterator[SnapshotStore]:
    """A store over a working copy of ``state_file`` (empty if there is none yet), kept for
    :func:`promote_state` when the ``with`` block ends without an exception, else dropped.

    >>> import tempfile, pathlib
    >>> from transforms.customer import CustomerState, Snapshot
    >>> path = pathlib.Path(tempfile.mkdtemp()) / STATE_FILE
    >>> with saved_state(path) as store:
    ...     store.put("user:1", Snapshot(CustomerState("user:1"), []), None)
    >>> promote_state(path)
    >>> try:
    ...     with saved_state(path) as store:
    ...         store.delete("user:1")
    ...         raise KeyboardInterrupt
    ... except KeyboardInterrupt:
    ...     pass
    >>> with saved_state(path) as store:
    ...     store.all_keys()
    ['user:1']
    """
    state_file.parent.mkdir(parents=True, exist_ok=True)
    work = state_file.with_name(state_file.name + ".run")
    work.unlink(missing_ok=True)  # left by a run that did not end well
    if state_file.exists():
        check_state_file(state_file)
        shutil.copyfile(state_file, work)
    store = SnapshotStore(work)
    try:
        yield store
    except BaseException:
        store.abandon()
        work.unlink(missing_ok=True)
        raise
    store.close()


def input_digest(source: Path) -> str:
    """The SHA-256 of an input file's bytes (as stored: a ``.gz`` file's compressed bytes)."""
    digest = hashlib.sha256()
    with source.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def applied_before(state_file: Path, digest: str) -> str | None:
    """When the input of ``digest`` was applied to the saved state (ISO time), or None.
    (:func:`saved_state` checks the whole file when the run opens it.)"""
    if not state_file.exists():
        return None
    try:
        db = sqlite3.connect(f"file:{state_file}?mode=ro", uri=True)
        try:
            row = db.execute("SELECT data FROM shared WHERE name = 'inputs'").fetchone()
        finally:
            db.close()
    except sqlite3.DatabaseError as error:
        raise StateFileError(f"{state_file} is not a readable state file ({error})") from None
    return None if row is None else pickle.loads(row[0]).get(digest)


def promote_state(state_file: Path, digest: str | None = None) -> None:
    """Put the working copy of a run that ended well in place of ``state_file`` (no-op without
    one), once both the file and the rename are on disk; ``digest``: the input it applied."""
    work = state_file.with_name(state_file.name + ".run")
    if not work.exists():
        return
    if digest is not None:
        store = SnapshotStore(work)
        inputs = store.get_shared("inputs") or {}
        inputs[digest] = datetime.now(UTC).isoformat(timespec="seconds")
        store.put_shared("inputs", inputs)
        store.close()
    with work.open("rb+") as handle:
        os.fsync(handle.fileno())
    os.replace(work, state_file)
    directory = os.open(state_file.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


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
