"""The layers and losses one at a time, against hand-computed or brute-force values (milliseconds each), and
the get_config round trip of every layer that has one.

A round trip builds `cls.from_config(layer.get_config())`: the config holds plain (JSON) values, the clone's
config equals the original's, and with the original's weights (randomised first, so that copying them
matters) it gives the same output on the same input. FeatureEncoder has no get_config (its docstring says
why) and is not tested here.
"""
import trainer  # noqa: F401  (legacy Keras before TensorFlow)

import json

import numpy as np
import pytest
import tensorflow as tf

from trainer.layers.embedding import EmbeddingTable
from trainer.layers.encoder import IdLookup
from trainer.layers.mlp import MLP
from trainer.layers.mmoe import MMoE, fused_score
from trainer.layers.pooling import pool
from trainer.layers.senet import SENet
from trainer.layers.similarity import CosineSimilarity, DotSimilarity, MultiHeadSimilarity
from trainer.layers.target_attention import TargetAttention
from trainer.layers.towers import DCNTower, FMTower, MLPTower, Tower
from trainer.losses.distillation import (CrossEntropyDistillation, MSEDistillation, PairwiseDistillation,
                                         distillation_loss, logit)
from trainer.losses.schedules import LambdaSchedule
from trainer.losses.tasks import MSERegression, WeightedLogisticRegression


def _normal(shape, seed: int) -> tf.Tensor:
    return tf.random.stateless_normal(shape, [seed, 0])


def _sigmoid(x):
    return 1 / (1 + np.exp(-np.asarray(x, np.float64)))


def _softplus(x):
    return np.log1p(np.exp(np.asarray(x, np.float64)))


# ---- towers ------------------------------------------------------------------------------------------

def test_fm_interaction_is_the_sum_over_field_pairs():
    dims = (3, 5, 2, 4)
    fields = [_normal([6, d], i) for i, d in enumerate(dims)]
    tower = FMTower(num_fields=len(dims), out_dim=7, factors=5)
    got = tower(fields).numpy()
    v = [f.numpy() @ p.kernel.numpy() for f, p in zip(fields, tower.projections)]  # each field's factors
    pairs = sum(v[i] * v[j] for i in range(len(v)) for j in range(i + 1, len(v)))
    np.testing.assert_allclose(tower.interaction(fields), pairs, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got, pairs @ tower.out.kernel.numpy() + tower.out.bias.numpy(), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="built for 4 fields, called with 3"):
        tower.interaction(fields[:3])


def test_tower_fuses_its_towers_with_softmax_weights():
    encoded = {"a": _normal([5, 3], 1), "b": _normal([5, 4], 2), "c": _normal([5, 2], 3)}
    towers = [{"name": "mlp"}, {"name": "dcn", "params": {"layers": 1}}, {"name": "fm", "params": {"factors": 3}}]
    tower = Tower(["a", "b", "c"], [6, 4], towers)
    tower(encoded)
    assert [type(t) for t in tower.towers] == [MLPTower, DCNTower, FMTower]
    tower.fusion.assign([0.5, -1.0, 2.0])
    fields = [encoded[n] for n in ("a", "b", "c")]
    outputs = [t(fields).numpy() for t in tower.towers]
    weights = np.exp([0.5, -1.0, 2.0]) / np.exp([0.5, -1.0, 2.0]).sum()
    np.testing.assert_allclose(tower(encoded), sum(w * o for w, o in zip(weights, outputs)), rtol=1e-5, atol=1e-6)
    single = Tower(["a", "b"], [6, 4], [{"name": "mlp"}])  # one tower: its output, no fusion weight
    out = single(encoded)
    assert single.fusion is None and out.shape == (5, 4)
    np.testing.assert_allclose(out, single.towers[0]([encoded["a"], encoded["b"]]), rtol=1e-6)


