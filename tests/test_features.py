"""Fitted preprocessing (analyze) and the feature encoder on small, hand-checkable data."""
import trainer  # noqa: F401  (legacy Keras before TensorFlow)

import numpy as np
import pytest
import tensorflow as tf

from conftest import spec_text
from trainer.preprocessing.analyze import analyze
from trainer.preprocessing.fitted import Preprocessing
from trainer.errors import ModelDirError, SpecError
from trainer.data.writers import Column, write_tfrecord
from trainer.layers.encoder import FeatureEncoder
from trainer.data.input_config import InputConfig
from trainer.data.pipeline import make_pipeline
from trainer.spec import parse_spec
from trainer.spec.columns import raw_columns

SPEC = spec_text("features_test")
USERS = [1, 1, 1, 2, 2, 3]
CITIES = ["a", "a", "a", "b", "b", "c"]
SEQS = [[10, 11, 12, 13], [], [10], [11, 11], [12], [10, 12]]
VIDEOS = [10, 10, 11, 10, 12, 13]
PRICES = [0.0, 9.0, 99.0, None, 3.0, 1.0]
AGES = [20.0, 30.0, 40.0, 20.0, 25.0, 60.0]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    spec_path = root / "tiny.yaml"
    spec_path.write_text(SPEC)
    columns = [Column("user_id", "int", USERS), Column("city", "str", CITIES), Column("watch_seq", "int_list", SEQS),
               Column("video_id", "int", VIDEOS), Column("price", "float", PRICES), Column("age", "float", AGES),
               Column("click", "int", [1, 0, 1, 0, 0, 1])]
    path = str(root / "part-00000.tfrecord")
    write_tfrecord(path, columns, range(len(USERS)), compression="none")
    spec = parse_spec(SPEC, str(spec_path))
    return spec, path


def _batch(spec, path, **kwargs):
    config = InputConfig(batch_size=64, shuffle_buffer=0, deterministic=True, **kwargs)
    return next(iter(make_pipeline(spec, path, config, compression="none")))


def test_analyze_fits_vocabularies_by_frequency_with_min_count_and_max_size(data):
    spec, path = data
    fitted = analyze(spec, path)
    assert fitted.rows == 6
    assert fitted.vocabularies["user"] == [1, 2]  # user 3 seen once < min_count 2
    assert fitted.vocabularies["city"] == ["a", "b"]  # max_size 2 keeps the two most frequent
    # video table is shared: counts come from watch_seq (its last 3 ids) and video_id
    video_counts = dict(zip(fitted.vocabularies["video"], fitted.counts["video"]))
    assert video_counts == {10: 2 + 3, 11: 3 + 1, 12: 3 + 1, 13: 1 + 1}
    assert fitted.vocabularies["video"][0] == 10


def test_analyze_statistics_follow_the_steps_before_normalisation(data):
    spec, path = data
    fitted = analyze(spec, path)
    logged = np.log1p([0.0, 9.0, 99.0, 0.0, 3.0, 1.0])  # the missing price takes default 0
    assert fitted.stats["price"].mean == pytest.approx(logged.mean())
    assert fitted.stats["price"].std == pytest.approx(logged.std())
    assert (fitted.stats["age"].min, fitted.stats["age"].max) == (20.0, 60.0)
    assert "price_bucket" not in fitted.stats


def test_preprocessing_round_trips_and_refuses_another_spec(data, tmp_path):
    spec, path = data
    fitted = analyze(spec, path)
    fitted.save(str(tmp_path))
    loaded = Preprocessing.load(str(tmp_path))
    assert loaded.vocabularies == fitted.vocabularies and loaded.stats == fitted.stats
    other = parse_spec(SPEC.replace("table: user", "table: people"), spec.path)
    with pytest.raises(ModelDirError, match="people.*rerun `prerank analyze`"):
        loaded.check_matches(other, str(tmp_path))
    with pytest.raises(ModelDirError, match="run `prerank analyze` first"):
        Preprocessing.load(str(tmp_path / "nowhere"))


def test_encoder_shapes_and_shared_table(data):
    spec, path = data
    encoder = FeatureEncoder(spec, analyze(spec, path))
    out = encoder(_batch(spec, path)["features"])
    assert {k: v.shape.as_list() for k, v in out.items()} == {
        "user_id": [6, 4], "city": [6, 3], "watch_seq": [6, 4], "video_id": [6, 4], "price": [6, 1],
        "price_bucket": [6, 2], "age": [6, 1], "user_video": [6, 2]}
    tables = {v.name.split("/")[1] for v in encoder.trainable_variables}
    assert "embedding_video" in tables and len(tables) == len(spec.tables) == 5
    # watch_seq [10] of row 2 pools to exactly video 10's row, which video_id of row 0 selects too
    np.testing.assert_allclose(out["watch_seq"][2], out["video_id"][0])


def test_encoder_pools_last_ids_and_empty_sequences_to_zero(data):
    spec, path = data
    encoder = FeatureEncoder(spec, analyze(spec, path))
    features = _batch(spec, path)["features"]
    out = encoder(features)
    video = encoder.tables["video"].embeddings
    rows = encoder.lookups["video"](tf.constant([11, 12, 13], tf.int64))
    np.testing.assert_allclose(out["watch_seq"][0], tf.reduce_mean(tf.gather(video, rows), 0), rtol=1e-6)
    np.testing.assert_array_equal(out["watch_seq"][1], np.zeros(4))


