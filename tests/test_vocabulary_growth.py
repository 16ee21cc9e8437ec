"""`analyze --extend PREV` (`trainer.preprocessing.extend`): a previous fit grown with a new day of data. Known ids
keep their indices and add up their counts, new ids are appended by frequency (min_count on the new day, up to
max_size, the rest counted as left out), a lowered max_size drops the tail, a dtype change is refused, new tables
and statistics are fitted, unchanged statistics kept (the new day's figures recorded beside), and the record
survives a save and load. Hand-written four- and seven-row files; no training."""
import io
import json
import math
import os
import shutil
from contextlib import redirect_stdout

import numpy as np
import pytest

from trainer.cli import main
from trainer.data.writers import Column, write_tfrecord
from trainer.errors import ConfigError, ModelDirError
from trainer.preprocessing.analyze import analyze
from trainer.preprocessing.extend import extend_preprocessing
from trainer.preprocessing.fitted import FILE_NAME, Preprocessing
from trainer.spec.loader import load_spec

SPEC = """name: growth
data: {format: tfrecord}
labels: [{name: click, type: binary}]
features:
  - {name: user_id, kind: categorical, side: user, dtype: int64, vocabulary: USER_VOCAB, embedding: {dim: 4}}
  - {name: hist, kind: sequence, side: user, dtype: int64, max_length: 3, vocabulary: {source: data},
     embedding: {table: item, dim: 4}}
  - {name: age, kind: numeric, side: user, transform: [zscore]}
  - {name: item_id, kind: categorical, side: item, dtype: int64, vocabulary: {source: data},
     embedding: {table: item, dim: 4}}
  - {name: tag, kind: categorical, side: item, dtype: TAG_DTYPE, vocabulary: {source: data}, embedding: {dim: 4}}
  - {name: price, kind: numeric, side: item, transform: PRICE_STEPS}
"""
# the next day's spec: a new table (city) and a new statistic (duration)
ADDED = """  - {name: city, kind: categorical, side: user, dtype: string, vocabulary: {source: data},
     embedding: {dim: 4}}
  - {name: duration, kind: numeric, side: item, transform: [zscore]}
"""

DAY1 = {"user_id": [1, 2, 3, 1], "hist": [[5, 6], [], [7], [5]], "item_id": [5, 6, 7, 6],
        "tag": ["a", "b", "a", "c"], "city": ["x", "x", "y", "y"], "age": [20., 30., 40., 50.],
        "price": [1., 3., 7., 15.], "duration": [1., 2., 3., 4.], "click": [0, 1, 0, 1]}
DAY2 = {"user_id": [4, 2, 9, 9, 9, 4, 11], "hist": [[8], [8, 10], [], [10], [5], [], [12]],
        "item_id": [10, 8, 6, 12, 13, 5, 10], "tag": ["d", "e", "a", "d", "e", "f", "a"],
        "city": ["z", "x", "z", "z", "w", "x", "x"], "age": [25., 35., 45., 55., 65., 75., 85.],
        "price": [2., 4., 6., 8., 10., 12., 14.], "duration": [5., 5., 6., 6., 7., 7., 8.],
        "click": [1, 0, 1, 0, 1, 0, 1]}
TYPES = {"user_id": "int", "hist": "int_list", "item_id": "int", "tag": "str", "city": "str", "age": "float",
         "price": "float", "duration": "float", "click": "int"}


def write_spec(path, user_vocab="{source: data}", tag_dtype="string", price_steps="[log1p, zscore]",
               added="") -> str:
    path.write_text(SPEC.replace("USER_VOCAB", user_vocab).replace("TAG_DTYPE", tag_dtype)
                    .replace("PRICE_STEPS", price_steps) + added)
    return str(path)


def write_day(path, values: dict) -> str:
    write_tfrecord(str(path), [Column(n, TYPES[n], v) for n, v in values.items()], range(len(values["click"])),
                   "none")
    return str(path)


@pytest.fixture(scope="module")
def days(tmp_path_factory):
    """(folder, day 2's file, day 2's spec, the day-1 fit as an analyze output, a model directory holding it)."""
    folder = tmp_path_factory.mktemp("growth")
    day1, day2 = write_day(folder / "day1.tfrecord", DAY1), write_day(folder / "day2.tfrecord", DAY2)
    previous = str(folder / "day1_fit")
    assert main(["analyze", write_spec(folder / "day1.yaml"), "--data", day1, "--out", previous]) == 0
    model_dir = folder / "model"
    shutil.copytree(previous, model_dir / "preprocessing")
    spec2 = write_spec(folder / "day2.yaml", user_vocab="{source: data, min_count: 2, max_size: 4}",
                       price_steps="[zscore]", added=ADDED)
    return folder, day2, spec2, previous, str(model_dir)


