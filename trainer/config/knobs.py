"""Every knob of the model and training configuration, declared once with its default and a one-line doc.

The knobs live in the `model:` and `training:` sections of the feature spec
(or of a separate file given with `--config`), beside `plugins:`; see
`trainer.config.loader` for how they are read and checked. A choice among
registered components (towers, similarity, distillation and regression
losses) is a `Component`: a name, optionally with `params:`.
"""
import dataclasses
from dataclasses import dataclass, field
from typing import Any

from trainer.registry import DISTILLATION_LOSSES, REGRESSION_LOSSES, SIMILARITIES, TOWERS, Registry


MAX_LAYER_SIZE = 16_384  # units of one dense layer (a larger one is a typo: 1e9 units would not fit in memory)
MAX_STEPS = 10**12  # steps, step counts and batch sizes
MAX_ID_DROPOUT = 0.5  # model.id_dropout: past half of the ids an id table would learn little but its OOV row


def knob(default: Any, doc: str, choices: tuple | None = None, registry: Registry | None = None,
         minimum: float = 0, above: float | None = None, maximum: float | None = None) -> Any:
    """Declare a config field.

    Args:
      default: its value when the config does not set it.
      doc: what it does, in one line.
      choices: the values it may take (None: any value of its type).
      registry: for a `Component` knob, the registry whose names it may take.
      minimum: a number's (or each list item's) smallest value, inclusive.
      above: a number's bound from below, exclusive (learning rates, accumulators: > 0); replaces `minimum`.
      maximum: a number's (or each list item's) largest value, inclusive (None: MAX_STEPS for an integer).
    """
    meta = {"doc": doc, "choices": choices, "registry": registry, "minimum": minimum, "above": above,
            "maximum": maximum}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Component:
    """A registered component chosen by name; `params` are its own keyword arguments (custom components only).

    In YAML either the name (``similarity: dot``) or a mapping (``{name: wide, params: {width: 128}}``).
    """

    name: str
    params: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class SenetConfig:
    enabled: bool = knob(False, "re-weight each tower's feature fields with a squeeze-excitation block")
    reduction: int = knob(4, "excitation bottleneck: fields / reduction hidden units", minimum=1)


@dataclass(frozen=True)
class DualAugmentedConfig:
    enabled: bool = knob(False, "add a learned augmentation vector per user id and per item id (dual augmented "
                                "two-tower); each learns the other tower's output on positives")
    user_feature: str | None = knob(None, "categorical user feature whose ids own the user vectors "
                                          "(default: the first categorical user feature)")
    item_feature: str | None = knob(None, "categorical item feature whose ids own the item vectors "
                                          "(default: the first categorical item feature)")
    mimic_weight: float = knob(1.0, "weight of the mimic loss (augmentation vector vs stop-gradient of the "
                                    "other tower's output, on positives)")


@dataclass(frozen=True)
class StudentConfig:
    user_tower: list[int] = knob([128, 64, 32], "user tower layer sizes; the last is the vector size (the default "
                                                "was chosen on the KuaiRand tuning split: README, Training benchmark)",
                                 minimum=1, maximum=MAX_LAYER_SIZE)
    item_tower: list[int] = knob([128, 64, 32], "item tower layer sizes; the last must equal the user's",
                                 minimum=1, maximum=MAX_LAYER_SIZE)
    towers: list[Component] = knob([Component("mlp")], "parallel towers per side, fused with learned weights "
                                   "(built-in: mlp, dcn, fm; or a registered tower)", registry=TOWERS)
    dcn_layers: int = knob(2, "cross layers of the dcn tower", minimum=1, maximum=64)
    fm_dim: int = knob(16, "factor size of the fm tower", minimum=1, maximum=MAX_LAYER_SIZE)
    senet: SenetConfig = knob(SenetConfig(), "squeeze-excitation field re-weighting")
    similarity: Component = knob(Component("dot"), "how the two vectors make a score (built-in: dot, cosine, "
                                                   "multi_head; or a registered similarity)", registry=SIMILARITIES)
    temperature: float = knob(0.1, "cosine: the score is cosine / temperature", above=0)
    heads: int = knob(4, "multi_head: the vectors are split into this many sub-vectors", minimum=1,
                     maximum=MAX_LAYER_SIZE)
    dual_augmented: DualAugmentedConfig = knob(DualAugmentedConfig(), "dual augmented vectors")
    task: str | None = knob(None, "the label the student learns (default: the spec's first binary label)")


