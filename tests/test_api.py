"""The Python API: the README's "Use from Python" example runs as written (on the test slice), and a Config
built in Python is checked like one read from YAML."""
import dataclasses
import os
import re

import pytest

import trainer
from trainer.config import Config, StudentConfig, TrainingConfig, validate_config
from trainer.errors import ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PATHS = ("TRAIN", "VALIDATION", "EVAL", "WORK")


def readme_example() -> str:
    """The first python block of the README's "Use from Python" section."""
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as fh:
        readme = fh.read()
    section = readme.split("## Use from Python", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


@pytest.mark.slow
def test_the_readme_example_trains_evaluates_and_exports(kuairand_slice, tmp_path, capsys, monkeypatch):
    data = os.path.join(kuairand_slice, "date=*", "*.tfrecord.gz")
    code = readme_example()
    for name in PATHS:  # the example's data and work paths, pointed at this test's
        value = str(tmp_path / "work") if name == "WORK" else data
        code, n = re.subn(rf"^{name} = .*$", f"{name} = {value!r}", code, flags=re.M)
        assert n == 1, f"the README example no longer sets {name}"
    monkeypatch.chdir(REPO)  # the example's spec path is relative to the repository
    exec(compile(code, "README.md (Use from Python)", "exec"), {})
    out = capsys.readouterr().out
    assert re.search(r"step 12: validation student AUC 0\.\d{4}", out)  # the slice's one epoch ends first
    assert re.search(r"held out: student AUC 0\.\d{4}, agreement with the teacher 0\.\d{4}", out)
    assert os.path.isfile(tmp_path / "work" / "export" / "1" / "saved_model.pb")
    assert os.path.isfile(tmp_path / "work" / "model" / "evaluation.json")


def test_a_config_built_in_python_gets_the_checks_of_a_yaml_one(spec, tmp_path):
    bad = Config(
        model=trainer.ModelConfig(student=StudentConfig(user_tower=[32, 16], item_tower=[32, 8])),
        training=TrainingConfig(batch_size=0))
    with pytest.raises(ConfigError) as info:
        validate_config(bad, spec)
    assert [str(i) for i in info.value.issues] == [
        "Config (built in Python): training.batch_size: expected an integer in [1, 16777216], got 0"]
    with pytest.raises(ConfigError) as info:  # checks across knobs run once every knob is within its bounds
        validate_config(dataclasses.replace(bad, training=TrainingConfig()), spec)
    assert [str(i) for i in info.value.issues] == [
        "Config (built in Python): model.student.item_tower: the towers' last sizes must match (the vectors are "
        "compared): user tower ends with 16, item tower with 8"]
    with pytest.raises(ConfigError, match="expected a trainer.Config, got dict"):
        validate_config({"training": {"batch_size": 8}}, spec)
    typo = Config(model=trainer.ModelConfig(student=StudentConfig(similarity=trainer.Component("dott"))))
    with pytest.raises(ConfigError, match=r"model.student.similarity: expected one of dot, cosine, multi_head"):
        trainer.train(spec, typo, str(tmp_path / "model"), data="unused")
    assert not os.path.exists(tmp_path / "model")  # refused before anything is written