@pytest.fixture(scope="module")
def extended(days):
    """`analyze --extend MODEL_DIR` of day 2 with day 2's spec: (its printed output, the fit it saved)."""
    folder, day2, spec2, _, model_dir = days
    out = str(folder / "day2_fit")
    printed = io.StringIO()
    with redirect_stdout(printed):
        assert main(["analyze", spec2, "--data", day2, "--out", out, "--extend", model_dir]) == 0
    return printed.getvalue(), Preprocessing.load(out)


def test_known_ids_keep_their_indices_counts_add_up_and_new_ids_follow_by_frequency(days, extended):
    _, fit = extended
    previous = Preprocessing.load(days[3])
    assert previous.vocabularies["item"] == [5, 6, 7] and previous.counts["item"] == [3, 3, 2]
    # day 2's items: 10 x4, 8 x3, 12 x2, 5 x2, 6 x1, 13 x1
    assert fit.vocabularies["item"] == [5, 6, 7, 10, 8, 12, 13]
    assert fit.counts["item"] == [3 + 2, 3 + 1, 2 + 0, 4, 3, 2, 1]
    assert previous.vocabularies["tag"] == ["a", "b", "c"]
    assert fit.vocabularies["tag"] == ["a", "b", "c", "d", "e", "f"]  # d and e tie at 2: by id
    assert fit.counts["tag"] == [2 + 2, 1, 1, 2, 2, 1]
    assert fit.rows == 7  # the new day's rows: the job's steps per epoch
    assert fit.extension["tables"]["item"] == {"status": "extended", "kept": 3, "added": 4, "left_out_ids": 0,
                                               "left_out_occurrences": 0, "dropped": 0}


def test_min_count_on_the_new_day_then_max_size_leaves_new_ids_out_counted(extended):
    _, fit = extended
    # day 1's users 1 (x2), 2, 3; day 2's: 9 x3, 4 x2, 2 x1, 11 x1. min_count 2 on day 2 alone: 9 and 4 (not 11);
    # max_size 4 has room for one: 9. Known user 2 stays though day 2 saw it once.
    assert fit.vocabularies["user_id"] == [1, 2, 3, 9]
    assert fit.counts["user_id"] == [2, 1 + 1, 1, 3]
    assert fit.extension["tables"]["user_id"] == {"status": "extended", "kept": 3, "added": 1, "left_out_ids": 1,
                                                  "left_out_occurrences": 2, "dropped": 0}


def test_a_lowered_max_size_keeps_the_previous_head_and_counts_what_it_dropped(days):
    folder, day2, _, previous_dir, _ = days
    spec = load_spec(write_spec(folder / "shrunk.yaml", user_vocab="{source: data, max_size: 2}"))
    fit = extend_preprocessing(Preprocessing.load(previous_dir), spec, day2, batch_size=3)
    assert fit.vocabularies["user_id"] == [1, 2] and fit.counts["user_id"] == [2, 2]
    assert fit.extension["previous"] == previous_dir
    # 9, 4 and 11 left out (6 occurrences); 3 dropped
    assert fit.extension["tables"]["user_id"] == {"status": "extended", "kept": 2, "added": 0, "left_out_ids": 3,
                                                  "left_out_occurrences": 6, "dropped": 1}


def test_a_table_whose_dtype_changed_is_refused_naming_it_before_reading_data(days):
    folder, _, _, previous_dir, _ = days
    spec_path = write_spec(folder / "int_tags.yaml", tag_dtype="int64")
    with pytest.raises(ConfigError) as info:
        extend_preprocessing(Preprocessing.load(previous_dir), load_spec(spec_path), str(folder / "no such file"))
    assert str(info.value) == (
        f"{spec_path}: features.tag.dtype: table 'tag' (features tag) held string ids in {previous_dir}/{FILE_NAME} "
        "and holds int64 ids now: its vocabulary cannot be extended nor its rows carried by id; give the table "
        "another name (it then starts fresh), or fit a new model (without --extend / --warm-start)")


