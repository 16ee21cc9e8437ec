"""`train --preprocessing DIR`: a `prerank analyze` output is reused when it matches the spec table by table
(a spec edit no fit reads keeps it), and refused naming each table that differs, before MODEL_DIR is written."""
import json
import os

import pytest

from test_hostile_input import ID_SPEC, id_columns
from trainer.cli import main
from trainer.data.writers import write_tfrecord

QUIET = ["--set", "training.progress=false", "--no-validation"]


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """(folder, spec path, data file, analyze output) of the four-row id spec."""
    folder = tmp_path_factory.mktemp("reuse")
    spec = folder / "ids.yaml"
    spec.write_text(ID_SPEC)
    data = str(folder / "ids.tfrecord")
    write_tfrecord(data, id_columns(), range(4), "none")
    out = str(folder / "fitted")
    assert main(["analyze", str(spec), "--data", data, "--out", out]) == 0
    return folder, str(spec), data, out


def write_spec(folder, name: str, old: str, new: str) -> str:
    assert ID_SPEC.count(old) == 1
    path = folder / name
    path.write_text(ID_SPEC.replace(old, new))
    return str(path)


@pytest.mark.slow
def test_a_matching_fit_is_reused_even_when_the_spec_changed_elsewhere(fitted, capsys):
    folder, _, data, out = fitted
    wider = write_spec(folder, "wider.yaml", "embedding: {dim: 4}}\n  - {name: hist", "embedding: {dim: 8}}\n"
                       "  - {name: hist")  # user_id's dimension: nothing a fit reads
    model_dir = str(folder / "model")
    assert main(["train", wider, "--model-dir", model_dir, "--data", data, "--preprocessing", out, *QUIET]) == 0
    assert f"preprocessing: reusing {out}" in capsys.readouterr().out
    with open(os.path.join(out, "preprocessing.json")) as a, \
            open(os.path.join(model_dir, "preprocessing", "preprocessing.json")) as b:
        assert json.load(a) == json.load(b)  # the model directory keeps its own copy
    assert main(["train", wider, "--model-dir", model_dir, "--data", data, *QUIET]) == 0  # resumes with that copy
    assert "refitting" not in capsys.readouterr().out


def test_a_fit_that_differs_is_refused_table_by_table_before_anything_is_written(fitted, capsys):
    folder, _, data, out = fitted
    stricter = write_spec(folder, "stricter.yaml", "dtype: int64, vocabulary: {source: data}, embedding: {dim: 4}}",
                          "dtype: int64, vocabulary: {source: data, min_count: 2}, embedding: {dim: 4}}")
    extended = write_spec(folder, "extended.yaml", "features:\n", "features:\n  - {name: region, kind: categorical, "
                          "side: user, dtype: int64, source: user_id, vocabulary: {source: data}, "
                          "embedding: {dim: 4}}\n")
    for spec, expected in ((stricter, "table 'user_id': fitted with min_count 1 (the spec: 2)"),
                           (extended, "table 'region': not fitted (the spec needs it: dtype 'int64', columns "
                                      "['user_id'], min_count 1, max_size None)")):
        model_dir = str(folder / f"model_{os.path.basename(spec)}")
        assert main(["train", spec, "--model-dir", model_dir, "--data", data, "--preprocessing", out, *QUIET]) == 2
        err = capsys.readouterr().err
        assert f"model directory error: {out}/preprocessing.json does not match {spec}: {expected}" in err
        assert not os.path.exists(model_dir)
