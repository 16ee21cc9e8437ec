"""The model and training configuration (no TensorFlow): knobs, loading with `--set`, plugins, checks.

`load_config(spec, path=None, overrides=())` reads the `model:`, `training:`
and `plugins:` sections; `Config` and its sections (`trainer.config.knobs`)
declare every knob once with its default and doc; `validate_config` checks a
Config built in Python like one read from YAML.
"""
from trainer.config.derived import fused_weights, student_task
from trainer.config.knobs import (AdagradConfig, CascadeConfig, Component, Config, DistillConfig, DualAugmentedConfig,
                                  FtrlConfig, ModelConfig, ScheduleConfig, SenetConfig, StudentConfig, TeacherConfig,
                                  TrainingConfig)
from trainer.config.loader import config_from_dict, load_config, validate_config

__all__ = ["AdagradConfig", "CascadeConfig", "Component", "Config", "DistillConfig", "DualAugmentedConfig",
           "FtrlConfig", "ModelConfig", "ScheduleConfig", "SenetConfig", "StudentConfig", "TeacherConfig",
           "TrainingConfig", "config_from_dict", "fused_weights", "load_config", "student_task", "validate_config"]
