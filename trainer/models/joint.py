"""The joint model: shared embeddings, the two-tower student, the MMoE teacher, and their losses.

loss = L_student(labels) + lambda(step) * L_distill(teacher, student) + L_teacher(labels)
(+ the dual augmented mimic loss). `compute_losses` is separate from the
training step (`trainer.training.loop`), which only differentiates and applies.

Modes (model.mode):
- joint: both models train on one shared FeatureEncoder.
- teacher: the teacher alone (the student parts are not built).
- student: a student distilled from a frozen, separately trained teacher, which
  keeps its own encoder (restored from training.teacher_dir).
"""
from dataclasses import dataclass

import tensorflow as tf

from trainer.config.derived import fused_weights, id_dropout_rates, student_task
from trainer.config.knobs import Config, StudentConfig
from trainer.data.catalog import ItemCatalog
from trainer.errors import ConfigError
from trainer.layers.embedding import EmbeddingTable
from trainer.layers.encoder import FeatureEncoder
from trainer.layers.mmoe import MMoE, fused_score
from trainer.layers.similarity import Similarity
from trainer.layers.towers import Tower
from trainer.losses.distillation import distillation_loss
from trainer.losses.groups import group_ids, top_n_labels, with_unexposed
from trainer.losses.schedules import LambdaSchedule
from trainer.losses.tasks import MSERegression  # noqa: F401  (the module registers the built-in regression losses)
from trainer.losses.weighted import weighted_bce, weighted_mean
from trainer.preprocessing.fitted import Preprocessing
from trainer.registry import DISTILLATION_LOSSES, REGRESSION_LOSSES, SIMILARITIES
from trainer.spec.attention import attention_pairs
from trainer.spec.sides import id_feature, user_columns
from trainer.spec.types import SIDES, TOWER_SIDES, Spec


ID_DROPOUT_STREAM = 0x1D  # folded into a step's seed: the id dropout's draws differ from the cascade samples'


@dataclass
class Outputs:
    """What one forward pass gives (None where the mode has no such part)."""

    teacher_logits: dict[str, tf.Tensor] | None  # task -> [B] (raw output for regression)
    teacher_score: tf.Tensor | None  # fused score in (0, 1), [B]
    student_logit: tf.Tensor | None  # [B]
    user_vector: tf.Tensor | None  # tower outputs before the similarity, [B, d]
    item_vector: tf.Tensor | None
    user_augment: tf.Tensor | None = None  # dual augmented vectors, [B, d]
    item_augment: tf.Tensor | None = None
    teacher_fields: dict[str, tf.Tensor] | None = None  # the encoded fields the teacher read, [B, d_i] each
    histories: dict[str, tf.RaggedTensor] | None = None  # the attended sequences' vectors, [B, None, d]


def tower_components(s: StudentConfig) -> list[dict]:
    """The student's towers as `Tower` takes them: built-in towers get their knobs (dcn_layers, fm_dim) as
    params, registered ones their own params."""
    knobs = {"dcn": {"layers": s.dcn_layers}, "fm": {"factors": s.fm_dim}}
    return [{"name": c.name, "params": {**knobs.get(c.name, {}), **c.params}} for c in s.towers]


def build_similarity(s: StudentConfig) -> Similarity:
    """The student's similarity layer from the config (built-in knobs: temperature, heads)."""
    knobs = {"cosine": {"temperature": s.temperature}, "multi_head": {"heads": s.heads}}
    layer = SIMILARITIES.factory(s.similarity.name)(dim=s.user_tower[-1], name="similarity",
                                                    **knobs.get(s.similarity.name, {}), **s.similarity.params)
    if not isinstance(layer, Similarity):
        raise ConfigError.single("config", "model.student.similarity", f"'{s.similarity.name}' built a "
                                 f"{type(layer).__name__}; a similarity must subclass "
                                 "trainer.layers.similarity.Similarity (the logit is user_vector . item_vector + bias)")
    return layer


