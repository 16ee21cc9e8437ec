"""Load what a training job wrote: a model directory's model at a checkpoint, or a separately trained teacher.

`latest_checkpoint` (from `trainer.training.checkpoints`) is importable from here too."""
import tensorflow as tf

from trainer.config.knobs import Config
from trainer.data.catalog import ItemCatalog
from trainer.data.input_config import InputConfig
from trainer.data.pipeline import make_pipeline
from trainer.errors import DataError, ModelDirError
from trainer.models.joint import JointModel
from trainer.preprocessing.fitted import Preprocessing
from trainer.spec.types import Spec
from trainer.training.checkpoints import latest_checkpoint, restore
from trainer.training.layout import checkpoint_dir, preprocessing_dir
from trainer.training.run_record import check_or_record, recorded_config


def build_variables(model: JointModel, spec: Spec, sample_data: str | list[str], skip_corrupt: bool = False) -> None:
    """Create every variable of `model` by running it on a few rows of `sample_data` (skipping corrupt records
    with `skip_corrupt`)."""
    config = InputConfig(batch_size=8, shuffle_buffer=0, skip_corrupt=skip_corrupt)
    for batch in make_pipeline(spec, sample_data, config):
        model(batch["features"])
        return
    raise DataError(f"no rows in {sample_data}")


def trained_checkpoint(model_dir: str, checkpoint: str | None = None) -> tuple[Config, str]:
    """The config a model directory was trained with and its checkpoint `checkpoint` (default: the latest);
    ModelDirError when the directory has no run record or no such checkpoint."""
    config = recorded_config(model_dir)
    latest = checkpoint or latest_checkpoint(model_dir)
    if latest is None:
        raise ModelDirError(f"{model_dir}: no checkpoint in {checkpoint_dir(model_dir)}; train it first")
    if not tf.io.gfile.exists(latest + ".index"):
        raise ModelDirError(f"{latest}: no such checkpoint (missing {latest}.index)")
    return config, latest


def load_trained(spec: Spec, model_dir: str, sample_data: str | list[str], catalog: ItemCatalog | None = None,
                 checkpoint: str | None = None, skip_corrupt: bool = False) -> JointModel:
    """The model of `model_dir` at `checkpoint` (default: its latest); `sample_data` gives one batch to
    create variables (`skip_corrupt`: skipping corrupt records). Its `checkpoint_path` says which checkpoint it
    holds. ModelDirError naming the file when the directory's run.json, preprocessing or checkpoint cannot be
    read."""
    config, latest = trained_checkpoint(model_dir, checkpoint)
    check_or_record(model_dir, spec, config, record=False)  # refuses a spec that changed since training
    fitted = Preprocessing.load(preprocessing_dir(model_dir, config))
    model = JointModel(spec, fitted, config, catalog, name="joint")
    build_variables(model, spec, sample_data, skip_corrupt)
    restore(tf.train.Checkpoint(model=model), latest)
    model.checkpoint_path = latest
    return model


def restore_teacher(model: JointModel, teacher_dir: str) -> None:
    """Load a separately trained teacher (encoder + MMoE) from its model directory's latest checkpoint into a
    student-mode model's `teacher_encoder` and `teacher`."""
    latest = latest_checkpoint(teacher_dir)
    if latest is None:
        raise ModelDirError(f"training.teacher_dir {teacher_dir}: no checkpoint in {checkpoint_dir(teacher_dir)}")
    restore(tf.train.Checkpoint(**teacher_objects(model)), latest)


def teacher_objects(model: JointModel, tables_only: bool = False) -> dict:
    """A student-mode model's frozen teacher laid out as in the teacher's own checkpoints (its `teacher_encoder`
    stands where the teacher's `encoder` was), for `tf.train.Checkpoint(**teacher_objects(model))`; with
    `tables_only`, its encoder alone (the MMoE left as it is)."""
    parts = {"encoder": model.teacher_encoder} if tables_only else \
        {"encoder": model.teacher_encoder, "teacher": model.teacher}
    return {"model": tf.train.Checkpoint(**parts)}
