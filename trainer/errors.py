"""Errors that say where the problem is and what was expected."""
from dataclasses import dataclass


@dataclass(frozen=True)
class SpecIssue:
    """One problem found in a spec file."""

    file: str
    line: int | None
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.field}: {self.message}"


class SpecError(ValueError):
    """A feature spec failed to load or validate; carries every issue found."""

    def __init__(self, issues: list[SpecIssue]):
        self.issues = list(issues)
        super().__init__("\n".join(str(i) for i in self.issues))


class DataError(ValueError):
    """Input data does not match the spec (missing column, corrupt record, NaN...)."""
