"""The joint model on synthetic data whose labels come from a hidden two-tower model (spec:
tests/specs/model_test.yaml).

One synthetic data set (train shards + a held-out shard) is generated per module. Fast tests build a
JointModel on one batch of the held-out shard: for each option (student towers, SENet, similarity, dual
augmented vectors, distillation loss, teacher regression loss, fusion, target attention, dropout, dropping
the label loss) the losses are finite and the option's own variables get gradients; cascade losses, the
sampled candidates and the optimizer routing are checked on that batch too. The layers' and losses' math is
tested in tests/test_layers.py.

Three slow tests train through the real job (`prerank train`), one run per model family: the default joint
model, a student (mode student) distilled from a frozen, separately trained teacher, and a cascade student
with sampled unexposed items (from the same teacher). Each asserts that the model learned the hidden
signal: AUC clearly above 0.5 on the held-out shard (the hidden model's own noiseless scores reach 0.85
(click) and 0.83 (long_view) there). Thresholds leave a margin of about 0.07-0.08 below what the runs reach
(see the numbers next to them).

The runs are short (160 steps; the teacher alone 240), so the optimizers' initial accumulators are 0.001:
with 0.1, per-row gradients of a batch-mean loss are so small next to the accumulator that FTRL and AdaGrad
act like plain SGD with a small step, and 160 steps reach only AUC ~0.57.
"""
import trainer  # noqa: F401  (legacy Keras before TensorFlow)

import contextlib
import dataclasses
import io
import json
import os
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pytest
import tensorflow as tf

from conftest import spec_text
from trainer.cli import main
from trainer.config import Component, StudentConfig, load_config
from trainer.data.catalog import build_catalog
from trainer.data.datasets.synthetic import generate
from trainer.data.input_config import InputConfig
from trainer.data.pipeline import make_pipeline
from trainer.errors import DataError
from trainer.evaluation.cold_start import out_of_vocabulary, slice_aucs
from trainer.evaluation.metrics import auc
from trainer.evaluation.predict import predict
from trainer.layers.encoder import IdLookup
from trainer.layers.mmoe import MMoE
from trainer.layers.similarity import CosineSimilarity, DotSimilarity, MultiHeadSimilarity
from trainer.layers.towers import DCNTower, FMTower, MLPTower, Tower
from trainer.losses.distillation import CrossEntropyDistillation, MSEDistillation, PairwiseDistillation, logit
from trainer.losses.groups import group_ids, rank_within_groups, top_n_labels, with_unexposed
from trainer.losses.tasks import WeightedLogisticRegression
from trainer.losses.weighted import weighted_bce
from trainer.models.joint import JointModel, tower_components
from trainer.preprocessing.analyze import analyze
from trainer.preprocessing.fitted import Preprocessing
from trainer.spec import load_spec
from trainer.spec.sides import user_columns
from trainer.training.layout import CHECKPOINT_DIR, HISTORY_FILE
from trainer.training.loop import Loop
from trainer.training.optimizers import route_variables
from trainer.training.trained import load_trained

SHARD_ROWS = 4096  # a multiple of every batch size below: no partial batch, so no second trace of a step
TRAIN_SHARDS = 5  # part-00000..4 train (20480 rows); part-00005 is the held-out evaluation shard
BATCH = 256
BASE = [  # small and quick: ~160 steps (2 epochs); the learning rates suit the short run
    "training.progress=false", f"training.batch_size={BATCH}", "training.epochs=2", "training.log_every=5",
    "training.checkpoint_every=100000", "model.ftrl.learning_rate=0.3", "model.adagrad.learning_rate=0.05",
    "model.ftrl.initial_accumulator=0.001", "model.adagrad.initial_accumulator=0.001",
    "model.student.user_tower=[32,16]", "model.student.item_tower=[32,16]",
    "model.teacher.experts=2", "model.teacher.expert_layers=[32]", "model.teacher.task_tower=[16]"]
CONSTANT = ["model.distill.schedule.kind=constant", "model.distill.schedule.max=1"]
AUC_MIN = 0.6  # every run below reaches 0.70-0.76 (teacher) and 0.67-0.73 (student)
DROP_AFTER = 100
TASKS = ("click", "long_view", "watch_time")


@dataclass
class World:
    spec_path: str
    train: str
    eval: str
    root: str

    @cached_property
    def spec(self):
        return load_spec(self.spec_path)


@dataclass
class Run:
    model_dir: str
    metrics: dict
    history: list[dict]
    stdout: str

    @property
    def validation(self) -> dict:
        return self.metrics["validation"]

    def series(self, key: str) -> list[tuple[int, float]]:
        return [(h["step"], h[key]) for h in self.history if h.get(key) is not None]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    root = tmp_path_factory.mktemp("model")
    spec_path = root / "model_test.yaml"
    spec_path.write_text(spec_text("model_test"))
    data = root / "data"
    generate(load_spec(str(spec_path)), SHARD_ROWS * (TRAIN_SHARDS + 1), str(data), n_shards=TRAIN_SHARDS + 1,
             seed=3)
    return World(str(spec_path), str(data / "part-0000[0-4].tfrecord.gz"), str(data / "part-00005.tfrecord.gz"),
                 str(root))


@pytest.fixture(scope="module")
def fitted(world) -> Preprocessing:
    return analyze(world.spec, world.eval)