class JointModel(tf.keras.Model):
    """The student (two towers, a similarity) and the teacher (MMoE) over shared embedding tables.

    What the training loop (`trainer.training.loop.Loop`) needs of a model: `compute_losses(batch, step,
    training, seed)` returning a dict of scalars with "loss/total", and `embedding_tables` (the layers whose
    variables FTRL updates; every other trainable variable goes to AdaGrad). Serving uses `user_vector`,
    `item_vector`, `similarity.logit` and `teacher_outputs`.
    """

    def __init__(self, spec: Spec, preprocessing: Preprocessing, config: Config,
                 catalog: ItemCatalog | None = None, **kwargs):
        """
        Args:
          spec: the features and labels.
          preprocessing: the fitted vocabularies and statistics the encoder bakes in.
          config: the model and training configuration (model.mode chooses the parts built).
          catalog: the item table, needed when cascade training samples unexposed items.
        """
        super().__init__(**kwargs)
        self.spec, self.config, self.catalog = spec, config, catalog
        m = config.model
        self.mode = m.mode
        self.has_student = m.mode != "teacher"
        self.student_task = student_task(config, spec)
        self.fused_weights = fused_weights(config, spec)
        self.labels = {label.name: label for label in spec.labels}
        self.regression = REGRESSION_LOSSES.factory(m.teacher.regression_loss.name)(**m.teacher.regression_loss.params)
        self.encoder = FeatureEncoder(spec, preprocessing, id_dropout_rates(config, spec), name="encoder")
        self.attention_pairs = attention_pairs(spec) if m.teacher.target_attention else []
        self.attended = {p.sequence for p in self.attention_pairs}  # sequences kept unpooled for the attention
        t = m.teacher
        self.teacher = MMoE([f.name for f in spec.features_on(*SIDES)], list(self.labels), experts=t.experts,
                            expert_layers=t.expert_layers, task_tower=t.task_tower, dropout=t.dropout,
                            attention_fields=[p.field for p in self.attention_pairs],
                            attention_hidden=t.attention_hidden, name="teacher")
        if m.mode == "student":  # the frozen teacher reads its own (restored) tables
            self.teacher_encoder = FeatureEncoder(spec, preprocessing, name="teacher_encoder")
            self.teacher_encoder.trainable = False
            self.teacher.trainable = False
        if self.has_student:
            self._build_student(spec, m.student)

    def _build_student(self, spec: Spec, s: StudentConfig) -> None:
        m = self.config.model
        self.augmented = s.dual_augmented.enabled
        towers, senet = tower_components(s), (s.senet.reduction if s.senet.enabled else None)
        extra = 1 if self.augmented else 0  # a dual augmented vector joins each side's fields
        self.user_tower = Tower([f.name for f in spec.features_on(*TOWER_SIDES["user"])], s.user_tower, towers,
                                senet, extra, name="user_tower")
        self.item_tower = Tower([f.name for f in spec.features_on(*TOWER_SIDES["item"])], s.item_tower, towers,
                                senet, extra, name="item_tower")
        self.similarity = build_similarity(s)
        knobs = {"cross_entropy": {"temperature": m.distill.temperature}}  # the built-in losses' knobs
        self.distill_loss = DISTILLATION_LOSSES.factory(m.distill.loss.name)(**knobs.get(m.distill.loss.name, {}),
                                                                            **m.distill.loss.params)
        sched = m.distill.schedule
        self.schedule = LambdaSchedule(sched.kind, sched.max, sched.start_step, sched.ramp_steps)
        if self.augmented:
            named = {"user": s.dual_augmented.user_feature, "item": s.dual_augmented.item_feature}
            self.augment_features = {side: spec.feature(id_feature(spec, side, name)) for side, name in named.items()}
            self.augment_tables = {side: EmbeddingTable(self.encoder.tables[f.embedding.table].num_rows,
                                                        s.user_tower[-1], "uniform",
                                                        self.encoder.tables[f.embedding.table].zero_rows,
                                                        name=f"augment_{side}")
                                   for side, f in self.augment_features.items()}

    # ---- forward ----
    def call(self, features: dict[str, tf.Tensor], training: bool = False,
             drop_seed: tf.Tensor | None = None) -> Outputs:
        """One forward pass; `drop_seed` ([2] int64, given in training only) draws the id dropout
        (model.id_dropout) of the shared encoder, the dual augmented ids' lookups included; a frozen teacher's
        encoder never drops."""
        encoded, histories = self.encoder.encode_keeping(features, self.attended, drop_seed)
        if self.mode == "student":
            teacher_encoded, histories = self.teacher_encoder.encode_keeping(features, self.attended)
        else:
            teacher_encoded = encoded
        teacher_logits = self.teacher(self.teacher_inputs(teacher_encoded, histories), training=training)
        teacher_score = self.fused(teacher_logits)
        if not self.has_student:
            return Outputs(teacher_logits, teacher_score, None, None, None, teacher_fields=teacher_encoded,
                           histories=histories)
        aug_u = aug_v = None
        if self.augmented:
            aug_u, aug_v = self.augment_vector("user", features, drop_seed), self.augment_vector("item", features,
                                                                                                 drop_seed)
        u = self.user_tower(encoded, aug_u, training=training)
        v = self.item_tower(encoded, aug_v, training=training)
        return Outputs(teacher_logits, teacher_score, self.similarity(u, v), u, v, aug_u, aug_v, teacher_encoded,
                       histories)

    # ---- serving-side pieces: each side alone ----
    def encode_side(self, side: str, features: dict[str, tf.Tensor]) -> tuple[dict[str, tf.Tensor], tf.Tensor | None]:
        """The encoded fields of the student's `side` ("user": user + context, or "item") and its dual
        augmented vector, from that side's raw columns only."""
        encoded = {f.name: self.encoder.encode(f, features) for f in self.spec.features_on(*TOWER_SIDES[side])}
        return encoded, self.augment_vector(side, features) if self.augmented else None

    def augment_vector(self, side: str, features: dict[str, tf.Tensor],
                       drop_seed: tf.Tensor | None = None) -> tf.Tensor:
        """The dual augmented vector of `side`'s id, [B, d] (`drop_seed`: the id dropout, as in the encoder)."""
        feature = self.augment_features[side]
        return self.augment_tables[side](self.encoder.row_ids(feature, features, drop_seed))

    def user_vector(self, features: dict[str, tf.Tensor]) -> tf.Tensor:
        """The serving user vector [B, d]: logit = user_vector . item_vector + similarity bias."""
        return self.similarity.user_vector(self.user_tower(*self.encode_side("user", features)))

    def item_vector(self, features: dict[str, tf.Tensor]) -> tf.Tensor:
        """The serving item vector [B, d] (computable offline, without the user)."""
        return self.similarity.item_vector(self.item_tower(*self.encode_side("item", features)))

    @property
    def teacher_fields_encoder(self) -> FeatureEncoder:
        """The encoder whose fields the teacher reads: its own, frozen one in student mode, else the shared one."""
        return self.teacher_encoder if self.mode == "student" else self.encoder

    def teacher_outputs(self, features: dict[str, tf.Tensor]) -> tuple[dict[str, tf.Tensor], tf.Tensor]:
        """The teacher alone: (task -> raw output [B], fused score [B])."""
        encoded = self.teacher_fields_encoder.encode_keeping(features, self.attended)
        logits = self.teacher(self.teacher_inputs(*encoded), training=False)
        return logits, self.fused(logits)

    def teacher_inputs(self, encoded: dict[str, tf.Tensor],
                       histories: dict[str, tf.RaggedTensor]) -> dict[str, tf.Tensor]:
        """The encoded fields plus, with target attention, each history pooled against the candidate."""
        if not self.attention_pairs:
            return encoded
        inputs = dict(encoded)
        for p, attention in zip(self.attention_pairs, self.teacher.attention):
            inputs[p.field] = attention(histories[p.sequence], encoded[p.target])
        return inputs

    def fused(self, teacher_logits: dict[str, tf.Tensor]) -> tf.Tensor:
        """The teacher's fused ranking score in (0, 1), from its task outputs."""
        probabilities = {t: self.task_probability(t, teacher_logits[t]) for t in self.fused_weights}
        return fused_score(probabilities, self.fused_weights, self.config.model.teacher.fused_score)

    def task_probability(self, task: str, output: tf.Tensor) -> tf.Tensor:
        """A task's prediction as a score in [0, 1): binary -> p; regression -> the regression loss's."""
        if self.labels[task].type == "binary":
            return tf.sigmoid(output)
        return self.regression.probability(output)

    def task_estimate(self, task: str, output: tf.Tensor) -> tf.Tensor:
        """A regression task's predicted (transformed) target."""
        return self.regression.estimate(output)

    # ---- losses ----
    def compute_losses(self, batch: dict, step: tf.Tensor, training: bool = True,
                       seed: tf.Tensor | None = None) -> dict[str, tf.Tensor]:
        """{'loss/<part>': scalar, 'lambda': scalar}; 'loss/total' is what the optimizers minimise, the sum of the
        'weighted/<part>' terms (each part times its weight: λ(step) for distill, mimic_weight for mimic), so a
        total that rises with λ shows as the distill term growing, not as divergence."""
        m = self.config.model
        features, weight = batch["features"], batch["sample_weight"]
        exposed = tf.shape(weight)[0]
        cascade = self.has_student and m.distill.cascade.enabled
        grouped = cascade or (self.has_student and getattr(self.distill_loss, "needs_groups", False))
        groups, n_groups = group_ids(batch["group"]) if grouped else (None, None)  # a string unique: only if used
        if cascade and m.distill.cascade.unexposed > 0:
            features, groups = with_unexposed(features, groups, n_groups, m.distill.cascade.unexposed, self.catalog,
                                              user_columns(self.spec), seed)
        out = self(features, training=training, drop_seed=self.id_dropout_seed(step, seed) if training else None)
        losses: dict[str, tf.Tensor] = {}
        total = tf.constant(0.0)
        if self.mode != "student":
            per_task = {t: self.task_loss(t, batch["labels"][t], out.teacher_logits[t][:exposed], weight)
                        for t in self.labels}
            losses.update({f"loss/teacher/{t}": v for t, v in per_task.items()})
            losses["loss/teacher"] = tf.add_n([self.labels[t].weight * v for t, v in per_task.items()])
            losses["weighted/teacher"] = losses["loss/teacher"]
            total += losses["loss/teacher"]
        if self.has_student:
            lam = self.schedule(step)
            n = tf.shape(out.student_logit)[0]
            all_weight = tf.concat([weight, tf.ones([n - exposed])], axis=0)
            if cascade:
                target = top_n_labels(tf.stop_gradient(out.teacher_score), groups, m.distill.cascade.top_n)
                student = weighted_bce(target, out.student_logit, all_weight)
            else:
                student = weighted_bce(batch["labels"][self.student_task], out.student_logit[:exposed], weight)
            if m.distill.drop_label_loss_after is not None:
                student *= tf.cast(step < m.distill.drop_label_loss_after, tf.float32)
            distill = distillation_loss(self.distill_loss, out.teacher_score, out.student_logit, all_weight, groups)
            losses.update({"loss/student": student, "loss/distill": distill, "lambda": lam,
                           "weighted/student": student, "weighted/distill": lam * distill})
            total += student + lam * distill
            if self.augmented:
                positive = batch["labels"][self.student_task] * weight
                mimic = _mimic(out.user_augment[:exposed], out.item_vector[:exposed], positive) \
                    + _mimic(out.item_augment[:exposed], out.user_vector[:exposed], positive)
                losses["loss/mimic"] = mimic
                losses["weighted/mimic"] = m.student.dual_augmented.mimic_weight * mimic
                total += losses["weighted/mimic"]
        losses["loss/total"] = total
        return losses

    def id_dropout_seed(self, step: tf.Tensor, seed: tf.Tensor | None) -> tf.Tensor | None:
        """The id dropout's seed for a training step: drawn from the step's `seed` ([training.seed, step] in the
        training loop; [0, step] without one) on a stream of its own; None when no table drops ids."""
        if not self.encoder.id_dropout:
            return None
        base = seed if seed is not None else tf.stack([tf.constant(0, tf.int64), tf.cast(step, tf.int64)])
        return tf.random.experimental.stateless_fold_in(base, ID_DROPOUT_STREAM)

    def task_loss(self, task: str, label: tf.Tensor, output: tf.Tensor, weight: tf.Tensor) -> tf.Tensor:
        """One teacher task's loss: cross-entropy (binary) or the regression loss on the transformed target."""
        spec_label = self.labels[task]
        if spec_label.type == "binary":
            return weighted_bce(label, output, weight)
        target = tf.math.log1p(tf.maximum(label, 0.0)) if spec_label.transform == "log1p" else label
        return self.regression.loss(target, output, weight)

    def dense_parts(self) -> dict[str, tf.keras.layers.Layer]:
        """The dense parts, by attribute path, a warm start carries whole or starts fresh whole
        (`trainer.training.warm_start`): the student's towers and similarity, and each part of the teacher
        (`MMoE.parts`). Embedding tables are carried row by row instead."""
        student = {"user_tower": self.user_tower, "item_tower": self.item_tower,
                   "similarity": self.similarity} if self.has_student else {}
        return {**student, **{f"teacher/{path}": part for path, part in self.teacher.parts().items()}}

    def part_inputs(self) -> dict[str, tuple[list[tuple[str, int]], list[tf.Variable]]]:
        """Per dense part (`dense_parts`) that reads concatenated fields: (the fields in order with their widths,
        the kernels whose rows follow them). A warm start carries such a kernel field by field when the fields
        changed (`trainer.training.warm_start`); the model must have been called."""
        out = {f"teacher/{path}": (self.teacher.input_layout(), kernels)
               for path, kernels in self.teacher.part_input_kernels().items()}
        if self.has_student:
            for name in ("user_tower", "item_tower"):
                tower = getattr(self, name)
                if tower.input_layout() is not None and tower.input_kernels():
                    out[name] = (tower.input_layout(), tower.input_kernels())
        return out

    def table_name(self, layer: EmbeddingTable) -> str:
        """The spec table whose ids index `layer`'s rows (an augmentation table's: its id feature's table)."""
        for name, table in self.encoder.tables.items():
            if table is layer:
                return name
        for side, table in getattr(self, "augment_tables", {}).items():
            if table is layer:
                return self.augment_features[side].embedding.table
        raise KeyError(f"{layer.name} is not an embedding table of this model")

    @property
    def embedding_tables(self) -> list[EmbeddingTable]:
        """Every embedding table layer of the model (shared, teacher-own and augmentation tables)."""
        return [m for m in self.submodules if isinstance(m, EmbeddingTable)]


def _mimic(augment: tf.Tensor, other: tf.Tensor, positive: tf.Tensor) -> tf.Tensor:
    """Mean squared distance of the augmentation vector to the other tower's output, on positives."""
    return weighted_mean(tf.reduce_sum(tf.square(augment - tf.stop_gradient(other)), axis=-1), positive, 1.0)
