"""TensorFlow errors raised while reading, turned into DataErrors that name the file, record and column."""
import re
from contextlib import contextmanager

import tensorflow as tf

from trainer.data import corrupt
from trainer.data.probe import ParsePlan
from trainer.data.records import clean_message
from trainer.errors import DataError
from trainer.spec.columns import raw_columns
from trainer.spec.types import Spec


@contextmanager
def translate_errors(spec: Spec, files: list[str], plan: ParsePlan):
    """Turn TensorFlow data errors raised while iterating into DataErrors that name the file."""
    try:
        yield
    except tf.errors.DataLossError as exc:
        raise corrupt.describe_corruption(spec, plan, files, exc) from None
    except tf.errors.InvalidArgumentError as exc:
        raise _data_error(spec, files, plan, exc) from None


_ASSERTION = re.compile(r"assertion failed: \[(?P<what>.*?); first bad record:\] \[(?P<origin>[^\]]*)\]"
                        r"(?: \[value: (?P<value>[^\]]*)\])?")
_NAMED = re.compile(r"Name: (?P<origin>.+?), (?:Feature|Key): (?P<column>[^\s,]+)(?:,? Index: \d+\.)?\s*(?P<detail>.*)")


def _data_error(spec: Spec, files: list[str], plan: ParsePlan, exc: tf.errors.OpError) -> DataError:
    message = clean_message(exc.message)
    if m := _ASSERTION.search(message):
        what = m["what"].replace("\\'", "'")
        return DataError(f"{m['origin']}: {what}" + (f" (value: {m['value']})" if m["value"] else ""))
    if m := _NAMED.search(message):
        col = raw_columns(spec).get(m["column"])
        users = f" (needed by {col.read_by})" if col else ""
        detail = re.sub(r"\s+", " ", m["detail"]).strip()
        if "required but could not be found" in detail:
            return DataError(f"{m['origin']}: column '{m['column']}'{users} is missing from the record; "
                             "every record must carry it, or the spec must declare a default")
        return DataError(f"{m['origin']}: column '{m['column']}'{users}: {detail}")
    # No record named (e.g. an unparsable CSV line or tf.Example): find the file by scanning.
    return corrupt.describe_corruption(spec, plan, files, exc)