@pytest.fixture(scope="module")
def batch(world) -> dict:
    """The first 64 rows of the held-out shard."""
    config = InputConfig(batch_size=64, shuffle_buffer=0, deterministic=True)
    return next(iter(make_pipeline(world.spec, world.eval, config)))


@pytest.fixture(scope="module")
def train(world):
    """train(*sets) -> Run: the job with BASE + sets; each distinct configuration is trained once."""
    runs: dict[tuple, Run] = {}

    def run(*sets: str) -> Run:
        if sets not in runs:
            model_dir = os.path.join(world.root, f"run{len(runs)}")
            args = ["train", world.spec_path, "--model-dir", model_dir, "--data", world.train,
                    "--validation", world.eval]
            for s in BASE + list(sets):
                args += ["--set", s]
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                code = main(args)
            assert code == 0, (sets, out.getvalue())
            with open(os.path.join(model_dir, "metrics.json")) as fh:
                metrics = json.load(fh)
            with open(os.path.join(model_dir, HISTORY_FILE)) as fh:
                history = [json.loads(line) for line in fh]
            runs[sets] = Run(model_dir, metrics, history, out.getvalue())
        return runs[sets]

    return run


@pytest.fixture(scope="module")
def student(train):
    """student(*sets) -> Run: a student (mode student) distilled from one teacher trained alone."""
    teacher = train("model.mode=teacher", "training.epochs=3")

    def run(*sets: str) -> Run:
        return train("model.mode=student", f"training.teacher_dir={teacher.model_dir}", *sets)

    run.teacher = teacher
    return run


def _falls(run: Run, key: str, n: int = 4) -> tuple[float, float]:
    """(mean of the first n logged values, mean of the last n) of a loss; asserts it fell."""
    values = [v for _, v in run.series(key)]
    assert len(values) >= 2 * n, (key, values)
    first, last = float(np.mean(values[:n])), float(np.mean(values[-n:]))
    assert last < first, (key, first, last)
    return first, last


def _assert_student_learned(run: Run, auc_min: float = AUC_MIN, gauc_min: float = AUC_MIN) -> None:
    student = run.validation["student"]
    assert student["task"] == "click"
    assert student["auc"] > auc_min, student
    assert student["gauc"] > gauc_min, student


def _assert_teacher_learned(run: Run) -> None:
    teacher = run.validation["teacher"]
    for task in ("click", "long_view"):
        assert teacher[task]["auc"] > AUC_MIN, (task, teacher)


def _agreement(run: Run) -> float:
    return run.validation["consistency"]["by_k"][0]["pairwise_agreement"]


def _eval_target_std(world: World) -> float:
    """Spread of the transformed regression target on the held-out shard: the RMSE of predicting its mean."""
    config = InputConfig(batch_size=SHARD_ROWS, shuffle_buffer=0, deterministic=True)
    labels = np.concatenate([b["labels"]["watch_time"].numpy() for b in make_pipeline(world.spec, world.eval, config)])
    return float(np.std(np.log1p(labels)))


@dataclass
class OneBatch:
    """A JointModel and its losses on one batch, computed under a persistent tape."""

    model: JointModel
    losses: dict[str, tf.Tensor]
    tape: tf.GradientTape

    def gradients(self, variables: list[tf.Variable], key: str = "loss/total") -> list:
        return self.tape.gradient(self.losses[key], variables)

    def assert_gradients(self, variables: list[tf.Variable], key: str = "loss/total") -> None:
        """Every variable gets a gradient of the loss `key` (not None), and they are not all zero (some may be:
        e.g. the bias of a softmax's logits)."""
        assert variables
        grads = self.gradients(variables, key)
        assert not [v.name for v, g in zip(variables, grads) if g is None], key
        assert any(np.any(tf.convert_to_tensor(g).numpy() != 0) for g in grads), key

    def assert_no_gradients(self, variables: list[tf.Variable], key: str) -> None:
        assert variables
        for v, g in zip(variables, self.gradients(variables, key)):
            assert g is None or not np.any(tf.convert_to_tensor(g).numpy()), (key, v.name)


def _one_batch(world: World, fitted: Preprocessing, batch: dict, *sets: str, step: int = 0) -> OneBatch:
    """The model of BASE + sets, built and run (training=True) on `batch` at `step`; its losses are finite.
    Without id dropout unless `sets` asks for it, so the training losses can be recomputed from an inference
    pass."""
    tf.keras.utils.set_random_seed(0)
    config = load_config(world.spec, None, BASE + ["model.id_dropout=0"] + list(sets))
    model = JointModel(world.spec, fitted, config, name="joint")
    with tf.GradientTape(persistent=True) as tape:
        losses = model.compute_losses(batch, tf.constant(step, tf.int64), training=True,
                                      seed=tf.constant([0, 0], tf.int64))
    for key, value in losses.items():
        assert np.isfinite(value.numpy()), (key, value)
    return OneBatch(model, losses, tape)


def _sides(model: JointModel) -> tuple[Tower, Tower]:
    return model.user_tower, model.item_tower


def _student_tower_variables(model: JointModel) -> list[tf.Variable]:
    return [v for side in _sides(model) for v in side.trainable_variables]


# ---- 1. the default joint model ----------------------------------------------------------------------

