"""The teacher's per-task losses and predictions: binary tasks, and regression losses (registered in
`trainer.registry.REGRESSION_LOSSES`).

A regression loss sees the target after the spec's transform (e.g. log1p of
the watch time) and says three things about its output: the loss, the
predicted target (`estimate`, evaluated as RMSE) and a score in [0, 1) that
rises with the target (`probability`, what the fused score combines).
"""
import tensorflow as tf

from trainer.losses.weighted import weighted_mean
from trainer.registry import REGRESSION_LOSSES


@REGRESSION_LOSSES.register("mse")
class MSERegression:
    """Squared error of the output against the target; the probability is t / (1 + t) of t = relu(output)."""

    def loss(self, target: tf.Tensor, output: tf.Tensor, weights: tf.Tensor) -> tf.Tensor:
        return weighted_mean(tf.square(output - target), weights)

    def estimate(self, output: tf.Tensor) -> tf.Tensor:
        return output

    def probability(self, output: tf.Tensor) -> tf.Tensor:
        t = tf.nn.relu(output)
        return t / (1.0 + t)


@REGRESSION_LOSSES.register("weighted_logistic")
class WeightedLogisticRegression:
    """Logistic loss with the positive term weighted by the target and the negative term by 1: the odds exp(z)
    estimate the target, so sigmoid(z) is exactly t / (1 + t) of the estimate t."""

    def loss(self, target: tf.Tensor, output: tf.Tensor, weights: tf.Tensor) -> tf.Tensor:
        return weighted_mean(target * tf.nn.softplus(-output) + tf.nn.softplus(output), weights)

    def estimate(self, output: tf.Tensor) -> tf.Tensor:
        return tf.exp(output)

    def probability(self, output: tf.Tensor) -> tf.Tensor:
        return tf.sigmoid(output)
