"""ONNX export of the student, on a slice of the real KuaiRand data and a small trained model.

The model (tests/conftest.py) trains with dual augmented vectors (so the augment tables are exported too) and
a small FTRL L1: the tables hold kept, all-zero and never-updated rows, and both pruned layouts occur.
"""
import trainer  # noqa: F401  (legacy Keras before TensorFlow)

import json
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tensorflow as tf
import tf2onnx

from serving.onnx.export import GRAPHS, export_onnx
from serving.onnx.inputs import onnx_feeds, onnx_inputs, prerank_feeds
from serving.savedmodel.prune import ZERO_ROW, prune_model
from trainer.errors import ExportError
from trainer.data.input_config import InputConfig
from trainer.data.pipeline import make_pipeline
from trainer.training.trained import load_trained

pytestmark = pytest.mark.slow  # the shared trained model and ONNX conversions

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPEC = os.path.join(REPO, "feature_specs", "kuairand.yaml")


@pytest.fixture(scope="module")
def exported(onnx_small):
    return onnx_small  # the session's ONNX export (tests/conftest.py), which the scoring service also uses


@pytest.fixture(scope="module")
def pruned(trained_small, spec):
    """The TensorFlow reference: the trained model, pruned as the export prunes it."""
    model_dir, data = trained_small
    model = load_trained(spec, model_dir, data)
    prune_model(model, model.checkpoint_path)
    return model


@pytest.fixture(scope="module")
def sessions(exported):
    return {g: ort.InferenceSession(p, providers=["CPUExecutionProvider"]) for g, p in exported.graphs.items()}


def _batches(spec, data, size=100, count=3):
    config = InputConfig(batch_size=size, shuffle_buffer=0, deterministic=True)
    return [b["features"] for _, b in zip(range(count), make_pipeline(spec, data, config))]


def test_onnx_matches_the_pruned_tensorflow_model_on_real_rows(exported, pruned, sessions, spec, trained_small):
    assert max(exported.parity.values()) <= 1e-5 and exported.parity_rows == 512
    with open(os.path.join(exported.path, "parity.json")) as fh:
        assert json.load(fh)["max_abs_diff"] == exported.parity
    for features in _batches(spec, trained_small[1]):  # other batches than the export's own check
        user = sessions["user_vector"].run(["user_vector"], onnx_feeds(pruned, features, "user"))[0]
        item = sessions["item_vector"].run(["item_vector"], onnx_feeds(pruned, features, "item"))[0]
        np.testing.assert_allclose(user, pruned.user_vector(features).numpy(), rtol=0, atol=1e-5)
        np.testing.assert_allclose(item, pruned.item_vector(features).numpy(), rtol=0, atol=1e-5)
        assert np.abs(user).max() > 0.01 and np.abs(item).max() > 0.01
        for row in (0, 7):  # one user against every row's item = the student logit of (user, item) pairs
            logit = sessions["prerank"].run(["logit"], prerank_feeds(pruned, features, row))[0]
            u = pruned.user_tower(*pruned.encode_side("user", features))
            v = pruned.item_tower(*pruned.encode_side("item", features))
            expected = pruned.similarity(tf.repeat(u[row:row + 1], len(logit), axis=0), v).numpy()
            np.testing.assert_allclose(logit, expected, rtol=0, atol=1e-5)


def test_graphs_take_no_strings_and_inputs_json_describes_every_input(exported, spec):
    with open(exported.manifest) as fh:
        doc = json.load(fh)
    described = {i["name"]: i for i in doc["inputs"]}
    student = {f.name for f in spec.features_on("user", "context", "item")}
    for g in GRAPHS:
        proto = onnx.load(exported.graphs[g])
        names = [i.name for i in proto.graph.input]
        assert names and all(i.type.tensor_type.elem_type != onnx.TensorProto.STRING for i in proto.graph.input)
        assert sorted(names) == sorted(doc["graphs"][g]["inputs"])
        assert all(described[n]["feature"] in student and g in described[n]["graphs"] for n in names)
        assert [o.name for o in proto.graph.output] == list(doc["graphs"][g]["outputs"])
    assert set(described) == {f.name for f in spec.features_on("user", "context", "item")}  # ids double as augment
    assert described["user_id"]["augment"] and described["video_id"]["augment"]
    assert described["watch_seq"]["shape"] == [None, 50] and described["watch_seq"]["sequence"]["padding"] == -1
    assert described["duration_bucket"]["mapping"]["type"] == "bucketize"
    assert os.path.isfile(os.path.join(exported.path, described["tags"]["mapping"]["file"]))
    with open(os.path.join(exported.path, "README.md")) as fh:
        assert "logit = item_vector . user_vector + bias" in fh.read()


