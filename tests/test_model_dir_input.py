"""Hostile input to the training job and its model directory: corrupt records skipped and counted in every read
of a job, a finished run resumed, a directory not locked to a config that never trained, and damaged or foreign
files of a model directory named in one line instead of a traceback.

The data are real KuaiRand shards (the session's slice) cut short; the spec (tests/specs/kuairand_small.yaml)
reads a few of their columns, so that a job takes a second or two.
"""
import trainer  # noqa: F401  (legacy Keras before TensorFlow)

import glob
import json
import os
import shutil
import struct
import subprocess
import sys
import zlib

import pytest

from conftest import REPO, SPECS
from trainer.cli import main
from trainer.errors import ModelDirError
from trainer.training.loop import repair_history

SPEC = os.path.join(SPECS, "kuairand_small.yaml")
TWO_STEPS = ["--set", "training.max_steps=2"]


def readable_records(path: str) -> int:
    """The complete records of a cut GZIP TFRecord file, counted from its bytes (without TensorFlow)."""
    data = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(open(path, "rb").read())
    count = offset = 0
    while offset + 12 <= len(data):  # length (8 bytes), its CRC (4), the record, its CRC (4)
        end = offset + 12 + struct.unpack("<Q", data[offset:offset + 8])[0] + 4
        if end > len(data):
            break
        count, offset = count + 1, end
    return count


