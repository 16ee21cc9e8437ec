"""Hostile and malformed input at the entry points that read specs, configs and data: each case gets one clear
message naming the file, line, field or column and what was expected; nothing hangs (commands run in a
subprocess with a timeout, and a timeout fails the test) and nothing is written.

`prerank validate` and `prerank train` read the spec and config before importing TensorFlow, so these
subprocesses take a fraction of a second each.
"""
import os
import subprocess
import sys

import pytest

from conftest import REPO, spec_text
from trainer.data.input_config import InputConfig
from trainer.data.pipeline import make_pipeline
from trainer.data.writers import Column, write_csv, write_tfrecord
from trainer.errors import DataError
from trainer.spec.located_yaml import MAX_ALIASES, MAX_DEPTH, MAX_FILE_BYTES, MAX_VALUES
from trainer.spec.loader import load_spec

TIMEOUT = 60  # seconds; every case here answers in well under one

# Nine levels of nine aliases each: a few hundred bytes that expand to 9^9 (387 million) strings.
ALIAS_BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{b}: &{b} [{', '.join([f'*{a}'] * 9)}]\n" for a, b in zip("abcdefgh", "bcdefghi"))


def prerank(*args: str, cwd: str | None = None) -> tuple[int, str]:
    """(exit code, stderr + stdout) of `prerank ARGS` in a subprocess; a hang fails the test."""
    try:
        result = subprocess.run([sys.executable, "-m", "trainer.cli", *args], capture_output=True, text=True,
                                timeout=TIMEOUT, cwd=cwd or REPO)
    except subprocess.TimeoutExpired:
        pytest.fail(f"prerank {' '.join(args)} did not answer within {TIMEOUT} s")
    return result.returncode, result.stderr + result.stdout


def refused(*args: str) -> str:
    """The message of a command that must refuse its input (exit 2, no traceback)."""
    code, output = prerank(*args)
    assert code == 2, output
    assert "Traceback" not in output, output
    return output


def write(path, content: str | bytes) -> str:
    mode = "wb" if isinstance(content, bytes) else "w"
    with open(path, mode) as fh:
        fh.write(content)
    return str(path)


# ---- YAML: bounds and syntax ---------------------------------------------------------------------------------

def test_an_alias_bomb_is_refused_at_its_line_by_validate_train_config_and_set(tmp_path):
    bomb = write(tmp_path / "bomb.yaml", ALIAS_BOMB)
    model_dir = str(tmp_path / "model")
    expected = f"expands to more than {MAX_VALUES:,} values through aliases"
    assert f"{bomb}:6: <yaml>: this value {expected}" in refused("validate", bomb)
    assert f"{bomb}:6:" in refused("train", bomb, "--model-dir", model_dir)
    config_test = write(tmp_path / "spec.yaml", spec_text("config_test"))
    assert f"config error: {bomb}:6: <yaml>: this value {expected}" in refused(
        "train", config_test, "--config", bomb, "--model-dir", model_dir)
    inline = "[" + ", ".join(line.split(": ", 1)[1] for line in ALIAS_BOMB.splitlines()) + "]"  # one flow list
    message = refused("train", config_test, "--model-dir", model_dir, "--set", f"training.seed={inline}")
    assert "command line --set: training.seed: invalid YAML value" in message and expected in message
    assert not os.path.exists(model_dir)  # nothing written


@pytest.mark.parametrize("name, content, line, expected", [
    ("recursive", "name: x\nfeatures: &f [*f]\n", 2, "recursive alias: this anchored value contains itself"),
    ("deep", "name: " + "[" * (MAX_DEPTH + 5) + "]" * (MAX_DEPTH + 5) + "\n", 1,
     f"nesting deeper than {MAX_DEPTH} levels"),
    ("aliases", "a: &a 1\nb: [" + ", ".join(["*a"] * (MAX_ALIASES + 1)) + "]\n", 2,
     f"more than {MAX_ALIASES:,} alias uses"),
    ("bracket", "name: x\nlabels: []\nfeatures: [a, b\n", 4,
     "expected ',' or ']', but got '<stream end>' (while parsing a flow sequence that opened at line 3)"),
    ("quote", "name: \"spec\nlabels: []\n", 3, "(while scanning a quoted scalar that opened at line 1)"),
    ("block", "name: x\nfeatures:\n  - name: a\n    kind: numeric\n   side: user\n", 5,
     "(while parsing a block collection that opened at line 3)"),
    ("documents", "name: x\n---\nname: y\n", 2, "expected a single document in the stream (from line 1), "
                                                 "but found another document"),
])
def test_yaml_past_a_bound_or_broken_is_refused_naming_the_lines(tmp_path, name, content, line, expected):
    path = write(tmp_path / f"{name}.yaml", content)
    message = refused("validate", path)
    assert f"spec error: {path}:{line}: <yaml>: " in message and expected in message, message


