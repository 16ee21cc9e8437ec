"""The fine-rank teacher: multi-gate mixture of experts over every feature.

n experts see the concatenation of all encoded features (cross and
privileged ones included, and with target attention each user history pooled
against the candidate); each task has a softmax gate over the experts and
its own tower ending in one logit. `fused_score` turns the task predictions
into the ranking score the student learns from.
"""
import tensorflow as tf

from trainer.config import TeacherConfig
from trainer.spec import Label
from trainer.target_attention import TargetAttention
from trainer.towers import mlp


class MMoE(tf.keras.layers.Layer):
    def __init__(self, fields: list[str], tasks: list[str], config: TeacherConfig,
                 attention_fields: list[str] = (), **kwargs):
        super().__init__(**kwargs)
        self.fields, self.tasks = list(fields) + list(attention_fields), list(tasks)
        # one target attention per attended field; the caller feeds them (they need the raw history)
        self.attention = [TargetAttention(config.attention_hidden, name=f"attention_{i}")
                          for i, _ in enumerate(attention_fields)]
        self.experts = [mlp(config.expert_layers, name=f"expert_{i}", dropout=config.dropout)
                        for i in range(config.experts)]
        self.gates = {t: tf.keras.layers.Dense(config.experts, name=f"gate_{t}") for t in self.tasks}
        self.towers = {t: mlp(config.task_tower + [1], name=f"tower_{t}", last_activation=None) for t in self.tasks}

    def call(self, encoded: dict[str, tf.Tensor], training: bool = False) -> dict[str, tf.Tensor]:
        """{task: logit [B]}."""
        x = tf.concat([encoded[name] for name in self.fields], axis=-1)
        experts = tf.stack([e(x, training=training) for e in self.experts], axis=1)  # [B, n, d]
        out = {}
        for t in self.tasks:
            gate = tf.nn.softmax(self.gates[t](x), axis=-1)[:, :, None]
            out[t] = tf.squeeze(self.towers[t](tf.reduce_sum(experts * gate, axis=1)), -1)
        return out


def task_probability(label: Label, output: tf.Tensor, regression_loss: str) -> tf.Tensor:
    """A task's prediction as a score in [0, 1): binary -> p; regression -> t / (1 + t) of the predicted target t.

    With weighted logistic regression the odds exp(z) estimate t, so sigmoid(z) is exactly t / (1 + t).
    """
    if label.type == "binary" or regression_loss == "weighted_logistic":
        return tf.sigmoid(output)
    t = tf.nn.relu(output)
    return t / (1.0 + t)


def fused_score(probabilities: dict[str, tf.Tensor], weights: dict[str, float], form: str) -> tf.Tensor:
    """Weighted mean of task probabilities, or their weighted geometric product; in (0, 1)."""
    total = sum(weights.values())
    if form == "product":
        return tf.exp(tf.add_n([w * tf.math.log(tf.maximum(probabilities[t], 1e-7)) for t, w in weights.items()]))
    return tf.add_n([w / total * probabilities[t] for t, w in weights.items()])