def test_default_joint_model_on_one_batch(world, fitted, batch):
    one = _one_batch(world, fitted, batch)
    model, losses = one.model, one.losses
    assert set(losses) == {"loss/total", "loss/teacher", "loss/student", "loss/distill", "lambda",
                           *(f"loss/teacher/{t}" for t in TASKS),
                           *(f"weighted/{part}" for part in ("teacher", "student", "distill"))}
    assert all([type(t) for t in side.towers] == [MLPTower] and side.senet is None for side in _sides(model))
    assert type(model.similarity) is DotSimilarity and type(model.distill_loss) is CrossEntropyDistillation
    # watch_time has weight 0.5 in the spec; lambda ramps linearly from 0 at step 0
    teacher = losses["loss/teacher/click"] + losses["loss/teacher/long_view"] + 0.5 * losses["loss/teacher/watch_time"]
    np.testing.assert_allclose(losses["loss/teacher"], teacher, rtol=1e-6)
    assert float(losses["lambda"]) == 0.0 and float(losses["loss/distill"]) > 0
    np.testing.assert_allclose(losses["loss/total"], losses["loss/teacher"] + losses["loss/student"], rtol=1e-6)
    weighted = [v for k, v in losses.items() if k.startswith("weighted/")]  # the parts of the total, weighted
    np.testing.assert_allclose(losses["loss/total"], sum(weighted), rtol=1e-6)
    one.assert_gradients(model.trainable_variables)  # every variable learns from the total
    one.assert_no_gradients(model.teacher.trainable_variables, "loss/student")


@pytest.mark.slow
def test_default_joint_model_learns_every_task_and_its_losses_fall(world, train):
    run = train()
    assert run.metrics["mode"] == "joint" and run.metrics["step"] == 2 * TRAIN_SHARDS * SHARD_ROWS // BATCH
    _assert_teacher_learned(run)  # observed 0.70-0.74
    _assert_student_learned(run)  # observed auc 0.70-0.71, gauc 0.69-0.70
    assert run.validation["teacher"]["watch_time"]["rmse"] < 0.9 * _eval_target_std(world)
    for key in ("loss/total", "loss/teacher", "loss/teacher/click", "loss/teacher/long_view",
                "loss/teacher/watch_time", "loss/student"):
        _falls(run, key)
    assert not run.series("loss/mimic")
    consistency = run.validation["consistency"]["by_k"][0]
    assert consistency["sampled"] == 0 and consistency["pairwise_agreement"] > 0.6
    # the default schedule is a linear ramp over 1000 steps: lambda grows from 0
    lambdas = run.series("lambda")
    assert lambdas[0][1] < lambdas[-1][1] < 1.0
    # the model directory reloads to the model that was validated
    p = predict(load_trained(world.spec, run.model_dir, world.eval), world.eval)
    assert np.isclose(auc(p.labels["click"], p.student_logit), run.validation["student"]["auc"], atol=1e-6)
    assert np.isclose(auc(p.labels["click"], p.teacher["click"]), run.validation["teacher"]["click"]["auc"], atol=1e-6)
    np.testing.assert_allclose(p.teacher_score, p.teacher["click"], rtol=1e-6)  # fused weights: click only


# ---- 2. student options, on one batch ----------------------------------------------------------------

def _towers(model: JointModel, *kinds: type) -> list[tf.Variable]:
    """The variables of each side's towers (and fusion weights); the towers are of `kinds`."""
    out = []
    for side in _sides(model):
        assert [type(t) for t in side.towers] == list(kinds), side.name
        assert (side.fusion is None) == (len(kinds) == 1), side.name
        out += [v for t in side.towers for v in t.trainable_variables] + ([side.fusion] if len(kinds) > 1 else [])
    return out


def _similarity(model: JointModel, kind: type, **knobs) -> list[tf.Variable]:
    assert type(model.similarity) is kind
    assert {k: getattr(model.similarity, k) for k in knobs} == knobs
    return model.similarity.trainable_variables


def _senet(model: JointModel) -> list[tf.Variable]:
    assert all(side.senet.reduction == 2 for side in _sides(model))
    return [v for side in _sides(model) for v in side.senet.trainable_variables]


STUDENT_OPTIONS = {  # option -> (--set overrides, its own variables in a built model)
    "senet": (["model.student.senet.enabled=true", "model.student.senet.reduction=2"], _senet),
    "towers=dcn": (["model.student.towers=[dcn]", "model.student.dcn_layers=3"],
                   lambda m: _towers(m, DCNTower)),
    "towers=fm": (["model.student.towers=[fm]", "model.student.fm_dim=8"], lambda m: _towers(m, FMTower)),
    "towers=mlp+dcn+fm": (["model.student.towers=[mlp,dcn,fm]"], lambda m: _towers(m, MLPTower, DCNTower, FMTower)),
    "similarity=cosine": (["model.student.similarity=cosine", "model.student.temperature=0.5"],
                          lambda m: _similarity(m, CosineSimilarity, temperature=0.5)),
    "similarity=multi_head": (["model.student.similarity=multi_head", "model.student.heads=4"],
                              lambda m: _similarity(m, MultiHeadSimilarity, heads=4)),
    "dual_augmented": (["model.student.dual_augmented.enabled=true"],
                       lambda m: [t.embeddings for t in m.augment_tables.values()]),
}


