"""A batch of the pipeline as a readable table (`prerank inspect`)."""
import numpy as np
import tensorflow as tf

from trainer.tables import text_table


def _describe(value) -> tuple[str, str, str]:
    if isinstance(value, tf.RaggedTensor):
        lengths = value.row_lengths().numpy()
        return (value.dtype.name, f"ragged [{value.nrows()}, None]",
                f"len mean {lengths.mean():.1f} max {lengths.max(initial=0)}, empty {np.mean(lengths == 0):.0%}")
    array = value.numpy()
    if array.dtype.kind in "SO":
        example = ", ".join(x.decode(errors="replace") for x in array.reshape(-1)[:3])
    elif array.dtype.kind == "f":
        example = f"mean {array.mean():.4g} min {array.min():.4g} max {array.max():.4g}"
    else:
        example = ", ".join(str(x) for x in array.reshape(-1)[:3]) + f" ({len(np.unique(array))} distinct)"
    return array.dtype.name, str(list(array.shape)), example


def batch_table(batch: dict) -> str:
    """One row per raw column and label of a batch: dtype, shape, a glimpse of the values."""
    rows = [[name, *_describe(value)] for name, value in batch["features"].items()]
    rows += [[f"label:{name}", *_describe(value)] for name, value in batch["labels"].items()]
    rows.append(["sample_weight", *_describe(batch["sample_weight"])])
    rows.append(["group", *_describe(batch["group"])])
    return text_table(["column", "dtype", "shape", "values"], rows)
