"""Evaluation: candidates scored by parts against a plain forward pass, and an export evaluated by its own
signatures against its checkpoint (on the shared `trained_small` model and its `exported_small` export)."""
import trainer  # noqa: F401  (legacy Keras before TensorFlow)

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from serving.savedmodel.evaluation import evaluate_opened, evaluation_path
from serving.savedmodel.opening import OpenedExport, open_export
from serving.savedmodel.prune import apply_pruning
from trainer.cli import main
from trainer.data.catalog import build_catalog
from trainer.data.input_config import InputConfig
from trainer.data.pipeline import make_pipeline
from trainer.errors import ExportError
from trainer.evaluation.evaluate import consistency, evaluate_scorer, quality, strict_result
from trainer.evaluation.predict import Predictions, predict_with
from trainer.evaluation.scoring import ModelScorer
from trainer.losses.groups import group_ids, with_unexposed
from trainer.spec.sides import user_columns
from trainer.training.checkpoints import restore
from trainer.training.trained import load_trained

pytestmark = pytest.mark.slow  # the shared trained model and export
BATCH, BATCHES, SEED = 512, 2, 3


@pytest.fixture(scope="module")
def model(trained_small, spec):
    """The trained_small model with an item catalog of its data."""
    model_dir, data = trained_small
    return load_trained(spec, model_dir, data, build_catalog(spec, data))


@pytest.fixture(scope="module")
def scorer(model) -> ModelScorer:
    """One scorer for the module's tests: its graphs are traced (and compiled) once."""
    return ModelScorer(model, model.catalog)


@pytest.fixture(scope="module")
def by_parts(scorer, trained_small) -> Predictions:
    """The model's predictions with K = 6 candidates a group, scored by parts."""
    return predict_with(scorer, trained_small[1], BATCH, BATCHES, sampled_per_group=6, seed=SEED)


def plain_predictions(model, data: str, k: int) -> Predictions:
    """What evaluation computed before candidates were scored by parts: each batch's rows with the K candidates
    of each group (`with_unexposed`: the same draws) as rows of one forward pass of the whole model."""
    @tf.function(reduce_retracing=True, autograph=False)
    def forward(batch, seed):
        features, keys = batch["features"], batch["group"]
        exposed = tf.shape(keys)[0]
        if k:
            groups, n_groups = group_ids(keys)
            first = tf.gather(keys, tf.math.unsorted_segment_min(tf.range(exposed), groups, n_groups))
            features, groups = with_unexposed(features, groups, n_groups, k, model.catalog, user_columns(model.spec),
                                              seed)
            keys = tf.concat([keys, tf.gather(first, groups[exposed:])], axis=0)
        out = model(features, training=False)
        return keys, out.teacher_score, out.student_logit, out.teacher_logits

    p = Predictions(labels={t: [] for t in model.labels}, teacher={t: [] for t in model.labels},
                    teacher_estimate={t: [] for t, label in model.labels.items() if label.type == "regression"},
                    teacher_score=[], student_logit=[], groups=[], exposed=[])
    pipeline = make_pipeline(model.spec, data, InputConfig(batch_size=BATCH, shuffle_buffer=0, deterministic=True))
    for i, batch in zip(range(BATCHES), pipeline):
        keys, score, logit, logits = forward(batch, tf.constant([SEED, i], tf.int64))
        n, b = len(keys), len(batch["group"])
        for task, label in batch["labels"].items():
            p.labels[task].append(np.concatenate([label.numpy(), np.full(n - b, np.nan, np.float32)]))
            p.teacher[task].append(model.task_probability(task, logits[task]).numpy())
            if task in p.teacher_estimate:
                p.teacher_estimate[task].append(model.task_estimate(task, logits[task]).numpy())
        p.teacher_score.append(score.numpy())
        p.student_logit.append(logit.numpy())
        p.groups.append(keys.numpy())
        p.exposed.append(np.arange(n) < b)
    for name in ("labels", "teacher", "teacher_estimate"):
        setattr(p, name, {t: np.concatenate(v) for t, v in getattr(p, name).items()})
    for name in ("teacher_score", "student_logit", "groups", "exposed"):
        setattr(p, name, np.concatenate(getattr(p, name)))
    return p


def metrics_of(model, p: Predictions, k: int) -> dict:
    return strict_result({**quality(model, p), "consistency": {"by_k": [consistency(p, k)]}})


