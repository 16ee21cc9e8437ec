"""Select legacy Keras (tf_keras) before TensorFlow resolves ``tf.keras``."""
import os
import sys


class KerasVersionError(ImportError):
    """TensorFlow was already bound to Keras 3 before prerank was imported."""


def ensure_legacy_keras() -> None:
    """Set ``TF_USE_LEGACY_KERAS=1``; fail clearly if Keras 3 is already bound."""
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    tf = sys.modules.get("tensorflow")
    if tf is None:
        return
    keras_module = tf.keras.__name__  # resolves tf.keras now, with the variable set
    if not keras_module.startswith("tf_keras"):
        raise KerasVersionError(
            "prerank needs legacy Keras (tf_keras), but TensorFlow was imported and "
            f"bound tf.keras to Keras 3 ({keras_module}) before prerank was imported. "
            "Import prerank (trainer or serving) before TensorFlow, or export "
            "TF_USE_LEGACY_KERAS=1 in the environment before starting Python."
        )