def test_encode_keeping_returns_the_rows_it_pooled(data):
    spec, path = data
    encoder = FeatureEncoder(spec, analyze(spec, path))
    features = _batch(spec, path)["features"]
    encoded, kept = encoder.encode_keeping(features, {"watch_seq"})
    assert set(kept) == {"watch_seq"} and isinstance(kept["watch_seq"], tf.RaggedTensor)
    plain = encoder(features)
    for name in plain:
        np.testing.assert_array_equal(encoded[name], plain[name], err_msg=name)
    rows = encoder.lookups["video"](tf.constant([11, 12, 13], tf.int64))  # row 0's history, last 3 ids
    np.testing.assert_array_equal(kept["watch_seq"][0], tf.gather(encoder.tables["video"].embeddings, rows))
    assert kept["watch_seq"].row_lengths()[1] == 0  # the empty history stays empty


def test_encoder_padded_sequences_equal_ragged(data):
    spec, path = data
    encoder = FeatureEncoder(spec, analyze(spec, path))
    ragged = encoder(_batch(spec, path)["features"])
    padded = encoder(_batch(spec, path, pad_sequences=True)["features"])
    for name in ragged:
        np.testing.assert_allclose(ragged[name], padded[name], err_msg=name)


def test_encoder_oov_transforms_buckets_and_crosses(data):
    spec, path = data
    fitted = analyze(spec, path)
    encoder = FeatureEncoder(spec, fitted)
    out = encoder(_batch(spec, path)["features"])
    user = encoder.tables["user"].embeddings
    np.testing.assert_allclose(out["user_id"][5], user[0])  # user 3 is out of vocabulary: the OOV row
    np.testing.assert_allclose(out["user_id"][3], user[1 + 1])  # user 2: after 1 OOV row and user 1
    price = np.log1p([0.0, 9.0, 99.0, 0.0, 3.0, 1.0])
    np.testing.assert_allclose(out["price"][:, 0], (price - price.mean()) / price.std(), rtol=1e-5)
    np.testing.assert_allclose(out["age"][:, 0], (np.array(AGES) - 20) / 40, rtol=1e-6)
    buckets = encoder.tables["price_bucket"].embeddings  # boundaries [1, 10]: 0 -> 0, 9 -> 1, 99 -> 2, 1 -> 1
    for row, bucket in ((0, 0), (1, 1), (2, 2), (5, 1)):
        np.testing.assert_allclose(out["price_bucket"][row], buckets[bucket])
    np.testing.assert_allclose(out["user_video"][0], out["user_video"][1])  # same (user, video) pair
    assert not np.allclose(out["user_video"][0], out["user_video"][2])


def test_embedding_gradients_are_sparse(data):
    spec, path = data
    encoder = FeatureEncoder(spec, analyze(spec, path))
    features = _batch(spec, path)["features"]
    with tf.GradientTape() as tape:
        loss = tf.add_n([tf.reduce_sum(v) for v in encoder(features).values()])
    grads = tape.gradient(loss, encoder.trainable_variables)
    assert all(isinstance(g, tf.IndexedSlices) for g in grads)


def test_a_cross_of_string_and_int64_columns_hashes_one_canonical_text(data, tmp_path):
    """A cross of a string column (city) and an int64 one (video_id) is accepted, listed before or after the
    features owning its columns; each column keeps its own type, and the row is the hash of one canonical text
    (an id in decimal), so the same values typed as text hash to the same rows."""
    _, path = data
    cross = ("  - {name: city_video, kind: categorical, side: cross, dtype: int64, cross_of: [city, video_id],\n"
             "     vocabulary: {source: hash, buckets: 50}, embedding: {dim: 2}}\n")
    first = SPEC.replace("features:\n", "features:\n" + cross)
    for text in (SPEC + cross, first):
        spec = parse_spec(text, str(tmp_path / "cross.yaml"))
        columns = raw_columns(spec)
        assert (columns["city"].dtype, columns["video_id"].dtype) == ("string", "int64")
        assert "feature 'city_video'" in columns["city"].read_by
        encoder = FeatureEncoder(spec, analyze(spec, path))
        features = _batch(spec, path)["features"]
        rows = encoder.row_ids(spec.feature("city_video"), features).numpy()
        texts = tf.constant([f"{c}\x1f{v}" for c, v in zip(CITIES, VIDEOS)])
        np.testing.assert_array_equal(rows, tf.keras.layers.Hashing(num_bins=50)(texts).numpy())
        as_text = dict(features, video_id=tf.strings.as_string(features["video_id"]))
        np.testing.assert_array_equal(encoder.row_ids(spec.feature("city_video"), as_text).numpy(), rows)


def test_a_cross_of_a_sequence_column_is_refused(tmp_path):
    cross = ("  - {name: seq_video, kind: categorical, side: cross, dtype: int64, cross_of: [watch_seq, video_id],\n"
             "     vocabulary: {source: hash, buckets: 50}, embedding: {dim: 2}}\n")
    with pytest.raises(SpecError, match=r"features\[8\]\.cross_of: a cross hashes one id per row, but column "
                                        r"'watch_seq' is a list \(read by sequence feature 'watch_seq'\)"):
        parse_spec(SPEC + cross, str(tmp_path / "cross.yaml"))
