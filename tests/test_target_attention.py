"""The teacher's target attention: which histories it attends, and how it pools them."""
import trainer  # noqa: F401  (legacy Keras before TensorFlow)

import numpy as np
import tensorflow as tf

from trainer.layers.target_attention import TargetAttention
from trainer.spec.attention import AttentionPair, attention_pairs


def test_pairs_are_the_user_sequences_on_an_item_features_table(spec):
    pairs = attention_pairs(spec)  # the KuaiRand spec
    # watch / like / long-watch sequences read the `video` table, as video_id does; tags are item-side
    assert pairs == [AttentionPair("watch_seq", "video_id"), AttentionPair("like_seq", "video_id"),
                     AttentionPair("long_watch_seq", "video_id")]
    assert pairs[0].field == "watch_seq@video_id"


def _history(rows: list[list[list[float]]]) -> tf.RaggedTensor:
    return tf.ragged.constant(rows, ragged_rank=1, dtype=tf.float32)


def test_pooling_is_a_convex_combination_of_the_history():
    attention = TargetAttention(hidden=8)
    rng = np.random.default_rng(0)
    same = [[1.0, -2.0, 0.5]] * 4  # every watched vector equal: any weights give that vector
    varied = rng.normal(size=(5, 3)).tolist()
    history = _history([same, [], varied])
    target = tf.constant(rng.normal(size=(3, 3)), tf.float32)
    pooled = attention(history, target).numpy()
    np.testing.assert_allclose(pooled[0], same[0], rtol=1e-5)
    np.testing.assert_array_equal(pooled[1], np.zeros(3))  # an empty history pools to zeros
    v = np.array(varied)
    assert np.all(pooled[2] >= v.min(axis=0) - 1e-6) and np.all(pooled[2] <= v.max(axis=0) + 1e-6)


def test_weights_depend_on_the_candidate_and_ignore_padding():
    attention = TargetAttention(hidden=8)
    rng = np.random.default_rng(1)
    rows = rng.normal(size=(6, 4)).tolist()
    history = _history([rows, rows])
    targets = tf.constant(rng.normal(size=(2, 4)) * 3, tf.float32)
    pooled = attention(history, targets).numpy()
    assert np.abs(pooled[0] - pooled[1]).max() > 1e-3  # same history, other candidate: other pooling
    # a longer neighbour pads this row's history in the dense batch; its own pooling must not move
    short = _history([rows[:2], rows])
    alone = _history([rows[:2]])
    np.testing.assert_allclose(attention(short, targets).numpy()[0], attention(alone, targets[:1]).numpy()[0],
                               rtol=1e-5, atol=1e-6)


def _padded_attention(attention: TargetAttention, history: tf.RaggedTensor, target: tf.Tensor) -> tf.Tensor:
    """The pooling in its padded form: the scoring MLP on the concatenated (k, q, k - q, k * q) [B, L, 4d]."""
    keys = history.to_tensor()
    mask = tf.sequence_mask(history.row_lengths(), tf.shape(keys)[1])
    query = tf.broadcast_to(target[:, None, :], tf.shape(keys))
    logits = tf.squeeze(attention.score(tf.concat([keys, query, keys - query, keys * query], axis=-1)), -1)
    weights = tf.where(mask, tf.nn.softmax(tf.where(mask, logits, tf.float32.min), axis=-1), 0.0)
    return tf.reduce_sum(keys * weights[:, :, None], axis=1)


def test_flat_pooling_equals_the_padded_form_with_its_gradients():
    attention = TargetAttention(hidden=8)
    rng = np.random.default_rng(2)
    history = _history([rng.normal(size=(n, 4)).tolist() for n in (3, 0, 7, 1)])  # an empty one too
    target = tf.constant(rng.normal(size=(4, 4)), tf.float32)
    projection = tf.constant(rng.normal(size=(4, 4)), tf.float32)
    results = []
    for pool in (attention, lambda h, t: _padded_attention(attention, h, t)):
        with tf.GradientTape() as tape:
            tape.watch([history.flat_values, target])
            pooled = pool(history, target)
            loss = tf.reduce_sum(pooled * projection)
        grads = tape.gradient(loss, [history.flat_values, target, *attention.trainable_variables])
        results.append((pooled.numpy(), [tf.convert_to_tensor(g).numpy() for g in grads]))
    assert len(attention.trainable_variables) == 4  # the scoring MLP's kernels and biases, either way
    (flat, flat_grads), (padded, padded_grads) = results
    np.testing.assert_allclose(flat, padded, rtol=1e-5, atol=1e-6)
    for a, b in zip(flat_grads, padded_grads):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_one_history_against_many_candidates_pools_as_each_pair_would():
    attention = TargetAttention(hidden=8)
    rng = np.random.default_rng(2)
    lengths = [3, 0, 5, 1]  # an empty history among them
    history = tf.RaggedTensor.from_row_lengths(tf.constant(rng.normal(size=(9, 4)), tf.float32), lengths)
    targets = tf.constant(rng.normal(size=(4, 6, 4)) * 2, tf.float32)  # 6 candidates per history
    pairs = attention(tf.gather(history, np.repeat(np.arange(4), 6)), tf.reshape(targets, [-1, 4])).numpy()
    keys = history.to_tensor(shape=[None, 7, 4])  # padded beyond the longest history: padding is ignored
    together = attention.call_candidates(keys, history.row_lengths(), targets).numpy()
    np.testing.assert_allclose(together.reshape(-1, 4), pairs, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(together[1], np.zeros((6, 4)))
