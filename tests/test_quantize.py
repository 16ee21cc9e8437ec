"""A lean export: embedding formats (`serving.savedmodel.quantize`: the row-wise int8 and float16 arithmetic),
usage counts (`trainer.training.usage`) and the pruning rules built on them; the lean export of `trained_small`
(int8, rows dropped by usage and norm) checked against its checkpoint."""
import trainer  # noqa: F401  (legacy Keras before TensorFlow)

import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from serving.savedmodel.export import export_model
from serving.savedmodel.layout import MANIFEST
from serving.savedmodel.prune import RARE, ZERO_ROW, prune_plan, round_tables, table_slots
from serving.savedmodel.quantize import FLOAT32_MAX_ROWS, FORMATS, dequantize, half_step, quantize, row_bytes
from serving.savedmodel.opening import open_export
from serving.savedmodel.requests import call_signature
from serving.savedmodel.verify import TOLERANCE, check_stored_rows, reference_outputs
from serving.savedmodel.warmup import signature_inputs
from trainer.cli import main
from trainer.data.input_config import InputConfig
from trainer.data.pipeline import make_pipeline
from trainer.errors import ExportError
from trainer.layers.embedding import EmbeddingTable
from trainer.training.trained import load_trained
from trainer.training.usage import UsageCounts, read_counts

from conftest import KUAIRAND_SPEC, LEAN_RULES


def embedding_like_rows(seed: int = 0) -> np.ndarray:
    """Rows as training leaves them: most small, some wide, an all-zero one, a constant one, one far from 0."""
    rng = np.random.default_rng(seed)
    rows = rng.normal(0, 0.05, (200, 16)).astype(np.float32)
    rows[10] *= 40
    rows[20] = 0
    rows[30] = 0.3
    rows[40] += 7.0
    rows[50, :] = rng.normal(0, 1e-6, 16)  # tiny range: float16 scale and offset in their subnormals
    return rows


@pytest.mark.parametrize("embeddings", FORMATS)
def test_every_stored_value_is_within_half_a_step_and_zero_rows_stay_zero(embeddings):
    rows = embedding_like_rows()
    stored = quantize(rows, embeddings)
    back = dequantize(stored)
    assert back.dtype == np.float32 and back.shape == rows.shape
    assert np.all(np.abs(back - rows) <= half_step(rows, embeddings))
    assert not np.any(back[20])  # the pruned rows' shared zero row reads exact zeros
    if embeddings == "int8":
        assert stored["values"].dtype == np.int8 and stored["scale"].dtype == np.float16
        assert stored["offset"].dtype == np.float16
        steps = stored["values"].astype(np.int32) + 128
        assert steps.min() == 0 and steps.max() == 255  # the whole int8 range is used, none clipped past it
        assert np.abs(back - rows).max() > 1e-5  # int8 does round: the bounds above are not vacuous
    elif embeddings == "float16":
        assert stored["values"].dtype == np.float16
    else:
        np.testing.assert_array_equal(back, rows)


def test_row_bytes_follow_the_issues_arithmetic():
    assert [row_bytes(16, f) for f in FORMATS] == [64, 32, 20]  # int8 + float16 scale and offset: 68.75% less


def test_values_beyond_float16_are_refused_naming_the_table():
    rows = np.ones((3, 4), np.float32)
    rows[1, 2] = 1e5
    for embeddings in ("float16", "int8"):
        with pytest.raises(ExportError, match="table video: a value of magnitude 1e\\+05 exceeds float16"):
            quantize(rows, embeddings, "video")


def test_bad_embedding_formats_are_refused_before_anything_is_read(tmp_path, capsys):
    for command in (["export", KUAIRAND_SPEC, "--model-dir", str(tmp_path / "none"), "--export-base",
                     str(tmp_path / "base"), "--embeddings", "int4"],
                    ["onnx", KUAIRAND_SPEC, "--model-dir", str(tmp_path / "none"), "--out", str(tmp_path / "o"),
                     "--embeddings", "fp16"]):
        assert main(command) == 2
        err = capsys.readouterr().err
        assert "config error: --embeddings" in err and "expected one of float32, float16, int8" in err
        assert repr(command[-1]) in err
    assert not os.path.exists(tmp_path / "base") and not os.path.exists(tmp_path / "o")


