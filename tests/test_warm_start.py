"""Daily retraining: `train --warm-start PREV` carries a previous model into a new model directory.

Every run here starts from `trained_small` (12 steps on the KuaiRand slice) and trains a few steps on the held-out
slice's rows (2022-04-30: many users and videos the slice never saw). A row untouched by the new run (its usage
count unchanged since the warm start) still holds exactly what the warm start put there, which is how the tests
see the carried values through a trained checkpoint.
"""
import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from conftest import KUAIRAND_SPEC, SMALL_MODEL_OVERRIDES
from serving.savedmodel.export import export_model
from trainer.cli import main
from trainer.errors import ModelDirError
from trainer.preprocessing.fitted import Preprocessing
from trainer.training.checkpoints import SavedObjects, latest_checkpoint
from trainer.training.run_record import recorded_config, warm_start_record
from trainer.training.warm_start import field_rows, read_input_layouts

pytestmark = pytest.mark.slow

VALUE = "/.ATTRIBUTES/VARIABLE_VALUE"
TABLE = "model/encoder/tables/{}/embeddings"
SLOT = "/.OPTIMIZER_SLOT/ftrl/{}"
RUN = ["--no-validation", "--set", "training.max_steps=2", "--set", "training.deterministic=true",
       "--set", "training.checkpoint_every=100"]


def overrides(*extra: str) -> list[str]:
    return [a for o in (*SMALL_MODEL_OVERRIDES, *extra) for a in ("--set", o)]


def warm_start(spec: str, previous: str, model_dir: str, data: str, *args: str, sets=()) -> str:
    assert main(["train", spec, "--model-dir", model_dir, "--data", data, "--warm-start", previous, *RUN, *args,
                 *overrides(*sets)]) == 0
    return model_dir


def checkpoint(model_dir: str):
    return tf.train.load_checkpoint(latest_checkpoint(model_dir))


def vocabulary(model_dir: str, table: str) -> list:
    return Preprocessing.load(os.path.join(model_dir, "preprocessing")).vocabularies[table]


def edited_spec(folder, edits: list[tuple[str, str]]) -> str:
    with open(KUAIRAND_SPEC, encoding="utf-8") as fh:
        text = fh.read()
    for old, new in edits:
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    text = text.replace("train: ../out", f"train: {os.path.dirname(KUAIRAND_SPEC)}/../out")
    path = folder / "edited.yaml"
    path.write_text(text)
    return str(path)


# The spec edits of the run with a changed spec: a feature removed (its table is dropped, the user tower loses an
# input), a table's dimension changed, a feature added, a teacher task renamed (the old head dropped, the new fresh)
SPEC_EDITS = [
    ("  - {name: onehot_feat17, kind: categorical, side: user, dtype: int64, vocabulary: {source: data}, "
     "embedding: {dim: 16}, default: -1}\n", ""),
    ("vocabulary: {source: data}, embedding: {dim: 16}, default: -1}\n  - name: tags",
     "vocabulary: {source: data}, embedding: {dim: 8}, default: -1}\n"
     "  - {name: author_again, source: author_id, kind: categorical, side: item, dtype: int64, "
     "vocabulary: {source: data}, embedding: {dim: 8}}\n  - name: tags"),
    ("  - {name: like, column: is_like, type: binary}", "  - {name: liked, column: is_like, type: binary}"),
]


@pytest.fixture(scope="module")
def changed_run(trained_small, kuairand_heldout, tmp_path_factory):
    """A warm start with an edited spec (`SPEC_EDITS`), other item tower sizes, and vocabularies fitted afresh on
    the new rows (`--refit`): ids move to new indices."""
    previous, _ = trained_small
    folder = tmp_path_factory.mktemp("warm_changed")
    return warm_start(edited_spec(folder, SPEC_EDITS), previous, str(folder / "model"), kuairand_heldout, "--refit",
                      sets=["model.student.item_tower=[24,16]"])


def warm_record(model_dir: str) -> dict:
    with open(os.path.join(model_dir, "run.json"), encoding="utf-8") as fh:
        return json.load(fh)["warm_start"]


@pytest.fixture(scope="module")
def extended_runs(trained_small, kuairand_heldout, tmp_path_factory):
    """Two identical warm starts under training.deterministic, vocabularies extended (the default)."""
    previous, _ = trained_small
    folder = tmp_path_factory.mktemp("warm_extend")
    return [warm_start(KUAIRAND_SPEC, previous, str(folder / name), kuairand_heldout) for name in ("a", "b")]


