"""Pruning, the versioned SavedModel, its signatures, warmup, verify-export and embed-items, on real KuaiRand rows."""
import trainer  # noqa: F401  (legacy Keras before TensorFlow)

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from serving.item_store.embed import embed_items
from serving.savedmodel.layout import MANIFEST, checkpoint_digest, export_fingerprint, read_manifest, versions
from serving.item_store.reader import ItemVectorStore
from serving.savedmodel.prune import PrunedTable, prune_model, apply_pruning
from serving.savedmodel.signatures import input_columns, serving_inputs, tower_columns
from serving.savedmodel.verify import verify_export
from serving.savedmodel.warmup import read_warmup, replay_warmup, signature_inputs
from trainer.cli import main
from trainer.errors import ExportError
from trainer.data.input_config import InputConfig
from trainer.data.pipeline import make_pipeline
from trainer.data.catalog import build_catalog
from trainer.data.writers import Column, write_csv
from trainer.evaluation.predict import predict
from trainer.spec import load_spec
from trainer.training.trained import load_trained

pytestmark = pytest.mark.slow  # the shared trained model, exports and CLI runs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPEC_PATH = os.path.join(REPO, "feature_specs", "kuairand.yaml")
SIGNATURES = {"user_embedding", "item_embedding", "prerank", "pairwise", "prerank_vectors", "fine_rank"}


@pytest.fixture(scope="module")
def loaded(exported_small):
    """The shared export, loaded once for this module's tests (they call its signatures, nothing else)."""
    return tf.saved_model.load(exported_small[0].path)


@pytest.fixture(scope="module")
def catalog(exported_small, spec):
    """The item catalog of the shared export's data (read, never written, by the tests)."""
    return build_catalog(spec, exported_small[1])


def test_pruned_model_equals_the_trained_model_on_held_out_data(trained_small, kuairand_heldout, spec):
    model_dir, data = trained_small
    reference = load_trained(spec, model_dir, data)
    pruned = load_trained(spec, model_dir, data)
    report = {r.table: r for r in prune_model(pruned, pruned.checkpoint_path)}
    as_trained = predict(reference, kuairand_heldout)
    apply_pruning(reference, reference.checkpoint_path)
    # both kinds of pruned rows occur: L1 zeros and hash buckets no (user, author) pair fell in
    assert sum(r.zero_rows for r in report.values()) > 0
    assert report["user_author"].never_updated > 100_000 and report["user_author"].compact
    assert all(isinstance(t, PrunedTable) for t in pruned.encoder.tables.values())
    want, got = predict(reference, kuairand_heldout), predict(pruned, kuairand_heldout)
    assert len(got.student_logit) == 3000
    # 04-30 brings ids training never saw: as trained they read initial values, pruned they read zeros
    assert np.max(np.abs(as_trained.teacher_score - got.teacher_score)) > 1e-3
    assert np.max(np.abs(want.student_logit - got.student_logit)) <= 1e-6
    assert np.max(np.abs(want.teacher_score - got.teacher_score)) <= 1e-6
    for task in want.teacher_raw:
        assert np.max(np.abs(want.teacher_raw[task] - got.teacher_raw[task])) <= 1e-6