def test_senet_weights_are_in_0_2_and_scale_each_field():
    fields = [_normal([5, d], i) for i, d in enumerate((3, 4, 2, 6))]
    senet = SENet(4, reduction=2)
    out = senet(fields)
    weights = senet.field_weights(fields).numpy()
    assert weights.shape == (5, 4) and np.all(weights > 0) and np.all(weights < 2)
    for i, (field, scaled) in enumerate(zip(fields, out)):
        np.testing.assert_allclose(scaled, field.numpy() * weights[:, i:i + 1], rtol=1e-6)
    # brute force: 2 * sigmoid(relu(squeezed W1 + b1) W2 + b2) of the fields' means
    squeezed = np.stack([f.numpy().mean(axis=-1) for f in fields], axis=-1)
    (w1, b1), (w2, b2) = [(d.kernel.numpy(), d.bias.numpy()) for d in senet.excite.layers]
    np.testing.assert_allclose(weights, 2 * _sigmoid(np.maximum(squeezed @ w1 + b1, 0) @ w2 + b2), rtol=1e-5)


# ---- similarity --------------------------------------------------------------------------------------

def test_multi_head_similarity_is_the_dot_product_at_initialisation():
    u, v = _normal([6, 8], 1), _normal([6, 8], 2)
    multi, dot = MultiHeadSimilarity(8, heads=4), DotSimilarity(8)
    multi.bias.assign(0.3)
    dot.bias.assign(0.3)
    np.testing.assert_allclose(multi.head_weights(u), np.ones([6, 4]), rtol=1e-6)  # a uniform attention
    np.testing.assert_allclose(multi(u, v), dot(u, v), rtol=1e-5)
    np.testing.assert_allclose(dot(u, v), np.sum(u.numpy() * v.numpy(), axis=-1) + 0.3, rtol=1e-5)


def test_multi_head_similarity_weighs_each_heads_dot_product():
    u, v = _normal([6, 8], 3), _normal([6, 8], 4)
    multi = MultiHeadSimilarity(8, heads=4)
    multi(u, v)
    multi.attention.set_weights([_normal([8, 4], 5).numpy(), np.array([0.1, -0.2, 0.3, 0.0], np.float32)])
    multi.bias.assign(-0.4)
    weights = multi.head_weights(u).numpy()
    np.testing.assert_allclose(weights.sum(axis=-1), 4.0, rtol=1e-5)
    assert np.abs(weights - 1).max() > 0.1  # not uniform any more
    heads = (u.numpy() * v.numpy()).reshape(6, 4, 2).sum(axis=-1)  # u_h . v_h
    np.testing.assert_allclose(multi(u, v), (weights * heads).sum(axis=-1) - 0.4, rtol=1e-5, atol=1e-6)
    # the item side is untouched: one user against every item is the same logit
    item = multi.item_vector(v)
    np.testing.assert_array_equal(item, v)
    np.testing.assert_allclose(multi.logit(multi.user_vector(u[:1]), item), multi(tf.repeat(u[:1], 6, 0), v),
                               rtol=1e-5)
    with pytest.raises(ValueError, match="divide into 3 heads"):
        MultiHeadSimilarity(8, heads=3)


def test_cosine_similarity_vectors_and_logit():
    u, v = _normal([5, 6], 1) * 3.0, _normal([5, 6], 2)
    layer = CosineSimilarity(6, temperature=0.2)
    layer.bias.assign(-0.5)
    user, item = layer.user_vector(u).numpy(), layer.item_vector(v).numpy()
    np.testing.assert_allclose(np.linalg.norm(user, axis=-1), 1 / 0.2, rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(item, axis=-1), 1.0, rtol=1e-5)
    un, vn = u.numpy(), v.numpy()
    cos = np.sum(un * vn, axis=-1) / (np.linalg.norm(un, axis=-1) * np.linalg.norm(vn, axis=-1))
    np.testing.assert_allclose(layer(u, v), cos / 0.2 - 0.5, rtol=1e-5, atol=1e-5)
    # one user [1, d] against N items [N, d]
    cos_0 = vn @ un[0] / (np.linalg.norm(vn, axis=-1) * np.linalg.norm(un[0]))
    np.testing.assert_allclose(layer.logit(user[:1], item), cos_0 / 0.2 - 0.5, rtol=1e-5, atol=1e-5)