@pytest.mark.parametrize("option", list(STUDENT_OPTIONS))
def test_student_option_on_one_batch(world, fitted, batch, option):
    sets, own_variables = STUDENT_OPTIONS[option]
    one = _one_batch(world, fitted, batch, *sets)
    if option == "towers=dcn":
        assert all(len(side.towers[0].crosses) == 3 for side in _sides(one.model))
    if option == "towers=fm":
        assert all(side.towers[0].factors == 8 for side in _sides(one.model))
    one.assert_gradients(own_variables(one.model))
    one.assert_gradients(own_variables(one.model), "loss/student")
    losses = one.losses
    if option == "dual_augmented":
        assert float(losses["loss/mimic"]) > 0 and set(one.model.augment_tables) == {"user", "item"}
        np.testing.assert_allclose(losses["loss/total"], losses["loss/teacher"] + losses["loss/student"]
                                   + losses["loss/mimic"], rtol=1e-5)  # mimic weight 1, lambda 0
    else:
        assert "loss/mimic" not in losses


def test_fm_tower_reads_the_dual_augmented_vector():
    towers = tower_components(StudentConfig(towers=[Component("fm")], fm_dim=4))
    assert towers == [{"name": "fm", "params": {"factors": 4}}]
    tower = Tower(["a", "b"], [8], towers, extra_fields=1)
    encoded = {"a": tf.random.stateless_normal([4, 3], [1, 0]), "b": tf.random.stateless_normal([4, 5], [2, 0])}
    one = tower(encoded, tf.random.stateless_normal([4, 8], [3, 0]))
    other = tower(encoded, tf.random.stateless_normal([4, 8], [4, 0]))
    assert float(tf.reduce_max(tf.abs(one - other))) > 1e-3


# ---- 3. teacher options, on one batch ----------------------------------------------------------------

def test_task_probability_follows_the_label_type_and_the_regression_loss(world, fitted):
    z = tf.constant([-2.0, 0.0, 3.0])
    for sets, watch_time in (([], [0.0, 0.0, 0.75]), (["model.teacher.regression_loss=weighted_logistic"],
                                                      tf.sigmoid(z))):
        model = JointModel(world.spec, fitted, load_config(world.spec, None, BASE + sets), name="joint")
        np.testing.assert_allclose(model.task_probability("click", z), tf.sigmoid(z), rtol=1e-6)
        np.testing.assert_allclose(model.task_probability("watch_time", z), watch_time, rtol=1e-6)


def test_teacher_weighted_logistic_regression_loss_on_one_batch(world, fitted, batch):
    one = _one_batch(world, fitted, batch, "model.teacher.regression_loss=weighted_logistic")
    model = one.model
    assert type(model.regression) is WeightedLogisticRegression
    z = model(batch["features"]).teacher_logits["watch_time"].numpy().astype(np.float64)
    target = np.log1p(np.maximum(batch["labels"]["watch_time"].numpy(), 0.0))
    w = batch["sample_weight"].numpy()
    expected = np.sum(w * (target * np.log1p(np.exp(-z)) + np.log1p(np.exp(z)))) / np.sum(w)
    np.testing.assert_allclose(one.losses["loss/teacher/watch_time"], expected, rtol=1e-4)
    np.testing.assert_allclose(model.task_probability("watch_time", z), 1 / (1 + np.exp(-z)), rtol=1e-5)
    np.testing.assert_allclose(model.task_estimate("watch_time", z), np.exp(z), rtol=1e-5)
    one.assert_gradients(model.teacher.towers["watch_time"].trainable_variables, "loss/teacher/watch_time")


def test_teacher_product_fusion_on_one_batch(world, fitted, batch):
    one = _one_batch(world, fitted, batch, "model.teacher.fused_score=product",
                     "model.teacher.fused_weights={click: 1.0, long_view: 0.5}")
    model = one.model
    assert model.fused_weights == {"click": 1.0, "long_view": 0.5}
    out = model(batch["features"])
    p = {t: tf.sigmoid(out.teacher_logits[t]).numpy() for t in ("click", "long_view")}
    np.testing.assert_allclose(out.teacher_score, p["click"] * p["long_view"] ** 0.5, rtol=1e-5)
    # the student distils from that score (cross-entropy, temperature 1)
    expected = CrossEntropyDistillation()(logit(out.teacher_score), out.student_logit, batch["sample_weight"])
    np.testing.assert_allclose(one.losses["loss/distill"], expected, rtol=1e-5)


def test_teacher_target_attention_on_one_batch(world, fitted, batch):
    one = _one_batch(world, fitted, batch, "model.teacher.target_attention=true")
    model = one.model
    # watch_seq attended by video_id (table `video`)
    assert [p.field for p in model.attention_pairs] == ["watch_seq@video_id"] and len(model.teacher.attention) == 1
    assert model.teacher.fields[-1] == "watch_seq@video_id"
    attention = model.teacher.attention[0].trainable_variables
    one.assert_gradients(attention, "loss/teacher")
    one.assert_no_gradients(attention, "loss/student")  # the student never sees the attended fields


