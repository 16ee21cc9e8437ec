"""Files and directories that appear whole or not at all.

Every file prerank publishes (fitted vocabularies, run records, metrics, plots,
data shards, item vectors, export manifests) is written to a temporary sibling
(`<path>.tmp`), flushed to disk (fsync) and renamed over its final name in one
step, so a reader, or a job resumed after kill -9, never sees half a file.

Directories (a SavedModel version, an ONNX export, a version of the item
store) are written as a hidden sibling `.tmp-<name>-<host>-<pid>` and renamed
to their final name in one step; readers (TF Serving's file watcher, a scoring
service) never see one half written. A killed writer leaves only its
temporary, which the next writer on the same host removes once that process
is gone (temporaries of other hosts sharing the directory are left alone). The
parent must be a POSIX file system (local or mounted), where rename is atomic.
"""
import json
import os
import re
import shutil
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, BinaryIO

from trainer.errors import ExportError, PrerankError

TMP_SUFFIX = ".tmp"  # a file being written: `<path>.tmp`
TEMP_PREFIX = ".tmp-"  # a directory being written: `.tmp-<name>-<host>-<pid>`


def fsync_directory(path: str) -> None:
    """Make the renames inside directory `path` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yield the temporary path to write `path` through; on success it is fsynced and renamed over `path`,
    on failure removed. For writers that want a path (TFRecord writers, memory-mapped arrays)."""
    tmp = os.fspath(path) + TMP_SUFFIX
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_write(path: str, content: str | bytes | Callable[[BinaryIO], None]) -> None:
    """Write `content` (text as UTF-8, bytes, or a function writing into a binary file) to `path` atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        if callable(content):
            content(fh)
        else:
            fh.write(content.encode("utf-8") if isinstance(content, str) else content)


def write_json_atomic(path: str, data: Any) -> None:
    """`data` as indented JSON with sorted keys, atomically."""
    atomic_write(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: str, error: type[PrerankError], written_by: str) -> Any:
    """The JSON of `path`; `error` naming the file (and the line) when it is missing, not UTF-8 or not JSON.

    Args:
      path: the file.
      error: the PrerankError to raise (e.g. ModelDirError for a model directory's files).
      written_by: what writes the file, for the message ("`prerank train`").
    """
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise error(f"{path}: not found; {written_by} writes it") from None
    except OSError as exc:  # a directory in its place, no permission
        raise error(f"{path}: cannot be read ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        raise error(f"{path}: not UTF-8 text (byte {exc.start}); expected the JSON {written_by} writes") from None
    except json.JSONDecodeError as exc:
        raise error(f"{path}:{exc.lineno}: not valid JSON ({exc.msg}, column {exc.colno}); expected the JSON "
                    f"{written_by} writes") from None


# ---- directories ----

def temporary_for(final: str, pid: int | None = None) -> str:
    """The temporary sibling this process (or `pid` on this host) writes directory `final` into."""
    parent, name = os.path.split(os.path.normpath(final))
    return os.path.join(parent, f"{TEMP_PREFIX}{name}-{socket.gethostname()}-{pid or os.getpid()}")


def remove_stale_temporaries(parent: str) -> None:
    """Delete the temporaries in `parent` written on this host by processes that are gone."""
    if not os.path.isdir(parent):
        return
    ours = re.compile(rf"^{re.escape(TEMP_PREFIX)}.+-{re.escape(socket.gethostname())}-(\d+)(\..*)?$")
    for name in os.listdir(parent):
        match = ours.match(name)  # a suffix such as ".unpruned" marks a sibling of the same writer
        if match and not is_alive(int(match.group(1))):
            shutil.rmtree(os.path.join(parent, name), ignore_errors=True)


def is_alive(pid: int) -> bool:
    """Whether process `pid` of this host still runs."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def publish_directory(temp: str, final: str) -> None:
    """Rename the finished directory `temp` to `final`, which must not exist, and make the rename durable."""
    if os.path.exists(final):
        raise ExportError(f"{final} appeared while it was being written; left both alone ({temp})")
    os.rename(temp, final)
    fsync_directory(os.path.dirname(os.path.abspath(final)))