# ---- the teacher -------------------------------------------------------------------------------------

def test_mmoe_gates_sum_to_one_and_each_task_has_one_output_per_row():
    encoded = {"a": _normal([7, 3], 1), "b": _normal([7, 5], 2)}
    mmoe = MMoE(["a", "b"], ["click", "watch_time"], experts=3, expert_layers=[8], task_tower=[4])
    out = mmoe(encoded)
    assert set(out) == {"click", "watch_time"} and all(o.shape == (7,) for o in out.values())
    x = tf.concat([encoded["a"], encoded["b"]], axis=-1)
    experts = np.stack([e(x).numpy() for e in mmoe.experts], axis=1)  # [B, 3, 8]
    for task in ("click", "watch_time"):
        gate = mmoe.gate_weights(task, x).numpy()
        assert gate.shape == (7, 3) and np.all(gate > 0)
        np.testing.assert_allclose(gate.sum(axis=-1), 1.0, rtol=1e-6)
        mixed = (experts * gate[:, :, None]).sum(axis=1)
        np.testing.assert_allclose(out[task], mmoe.towers[task](mixed).numpy()[:, 0], rtol=1e-5, atol=1e-6)


def test_mmoe_once_built_computes_first_layers_and_gates_in_one_matmul_with_the_same_values_and_gradients():
    encoded = {"a": _normal([7, 3], 1), "b": _normal([7, 5], 2)}
    mmoe = MMoE(["a", "b"], ["click", "watch_time"], experts=3, expert_layers=[8, 6], task_tower=[4])
    x = tf.concat([encoded["a"], encoded["b"]], axis=-1)

    def layer_by_layer() -> dict[str, tf.Tensor]:  # the first call's way
        experts = tf.stack([e(x) for e in mmoe.experts], axis=1)
        return {t: mmoe.towers[t](tf.reduce_sum(experts * mmoe.gate_weights(t, x)[:, :, None], axis=1))[:, 0]
                for t in mmoe.tasks}

    results = []
    for forward in (lambda: mmoe(encoded), layer_by_layer, lambda: mmoe(encoded)):  # build, reference, one matmul
        with tf.GradientTape() as tape:
            out = forward()
            loss = out["click"] * 2.0 + out["watch_time"]
        results.append((out, tape.gradient(loss, mmoe.trainable_variables)))
    assert len(mmoe.trainable_variables) == 3 * 4 + 2 * 2 + 2 * 4  # experts, gates, towers: nothing new
    (_, _), (reference, grads), (fused, fused_grads) = results
    for task in mmoe.tasks:
        np.testing.assert_allclose(fused[task], reference[task], rtol=1e-5, atol=1e-6)
    for a, b in zip(fused_grads, grads):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_mmoe_first_layer_by_parts_adds_up_to_its_outputs():
    encoded = {"user": _normal([6, 3], 1), "item": _normal([6, 4], 2), "pair": _normal([6, 2], 3)}
    mmoe = MMoE(["user", "item", "pair"], ["click", "like"], experts=3, expert_layers=[8, 5], task_tower=[4])
    out = mmoe(encoded)
    assert mmoe.first_layer_width == 3 * 8 + 2 * 3  # every expert's first layer, then every gate
    parts = [mmoe.first_layer_part({"user": encoded["user"]}), mmoe.first_layer_part({"item": encoded["item"]}),
             mmoe.first_layer_part({"pair": encoded["pair"]})]
    assert all(p.shape == (6, mmoe.first_layer_width) for p in parts)
    by_parts = mmoe.outputs_from_first_layer(tf.add_n(parts))
    for task in ("click", "like"):
        np.testing.assert_allclose(by_parts[task], out[task], rtol=1e-5, atol=1e-6)
    # the parts of any partition: a user's term for one row, broadcast over two items
    one_user = mmoe.first_layer_part({"user": encoded["user"][:1]}) + mmoe.first_layer_part(
        {"item": encoded["item"][:2], "pair": encoded["pair"][:2]})
    repeated = {k: tf.concat([v[:1], v[:1]], 0) if k == "user" else v[:2] for k, v in encoded.items()}
    np.testing.assert_allclose(mmoe.outputs_from_first_layer(one_user)["click"], mmoe(repeated)["click"],
                               rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="not fields of this MMoE"):
        mmoe.first_layer_part({"other": encoded["user"]})


