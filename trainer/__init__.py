"""prerank trainer: spec, input pipeline, features, models and the training job.

Importing this package selects legacy Keras (tf_keras) for TensorFlow, which
tensorflow-recommenders requires. It must happen before TensorFlow first
resolves ``tf.keras``.
"""
from trainer._keras_env import ensure_legacy_keras

ensure_legacy_keras()