def test_inputs_json_rules_give_the_feeds(exported, pruned, spec, trained_small):
    """Raw values mapped by the rules written in inputs.json equal the feeds of the model's own preprocessing."""
    with open(exported.manifest) as fh:
        doc = json.load(fh)
    features = _batches(spec, trained_small[1], size=300, count=1)[0]
    feeds = {**onnx_feeds(pruned, features, "user"), **onnx_feeds(pruned, features, "item")}
    checked = set()
    for entry in doc["inputs"]:
        if entry["kind"] == "sequence":
            continue
        raw, m = np.asarray(features[entry["columns"][0]]), entry["mapping"]
        if m["type"] == "vocabulary":
            with open(os.path.join(exported.path, m["file"]), encoding="utf-8") as fh:
                ids = [line.split("\t")[0] for line in fh]
            rows = {v: m["oov_buckets"] + n for n, v in enumerate(ids)}
            keys = [v.decode() if isinstance(v, bytes) else str(v) for v in raw]
            expected = np.array([rows.get(k, 0) for k in keys])  # oov_buckets is 1 here: row 0
        elif m["type"] == "bucketize":
            expected = np.searchsorted(np.float32(m["boundaries"]), raw.astype(np.float32), side="right")
        else:
            x = raw.astype(np.float32)
            for step in m["steps"]:
                if step["op"] == "log1p":
                    x = np.sign(x) * np.log1p(np.abs(x))
                elif step["op"] == "zscore":
                    x = (x - np.float32(step["mean"])) / np.float32(max(step["std"], 1e-12))
                else:
                    x = (x - np.float32(step["min"])) / np.float32(max(step["max"] - step["min"], 1e-12))
            np.testing.assert_allclose(feeds[entry["name"]], x, rtol=1e-5, atol=1e-5)
            checked.add(m["type"])
            continue
        np.testing.assert_array_equal(feeds[entry["name"]], expected)
        checked.add(m["type"])
    assert checked == {"vocabulary", "bucketize", "transform"}


def test_never_seen_and_pruned_ids_give_the_tensorflow_vectors(exported, pruned, sessions, spec, trained_small):
    features = dict(_batches(spec, trained_small[1], size=8, count=1)[0])
    table = pruned.encoder.tables["user"]
    assert table.index is not None  # compact: pruned rows map to the zero row
    index = table.index.numpy()
    with open(os.path.join(exported.path, "preprocessing", "vocab", "user.txt")) as fh:
        vocabulary = [int(line.split("\t")[0]) for line in fh]
    pruned_ids = [vocabulary[r - 1] for r in np.flatnonzero(index == ZERO_ROW) if r >= 1][:4]
    assert len(pruned_ids) == 4
    features["user_id"] = tf.constant([10 ** 15 + i for i in range(4)] + pruned_ids, tf.int64)
    features["watch_seq"] = tf.ragged.constant([[10 ** 15, 10 ** 15 + 1]] * 4 + [[]] * 4, tf.int64)
    feeds = onnx_feeds(pruned, features, "user")
    assert feeds["user_id"][:4].tolist() == [0] * 4 and index[0] == ZERO_ROW  # never seen: the OOV row, pruned
    assert feeds["watch_seq"][:4, :2].tolist() == [[0, 0]] * 4 and (feeds["watch_seq"][4:] == -1).all()
    got = sessions["user_vector"].run(["user_vector"], feeds)[0]
    np.testing.assert_allclose(got, pruned.user_vector(features).numpy(), rtol=0, atol=1e-5)


def test_an_existing_out_dir_is_refused(trained_small, spec, tmp_path):
    (tmp_path / "onnx").mkdir()
    with pytest.raises(ExportError, match="already exists"):
        export_onnx(spec, trained_small[0], str(tmp_path / "onnx"), data=trained_small[1])


def test_an_interrupted_export_leaves_no_out_dir(trained_small, spec, tmp_path, monkeypatch):
    def killed(function, input_signature=None, output_path=None, **kwargs):
        with open(output_path, "wb") as fh:
            fh.write(b"half a graph")
        raise KeyboardInterrupt

    monkeypatch.setattr(tf2onnx.convert, "from_function", killed)
    with pytest.raises(KeyboardInterrupt):
        export_onnx(spec, trained_small[0], str(tmp_path / "onnx"), data=trained_small[1], log=lambda _: None)
    assert os.listdir(tmp_path) == []


def test_inputs_of_each_side(pruned, spec):
    user, item = onnx_inputs(pruned, "user"), onnx_inputs(pruned, "item")
    assert [i.feature.name for i in user] == [f.name for f in spec.features_on("user", "context")]
    assert [i.name for i in user if i.augments] == ["user_id"] and [i.name for i in item if i.augments] == ["video_id"]