def test_pooling_ragged_and_dense_with_mask_agree_and_empty_sequences_pool_to_zeros():
    rows = [[[1.0, -2.0], [3.0, -4.0], [-5.0, 0.5]], [], [[-1.0, -1.0]]]
    ragged = tf.ragged.constant(rows, ragged_rank=1, dtype=tf.float32)
    dense = ragged.to_tensor(default_value=7.0)  # padding that would show if it were pooled
    mask = tf.sequence_mask(ragged.row_lengths())
    for pooling, reduce in {"mean": np.mean, "sum": np.sum, "max": np.max}.items():
        expected = [reduce(np.array(r), axis=0) if r else np.zeros(2) for r in rows]
        np.testing.assert_allclose(pool(ragged, pooling), expected, rtol=1e-6, err_msg=pooling)
        np.testing.assert_allclose(pool(dense, pooling, mask), expected, rtol=1e-6, err_msg=pooling)
    with pytest.raises(ValueError, match="pooling must be one of"):
        pool(ragged, "median")


# ---- the distillation weight -------------------------------------------------------------------------

def test_schedule_values():
    steps = tf.constant([0, 9, 10, 35, 60, 85, 110, 1000], tf.int64)

    def values(kind):
        return LambdaSchedule(kind, max=0.8, start_step=10, ramp_steps=100)(steps).numpy()

    constant, linear, sigmoid = values("constant"), values("linear"), values("sigmoid")
    for v in (constant, linear, sigmoid):
        assert v[0] == v[1] == 0.0  # 0 before start_step
        assert np.isclose(v[-1], 0.8, atol=1e-3)  # max at (and after) the end of the ramp
        assert np.all(np.diff(v) >= 0)
    np.testing.assert_allclose(constant[2:], 0.8)
    np.testing.assert_allclose(linear, [0, 0, 0, 0.2, 0.4, 0.6, 0.8, 0.8], atol=1e-6)
    np.testing.assert_allclose(sigmoid[4], 0.4, atol=1e-6)  # centred in the middle of the ramp
    assert sigmoid[2] < 0.01 and sigmoid[3] < linear[3] and sigmoid[5] > linear[5]  # slow start, fast middle
    np.testing.assert_allclose(sigmoid[6], 0.8 / (1 + np.exp(-5.0)), rtol=1e-5)
    with pytest.raises(ValueError, match="kind must be one of"):
        LambdaSchedule("cosine")


# ---- distillation losses -----------------------------------------------------------------------------

def test_mse_distillation_is_the_weighted_mean_squared_logit_difference():
    teacher, student = tf.constant([0.0, 1.0, -1.0]), tf.constant([0.5, 1.0, 1.0])
    weights = tf.constant([1.0, 2.0, 1.0])
    # (1 * 0.25 + 2 * 0 + 1 * 4) / 4
    np.testing.assert_allclose(MSEDistillation()(teacher, student, weights), 1.0625, rtol=1e-6)
    np.testing.assert_allclose(MSEDistillation()(teacher, teacher, weights), 0.0)


def test_cross_entropy_distillation_at_a_temperature():
    teacher, student = tf.constant([2.0, -1.0, 0.0, 3.0]), tf.constant([0.5, 0.5, -2.0, 3.0])
    weights = tf.constant([1.0, 0.5, 2.0, 1.0])
    t = 2.0
    p, q = _sigmoid(teacher.numpy() / t), _sigmoid(student.numpy() / t)
    per_row = -(p * np.log(q) + (1 - p) * np.log(1 - q)) * t ** 2
    expected = np.sum(per_row * weights.numpy()) / np.sum(weights.numpy())
    np.testing.assert_allclose(CrossEntropyDistillation(temperature=t)(teacher, student, weights), expected, rtol=1e-5)
    # minimised where the student's logit is the teacher's
    s = tf.Variable(teacher)
    with tf.GradientTape() as tape:
        loss = CrossEntropyDistillation(temperature=t)(teacher, s, weights)
    np.testing.assert_allclose(tape.gradient(loss, s), np.zeros(4), atol=1e-6)


