"""A user's own components, end to end: the README's custom tower and custom distillation loss, registered in
a plugin module and chosen by name in the YAML with their own params, known to validate, train, export and
verify-export (which builds the checkpoint's model as evaluate does), each in a fresh process; then the exported
`prerank` signature scores candidates."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from serving.savedmodel.signatures import input_columns, serving_inputs
from trainer.config import Component, StudentConfig, load_config
from trainer.data.input_config import InputConfig
from trainer.data.pipeline import make_pipeline
from trainer.errors import ConfigError
from trainer.models.joint import build_similarity
from trainer.registry import DISTILLATION_LOSSES, REGRESSION_LOSSES, SIMILARITIES, TOWERS, RegistryError
from trainer.spec import load_spec

pytestmark = pytest.mark.slow  # trains and exports in fresh processes

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPEC = os.path.join(REPO, "feature_specs", "kuairand.yaml")
PRERANK = os.path.join(os.path.dirname(sys.executable), "prerank")

SMALL = ["training.batch_size=256", "training.max_steps=4", "training.log_every=2", "training.progress=false",
         "model.student.user_tower=[32,16]", "model.student.item_tower=[32,16]", "model.teacher.expert_layers=[32]",
         "model.teacher.task_tower=[16]"]


def readme_blocks() -> tuple[str, str]:
    """The plugin module and the config of the README's "Extension points" section."""
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as fh:
        section = fh.read().split("## Extension points", 1)[1].split("\n## ", 1)[0]
    plugin = section.split("```python\n", 1)[1].split("```", 1)[0]
    config = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    assert plugin.startswith("# team_components.py") and "plugins: [./team_components.py]" in config
    return plugin, config


@pytest.fixture(autouse=True)
def registries_as_they_were():
    """What a test registers (its own components, a plugin it imports) is gone after it: the other modules in
    this process see the built-in names only."""
    registries = (TOWERS, SIMILARITIES, DISTILLATION_LOSSES, REGRESSION_LOSSES)
    saved = [dict(r._components) for r in registries]
    yield
    for registry, components in zip(registries, saved):
        registry._components.clear()
        registry._components.update(components)


def prerank(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PRERANK, *args], capture_output=True, text=True, cwd=REPO, timeout=600)


@pytest.fixture(scope="module")
def plugin_config(tmp_path_factory) -> str:
    """The README's example, as a user would save it: team_components.py and config.yaml side by side."""
    plugin, config = readme_blocks()
    folder = tmp_path_factory.mktemp("team")
    (folder / "team_components.py").write_text(plugin)
    (folder / "config.yaml").write_text(config)
    return str(folder / "config.yaml")


def test_every_command_knows_the_plugins_components_in_a_fresh_process(plugin_config, kuairand_slice, tmp_path):
    data = os.path.join(kuairand_slice, "date=*", "*.tfrecord.gz")
    model_dir, base = str(tmp_path / "model"), str(tmp_path / "export")
    checked = prerank("validate", SPEC, "--config", plugin_config)
    assert checked.returncode == 0, checked.stderr
    assert f"plugins: {os.path.join(os.path.dirname(plugin_config), 'team_components.py')}" in checked.stdout
    trained = prerank("train", SPEC, "--config", plugin_config, "--model-dir", model_dir, "--data", data,
                      "--no-validation", *[a for o in SMALL for a in ("--set", o)])
    assert trained.returncode == 0, trained.stderr[-3000:]
    with open(os.path.join(model_dir, "run.json")) as fh:
        recorded = json.load(fh)["config"]
    assert recorded["model"]["student"]["towers"] == ["mlp", {"name": "gated", "params": {"hidden": 12}}]
    assert recorded["model"]["distill"]["loss"] == {"name": "huber", "params": {"delta": 0.5}}
    keys = [name for name, _ in tf.train.list_variables(os.path.join(model_dir, "checkpoints", "ckpt-4"))]
    gate = [k for k in keys if "user_tower/towers/1/gate/kernel" in k]
    assert gate and tf.train.load_variable(os.path.join(model_dir, "checkpoints", "ckpt-4"), gate[0]).shape == (12, 16)
    with open(os.path.join(model_dir, "history.jsonl")) as fh:
        distill = [json.loads(line).get("loss/distill") for line in fh]
    assert any(d is not None and np.isfinite(d) for d in distill)

    # Later commands read the recorded config (its absolute plugin path): no --config, nothing else to pass.
    # (The export skips pruning and the teacher: neither is what is checked here (the plugin's components are the
    # student's tower and the distillation loss), and they are the export's and verify-export's slow parts.)
    for command in (["export", SPEC, "--model-dir", model_dir, "--export-base", base, "--data", data, "--no-prune",
                     "--student-only"],
                    ["verify-export", base, "--data", data, "--batches", "1"]):
        done = prerank(*command)
        assert done.returncode == 0, (command[0], done.stderr[-3000:])
    assert "verified" in done.stdout

    spec = load_spec_for(plugin_config)
    loaded = tf.saved_model.load(os.path.join(base, "1"))
    batch = next(iter(make_pipeline(spec, data, InputConfig(batch_size=32, shuffle_buffer=0))))["features"]
    user = serving_inputs(batch, input_columns(spec, "user"), slice(0, 1))
    items = serving_inputs(batch, input_columns(spec, "item"), slice(0, 32))
    scores = loaded.signatures["prerank"](**{k: tf.constant(v) for k, v in {**user, **items}.items()})["score"]
    assert scores.shape == (32,) and np.all(np.isfinite(scores)) and np.all((scores > 0) & (scores < 1))
    assert float(np.std(scores)) > 0  # the candidates are told apart


