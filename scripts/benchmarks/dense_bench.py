"""The teacher's dense part alone, in variants (`scripts/bench_training.py --parts dense`): does XLA or one matmul
for all experts' first layers and gates help on this CPU?

The MMoE layer of prerank (`trainer.layers.mmoe.MMoE`, the shipped shape: 4 experts [256, 128], towers [64], the
KuaiRand spec's four tasks) on random fields of the spec's widths; one timed call is the forward pass and the
gradients of every variable and input. Variants: the layer as it is; its experts' first layers and its gates as one
matmul over their concatenated kernels (the same variables); each of the two compiled with XLA
(`jit_compile=True`). Interleaved call by call after warm-up; medians and fastest calls.
"""
import statistics
import time

import tensorflow as tf

from trainer.layers.mmoe import MMoE


def one_matmul_call(layer: MMoE, encoded: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    """`layer`'s forward pass with the experts' first layers and the gates in one matmul."""
    x = tf.concat([encoded[name] for name in layer.fields], axis=-1)
    first, gates = [e.dense[0] for e in layer.experts], [layer.gates[t] for t in layer.tasks]
    h = tf.matmul(x, tf.concat([d.kernel for d in first + gates], 1)) + tf.concat([d.bias for d in first + gates], 0)
    parts = tf.split(h, [d.units for d in first + gates], axis=1)
    experts = []
    for expert, part in zip(layer.experts, parts):
        part = tf.nn.relu(part)
        for dense in expert.dense[1:]:
            part = dense(part)
        experts.append(part)
    stacked = tf.stack(experts, axis=1)
    return {t: tf.squeeze(layer.towers[t](tf.reduce_sum(stacked * tf.nn.softmax(g, -1)[:, :, None], axis=1)), -1)
            for t, g in zip(layer.tasks, parts[len(first):])}


def dense_variants(widths: dict[str, int], tasks: list[str], batch: int, rounds: int) -> dict[str, tuple[float, float]]:
    """{variant: (median ms, fastest ms)} of forward + gradients of the MMoE over fields of `widths`."""
    tf.random.set_seed(0)
    encoded = {name: tf.random.normal([batch, width]) for name, width in widths.items()}
    layer = MMoE(list(widths), tasks, experts=4, expert_layers=[256, 128], task_tower=[64])
    layer(encoded)

    def compiled(forward, jit: bool):
        @tf.function(jit_compile=jit)
        def call(inputs):
            with tf.GradientTape() as tape:
                tape.watch(list(inputs.values()))
                loss = tf.add_n([tf.reduce_sum(v) for v in forward(inputs).values()])
            return tape.gradient(loss, layer.trainable_variables + list(inputs.values()))
        return call

    variants = {"MMoE as built": compiled(layer, False),
                "experts' first layers + gates in one matmul": compiled(lambda e: one_matmul_call(layer, e), False),
                "MMoE as built, XLA": compiled(layer, True),
                "one matmul, XLA": compiled(lambda e: one_matmul_call(layer, e), True)}
    times: dict[str, list[float]] = {name: [] for name in variants}
    for call in variants.values():
        for _ in range(3):
            call(encoded)
    for _ in range(rounds):
        for name, call in variants.items():
            start = time.perf_counter()
            call(encoded)[0].numpy()
            times[name].append(time.perf_counter() - start)
    return {name: (statistics.median(t) * 1e3, min(t) * 1e3) for name, t in times.items()}
