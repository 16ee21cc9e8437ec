"""lambda(step): the weight of the distillation loss, 0 before its start, then constant or ramped."""
import tensorflow as tf

SCHEDULE_KINDS = ("constant", "linear", "sigmoid")


class LambdaSchedule:
    """lambda at a step: 0 before `start_step`, then `max` (constant), a linear ramp, or a sigmoid ramp."""

    def __init__(self, kind: str = "linear", max: float = 1.0, start_step: int = 0, ramp_steps: int = 1000):
        """
        Args:
          kind: constant, linear or sigmoid.
          max: the final value.
          start_step: lambda is 0 before this step.
          ramp_steps: linear / sigmoid: steps from start_step to (about) max; the sigmoid is centred in the middle
            of the ramp and reaches ~0.9933 * max at its end.
        """
        if kind not in SCHEDULE_KINDS:
            raise ValueError(f"kind must be one of {', '.join(SCHEDULE_KINDS)}, got {kind!r}")
        self.kind, self.max, self.start_step, self.ramp_steps = kind, max, start_step, ramp_steps

    def __call__(self, step: tf.Tensor) -> tf.Tensor:
        since = tf.cast(step, tf.float32) - float(self.start_step)
        ramp = float(max(self.ramp_steps, 1))
        if self.kind == "constant":
            value = tf.constant(self.max)
        elif self.kind == "linear":
            value = self.max * tf.clip_by_value(since / ramp, 0.0, 1.0)
        else:
            value = self.max * tf.sigmoid(10.0 * (since / ramp - 0.5))
        return tf.where(since >= 0.0, value, 0.0)