@pytest.mark.parametrize("name, content, expected", [
    ("latin1", "name: caf\xe9\n".encode("latin-1"), ":1: <file>: not UTF-8 text: byte 0xe9 at line 1; save the "
                                                     "spec file as UTF-8"),
    ("binary", b"name: x\n" + os.urandom(64).replace(b"\n", b"") + b"\0" + os.urandom(64),
     ": <file>: binary content (a NUL byte) at line 2; expected a YAML text file"),
    ("large", b"# " + b"x" * MAX_FILE_BYTES + b"\n", f": <file>: the spec file is {MAX_FILE_BYTES + 3:,} bytes; "
                                                     f"expected at most {MAX_FILE_BYTES:,}"),
    ("list", b"[features, labels]\n", ":1: <document>: expected a mapping, got a list"),
    ("scalar", b"just some text\n", ":1: <document>: expected a mapping, got a string"),
])
def test_a_spec_that_is_not_yaml_text_or_not_a_mapping_gets_one_message(tmp_path, name, content, expected):
    path = write(tmp_path / f"{name}.yaml", content)
    message = refused("validate", path)
    assert message.startswith(f"spec error: {path}") and expected in message, message
    assert message.count(path) == 1, message  # one message, not a cascade of follow-on errors


# ---- spec: empty towers, sizes, vocabulary files -------------------------------------------------------------

def spec_with(tmp_path, old: str, new: str, count: int = 1) -> str:
    text = spec_text("config_test")
    assert old in text
    return write(tmp_path / "spec.yaml", text.replace(old, new, count))


def test_a_spec_without_features_or_without_an_item_feature_is_refused(tmp_path):
    text = spec_text("config_test")
    path = write(tmp_path / "empty.yaml", text[:text.index("features:")] + "features: []\n"
                 + text[text.index("labels:"):])
    assert "features: expected at least one feature (the student needs a user or context feature and an item " \
           "feature; the teacher reads them all)" in refused("validate", path)
    path = spec_with(tmp_path, "side: item", "side: user")
    assert "features: the student's item tower needs at least one item feature" in refused("validate", path)


@pytest.mark.parametrize("old, new, field, expected", [
    ("embedding: {dim: 4}}", "embedding: {dim: 1000000000}}", "features[0].embedding.dim",
     "expected a positive integer <= 1,024, got 1,000,000,000"),
    ("buckets: 100", "buckets: 0", "features[0].vocabulary.buckets",
     "expected a positive integer <= 2,147,483,647, got 0"),
])
def test_sizes_have_upper_bounds(tmp_path, old, new, field, expected):
    message = refused("validate", spec_with(tmp_path, old, new))
    assert f"{field}: {expected}" in message and "missing required field" not in message


def test_a_list_delimiter_that_csv_itself_uses_is_refused(tmp_path):
    path = spec_with(tmp_path, "data: {format: tfrecord}", "data: {format: csv, list_delimiter: ','}")
    assert f"{path}:2: data.list_delimiter: expected a non-empty separator other than a comma, quote or line " \
           "break (CSV uses those), got ','" in refused("validate", path)


def test_a_table_too_big_for_one_machine_is_refused_unless_the_limit_is_raised(tmp_path):
    path = spec_with(tmp_path, "vocabulary: {source: hash, buckets: 100},\n     embedding: {dim: 4}}",
                     "vocabulary: {source: hash, buckets: 50000000},\n     embedding: {dim: 64}}")
    message = refused("validate", path)
    assert "training.max_table_gb: table 'user_id' (feature 'user_id' of " in message
    assert "50,000,000 rows of dim 64: 38.4 GB to train with FTRL's two slots, more than " \
           "training.max_table_gb = 8" in message
    with open(path, "a") as fh:
        fh.write("  max_table_gb: 64\n")
    code, output = prerank("validate", path)
    assert code == 0, output