def test_pairwise_distillation_matches_the_pairs_of_each_group():
    teacher = tf.constant([2.0, 1.0, 0.0, 5.0, 3.0, 3.0])
    student = tf.constant([0.3, 0.5, -1.0, 0.0, 1.0, 2.0])
    groups = tf.constant([0, 0, 0, 1, 1, 1])
    weights = tf.constant([1.0, 2.0, 1.0, 1.0, 1.0, 0.5])
    got = float(PairwiseDistillation()(teacher, student, weights, groups))
    t, s, g, w = (x.numpy() for x in (teacher, student, groups, weights))
    num = den = 0.0
    for i in range(6):
        for j in range(6):
            if g[i] == g[j] and t[i] > t[j]:  # ties (rows 4, 5) and other groups make no pair
                num += w[i] * w[j] * np.log1p(np.exp(-(s[i] - s[j])))
                den += w[i] * w[j]
    assert np.isclose(got, num / den, rtol=1e-5)


@pytest.mark.parametrize("loss", [MSEDistillation(), CrossEntropyDistillation(temperature=2.0),
                                  PairwiseDistillation()], ids=["mse", "cross_entropy", "pairwise"])
def test_distillation_loss_never_moves_the_teacher(loss):
    teacher = tf.Variable([0.2, 0.7, 0.4, 0.9])
    student = tf.Variable([0.1, -0.3, 0.5, 1.0])
    groups, weights = tf.constant([0, 0, 1, 1]), tf.constant([1.0, 2.0, 1.0, 0.5])
    with tf.GradientTape() as tape:
        got = distillation_loss(loss, teacher * 1.0, student, weights, groups)
    g_teacher, g_student = tape.gradient(got, [teacher, student])
    assert g_teacher is None or not np.any(g_teacher.numpy())
    assert float(tf.reduce_sum(tf.abs(g_student))) > 0
    # the loss of the teacher's score as a logit
    np.testing.assert_allclose(logit(teacher).numpy(), np.log(teacher.numpy() / (1 - teacher.numpy())), rtol=1e-5)
    np.testing.assert_allclose(got, loss(logit(teacher), student, weights, groups), rtol=1e-6)
    if loss.needs_groups:  # the groups reach the loss: one group makes other pairs
        assert not np.isclose(got, distillation_loss(loss, teacher, student, weights, tf.zeros([4], tf.int32)))
    # a teacher score of exactly 0 or 1 is clipped: a finite logit
    assert np.all(np.isfinite(logit(tf.constant([0.0, 1.0])).numpy()))


# ---- the teacher's regression losses and its fused score ---------------------------------------------

def test_mse_regression_loss_estimate_and_probability():
    target, output, weights = tf.constant([0.0, 1.0, 2.0]), tf.constant([-2.0, 0.0, 3.0]), tf.constant([1.0, 1.0, 2.0])
    r = MSERegression()
    np.testing.assert_allclose(r.loss(target, output, weights), (4.0 + 1.0 + 2 * 1.0) / 4, rtol=1e-6)
    np.testing.assert_array_equal(r.estimate(output), output)
    np.testing.assert_allclose(r.probability(output), [0.0, 0.0, 0.75], rtol=1e-6)  # t / (1 + t), t = relu


