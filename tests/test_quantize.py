"""Embedding formats at export (`serving.savedmodel.quantize`): the row-wise int8 and float16 arithmetic, and
quantized exports of `trained_small` checked against its checkpoint."""
import trainer  # noqa: F401  (legacy Keras before TensorFlow)

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from serving.savedmodel.export import export_model
from serving.savedmodel.layout import MANIFEST
from serving.savedmodel.prune import round_tables, table_slots, zero_never_updated
from serving.savedmodel.quantize import FORMATS, dequantize, half_step, quantize, row_bytes
from serving.savedmodel.opening import open_export
from serving.savedmodel.requests import call_signature
from serving.savedmodel.verify import TOLERANCE, check_stored_rows, reference_outputs
from serving.savedmodel.warmup import signature_inputs
from trainer.cli import main
from trainer.data.input_config import InputConfig
from trainer.data.pipeline import make_pipeline
from trainer.errors import ExportError
from trainer.training.trained import load_trained

from conftest import KUAIRAND_SPEC


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


@pytest.fixture(scope="session")
def exported_int8_small(trained_small, spec, tmp_path_factory):
    """The int8 export of `trained_small` (pruned, every signature), version 1 of its own base."""
    model_dir, data = trained_small
    base = str(tmp_path_factory.mktemp("export_int8"))
    return export_model(spec, model_dir, base, sample_data=data, measure_unpruned=False, log=lambda *_: None,
                        embeddings="int8")


@pytest.mark.slow
def test_an_int8_export_stores_every_row_within_half_a_step_and_matches_the_dequantized_model(
        exported_int8_small, exported_small, kuairand_heldout, capsys):
    result, (plain, _) = exported_int8_small, exported_small
    with open(os.path.join(result.path, MANIFEST)) as fh:
        manifest = json.load(fh)
    assert manifest["embeddings"] == "int8" and manifest["export_options"]["embeddings"] == "int8"
    assert result.fingerprint != plain.fingerprint  # its item vectors are not the float32 export's
    by_table = {r.table: r for r in plain.pruning}
    recorded = {p["table"]: p for p in manifest["pruning"]}
    for r in result.pruning:
        assert r.embeddings == "int8" and 0 < r.max_abs_error < 0.01, r
        assert r.kept == by_table[r.table].kept  # the format changes how rows are stored, not which are kept
        assert r.bytes_after < by_table[r.table].bytes_after
        assert recorded[r.table]["max_abs_error"] == r.max_abs_error
        assert recorded[r.table]["bytes_after"] == r.bytes_after and recorded[r.table]["embeddings"] == "int8"
    assert result.variables_bytes_after < plain.variables_bytes_after

    assert main(["verify-export", result.path, "--data", kuairand_heldout, "--batches", "1"]) == 0
    out = capsys.readouterr().out
    assert "stored rows (int8) vs the checkpoint's" in out and "FAIL" not in out
    assert "export vs trained model, its tables stored as int8, on 256 rows" in out
    assert "checkpoint as trained -> export (pruning's and the int8 format's effect):" in out
    assert f"{result.path}: verified" in out


@pytest.mark.slow
def test_the_int8_signatures_need_the_dequantized_model_and_a_wrong_stored_row_is_caught(
        exported_int8_small, trained_small, spec, kuairand_heldout):
    """The reference matters: the unrounded model misses the int8 export by more than the tolerance, the model
    with the same dequantized tables meets it; every stored row lies within half a step of the checkpoint's;
    and a stored value moved by one step is found."""
    model_dir, _ = trained_small
    opened = open_export(exported_int8_small.path)
    model = load_trained(spec, model_dir, kuairand_heldout)
    zero_never_updated(model, model.checkpoint_path)  # the checkpoint as pruning treats it
    batch = next(iter(make_pipeline(spec, kuairand_heldout, InputConfig(batch_size=64, shuffle_buffer=0))))
    features, n = batch["features"], int(tf.shape(batch["sample_weight"])[0])
    names = ("user_embedding", "item_embedding")  # verify-export compares every signature (the test above)

    def export_minus_model(name: str) -> float:
        inputs = signature_inputs(spec, name, features, n, lambda items: model.item_vector(items).numpy())
        got = call_signature(opened.loaded.signatures[name], inputs, name)
        want = reference_outputs(model, name, features, n)
        return max(float(np.max(np.abs(got[k] - v))) for k, v in want.items())

    assert max(export_minus_model(name) for name in names) > 10 * TOLERANCE
    checked = check_stored_rows(model, opened.loaded, "int8")
    assert set(checked) == set(table_slots(model)) and all(bad == 0 for _, bad in checked.values())
    assert max(diff for diff, _ in checked.values()) > 1e-4  # the rows did round
    stored = opened.loaded.embedding_tables["video"]
    values, index = stored["values"].numpy(), stored["index"].numpy()
    moved = values.copy()
    compact = int(index[np.flatnonzero(index)[0]])  # a kept video row
    moved[compact, int(np.argmin(values[compact]))] += 1  # one step off: beyond half a step
    stored["values"].assign(moved)
    found = check_stored_rows(model, opened.loaded, "int8")
    assert found["video"][1] == 1 and all(bad == 0 for t, (_, bad) in found.items() if t != "video")
    stored["values"].assign(values)

    round_tables(model, "int8")
    assert max(export_minus_model(name) for name in names) <= TOLERANCE