def test_candidates_scored_by_parts_equal_a_plain_forward_pass(model, by_parts, trained_small):
    _, data = trained_small
    got = by_parts
    want = plain_predictions(model, data, 6)
    assert np.array_equal(got.groups, want.groups) and np.array_equal(got.exposed, want.exposed)
    exposed = got.exposed
    # exposed rows: the model's own forward pass on the batch, as without candidates
    alone = plain_predictions(model, data, 0)
    np.testing.assert_array_equal(got.teacher_score[exposed], alone.teacher_score)
    np.testing.assert_array_equal(got.student_logit[exposed], alone.student_logit)
    # candidates: the same draws, the same scores up to float rounding (the parts add up in another order)
    assert (~exposed).sum() == 6 * len(np.unique(got.groups[exposed][:BATCH])) + 6 * len(
        np.unique(got.groups[exposed][BATCH:]))
    np.testing.assert_allclose(got.teacher_score, want.teacher_score, rtol=0, atol=1e-6)
    np.testing.assert_allclose(got.student_logit, want.student_logit, rtol=0, atol=1e-5)
    for task in model.labels:
        np.testing.assert_allclose(got.teacher[task], want.teacher[task], rtol=0, atol=2e-6)
    # the metrics (as `evaluate_scorer` computes them from these predictions): K = 0 those of a plain pass;
    # K = 6 (the same draws) equal to rounding; K = 3 on each group's first 3 draws of the 6 (nested)
    plain = metrics_of(model, alone, 0)
    fast = metrics_of(model, got.sampled_up_to(0), 0)
    assert fast == plain
    largest, fast_largest = metrics_of(model, want, 6)["consistency"], metrics_of(model, got, 6)["consistency"]
    for key, value in fast_largest["by_k"][0].items():
        assert value == pytest.approx(largest["by_k"][0][key], abs=1e-4), key
    nested = got.sampled_up_to(3)
    assert (~nested.exposed).sum() == (~exposed).sum() // 2 and set(nested.sample_rank[~nested.exposed]) == {0, 1, 2}
    keep = exposed | (got.sample_rank < 3)
    np.testing.assert_array_equal(nested.teacher_score, got.teacher_score[keep])
    np.testing.assert_array_equal(nested.groups, got.groups[keep])


def flat(result: dict) -> dict[str, float]:
    out = {f"teacher/{t}/{k}": v for t, values in result["teacher"].items() for k, v in values.items()}
    out.update({f"student/{k}": v for k, v in result.get("student", {}).items() if k != "task"})
    for row in result.get("consistency", {}).get("by_k", []):
        out.update({f"K={row['sampled']}/{k}": v for k, v in row.items() if k != "sampled"})
    return out


def test_evaluate_export_scores_with_its_signatures_as_the_checkpoint_does(model, scorer, by_parts, exported_small,
                                                                           capsys):
    export, data = exported_small
    before = sorted(os.listdir(export.path))
    args = ["--data", data, "--items", data, "--sampled", "0,3,6", "--batch-size", str(BATCH),
            "--max-batches", str(BATCHES), "--seed", str(SEED)]
    assert main(["evaluate", "--export", export.path, *args]) == 0
    written = evaluation_path(export.path)
    assert os.path.dirname(written) == os.path.dirname(export.path) and written.endswith("1.evaluation.json")
    assert sorted(os.listdir(export.path)) == before  # a published version is never written into
    with open(written, encoding="utf-8") as fh:
        served = json.load(fh)
    assert served["export"] == export.path and served["pruned"] and f"export {export.path}" in capsys.readouterr().out
    assert [row["sampled"] for row in served["consistency"]["by_k"]] == [0, 3, 6]
    # the checkpoint as trained, then as pruning serves it (never-updated rows read zeros), on the same rows
    trained = flat(strict_result({**quality(model, by_parts), "consistency": {
        "by_k": [consistency(by_parts.sampled_up_to(k), k) for k in (0, 3, 6)]}}))
    apply_pruning(model, model.checkpoint_path)
    scorer.reset()  # the catalog's parts were computed with the trained rows
    try:
        pruned = flat(evaluate_scorer(scorer, data, BATCH, BATCHES, sampled=(0, 3, 6), seed=SEED))
    finally:
        restore(tf.train.Checkpoint(model=model), model.checkpoint_path)  # the module's model as trained again
        scorer.reset()
    exported = flat(served)
    assert set(exported) == set(pruned) == set(trained)
    for key, value in exported.items():
        if value is None:
            assert pruned[key] is None, key
            continue
        assert value == pytest.approx(pruned[key], abs=1e-4), key  # the same model: equal up to float rounding
        assert abs(value - trained[key]) <= abs(pruned[key] - trained[key]) + 1e-4, key  # what pruning changes
    assert any(exported[k] != trained[k] for k in exported)  # the fixture's pruning moves some metric


class Signatures:
    """A SavedModel's loaded signatures, some of them: what `OpenedExport.loaded` is read for."""

    def __init__(self, loaded, names: list[str]):
        self.signatures = {n: loaded.signatures[n] for n in names}


def test_an_export_without_a_student_gives_the_teacher_metrics_and_one_without_a_teacher_is_refused(
        exported_small, tmp_path):
    export, data = exported_small
    opened = open_export(export.path)

    def with_only(names: list[str]) -> OpenedExport:
        return OpenedExport(opened.path, {**opened.manifest, "signatures": names}, Signatures(opened.loaded, names))

    notes = []
    out = str(tmp_path / "teacher.json")
    result = evaluate_opened(with_only(["fine_rank", "serving_default"]), data, sampled=(0, 2), items=data,
                             batch_size=BATCH, max_batches=1, out=out, log=notes.append)
    assert set(result["teacher"]) == {"click", "long_view", "like", "watch_time"} and result["rows"] == BATCH
    assert "student" not in result and "consistency" not in result and "pairwise" in result["note"]
    assert any("no pairwise signature" in n for n in notes) and not any("item table" in n for n in notes)
    with open(out, encoding="utf-8") as fh:
        assert json.load(fh)["note"] == result["note"]
    with pytest.raises(ExportError, match=r"saved_model.pb: no fine_rank signature \(it has pairwise\)"):
        evaluate_opened(with_only(["pairwise"]), data, log=notes.append)
    with pytest.raises(SystemExit):  # --model-dir or --export, not both
        main(["evaluate", "--export", export.path, "--model-dir", str(tmp_path)])
    assert main(["evaluate", "feature_specs/kuairand.yaml", "--export", export.path]) == 2  # the spec is the export's
