"""Versioned model snapshots to Redis and model quality to the metrics, from an engine's worker.

Every ``models.publish_every`` learnt labels (and at the end of a run) each task's model goes to
Redis as a new numbered version (:class:`online_models.ModelRegistry`: ``{prefix}:model:{task}:v{n}``
and ``{prefix}:model:{task}:latest``), and its progressive-validation figures go to Prometheus and
the run summary. A job started with a Redis that holds snapshots of the same model continues from
the latest (:meth:`ModelPublisher.restore`), unless the engine restored its own checkpoint first.

Snapshots are pickles, signed (HMAC-SHA256, :mod:`online_models.snapshots`) with the model key:
``SEGSTREAM_MODEL_KEY``, or the file ``SEGSTREAM_MODEL_KEY_FILE`` names (:func:`model_key`, read
where the worker runs; never a command-line option). Without a key the job publishes no snapshot
(the figures still go to the metrics) and loads none. A snapshot that is forged, corrupt, unsigned
or signed with another key is refused before it is unpickled, with one log line, and the job
continues from fresh models.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

from online_models import ModelRegistry, Models, load_model
from pipelines.metrics import METRICS
from pipelines.redis_store import retrying, shared_client
from transforms.subscribers import read_secrets

KEY_ENV = "SEGSTREAM_MODEL_KEY"
KEY_FILE_ENV = "SEGSTREAM_MODEL_KEY_FILE"
MIN_KEY_BYTES = 16
LOG = logging.getLogger("segstream")


def model_key(env: Mapping[str, str] = os.environ) -> bytes | None:
    """The key model snapshots are signed and verified with: ``SEGSTREAM_MODEL_KEY``, or the file
    ``SEGSTREAM_MODEL_KEY_FILE`` names (one line; surrounding whitespace ignored); None when neither
    is set. ValueError (one line, never the key) when both are set, the file cannot be read or holds
    more than one line, or the key is shorter than ``MIN_KEY_BYTES``."""
    if KEY_ENV in env and KEY_FILE_ENV in env:
        raise ValueError(f"set {KEY_FILE_ENV} or {KEY_ENV}, not both")
    if KEY_FILE_ENV in env:
        path = env[KEY_FILE_ENV]
        if not path:
            raise ValueError(f"{KEY_FILE_ENV} is set but empty")
        lines = read_secrets(path, KEY_FILE_ENV)
        if len(lines) != 1:
            raise ValueError(f"{KEY_FILE_ENV}: {path} must hold one line, the key")
        key, where = lines[0].encode("utf-8"), KEY_FILE_ENV
    elif KEY_ENV in env:
        key, where = env[KEY_ENV].encode("utf-8"), KEY_ENV
    else:
        return None
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(f"{where}: the model key must be at least {MIN_KEY_BYTES} bytes (e.g. openssl rand -hex 32)")
    return key


class ModelPublisher:
    """Publishes one worker's models (no-op with the models off)."""

    def __init__(self, redis_url: str, prefix: str, models: Models | None) -> None:
        self.models = models
        self.registry = ModelRegistry(shared_client(redis_url), prefix, model_key())
        self.published_at = self._updates()
        self.warned: set[str] = set()  # tasks whose scores beyond the labels' silence were logged

    def _updates(self) -> int:
        return 0 if self.models is None else sum(model.n_updates for model in self.models.models.values())

    def maybe_publish(self) -> None:
        """Publish if ``publish_every`` labels were learnt since the last time."""
        if self.models is not None and self._updates() - self.published_at >= self.models.settings.publish_every:
            self.publish()

    def publish(self) -> None:
        """A new version of each task's model in Redis (with a model key); the figures to the metrics."""
        if self.models is None:
            return
        self.models.flush()
        if self.registry.mac_key:  # without a key no snapshot is published
            for task, model in self.models.models.items():  # a version twice after a retry: harmless
                retrying(lambda _, task=task, model=model: self.registry.publish(task, model), "publish a model")
        self.published_at = self._updates()
        summary = self.models.summary()
        METRICS.record_models(summary)
        for task, figures in summary.items():
            silence = figures["silence"]
            if figures["n_updates"] and silence["scored_beyond"] and task not in self.warned:
                self.warned.add(task)  # once per task: the metric and the summary keep the count
                LOG.warning(
                    "models: %d of %d %s scores were computed at a longer silence than the %.1f days its labels "
                    "covered; progressive validation cannot see them (they are held to the covered range)",
                    silence["scored_beyond"], silence["scored"], task, silence["covered_days"],
                )  # fmt: skip

    def follow(self, models: Models) -> None:
        """Publish ``models`` from now on (the engine restored them from its checkpoint)."""
        self.models = models
        self.published_at = self._updates()

    def restore(self) -> bool:
        """Continue from the latest snapshots in Redis if they are of this job's model and signed with
        its key; True if so. Without a key, or when a snapshot is refused (forged, corrupt, unsigned,
        another key or River version), one log line and False: the job continues from fresh models."""
        if self.models is None:
            return False
        if not self.registry.mac_key:
            LOG.warning(
                "model snapshots are not loaded without a key (%s or %s); continuing from fresh models",
                KEY_FILE_ENV,
                KEY_ENV,
            )
            return False
        restored = {}
        for task, model in self.models.models.items():
            where = self.registry.key(task)
            try:
                version = retrying(lambda _, task=task: self.registry.latest_version(task), "read the model version")
                if version is None:
                    return False
                where = self.registry.key(task, version)
                data = retrying(lambda _, key=where: self.registry.store.get(key), "read a model")
                snapshot = load_model(data, mac_key=self.registry.mac_key)
            except ValueError as error:  # the message never holds the snapshot's bytes
                LOG.warning("refused the model snapshot at %s: %s; continuing from fresh models", where, error)
                return False
            if (snapshot.name, snapshot.params) != (model.name, model.params):
                return False
            restored[task] = snapshot
        self.models.models.update(restored)
        self.published_at = self._updates()
        return True