def test_weighted_logistic_regression_loss_estimate_and_probability():
    target, output, weights = tf.constant([0.5, 2.0, 4.0]), tf.constant([-1.0, 0.0, 2.0]), tf.constant([1.0, 3.0, 1.0])
    r = WeightedLogisticRegression()
    t, z, w = target.numpy(), output.numpy(), weights.numpy()
    expected = np.sum(w * (t * _softplus(-z) + _softplus(z))) / np.sum(w)
    np.testing.assert_allclose(r.loss(target, output, weights), expected, rtol=1e-5)
    np.testing.assert_allclose(r.estimate(output), np.exp(z), rtol=1e-6)
    estimate = np.exp(z)
    np.testing.assert_allclose(r.probability(output), _sigmoid(z), rtol=1e-6)
    np.testing.assert_allclose(r.probability(output), estimate / (1 + estimate), rtol=1e-6)
    # the loss is minimised where the odds exp(z) equal the target
    z_star = tf.Variable(np.log(t).astype(np.float32))
    with tf.GradientTape() as tape:
        loss = r.loss(target, z_star, weights)
    np.testing.assert_allclose(tape.gradient(loss, z_star), np.zeros(3), atol=1e-6)


def test_task_probability_and_fused_score_forms():
    z = tf.constant([-2.0, 0.0, 3.0])
    np.testing.assert_allclose(WeightedLogisticRegression().probability(z), tf.sigmoid(z), rtol=1e-6)
    np.testing.assert_allclose(MSERegression().probability(z), [0.0, 0.0, 0.75], rtol=1e-6)
    p = {"a": tf.constant([0.5, 0.2]), "b": tf.constant([0.4, 0.9])}
    w = {"a": 1.0, "b": 0.5}
    np.testing.assert_allclose(fused_score(p, w, "product"), [0.5 * 0.4 ** 0.5, 0.2 * 0.9 ** 0.5], rtol=1e-5)
    np.testing.assert_allclose(fused_score(p, w, "weighted_sum"), [(0.5 + 0.2) / 1.5, (0.2 + 0.45) / 1.5],
                               rtol=1e-5)
    np.testing.assert_allclose(fused_score({"a": tf.constant([0.0])}, {"a": 1.0}, "product"), [1e-7], rtol=1e-3)


# ---- id lookups and their OOV rows -------------------------------------------------------------------

def test_id_dropout_sends_the_rate_of_ids_to_the_oov_rows_drawn_from_its_seed():
    ids = tf.constant(np.arange(200_000) % 1000, tf.int64)
    seed = tf.constant([7, 3], tf.int64)
    one, three = IdLookup("int64", list(range(1000))), IdLookup("int64", list(range(1000)), oov_buckets=3)
    rows = one(ids).numpy()
    assert rows.min() == 1 and one.oov_rows == 1 and IdLookup("int64", None, buckets=7).oov_rows == 0
    dropped = one.drop_to_oov(tf.constant(rows), 0.1, seed).numpy()
    changed = dropped != rows
    assert abs(changed.mean() - 0.1) < 0.005 and set(dropped[changed].tolist()) == {0}  # 7 standard deviations
    np.testing.assert_array_equal(one.drop_to_oov(tf.constant(rows), 0.1, seed), dropped)  # same seed, same ids
    other = one.drop_to_oov(tf.constant(rows), 0.1, tf.constant([7, 4], tf.int64)).numpy()
    assert 0.05 < np.mean((other != rows) != changed) < 0.25  # another step's seed drops other ids
    rows3 = three(ids).numpy()
    dropped3 = three.drop_to_oov(tf.constant(rows3), 0.1, seed).numpy()
    assert set(dropped3[dropped3 != rows3].tolist()) == {0, 1, 2}  # spread over every OOV row


def test_oov_rows_start_at_zero_and_the_others_as_the_initializer_draws_them():
    tf.keras.utils.set_random_seed(5)
    plain = EmbeddingTable(6, 4, "uniform")
    plain.build()
    tf.keras.utils.set_random_seed(5)
    zeroed = EmbeddingTable(6, 4, "uniform", zero_rows=2)
    zeroed.build()
    values = zeroed.embeddings.numpy()
    assert not values[:2].any() and np.all(values[2:] != 0)
    np.testing.assert_array_equal(values[2:], plain.embeddings.numpy()[2:])


