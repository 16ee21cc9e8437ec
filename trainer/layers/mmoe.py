"""The fine-rank teacher: a multi-gate mixture of experts over every feature, and its fused ranking score.

n experts see the concatenation of all encoded features (cross and
privileged ones included, and with target attention each user history pooled
against the candidate); each task has a softmax gate over the experts and
its own tower ending in one output. `fused_score` turns the task predictions
into the ranking score the student learns from.
"""
import tensorflow as tf

from trainer.layers.mlp import MLP
from trainer.layers.target_attention import TargetAttention


class MMoE(tf.keras.layers.Layer):
    """Multi-gate mixture of experts: {field: [B, d]} -> {task: output [B]} (a logit, or a regression output).

    It owns one `TargetAttention` per attended field (`attention`); the model feeds them, since they need the
    raw histories, and passes their outputs among the fields.
    """

    def __init__(self, fields: list[str], tasks: list[str], experts: int = 4, expert_layers: list[int] = (256, 128),
                 task_tower: list[int] = (64,), dropout: float = 0.0, attention_fields: list[str] = (),
                 attention_hidden: int = 32, **kwargs):
        """
        Args:
          fields: the encoded fields every expert reads, in order.
          tasks: the task names; one gate and one tower each.
          experts: number of experts.
          expert_layers: layer sizes of each expert.
          task_tower: layer sizes of each task's tower above its gate (then one output unit).
          dropout: dropout rate after each expert layer, in training only.
          attention_fields: fields made by target attention (appended to `fields`).
          attention_hidden: hidden units of each target attention's scoring MLP.
        """
        super().__init__(**kwargs)
        self.input_fields, self.attention_fields = list(fields), list(attention_fields)
        self.fields, self.tasks = self.input_fields + self.attention_fields, list(tasks)
        self.num_experts, self.expert_layers, self.task_tower = experts, list(expert_layers), list(task_tower)
        self.dropout, self.attention_hidden = dropout, attention_hidden
        self.attention = [TargetAttention(attention_hidden, name=f"attention_{i}")
                          for i, _ in enumerate(self.attention_fields)]
        self.experts = [MLP(self.expert_layers, dropout=dropout, name=f"expert_{i}") for i in range(experts)]
        self.gates = {t: tf.keras.layers.Dense(experts, name=f"gate_{t}") for t in self.tasks}
        self.towers = {t: MLP(self.task_tower + [1], last_activation=None, name=f"tower_{t}") for t in self.tasks}

    def build(self, input_shape: dict) -> None:
        """Records each field's width (`input_shape`: field -> shape), which places it in the concatenation."""
        self.field_widths = {name: int(input_shape[name][-1]) for name in self.fields}
        super().build(input_shape)

    def gate_weights(self, task: str, x: tf.Tensor) -> tf.Tensor:
        """A task's softmax weights over the experts, [B, experts], for the concatenated fields x."""
        return tf.nn.softmax(self.gates[task](x), axis=-1)

    def call(self, encoded: dict[str, tf.Tensor], training: bool = False) -> dict[str, tf.Tensor]:
        """{task: output [B]}.

        Every expert's first layer and every gate read the same concatenated fields: once built, they are computed
        as one matmul over their kernels side by side (the same variables; fewer, larger products: 13-14% off the
        MMoE's forward and backward time on KuaiRand's 669 columns, `bench_training.py --parts dense`)."""
        x = tf.concat([encoded[name] for name in self.fields], axis=-1)
        first = [e.dense[0] for e in self.experts] + [self.gates[t] for t in self.tasks]
        if all(layer.built for layer in first):
            experts, gates = self._experts_and_gates(x, training)
        else:  # the first call builds them one by one (experts, then the gates, then the towers)
            experts = tf.stack([e(x, training=training) for e in self.experts], axis=1)  # [B, n, d]
            gates = [self.gates[t](x) for t in self.tasks]
        out = {}
        for t, gate in zip(self.tasks, gates):
            mixed = tf.reduce_sum(experts * tf.nn.softmax(gate, axis=-1)[:, :, None], axis=1)
            out[t] = tf.squeeze(self.towers[t](mixed), -1)
        return out

    def _experts_and_gates(self, x: tf.Tensor, training: bool) -> tuple[tf.Tensor, list[tf.Tensor]]:
        """The experts' outputs [B, n, d] and each task's gate logits [B, n], the experts' first layers and the gates
        computed as one matmul."""
        first = self._first_layers()
        kernel = tf.concat([layer.kernel for layer in first], axis=1)
        bias = tf.concat([layer.bias for layer in first], axis=0)
        parts = tf.split(tf.matmul(x, kernel) + bias, [layer.units for layer in first], axis=1)
        outputs = []
        for expert, h in zip(self.experts, parts):
            h = expert.dense[0].activation(h)
            for i, dense in enumerate(expert.dense):
                if i:
                    h = dense(h)
                if expert.drop:
                    h = expert.drop[i](h, training=training)
            outputs.append(h)
        return tf.stack(outputs, axis=1), parts[len(self.experts):]

    # ---- the first layer by parts: many candidates per user (`trainer.evaluation.scoring`) ----
    # Every expert's first dense layer and every gate is linear in the concatenated fields, so their
    # pre-activation is a sum of one term per field: a term that depends on the user alone can be computed once
    # per user, one of the item alone once per item. The sum of the parts equals `call`'s pre-activation up to
    # float rounding (the additions happen in another order).
    def _first_layers(self) -> list[tf.keras.layers.Dense]:
        return [e.dense[0] for e in self.experts] + [self.gates[t] for t in self.tasks]

    @property
    def first_layer_sizes(self) -> list[int]:
        """The units of every expert's first layer, then of every gate: the pieces of `first_layer_part`'s terms."""
        return [layer.units for layer in self._first_layers()]

    @property
    def first_layer_width(self) -> int:
        """The width of `first_layer_part`'s terms (the sum of `first_layer_sizes`)."""
        return sum(self.first_layer_sizes)

    def first_layer_part(self, encoded: dict[str, tf.Tensor]) -> tf.Tensor:
        """The term of the first layers' pre-activation [B, width] that the given fields (a subset of `fields`,
        with their encoded values) contribute, without biases: every expert's first layer, then every task's
        gate, side by side. Parts of disjoint subsets covering all fields add up to the whole
        (`outputs_from_first_layer` adds the biases)."""
        names = [n for n in self.fields if n in encoded]
        unknown = sorted(set(encoded) - set(self.fields))
        if unknown:
            raise ValueError(f"not fields of this MMoE: {unknown}")
        starts, offset = {}, 0
        for n in self.fields:
            starts[n], offset = offset, offset + self.field_widths[n]
        rows = tf.concat([tf.range(starts[n], starts[n] + self.field_widths[n]) for n in names], axis=0)
        kernel = tf.concat([layer.kernel for layer in self._first_layers()], axis=1)
        x = tf.concat([encoded[n] for n in names], axis=-1)
        return tf.matmul(x, tf.gather(kernel, rows))

    def outputs_from_first_layer(self, pre: tf.Tensor | list[tf.Tensor]) -> dict[str, tf.Tensor]:
        """{task: output [B]} from the first layers' summed pre-activation (`first_layer_part`): [B, width], or
        its pieces ([B, units] per layer, `first_layer_sizes`), as `call` (in inference: no dropout) computes
        them. Given in pieces, each layer's pre-activation can be assembled where it is used (under XLA: fused
        into its activation, never stored whole)."""
        parts = tf.split(pre, self.first_layer_sizes, axis=-1) if isinstance(pre, tf.Tensor) else list(pre)
        experts = []
        for expert, part in zip(self.experts, parts):
            x = expert.dense[0].activation(part + expert.dense[0].bias)
            for dense in expert.dense[1:]:
                x = dense(x)
            experts.append(x)
        stacked = tf.stack(experts, axis=1)  # [B, n, d]
        out = {}
        for t, part in zip(self.tasks, parts[len(self.experts):]):
            gate = tf.nn.softmax(self.gates[t].activation(part + self.gates[t].bias), axis=-1)
            out[t] = tf.squeeze(self.towers[t](tf.reduce_sum(stacked * gate[:, :, None], axis=1)), -1)
        return out

    def input_layout(self) -> list[tuple[str, int]]:
        """The fields every expert's first layer and every gate read concatenated, in order, with their widths."""
        return [(name, self.field_widths[name]) for name in self.fields]

    def part_input_kernels(self) -> dict[str, list[tf.Variable]]:
        """Per part (`parts`) the kernels whose rows follow `input_layout`: each expert's first layer, each gate."""
        parts = [f"experts/{i}" for i in range(len(self.experts))] + [f"gates/{t}" for t in self.tasks]
        return {part: [layer.kernel] for part, layer in zip(parts, self._first_layers())}

    def parts(self) -> dict[str, tf.keras.layers.Layer]:
        """Its parts by attribute path: each expert, each task's gate and tower, each attention block (what a warm
        start carries whole, or starts fresh, one by one)."""
        return {**{f"experts/{i}": expert for i, expert in enumerate(self.experts)},
                **{f"gates/{task}": gate for task, gate in self.gates.items()},
                **{f"towers/{task}": tower for task, tower in self.towers.items()},
                **{f"attention/{i}": block for i, block in enumerate(self.attention)}}

    def get_config(self) -> dict:
        return {**super().get_config(), "fields": self.input_fields, "tasks": self.tasks, "experts": self.num_experts,
                "expert_layers": self.expert_layers, "task_tower": self.task_tower, "dropout": self.dropout,
                "attention_fields": self.attention_fields, "attention_hidden": self.attention_hidden}


def fused_score(probabilities: dict[str, tf.Tensor], weights: dict[str, float], form: str) -> tf.Tensor:
    """Weighted mean of task probabilities ("weighted_sum"), or their weighted geometric product ("product");
    in (0, 1)."""
    total = sum(weights.values())
    if form == "product":
        return tf.exp(tf.add_n([w * tf.math.log(tf.maximum(probabilities[t], 1e-7)) for t, w in weights.items()]))
    return tf.add_n([w / total * probabilities[t] for t, w in weights.items()])
