"""Hostile and malformed input on the serving side, on the shared export (`exported_small`): each refused
request names the column and what was expected (the signatures check in the graph, `input_checks`;
Python callers go through `requests`), a valid request still scores, and a foreign or damaged export file
is an export error naming the file, with exit code 2, no traceback, no hang, and nothing written."""
import trainer  # noqa: F401  (legacy Keras before TensorFlow)

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

from conftest import REPO
from serving.item_store.writer import StoreWriter
from serving.savedmodel.layout import MANIFEST, WARMUP_FILE
from serving.savedmodel.requests import call_signature, check_inputs
from serving.savedmodel.warmup import predict_request, read_warmup, request_inputs, signature_inputs
from trainer.cli import main
from trainer.data.input_config import InputConfig
from trainer.data.pipeline import make_pipeline
from trainer.errors import DataError, ExportError

pytestmark = pytest.mark.slow  # the shared trained model and export

TIMEOUT = 120  # seconds for a subprocess that imports TensorFlow and loads a SavedModel


@pytest.fixture(scope="module")
def served(exported_small, spec):
    """(loaded SavedModel, a batch's features): 8 real rows."""
    result, data = exported_small
    features = next(iter(make_pipeline(spec, data, InputConfig(batch_size=8, shuffle_buffer=0))))["features"]
    return tf.saved_model.load(result.path), features


def request(spec, served, signature: str, rows: int = 8) -> dict[str, np.ndarray]:
    """A valid request of `signature` from the real rows (copies: tests change them)."""
    return {k: v.copy() for k, v in signature_inputs(spec, signature, served[1], rows).items()}


def refusal(served, signature: str, inputs: dict) -> str:
    """The DataError message of a request the signature refuses."""
    with pytest.raises(DataError) as caught:
        call_signature(served[0].signatures[signature], inputs, f"test {signature}")
    return str(caught.value)


def test_nan_and_inf_are_refused_naming_the_column(spec, served):
    inputs = request(spec, served, "prerank")
    inputs["duration_ms"][3] = np.nan
    assert "column duration_ms holds nan in row 3; expected finite float32 numbers" in \
        refusal(served, "prerank", inputs)
    inputs = request(spec, served, "user_embedding")
    inputs["fans_user_num"][5] = np.inf
    assert "column fans_user_num holds inf in row 5; expected finite float32 numbers" in \
        refusal(served, "user_embedding", inputs)


def test_columns_of_one_request_must_hold_the_same_rows(spec, served):
    inputs = request(spec, served, "prerank")
    inputs["video_id"] = inputs["video_id"][:5]
    message = refusal(served, "prerank", inputs)
    assert "column video_id has 5 rows but column" in message and "has 8; item columns hold one row per " \
        "candidate" in message
    users = {c for c in request(spec, served, "user_embedding")}
    inputs = request(spec, served, "pairwise")
    inputs.update({k: v[:3] for k, v in inputs.items() if k in users})  # 3 users, 8 items
    message = refusal(served, "pairwise", inputs)
    assert " has 3 rows but column " in message or " has 8 rows but column " in message, message
    assert "user, context and item columns hold one row per pair" in message


def test_prerank_scores_exactly_one_user(spec, served):
    users = {c for c in request(spec, served, "user_embedding")}
    inputs = {**request(spec, served, "pairwise", 2), **{k: v for k, v in request(spec, served, "prerank").items()
                                                        if k not in users}}
    message = refusal(served, "prerank", inputs)
    assert " has 2 rows; prerank scores one user, so user and context columns hold exactly 1 row" in message


def test_sequences_must_be_right_padded(spec, served):
    inputs = request(spec, served, "user_embedding")
    watch = inputs["watch_seq"]
    row = int(np.argmax((watch != -1).sum(axis=1) >= 2))  # a row with two ids or more
    ids = watch[row][watch[row] != -1]
    watch[row] = -1
    watch[row, 1:1 + len(ids[:watch.shape[1] - 1])] = ids[:watch.shape[1] - 1]  # left padding: -1, then ids
    assert f"column watch_seq: sequences are right-padded with -1: row {row} has padding before an id" in \
        refusal(served, "user_embedding", inputs)
    inputs = request(spec, served, "item_embedding")
    inputs["tag"] = np.array([[b"", b"39"]] * 8, dtype=object)  # a hole in a string sequence
    assert "column tag: sequences are right-padded with the empty string: row 0 has padding before an id" in \
        refusal(served, "item_embedding", inputs)


def test_negative_ids_are_refused_but_a_declared_default(spec, served):
    inputs = request(spec, served, "prerank")
    inputs["video_id"][2] = -5
    assert "column video_id holds id -5 in row 2; ids are >= 0" in refusal(served, "prerank", inputs)
    inputs = request(spec, served, "item_embedding")
    inputs["music_type"][4] = -2  # the spec declares default: -1
    assert "column music_type holds id -2 in row 4; ids are >= 0 or -1, its declared default" in \
        refusal(served, "item_embedding", inputs)
    inputs = request(spec, served, "user_embedding")
    inputs["watch_seq"][0, 0] = -3
    assert "column watch_seq holds id -3 in row 0; sequence ids are >= 0, right-padded with -1" in \
        refusal(served, "user_embedding", inputs)