def test_pruning_keeps_rows_exactly_and_maps_never_seen_ids_to_zeros(trained_small, spec):
    model_dir, data = trained_small
    model = load_trained(spec, model_dir, data)
    trained_values = model.encoder.tables["user_author"].embeddings.numpy()
    trained_video_oov = model.encoder.tables["video"].embeddings[0].numpy()
    assert np.any(trained_video_oov)  # id dropout (video only, in this model) trained video's OOV row
    report = {r.table: r for r in prune_model(model, model.checkpoint_path)}
    table = model.encoder.tables["user_author"]
    rows = np.arange(len(trained_values))
    looked_up = table(tf.constant(rows)).numpy()
    kept = np.flatnonzero(table.index.numpy() != 0)
    assert len(kept) == report["user_author"].kept
    np.testing.assert_array_equal(looked_up[kept], trained_values[kept])  # kept rows bit-identical
    assert not np.any(looked_up[table.index.numpy() == 0])  # every pruned row reads the zero row
    # an id outside the vocabulary reads its OOV row; the user table's was never trained (no id dropout on it):
    # zeros, as it was from the start, like a never-seen hash bucket
    user = model.encoder.tables["user"]
    oov_row = model.encoder.lookups["user"](tf.constant([10**15], tf.int64))
    assert oov_row.numpy().tolist() == [0] and not np.any(user(oov_row).numpy())
    assert report["user"].never_updated >= 1
    # the trained OOV row is kept, bit-identical: unseen videos read in the export what they read in training
    np.testing.assert_array_equal(model.encoder.tables["video"](tf.constant([0])).numpy()[0], trained_video_oov)


def test_export_reports_pruning_and_writes_a_versioned_saved_model(exported_small):
    result, _ = exported_small
    assert os.path.basename(result.path) == "1" and result.version == 1
    total_before = sum(r.bytes_before for r in result.pruning)
    total_after = sum(r.bytes_after for r in result.pruning)
    assert total_after < 0.6 * total_before
    assert result.variables_bytes_after < result.variables_bytes_before
    with open(os.path.join(result.path, MANIFEST)) as fh:
        manifest = json.load(fh)
    assert manifest["version"] == 1 and set(manifest["signatures"]) == SIGNATURES | {"serving_default"}
    assert {p["table"] for p in manifest["pruning"]} >= {"user", "video", "user_author"}


def test_every_signature_matches_the_in_memory_model(exported_small, trained_small, kuairand_heldout, spec, loaded):
    result, data = exported_small
    model_dir, _ = trained_small
    model = load_trained(spec, model_dir, data)
    prune_model(model, model.checkpoint_path)
    assert set(loaded.signatures) == SIGNATURES | {"serving_default"}
    batch = next(iter(make_pipeline(spec, kuairand_heldout, InputConfig(batch_size=40, shuffle_buffer=0))))
    features = dict(batch["features"])
    unseen = tf.constant([10**15 + i for i in range(40)], tf.int64)  # ids no vocabulary holds: the OOV rows
    features["video_id"] = tf.where(tf.range(40) % 4 == 1, unseen, features["video_id"])
    features["user_id"] = tf.where(tf.range(40) % 4 == 2, unseen, features["user_id"])

    def run(name: str, n: int) -> dict:
        inputs = signature_inputs(spec, name, features, n, lambda items: model.item_vector(items).numpy())
        outputs = loaded.signatures[name](**{k: tf.constant(v) for k, v in inputs.items()})
        return {k: v.numpy() for k, v in outputs.items()}

    out = model(features)
    assert np.max(np.abs(run("pairwise", 40)["logit"] - out.student_logit.numpy())) <= 1e-5
    assert np.max(np.abs(run("fine_rank", 40)["fused_score"] - out.teacher_score.numpy())) <= 1e-5
    u, v = model.user_vector(features).numpy(), model.item_vector(features).numpy()
    assert np.max(np.abs(run("user_embedding", 40)["user_vector"] - u)) <= 1e-5
    assert np.max(np.abs(run("item_embedding", 40)["item_vector"] - v)) <= 1e-5
    prerank = run("prerank", 40)  # row 0's user against 40 candidates: the user tower once
    bias = model.similarity.bias.numpy()
    assert prerank["logit"].shape == (40,)
    assert np.max(np.abs(prerank["logit"] - (v @ u[0] + bias))) <= 1e-5
    vectors = run("prerank_vectors", 40)  # the same user against the candidates' precomputed vectors
    assert np.max(np.abs(vectors["logit"] - prerank["logit"])) <= 1e-5
    default = loaded.signatures["serving_default"]
    assert set(default.structured_input_signature[1]) == set(loaded.signatures["prerank"].structured_input_signature[1])
    inputs = signature_inputs(spec, "pairwise", features, 2)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"prerank: column \w+ has 2 rows; prerank scores one "
                                                             r"user, so user and context columns hold exactly 1 row"):
        loaded.signatures["prerank"](**{k: tf.constant(v) for k, v in inputs.items()})