@dataclass(frozen=True)
class TeacherConfig:
    experts: int = knob(4, "MMoE experts", minimum=1, maximum=256)
    expert_layers: list[int] = knob([256, 128], "layer sizes of each expert", minimum=1, maximum=MAX_LAYER_SIZE)
    task_tower: list[int] = knob([64], "layer sizes of each task's tower above its gate", minimum=1,
                                 maximum=MAX_LAYER_SIZE)
    dropout: float = knob(0.0, "dropout rate after each expert layer, in training (below 1)", maximum=0.99)
    regression_loss: Component = knob(Component("mse"), "regression tasks: mse on the (transformed) target, "
                                      "weighted_logistic (odds estimate the target), or a registered loss",
                                      registry=REGRESSION_LOSSES)
    fused_score: str = knob("weighted_sum", "how task predictions make the ranking score the student learns",
                            choices=("weighted_sum", "product"))
    fused_weights: dict[str, float] = knob({}, "task -> weight in the fused score (default: the student's task, 1)")
    target_attention: bool = knob(False, "also pool each user history sequence with weights from the candidate "
                                         "(DIN-style), for every item feature sharing its table")
    attention_hidden: int = knob(32, "hidden units of the target attention's scoring MLP", minimum=1,
                                 maximum=MAX_LAYER_SIZE)


@dataclass(frozen=True)
class ScheduleConfig:
    kind: str = knob("linear", "how lambda grows", choices=("constant", "linear", "sigmoid"))
    max: float = knob(1.0, "lambda's final value")
    start_step: int = knob(0, "lambda is 0 before this step")
    ramp_steps: int = knob(1000, "linear / sigmoid: steps from start_step to (about) max")


@dataclass(frozen=True)
class CascadeConfig:
    enabled: bool = knob(False, "the student learns the teacher's top-N of each group instead of the labels")
    top_n: int = knob(1, "teacher's top-N candidates of a group become the student's positives", minimum=1)
    unexposed: int = knob(0, "items sampled per group from the item table (never shown; teacher labels only)")


@dataclass(frozen=True)
class DistillConfig:
    loss: Component = knob(Component("cross_entropy"), "mse (logits), cross_entropy (teacher probability at a "
                           "temperature), pairwise (teacher's order within a group), or a registered loss",
                           registry=DISTILLATION_LOSSES)
    temperature: float = knob(1.0, "cross_entropy: both logits are divided by this", above=0)
    schedule: ScheduleConfig = knob(ScheduleConfig(), "lambda(step), the distillation weight")
    drop_label_loss_after: int | None = knob(None, "from this step on the student learns from the teacher only")
    cascade: CascadeConfig = knob(CascadeConfig(), "cascade mode")


@dataclass(frozen=True)
class FtrlConfig:
    learning_rate: float = knob(0.05, "FTRL learning rate (embedding tables)", above=0)
    l1: float = knob(0.0, "L1 strength: drives rows to exactly zero (pruned at export)")
    l2: float = knob(0.0, "L2 strength")
    initial_accumulator: float = knob(0.001, "FTRL initial accumulator value (large values slow early learning)",
                                       above=0)


@dataclass(frozen=True)
class AdagradConfig:
    learning_rate: float = knob(0.05, "AdaGrad learning rate (every non-embedding variable)", above=0)
    initial_accumulator: float = knob(0.001, "AdaGrad initial accumulator value (large values slow early "
                                                     "learning)", above=0)


@dataclass(frozen=True)
class ModelConfig:
    mode: str = knob("joint", "joint: student and teacher together; teacher: the teacher alone; student: a "
                              "student distilled from a saved teacher (training.teacher_dir)",
                     choices=("joint", "teacher", "student"))
    student: StudentConfig = knob(StudentConfig(), "the two-tower student")
    teacher: TeacherConfig = knob(TeacherConfig(), "the MMoE teacher")
    distill: DistillConfig = knob(DistillConfig(), "distillation from teacher to student")
    ftrl: FtrlConfig = knob(FtrlConfig(), "optimizer of the embedding tables")
    adagrad: AdagradConfig = knob(AdagradConfig(), "optimizer of the dense layers")
    id_dropout: float = knob(0.05, "in training only: the share of the ids of each categorical feature looked up in a "
                                  "vocabulary (spec source data or file) that read their table's out-of-vocabulary row "
                                  "instead, drawn per id and step from training.seed; so that row learns the "
                                  "'unknown id' embedding every rare or unseen id reads (sequences and hashed crosses "
                                  "are not dropped; the default was chosen on a tuning split, README: Cold-start rows)",
                             maximum=MAX_ID_DROPOUT)
    id_dropout_tables: dict[str, float] = knob({}, "table -> id dropout rate of the categorical features reading it, "
                                                   "in place of model.id_dropout (0: none for that table)")


