"""The knobs of the input pipeline."""
from dataclasses import dataclass


@dataclass(frozen=True)
class InputConfig:
    """Knobs of the pipeline."""

    batch_size: int = 1024
    shuffle_buffer: int = 10_000  # records; 0 disables shuffling
    epochs: int | None = 1  # passes over the data; None repeats forever
    deterministic: bool = False  # fixed order and seeded shuffles (tests, reproducible runs)
    seed: int | None = 0  # seed of the shuffles (None: the graph's seed, or a random one without it)
    num_workers: int = 1  # sharding across workers: by file (Parquet: by row group)
    worker_index: int = 0
    cycle_length: int = 4  # files (Parquet: row groups) read in parallel
    drop_remainder: bool = False  # drop the last partial batch
    pad_sequences: bool = False  # sequences as dense [B, max_length] padded with PAD_ID / PAD_STRING
    skip_corrupt: bool = False  # skip (and count) corrupt records instead of failing
    check_values: bool = True  # fail on NaN/inf numbers, ids breaking the id rule (records.py), non-0/1 binary labels
