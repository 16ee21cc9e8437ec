"""Which files a command reads: the files given on its command line, or a split named in the spec's `data:`;
and whether a validation split is held out of the training files."""
import os
from collections.abc import Sequence

from trainer.errors import ConfigError
from trainer.spec.types import Spec


def resolve_data(given: str | Sequence[str] | None, spec: Spec, *splits: str, purpose: str,
                 flag: str = "--data") -> list[str]:
    """The globs `given` if set, else those of the first of the spec's `data.<split>` that is set.

    Args:
      given: the files (globs) the caller was given, e.g. a command's --data.
      spec: the spec whose `data:` section names the splits.
      splits: the splits to fall back on, in order: "train", "validation" or "eval".
      purpose: what the files are for, for the error ("training data", "rows for the warmup requests").
      flag: the option that gives them, for the error.
    Raises ConfigError naming the spec, the option and the first split when nothing is set.
    """
    if given:
        return [given] if isinstance(given, str) else list(given)
    for split in splits:
        found = getattr(spec.data, split)
        if found:
            return list(found)
    options = " or ".join(f"data.{s}" for s in splits)
    raise ConfigError.single(spec.path, "data", f"no {purpose}: give {flag} or set {options} in the spec")


def every_split(spec: Spec, *splits: str) -> list[str]:
    """The globs of all of the spec's `data.<split>` that are set, in order (e.g. "train", "eval")."""
    return [glob for split in splits for glob in getattr(spec.data, split) or ()]


IN_SAMPLE_KEY = "eval/in_sample"  # logged beside the evaluation metrics of a validation that shares training files


def shared_files(training: list[str], validation: list[str]) -> list[str]:
    """The validation files that are also training files (compared by real path): evaluating them is in-sample."""
    trained = {os.path.realpath(f) for f in training}
    return [f for f in validation if os.path.realpath(f) in trained]


def in_sample_note(shared: list[str], validation: list[str]) -> str:
    """The warning a job prints when its validation files are training files."""
    return (f"{len(shared)} of the {len(validation)} validation file(s) are also training files (first: {shared[0]}):"
            " the validation figures are IN-SAMPLE, not a validation. Hold the validation files out of --data, or "
            "train with --no-validation")