def test_new_tables_and_statistics_are_fitted_and_unchanged_statistics_kept_with_their_drift(days, extended):
    _, day2, spec2, previous_dir, _ = days
    _, fit = extended
    fresh = analyze(load_spec(spec2), day2)  # what a plain fit of day 2 gives
    previous = Preprocessing.load(previous_dir)
    assert fit.vocabularies["city"] == fresh.vocabularies["city"] == ["x", "z", "w"]
    assert fit.counts["city"] == fresh.counts["city"]
    assert fit.extension["tables"]["city"] == {"status": "fitted", "kept": 0, "added": 3, "left_out_ids": 0,
                                               "left_out_occurrences": 0, "dropped": 0}
    assert fit.stats["age"] == previous.stats["age"] != fresh.stats["age"]  # kept: its definition is unchanged
    assert fit.extension["stats"]["age"] == {"status": "kept", "mean": 35.0, "std": math.sqrt(125.0),
                                             "new_mean": 55.0, "new_std": fresh.stats["age"].std}
    assert fresh.stats["age"].std == pytest.approx(np.std(DAY2["age"]))
    for name, reason in (("price", "previously fitted with steps ['log1p'] (the spec: [])"),
                         ("duration", "not in the previous fit")):
        assert fit.stats[name] == fresh.stats[name]
        assert fit.extension["stats"][name] == {"status": "fitted", "reason": reason}
    assert fit.definitions == fresh.definitions


def test_the_command_line_extends_a_model_directory_or_an_analyze_output_and_names_a_bad_prev(days, extended,
                                                                                                 capsys):
    folder, day2, spec2, previous_dir, model_dir = days
    printed, fit = extended
    lines = printed.splitlines()
    assert lines[0] == f"extending {model_dir}/preprocessing with 7 rows"
    assert lines[1].split() == ["table", "status", "ids", "kept", "added", "left", "out", "(max_size)", "dropped"]
    assert lines[3].split() == ["user_id", "extended", "4", "3", "1", "1", "(2", "occurrences)", "0"]
    assert [line.split()[:2] for line in lines[4:6]] == [["item", "extended"], ["tag", "extended"]]
    assert lines[6].split()[:2] == ["city", "fitted"]
    assert lines[9].split() == ["age", "kept", "35", "/", "11.18", "55", "/", "20", "its", "definition", "is",
                                "unchanged"]
    assert lines[10].split() == ["price", "fitted", "8", "/", "4", "(the", "same)", "previously", "fitted", "with",
                                 "steps", "['log1p']", "(the", "spec:", "[])"]
    assert lines[-1] == f"fitted on 7 rows -> {folder}/day2_fit/{FILE_NAME}"
    # an analyze output extends the same way
    out = str(folder / "from_analyze_output")
    assert main(["analyze", spec2, "--data", day2, "--out", out, "--extend", previous_dir]) == 0
    capsys.readouterr()
    again = Preprocessing.load(out)
    assert again.vocabularies == fit.vocabularies and again.stats == fit.stats
    assert again.extension["previous"] == previous_dir
    for bad in (str(folder), str(folder / "missing")):
        assert main(["analyze", spec2, "--data", day2, "--out", str(folder / "never"), "--extend", bad]) == 2
        assert capsys.readouterr().err == (
            f"model directory error: --extend {bad}: neither a model directory (no preprocessing/{FILE_NAME}) nor "
            f"a `prerank analyze` output (no {FILE_NAME}); a model trained as a student of a separate teacher "
            "extends its teacher's directory\n")
    assert not os.path.exists(folder / "never")


def test_the_extension_record_is_saved_loaded_and_checked(days, extended, tmp_path):
    _, fit = extended
    assert Preprocessing.load(days[3]).extension == {}  # a plain fit
    path = os.path.join(tmp_path, FILE_NAME)
    fit.save(str(tmp_path))
    assert Preprocessing.load(str(tmp_path)) == fit
    saved = json.loads(open(path).read())
    for damage, key, expected in (
            (lambda e: e["tables"]["user_id"].update(kept="3"), "extension.tables.user_id.kept",
             'expected an integer, got "3"'),
            (lambda e: e["stats"]["age"].update(status="refitted"), "extension.stats.age.status",
             "expected one of 'kept', 'fitted', got 'refitted'"),
            (lambda e: e["stats"]["age"].pop("new_std"), "extension.stats.age.new_std", "missing"),
            (lambda e: e.pop("previous"), "extension.previous", "missing")):
        record = json.loads(json.dumps(saved))
        damage(record["extension"])
        with open(path, "w") as fh:
            json.dump(record, fh)
        with pytest.raises(ModelDirError) as info:
            Preprocessing.load(str(tmp_path))
        assert str(info.value).startswith(f"{path}: {key}: {expected} (damaged, or not written by prerank")
    saved["extension"] = []
    with open(path, "w") as fh:
        json.dump(saved, fh)
    with pytest.raises(ModelDirError, match="extension: expected a JSON object, got"):
        Preprocessing.load(str(tmp_path))
