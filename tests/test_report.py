"""`prerank report`: PNG plots from a synthetic history.jsonl and evaluation.json."""
import json
import logging
import os

import pytest

from trainer.errors import ModelDirError
from trainer.evaluation.report import read_history, smoothed, write_report

PNGS = ["losses.png", "loss_terms.png", "lambda.png", "auc.png", "consistency.png", "sparsity.png"]


def write_history(model_dir, lines):
    with open(os.path.join(model_dir, "history.jsonl"), "w", encoding="utf-8") as fh:
        fh.write("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")


def training_lines():
    lines = []
    for step in range(100, 1100, 100):
        lines.append({"step": step, "loss/student": 1.0 / step, "loss/distill": 0.2, "loss/teacher": 1.3,
                      "loss/mimic": 0.0, "loss/total": 2.0, "lambda": min(1.0, step / 500), "lr/ftrl": 0.05,
                      "zero_rows/user": 0.0, "zero_rows/video": 0.12, "examples_per_sec": 5000.0,
                      "weighted/teacher": 1.3, "weighted/student": 1.0 / step, "weighted/distill": 0.2 * step / 500})
        if step % 500 == 0:
            lines.append({"step": step, "eval/teacher/click/auc": 0.7, "eval/teacher/click/logloss": 0.4,
                          "eval/teacher/long_view/auc": 0.71, "eval/student/auc": 0.69, "eval/student/gauc": 0.6,
                          "eval/student/logloss": 0.45})
    lines.insert(3, {"step": 200, "loss/student": 99.0})  # resumed job repeats step 200 ...
    lines.insert(4, {"step": 200, "loss/student": 0.7})   # ... and the last line wins
    return lines


def write_metrics(model_dir):
    by_k = [{"sampled": s, "pairwise_agreement": 0.7 - s / 1000, "recall@10_in_50": 0.6 - s / 2000,
             "recall@50_in_100": 0.8 - s / 3000} for s in (50, 0, 10, 20)]
    metrics = {"step": 1000, "teacher": {"click": {"auc": 0.7, "logloss": 0.4}},
               "student": {"auc": 0.69, "gauc": 0.6, "logloss": 0.45}, "consistency": {"by_k": by_k}}
    with open(os.path.join(model_dir, "evaluation.json"), "w", encoding="utf-8") as fh:
        json.dump(metrics, fh)


def assert_png(path):
    import matplotlib.image

    with open(path, "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.path.getsize(path) > 5000
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 300


def test_write_report_draws_every_plot(tmp_path):
    write_history(tmp_path, training_lines())
    write_metrics(tmp_path)
    paths = write_report(str(tmp_path))
    assert paths == [str(tmp_path / "report" / name) for name in PNGS]
    for path in paths:
        assert_png(path)
    assert not [f for f in os.listdir(tmp_path / "report") if f.endswith(".tmp")]


def test_repeated_step_keeps_the_last_value_per_key(tmp_path):
    write_history(tmp_path, training_lines())
    history = read_history(str(tmp_path / "history.jsonl"))
    assert history[200]["loss/student"] == 0.7
    assert history[200]["loss/teacher"] == 1.3  # keys the repeated lines lack are kept
    assert history[500]["eval/student/gauc"] == 0.6 and history[500]["lambda"] == 1.0


def test_without_evaluation_json_consistency_is_skipped_with_a_note(tmp_path, caplog):
    write_history(tmp_path, training_lines())
    out = tmp_path / "plots"
    with caplog.at_level(logging.WARNING, logger="trainer.evaluation.report"):
        paths = write_report(str(tmp_path), str(out))
    assert [os.path.basename(p) for p in paths] == [p for p in PNGS if p != "consistency.png"]
    assert all(os.path.dirname(p) == str(out) for p in paths)
    assert "consistency.png skipped" in caplog.text and "evaluation.json" in caplog.text


def test_malformed_line_names_file_and_line(tmp_path):
    write_history(tmp_path, [{"step": 1, "loss/total": 1.0}, "", '{"step": 2, "loss/total": ', {"step": 3}])
    with pytest.raises(ModelDirError, match=r"history\.jsonl:3: not valid JSON"):
        write_report(str(tmp_path))
    write_history(tmp_path, [{"step": 1}, {"loss/total": 1.0}])
    with pytest.raises(ModelDirError, match=r"history\.jsonl:2: expected a JSON object with an integer 'step'"):
        write_report(str(tmp_path))


def test_missing_or_empty_history_is_a_model_directory_error(tmp_path):
    with pytest.raises(ModelDirError, match=r"history\.jsonl: not found"):
        write_report(str(tmp_path))
    (tmp_path / "history.jsonl").write_text("\n\n")
    with pytest.raises(ModelDirError, match=r"history\.jsonl: empty"):
        write_report(str(tmp_path))


def test_malformed_evaluation_json_is_a_model_directory_error(tmp_path):
    write_history(tmp_path, training_lines())
    (tmp_path / "evaluation.json").write_text('{"consistency": {"by_k": [{"pairwise_agreement": 0.7}]}}')
    with pytest.raises(ModelDirError, match=r"evaluation\.json: expected consistency\.by_k"):
        write_report(str(tmp_path))


def test_smoothing_keeps_the_first_point_and_damps_noise():
    noisy = [1.0 + (0.5 if i % 2 else -0.5) for i in range(40)]
    out = smoothed(noisy, window=8)
    assert out[0] == noisy[0] and len(out) == len(noisy)
    assert max(out[20:]) - min(out[20:]) < 0.3 * (max(noisy) - min(noisy))  # the alternation is damped
    assert abs(sum(out[20:]) / 20 - 1.0) < 0.05  # around the mean, not lagging toward zero
    assert smoothed([3.0, 3.0, 3.0]) == [3.0, 3.0, 3.0]