def test_usage_counts_add_one_for_every_row_a_step_reads():
    """The counts are the sparse gradients' indices scatter-added: a row read twice in a batch, or by a sequence
    and a categorical feature of one table, counts each time; a frozen table has none."""
    shared = EmbeddingTable(10, 4, name="embedding_shared")
    other, frozen = EmbeddingTable(5, 2, name="embedding_other"), EmbeddingTable(3, 2, name="embedding_frozen")
    for t in (shared, other, frozen):
        t.build()
    frozen.trainable = False
    usage = UsageCounts([shared, other, frozen])
    assert set(usage.counts) == {"embedding_shared", "embedding_other"}
    categorical = tf.constant([3, 1, 3, 9])
    history = tf.ragged.constant([[1, 1, 2], [], [9]])
    extra = tf.constant([[4, 0], [4, 4]])
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(shared(categorical)) + tf.reduce_sum(shared(history).flat_values) + \
            tf.reduce_sum(other(extra) * 0.0) + tf.reduce_sum(frozen(tf.constant([1])))
    variables = [shared.embeddings, other.embeddings]
    gradients = tape.gradient(loss, variables)
    usage.count(gradients, variables)  # eagerly, then as the training step does: inside a tf.function
    tf.function(lambda: usage.count(gradients, variables), autograph=False)()
    reads = np.bincount(np.concatenate([categorical.numpy(), history.flat_values.numpy()]), minlength=10)
    np.testing.assert_array_equal(usage.counts["embedding_shared"].numpy(), 2 * reads)
    np.testing.assert_array_equal(usage.counts["embedding_other"].numpy(), [2, 0, 0, 0, 6])  # a zero gradient reads too
    assert usage.summary() == {"usage/rows_seen/shared": 4.0, "usage/rows_seen_share/shared": 0.4,
                               "usage/rows_seen/other": 2.0, "usage/rows_seen_share/other": 0.4}


@pytest.mark.parametrize("option, value", [("--prune-rows-below", "-1"), ("--prune-rows-below", "0"),
                                           ("--prune-rows-below", "2.5"), ("--prune-rows-below", "ten"),
                                           ("--prune-norm-below", "-0.1"), ("--prune-norm-below", "nan"),
                                           ("--prune-norm-below", "small")])
def test_bad_pruning_rules_are_refused_before_anything_is_read(option, value, tmp_path, capsys):
    for command in (["export", KUAIRAND_SPEC, "--model-dir", str(tmp_path / "none"), "--export-base",
                     str(tmp_path / "base")], ["onnx", KUAIRAND_SPEC, "--model-dir", str(tmp_path / "none"),
                                               "--out", str(tmp_path / "o")]):
        assert main([*command, option, value]) == 2
        err = capsys.readouterr().err
        expected = "a positive integer" if option == "--prune-rows-below" else "a positive number"
        assert f"config error: {option}" in err and expected in err and repr(value) in err, err
    assert not os.path.exists(tmp_path / "base") and not os.path.exists(tmp_path / "o")


@pytest.mark.slow
def test_usage_pruning_is_refused_for_a_checkpoint_without_counts(trained_small, tmp_path, capsys):
    """A model trained before counting existed: its checkpoint, without the "usage" object, exports, but not
    with --prune-rows-below."""
    model_dir, data = trained_small
    old = str(tmp_path / "old")
    shutil.copytree(model_dir, old, ignore=shutil.ignore_patterns("ckpt-*"))
    latest = tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints"))
    reader = tf.train.load_checkpoint(latest)
    names = [n for n in reader.get_variable_to_shape_map() if n.split("/")[0] not in ("usage", "data")]  # (the
    # input position is a variant tensor numpy cannot hold; the export never reads it)
    target = os.path.join(old, "checkpoints", os.path.basename(latest))
    tf.raw_ops.SaveV2(prefix=target, tensor_names=names, shape_and_slices=[""] * len(names),
                      tensors=[reader.get_tensor(n) for n in names])
    with open(os.path.join(old, "checkpoints", "checkpoint"), "w") as fh:  # the state file names it alone
        fh.write(f'model_checkpoint_path: "{os.path.basename(target)}"\n'
                 f'all_model_checkpoint_paths: "{os.path.basename(target)}"\n')
    assert read_counts(target) is None and read_counts(latest) is not None
    assert main(["export", KUAIRAND_SPEC, "--model-dir", old, "--export-base", str(tmp_path / "base"),
                 "--data", data, "--prune-rows-below", "2"]) == 2
    err = capsys.readouterr().err
    assert f"export error: {target}: no usage counts (the model was trained before training counted them): " \
           "--prune-rows-below 2 cannot be applied" in err
    assert not os.path.exists(tmp_path / "base")