def test_warmup_holds_one_request_per_signature_built_from_the_spec(exported_small, spec):
    result, _ = exported_small
    requests = {r.model_spec.signature_name: r for r in read_warmup(result.path)}
    assert set(requests) == SIGNATURES
    assert all(r.model_spec.name == "prerank" for r in requests.values())
    user = {c.name for c in input_columns(spec, "user")}
    item = {c.name for c in input_columns(spec, "item")}
    assert set(requests["user_embedding"].inputs) == user
    assert set(requests["item_embedding"].inputs) == item
    assert set(requests["prerank"].inputs) == user | item
    assert set(requests["prerank_vectors"].inputs) == user | {"item_vectors"}
    assert tf.make_ndarray(requests["prerank_vectors"].inputs["item_vectors"]).shape == (1, 16)
    assert set(requests["fine_rank"].inputs) == {c.name for c in input_columns(spec, "all")}
    # prerank's request has one candidate, so a batching server can replay it
    assert {tuple(p.tensor_shape.dim)[0].size for p in requests["prerank"].inputs.values()} == {1}
    watch = tf.make_ndarray(requests["user_embedding"].inputs["watch_seq"])
    assert watch.dtype == np.int64 and watch.ndim == 2  # sequences padded to [B, L]


def test_verify_export_passes_and_catches_an_export_from_another_checkpoint(exported_small, kuairand_heldout, capsys,
                                                                           tmp_path):
    result, _ = exported_small
    data = kuairand_heldout  # 04-30: held out from training
    assert main(["verify-export", os.path.dirname(result.path), "--data", data, "--batches", "2"]) == 0
    out = capsys.readouterr().out
    assert "signature_def['prerank']:\n  rows: prerank scores one user, so user and context columns hold exactly 1 " \
           "row; item columns hold one row per candidate" in out
    assert "watch_seq: int64 (-1, -1)  ids >= 0, right-padded with -1" in out  # the rule each input keeps
    assert "music_type: int64 (-1)  ids >= 0 or -1 (the declared default)" in out
    assert "warmup requests run: fine_rank x1, item_embedding x1, pairwise x1, prerank x1, prerank_vectors x1, " \
           "user_embedding x1" in out
    assert f"{result.path}: verified" in out
    # pruning's effect as a metric: the checkpoint as trained (unseen ids read their initial rows) vs the export
    assert "AUC on the same 512 rows, checkpoint as trained -> export (pruning's and the float32 format's " \
           "effect):" in out
    # every stored row read back from the export: float32 rows are the checkpoint's exactly
    assert "stored rows (float32) vs the checkpoint's" in out and "  user_author" in out and "FAIL" not in out
    for label in ("student click", "teacher click", "teacher long_view", "teacher like"):
        line = next(line for line in out.splitlines() if line.startswith(f"  {label}: "))
        trained, served, change = (float(x) for x in re.findall(r"[-+]?\d\.\d{4}", line))
        assert 0 < trained < 1 and 0 < served < 1 and abs(change - (served - trained)) <= 1.5e-4, line
    copy = str(tmp_path / "1")  # the shared export is never written into
    shutil.copytree(result.path, copy)
    with open(os.path.join(copy, MANIFEST)) as fh:
        manifest = json.load(fh)
    earlier = manifest["checkpoint"].replace("ckpt-12", "ckpt-6")  # pretend it came from step 6
    assert os.path.exists(earlier + ".index")
    with open(os.path.join(copy, MANIFEST), "w") as fh:
        json.dump({**manifest, "checkpoint": earlier}, fh)
    verification = verify_export(copy, data, batches=1)
    assert not verification.ok and max(verification.max_diff.values()) > 1e-3
    assert sum(bad for _, bad in verification.rows_checked.values()) > 0  # stored rows are not step 6's


