"""Files and directories published whole: atomic writes, and stale temporaries of dead writers removed while
live ones and finished ones stay."""
import json
import os
import subprocess
import sys

import pytest

from trainer.errors import ExportError
from trainer.files import (TEMP_PREFIX, atomic_write, publish_directory, remove_stale_temporaries, temporary_for,
                           write_json_atomic)


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_stale_temporaries_of_dead_writers_are_removed_and_others_kept(tmp_path):
    dead = _dead_pid()
    stale = temporary_for(str(tmp_path / "3"), dead)
    stale_sibling = stale + ".unpruned"
    mine = temporary_for(str(tmp_path / "4"))
    other_host = tmp_path / f"{TEMP_PREFIX}5-elsewhere-{dead}"  # another machine's export: not ours to judge
    for d in (stale, stale_sibling, mine, other_host, tmp_path / "2", tmp_path / "notes"):
        os.makedirs(d)
    remove_stale_temporaries(str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [os.path.basename(mine), other_host.name, "2", "notes"])


def test_publish_renames_and_never_replaces(tmp_path):
    final = tmp_path / "1"
    temp = temporary_for(str(final))
    os.makedirs(temp)
    (tmp_path / os.path.basename(temp) / "saved_model.pb").write_text("x")
    publish_directory(temp, str(final))
    assert (final / "saved_model.pb").read_text() == "x" and not os.path.exists(temp)
    os.makedirs(temp)
    with pytest.raises(ExportError, match="appeared while it was being written"):
        publish_directory(temp, str(final))
    assert (final / "saved_model.pb").exists()


def test_atomic_write_replaces_whole_files_and_a_failed_write_leaves_the_old_one(tmp_path):
    path = str(tmp_path / "run.json")
    atomic_write(path, "first")
    write_json_atomic(path, {"b": 1, "a": [1, 2]})
    assert json.loads(open(path).read()) == {"a": [1, 2], "b": 1} and open(path).read().startswith('{\n  "a"')

    def crash(fh):
        fh.write(b"half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        atomic_write(path, crash)
    assert json.loads(open(path).read()) == {"a": [1, 2], "b": 1}
    assert os.listdir(tmp_path) == ["run.json"]  # no temporary left behind
