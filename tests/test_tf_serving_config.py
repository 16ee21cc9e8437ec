"""The TF Serving files in serving/tf_serving/ parse with the real protos and agree with each other."""
import json
import re
from pathlib import Path

import pytest

from serving.tf_serving.config import (
    BATCHING_PARAMETERS,
    CONFIG_DIR,
    MODELS_CONFIG,
    check_batching_parameters,
    check_model_server_config,
    load_batching_parameters,
    load_model_server_config,
)
from trainer.errors import ConfigError


def dockerfile_stages() -> tuple[str, dict[str, dict]]:
    """(FROM image of the first stage, {stage: {"copies": {dest: src}, "flags": {flag: value}}})."""
    text = re.sub(r"\\\n", " ", (CONFIG_DIR / "Dockerfile").read_text())
    args = dict(re.findall(r"^ARG (\w+)=(\S+)", text, re.M))
    stages: dict[str, dict] = {}
    first_image, current = None, None
    for line in text.splitlines():
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        if words[0] == "FROM":
            image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], words[1])
            first_image = first_image or image
            parent = stages.get(image, {"copies": {}, "flags": {}})
            current = stages[words[3]] = {"copies": dict(parent["copies"]), "flags": {}}
        elif words[0] == "COPY":
            *sources, dest = words[1:]
            for src in sources:
                current["copies"][dest.rstrip("/") + "/" + src if dest.endswith("/") else dest] = src
        elif words[0] == "ENTRYPOINT":
            argv = json.loads(line.split(None, 1)[1])
            assert argv[0] == "tensorflow_model_server"
            current["flags"] = dict(a.removeprefix("--").split("=", 1) for a in argv[1:])
    return first_image, stages


def test_models_config_serves_prerank_with_two_latest_versions():
    config = load_model_server_config(MODELS_CONFIG)
    check_model_server_config(config)
    (model,) = config.model_config_list.config
    assert model.name == "prerank"
    assert model.base_path == "/models/prerank"
    assert model.model_platform == "tensorflow"
    assert model.model_version_policy.WhichOneof("policy_choice") == "latest"
    assert model.model_version_policy.latest.num_versions == 2
    assert not model.version_labels


def test_batching_parameters_are_consistent_cpu_values():
    params = load_batching_parameters(BATCHING_PARAMETERS)
    check_batching_parameters(params)
    assert params.max_batch_size.value == 512
    assert 0 <= params.batch_timeout_micros.value <= 10_000  # the CPU range of the batching guide
    assert params.num_batch_threads.value >= 1
    assert params.max_enqueued_batches.value >= params.num_batch_threads.value
    assert list(params.allowed_batch_sizes) == []
    assert params.pad_variable_length_inputs is False


def test_dockerfile_flags_point_at_the_shipped_files():
    image, stages = dockerfile_stages()
    assert re.fullmatch(r"tensorflow/serving:2\.\d+\.\d+", image), image
    assert set(stages) == {"base", "batched", "online"}
    for name in ("batched", "online"):
        stage = stages[name]
        flags, copies = stage["flags"], stage["copies"]
        assert flags["port"] == "8500" and flags["rest_api_port"] == "8501"
        assert int(flags["model_config_file_poll_wait_seconds"]) > 0
        assert int(flags["file_system_poll_wait_seconds"]) > 0
        for flag in ("model_config_file", "batching_parameters_file"):
            if flag in flags:
                src = copies[flags[flag]]  # the flag names a file the image gets from the build context
                assert (CONFIG_DIR / src).is_file(), src
        assert copies[flags["model_config_file"]] == MODELS_CONFIG.name
    assert stages["batched"]["flags"]["enable_batching"] == "true"
    batched = stages["batched"]
    assert batched["copies"][batched["flags"]["batching_parameters_file"]] == BATCHING_PARAMETERS.name
    # both replay the warmup file (its prerank request has one candidate, so it batches)
    assert stages["online"]["flags"]["enable_model_warmup"] == "true"
    assert stages["batched"]["flags"]["enable_model_warmup"] == "true"
    # the deployment that serves `prerank` (1 user row, N item rows) must not batch
    assert "enable_batching" not in stages["online"]["flags"]
    assert "batching_parameters_file" not in stages["online"]["flags"]
    # the last stage is what a plain `docker build` produces
    assert list(stages)[-1] == "online"


def test_dockerfile_exposes_grpc_and_rest():
    text = (CONFIG_DIR / "Dockerfile").read_text()
    assert re.search(r"^EXPOSE 8500 8501$", text, re.M)
    assert "/models/prerank" in text and not re.search(r"^COPY .*models/prerank", text, re.M)


def test_typo_in_models_config_names_file_line_and_expected_fields(tmp_path: Path):
    broken = tmp_path / "models.config"
    typo = MODELS_CONFIG.read_text().replace('    base_path: "/models/prerank"', '    base_pth: "/models/prerank"')
    broken.write_text(typo)
    with pytest.raises(ConfigError) as info:
        load_model_server_config(broken)
    line = next(i for i, text in enumerate(broken.read_text().splitlines(), 1) if "base_pth" in text)
    message = str(info.value)
    assert f"{broken}:{line}:" in message
    assert "base_pth" in message and "base_path" in message and "model_version_policy" in message


def test_typo_in_batching_parameters_names_file_and_line(tmp_path: Path):
    broken = tmp_path / "batching.pbtxt"
    broken.write_text("max_batch_size { value: 32 }\nbatch_timout_micros { value: 1000 }\n")
    with pytest.raises(ConfigError, match=rf"{re.escape(str(broken))}:2:.*batch_timout_micros.*batch_timeout_micros"):
        load_batching_parameters(broken)


def test_unbalanced_brace_names_file_and_line(tmp_path: Path):
    broken = tmp_path / "models.config"
    broken.write_text('model_config_list {\n  config {\n    name: "prerank"\n')
    with pytest.raises(ConfigError, match=rf"{re.escape(str(broken))}:\d+:\d+: .*\}}"):
        load_model_server_config(broken)


def test_missing_file_is_a_config_error(tmp_path: Path):
    with pytest.raises(ConfigError, match="nope.config"):
        load_model_server_config(tmp_path / "nope.config")


@pytest.mark.parametrize(
    "body, problem",
    [
        ('config { base_path: "/m" model_platform: "tensorflow" }', "name is empty"),
        ('config { name: "prerank" model_platform: "tensorflow" }', "base_path"),
        ('config { name: "prerank" base_path: "models/prerank" model_platform: "tensorflow" }', "absolute path"),
        ('config { name: "prerank" base_path: "/m" model_platform: "onnx" }', "model_platform 'onnx'"),
        (
            'config { name: "a" base_path: "/m" model_platform: "tensorflow" }'
            ' config { name: "a" base_path: "/n" model_platform: "tensorflow" }',
            "listed twice",
        ),
        (
            'config { name: "prerank" base_path: "/m" model_platform: "tensorflow"'
            " model_version_policy { specific { versions: 1 versions: 2 } }"
            ' version_labels { key: "canary" value: 3 } }',
            "label 'canary' points at version 3",
        ),
        (
            'config { name: "prerank" base_path: "/m" model_platform: "tensorflow"'
            ' version_labels { key: "stable" value: 1 } }',
            "need model_version_policy",
        ),
    ],
)
def test_check_model_server_config_rejects(tmp_path: Path, body: str, problem: str):
    path = tmp_path / "models.config"
    path.write_text(f"model_config_list {{ {body} }}\n")
    with pytest.raises(ConfigError, match=re.escape(problem)):
        check_model_server_config(load_model_server_config(path), str(path))


def test_check_model_server_config_accepts_labels_on_kept_versions(tmp_path: Path):
    path = tmp_path / "models.config"
    path.write_text(
        'model_config_list { config { name: "prerank" base_path: "/m" model_platform: "tensorflow"'
        " model_version_policy { specific { versions: 1 versions: 2 } }"
        ' version_labels { key: "stable" value: 1 } version_labels { key: "canary" value: 2 } } }\n'
    )
    check_model_server_config(load_model_server_config(path))


@pytest.mark.parametrize(
    "text, problem",
    [
        ("max_batch_size { value: 32 }\nbatch_timeout_micros { value: 0 }\nnum_batch_threads { value: 2 }\n",
         "max_enqueued_batches is not set"),
        (
            "max_batch_size { value: 0 }\nbatch_timeout_micros { value: 0 }\n"
            "num_batch_threads { value: 2 }\nmax_enqueued_batches { value: 2 }\n",
            "max_batch_size is 0",
        ),
        (
            "max_batch_size { value: 32 }\nbatch_timeout_micros { value: 0 }\nnum_batch_threads { value: 2 }\n"
            "max_enqueued_batches { value: 2 }\nallowed_batch_sizes: 8\nallowed_batch_sizes: 16\n",
            "ending at max_batch_size (32)",
        ),
        (
            "max_batch_size { value: 32 }\nbatch_timeout_micros { value: 0 }\nnum_batch_threads { value: 2 }\n"
            "max_enqueued_batches { value: 2 }\n"
            "allowed_batch_sizes: 16\nallowed_batch_sizes: 8\nallowed_batch_sizes: 32\n",
            "ascending",
        ),
    ],
)
def test_check_batching_parameters_rejects(tmp_path: Path, text: str, problem: str):
    path = tmp_path / "batching.pbtxt"
    path.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(problem)):
        check_batching_parameters(load_batching_parameters(path), str(path))