def test_a_right_padded_request_and_declared_defaults_score_as_the_unpadded_one(spec, served):
    loaded = served[0]
    inputs = request(spec, served, "prerank")
    inputs["music_type"][:3] = -1  # the declared default of music_type
    inputs["is_live_streamer"][:] = -124  # and of is_live_streamer
    more = dict(inputs)
    for name, pad in (("watch_seq", -1), ("like_seq", -1), ("long_watch_seq", -1), ("tag", b"")):
        value = inputs[name]
        more[name] = np.concatenate([value, np.full((len(value), 7), pad, dtype=value.dtype)], axis=1)
    want = call_signature(loaded.signatures["prerank"], inputs, "test")
    got = call_signature(loaded.signatures["prerank"], more, "test")
    np.testing.assert_allclose(got["logit"], want["logit"], atol=1e-6)
    # the declared defaults are ids like any other: prerank agrees with the towers' own signatures
    users = {k: v for k, v in inputs.items() if k in request(spec, served, "user_embedding")}
    user = call_signature(loaded.signatures["user_embedding"], users, "test")
    items = call_signature(loaded.signatures["item_embedding"],
                           {k: v for k, v in inputs.items() if k not in users}, "test")["item_vector"]
    np.testing.assert_allclose(want["logit"], items @ user["user_vector"][0] + user["logit_bias"][0], atol=1e-5)


def test_wrong_dtype_shape_and_names_are_named_before_the_call(spec, served):
    signature = served[0].signatures["item_embedding"]
    inputs = request(spec, served, "item_embedding")
    with pytest.raises(DataError, match=r"input 'duration_ms': expected float32 \[B\], got float64 \[8\]; "
                                        r"input 'video_id': expected int64 \[B\], got int32 \[8\]") as e:
        check_inputs(signature, {**inputs, "video_id": inputs["video_id"].astype(np.int32),
                                 "duration_ms": inputs["duration_ms"].astype(np.float64)}, "test request")
    assert str(e.value).startswith("test request: ")
    with pytest.raises(DataError, match=r"input 'tag': expected string \[B, L\], got string \[8\]"):
        check_inputs(signature, {**inputs, "tag": inputs["tag"][:, 0]}, "test request")
    missing = {k: v for k, v in inputs.items() if k != "author_id"}
    with pytest.raises(DataError, match=r"unknown input\(s\) user_id; missing input\(s\) author_id "
                                        r"\(the signature takes: author_id int64 \[B\],"):
        check_inputs(signature, {**missing, "user_id": inputs["video_id"]}, "test request")


def test_tf_serving_feeds_any_shape_and_the_graph_names_the_column(exported_small, spec, served):
    """TF Serving runs the SavedModel's graph in a session and does not compare shapes with the signature's;
    fed the same way (below the Python client's shape check), the graph names the column and its shape."""
    inputs = request(spec, served, "item_embedding")
    graph = tf.Graph()
    with graph.as_default(), tf.compat.v1.Session() as session:
        meta = tf.compat.v1.saved_model.loader.load(session, ["serve"], exported_small[0].path)
        signature = meta.signature_def["item_embedding"]

        def run(feed: dict) -> None:
            tensors = {graph.get_tensor_by_name(signature.inputs[k].name)._as_tf_output(): v for k, v in feed.items()}
            output = graph.get_tensor_by_name(signature.outputs["item_vector"].name)._as_tf_output()
            session._call_tf_sessionrun(None, tensors, [output], [], None)  # Session.run would check shapes

        run(inputs)  # a valid request runs
        with pytest.raises(tf.errors.InvalidArgumentError, match=r"item_embedding: column video_id must be int64 "
                                                                 r"\[B\] \(one value per row\), got shape \[8 1\]"):
            run({**inputs, "video_id": inputs["video_id"][:, None]})
        with pytest.raises(tf.errors.InvalidArgumentError, match=r"column tag must be string \[B, L\] \(one "
                                                                 r"sequence per row\), got shape \[8\]"):
            run({**inputs, "tag": inputs["tag"][:, 0]})


# ---- foreign and damaged export files ----

def damaged_copy(exported_small, tmp_path, name: str, damage) -> str:
    """A copy of the export's version 1 under tmp_path/name/, damaged by `damage(version_dir)`."""
    version = tmp_path / name / "1"
    shutil.copytree(exported_small[0].path, version)
    damage(str(version))
    return str(version)


def snapshot(path: str) -> dict[str, float]:
    return {os.path.join(root, f): os.path.getmtime(os.path.join(root, f))
            for root, _, files in os.walk(path) for f in files}