def test_teacher_dropout_option_on_one_batch(world, fitted, batch):
    model = _one_batch(world, fitted, batch, "model.teacher.dropout=0.5").model
    assert model.teacher.dropout == 0.5 and all(e.drop for e in model.teacher.experts)
    step = tf.constant(0, tf.int64)
    training = [float(model.compute_losses(batch, step, training=True)["loss/teacher"]) for _ in range(2)]
    inference = [float(model.compute_losses(batch, step, training=False)["loss/teacher"]) for _ in range(2)]
    assert inference[0] == inference[1] and training[0] != training[1]


def test_teacher_dropout_acts_in_training_only():
    teacher = MMoE(["a"], ["click"], experts=2, expert_layers=[16], task_tower=[8], dropout=0.5)
    x = {"a": tf.random.stateless_normal([64, 6], [5, 0])}
    inference = [teacher(x, training=False)["click"].numpy() for _ in range(2)]
    training = [teacher(x, training=True)["click"].numpy() for _ in range(2)]
    np.testing.assert_array_equal(inference[0], inference[1])
    assert np.abs(training[0] - training[1]).max() > 1e-4 and np.abs(training[0] - inference[0]).max() > 1e-4


# ---- 4. distillation, on one batch -------------------------------------------------------------------

DISTILL_LOSSES = {"mse": MSEDistillation, "cross_entropy": CrossEntropyDistillation, "pairwise": PairwiseDistillation}


@pytest.mark.parametrize("loss", list(DISTILL_LOSSES))
def test_distillation_loss_on_one_batch(world, fitted, batch, loss):
    one = _one_batch(world, fitted, batch, f"model.distill.loss={loss}", "model.distill.temperature=2", *CONSTANT)
    model, losses = one.model, one.losses
    assert type(model.distill_loss) is DISTILL_LOSSES[loss]
    if loss == "cross_entropy":
        assert model.distill_loss.temperature == 2.0
    assert float(losses["lambda"]) == 1.0 and float(losses["loss/distill"]) > 0  # pairwise: the batch has pairs
    np.testing.assert_allclose(losses["loss/total"], losses["loss/teacher"] + losses["loss/student"]
                               + losses["loss/distill"], rtol=1e-5)
    one.assert_gradients(_student_tower_variables(model), "loss/distill")
    one.assert_no_gradients(model.teacher.trainable_variables, "loss/distill")  # it never moves the teacher


def test_drop_label_loss_after_on_one_batch(world, fitted, batch):
    one = _one_batch(world, fitted, batch, *CONSTANT, f"model.distill.drop_label_loss_after={DROP_AFTER}",
                     step=DROP_AFTER)
    model, losses = one.model, one.losses
    assert float(losses["loss/student"]) == 0.0 and float(losses["loss/distill"]) > 0
    np.testing.assert_allclose(losses["loss/total"], losses["loss/teacher"] + losses["loss/distill"], rtol=1e-6)
    one.assert_no_gradients(_student_tower_variables(model), "loss/student")
    one.assert_gradients(_student_tower_variables(model))  # it learns from the teacher alone
    earlier = model.compute_losses(batch, tf.constant(DROP_AFTER - 1, tf.int64), training=False)
    labels = weighted_bce(batch["labels"]["click"], model(batch["features"]).student_logit, batch["sample_weight"])
    assert float(earlier["loss/student"]) > 0.1
    np.testing.assert_allclose(earlier["loss/student"], labels, rtol=1e-5)


# ---- 5. separate mode: a student distilled from a frozen teacher ------------------------------------

def _teacher_checkpoint(model_dir: str, encoder: str) -> dict[str, np.ndarray]:
    """The teacher's (MMoE and encoder tables) variables of a model directory's latest checkpoint."""
    latest = tf.train.latest_checkpoint(os.path.join(model_dir, CHECKPOINT_DIR))
    out = {}
    for name, _ in tf.train.list_variables(latest):
        if "OPTIMIZER_SLOT" in name:
            continue
        for prefix, as_name in ((f"model/{encoder}/", "model/encoder/"), ("model/teacher/", "model/teacher/")):
            if name.startswith(prefix):
                out[as_name + name[len(prefix):]] = tf.train.load_variable(latest, name)
    return out


@pytest.mark.slow
def test_separate_mode_student_learns_from_a_frozen_teacher(student, world):
    """Against one frozen teacher the targets do not move: the student learns them (judged on held-out rows)."""
    teacher, run = student.teacher, student(*CONSTANT)
    assert teacher.metrics["mode"] == "teacher" and "student" not in teacher.validation
    assert not teacher.series("loss/student") and not teacher.series("loss/distill")
    _assert_teacher_learned(teacher)  # observed 0.73-0.76
    saved = _teacher_checkpoint(teacher.model_dir, "encoder")
    assert any("/tables/" in k for k in saved) and any(k.startswith("model/teacher/") for k in saved)
    assert run.metrics["mode"] == "student"
    assert run.validation["teacher"] == teacher.validation["teacher"]  # the same predictions
    after = _teacher_checkpoint(run.model_dir, "teacher_encoder")
    assert after.keys() == saved.keys()
    for name, value in saved.items():
        np.testing.assert_array_equal(after[name], value, err_msg=name)  # frozen
    _assert_student_learned(run)  # observed auc 0.72-0.73, gauc 0.71-0.72
    assert not run.series("loss/teacher")
    assert {v for _, v in run.series("lambda")} == {1.0}
    _falls(run, "loss/student")
    # The distillation loss is bounded below by the teacher's entropy, which varies more from batch to batch than
    # the loss falls after the first few steps: judged on the held-out shard instead, against the best constant
    # student (the teacher's mean probability everywhere), whose loss is the binary entropy of that mean.
    p = predict(load_trained(world.spec, run.model_dir, world.eval), world.eval)
    targets = p.teacher_score.astype(np.float64)
    distill = float(np.mean(tf.nn.sigmoid_cross_entropy_with_logits(targets, p.student_logit.astype(np.float64))))
    mean = targets.mean()
    constant = float(-(mean * np.log(mean) + (1 - mean) * np.log(1 - mean)))
    assert distill < constant - 0.01, (distill, constant)
    assert _agreement(run) > 0.68, _agreement(run)  # observed 0.76-0.82