def test_rows_are_carried_by_id_across_a_refit_vocabulary(trained_small, changed_run):
    previous, _ = trained_small
    before, after = checkpoint(previous), checkpoint(changed_run)
    old_ids, new_ids = vocabulary(previous, "video"), vocabulary(changed_run, "video")
    old_index = {v: i + 1 for i, v in enumerate(old_ids)}  # row = 1 OOV row + position
    key = TABLE.format("video")
    rows = {name: (before.get_tensor(key + name + VALUE), after.get_tensor(key + name + VALUE))
            for name in ("", SLOT.format("accumulator"), SLOT.format("linear"))}
    counts = (before.get_tensor(f"usage/counts/embedding_video{VALUE}"),
              after.get_tensor(f"usage/counts/embedding_video{VALUE}"))
    untouched_known = moved = untouched_new = 0
    for row, video in enumerate(new_ids, start=1):
        old = old_index.get(video)
        if old is None:  # new to the previous model: it starts from the OOV row it read there, counted from zero
            if counts[1][row] == 0:
                np.testing.assert_array_equal(rows[""][1][row], rows[""][0][0])
                untouched_new += 1
            continue
        assert counts[1][row] >= counts[0][old]  # its count is carried, and this run's reads are added
        if counts[1][row] == counts[0][old]:  # not read by the new run: exactly what was carried
            for name, (was, now) in rows.items():
                np.testing.assert_array_equal(now[row], was[old], err_msg=f"video {video}{name}")
            untouched_known += 1
            moved += old != row
    assert untouched_known > 50 and moved > 50 and untouched_new > 0
    assert np.abs(rows[""][0][0]).sum() > 0  # the video OOV row was trained (id dropout), so the check above bites


def test_the_run_continues_the_step_and_records_what_it_carried(trained_small, changed_run):
    previous, _ = trained_small
    record = warm_record(changed_run)
    assert record["from"] == os.path.abspath(previous) and record["step"] == 12
    assert int(checkpoint(changed_run).get_tensor("step" + VALUE)) == 14  # 12 carried + max_steps 2
    assert record["carried"]["encoder/tables/video"] == "by id"
    assert record["carried"]["encoder/tables/user_author"] == "row by row"  # hashed: same buckets
    video = record["tables"]["encoder/tables/video"]
    assert video["carried"] > 0 and video["new_ids_from_oov"] > 0
    assert video["rows"] == len(vocabulary(changed_run, "video")) + 1


def test_a_deterministic_warm_start_gives_the_same_weights_twice(extended_runs):
    a, b = (checkpoint(d) for d in extended_runs)
    keys = [k for k in a.get_variable_to_shape_map() if k.startswith("model/")]
    assert len(keys) > 100
    for key in keys:
        np.testing.assert_array_equal(a.get_tensor(key), b.get_tensor(key), err_msg=key)


def test_extended_vocabularies_keep_every_index(trained_small, extended_runs):
    previous, _ = trained_small
    for table in ("video", "user"):
        before, after = vocabulary(previous, table), vocabulary(extended_runs[0], table)
        assert after[:len(before)] == before and len(after) > len(before)


def test_a_warm_started_model_exports_as_the_next_version(trained_small, exported_small, extended_runs,
                                                          kuairand_heldout, spec, tmp_path):
    exported, _ = exported_small
    base = tmp_path / "base"
    shutil.copytree(exported.path, base / "1")
    result = export_model(spec, extended_runs[0], str(base), sample_data=kuairand_heldout, measure_unpruned=False,
                          student_only=True, log=lambda *_: None)
    assert result.version == 2
    loaded = tf.saved_model.load(result.path)
    assert "pairwise" in loaded.signatures
    # carried rows the new run did not touch are trained rows: pruning keeps them (it drops the rows no run updated)
    previous, _ = trained_small
    before, after = checkpoint(previous), checkpoint(extended_runs[0])
    key = TABLE.format("video")
    slots = {when: [c.get_tensor(key + SLOT.format(n) + VALUE) for n in ("accumulator", "linear")]
             for when, c in (("before", before), ("after", after))}
    initial = np.float32(recorded_config(previous).model.ftrl.initial_accumulator)  # a never-updated row's
    never = {when: ((acc == initial) & (lin == 0)).all(axis=1) for when, (acc, lin) in slots.items()}
    counts = [c.get_tensor(f"usage/counts/embedding_video{VALUE}") for c in (before, after)]
    old = len(counts[0])  # extended: the previous rows keep their indices
    untouched_trained = (counts[1][:old] == counts[0]) & ~never["before"]
    assert untouched_trained.sum() > 50 and not never["after"][:old][untouched_trained].any()
    pruned = {p.table: p for p in result.pruning}
    assert pruned["video"].never_updated == int(never["after"].sum())


