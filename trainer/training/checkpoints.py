"""A model directory's checkpoints: the latest one, its saved objects, and restores that name a damaged file.

TensorFlow's own calls fail on a damaged checkpoint with errors that name an
op (or a Python IndexError on a truncated shard), and `tf.train.latest_checkpoint`
quietly answers None when the checkpoint its state file names is gone, which
would restart a trained model from step 0. These raise ModelDirError naming
the file instead.
"""
import os

import tensorflow as tf

from trainer.data.records import clean_message
from trainer.errors import ModelDirError
from trainer.training.layout import checkpoint_dir

STATE_FILE = "checkpoint"  # the CheckpointManager's list of checkpoints, newest first
_UNREADABLE = (tf.errors.OpError, IndexError)  # IndexError: a truncated data shard ("Read less bytes than requested")


def latest_checkpoint(model_dir: str) -> str | None:
    """The newest checkpoint of `model_dir` (its path prefix); None when it has none.

    ModelDirError when MODEL_DIR/checkpoints/checkpoint cannot be read or names a checkpoint whose files are
    gone (TensorFlow writes a checkpoint's files before it lists them, so a listed one is complete).
    """
    directory = checkpoint_dir(model_dir)
    state_file = os.path.join(directory, STATE_FILE)
    if not tf.io.gfile.exists(state_file):
        return None
    try:  # None for a file that does not parse or cannot be read (TensorFlow logs why)
        state = tf.train.get_checkpoint_state(directory)
    except (UnicodeDecodeError, ValueError):  # not text; parsed, but naming no checkpoint
        state = None
    if state is None:
        raise ModelDirError(f"{state_file}: not a TensorFlow checkpoint list (the file naming the checkpoints of "
                            "the directory, newest first): restore it, or train into a new --model-dir")
    path = state.model_checkpoint_path
    if not tf.io.gfile.exists(path + ".index"):
        raise ModelDirError(f"{state_file} names {path}, whose files are gone (no {os.path.basename(path)}.index): "
                            "restore them, or train into a new --model-dir")
    return path


def saved_objects(path: str) -> set[str]:
    """The names of the top-level objects checkpoint `path` holds ("model", "step", "data", ...)."""
    try:
        return {name.split("/")[0] for name, _ in tf.train.list_variables(path)}
    except _UNREADABLE as exc:
        raise _damaged(path, exc) from None


def restore(checkpoint: tf.train.Checkpoint, path: str) -> None:
    """Restore every object of `checkpoint` from checkpoint `path` (other saved values are left alone).

    ModelDirError naming `path` when its files cannot be read (damaged, truncated) or do not hold these objects
    as they are now (another model's checkpoint, or one of another layout).
    """
    try:
        status = checkpoint.restore(path).expect_partial()
        try:
            status.assert_existing_objects_matched()
        except AssertionError:
            if _unmatched(checkpoint, status):
                raise
    except _UNREADABLE as exc:
        raise _damaged(path, exc) from None
    except (AssertionError, ValueError) as exc:
        raise ModelDirError(f"{path}: this checkpoint does not hold the model the spec and config describe "
                            f"({_message(exc)[:300]}); was it written by another model or another version of "
                            "prerank? Train into a new --model-dir") from None


def _unmatched(checkpoint: tf.train.Checkpoint, status) -> list:
    """The objects of `checkpoint` that the restore `status` found no saved value for.

    `assert_existing_objects_matched` also counts objects made during the restore: restoring the FTRL slots of a
    sharded table (ParameterServerStrategy) makes a ShardedVariable of the slots' shards, which is not part of the
    checkpoint (the shards are). So the check is repeated here over the checkpoint's own objects.
    """
    matched = {id(obj) for obj in status._checkpoint.object_by_proto_id.values()}  # private: no public view
    return [obj for obj in tf.train.TrackableView(checkpoint).descendants() if id(obj) not in matched]


def _damaged(path: str, exc: Exception) -> ModelDirError:
    return ModelDirError(f"{path}: unreadable checkpoint ({_message(exc)[:300]}); its .index or .data files are "
                         "damaged: restore them, or train into a new --model-dir")


def _message(exc: Exception) -> str:
    return clean_message(exc.message) if isinstance(exc, tf.errors.OpError) else str(exc).strip().splitlines()[0]
