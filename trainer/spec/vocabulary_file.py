"""Vocabulary files (`vocabulary: {source: file, path: ...}`): one id a line, optionally `id<TAB>anything`.

Read once by the spec's checks (so `prerank validate` refuses a bad file) and
again when the model is built. An empty file, an id that is not an integer
(int64 tables), a repeated id or more than `MAX_TABLE_ROWS` ids is refused
naming the file and line.
"""
from trainer.errors import SpecError, SpecIssue
from trainer.spec.types import MAX_TABLE_ROWS


def read_vocabulary_file(path: str, dtype: str, field: str = "vocabulary.path") -> list:
    """The ids of the vocabulary file at `path` (int for dtype int64, str for string); SpecError naming the
    file and line (`field`: the spec field that names the file) for a file that cannot be used."""
    def refuse(line: int | None, message: str) -> SpecError:
        return SpecError([SpecIssue(path, line, field, message)])

    ids: list = []
    first_line: dict = {}
    try:
        with open(path, encoding="utf-8") as fh:
            for number, text in enumerate(fh, start=1):
                if not text.strip():
                    continue
                raw = text.rstrip("\n").split("\t")[0]
                if dtype == "int64":
                    try:
                        value = int(raw)
                    except ValueError:
                        raise refuse(number, f"expected an integer id (the table's dtype is int64), got {raw!r}")
                else:
                    value = raw
                if value in first_line:
                    raise refuse(number, f"id {raw!r} repeats line {first_line[value]}; expected each id once")
                if len(ids) >= MAX_TABLE_ROWS:
                    raise refuse(number, f"more than {MAX_TABLE_ROWS:,} ids")
                first_line[value] = number
                ids.append(value)
    except UnicodeDecodeError as exc:
        raise refuse(None, f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise refuse(None, f"cannot read the vocabulary file: {exc.strerror}") from None
    if not ids:
        raise refuse(None, "the vocabulary file holds no ids; expected one id a line")
    return ids