def test_spec_changes_keep_what_they_can(changed_run):
    record = warm_record(changed_run)
    fresh, carried = record["fresh"], record["carried"]
    assert "dimension changed (16 -> 8)" in fresh["encoder/tables/music_type"]
    assert fresh["encoder/tables/author_again"] == "not in the previous model"  # a new feature's own table
    assert "shapes changed" in fresh["item_tower"]  # its sizes changed
    # one input fewer: the first layer's rows of the other inputs carried, field by field
    assert carried["user_tower"] == "by input field; inputs dropped: onehot_feat17"
    assert carried["teacher/experts/0"] == carried["teacher/gates/click"] == (
        "by input field; new inputs fresh: music_type, author_again; inputs dropped: onehot_feat17, music_type")
    assert fresh["teacher/towers/liked"] == fresh["teacher/gates/liked"] == "not in the previous model"
    assert carried["teacher/towers/click"] == "whole" and carried["similarity"] == "whole"
    assert {"encoder/tables/onehot_feat17", "teacher/towers/like", "teacher/gates/like"} <= set(record["dropped"])


def test_input_kernel_rows_are_matched_by_field():
    now = [("a", 2), ("new", 1), ("c", 3), ("resized", 2)]
    before = [("c", 3), ("gone", 4), ("a", 2), ("resized", 1)]
    rows_now, rows_before = field_rows(now, before)
    assert rows_now.tolist() == [0, 1, 3, 4, 5] and rows_before.tolist() == [7, 8, 0, 1, 2]


def test_a_table_whose_ids_change_type_is_refused_naming_the_feature(trained_small, kuairand_heldout, tmp_path,
                                                                      capsys):
    previous, _ = trained_small
    spec = edited_spec(tmp_path, [("  - {name: video_type, kind: categorical, side: item, dtype: string,",
                                   "  - {name: video_type, kind: categorical, side: item, dtype: int64,")])
    code = main(["train", spec, "--model-dir", str(tmp_path / "model"), "--data", kuairand_heldout,
                 "--warm-start", previous, *RUN, *overrides()])
    err = capsys.readouterr().err
    assert code != 0
    assert "features.video_type.dtype" in err and "held string ids" in err and "int64 ids now" in err
    assert not os.path.exists(tmp_path / "model")  # refused before the new model directory is written


def test_a_previous_model_that_is_not_one_is_refused_naming_it(kuairand_heldout, tmp_path, capsys):
    for previous, why in ((tmp_path / "nothing", "not a trained model directory (no run.json)"),
                          (tmp_path / "untrained", "no checkpoint in")):
        if previous.name == "untrained":
            previous.mkdir()
            (previous / "run.json").write_text(json.dumps({"spec": {"features": {}, "labels": {}},
                                                           "config": {"model": {}, "training": {}}}))
        code = main(["train", KUAIRAND_SPEC, "--model-dir", str(tmp_path / "model"), "--data", kuairand_heldout,
                     "--warm-start", str(previous), *RUN, *overrides()])
        assert code == 2 and f"--warm-start {previous}: {why}" in capsys.readouterr().err
        assert not os.path.exists(tmp_path / "model")


def test_saved_rows_are_read_slice_by_slice(tmp_path):
    values = np.arange(300, dtype=np.float32).reshape(100, 3)
    path = tf.train.Checkpoint(table=tf.Variable(values)).write(str(tmp_path / "ckpt"))
    saved = SavedObjects(path)
    key = saved.value_key(saved.node("table"))
    rows = np.array([99, 0, 5, 50, 5, 61, 62, 98])
    for gap, span in ((10, 20), (4096, 1 << 20), (0, 1)):
        np.testing.assert_array_equal(saved.read_rows(key, rows, gap, span), values[rows])
    assert saved.read_rows(key, np.array([], np.int64)).shape == (0, 3)


def test_a_damaged_warm_start_record_or_part_fields_file_is_refused_naming_it(tmp_path):
    (tmp_path / "run.json").write_text(json.dumps({"spec": {"features": {}, "labels": {}},
                                                   "config": {"model": {}, "training": {}},
                                                   "warm_start": {"from": "x", "step": "12"}}))
    with pytest.raises(ModelDirError, match=r"run.json: 'warm_start' is not a warm-start record .*\"step\": \"12\""):
        warm_start_record(str(tmp_path))
    (tmp_path / "part_fields.json").write_text(json.dumps({"user_tower": [["user_id", "16"]]}))
    with pytest.raises(ModelDirError, match=r"part_fields.json: expected an object of part -> \[\[field, width\]"):
        read_input_layouts(str(tmp_path))