def test_an_existing_version_is_never_overwritten(exported_small, trained_small, spec, capsys):
    result, data = exported_small
    model_dir, _ = trained_small
    base = os.path.dirname(result.path)
    before = os.path.getmtime(os.path.join(result.path, "saved_model.pb"))
    assert main(["export", SPEC_PATH, "--model-dir", model_dir, "--export-base", base, "--version", "1",
                 "--data", data]) == 2
    assert "1 already exists: a version is never overwritten" in capsys.readouterr().err
    assert os.path.getmtime(os.path.join(result.path, "saved_model.pb")) == before


def test_a_killed_export_leaves_no_version_and_the_next_one_cleans_up(trained_small, tmp_path, capsys):
    model_dir, data = trained_small
    base = tmp_path / "base"
    command = [sys.executable, "-m", "trainer.cli", "export", SPEC_PATH, "--model-dir", model_dir,
               "--export-base", str(base), "--data", data, "--no-prune",
               "--student-only"]  # a quicker export: no pruning, no teacher
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (base.exists() and any(p.name.startswith(".tmp-") for p in base.iterdir())):
        assert process.poll() is None and time.time() < deadline, "the export ended before writing"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert versions(str(base)) == [] and any(p.name.startswith(".tmp-") for p in base.iterdir())
    assert main(command[3:]) == 0  # the same command, in this process (its cleanup is what is checked)
    assert "exported student-only version 1" in capsys.readouterr().out
    assert sorted(p.name for p in base.iterdir()) == ["1"]  # the killed export's leftovers are gone


def test_embed_items_writes_every_catalog_vector_under_the_model_version(exported_small, spec, tmp_path, loaded,
                                                                        catalog):
    result, data = exported_small
    store = str(tmp_path / "store")
    embedded = embed_items(os.path.dirname(result.path), store, data, batch_size=500, progress=False)
    assert embedded.model_version == 1 and embedded.resumed_from == 0
    opened = ItemVectorStore.open(store)
    assert opened.model_version == 1 and len(opened) == catalog.size
    np.testing.assert_array_equal(opened.ids, catalog.ids)
    some = slice(0, 50)
    inputs = {c.name: catalog.columns[c.name][some] for c in input_columns(spec, "item")}
    want = loaded.signatures["item_embedding"](**{k: tf.constant(v) for k, v in
                                                  serving_inputs(inputs, input_columns(spec, "item")).items()})
    np.testing.assert_allclose(opened.lookup(catalog.ids[some]), want["item_vector"].numpy(), atol=1e-6)
    with pytest.raises(ExportError, match="already complete|already exists"):
        embed_items(result.path, store, data, progress=False)


def write_item_table(path: str, catalog, columns, rows: list[int], drop: str | None = None) -> None:
    """`rows` of a catalog as a CSV item table of the item tower's columns (all but `drop`)."""
    out = []
    for c in columns:
        if c.name == drop:
            continue
        values = catalog.columns[c.name]
        values = values.to_list() if isinstance(values, tf.RaggedTensor) else values.numpy().tolist()
        values = [[x.decode() for x in v] if c.shape == "list" and c.dtype == "string" else
                  v.decode() if isinstance(v, bytes) else v for v in values]
        kind = {"int64": "int", "float32": "float", "string": "str"}[c.dtype] + ("_list" if c.shape == "list" else "")
        out.append(Column(c.name, kind, [values[i] for i in rows]))
    write_csv(path, out, range(len(rows)))