@pytest.fixture(scope="module")
def shards(kuairand_slice, tmp_path_factory) -> dict:
    """The slice's shard whole ("good", alone in its folder) and cut at a third and at two thirds of its bytes
    ("a", "b": the folder "corrupt"); "readable": the records before each cut."""
    (source,) = glob.glob(os.path.join(kuairand_slice, "date=*", "*.tfrecord.gz"))
    root = tmp_path_factory.mktemp("shards")
    raw = open(source, "rb").read()
    out = {"good": str(root / "clean" / "good.tfrecord.gz"), "a": str(root / "corrupt" / "a.tfrecord.gz"),
           "b": str(root / "corrupt" / "b.tfrecord.gz"), "corrupt": str(root / "corrupt" / "*.tfrecord.gz")}
    for name, size in (("good", len(raw)), ("a", len(raw) // 3), ("b", len(raw) * 2 // 3)):
        os.makedirs(os.path.dirname(out[name]), exist_ok=True)
        open(out[name], "wb").write(raw[:size])
    out["readable"] = {name: readable_records(out[name]) for name in ("a", "b")}
    assert 0 < out["readable"]["a"] < out["readable"]["b"] < readable_records(out["good"]) == 3000
    return out


def read(path: str) -> dict:
    with open(path) as fh:
        return json.load(fh)


def history_rows(model_dir: str) -> list[dict]:
    with open(os.path.join(model_dir, "history.jsonl")) as fh:
        return [json.loads(line) for line in fh]


def test_skip_corrupt_covers_every_read_of_a_first_run_which_a_failed_config_does_not_lock(shards, tmp_path,
                                                                                           capsys):
    a, b, readable = shards["a"], shards["b"], shards["readable"]
    model_dir = str(tmp_path / "model")
    job = ["train", SPEC, "--model-dir", model_dir, "--data", shards["corrupt"], "--validation", b, *TWO_STEPS]

    # Without --skip-corrupt the fit stops at the first corrupt file, naming it; the run never checkpointed.
    assert main([*job, "--set", "training.seed=3"]) == 2
    err = capsys.readouterr().err
    assert f"data error: {a}: corrupt record after {readable['a']} readable record(s)" in err
    assert "rerun with --skip-corrupt" in err and b not in err
    assert os.path.isfile(os.path.join(model_dir, "run.json"))
    assert not os.path.exists(os.path.join(model_dir, "checkpoints"))

    # Corrected (another seed) and rerun with the flag: accepted, and every read skips and counts.
    assert main([*job, "--skip-corrupt"]) == 0
    out = capsys.readouterr().out
    assert f"note: {model_dir}/run.json recorded another spec or config, but no checkpoint was written with it" in out
    assert "config: training.seed: 3 -> 0" in out
    expected = {name: {"file": shards[name], "records": 1, "readable": readable[name],
                       "detail": f"corrupt record after {readable[name]} readable record(s); the rest of the file "
                                 "is skipped"} for name in ("a", "b")}
    for phase, names in (("fit", "ab"), ("training", "ab"), ("validation", "b")):
        for name in names:
            assert f"{phase}: skipped 1 corrupt record(s) in {shards[name]}: {expected[name]['detail']} (" in out
    summary = read(os.path.join(model_dir, "metrics.json"))
    got = {phase: [{**e, "detail": e["detail"].split(" (")[0]} for e in entries]
           for phase, entries in summary["skipped"].items()}
    assert got == {"fit": [expected["a"], expected["b"]], "training": [expected["a"], expected["b"]],
                   "validation": [expected["b"]]}
    fitted = read(os.path.join(model_dir, "preprocessing", "preprocessing.json"))
    assert fitted["rows"] == readable["a"] + readable["b"] and fitted["skipped"] == summary["skipped"]["fit"]
    assert summary["validation"]["rows"] == readable["b"]  # one batch of 2,048 holds them all
    trained = summary["training"]
    assert trained["steps_run"] == 2 and trained["examples"] == 512 and trained["last_losses"]["loss/total"] > 0

    # The same command again: the run is finished; its figures stay, the history holds each step once.
    assert main([*job, "--skip-corrupt"]) == 0
    assert "trained to step 2 (0 steps here, 0 examples" in capsys.readouterr().out
    assert read(os.path.join(model_dir, "metrics.json"))["training"] == {**trained, "noop_resumes": 1}
    rows = history_rows(model_dir)
    logged = [(row["step"], key) for row in rows for key in row if key != "step"]
    assert len(logged) == len(set(logged)) and (2, "eval/student/auc") in logged
    assert [row["step"] for row in rows if "loss/total" in row] == [1, 2]

    # Now that it holds a checkpoint, the directory refuses another config.
    record = open(os.path.join(model_dir, "run.json")).read()
    assert main([*job, "--skip-corrupt", "--set", "training.seed=5"]) == 2
    assert "config: training.seed: 0 -> 5" in capsys.readouterr().err
    assert open(os.path.join(model_dir, "run.json")).read() == record

    # evaluate and analyze: the same flag, the same lines, recorded in their JSON.
    evaluate = ["evaluate", SPEC, "--model-dir", model_dir, "--data", b, "--sampled", "0"]
    assert main(evaluate) == 2
    assert f"data error: {b}: corrupt record after {readable['b']}" in capsys.readouterr().err
    assert main([*evaluate, "--skip-corrupt"]) == 0
    assert f"evaluation: skipped 1 corrupt record(s) in {b}: {expected['b']['detail']}" in capsys.readouterr().out
    evaluation = read(os.path.join(model_dir, "evaluation.json"))
    assert evaluation["skipped"] == {"evaluation": summary["skipped"]["validation"]}
    assert evaluation["rows"] == readable["b"]
    analyze = ["analyze", SPEC, "--data", a, "--out", str(tmp_path / "fitted")]
    assert main(analyze) == 2
    assert f"data error: {a}: corrupt record after {readable['a']}" in capsys.readouterr().err
    assert main([*analyze, "--skip-corrupt"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"skipped 1 corrupt record(s) in {a}: {expected['a']['detail']}")
    fitted = read(str(tmp_path / "fitted" / "preprocessing.json"))
    assert fitted["rows"] == readable["a"] and fitted["skipped"] == summary["skipped"]["fit"][:1]


def test_history_keeps_the_steps_up_to_the_checkpoint_a_job_resumes_from(tmp_path):
    path = str(tmp_path / "history.jsonl")
    lines = [json.dumps({"step": s, "loss/total": 1.0 / s}) for s in range(1, 7)]
    lines.insert(4, json.dumps({"step": 4, "eval/student/auc": 0.6}))
    with open(path, "w") as fh:  # a job killed after step 6 while writing its line, checkpointed at step 4
        fh.write("\n".join(lines) + '\n{"step": 7, "loss/to')
    assert repair_history(path, 4) == {"loss/total", "eval/student/auc"}  # what was logged at the checkpoint
    assert open(path).read() == "\n".join(lines[:5]) + "\n"
    assert os.listdir(tmp_path) == ["history.jsonl"]  # rewritten through a temporary, renamed over it
    assert repair_history(path, 0) == set() and open(path).read() == ""  # a restart from scratch
    with open(path, "w") as fh:
        fh.write('{"step": 1}\n["not", "a", "row"]\n{"step": 2}\n')
    with pytest.raises(ModelDirError, match=rf'^{path}:2: expected a JSON object with an integer "step"'):
        repair_history(path, 1)


@pytest.fixture(scope="module")
def trained(shards, tmp_path_factory) -> str:
    """A model directory trained 2 steps on the whole shard (checkpoint ckpt-2)."""
    model_dir = str(tmp_path_factory.mktemp("trained") / "model")
    assert main(["train", SPEC, "--model-dir", model_dir, "--data", shards["good"], *TWO_STEPS]) == 0
    return model_dir


def test_damaged_or_foreign_model_directory_files_are_named(trained, shards, tmp_path, capsys):
    model_dir, good = str(tmp_path / "model"), shards["good"]
    evaluate = ["evaluate", SPEC, "--model-dir", model_dir, "--data", good, "--sampled", "0", "--max-batches", "1"]
    train = ["train", SPEC, "--model-dir", model_dir, "--data", good, *TWO_STEPS]
    export = ["export", SPEC, "--model-dir", model_dir, "--export-base", str(tmp_path / "export"), "--data", good]
    vocab = os.path.join(model_dir, "preprocessing", "vocab", "video.txt")
    shutil.copytree(trained, model_dir)
    video_ids = open(vocab).read().splitlines(keepends=True)
    cases = [  # (file in MODEL_DIR, its new content (None: removed), the commands, what they say)
        ("run.json", b"\xff\xfe{}", [evaluate, train, export], f"{model_dir}/run.json: not UTF-8 text (byte 0)"),
        ("run.json", b'{"spec": {}, ', [evaluate, train], f"{model_dir}/run.json:1: not valid JSON"),
        ("run.json", b"[1, 2]", [evaluate, train],
         f"{model_dir}/run.json: not a prerank run record: expected an object at the top level, got [1, 2]"),
        ("run.json", b'{"spec": {"features": {}, "labels": {}}, "config": {"model": 5, "training": {}}}',
         [evaluate, train], "not a prerank run record: expected an object at 'config.model', got 5"),
        ("run.json", None, [train], f"{model_dir}/run.json: missing, but {model_dir}/checkpoints holds checkpoints"),
        ("preprocessing/preprocessing.json", b'{"rows": ', [evaluate, train],
         f"{model_dir}/preprocessing/preprocessing.json:1: not valid JSON"),
        ("preprocessing/preprocessing.json", b'{"spec_name": "x", "spec_fingerprint": "y", "rows": "many"}',
         [evaluate], f"{model_dir}/preprocessing/preprocessing.json: rows: expected an integer, got \"many\""),
        ("preprocessing/vocab/video.txt", "".join(video_ids[:1] + ["12 13\n"] + video_ids[2:]).encode(), [evaluate],
         f"{vocab}:2: expected '<id><TAB><count>' ending in a newline, got '12 13\\n'"),
        ("preprocessing/vocab/video.txt", "".join(video_ids[:-1]).encode(), [evaluate],
         f"{vocab}: holds {len(video_ids) - 1} ids, preprocessing.json says {len(video_ids)}"),
        ("checkpoints/checkpoint", os.urandom(64), [evaluate, train],
         f"{model_dir}/checkpoints/checkpoint: not a TensorFlow checkpoint list"),
        ("checkpoints/ckpt-2.index", os.urandom(4096), [evaluate],
         f"{model_dir}/checkpoints/ckpt-2: unreadable checkpoint (not an sstable (bad magic number))"),
        ("history.jsonl", b"garbage\n", [train], f"{model_dir}/history.jsonl:1: expected a JSON object with an "
                                                 "integer \"step\""),
    ]
    for name, content, commands, message in cases:
        path = os.path.join(model_dir, name)
        original = open(path, "rb").read()
        if content is None:
            os.remove(path)
        else:
            open(path, "wb").write(content)
        for command in commands:
            assert main(command) == 2, (name, command[0])
            err = capsys.readouterr().err
            assert err.startswith("model directory error: ") and message in err, (name, command[0], err)
        open(path, "wb").write(original)
    assert not glob.glob(str(tmp_path / "export" / "*"))  # no version exported

    missing = str(tmp_path / "none")
    for command, why in ((evaluate, "no run.json"), (export, "no run.json"),
                         (["report", "--model-dir", model_dir], "no such directory")):
        assert main([missing if arg == model_dir else arg for arg in command]) == 2
        assert f"model directory error: {missing}: not a trained model directory ({why})" in capsys.readouterr().err
    fresh_base = str(tmp_path / "fresh_export")
    assert main([fresh_base if arg == str(tmp_path / "export") else missing if arg == model_dir else arg
                 for arg in export]) == 2
    assert not os.path.exists(fresh_base)  # refused before the export base is created

    # The training job, as run in production (a process of its own), on a damaged checkpoint: a message and
    # exit 2 within the timeout, no traceback.
    index = os.path.join(model_dir, "checkpoints", "ckpt-2.index")
    open(index, "wb").write(os.urandom(4096))
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("TF_CONFIG", None)
    done = subprocess.run([sys.executable, "-m", "trainer.task", *train[1:]], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 2, done.stderr[-3000:]
    assert f"model directory error: {model_dir}/checkpoints/ckpt-2: unreadable checkpoint" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout
