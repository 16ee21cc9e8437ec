"""The student's towers: feature fields -> one vector per side.

A tower side takes the encoded fields of its features ({name: [B, d]}),
optionally re-weights them with a squeeze-excitation block (SENet), and runs
one or more parallel towers (MLP, DCN cross layers, FM) whose outputs are
fused with learned softmax weights. Nothing in a side sees the other side, so
item vectors can be computed without the user.
"""
import tensorflow as tf
import tensorflow_recommenders as tfrs

from trainer.config import StudentConfig


def mlp(sizes: list[int], name: str, last_activation: str | None = "relu", dropout: float = 0.0) -> tf.keras.Sequential:
    """Dense layers of `sizes`; ReLU between them, `last_activation` after the last one; with `dropout`, a
    dropout layer after each layer (active in training only)."""
    layers = []
    for i, n in enumerate(sizes):
        layers.append(tf.keras.layers.Dense(n, activation="relu" if i < len(sizes) - 1 else last_activation))
        if dropout > 0:
            layers.append(tf.keras.layers.Dropout(dropout))
    return tf.keras.Sequential(layers, name=name)


class SENet(tf.keras.layers.Layer):
    """Squeeze (mean of each field) -> excite (bottleneck MLP, sigmoid) -> scale each field by its weight."""

    def __init__(self, fields: int, reduction: int, **kwargs):
        super().__init__(**kwargs)
        hidden = max(1, fields // max(reduction, 1))
        self.excite = tf.keras.Sequential([tf.keras.layers.Dense(hidden, activation="relu"),
                                           tf.keras.layers.Dense(fields, activation="sigmoid")])

    def call(self, fields: list[tf.Tensor]) -> list[tf.Tensor]:
        squeezed = tf.concat([tf.reduce_mean(f, axis=-1, keepdims=True) for f in fields], axis=-1)
        weights = self.excite(squeezed) * 2.0  # starts near 1: a field keeps its scale until learned otherwise
        return [f * weights[:, i:i + 1] for i, f in enumerate(fields)]


class DCNTower(tf.keras.layers.Layer):
    """Cross layers (explicit feature crosses) over the concatenated fields, projected to the vector size."""

    def __init__(self, layers: int, out_dim: int, **kwargs):
        super().__init__(**kwargs)
        self.crosses = [tfrs.layers.dcn.Cross() for _ in range(layers)]
        self.out = tf.keras.layers.Dense(out_dim)

    def call(self, x: tf.Tensor) -> tf.Tensor:
        x0 = x
        for cross in self.crosses:
            x = cross(x0, x)
        return self.out(x)


class FMTower(tf.keras.layers.Layer):
    """Factorisation machine: each field projected to k factors; the pairwise interaction vector, projected."""

    def __init__(self, fields: int, factors: int, out_dim: int, **kwargs):
        super().__init__(**kwargs)
        self.projections = [tf.keras.layers.Dense(factors, use_bias=False) for _ in range(fields)]
        self.out = tf.keras.layers.Dense(out_dim)

    def call(self, fields: list[tf.Tensor]) -> tf.Tensor:
        if len(fields) != len(self.projections):
            raise ValueError(f"FM tower built for {len(self.projections)} fields, called with {len(fields)}")
        v = tf.stack([p(f) for p, f in zip(self.projections, fields)], axis=1)  # [B, fields, k]
        interaction = 0.5 * (tf.square(tf.reduce_sum(v, axis=1)) - tf.reduce_sum(tf.square(v), axis=1))
        return self.out(interaction)


class Tower(tf.keras.layers.Layer):
    """One side of the student: fields -> [B, sizes[-1]] vector."""

    def __init__(self, fields: list[str], sizes: list[int], config: StudentConfig, **kwargs):
        super().__init__(**kwargs)
        self.fields = list(fields)
        out_dim = sizes[-1]
        # a dual augmented vector joins the fields as one more field (the FM tower projects each field)
        n_fields = len(fields) + (1 if config.dual_augmented.enabled else 0)
        self.senet = SENet(len(fields), config.senet.reduction, name="senet") if config.senet.enabled else None
        self.kinds = list(config.towers)
        self.towers = []
        for kind in self.kinds:
            if kind == "mlp":
                self.towers.append(mlp(sizes, name="mlp", last_activation=None))
            elif kind == "dcn":
                self.towers.append(DCNTower(config.dcn_layers, out_dim, name="dcn"))
            else:
                self.towers.append(FMTower(n_fields, config.fm_dim, out_dim, name="fm"))
        self.fusion = self.add_weight(name="fusion_logits", shape=(len(self.kinds),), initializer="zeros") \
            if len(self.kinds) > 1 else None

    def call(self, encoded: dict[str, tf.Tensor], extra: tf.Tensor | None = None) -> tf.Tensor:
        """`extra` ([B, d], e.g. a dual augmented vector) joins the fields after the SENet re-weighting."""
        fields = [encoded[name] for name in self.fields]
        if self.senet is not None:
            fields = self.senet(fields)
        if extra is not None:
            fields = fields + [extra]
        x = tf.concat(fields, axis=-1)
        outputs = [t(fields) if kind == "fm" else t(x) for kind, t in zip(self.kinds, self.towers)]
        if self.fusion is None:
            return outputs[0]
        weights = tf.nn.softmax(self.fusion)
        return tf.add_n([weights[i] * o for i, o in enumerate(outputs)])
