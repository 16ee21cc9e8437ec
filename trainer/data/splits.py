"""Which files a command reads: the files given on its command line, or a split named in the spec's `data:`."""
from trainer.errors import ConfigError
from trainer.spec.types import Spec


def resolve_data(given: str | list[str] | None, spec: Spec, *splits: str, purpose: str,
                 flag: str = "--data") -> str | list[str]:
    """`given` if set, else the first of the spec's `data.<split>` globs that is set.

    Args:
      given: the files (globs) the caller was given, e.g. a command's --data.
      spec: the spec whose `data:` section names the splits.
      splits: the splits to fall back on, in order: "train", "validation" or "eval".
      purpose: what the files are for, for the error ("training data", "rows for the warmup requests").
      flag: the option that gives them, for the error.
    Raises ConfigError naming the spec, the option and the first split when nothing is set.
    """
    if given:
        return given
    for split in splits:
        found = getattr(spec.data, split)
        if found:
            return found
    options = " or ".join(f"data.{s}" for s in splits)
    raise ConfigError.single(spec.path, "data", f"no {purpose}: give {flag} or set {options} in the spec")