def test_embed_items_from_an_item_table(exported_small, spec, tmp_path, capsys, loaded, catalog):
    """An item table (one row per item, CSV here) gives the catalog; a table missing an item-tower column, or
    holding an item twice, is refused naming it before the store is touched."""
    result, _ = exported_small
    columns = input_columns(spec, "item")
    table = str(tmp_path / "items.csv")
    write_item_table(table, catalog, columns, list(range(catalog.size))[::-1])  # another order than the data's
    store = tmp_path / "store"
    assert main(["embed-items", result.path, "--store", str(store), "--items", table]) == 0
    assert f"catalog: {catalog.size:,} items from item table {table}" in capsys.readouterr().out
    opened = ItemVectorStore.open(str(store))
    np.testing.assert_array_equal(opened.ids, catalog.ids[::-1])
    some = slice(0, 50)
    inputs = serving_inputs({c.name: catalog.columns[c.name][some] for c in columns}, columns)
    want = loaded.signatures["item_embedding"](**{k: tf.constant(v) for k, v in inputs.items()})["item_vector"]
    np.testing.assert_allclose(opened.lookup(catalog.ids[some]), want.numpy(), atol=1e-6)

    no_age = str(tmp_path / "no_age.csv")
    write_item_table(no_age, catalog, columns, [0, 1, 2], drop="freshness_days")
    twice = str(tmp_path / "twice.csv")
    write_item_table(twice, catalog, columns, [0, 1, 2, 1])
    for bad, message in ((no_age, f"{no_age}: column 'freshness_days' (needed by feature 'freshness_days') is "
                                  "missing from the CSV header"),
                         (twice, f"{twice}: item id {int(catalog.ids[1])} (column 'video_id') is in more than one "
                                 "row; an item table holds one row per item")):
        assert main(["embed-items", result.path, "--store", str(tmp_path / "refused"), "--items", bad]) == 2
        assert message in capsys.readouterr().err
        assert not (tmp_path / "refused").exists()


def test_a_distilled_students_frozen_teacher_tables_are_pruned_with_the_teachers_slots(trained_small, spec, tmp_path):
    teacher_dir, data = trained_small
    student_dir = str(tmp_path / "student")
    overrides = ["model.mode=student", f"training.teacher_dir={teacher_dir}", "training.max_steps=3",
                 "training.progress=false", "training.batch_size=256", "model.student.user_tower=[32,16]",
                 "model.student.item_tower=[32,16]", "model.teacher.expert_layers=[32]",
                 "model.teacher.task_tower=[16]", "model.ftrl.l1=0.01"]
    assert main(["train", SPEC_PATH, "--model-dir", student_dir, "--data", data, "--no-validation",
                 *[a for o in overrides for a in ("--set", o)]]) == 0  # (validation is not what is checked here)
    # the raw checkpoint, read by its keys: an oracle independent of how pruning finds the slots
    reader = tf.train.load_checkpoint(os.path.join(teacher_dir, "checkpoints", "ckpt-12"))
    table = "model/encoder/tables/user_author/embeddings"
    slot = table + "/.OPTIMIZER_SLOT/ftrl/{}/.ATTRIBUTES/VARIABLE_VALUE"
    accumulator, linear = reader.get_tensor(slot.format("accumulator")), reader.get_tensor(slot.format("linear"))
    teacher_updated = ~((accumulator == np.float32(0.001)) & (linear == 0)).all(axis=1)
    teacher_values = reader.get_tensor(table + "/.ATTRIBUTES/VARIABLE_VALUE")
    student = load_trained(spec, student_dir, data)
    reference = load_trained(spec, student_dir, data)
    report = {r.table: r for r in prune_model(student, student.checkpoint_path)}
    apply_pruning(reference, reference.checkpoint_path)
    # the frozen copy prunes exactly as the teacher's own tables do (read from the teacher's FTRL slots)
    assert report["teacher/user_author"].never_updated == (~teacher_updated).sum() > 100_000
    assert report["teacher/user_author"].kept == (teacher_updated & teacher_values.any(axis=1)).sum()
    # every row of the data through both models' forward pass (the scorer `predict` uses is checked against the
    # forward pass in tests/test_evaluation.py)
    for batch in make_pipeline(spec, data, InputConfig(batch_size=1500, shuffle_buffer=0)):
        want, got = reference(batch["features"]), student(batch["features"])
        assert np.max(np.abs(want.teacher_score.numpy() - got.teacher_score.numpy())) <= 1e-6
        assert np.max(np.abs(want.student_logit.numpy() - got.student_logit.numpy())) <= 1e-6


