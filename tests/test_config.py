"""The model / training config: the spec's sections, a separate --config file, --set overrides, located errors,
and which changes a model directory's run.json accepts on resume."""
import dataclasses
import json
import os
import re

import pytest

from conftest import spec_text
from trainer.config import Component, Config, TrainingConfig, load_config
from trainer.config.derived import id_dropout_rates
from trainer.training.run_record import RESUMABLE_KEYS, config_changes
from trainer.errors import ConfigError
from trainer.spec import load_spec

SPEC = spec_text("config_test")


def key_lines(text: str) -> dict[str, int]:
    """The 1-based line of each key's first occurrence: a `key:` or a list item's `- {name: key, ...}`."""
    lines = {}
    for n, line in enumerate(text.splitlines(), 1):
        key = re.match(r"\s*(?:- \{name: (\w+)|(\w+):)", line)
        if key:
            lines.setdefault(key.group(1) or key.group(2), n)
    return lines


LINE = key_lines(SPEC)


def write(tmp_path, text: str, name: str = "spec.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def errors(spec_text: str, tmp_path, overrides=(), config_text: str | None = None) -> tuple[str, list[str]]:
    """(spec path, the ConfigError's lines) for a config that must fail."""
    path = write(tmp_path, spec_text)
    config_path = write(tmp_path, config_text, "config.yaml") if config_text is not None else None
    with pytest.raises(ConfigError) as info:
        load_config(load_spec(path), config_path, list(overrides))
    return path, [str(issue) for issue in info.value.issues]


def test_the_spec_sections_set_knobs_and_the_rest_keep_their_defaults(tmp_path):
    config = load_config(load_spec(write(tmp_path, SPEC)))
    assert config.model.student.user_tower == [32, 16] and config.model.teacher.experts == 2
    assert config.training.batch_size == 256
    assert config.model.student.heads == 4 and config.training.max_steps is None and config.model.mode == "joint"
    assert config.to_dict()["model"]["student"]["senet"] == {"enabled": False, "reduction": 4}


def test_unknown_key_wrong_type_and_bad_choice_name_file_line_and_field(tmp_path):
    text = SPEC.replace("    similarity: dot", "    similarity: euclid\n    colour: red") \
               .replace("batch_size: 256", "batch_size: lots")
    path, lines = errors(text, tmp_path)
    similarity, colour = LINE["similarity"], LINE["similarity"] + 1
    assert f"{path}:{colour}: model.student.colour: unknown key; expected one of: dcn_layers, dual_augmented, " \
           "fm_dim, heads, item_tower, senet, similarity, task, temperature, towers, user_tower" in lines
    assert f"{path}:{similarity}: model.student.similarity: expected one of dot, cosine, multi_head, " \
           "got 'euclid' (a custom similarity must be registered by a module listed under plugins:)" in lines
    assert f"{path}:{LINE['batch_size'] + 1}: training.batch_size: expected an integer, got 'lots'" in lines
    assert len(lines) == 3  # every problem at once


def test_list_items_are_checked_one_by_one(tmp_path):
    path, lines = errors(SPEC.replace("user_tower: [32, 16]", "user_tower: [32, sixteen]")
                         .replace("    similarity: dot", "    towers: [mlp, gbdt]"), tmp_path)
    assert lines == [f"{path}:{LINE['user_tower']}: model.student.user_tower[1]: expected an integer, got 'sixteen'",
                     f"{path}:{LINE['similarity']}: model.student.towers[1]: expected one of mlp, dcn, fm, got 'gbdt' "
                     "(a custom tower must be registered by a module listed under plugins:)"]


def test_the_towers_last_sizes_must_match(tmp_path):
    path, lines = errors(SPEC.replace("item_tower: [32, 16]", "item_tower: [32, 8]"), tmp_path)
    assert lines == [f"{path}:{LINE['item_tower']}: model.student.item_tower: the towers' last sizes must match "
                     "(the vectors are compared): user tower ends with 16, item tower with 8"]


def test_multi_head_needs_heads_that_divide_the_vector_size(tmp_path):
    path, lines = errors(SPEC.replace("similarity: dot", "similarity: multi_head\n    heads: 3"), tmp_path)
    assert lines == [f"{path}:{LINE['similarity'] + 1}: model.student.heads: the vector size 16 must divide into "
                     "3 heads"]
    path, lines = errors(SPEC.replace("similarity: dot", "similarity: multi_head\n    heads: 0"), tmp_path)
    assert lines == [f"{path}:{LINE['similarity'] + 1}: model.student.heads: expected an integer in [1, 16384], got 0"]
    load_config(load_spec(write(tmp_path, SPEC.replace("similarity: dot", "similarity: multi_head\n    heads: 8"))))


def test_sizes_and_temperatures_must_be_positive(tmp_path):
    path, lines = errors(SPEC.replace("user_tower: [32, 16]", "user_tower: [0, 16]")
                         .replace("experts: 2", "experts: 0"), tmp_path,
                         ["model.student.similarity=cosine", "model.student.temperature=0"])
    assert lines == [f"{path}:{LINE['user_tower']}: model.student.user_tower[0]: expected an integer in [1, 16384], "
                     "got 0",
                     "command line --set: model.student.temperature: expected a number > 0, got 0.0",
                     f"{path}:{LINE['experts']}: model.teacher.experts: expected an integer in [1, 256], got 0"]


def test_teacher_dropout_and_target_attention_are_checked(tmp_path):
    path, lines = errors(SPEC.replace("experts: 2", "experts: 2\n    dropout: 1.0\n    target_attention: true"),
                         tmp_path, ["model.teacher.attention_hidden=0"])
    assert lines == [f"{path}:{LINE['experts'] + 1}: model.teacher.dropout: expected a number in [0, 0.99], got 1.0",
                     "command line --set: model.teacher.attention_hidden: expected an integer in [1, 16384], got 0"]
    # checks across knobs and the spec run once every knob is within its bounds:
    # this spec has no user history on an item feature's table, so there is nothing to attend
    path, lines = errors(SPEC.replace("experts: 2", "experts: 2\n    target_attention: true"), tmp_path)
    assert lines == [f"{path}:{LINE['experts'] + 1}: model.teacher.target_attention: no user-side sequence feature "
                     "reads the embedding table of an item-side categorical feature, so there is nothing to attend"]


def test_id_dropout_is_a_bounded_rate_on_tables_looked_up_in_a_vocabulary(tmp_path):
    _, lines = errors(SPEC, tmp_path, ["model.id_dropout=0.6"])
    assert lines == ["command line --set: model.id_dropout: expected a number in [0, 0.5], got 0.6"]
    _, lines = errors(SPEC, tmp_path, ["model.id_dropout_tables={user: 0.1}"])  # this spec hashes every id
    assert lines == ["command line --set: model.id_dropout_tables.user: expected a table read by a categorical "
                     "feature through a vocabulary (source data or file): the spec has none"]
    _, lines = errors(spec_text("model_test"), tmp_path,
                      ["model.id_dropout_tables={video: 0.7, user_x_author: 0.1, duration: 0.1}"])
    tables = "user, city, video, hour, author"  # video (first used by watch_seq): video_id reads it too
    assert lines == ["command line --set: model.id_dropout_tables.video: expected a number in [0, 0.5], got 0.7",
                     *(f"command line --set: model.id_dropout_tables.{name}: expected a table read by a categorical "
                       f"feature through a vocabulary (source data or file): {tables}"
                       for name in ("user_x_author", "duration"))]
    config = load_config(load_spec(write(tmp_path, spec_text("model_test"))), None,
                         ["model.id_dropout=0.05", "model.id_dropout_tables={user: 0.2, hour: 0}"])
    assert id_dropout_rates(config, load_spec(write(tmp_path, spec_text("model_test")))) == \
        {"user": 0.2, "city": 0.05, "video": 0.05, "author": 0.05}


def test_the_student_learns_a_binary_label(tmp_path):
    path, lines = errors(SPEC.replace("similarity: dot", "similarity: dot\n    task: watch_time"), tmp_path)
    assert lines == [f"{path}:{LINE['similarity'] + 1}: model.student.task: expected a binary label of the spec "
                     "(click), got 'watch_time'"]
    _, lines = errors(SPEC, tmp_path, ["model.student.task=likes"])
    assert lines == ["command line --set: model.student.task: expected a binary label of the spec (click), "
                     "got 'likes'"]


def test_mode_student_needs_the_teacher_dir(tmp_path):
    path, lines = errors(SPEC.replace("model:\n", "model:\n  mode: student\n"), tmp_path)
    assert lines == [f"{path}:{LINE['training'] + 1}: training.teacher_dir: model.mode student needs the trained "
                     "teacher's model directory"]
    config = load_config(load_spec(path), None, ["training.teacher_dir=/models/teacher"])
    assert config.model.mode == "student" and config.training.teacher_dir == "/models/teacher"


def test_bad_set_options_name_the_command_line(tmp_path):
    path, lines = errors(SPEC, tmp_path, ["training.max_steps100", "=5", "training.batch_size=big",
                                          "model.student.user_tower=[16,", "model.student.user_tower.size=3",
                                          "training.colour=red"])
    assert lines[:2] == ["command line --set: training.max_steps100: expected KEY=VALUE with a dotted KEY, "
                         "e.g. training.max_steps=100",
                         "command line --set: =5: expected KEY=VALUE with a dotted KEY, e.g. training.max_steps=100"]
    assert lines[2].startswith("command line --set: model.student.user_tower: invalid YAML value '[16,': ")
    assert lines[3] == "command line --set: model.student.user_tower.size: 'model.student.user_tower' is not a mapping"
    assert lines[4].startswith("command line --set: training.colour: unknown key; expected one of: ")
    assert lines[5] == "command line --set: training.batch_size: expected an integer, got 'big'"
    assert len(lines) == 6


def test_set_overrides_nested_keys_and_list_values(tmp_path):
    config = load_config(load_spec(write(tmp_path, SPEC)), None, [
        "model.student.user_tower=[8, 4]", "model.student.item_tower=[6,4]", "model.student.senet.enabled=true",
        "model.distill.schedule.kind=sigmoid", "model.distill.schedule.max=2", "model.student.towers=[mlp, fm]",
        "model.teacher.fused_weights={click: 1, watch_time: 0.5}", "training.max_steps=100",
        "training.eval_batches=null", " training.seed = 3"])
    s = config.model.student
    assert (s.user_tower, s.item_tower, s.towers, s.senet.enabled) == \
           ([8, 4], [6, 4], [Component("mlp"), Component("fm")], True)
    assert s.similarity == Component("dot") and s.senet.reduction == 4  # the file's and the default
    assert config.model.distill.schedule.kind == "sigmoid" and config.model.distill.schedule.max == 2.0
    assert config.model.teacher.fused_weights == {"click": 1.0, "watch_time": 0.5}
    assert config.model.teacher.experts == 2 and config.training.batch_size == 256  # kept from the file
    assert (config.training.max_steps, config.training.eval_batches, config.training.seed) == (100, None, 3)
    # The last --set of a key wins.
    assert load_config(load_spec(write(tmp_path, SPEC)), None,
                       ["training.seed=1", "training.seed=2"]).training.seed == 2


def test_empty_sections_of_a_config_file_keep_the_defaults_and_accept_set(tmp_path):
    spec = load_spec(write(tmp_path, SPEC))
    config_path = write(tmp_path, "model:\n  student:\ntraining:  # every knob commented out\n", "config.yaml")
    assert load_config(spec, config_path) == Config()
    config = load_config(spec, config_path, ["training.max_steps=5", "model.student.senet.enabled=true"])
    assert config.training.max_steps == 5 and config.model.student.senet.enabled
    assert load_config(spec, write(tmp_path, "", "empty.yaml")) == Config()


def test_a_separate_config_file_replaces_the_spec_sections(tmp_path):
    config_text = "# tuning run\ntraining:\n  batch_size: 64\nmodel:\n  student: {similarity: cosine}\n"
    spec = load_spec(write(tmp_path, SPEC))
    config = load_config(spec, write(tmp_path, config_text, "config.yaml"), ["training.max_steps=9"])
    assert config.training.batch_size == 64 and config.model.student.similarity == Component("cosine")
    assert config.model.student.user_tower == [128, 64, 32]  # the spec's sections are not read
    assert config.training.max_steps == 9
    # Errors name the config file and its lines; a key that is neither section is an error there.
    _, lines = errors(SPEC, tmp_path, config_text=config_text.replace("64", "-64") + "trainig: {seed: 1}\n")
    config_path = str(tmp_path / "config.yaml")
    assert lines == [f"{config_path}:6: trainig: unknown key; expected one of: model, training, plugins",
                     f"{config_path}:3: training.batch_size: expected an integer in [1, 16777216], got -64"]
    _, lines = errors(SPEC, tmp_path, config_text="- training\n")
    assert lines == [f"{config_path}:1: <document>: expected a mapping with model: / training: / plugins:"]
    with pytest.raises(ConfigError) as info:
        load_config(spec, str(tmp_path / "missing.yaml"))
    assert str(info.value) == f"{tmp_path / 'missing.yaml'}: <file>: cannot read the config file: No such file " \
                              "or directory"


def test_config_changes_list_what_differs_except_resumable_keys():
    base = Config()
    longer = dataclasses.replace(base, training=dataclasses.replace(
        base.training, max_steps=1000, epochs=3, log_every=1, checkpoint_every=7, keep_checkpoints=9, eval_every=5,
        eval_batches=2, progress=False, steps_per_call=3))
    assert config_changes(base.to_dict(), longer.to_dict()) == []
    other = dataclasses.replace(longer, model=dataclasses.replace(
        base.model, student=dataclasses.replace(base.model.student, similarity="cosine", user_tower=[8, 4])),
        training=dataclasses.replace(longer.training, seed=5, batch_size=32))
    assert config_changes(base.to_dict(), other.to_dict()) == [
        'model.student.similarity: "dot" -> "cosine"', "model.student.user_tower: [128, 64, 32] -> [8, 4]",
        "training.batch_size: 1024 -> 32", "training.seed: 0 -> 5"]
    # Keys named like a resumable one elsewhere are not exempt; keys only on one side are changes.
    assert config_changes({"model": {"max_steps": 1}}, {"model": {"max_steps": 2}}) == ["model.max_steps: 1 -> 2"]
    assert config_changes({"a": {"b": 1}}, {"a": {"b": 1, "c": 2}}) == ["a.c: null -> 2"]
    fields = {f.name for f in dataclasses.fields(TrainingConfig)}
    assert all(k.split(".")[0] == "training" and k.split(".")[1] in fields for k in RESUMABLE_KEYS)


def test_run_record_fills_knobs_added_since_with_their_defaults(tmp_path):
    import tensorflow as tf

    from trainer.training.layout import checkpoint_dir
    from trainer.training.run_record import check_or_record
    spec = load_spec(write(tmp_path, SPEC))
    model_dir = str(tmp_path / "model")
    config = load_config(spec)
    assert check_or_record(model_dir, spec, config) is False
    path = os.path.join(model_dir, "run.json")
    with open(path) as fh:
        recorded = json.load(fh)
    del recorded["config"]["training"]["deterministic"]  # as written before the knob existed
    with open(path, "w") as fh:
        json.dump(recorded, fh)
    assert check_or_record(model_dir, spec, config) is False  # its default: no change (and no checkpoint yet)
    tf.train.CheckpointManager(tf.train.Checkpoint(step=tf.Variable(1)), checkpoint_dir(model_dir), 1).save()
    assert check_or_record(model_dir, spec, config) is True  # trained: it resumes, and refuses changes
    with pytest.raises(ConfigError) as info:
        check_or_record(model_dir, spec, load_config(spec, None, ["training.deterministic=true"]))
    assert "config: training.deterministic: false -> true" in str(info.value)
    # A non-chief worker only checks: it never creates the record.
    assert check_or_record(str(tmp_path / "other"), spec, config, record=False) is False
    assert not os.path.exists(tmp_path / "other")


def test_prerank_train_prints_config_errors_and_exits_2(tmp_path, capsys, monkeypatch):
    from trainer.cli import main
    monkeypatch.delenv("TF_CONFIG", raising=False)
    path = write(tmp_path, SPEC.replace("item_tower: [32, 16]", "item_tower: [32, 8]"))
    model_dir = str(tmp_path / "model")
    assert main(["train", path, "--model-dir", model_dir, "--data", "unused*", "--set", "training.progress=nope",
                 "--set", "training.max_steps"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "config error: 2 problems in the config:",
        "  command line --set: training.max_steps: expected KEY=VALUE with a dotted KEY, e.g. training.max_steps=100",
        "  command line --set: training.progress: expected true/false, got 'nope'"]
    assert main(["train", path, "--model-dir", model_dir, "--data", "unused*"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"config error: {path}:{LINE['item_tower']}: model.student.item_tower: the towers' last sizes must match "
        "(the vectors are compared): user tower ends with 16, item tower with 8"]
    assert not os.path.exists(model_dir)  # nothing written for a bad config
    monkeypatch.setenv("TF_CONFIG", "{cluster: 1}")  # read once the spec and config are known to be good
    assert main(["train", write(tmp_path, SPEC), "--model-dir", model_dir, "--data", "unused*"]) == 2
    assert capsys.readouterr().err.startswith("config error: TF_CONFIG: not valid JSON: ")
