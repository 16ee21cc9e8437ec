"""`import trainer` must bind tf.keras to legacy Keras (tf_keras), or fail clearly.

Each scenario needs a fresh interpreter (TensorFlow binds tf.keras once per
process), so the three scenarios run as subprocesses, started together to keep
the TensorFlow import cost (~5-9 s each) paid only once in wall time.
"""
import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # three fresh interpreters importing TensorFlow

_SCENARIOS = {
    # (a) prerank first, then TensorFlow.
    "trainer_first": """
import trainer
import tensorflow as tf
result = {"keras": tf.keras.__name__, "env": os.environ.get("TF_USE_LEGACY_KERAS")}
""",
    # (b) TensorFlow first, tf.keras already resolved (to Keras 3), then prerank.
    "keras3_bound_first": """
import tensorflow as tf
tf.keras.Sequential
result = {"keras_before": tf.keras.__name__}
try:
    import trainer
    result["error"] = None
except Exception as exc:
    result["error"] = {"module": type(exc).__module__, "name": type(exc).__name__,
                       "is_import_error": isinstance(exc, ImportError), "message": str(exc)}
""",
    # (c) TensorFlow imported first but tf.keras untouched, then prerank.
    "tensorflow_first_untouched": """
import tensorflow as tf
import trainer
result = {"keras": tf.keras.__name__, "sequential": tf.keras.Sequential.__module__,
          "env": os.environ.get("TF_USE_LEGACY_KERAS")}
""",
}


def _child_env() -> dict[str, str]:
    """The test process imported trainer (which sets TF_USE_LEGACY_KERAS); children must not inherit it."""
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    return env


@pytest.fixture(scope="module")
def results() -> dict[str, dict]:
    procs = {
        name: subprocess.Popen(
            [sys.executable, "-c", "import json, os\n" + body + "\nprint('RESULT=' + json.dumps(result))"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_child_env())
        for name, body in _SCENARIOS.items()
    }
    out: dict[str, dict] = {}
    for name, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=180)
        assert proc.returncode == 0, f"{name} failed:\n{stderr[-3000:]}"
        line = next(l for l in stdout.splitlines() if l.startswith("RESULT="))
        out[name] = json.loads(line[len("RESULT="):])
    return out


def test_importing_trainer_first_selects_tf_keras(results):
    r = results["trainer_first"]
    assert r["keras"].startswith("tf_keras"), r
    assert r["env"] == "1"


def test_keras3_already_bound_raises_keras_version_error(results):
    r = results["keras3_bound_first"]
    # Precondition: without the variable, TensorFlow really did bind Keras 3.
    assert not r["keras_before"].startswith("tf_keras"), r
    err = r["error"]
    assert err is not None, "import trainer should refuse a Keras 3 bound tf.keras"
    assert (err["module"], err["name"]) == ("trainer.keras_env", "KerasVersionError")
    assert err["is_import_error"]
    message = err["message"]
    assert "TF_USE_LEGACY_KERAS=1" in message
    assert "before TensorFlow" in message  # says what to do: import prerank first
    assert r["keras_before"] in message  # and what it found


def test_tensorflow_imported_first_but_keras_untouched_still_gets_tf_keras(results):
    r = results["tensorflow_first_untouched"]
    assert r["keras"].startswith("tf_keras"), r
    assert r["sequential"].startswith("tf_keras"), r
    assert r["env"] == "1"
