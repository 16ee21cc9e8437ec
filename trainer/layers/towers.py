"""The student's towers: one side's feature fields -> one vector.

A `Tower` (one side of the two-tower student) takes the encoded fields of its
features ({name: [B, d]}), optionally re-weights them with SENet, and runs one
or more parallel towers from the `trainer.registry.TOWERS` registry, whose
outputs are fused with learned softmax weights. Nothing in a side sees the
other side, so item vectors can be computed without the user.

Built-in towers (each called with the list of fields, returning [B, out_dim]):
mlp (dense layers over the concatenated fields), dcn (cross layers,
`tfrs.layers.dcn.Cross`, then a projection), fm (a factorisation machine's
pairwise interaction vector, projected).
"""
import tensorflow as tf
import tensorflow_recommenders as tfrs

from trainer.layers.mlp import MLP
from trainer.layers.senet import SENet
from trainer.registry import TOWERS


@TOWERS.register("mlp")
class MLPTower(tf.keras.layers.Layer):
    """Dense layers of `sizes` over the concatenated fields (the last linear: it is the vector)."""

    def __init__(self, num_fields: int, out_dim: int, sizes: list[int], **kwargs):
        """
        Args:
          num_fields: fields it is called with.
          out_dim: the vector size (= sizes[-1]).
          sizes: the dense layers' units.
        """
        super().__init__(**kwargs)
        self.num_fields, self.out_dim, self.sizes = num_fields, out_dim, list(sizes)
        self.mlp = MLP(self.sizes, last_activation=None, name="mlp")

    def call(self, fields: list[tf.Tensor]) -> tf.Tensor:
        return self.mlp(tf.concat(fields, axis=-1))

    @property
    def input_kernel(self) -> tf.Variable:
        """The kernel whose rows are the concatenated fields' columns, in order (a warm start matches them by
        field)."""
        return self.mlp.dense[0].kernel

    def get_config(self) -> dict:
        return {**super().get_config(), "num_fields": self.num_fields, "out_dim": self.out_dim, "sizes": self.sizes}


@TOWERS.register("dcn")
class DCNTower(tf.keras.layers.Layer):
    """Cross layers (explicit feature crosses) over the concatenated fields, projected to the vector size."""

    def __init__(self, num_fields: int, out_dim: int, sizes: list[int] = (), layers: int = 2, **kwargs):
        """
        Args:
          num_fields: fields it is called with.
          out_dim: the vector size.
          sizes: the side's layer sizes (unused: the cross layers keep the input's width).
          layers: number of cross layers (model.student.dcn_layers).
        """
        super().__init__(**kwargs)
        self.num_fields, self.out_dim, self.layers = num_fields, out_dim, layers
        self.crosses = [tfrs.layers.dcn.Cross() for _ in range(layers)]
        self.out = tf.keras.layers.Dense(out_dim)

    def call(self, fields: list[tf.Tensor]) -> tf.Tensor:
        x0 = x = tf.concat(fields, axis=-1)
        for cross in self.crosses:
            x = cross(x0, x)
        return self.out(x)

    def get_config(self) -> dict:
        return {**super().get_config(), "num_fields": self.num_fields, "out_dim": self.out_dim, "layers": self.layers}


@TOWERS.register("fm")
class FMTower(tf.keras.layers.Layer):
    """Factorisation machine: each field projected to k factors; the pairwise interaction vector
    0.5 * ((sum_i v_i)^2 - sum_i v_i^2) = sum_{i<j} v_i * v_j, projected to the vector size."""

    def __init__(self, num_fields: int, out_dim: int, sizes: list[int] = (), factors: int = 16, **kwargs):
        """
        Args:
          num_fields: fields it is called with (one projection each).
          out_dim: the vector size.
          sizes: the side's layer sizes (unused).
          factors: factor size k (model.student.fm_dim).
        """
        super().__init__(**kwargs)
        self.num_fields, self.out_dim, self.factors = num_fields, out_dim, factors
        self.projections = [tf.keras.layers.Dense(factors, use_bias=False) for _ in range(num_fields)]
        self.out = tf.keras.layers.Dense(out_dim)

    def interaction(self, fields: list[tf.Tensor]) -> tf.Tensor:
        """The pairwise interaction vector [B, factors]."""
        if len(fields) != len(self.projections):
            raise ValueError(f"FM tower built for {len(self.projections)} fields, called with {len(fields)}")
        v = tf.stack([p(f) for p, f in zip(self.projections, fields)], axis=1)  # [B, fields, k]
        return 0.5 * (tf.square(tf.reduce_sum(v, axis=1)) - tf.reduce_sum(tf.square(v), axis=1))

    def call(self, fields: list[tf.Tensor]) -> tf.Tensor:
        return self.out(self.interaction(fields))

    def get_config(self) -> dict:
        return {**super().get_config(), "num_fields": self.num_fields, "out_dim": self.out_dim,
                "factors": self.factors}


