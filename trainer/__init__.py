"""prerank trainer: spec, data, preprocessing, layers, models, training and evaluation, and a Python API.

    import trainer
    spec = trainer.load_spec("feature_specs/kuairand.yaml")
    config = trainer.load_config(spec)                      # or trainer.Config(...) built in Python
    result = trainer.train(spec, config, "runs/kuairand")   # -> trainer.TrainResult
    metrics = trainer.evaluate(spec, "runs/kuairand")

Importing this package selects legacy Keras (tf_keras) for TensorFlow, which
tensorflow-recommenders requires; it must happen before TensorFlow first
resolves ``tf.keras``. It imports nothing else: the API names below load their
modules on first use, so `trainer.spec` and `trainer.config` stay free of
TensorFlow (and `prerank validate` instant).
"""
import importlib

from trainer.keras_env import ensure_legacy_keras

ensure_legacy_keras()

_API = {  # name -> module that defines it
    "load_spec": "trainer.spec", "Spec": "trainer.spec",
    "load_config": "trainer.config", "validate_config": "trainer.config", "Config": "trainer.config",
    "Component": "trainer.config", "ModelConfig": "trainer.config", "StudentConfig": "trainer.config",
    "TeacherConfig": "trainer.config", "DistillConfig": "trainer.config", "TrainingConfig": "trainer.config",
    "train": "trainer.api", "evaluate": "trainer.api", "TrainResult": "trainer.api",
    "TOWERS": "trainer.registry", "SIMILARITIES": "trainer.registry", "DISTILLATION_LOSSES": "trainer.registry",
    "REGRESSION_LOSSES": "trainer.registry",
}
__all__ = sorted(_API)


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'trainer' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
