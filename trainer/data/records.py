"""How records are stored and named: record ids, their origins, padding, compression, TF error text.

Every record the pipeline reads carries an int64 id: its file's index shifted
by `RECORD_BITS`, plus its record number (TFRecord) or line number (CSV). A
parse error's origin (`file#record` or `file:line`) is rebuilt from it.
"""
import re

import tensorflow as tf

PAD_ID, PAD_STRING = -1, ""  # padding of `pad_sequences` batches and serving sequences; never a valid id
RECORD_BITS = 40  # a record id is file_index << RECORD_BITS | record number (TFRecord) or line number (CSV)


def tfrecord_compression(compression: str) -> str:
    """The spec's compression ("none" | "GZIP") as TensorFlow's compression_type ("" | "GZIP")."""
    return "" if compression == "none" else compression


def record_origins(ids: tf.Tensor, files: list[str] | tf.Tensor, fmt: str) -> tf.Tensor:
    """`file#record` (TFRecord) or `file:line` (CSV) for record ids."""
    paths = tf.constant(files) if isinstance(files, list) else files
    return tf.strings.join([tf.gather(paths, ids // (1 << RECORD_BITS)),
                            tf.strings.as_string(ids % (1 << RECORD_BITS))], separator=":" if fmt == "csv" else "#")


def clean_message(message: str) -> str:
    """The part of a TensorFlow error message that says what is wrong (drops function names, the
    tf.data iterator path, op names and node lists)."""
    line = (message or "").strip().splitlines()[0] if (message or "").strip() else "data error"
    line = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", line)
    line = re.sub(r"^.*?Iterator::[\w:]+: ", "", line)
    line = re.sub(r"\s*\[Op:[^\]]*\].*$", "", line)
    line = line.replace("' failed with", " failed with")
    return line.split(" [[")[0].strip() or "data error"