# ---- get_config round trips --------------------------------------------------------------------------

def _fields():
    return [_normal([4, 3], 1), _normal([4, 5], 2)]


def _pair():
    return _normal([4, 4], 3), _normal([4, 4], 4)


def _history() -> tf.RaggedTensor:
    rows = _normal([6, 3], 6).numpy().tolist()
    return tf.ragged.constant([rows[:2], [], rows[2:]], ragged_rank=1, dtype=tf.float32)


def _call_mmoe(mmoe: MMoE):
    """The model feeds an MMoE's attention layers and passes their outputs among its fields."""
    encoded = {"a": _normal([3, 3], 1), "b": _normal([3, 5], 2)}
    encoded["h@a"] = mmoe.attention[0](_history(), encoded["a"])
    return mmoe(encoded)


ROUND_TRIPS = {  # name -> (make the layer, call it)
    "EmbeddingTable": (lambda: EmbeddingTable(10, 4, "normal", zero_rows=1, name="table"),
                       lambda layer: layer(tf.constant([1, 3, 9]))),
    "IdLookup-vocabulary": (lambda: IdLookup("string", ["a", "b", "c"], oov_buckets=2, name="lookup"),
                            lambda layer: layer(tf.constant(["b", "z", "a", "c"]))),
    "IdLookup-hashing": (lambda: IdLookup("int64", None, buckets=7),
                         lambda layer: layer(tf.constant([5, 123456, -1], tf.int64))),
    "MLP": (lambda: MLP([6, 3], last_activation=None, dropout=0.2), lambda layer: layer(_normal([4, 5], 1))),
    "SENet": (lambda: SENet(2, reduction=1), lambda layer: layer(_fields())),
    "MLPTower": (lambda: MLPTower(2, 4, [6, 4]), lambda layer: layer(_fields())),
    "DCNTower": (lambda: DCNTower(2, 4, layers=3), lambda layer: layer(_fields())),
    "FMTower": (lambda: FMTower(2, 4, factors=3), lambda layer: layer(_fields())),
    "Tower": (lambda: Tower(["a", "b"], [6, 4], [{"name": "mlp"}, {"name": "fm", "params": {"factors": 3}}],
                            senet_reduction=2, extra_fields=1, name="user_tower"),
              lambda layer: layer(dict(zip("ab", _fields())), _normal([4, 4], 3))),
    "DotSimilarity": (lambda: DotSimilarity(4), lambda layer: layer(*_pair())),
    "CosineSimilarity": (lambda: CosineSimilarity(4, temperature=0.5), lambda layer: layer(*_pair())),
    "MultiHeadSimilarity": (lambda: MultiHeadSimilarity(4, heads=2), lambda layer: layer(*_pair())),
    "MMoE": (lambda: MMoE(["a", "b"], ["x", "y"], experts=2, expert_layers=[5], task_tower=[3], dropout=0.1,
                          attention_fields=["h@a"], attention_hidden=4), _call_mmoe),
    "TargetAttention": (lambda: TargetAttention(hidden=5), lambda layer: layer(_history(), _normal([3, 3], 5))),
}


@pytest.mark.parametrize("name", list(ROUND_TRIPS))
def test_get_config_round_trip(name):
    make, call = ROUND_TRIPS[name]
    layer = make()
    call(layer)
    rng = np.random.default_rng(0)  # weights unlike a fresh layer's, so that copying them matters
    layer.set_weights([rng.normal(size=w.shape).astype(w.dtype) for w in layer.get_weights()])
    config = layer.get_config()
    assert json.loads(json.dumps(config)) == config  # plain values: it can be stored as JSON
    clone = type(layer).from_config(config)
    assert clone.get_config() == config
    call(clone)
    clone.set_weights(layer.get_weights())
    got, expected = tf.nest.flatten(call(clone)), tf.nest.flatten(call(layer))
    assert len(got) == len(expected) > 0
    for g, e in zip(got, expected):
        np.testing.assert_array_equal(g, e)
