"""Honest validation: a validation split that shares files with the training data is reported when the job
starts and its figures are marked in-sample (metrics.json, the history, the report); a glob that matches
nothing fails before anything is trained."""
import json
import os

from conftest import KUAIRAND_SPEC
from trainer.cli import main
from trainer.data.splits import IN_SAMPLE_KEY, shared_files


def test_validation_on_training_files_is_marked_in_sample(trained_small):
    model_dir, data = trained_small  # the fixture validates on its own training files, on purpose
    with open(os.path.join(model_dir, "metrics.json")) as fh:
        validation = json.load(fh)["validation"]
    files = len([f for f in os.listdir(os.path.dirname(os.path.dirname(data))) if f.startswith("date=")])
    assert validation["in_sample"] == {"shared_files": files, "validation_files": files}
    with open(os.path.join(model_dir, "history.jsonl")) as fh:
        rows = [json.loads(line) for line in fh]
    evaluated = [row for row in rows if "eval/student/auc" in row]
    assert evaluated and all(row[IN_SAMPLE_KEY] == 1.0 for row in evaluated)


def test_shared_files_compares_real_paths(tmp_path):
    a, b = tmp_path / "a.tfrecord", tmp_path / "b.tfrecord"
    a.write_text(""), b.write_text("")
    link = tmp_path / "link.tfrecord"
    link.symlink_to(a)
    assert shared_files([str(a)], [str(link), str(b)]) == [str(link)]
    assert shared_files([str(a)], [str(b)]) == []


def test_a_glob_matching_nothing_fails_before_training(trained_small, tmp_path, capsys):
    _, data = trained_small
    model_dir = str(tmp_path / "model")
    for flags in (["--data", str(tmp_path / "nothing*")], ["--data", data, "--validation", str(tmp_path / "nope*")]):
        assert main(["train", KUAIRAND_SPEC, "--model-dir", model_dir, *flags]) == 2
        assert f"data error: no files match {tmp_path}" in capsys.readouterr().err
        assert not os.path.exists(model_dir)


def test_no_validation_trains_without_one(tmp_path, capsys):
    from test_hostile_input import ID_SPEC, id_columns
    from trainer.data.writers import write_tfrecord
    spec = tmp_path / "ids.yaml"
    spec.write_text(ID_SPEC)
    data = str(tmp_path / "ids.tfrecord")
    write_tfrecord(data, id_columns(), range(4), "none")
    model_dir = str(tmp_path / "model")
    args = ["train", str(spec), "--model-dir", model_dir, "--data", data, "--set", "training.progress=false"]
    assert main(args + ["--validation", data]) == 0  # the same file: in-sample, and said so
    out = capsys.readouterr().out
    assert "validation file(s) are also training files" in out and "IN-SAMPLE validation (" in out
    with open(os.path.join(model_dir, "metrics.json")) as fh:
        assert json.load(fh)["validation"]["in_sample"] == {"shared_files": 1, "validation_files": 1}
    assert main(args + ["--no-validation"]) == 0  # a no-op resume, with no validation at all
    with open(os.path.join(model_dir, "metrics.json")) as fh:
        assert "validation" not in json.load(fh)
    assert "validation (" not in capsys.readouterr().out  # no validation table printed


def test_the_default_cadence_gives_a_short_run_several_evaluations_and_sparsity_points(tmp_path):
    from test_hostile_input import ID_SPEC, id_columns
    from trainer.config.knobs import EVAL_POINTS
    from trainer.data.writers import write_tfrecord
    spec = tmp_path / "ids.yaml"
    spec.write_text(ID_SPEC)
    data = str(tmp_path / "ids.tfrecord")
    write_tfrecord(data, id_columns(), range(4), "none")
    model_dir = str(tmp_path / "model")
    assert main(["train", str(spec), "--model-dir", model_dir, "--data", data, "--validation", data,
                 "--set", "training.progress=false", "--set", "training.batch_size=1", "--set", "training.epochs=4",
                 "--set", "training.shuffle_buffer=0"]) == 0  # 16 steps, eval_every not set
    with open(os.path.join(model_dir, "history.jsonl")) as fh:
        rows = [json.loads(line) for line in fh]
    evaluated = [row["step"] for row in rows if "eval/student/auc" in row]
    scanned = [row["step"] for row in rows if "zero_rows/user_id" in row]
    assert evaluated == scanned == list(range(2, 17, 2)) and len(evaluated) == EVAL_POINTS
    losses = [row for row in rows if "loss/total" in row]  # log_every (50) is longer than the run: its end
    assert [row["step"] for row in losses] == [16] and {"weighted/student", "weighted/distill"} <= set(losses[0])
