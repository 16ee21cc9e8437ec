"""Numeric transform steps, shared by fitting (numpy) and the model (TensorFlow).

`log1p` is sign-preserving, sign(x) * log(1 + |x|), so negative values stay
finite. `zscore` and `minmax` use statistics fitted by `trainer.preprocessing.analyze`;
a zero spread leaves the centred value unscaled.
"""
import numpy as np
import tensorflow as tf

from trainer.spec.types import TransformStep

EPSILON = 1e-12


NORMALISERS = ("zscore", "minmax")


def steps_before_normalisation(steps: tuple[TransformStep, ...]) -> tuple[TransformStep, ...]:
    """The steps whose output the fitted statistics describe."""
    ops = [s.op for s in steps]
    return next((steps[:i] for i, op in enumerate(ops) if op in NORMALISERS), steps)


def apply_steps_np(x: np.ndarray, steps: tuple[TransformStep, ...]) -> np.ndarray:
    """Apply the `log1p` steps of `steps` (the ones fitted statistics are computed after)."""
    for step in steps:
        if step.op == "log1p":
            x = np.sign(x) * np.log1p(np.abs(x))
    return x


def apply_steps_tf(x: tf.Tensor, steps: tuple[TransformStep, ...], stats=None) -> tf.Tensor:
    """All steps but `bucketize` (done by the id lookup), in the graph."""
    for step in steps:
        if step.op == "log1p":
            x = tf.sign(x) * tf.math.log1p(tf.abs(x))
        elif step.op == "zscore":
            x = (x - stats.mean) / max(stats.std, EPSILON)
        elif step.op == "minmax":
            x = (x - stats.min) / max(stats.max - stats.min, EPSILON)
    return x
