"""Versioned model snapshots to Redis and model quality to the metrics, from an engine's worker.

Every ``models.publish_every`` learnt labels (and at the end of a run) each task's model goes to
Redis as a new numbered version (:class:`online_models.ModelRegistry`: ``{prefix}:model:{task}:v{n}``
and ``{prefix}:model:{task}:latest``), and its progressive-validation figures go to Prometheus and
the run summary. A job started with a Redis that holds snapshots of the same model continues from
the latest (:meth:`ModelPublisher.restore`), unless the engine restored its own checkpoint first.
"""

from __future__ import annotations

from online_models import ModelRegistry, Models, load_model
from pipelines.metrics import METRICS
from pipelines.redis_store import retrying, shared_client


class ModelPublisher:
    """Publishes one worker's models (no-op with the models off)."""

    def __init__(self, redis_url: str, prefix: str, models: Models | None) -> None:
        self.models = models
        self.registry = ModelRegistry(shared_client(redis_url), prefix)
        self.published_at = self._updates()

    def _updates(self) -> int:
        return 0 if self.models is None else sum(model.n_updates for model in self.models.models.values())

    def maybe_publish(self) -> None:
        """Publish if ``publish_every`` labels were learnt since the last time."""
        if self.models is not None and self._updates() - self.published_at >= self.models.settings.publish_every:
            self.publish()

    def publish(self) -> None:
        """A new version of each task's model in Redis; the figures to the metrics."""
        if self.models is None:
            return
        self.models.flush()
        for task, model in self.models.models.items():  # a version twice after a retry: harmless
            retrying(lambda _, task=task, model=model: self.registry.publish(task, model), "publish a model")
        self.published_at = self._updates()
        METRICS.record_models(self.models.summary())

    def follow(self, models: Models) -> None:
        """Publish ``models`` from now on (the engine restored them from its checkpoint)."""
        self.models = models
        self.published_at = self._updates()

    def restore(self) -> bool:
        """Continue from the latest snapshots in Redis if they are of this job's model; True if so."""
        if self.models is None:
            return False
        restored = {}
        for task, model in self.models.models.items():
            version = retrying(lambda _, task=task: self.registry.latest_version(task), "read the model version")
            if version is None:
                return False
            key = self.registry.key(task, version)
            data = retrying(lambda _, key=key: self.registry.store.get(key), "read a model")
            snapshot = load_model(data)
            if (snapshot.name, snapshot.params) != (model.name, model.params):
                return False
            restored[task] = snapshot
        self.models.models.update(restored)
        self.published_at = self._updates()
        return True