@pytest.mark.parametrize("content, line, expected", [
    ("", None, "the vocabulary file holds no ids; expected one id a line"),
    ("7\n8\nseven\n", 3, "expected an integer id (the table's dtype is int64), got 'seven'"),
    ("7\n8\n7\n", 3, "id '7' repeats line 1; expected each id once"),
])
def test_a_vocabulary_file_that_cannot_be_used_is_named_with_its_line(tmp_path, content, line, expected):
    vocab = write(tmp_path / "vocab.txt", content)
    path = spec_with(tmp_path, "vocabulary: {source: hash, buckets: 100}",
                     "vocabulary: {source: file, path: vocab.txt}")
    where = f"{vocab}:{line}" if line else vocab
    assert f"spec error: {where}: features[0].vocabulary.path: {expected}" in refused("validate", path)


# ---- config: rates, counts ---------------------------------------------------------------------------------

@pytest.mark.parametrize("override, expected", [
    ("model.ftrl.learning_rate=0", "model.ftrl.learning_rate: expected a number > 0, got 0.0"),
    ("model.adagrad.initial_accumulator=-1", "model.adagrad.initial_accumulator: expected a number > 0, got -1.0"),
    ("training.batch_size=-5", "training.batch_size: expected an integer in [1, 16777216], got -5"),
    ("model.student.user_tower=[1000000000,16]", "model.student.user_tower[0]: expected an integer in [1, 16384], "
                                                 "got 1000000000"),
    ("model.ftrl.l1=.nan", "model.ftrl.l1: expected a number >= 0, got nan"),
])
def test_bad_knobs_are_refused_before_the_model_directory_is_touched(tmp_path, override, expected):
    model_dir = str(tmp_path / "model")
    message = refused("train", write(tmp_path / "spec.yaml", spec_text("config_test")), "--model-dir", model_dir,
                      "--set", override)
    assert f"config error: command line --set: {expected}" in message
    assert not os.path.exists(model_dir)  # a config refused at step 1 used to lock the directory to itself


# ---- data: the id rule -------------------------------------------------------------------------------------

ID_SPEC = """name: ids
data: {format: tfrecord}
labels: [{name: click, type: binary}]
features:
  - {name: user_id, kind: categorical, side: user, dtype: int64, vocabulary: {source: data}, embedding: {dim: 4}}
  - {name: hist, kind: sequence, side: user, dtype: int64, max_length: 3, vocabulary: {source: data},
     embedding: {table: item, dim: 4}}
  - {name: tags, kind: sequence, side: item, dtype: string, max_length: 3, vocabulary: {source: hash, buckets: 2},
     embedding: {dim: 4}}
  - {name: item_id, kind: categorical, side: item, dtype: int64, vocabulary: {source: data},
     embedding: {table: item, dim: 4}, default: -1}
"""


def id_columns(**change) -> list[Column]:
    """Four good rows; `change` replaces one value: column=(row, value)."""
    values = {"user_id": [1, 2, 3, 4], "hist": [[5, 6], [], [7], [5]], "tags": [["a"], ["b", "c"], [], ["a"]],
              "item_id": [5, -1, 7, 6], "click": [0, 1, 0, 1]}
    for column, (row, value) in change.items():
        values[column][row] = value
    types = {"user_id": "int", "hist": "int_list", "tags": "str_list", "item_id": "int", "click": "int"}
    return [Column(name, types[name], v) for name, v in values.items()]


def read_all(spec, path: str, fmt: str) -> list[dict]:
    return list(make_pipeline(spec, path, InputConfig(batch_size=4, shuffle_buffer=0), fmt=fmt))