def test_bad_export_commands_name_the_problem_and_exit_2(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["verify-export", str(empty)]) == 2
    assert f"{empty}: neither a SavedModel (no saved_model.pb) nor a base directory" in capsys.readouterr().err
    base = tmp_path / "base"
    assert main(["export", SPEC_PATH, "--model-dir", str(tmp_path / "nothing"), "--export-base", str(base)]) == 2
    assert "not a trained model directory (no run.json); run `prerank train` first" in capsys.readouterr().err
    assert versions(str(base)) == []
    assert main(["export", SPEC_PATH, "--model-dir", str(tmp_path), "--export-base", str(base), "--version", "0"]) == 2
    assert "--version: expected a positive integer (TF Serving's versions), got 0" in capsys.readouterr().err
    assert main(["onnx", SPEC_PATH, "--model-dir", str(tmp_path / "nothing"), "--out", str(tmp_path / "o")]) == 2
    assert "not a trained model directory" in capsys.readouterr().err and not (tmp_path / "o").exists()
    assert main(["embed-items", str(empty), "--store", str(tmp_path / "store")]) == 2
    assert "neither a SavedModel" in capsys.readouterr().err and not (tmp_path / "store").exists()


def test_a_column_feeding_both_towers_cannot_be_served_by_prerank(tmp_path):
    text = open(SPEC_PATH).read().replace(
        "  # ---- cross: user x item, teacher only ----",
        "  - {name: duration_seen, source: duration_ms, kind: numeric, side: context, transform: log1p}\n"
        "  # ---- cross: user x item, teacher only ----")
    path = tmp_path / "shared.yaml"
    path.write_text(text)
    with pytest.raises(ExportError, match=r"column\(s\) duration_ms are read by user/context and by item features"):
        tower_columns(load_spec(str(path)))
    user, item = tower_columns(load_spec(SPEC_PATH))
    assert {c.name for c in user}.isdisjoint(c.name for c in item) and "video_id" in {c.name for c in item}


def test_a_student_only_export_holds_the_students_signatures_and_tables_only(exported_small, exported_student_small,
                                                                              spec):
    full, _ = exported_small
    student = exported_student_small
    manifest = read_manifest(student.path)
    assert manifest["student_only"] and not read_manifest(full.path)["student_only"]
    assert set(manifest["signatures"]) == SIGNATURES - {"fine_rank"} | {"serving_default"}
    shapes = [s for _, s in tf.train.list_variables(os.path.join(student.path, "variables", "variables"))]
    full_shapes = [s for _, s in tf.train.list_variables(os.path.join(full.path, "variables", "variables"))]
    buckets = 200_000  # the teacher's user_author cross: its table (or its pruned table's index) has this many rows
    assert any(buckets in s for s in full_shapes) and not any(buckets in s for s in shapes)
    assert len(shapes) < len(full_shapes)  # (113 -> 67 here) no teacher experts, gates, task towers, attention
    assert student.variables_bytes_after < full.variables_bytes_after / 2
    loaded = tf.saved_model.load(student.path)
    assert replay_warmup(loaded.signatures, student.path)["prerank_vectors"] == 1
    # the stored tables verify-export reads back: the student's only
    assert {"video", "user", "augment/item"} <= set(loaded.embedding_tables) and \
        "user_author" not in loaded.embedding_tables
    # the fingerprint: the checkpoint's content, the spec and the options; recomputable, and the two differ
    options = manifest["export_options"]
    assert manifest["fingerprint"] == export_fingerprint(checkpoint_digest(manifest["checkpoint"]),
                                                         spec.fingerprint, options) == student.fingerprint
    assert student.fingerprint != full.fingerprint and options["student_only"]
