"""Errors that say where the problem is and what was expected.

Every error prerank raises for bad input is a `PrerankError`; the command line
prints it with its `label` ("config error: ...") and exits 2:

- `SpecError`: a feature spec failed to load or validate (every issue, each with file, line and field);
- `ConfigError`: the `model:` / `training:` / `plugins:` configuration, a `--set`, `TF_CONFIG`, a command
  line argument or a refused change of a model directory's configuration;
- `DataError`: input data does not match the spec (missing column, corrupt record, NaN, ...);
- `ModelDirError`: a model directory is not what a command needs (not trained, no checkpoint, ...);
- `ExportError`: an export (SavedModel, ONNX, item vectors) cannot be written, read or verified;
- `ClusterError`: a task of a parameter-server cluster the job cannot do without stopped answering.
"""
from dataclasses import dataclass


@dataclass(frozen=True)
class SpecIssue:
    """One problem found in a spec or config file (or on the command line)."""

    file: str
    line: int | None
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"


class PrerankError(Exception):
    """Base of the errors prerank raises for bad input; `label` names the kind for the command line."""

    label = "error"


class IssuesError(PrerankError):
    """An error that lists every problem found at once (`issues`)."""

    what = "input"

    def __init__(self, issues: list[SpecIssue]):
        self.issues = list(issues)
        super().__init__("\n".join(str(i) for i in self.issues))


class SpecError(IssuesError):
    """A feature spec failed to load or validate; carries every issue found."""

    label, what = "spec error", "the spec"


class ConfigError(IssuesError):
    """The configuration (model / training / plugins, `--set`, TF_CONFIG, an argument) is invalid."""

    label, what = "config error", "the config"

    @classmethod
    def single(cls, where: str, field: str, message: str) -> "ConfigError":
        """One issue that has no file line (an environment variable, an argument); `field` may be ""."""
        return cls([SpecIssue(where, None, field, message)])


class DataError(PrerankError):
    """Input data does not match the spec (missing column, corrupt record, NaN...)."""

    label = "data error"


class ModelDirError(PrerankError):
    """A model directory is not what the command needs (not trained yet, no checkpoint, another run's)."""

    label = "model directory error"


class ExportError(PrerankError):
    """An export (SavedModel, ONNX, item vectors) cannot be written, read or verified."""

    label = "export error"


class ClusterError(PrerankError):
    """A task of a parameter-server cluster the job cannot do without (a parameter server) stopped answering."""

    label = "cluster error"