EVAL_POINTS = 8  # evaluations (and zero-row scans) in a run whose training.eval_every is not set


def evaluation_cadence(eval_every: int | None, steps: int | None) -> int:
    """The steps between evaluations: `eval_every` if set (0: none before the end), else EVAL_POINTS evenly
    spaced over `steps` (every training.checkpoint_every-like 1000 steps when the run's length is unknown)."""
    if eval_every is not None:
        return eval_every
    return max(1, -(-steps // EVAL_POINTS)) if steps else 1000


@dataclass(frozen=True)
class TrainingConfig:
    batch_size: int = knob(1024, "examples per step (global, across workers)", minimum=1, maximum=1 << 24)
    epochs: int = knob(1, "passes over the training data", minimum=1)
    max_steps: int | None = knob(None, "stop after this many steps (default: when the epochs end); a warm-started "
                                       "run: this many steps after the step it continues from", minimum=1)
    warm_start_epochs: int = knob(1, "passes over the training data of a warm-started run (`train --warm-start`: "
                                     "the model has seen the earlier days; reading one day's rows again and again "
                                     "overfits them)", minimum=1)
    shuffle_buffer: int = knob(10_000, "examples in the shuffle buffer (0: read in file order)")
    seed: int = knob(0, "seed of initialisation and shuffling")
    deterministic: bool = knob(False, "read and shuffle the training data in a fixed, seeded order (every epoch "
                                      "alike), so a run, and a resumed run, can be reproduced exactly; slower")
    steps_per_call: int = knob(10, "training steps run by one call of the compiled step (a loop over the batches "
                                   "inside the graph: fewer Python round trips); a call ends early at the steps where "
                                   "a log, evaluation or checkpoint is due, so they land on the same steps, and the "
                                   "weights are the same for any value; single worker, and each call a "
                                   "parameter-server job schedules on a worker (a MultiWorkerMirrored job runs one "
                                   "step a call)", minimum=1, maximum=10_000)
    log_every: int = knob(50, "steps between TensorBoard scalars / history lines", minimum=1)
    checkpoint_every: int = knob(500, "steps between checkpoints", minimum=1)
    keep_checkpoints: int = knob(3, "checkpoints kept", minimum=1)
    eval_every: int | None = knob(None, "steps between evaluations on the validation data and scans of the tables' "
                                        "all-zero rows (default: EVAL_POINTS of them over the run's known or "
                                        "estimated steps; 0: only at the end)")
    eval_batches: int | None = knob(None, "batches read per evaluation (default: all)", minimum=1)
    teacher_dir: str | None = knob(None, "mode student: model directory of the trained teacher")
    progress: bool = knob(True, "show a progress bar")
    min_shard_mb: float = knob(64.0, "parameter-server jobs: an embedding table is split by rows into shards of at "
                                     "least this many MB (its weights alone), at most one per parameter server; a "
                                     "smaller table stays one variable on one of them", above=0)
    cluster_grace_seconds: int = knob(120, "parameter-server jobs: how long worker and parameter-server tasks wait "
                                           "for a chief that stopped answering (killed) to come back before they "
                                           "exit; they exit at once when the chief finishes", minimum=1)
    max_table_gb: float = knob(8.0, "largest embedding table one machine trains, in GB with FTRL's two slots "
                                    "(rows x dim x 4 bytes x 3); a larger one is refused (a parameter-server job: "
                                    "its share of each parameter server)", above=0)


@dataclass(frozen=True)
class Config:
    """The whole configuration of a job. Built in Python it gets the same checks as one read from YAML
    (`trainer.config.validate_config`, run by `trainer.train`)."""

    model: ModelConfig = knob(ModelConfig(), "model, losses and optimizers")
    training: TrainingConfig = knob(TrainingConfig(), "the training loop")
    plugins: list[str] = knob([], "modules that register custom components (dotted module names, or .py files "
                                  "relative to the config file); imported before the rest of the config is read")

    def to_dict(self) -> dict:
        """Plain data, as YAML would give it: a Component without params becomes its name."""
        return _plain(self)


def _plain(value: Any) -> Any:
    if isinstance(value, Component):
        return value.name if not value.params else {"name": value.name, "params": _plain(value.params)}
    if dataclasses.is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


