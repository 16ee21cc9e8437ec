"""A model directory's checkpoints: the latest one, its saved objects, and restores that name a damaged file.

TensorFlow's own calls fail on a damaged checkpoint with errors that name an
op (or a Python IndexError on a truncated shard), and `tf.train.latest_checkpoint`
quietly answers None when the checkpoint its state file names is gone, which
would restart a trained model from step 0. These raise ModelDirError naming
the file instead.
"""
import os

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import trackable_object_graph_pb2  # the format of a checkpoint's object graph

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


class SavedObjects:
    """What a checkpoint holds, found by object path ("model/encoder/tables/user/embeddings": the attribute
    names from the checkpoint's root down to the object), with each variable's optimizer slots; rows of a saved
    table read as a slice of it (a warm start reads what it carries, never more: `read_rows`).

    The path names an object however the model that wrote the checkpoint reached it, so another model whose
    parts sit at the same attributes finds them (`trainer.training.warm_start`).
    """

    GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"
    VALUE = "VARIABLE_VALUE"

    def __init__(self, path: str):
        self.path = path
        try:
            self.reader = tf.train.load_checkpoint(path)
            graph = trackable_object_graph_pb2.TrackableObjectGraph()
            graph.ParseFromString(self.reader.get_tensor(self.GRAPH_KEY))
        except _UNREADABLE as exc:
            raise _damaged(path, exc) from None
        self.nodes = list(graph.nodes)
        self.children = [{c.local_name: c.node_id for c in n.children} for n in self.nodes]  # node -> name -> node
        self.shapes = self.reader.get_variable_to_shape_map()
        self.dtypes = self.reader.get_variable_to_dtype_map()

    def node(self, object_path: str) -> int | None:
        """The node of the object at `object_path` ('/'-separated attribute names); None when there is none."""
        node = 0
        for name in object_path.split("/"):
            node = self.children[node].get(name)
            if node is None:
                return None
        return node

    def value_key(self, node: int | None) -> str | None:
        """The checkpoint key of a variable node's value (None: not a saved variable)."""
        if node is None:
            return None
        return next((a.checkpoint_key for a in self.nodes[node].attributes if a.name == self.VALUE), None)

    def slot_key(self, optimizer: str, node: int | None, slot: str) -> str | None:
        """The checkpoint key of optimizer `optimizer`'s (a root attribute: "ftrl") slot `slot` of variable node
        `node` (None: not saved)."""
        owner = self.node(optimizer)
        if owner is None or node is None:
            return None
        found = next((s.slot_variable_node_id for s in self.nodes[owner].slot_variables
                      if s.original_variable_node_id == node and s.slot_name == slot), None)
        return self.value_key(found)

    def variables_under(self, object_path: str) -> dict[str, list[int]]:
        """The saved variables below `object_path` (slots left out): path relative to it -> shape."""
        node = self.node(object_path)
        out = {}
        if node is None:
            return out
        stack = [(node, "")]
        seen = {node}
        while stack:
            current, prefix = stack.pop()
            key = self.value_key(current)
            if key is not None:
                out[prefix] = self.shapes[key]
            for name, child in self.children[current].items():
                if child not in seen:
                    seen.add(child)
                    stack.append((child, f"{prefix}/{name}" if prefix else name))
        return out

    def read(self, key: str) -> np.ndarray:
        """A saved tensor, whole."""
        try:
            return self.reader.get_tensor(key)
        except _UNREADABLE as exc:
            raise _damaged(self.path, exc) from None

    def read_rows(self, key: str, rows: np.ndarray, gap: int = 4096, span: int = 1 << 20) -> np.ndarray:
        """Rows `rows` of saved table `key` ([rows, dim]), read as slices of the saved table: the rows wanted,
        sorted, cut where two are more than `gap` rows apart or a slice would pass `span` rows; at most one slice
        is in memory beside the result (a parameter-server shard's rows never read the whole table at once)."""
        shape = self.shapes[key]
        out = np.zeros([len(rows), *shape[1:]], self.dtypes[key].as_numpy_dtype)
        if not len(rows):
            return out
        wanted = np.unique(rows)
        cuts = np.flatnonzero(np.diff(wanted) > gap) + 1
        groups, start = [], 0
        for end in [*cuts.tolist(), len(wanted)]:
            group = wanted[start:end]
            while len(group):  # a run longer than `span` rows: cut it too
                take = int(np.searchsorted(group, group[0] + span))
                groups.append(group[:take])
                group = group[take:]
            start = end
        for group in groups:
            low, high = int(group[0]), int(group[-1]) + 1
            spec = " ".join(str(d) for d in shape) + f" {low},{high - low}" + ":-" * (len(shape) - 1)
            try:
                part = tf.raw_ops.RestoreV2(prefix=self.path, tensor_names=[key], shape_and_slices=[spec],
                                            dtypes=[self.dtypes[key]])[0].numpy()
            except _UNREADABLE as exc:
                raise _damaged(self.path, exc) from None
            inside = (rows >= low) & (rows < high)
            out[inside] = part[rows[inside] - low]
        return out