def test_a_declared_negative_default_is_an_id_and_any_other_negative_id_is_refused(tmp_path):
    spec = load_spec(write(tmp_path / "ids.yaml", ID_SPEC))
    good = str(tmp_path / "good.tfrecord")
    write_tfrecord(good, id_columns(), range(4), "none")
    (batch,) = read_all(spec, good, "tfrecord")
    assert batch["features"]["item_id"].numpy().tolist() == [5, -1, 7, 6]  # the declared default: kept as an id
    for column, value, shown in (("user_id", -3, "-3"), ("item_id", -2, "-2"), ("hist", [5, -1], "-1")):
        for fmt in ("tfrecord", "csv"):
            path = str(tmp_path / f"bad_{column}.{fmt}")
            (write_tfrecord if fmt == "tfrecord" else write_csv)(path, id_columns(**{column: (2, value)}),
                                                                 range(4), *(("none",) if fmt == "tfrecord" else ()))
            with pytest.raises(DataError) as info:
                read_all(spec, path, fmt)
            where = f"{path}#2" if fmt == "tfrecord" else f"{path}:4"  # CSV: the header, then rows 0 and 1
            allowed = "ids are >= 0 or the declared default -1" if column == "item_id" else "ids are >= 0"
            assert str(info.value) == f"{where}: negative id in column '{column}' (read by feature '{column}'): " \
                                      f"{allowed} (-1 pads sequences at serving) (value: {shown})"


def test_an_empty_string_inside_a_string_sequence_is_refused(tmp_path):
    spec = load_spec(write(tmp_path / "ids.yaml", ID_SPEC))
    path = str(tmp_path / "empty_tag.tfrecord")
    write_tfrecord(path, id_columns(tags=(1, ["b", "", "c"])), range(4), "none")
    with pytest.raises(DataError) as info:
        read_all(spec, path, "tfrecord")
    assert str(info.value).startswith(f"{path}#1: empty string in sequence column 'tags' (read by feature 'tags'): "
                                      "the empty string pads sequences at serving, so it cannot be an id")


def test_a_fitted_vocabulary_too_big_for_one_machine_is_refused_after_the_fit(tmp_path):
    spec_path = write(tmp_path / "ids.yaml", ID_SPEC)
    data = str(tmp_path / "good.tfrecord")
    write_tfrecord(data, id_columns(), range(4), "none")
    message = refused("train", spec_path, "--model-dir", str(tmp_path / "model"), "--data", data,
                      "--set", "training.max_table_gb=0.0000002")  # 200 bytes: 5 user rows of dim 4 take 240
    assert f"{spec_path}: training.max_table_gb: table 'user_id' (feature 'user_id' of {spec_path}) " \
           "has 5 rows of dim 4: 2.4e-07 GB to train with FTRL's two slots, more than training.max_table_gb = 2e-07" \
           in message
    assert not os.path.exists(tmp_path / "model" / "checkpoints")


def test_tensorflow_start_up_lines_stay_off_the_console_unless_verbose(tmp_path):
    spec = write(tmp_path / "spec.yaml", spec_text("config_test"))
    output = refused("inspect", spec, "--data", str(tmp_path / "nothing*"))
    assert output == f"data error: no files match {tmp_path / 'nothing*'}\n"  # no absl, oneDNN or CUDA lines


def test_a_gzip_tfrecord_cut_where_tensorflow_reads_it_as_whole_is_found_corrupt(kuairand_slice, tmp_path):
    """TensorFlow's GZIP reader takes some cut files for whole, shorter ones (no error at all); the scan behind
    --skip-corrupt and the error messages checks the GZIP stream itself."""
    import glob

    import tensorflow as tf

    from trainer.data import corrupt
    from trainer.data.probe import probe_files
    (source,) = glob.glob(os.path.join(kuairand_slice, "date=*", "*.tfrecord.gz"))[:1]
    raw = open(source, "rb").read()
    cut = str(tmp_path / "cut.tfrecord.gz")

    def read_by_tensorflow() -> int | None:
        """Records TensorFlow reads from `cut`; None if it reports the damage."""
        try:
            return sum(int(b.shape[0]) for b in tf.data.TFRecordDataset(cut, compression_type="GZIP").batch(4096))
        except tf.errors.OpError:
            return None

    for offset in range(len(raw) // 3, len(raw) // 3 + 20_000, 7):  # about 1 cut in 70 reads as whole
        with open(cut, "wb") as fh:
            fh.write(raw[:offset])
        silently = read_by_tensorflow()
        if silently is not None:
            break
    else:
        pytest.fail("no cut TensorFlow reads without an error: the reader changed; this test can go")
    spec = load_spec(os.path.join(REPO, "feature_specs", "kuairand.yaml"))
    (found,) = corrupt.scan(spec, probe_files(spec, [cut], "tfrecord", "GZIP"), [cut])
    assert (found.file, found.records, found.readable) == (cut, 1, silently)
    assert "the GZIP stream ends before its end-of-stream marker (the file was cut short)" in found.detail
