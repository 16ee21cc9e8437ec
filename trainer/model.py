"""The joint model: shared embeddings, the two-tower student, the MMoE teacher, and their losses.

loss = L_student(labels) + lambda(step) * L_distill(teacher, student) + L_teacher(labels)
(+ the dual augmented mimic loss). `compute_losses` is separate from the
training step (trainer.train_step), which only differentiates and applies.

Modes (model.mode):
- joint: both models train on one shared FeatureEncoder.
- teacher: the teacher alone (the student parts are not built).
- student: a student distilled from a frozen, separately trained teacher, which
  keeps its own encoder (restored from training.teacher_dir).
"""
from dataclasses import dataclass

import tensorflow as tf

from trainer.analyze import Preprocessing
from trainer.config import Config, fused_weights, student_task
from trainer.distill import distill_loss, schedule_value
from trainer.features import EmbeddingTable, FeatureEncoder
from trainer.groups import group_ids, top_n_labels, with_unexposed
from trainer.items import ItemCatalog, id_feature, user_columns
from trainer.mmoe import MMoE, fused_score, task_probability
from trainer.similarity import Similarity
from trainer.spec import TOWER_SIDES, Spec
from trainer.target_attention import attention_pairs
from trainer.towers import Tower

TEACHER_SIDES = ("user", "context", "item", "cross", "privileged")


@dataclass
class Outputs:
    teacher_logits: dict[str, tf.Tensor] | None  # task -> [B] (raw output for regression)
    teacher_score: tf.Tensor | None  # fused score in (0, 1), [B]
    student_logit: tf.Tensor | None  # [B]
    user_vector: tf.Tensor | None  # tower outputs before the similarity, [B, d]
    item_vector: tf.Tensor | None
    user_augment: tf.Tensor | None = None  # dual augmented vectors, [B, d]
    item_augment: tf.Tensor | None = None


