"""How records are stored and named: record ids, their origins, padding, compression, TF error text.

Every record the pipeline reads carries an int64 id: its file's index shifted
by `RECORD_BITS`, plus its record number (TFRecord), line number (CSV) or row
number (Parquet, from 0 in the file). A parse error's origin (`file#record`,
`file:line` or `file#row N`) is rebuilt from it.

The id rule (one rule for data and serving):

- an int64 id is >= 0, or exactly the `default` its spec feature declares
  (a declared missing value such as `default: -1` is a legitimate id with a
  vocabulary row of its own, like any other);
- any other negative id in the data is refused, naming the column and the
  record (`trainer.data.parse`); so is an empty string inside a string
  sequence;
- `PAD_ID` (-1) and `PAD_STRING` ("") only pad: a sequence [B, L] is padded
  on the right (ids first, then padding), by `pad_sequences` batches and by
  serving clients; the serving signatures refuse a row with padding before
  an id and any other negative id (`serving.savedmodel.signatures`);
- a valid id outside its table's vocabulary, unseen in the training data or
  rarer there than the spec's `min_count`, reads the table's
  out-of-vocabulary row (`oov_buckets` rows, first in the table), in
  training, evaluation and serving alike (`trainer.layers.encoder.IdLookup`).
  That row starts at zero. It is learned as the "unknown id" embedding from
  the rare ids and from `model.id_dropout`, which sends a share of the known
  ids there in training; the export keeps it like any trained row. Never
  trained, it stays zero everywhere, so the checkpoint and the export agree.
  An id that loses its own row to compression is to read the learned OOV
  row too, not a zero row (today's pruning drops only all-zero rows and rows
  training never updated, which with vocabularies fitted on the training
  data are OOV rows, hash buckets and ids met only in dropped draws).
"""
import re

import tensorflow as tf

PAD_ID, PAD_STRING = -1, ""  # right padding of `pad_sequences` batches and serving sequences; never an id
RECORD_BITS = 40  # a record id is file_index << RECORD_BITS | record (TFRecord), line (CSV) or row (Parquet) number


_SUFFIX_FORMATS = ((".tfrecord.gz", "tfrecord", "GZIP"), (".tfrecord", "tfrecord", "none"),
                   (".csv.gz", "csv", "GZIP"), (".csv", "csv", "none"), (".parquet", "parquet", "none"))


def format_of(path: str, fmt: str, compression: str) -> tuple[str, str]:
    """(format, compression) of a file named by its suffix (`.tfrecord[.gz]`, `.csv[.gz]`, `.parquet`); `fmt` and
    `compression` (the spec's) for any other name."""
    for suffix, named_fmt, named_compression in _SUFFIX_FORMATS:
        if path.endswith(suffix):
            return named_fmt, named_compression
    return fmt, compression


def tfrecord_compression(compression: str) -> str:
    """The spec's compression ("none" | "GZIP") as TensorFlow's compression_type ("" | "GZIP")."""
    return "" if compression == "none" else compression


_ORIGIN_SEPARATOR = {"csv": ":", "parquet": "#row "}  # TFRecord: "#"


def record_origins(ids: tf.Tensor, files: list[str] | tf.Tensor, fmt: str) -> tf.Tensor:
    """`file#record` (TFRecord), `file:line` (CSV) or `file#row N` (Parquet) for record ids."""
    paths = tf.constant(files) if isinstance(files, list) else files
    return tf.strings.join([tf.gather(paths, ids // (1 << RECORD_BITS)),
                            tf.strings.as_string(ids % (1 << RECORD_BITS))], separator=_ORIGIN_SEPARATOR.get(fmt, "#"))


def clean_message(message: str) -> str:
    """The part of a TensorFlow error message that says what is wrong (drops function names, the
    tf.data iterator path, op names and node lists)."""
    lines = [x for x in (message or "").strip().splitlines() if x.strip()]
    if lines and lines[0].startswith("Graph execution error:"):  # raised inside a compiled function (the loop's)
        lines = lines[1:]
        if lines and lines[0].startswith("Detected at node"):  # then its stack trace, indented
            lines = lines[1:]
            while lines and (lines[0][:1].isspace() or lines[0].startswith("<stack traces unavailable>")):
                lines = lines[1:]
    line = lines[0] if lines else "data error"
    line = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", line)
    line = re.sub(r"^.*?Iterator::[\w:]+: ", "", line)
    line = re.sub(r"\s*\[Op:[^\]]*\].*$", "", line)
    line = line.replace("' failed with", " failed with")
    return line.split(" [[")[0].strip() or "data error"
