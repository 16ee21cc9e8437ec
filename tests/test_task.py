"""The command line and the training job's data pass, on a slice of the real KuaiRand data."""
import trainer  # noqa: F401  (legacy Keras before TensorFlow)

import json
import os
import shutil

import pytest

from conftest import SMALL_MODEL_OVERRIDES, spec_text
from trainer.cli import main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPEC = os.path.join(REPO, "feature_specs", "kuairand.yaml")


def test_validate_prints_the_summary_table(capsys):
    assert main(["validate", SPEC]) == 0
    out = capsys.readouterr().out
    assert "feature" in out and "transform" in out
    assert any(line.split()[:4] == ["watch_seq", "sequence", "user", "video"] for line in out.splitlines())
    assert any(line.split()[:3] == ["stat_play_cnt", "numeric", "privileged"] for line in out.splitlines())


def test_validate_bad_spec_lists_every_error_and_exits_2(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    text = spec_text("validate_errors")
    bad.write_text(text)
    assert main(["validate", str(bad)]) == 2
    err = capsys.readouterr().err
    line = {marker: next(n for n, row in enumerate(text.splitlines(), 1) if marker in row)
            for marker in ("colour", "maybe")}
    assert f"{bad}:{line['colour']}: features[1].colour: unknown key" in err
    assert f"{bad}:{line['maybe']}: labels[0].type: expected one of binary, regression, got 'maybe'" in err


def test_every_files_option_takes_one_or_more_globs():
    """One form for several files in every command: `--data GLOB [GLOB ...]` (and --validation, --items)."""
    from trainer.cli import build_parser
    commands = build_parser()._subparsers._group_actions[0].choices
    files_options = [(name, action) for name, command in commands.items() for action in command._actions
                     if set(action.option_strings) & {"--data", "--validation", "--items"}]
    assert len(files_options) >= 9
    assert all(action.nargs == "+" and action.metavar == "GLOB" for _, action in files_options), files_options


def test_analyze_reads_several_globs_once_each(kuairand_slice, kuairand_heldout, tmp_path, capsys):
    first, second = os.path.join(kuairand_slice, "date=*", "*.tfrecord.gz"), kuairand_heldout
    rows = {}
    for name, globs in (("first", [first]), ("second", [second]), ("both", [first, second, first])):
        assert main(["analyze", SPEC, "--data", *globs, "--out", str(tmp_path / name)]) == 0
        rows[name] = int(capsys.readouterr().out.rsplit("fitted on ", 1)[1].split()[0])
    assert rows["both"] == rows["first"] + rows["second"] == 6000  # a file matched twice is read once


@pytest.mark.slow
def test_train_job_fits_preprocessing_trains_and_writes_metrics(trained_small, tmp_path, capsys):
    """The shared model was trained by `prerank train` (one epoch of 3,000 rows, batch 256): what the job wrote,
    then a resumed run and the other commands on a copy of it."""
    trained_dir, data = trained_small
    with open(os.path.join(trained_dir, "preprocessing", "preprocessing.json")) as fh:
        meta = json.load(fh)
    assert meta["rows"] == 3000 and meta["tables"]["video"]["size"] > 100
    with open(os.path.join(trained_dir, "metrics.json")) as fh:
        metrics = json.load(fh)
    assert metrics["step"] == 12 and metrics["training"]["steps_run"] == 12  # ceil(3000 / 256): one epoch
    assert metrics["training"]["examples"] == 3000 and metrics["training"]["resumed_from"] is None
    assert 0.0 < metrics["validation"]["student"]["auc"] < 1.0
    assert set(metrics["validation"]["teacher"]) == {"click", "long_view", "like", "watch_time"}

    model_dir = str(tmp_path / "model")
    shutil.copytree(trained_dir, model_dir)
    os.utime(os.path.join(model_dir, "preprocessing", "preprocessing.json"), (0, 0))
    same = [a for o in SMALL_MODEL_OVERRIDES for a in ("--set", o)]
    assert main(["train", SPEC, "--model-dir", model_dir, "--data", data, "--validation", data, *same]) == 0
    assert "trained to step 12 (0 steps here" in capsys.readouterr().out  # finished: resumes at its last step
    assert os.path.getmtime(os.path.join(model_dir, "preprocessing", "preprocessing.json")) == 0  # reused

    assert main(["evaluate", SPEC, "--model-dir", model_dir, "--data", data, "--items", data,
                 "--sampled", "0,5"]) == 0
    with open(os.path.join(model_dir, "evaluation.json")) as fh:
        evaluation = json.load(fh)
    assert evaluation["rows"] == 3000 and evaluation["checkpoint"].endswith("ckpt-12")
    assert evaluation["student"]["auc"] == pytest.approx(metrics["validation"]["student"]["auc"], abs=1e-6)
    by_k = {row["sampled"]: row for row in evaluation["consistency"]["by_k"]}
    assert set(by_k) == {0, 5} and 0.0 < by_k[5]["pairwise_agreement"] <= 1.0
    assert main(["report", "--model-dir", model_dir]) == 0
    assert os.path.exists(os.path.join(model_dir, "report", "consistency.png"))


def test_evaluate_without_a_trained_model_is_a_clear_error(tmp_path, capsys):
    assert main(["evaluate", SPEC, "--model-dir", str(tmp_path / "none"), "--sampled", "0"]) == 2
    assert f"{tmp_path / 'none'}: not a trained model directory (no run.json)" in capsys.readouterr().err


def test_train_job_reports_data_errors_and_exits_2(tmp_path, capsys):
    missing = str(tmp_path / "nothing" / "*.tfrecord.gz")
    assert main(["train", SPEC, "--model-dir", str(tmp_path / "m"), "--data", missing]) == 2
    assert f"data error: no files match {missing}" in capsys.readouterr().err


@pytest.mark.slow
def test_task_module_runs_the_same_job(kuairand_slice, tmp_path, capsys):
    from trainer.task import main as task_main
    data = os.path.join(kuairand_slice, "date=20220425", "*.tfrecord.gz")
    assert task_main([SPEC, "--model-dir", str(tmp_path / "m"), "--data", data, "--no-validation",
                      "--set", "training.max_steps=2", "--set", "training.progress=false"]) == 0
    # (validation, the job's last stage, is checked on the `prerank train` runs: trained_small and above)
    assert "trained to step 2" in capsys.readouterr().out