def load_spec_for(config_path: str):
    spec = load_spec(SPEC)
    load_config(spec, config_path)  # imports the plugin in this process too (the test reads the export)
    return spec


def test_a_plugins_params_are_checked_against_its_signature(plugin_config, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(open(plugin_config).read().replace("./team_components.py", os.path.join(
        os.path.dirname(plugin_config), "team_components.py")).replace("{hidden: 12}", "{width: 12}"))
    checked = prerank("validate", SPEC, "--config", str(bad))
    assert checked.returncode == 2
    line = next(n for n, text in enumerate(bad.read_text().splitlines(), 1) if "gated" in text)
    assert f"config error: {bad}:{line}: model.student.towers[1].params.width: tower 'gated' takes no argument " \
           "'width'; its params: hidden" in checked.stderr


def test_a_missing_plugin_or_an_unregistered_name_is_a_located_config_error(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("plugins: [no_such_team_module]\nmodel:\n  student: {towers: [gated2]}\n")
    with pytest.raises(ConfigError) as info:
        load_config(load_spec(SPEC), str(config))
    lines = [str(i) for i in info.value.issues]
    assert lines[0] == f"{config}:1: plugins[0]: cannot import plugin 'no_such_team_module': ModuleNotFoundError: " \
                       "No module named 'no_such_team_module'"
    assert lines[1].startswith(f"{config}:3: model.student.towers[0]: expected one of mlp, dcn, fm")


def test_a_similarity_that_breaks_the_protocol_is_refused_naming_the_knob():
    @SIMILARITIES.register("team_not_a_similarity")
    class NotASimilarity(tf.keras.layers.Layer):  # no user_vector / item_vector / bias: serving could not use it
        def __init__(self, dim, **kwargs):
            super().__init__(**kwargs)

    with pytest.raises(ConfigError, match=r"model.student.similarity: 'team_not_a_similarity' built a NotASimilarity; "
                                          r"a similarity must subclass trainer.layers.similarity.Similarity"):
        build_similarity(StudentConfig(user_tower=[8], item_tower=[8],
                                       similarity=Component("team_not_a_similarity")))


def test_a_builtin_name_cannot_be_taken_and_a_name_is_registered_once():
    with pytest.raises(RegistryError, match="'mlp' is the name of a built-in tower"):
        TOWERS.register("mlp", type("Other", (), {"__module__": "team"}))
    first, second = type("One", (), {"__module__": "team"}), type("Two", (), {"__module__": "team"})
    TOWERS.register("team_tower_once", first)
    TOWERS.register("team_tower_once", first)  # a plugin imported twice
    with pytest.raises(RegistryError, match="already registered"):
        TOWERS.register("team_tower_once", second)
    assert Component("team_tower_once") == Component("team_tower_once", {})
