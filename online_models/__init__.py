"""Online River models for churn and purchase propensity (engine-free: no Beam or Flink imports).

* :mod:`online_models.pipelines`: :func:`build_model` (pipelines chosen by name) and the
  :class:`OnlineModel` wrapper (River estimator contract, missing features dropped).
* :mod:`online_models.labels`: :class:`PendingLabels`, delayed labels in event time.
* :mod:`online_models.validation`: :class:`ProgressiveValidation` (rolling AUC, log loss, calibration).
* :mod:`online_models.snapshots`: :func:`dump_model` / :func:`load_model` (pickles signed with HMAC-SHA256) and
  :class:`ModelRegistry`.
* :mod:`online_models.scoring`: :class:`Models`, which ties them together for the per-customer step.
"""

from online_models.labels import DAY_MS, TASKS, Example, PendingLabels
from online_models.pipelines import MODELS, OnlineModel, build_model, clean_features
from online_models.scoring import Models, ModelSettings
from online_models.snapshots import DictStore, ModelRegistry, dump_model, load_model, read_header
from online_models.validation import ProgressiveValidation, roc_auc

__all__ = [
    "DAY_MS",
    "MODELS",
    "TASKS",
    "DictStore",
    "Example",
    "ModelRegistry",
    "ModelSettings",
    "Models",
    "OnlineModel",
    "PendingLabels",
    "ProgressiveValidation",
    "build_model",
    "clean_features",
    "dump_model",
    "load_model",
    "read_header",
    "roc_auc",
]