@pytest.mark.slow
def test_a_lean_export_stores_every_row_within_half_a_step_rare_ids_read_the_oov_row_and_it_verifies(
        exported_lean_small, exported_small, kuairand_heldout, capsys):
    result, (plain, _) = exported_lean_small, exported_small
    with open(os.path.join(result.path, MANIFEST)) as fh:
        manifest = json.load(fh)
    assert manifest["embeddings"] == "int8" and manifest["export_options"]["embeddings"] == "int8"
    assert manifest["prune_rules"] == manifest["export_options"]["prune_rules"] == {"rows_below": 2, "norm_below": 0.05}
    assert result.fingerprint != plain.fingerprint  # its item vectors are not the float32 export's
    by_table = {r.table: r for r in plain.pruning}
    recorded = {p["table"]: p for p in manifest["pruning"]}
    for r in result.pruning:
        assert r.embeddings == ("float32" if r.rows <= FLOAT32_MAX_ROWS else "int8") and r.max_abs_error < 0.01, r
        assert r.kept + r.zero_rows + r.never_updated + r.rare_rows + r.small_norm_rows == r.rows
        assert r.kept + r.small_norm_rows <= by_table[r.table].kept  # the rules only drop more rows
        assert r.bytes_after <= by_table[r.table].bytes_after, r
        for key in ("max_abs_error", "bytes_after", "rare_rows", "small_norm_rows", "rare_bytes", "small_norm_bytes"):
            assert recorded[r.table][key] == r.as_dict()[key], key
        assert recorded[r.table]["embeddings"] == r.embeddings
    report = {r.table: r for r in result.pruning}
    assert report["video"].rare_rows > 0 and report["user"].rare_rows > 0
    assert {r.embeddings for r in result.pruning} == {"float32", "int8"}  # small tables stay float32
    assert sum(r.small_norm_rows for r in result.pruning) > 0
    assert report["user_author"].usage_note == "no OOV row (hashed or bucketized ids)"
    assert report["video"].as_dict()["rare_bytes"] == report["video"].rare_rows * 20  # int8 rows at dim 16
    assert result.variables_bytes_after < plain.variables_bytes_after

    # Rare video ids read the learned OOV row (trained by the id dropout), not the zero row
    opened = open_export(result.path)
    index = opened.loaded.embedding_tables["video"]["index"].numpy()
    counts, _ = read_counts(manifest["checkpoint"])
    rare = np.flatnonzero(counts["embedding_video"] < 2)[1:]  # row 0 is the OOV row itself
    assert index[0] != ZERO_ROW and len(rare) > 0 and np.all(index[rare] == index[0])

    assert main(["verify-export", result.path, "--data", kuairand_heldout, "--batches", "1"]) == 0
    out = capsys.readouterr().out
    assert "stored rows (int8) vs the checkpoint's" in out and "FAIL" not in out
    assert "export vs trained model, its tables stored as int8, on 256 rows" in out
    assert "checkpoint as trained -> export (pruning's and the int8 format's effect):" in out
    assert f"{result.path}: verified" in out


@pytest.mark.slow
def test_the_lean_signatures_need_the_remapped_dequantized_model_and_a_wrong_stored_row_is_caught(
        exported_lean_small, trained_small, spec, kuairand_heldout):
    """The reference matters: the model without the rules' remap, and the unrounded one, miss the lean export by
    more than the tolerance; the model with the same remap and dequantized tables meets it; every stored row lies
    within half a step of the checkpoint's row (the OOV row, for a rare one); and a stored value moved by one step
    is found."""
    model_dir, _ = trained_small
    opened = open_export(exported_lean_small.path)
    model = load_trained(spec, model_dir, kuairand_heldout)
    slots = table_slots(model)
    plain, lean = prune_plan(model, model.checkpoint_path), prune_plan(model, model.checkpoint_path, LEAN_RULES)
    assert lean["video"].count(RARE) > 0 and np.all(lean["video"].reads[lean["video"].reason == RARE] == 0)

    def read_as(plans: dict) -> None:  # each table as an export of these plans reads it (`apply_pruning`)
        for label, p in plans.items():
            slots[label].layer.embeddings.assign(p.served())

    read_as(plain)  # zero and never-updated rows only: not the lean export's rows
    batch = next(iter(make_pipeline(spec, kuairand_heldout, InputConfig(batch_size=64, shuffle_buffer=0))))
    features, n = batch["features"], int(tf.shape(batch["sample_weight"])[0])
    names = ("user_embedding", "item_embedding")  # verify-export compares every signature (the test above)

    def export_minus_model(name: str) -> float:
        inputs = signature_inputs(spec, name, features, n, lambda items: model.item_vector(items).numpy())
        got = call_signature(opened.loaded.signatures[name], inputs, name)
        want = reference_outputs(model, name, features, n)
        return max(float(np.max(np.abs(got[k] - v))) for k, v in want.items())

    round_tables(model, "int8")
    assert max(export_minus_model(name) for name in names) > 10 * TOLERANCE  # the rare ids read other rows
    read_as(lean)  # the checkpoint as the lean export reads it (the plans hold the trained values)
    assert max(export_minus_model(name) for name in names) > 10 * TOLERANCE  # not rounded yet
    checked = check_stored_rows(model, opened.loaded, "int8")
    assert set(checked) == set(table_slots(model)) and all(bad == 0 for _, bad in checked.values())
    assert max(diff for diff, _ in checked.values()) > 1e-4  # the rows did round
    stored = opened.loaded.embedding_tables["video"]
    values, index = stored["values"].numpy(), stored["index"].numpy()
    moved = values.copy()
    compact = int(index[np.flatnonzero(index)[0]])  # a kept video row (the OOV row: rare rows read it too)
    moved[compact, int(np.argmin(values[compact]))] += 1  # one step off: beyond half a step
    stored["values"].assign(moved)
    found = check_stored_rows(model, opened.loaded, "int8")
    assert found["video"][1] == np.sum(index == compact) > 0
    assert all(bad == 0 for t, (_, bad) in found.items() if t != "video")
    stored["values"].assign(values)

    round_tables(model, "int8")
    assert max(export_minus_model(name) for name in names) <= TOLERANCE