def test_foreign_or_damaged_export_files_are_named(exported_small, tmp_path, capsys):
    def write(relative: str, content: bytes):
        def damage(version: str) -> None:
            with open(os.path.join(version, relative), "wb") as fh:
                fh.write(content)
        return damage

    warmup = open(os.path.join(exported_small[0].path, WARMUP_FILE), "rb").read()
    cases = {  # name: (damage, what the message says after the file's path)
        "random_manifest": (write(MANIFEST, b"{not json"), "unreadable (Expecting property name"),
        "list_manifest": (write(MANIFEST, b"[1, 2]"), "a JSON list; expected the JSON manifest"),
        "random_warmup": (write(WARMUP_FILE, os.urandom(500)), "expected a TFRecord file of PredictionLog protos"),
        "truncated_warmup": (write(WARMUP_FILE, warmup[:len(warmup) // 2]), "unreadable after 1 record(s)"),
        "no_variables": (lambda v: shutil.rmtree(os.path.join(v, "variables")), "not a readable SavedModel"),
    }
    for name, (damage, says) in cases.items():
        version = damaged_copy(exported_small, tmp_path, name, damage)
        before = snapshot(str(tmp_path / name))
        assert main(["verify-export", version]) == 2, name
        err = capsys.readouterr().err
        file = {"no_variables": "variables/"}.get(name, MANIFEST if "manifest" in name else WARMUP_FILE)
        assert err.startswith(f"export error: {os.path.join(version, file)}: ") and says in err, (name, err)
        assert snapshot(str(tmp_path / name)) == before  # nothing written
    assert main(["verify-export", str(tmp_path / "nothing")]) == 2
    assert f"{tmp_path / 'nothing'}: no such file or directory; expected an export version" in capsys.readouterr().err


def test_a_warmup_request_the_signature_refuses_fails_verification(exported_small, spec, served, tmp_path, capsys):
    """TF Serving replays the warmup file when it loads a version and does not load it if one fails."""
    def left_padded_warmup(version: str) -> None:
        requests = read_warmup(version)
        with tf.io.TFRecordWriter(os.path.join(version, WARMUP_FILE)) as writer:
            for i, r in enumerate(requests):
                inputs = request_inputs(r, "test")
                if i == 0:  # the first request replayed (fine_rank: every column)
                    inputs["like_seq"] = np.concatenate([np.full((len(inputs["like_seq"]), 1), -1),
                                                         inputs["like_seq"]], axis=1)
                    inputs["like_seq"][:, -1] = 7  # every row: padding, then an id
                r = predict_request(r.model_spec.name, r.model_spec.signature_name, inputs)
                log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=r))
                writer.write(log.SerializeToString())

    version = damaged_copy(exported_small, tmp_path, "refused", left_padded_warmup)
    assert main(["verify-export", version]) == 2
    err = capsys.readouterr().err
    name = read_warmup(version)[0].model_spec.signature_name
    assert err.startswith(f"export error: {os.path.join(version, WARMUP_FILE)}: request 0 ({name}): refused: "
                          f"{name}: column like_seq: sequences are right-padded with -1: row 0 has padding before "
                          "an id"), err


def test_a_random_saved_model_pb_is_refused_by_the_commands_without_hanging(exported_small, tmp_path):
    def garble(version: str) -> None:
        with open(os.path.join(version, "saved_model.pb"), "wb") as fh:
            fh.write(np.random.default_rng(0).bytes(4096))

    version = damaged_copy(exported_small, tmp_path, "foreign", garble)
    before = snapshot(str(tmp_path / "foreign"))
    store = tmp_path / "store"
    # one subprocess (TensorFlow's import costs seconds): verify-export, then embed-items, as the shell runs them
    script = ("import sys; from trainer.cli import main; "
              f"sys.exit(10 * main(['verify-export', {os.path.dirname(version)!r}]) "
              f"+ main(['embed-items', {version!r}, '--store', {str(store)!r}]))")
    try:
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=TIMEOUT,
                              cwd=REPO)
    except subprocess.TimeoutExpired:
        pytest.fail(f"verify-export / embed-items on a random saved_model.pb did not answer within {TIMEOUT} s")
    assert done.returncode == 22, done.stderr[-3000:]  # both exit 2
    assert "Traceback" not in done.stderr
    message = f"export error: {os.path.join(version, 'saved_model.pb')}: not a readable SavedModel"
    assert done.stderr.count(message) == 2, done.stderr[-3000:]
    assert "expected the SavedModel `prerank export` writes" in done.stderr
    assert snapshot(str(tmp_path / "foreign")) == before and not store.exists()


def test_an_item_store_path_that_is_a_file_is_named(tmp_path):
    path = tmp_path / "store"
    path.write_text("not a store")
    with pytest.raises(ExportError, match=f"{path}: a file, not a directory; expected an item vector store"):
        StoreWriter(path, 1, fingerprint="aaaa", dim=4, id_dtype="int64", export_dir=str(tmp_path))
    assert path.read_text() == "not a store"