# ---- 6. cascade mode ---------------------------------------------------------------------------------

def test_rank_within_groups_and_top_n_labels_with_ties():
    # groups interleaved; ties go to the earlier row
    scores = tf.constant([0.5, 0.1, 0.9, 0.7, 0.5, 0.7, 0.3, 0.5])
    groups = tf.constant([0, 1, 0, 1, 0, 1, 2, 0])
    np.testing.assert_array_equal(rank_within_groups(scores, groups), [1, 2, 0, 0, 2, 1, 0, 3])
    np.testing.assert_array_equal(top_n_labels(scores, groups, 1), [0, 0, 1, 1, 0, 0, 1, 0])
    np.testing.assert_array_equal(top_n_labels(scores, groups, 2), [1, 0, 1, 1, 0, 1, 1, 0])
    np.testing.assert_array_equal(top_n_labels(scores, groups, 10), np.ones(8))
    tied = tf.constant([1.0, 1.0, 1.0, 1.0])
    np.testing.assert_array_equal(rank_within_groups(tied, tf.constant([0, 0, 0, 0])), [0, 1, 2, 3])
    ids, n = group_ids(tf.constant(["u2", "u1", "u2", "u3"]))
    np.testing.assert_array_equal(ids, [0, 1, 0, 2])
    assert int(n) == 3


def test_with_unexposed_joins_group_users_to_catalog_items(world, batch):
    spec = world.spec
    catalog = build_catalog(spec, world.eval, batch_size=1000)
    assert catalog.id_column == "video_id" and len(set(catalog.ids.tolist())) == catalog.size > 50
    assert set(catalog.columns) == {"video_id", "author", "duration", "stat_ctr"}
    items = {c: v.numpy() for c, v in catalog.columns.items()}
    np.testing.assert_array_equal(items["video_id"], catalog.ids)
    features = batch["features"]
    groups, n_groups = group_ids(batch["group"])
    users = user_columns(spec)
    assert users == ["city", "hour", "user_age", "user_id", "watch_seq"]
    k, b, g = 3, 64, int(n_groups)
    out, out_groups = with_unexposed(features, groups, n_groups, k, catalog, users, tf.constant([5, 1], tf.int64))
    np.testing.assert_array_equal(out_groups, np.concatenate([groups.numpy(), np.repeat(np.arange(g), k)]))
    first_row = [int(np.flatnonzero(groups.numpy() == i)[0]) for i in range(g)]
    for column, value in out.items():
        assert value.shape[0] == b + g * k, column
        assert _rows(value, range(b)) == _rows(features[column], range(b)), column  # exposed rows kept
    for j in range(g * k):
        row, owner = b + j, j // k
        for column in users:  # the group's own user and context
            assert _rows(out[column], [row]) == _rows(features[column], [first_row[owner]]), column
        item = int(np.flatnonzero(catalog.ids == _rows(out["video_id"], [row])[0])[0])
        for column in ("author", "duration", "stat_ctr"):  # the rest of the row: that item's catalog columns
            assert _rows(out[column], [row]) == [items[column][item].item()], column
    again, _ = with_unexposed(features, groups, n_groups, k, catalog, users, tf.constant([5, 1], tf.int64))
    np.testing.assert_array_equal(again["video_id"], out["video_id"])  # seeded
    assert len(set(_rows(out["video_id"], range(b, b + g * k)))) > 1


def _rows(value, rows) -> list:
    value = tf.gather(value, list(rows))
    return value.to_list() if isinstance(value, tf.RaggedTensor) else value.numpy().tolist()


def test_joint_cascade_losses(world, fitted, batch):
    """Joint cascade mode with sampled items: the teacher's losses use the exposed rows only; the student's
    targets are the teacher's top-n of each group over exposed and sampled rows."""
    spec = world.spec
    config = load_config(spec, None, BASE + ["model.distill.cascade.enabled=true", "model.distill.cascade.top_n=2",
                                             "model.distill.cascade.unexposed=3", *CONSTANT])
    catalog = build_catalog(spec, world.eval)
    model = JointModel(spec, fitted, config, catalog, name="joint")
    seed = tf.constant([7, 0], tf.int64)
    losses = model.compute_losses(batch, tf.constant(0, tf.int64), training=False, seed=seed)
    exposed = model(batch["features"])
    for task in TASKS:
        expected = model.task_loss(task, batch["labels"][task], exposed.teacher_logits[task], batch["sample_weight"])
        np.testing.assert_allclose(losses[f"loss/teacher/{task}"], expected, rtol=1e-4, err_msg=task)
    groups, n_groups = group_ids(batch["group"])
    features, all_groups = with_unexposed(batch["features"], groups, n_groups, 3, catalog, user_columns(spec), seed)
    out = model(features)
    n = 64 + 3 * int(n_groups)
    assert out.student_logit.shape[0] == n
    target = top_n_labels(out.teacher_score, all_groups, 2)
    assert float(tf.reduce_sum(target)) == sum(min(2, c) for c in np.bincount(all_groups.numpy()))
    weight = tf.concat([batch["sample_weight"], tf.ones([n - 64])], axis=0)
    bce = tf.nn.sigmoid_cross_entropy_with_logits(labels=target, logits=out.student_logit)
    np.testing.assert_allclose(losses["loss/student"], tf.reduce_sum(bce * weight) / tf.reduce_sum(weight), rtol=1e-4)