class Tower(tf.keras.layers.Layer):
    """One side of the student: its encoded fields -> a [B, sizes[-1]] vector, from registered towers."""

    def __init__(self, fields: list[str], sizes: list[int], towers: list[dict], senet_reduction: int | None = None,
                 extra_fields: int = 0, **kwargs):
        """
        Args:
          fields: the names of the side's encoded fields, in order.
          sizes: the side's layer sizes; the last is the vector size.
          towers: the parallel towers, each {"name": a `trainer.registry.TOWERS` key, "params": its keyword
            arguments}; several are fused with learned softmax weights.
          senet_reduction: re-weight the fields with SENet of this reduction (None: no SENet).
          extra_fields: fields passed to `call` beside the encoded ones (a dual augmented vector: 1).
        """
        super().__init__(**kwargs)
        self.fields, self.sizes = list(fields), list(sizes)
        self.tower_specs = [{"name": t["name"], "params": dict(t.get("params") or {})} for t in towers]
        self.senet_reduction, self.extra_fields = senet_reduction, extra_fields
        self.senet = SENet(len(fields), senet_reduction, name="senet") if senet_reduction else None
        n_fields = len(fields) + extra_fields
        self.towers = [TOWERS.factory(t["name"])(num_fields=n_fields, out_dim=self.sizes[-1], sizes=self.sizes,
                                                 name=t["name"], **t["params"])
                       for t in self.tower_specs]
        self.fusion = self.add_weight(name="fusion_logits", shape=(len(self.towers),), initializer="zeros") \
            if len(self.towers) > 1 else None

    def call(self, encoded: dict[str, tf.Tensor], extra: tf.Tensor | None = None) -> tf.Tensor:
        """`extra` ([B, d], e.g. a dual augmented vector) joins the fields after the SENet re-weighting."""
        fields = [encoded[name] for name in self.fields]
        widths = [int(f.shape[-1]) for f in fields] + ([int(extra.shape[-1])] if extra is not None else [])
        object.__setattr__(self, "field_widths", widths)  # a plain attribute: Keras would track a list (checkpoints)
        if self.senet is not None:
            fields = self.senet(fields)
        if extra is not None:
            fields = fields + [extra]
        outputs = [tower(fields) for tower in self.towers]
        if self.fusion is None:
            return outputs[0]
        weights = tf.nn.softmax(self.fusion)
        return tf.add_n([weights[i] * o for i, o in enumerate(outputs)])

    def input_layout(self) -> list[tuple[str, int]] | None:
        """The fields its towers read concatenated, in order, with their widths ("augmented vector" for `extra`),
        once called; None before."""
        widths = getattr(self, "field_widths", None)
        if widths is None:
            return None
        names = self.fields + ["augmented vector"] * self.extra_fields
        return list(zip(names, widths))

    def input_kernels(self) -> list[tf.Variable]:
        """The kernels whose rows follow `input_layout` (towers reading the concatenated fields: mlp)."""
        return [t.input_kernel for t in self.towers if hasattr(t, "input_kernel")]

    def get_config(self) -> dict:
        towers = [{"name": t["name"], "params": dict(t["params"].items())} for t in self.tower_specs]  # unwrapped
        return {**super().get_config(), "fields": self.fields, "sizes": self.sizes, "towers": towers,
                "senet_reduction": self.senet_reduction, "extra_fields": self.extra_fields}