class JointModel(tf.keras.Model):
    def __init__(self, spec: Spec, preprocessing: Preprocessing, config: Config,
                 catalog: ItemCatalog | None = None, **kwargs):
        super().__init__(**kwargs)
        self.spec, self.config, self.catalog = spec, config, catalog
        m = config.model
        self.mode = m.mode
        self.has_student = m.mode != "teacher"
        self.student_task = student_task(config, spec)
        self.fused_weights = fused_weights(config, spec)
        self.labels = {label.name: label for label in spec.labels}
        self.encoder = FeatureEncoder(spec, preprocessing, name="encoder")
        self.attention_pairs = attention_pairs(spec) if m.teacher.target_attention else []
        self.attended = {p.sequence for p in self.attention_pairs}  # sequences kept unpooled for the attention
        self.teacher = MMoE([f.name for f in spec.features_on(*TEACHER_SIDES)], list(self.labels), m.teacher,
                            attention_fields=[p.field for p in self.attention_pairs], name="teacher")
        if m.mode == "student":  # the frozen teacher reads its own (restored) tables
            self.teacher_encoder = FeatureEncoder(spec, preprocessing, name="teacher_encoder")
            self.teacher_encoder.trainable = False
            self.teacher.trainable = False
        if self.has_student:
            s = m.student
            self.user_tower = Tower([f.name for f in spec.features_on(*TOWER_SIDES["user"])], s.user_tower, s,
                                    name="user_tower")
            self.item_tower = Tower([f.name for f in spec.features_on(*TOWER_SIDES["item"])], s.item_tower, s,
                                    name="item_tower")
            self.similarity = Similarity(s, name="similarity")
            self.augmented = s.dual_augmented.enabled
            if self.augmented:
                named = {"user": s.dual_augmented.user_feature, "item": s.dual_augmented.item_feature}
                self.augment_features = {side: spec.feature(id_feature(spec, side, name))
                                         for side, name in named.items()}
                self.augment_tables = {side: EmbeddingTable(self.encoder.tables[f.embedding.table].num_rows,
                                                            s.user_tower[-1], "uniform", name=f"augment_{side}")
                                       for side, f in self.augment_features.items()}

    # ---- forward ----
    def call(self, features: dict[str, tf.Tensor], training: bool = False) -> Outputs:
        encoded, histories = self.encoder.encode_keeping(features, self.attended)
        if self.mode == "student":
            teacher_encoded, histories = self.teacher_encoder.encode_keeping(features, self.attended)
        else:
            teacher_encoded = encoded
        teacher_logits = self.teacher(self.teacher_inputs(teacher_encoded, histories), training=training)
        teacher_score = self.fused(teacher_logits)
        if not self.has_student:
            return Outputs(teacher_logits, teacher_score, None, None, None)
        aug_u = aug_v = None
        if self.augmented:
            aug_u, aug_v = self.augment_vector("user", features), self.augment_vector("item", features)
        u = self.user_tower(encoded, aug_u, training=training)
        v = self.item_tower(encoded, aug_v, training=training)
        return Outputs(teacher_logits, teacher_score, self.similarity(u, v), u, v, aug_u, aug_v)

    # ---- serving-side pieces: each side alone ----
    def encode_side(self, side: str, features: dict[str, tf.Tensor]) -> tuple[dict[str, tf.Tensor], tf.Tensor | None]:
        """The encoded fields of the student's `side` ("user": user + context, or "item") and its dual
        augmented vector, from that side's raw columns only."""
        encoded = {f.name: self.encoder.encode(f, features) for f in self.spec.features_on(*TOWER_SIDES[side])}
        return encoded, self.augment_vector(side, features) if self.augmented else None

    def augment_vector(self, side: str, features: dict[str, tf.Tensor]) -> tf.Tensor:
        """The dual augmented vector of `side`'s id, [B, d]."""
        feature = self.augment_features[side]
        return self.augment_tables[side](self.encoder.row_ids(feature, features))

    def user_vector(self, features: dict[str, tf.Tensor]) -> tf.Tensor:
        """The serving user vector [B, d]: logit = user_vector . item_vector + similarity bias."""
        return self.similarity.user_vector(self.user_tower(*self.encode_side("user", features)))

    def item_vector(self, features: dict[str, tf.Tensor]) -> tf.Tensor:
        """The serving item vector [B, d] (computable offline, without the user)."""
        return self.similarity.item_vector(self.item_tower(*self.encode_side("item", features)))

    def teacher_outputs(self, features: dict[str, tf.Tensor]) -> tuple[dict[str, tf.Tensor], tf.Tensor]:
        """The teacher alone: (task -> raw output [B], fused score [B])."""
        encoder = self.teacher_encoder if self.mode == "student" else self.encoder
        logits = self.teacher(self.teacher_inputs(*encoder.encode_keeping(features, self.attended)), training=False)
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
        probabilities = {t: self.task_probability(t, teacher_logits[t]) for t in self.fused_weights}
        return fused_score(probabilities, self.fused_weights, self.config.model.teacher.fused_score)

    def task_probability(self, task: str, output: tf.Tensor) -> tf.Tensor:
        return task_probability(self.labels[task], output, self.config.model.teacher.regression_loss)

    # ---- losses ----
    def compute_losses(self, batch: dict, step: tf.Tensor, training: bool = True,
                       seed: tf.Tensor | None = None) -> dict[str, tf.Tensor]:
        """{'loss/<part>': scalar, 'lambda': scalar}; 'loss/total' is what the optimizers minimise."""
        m = self.config.model
        features, weight = batch["features"], batch["sample_weight"]
        exposed = tf.shape(weight)[0]
        cascade = self.has_student and m.distill.cascade.enabled
        grouped = cascade or (self.has_student and m.distill.loss == "pairwise")
        groups, n_groups = group_ids(batch["group"]) if grouped else (None, None)  # a string unique: only if used
        if cascade and m.distill.cascade.unexposed > 0:
            features, groups = with_unexposed(features, groups, n_groups, m.distill.cascade.unexposed, self.catalog,
                                              user_columns(self.spec), seed)
        out = self(features, training=training)
        losses: dict[str, tf.Tensor] = {}
        total = tf.constant(0.0)
        if self.mode != "student":
            per_task = {t: self.task_loss(t, batch["labels"][t], out.teacher_logits[t][:exposed], weight)
                        for t in self.labels}
            losses.update({f"loss/teacher/{t}": v for t, v in per_task.items()})
            losses["loss/teacher"] = tf.add_n([self.labels[t].weight * v for t, v in per_task.items()])
            total += losses["loss/teacher"]
        if self.has_student:
            lam = schedule_value(m.distill.schedule, step)
            n = tf.shape(out.student_logit)[0]
            all_weight = tf.concat([weight, tf.ones([n - exposed])], axis=0)
            if cascade:
                target = top_n_labels(tf.stop_gradient(out.teacher_score), groups, m.distill.cascade.top_n)
                student = _weighted_bce(target, out.student_logit, all_weight)
            else:
                student = _weighted_bce(batch["labels"][self.student_task], out.student_logit[:exposed], weight)
            if m.distill.drop_label_loss_after is not None:
                student *= tf.cast(step < m.distill.drop_label_loss_after, tf.float32)
            distill = distill_loss(m.distill.loss, out.teacher_score, out.student_logit, groups,
                                   m.distill.temperature, all_weight)
            losses.update({"loss/student": student, "loss/distill": distill, "lambda": lam})
            total += student + lam * distill
            if self.augmented:
                positive = batch["labels"][self.student_task] * weight
                mimic = _mimic(out.user_augment[:exposed], out.item_vector[:exposed], positive) \
                    + _mimic(out.item_augment[:exposed], out.user_vector[:exposed], positive)
                losses["loss/mimic"] = mimic
                total += m.student.dual_augmented.mimic_weight * mimic
        losses["loss/total"] = total
        return losses

    def task_loss(self, task: str, label: tf.Tensor, output: tf.Tensor, weight: tf.Tensor) -> tf.Tensor:
        spec_label = self.labels[task]
        if spec_label.type == "binary":
            return _weighted_bce(label, output, weight)
        target = tf.math.log1p(tf.maximum(label, 0.0)) if spec_label.transform == "log1p" else label
        if self.config.model.teacher.regression_loss == "weighted_logistic":
            # positive term weighted by the target, negative term by 1: the odds exp(z) estimate the target
            per_row = target * tf.nn.softplus(-output) + tf.nn.softplus(output)
        else:
            per_row = tf.square(output - target)
        return tf.reduce_sum(per_row * weight) / tf.maximum(tf.reduce_sum(weight), 1e-6)

    @property
    def embedding_tables(self) -> list[EmbeddingTable]:
        """Every embedding table layer of the model (shared, teacher-own and augmentation tables)."""
        return [m for m in self.submodules if isinstance(m, EmbeddingTable)]


def _weighted_bce(label: tf.Tensor, logit: tf.Tensor, weight: tf.Tensor) -> tf.Tensor:
    per_row = tf.nn.sigmoid_cross_entropy_with_logits(labels=label, logits=logit)
    return tf.reduce_sum(per_row * weight) / tf.maximum(tf.reduce_sum(weight), 1e-6)


def _mimic(augment: tf.Tensor, other: tf.Tensor, positive: tf.Tensor) -> tf.Tensor:
    """Mean squared distance of the augmentation vector to the other tower's output, on positives."""
    per_row = tf.reduce_sum(tf.square(augment - tf.stop_gradient(other)), axis=-1)
    return tf.reduce_sum(per_row * positive) / tf.maximum(tf.reduce_sum(positive), 1.0)