@pytest.mark.slow
def test_cascade_with_unexposed_items_trains_a_ranking_student(student):
    run = student("model.distill.cascade.enabled=true", "model.distill.cascade.top_n=1",
                  "model.distill.cascade.unexposed=3", *CONSTANT)
    assert "sampling 3 unexposed per group" in run.stdout
    # The student never sees a label: its positives are the teacher's top-1 of each group of a batch
    # (exposed or sampled). Observed auc 0.67-0.69, gauc 0.69-0.70. (In joint mode, where the teacher starts
    # untrained, the same run reaches only auc 0.57-0.64, gauc 0.59-0.65 in 160 steps.)
    _assert_student_learned(run)
    _falls(run, "loss/student")


# ---- 7. optimizer routing ----------------------------------------------------------------------------

def test_optimizer_routing_and_sparse_ftrl_updates(world, fitted, batch, tmp_path):
    spec = world.spec
    config = load_config(spec, None, BASE + ["model.student.dual_augmented.enabled=true",
                                             "model.teacher.target_attention=true",
                                             "model.id_dropout=0", "model.id_dropout_tables={user: 0.5}"])
    loop = Loop(spec, config, str(tmp_path), tf.distribute.get_strategy(),
                lambda: JointModel(spec, fitted, config, name="joint"), world.eval, None)
    model = loop.model
    routing = route_variables(model)
    key = lambda v: v.ref()  # noqa: E731
    embedding, dense = {key(v) for v in routing.embedding}, {key(v) for v in routing.dense}
    assert len(embedding) == len(routing.embedding) and len(dense) == len(routing.dense)
    assert embedding.isdisjoint(dense)
    assert embedding | dense == {key(v) for v in model.trainable_variables}
    tables = model.embedding_tables
    assert {t.name for t in tables} >= {"augment_user", "augment_item", "embedding_user", "embedding_video"}
    table_vars = {key(v) for t in tables for v in t.trainable_variables}
    assert table_vars == embedding and len(table_vars) == len(spec.tables) + 2
    attention_vars = {key(v) for a in model.teacher.attention for v in a.trainable_variables}
    assert len(model.teacher.attention) == 1 and attention_vars and attention_vars <= dense

    before = {t.name: t.embeddings.numpy() for t in tables}
    oov_tables = {"embedding_user", "embedding_video", "augment_user", "augment_item"}
    assert all(not before[t][0].any() and before[t][1].any() for t in oov_tables)  # OOV rows start at zero
    loop.make_train_step()(batch)

    def has_slots(optimizer, variable) -> bool:
        return any(_slot(optimizer, variable, name) is not None for name in optimizer.get_slot_names())

    assert loop.ftrl.get_slot_names() and loop.adagrad.get_slot_names()
    assert all(has_slots(loop.ftrl, v) and not has_slots(loop.adagrad, v) for v in routing.embedding)
    assert all(has_slots(loop.adagrad, v) and not has_slots(loop.ftrl, v) for v in routing.dense)

    # sparse FTRL: only the rows the batch selected moved
    touched: dict[str, set] = {}
    for name, table in model.encoder.tables.items():
        rows = set()
        for feature in spec.tables[name].features:
            ids = model.encoder.row_ids(spec.feature(feature), batch["features"])
            rows |= set(np.asarray(ids.flat_values if isinstance(ids, tf.RaggedTensor) else ids).tolist())
        touched[table.name] = rows
    for side, feature in model.augment_features.items():
        touched[f"augment_{side}"] = set(model.encoder.row_ids(feature, batch["features"]).numpy().tolist())
    # id dropout on user ids: the user OOV row (and its dual augmented vector) learned. The batch has no unknown
    # video and video ids are not dropped: those OOV rows were never read, and are still zero
    for name in ("embedding_user", "augment_user"):
        assert 0 not in touched[name] and np.any(next(t for t in tables if t.name == name).embeddings[0].numpy())
        touched[name].add(0)
    assert not any(np.any(t.embeddings[0].numpy()) for t in tables if t.name in ("embedding_video", "augment_item"))
    for t in tables:
        changed = np.flatnonzero(np.any(t.embeddings.numpy() != before[t.name], axis=1))
        assert set(changed.tolist()) <= touched[t.name], t.name
        assert len(changed) > 0.5 * len(touched[t.name]), t.name
        if t.num_rows > len(touched[t.name]):
            assert len(changed) < t.num_rows, t.name


