"""The model directory: what a training job writes where, and where later commands find it.

    MODEL_DIR/
      run.json           the spec and config the directory was trained with (`run_record`); a warm start's record
      part_fields.json   the fields each dense part's first layer reads, in order, with their widths (`warm_start`)
      preprocessing/     fitted vocabularies and statistics (a student-mode run reads its teacher's)
      checkpoints/       ckpt-<step>: the model, both optimizers' slots, the step, the input position
      history.jsonl      one JSON object a log line: losses, lambda, learning rates, evaluations
      tensorboard/       the same as TensorBoard scalars
      metrics.json       the job's summary and its validation metrics
      evaluation.json    written by `prerank evaluate`
      report/            PNG plots written by `prerank report`
      workers/           scratch checkpoints of a multi-worker job's non-chief workers (removed at the end)
"""
import os

from trainer.config.knobs import Config

RUN_FILE = "run.json"
PART_FIELDS_FILE = "part_fields.json"
PREPROCESSING_DIR = "preprocessing"
CHECKPOINT_DIR = "checkpoints"
HISTORY_FILE = "history.jsonl"
TENSORBOARD_DIR = "tensorboard"
METRICS_FILE = "metrics.json"
EVALUATION_FILE = "evaluation.json"
REPORT_DIR = "report"
WORKERS_DIR = "workers"


def checkpoint_dir(model_dir: str) -> str:
    return os.path.join(model_dir, CHECKPOINT_DIR)


def teacher_dir(config: Config) -> str | None:
    """The model directory of the separately trained teacher a student-mode run distils from (else None)."""
    return config.training.teacher_dir if config.model.mode == "student" else None


def preprocessing_dir(model_dir: str, config: Config) -> str:
    """Where a model's fitted preprocessing lives: its own directory's, or, for a student distilled from a
    separately trained teacher, the teacher's, whose tables it shares."""
    return os.path.join(teacher_dir(config) or model_dir, PREPROCESSING_DIR)