def _slot(optimizer, variable, name):
    try:
        return optimizer.get_slot(variable, name)
    except KeyError:
        return None


@pytest.mark.slow
def test_steps_per_call_train_the_weights_of_single_steps_and_keep_logs_on_their_steps(world, fitted, tmp_path):
    """k steps in one graph call (a loop over the batches inside it) are the very steps of k calls of one step: the
    same weights and optimizer slots, bit for bit, with logs on the configured steps, rows counted, and the run's
    end (max_steps) found inside a call."""
    def run(name: str, steps_per_call: int) -> list[np.ndarray]:
        c = load_config(world.spec, None, BASE + ["training.deterministic=true", "training.max_steps=5",
                                                  "training.log_every=2", "model.id_dropout=0.1",
                                                  f"training.steps_per_call={steps_per_call}"])

        def model() -> JointModel:
            tf.keras.utils.set_random_seed(0)  # as the job does: the same initial weights
            return JointModel(world.spec, fitted, c, name="joint")

        loop = Loop(world.spec, c, str(tmp_path / name), tf.distribute.get_strategy(), model, world.eval, None)
        result = loop.run()
        assert (result.step, result.examples) == (5, 5 * BATCH)
        with open(tmp_path / name / HISTORY_FILE) as fh:
            assert [row["step"] for row in map(json.loads, fh) if "examples_per_sec" in row] == [2, 4]
        return [v.numpy() for v in loop.model.variables + loop.ftrl.variables() + loop.adagrad.variables()]

    single, looped = run("single", 1), run("looped", 3)  # looped: calls of 2 (to each log), 2, then 1 (max_steps)
    assert len(single) == len(looped) > 20
    for i, (a, b) in enumerate(zip(single, looped)):
        np.testing.assert_array_equal(b, a, err_msg=str(i))


# ---- 8. id dropout: the OOV rows learn ----------------------------------------------------------------

def test_id_dropout_acts_in_training_only_on_categorical_ids_and_is_seeded(world, fitted, batch):
    model = _one_batch(world, fitted, batch, "model.id_dropout=0.3", "model.id_dropout_tables={city: 0}").model
    # every categorical feature looked up in a vocabulary drops (city: overridden to 0); hashed crosses cannot
    assert model.encoder.id_dropout == {"user": 0.3, "hour": 0.3, "video": 0.3, "author": 0.3}
    features, spec = batch["features"], world.spec
    seed = tf.constant([4, 1], tf.int64)
    rows, dropped = (model.encoder.row_ids(spec.feature("user_id"), features, s).numpy() for s in (None, seed))
    assert rows.min() >= 1 and 0 < np.mean(dropped != rows) < 0.6 and set(dropped[dropped != rows]) == {0}
    for name in ("watch_seq", "user_x_author", "city"):  # a sequence, a cross, a rate of 0: never dropped
        f = spec.feature(name)
        kept, with_seed = model.encoder.row_ids(f, features), model.encoder.row_ids(f, features, seed)
        assert tf.reduce_all(tf.equal(kept.flat_values if isinstance(kept, tf.RaggedTensor) else kept,
                                      with_seed.flat_values if isinstance(with_seed, tf.RaggedTensor) else with_seed))

    def total(training: bool, s: tf.Tensor | None = seed) -> float:
        return float(model.compute_losses(batch, tf.constant(3, tf.int64), training=training, seed=s)["loss/total"])

    inference = total(False)
    assert total(True) == total(True) != inference  # seeded: the same step drops the same ids
    assert total(True, tf.constant([4, 2], tf.int64)) != total(True)
    model.encoder.id_dropout = {}  # the dropout is the one thing training adds here: none at inference
    assert total(True) == inference


def test_out_of_vocabulary_marks_the_rows_whose_ids_read_the_oov_row(world, fitted):
    spec = world.spec
    vocabularies = {**fitted.vocabularies, "user": fitted.vocabularies["user"][::2],
                    "video": fitted.vocabularies["video"][1::2]}  # half of each known: the other half unseen
    half = dataclasses.replace(fitted, vocabularies=vocabularies)
    unseen = out_of_vocabulary(spec, half, world.eval, ["user_id", "video_id"])
    config = InputConfig(batch_size=SHARD_ROWS, shuffle_buffer=0, deterministic=True)
    batches = list(make_pipeline(spec, world.eval, config))
    for name, table in (("user_id", "user"), ("video_id", "video")):
        rows = np.concatenate([IdLookup("int64", vocabularies[table])(b["features"][name]).numpy() for b in batches])
        assert len(unseen[name]) == SHARD_ROWS and 0 < unseen[name].sum() < SHARD_ROWS
        np.testing.assert_array_equal(unseen[name], rows == 0)  # exactly the rows the model's lookup sends there
    labels = {"click": np.concatenate([b["labels"]["click"].numpy() for b in batches])}
    aucs = slice_aucs(labels, {"click": labels["click"]}, unseen["user_id"])
    assert aucs == {"click": 1.0} and slice_aucs(labels, {"click": labels["click"]}, np.zeros(SHARD_ROWS, bool)) == \
        {"click": None}
    with pytest.raises(DataError, match="user_x_author.*expected a categorical feature looked up in a vocabulary"):
        out_of_vocabulary(spec, fitted, world.eval, ["user_x_author"])
