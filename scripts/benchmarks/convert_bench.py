"""Conversion rate and memory, for `scripts/bench_convert.py`.

Each conversion runs in a process of its own, so that its peak resident memory (RSS, from `wait4`) is its own:
the whole process, prerank's writers and the embedded engine together. The engine's own peak (DuckDB's buffer
memory, and what it had spilled to disk) is sampled inside the conversion (`ConvertResult.engine_peak_bytes`).
The tf.Example encoder is also timed against the per-row writer it replaces, on the same rows.
"""
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from trainer.data.example_encoding import encode_batch
from trainer.data.writers import Column, serialize_rows

SAMPLE_DERIVES = ("date=date(time_ms)", "hour=hour(time_ms)", "long_view=play_time_ms >= 30000")
SAMPLE_HISTORIES = ("watch_seq=video_id:20", "click_seq=video_id:is_click:10")
SAMPLE_DERIVED = ("watch_seq", "click_seq", "hour", "date", "long_view")


@dataclass(frozen=True)
class Variant:
    """One conversion: its name, output format and engine memory limit."""

    name: str
    fmt: str
    memory_limit: str
    histories: bool = True


@dataclass(frozen=True)
class Measured:
    variant: Variant
    rows: int
    seconds: float  # the conversion (`ConvertResult.seconds`), not the process start
    process_peak_rss: int  # bytes
    engine_peak: int
    engine_spilled: int
    files: int
    output_bytes: int

    @property
    def rate(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0


def convert_command(spec: str, tables: str, out: str, variant: Variant, threads: int | None) -> list[str]:
    """`prerank convert` of the sample-shaped raw tables in `tables`."""
    args = ["convert", spec, "--table", os.path.join(tables, "impressions.parquet"),
            "--join", f"{tables}/users.parquet:user_id", f"{tables}/items.parquet:video_id",
            "--derive", *SAMPLE_DERIVES, "--partition-by", "date", "--format", variant.fmt, "--out", out,
            "--memory-limit", variant.memory_limit]
    if variant.histories:
        args += ["--history", *SAMPLE_HISTORIES, "--user", "user_id", "--time", "time_ms"]
    else:  # the spec's history columns are then taken from nowhere: keep them out by deriving empty ones
        args += ["--derive", "watch_seq=[]", "click_seq=[]"]
    if threads:
        args += ["--threads", str(threads)]
    return args


def run_child(args: list[str]) -> dict:
    """In the child process: run the conversion (none for `args == []`: the imports alone), return its result."""
    from trainer.data.convert.convert import convert  # noqa: F401  (import cost outside the timing)
    from trainer.cli import build_parser
    if not args:
        return {"rows": 0, "seconds": 0.0, "engine_peak": 0, "engine_spilled": 0, "files": 0, "bytes": 0}
    parsed = build_parser().parse_args(args)
    from trainer.data.convert.engine import EngineSettings
    from trainer.data.convert.expressions import Derive
    from trainer.data.convert.history import History
    from trainer.data.convert.tables import SideTable, Table
    from trainer.spec import load_spec
    result = convert(load_spec(parsed.spec), Table(tuple(parsed.table)), parsed.out,
                     partition_by=parsed.partition_by, joins=[SideTable.parse(j) for j in parsed.join],
                     derives=[Derive.parse(d) for d in parsed.derive],
                     histories=[History.parse(h) for h in parsed.history or ()], user=parsed.user,
                     time_column=parsed.time, fmt=parsed.format,
                     engine=EngineSettings(parsed.memory_limit, parsed.temp_dir, parsed.threads))
    size = sum(os.path.getsize(f) for f in result.files)
    return {"rows": result.rows, "seconds": result.seconds, "engine_peak": result.engine_peak_bytes,
            "engine_spilled": result.engine_spilled_bytes, "files": len(result.files), "bytes": size}


def measure(script: str, args: list[str], variant: Variant) -> Measured | str:
    """Run the conversion in a child process; its result and its peak RSS, or the child's last error line."""
    with tempfile.TemporaryFile("w+") as out_file, tempfile.TemporaryFile("w+") as err_file:
        child = subprocess.Popen([sys.executable, script, "--child", json.dumps(args)], stdout=out_file,
                                 stderr=err_file, text=True)
        _, status, usage = os.wait4(child.pid, 0)  # this child's own peak RSS
        child.returncode = os.waitstatus_to_exitcode(status)
        out_file.seek(0)
        err_file.seek(0)
        out, err = out_file.read(), err_file.read()
    if status != 0:
        return [line for line in err.splitlines() if line.strip()][-1]
    result = json.loads(out.strip().splitlines()[-1])
    return Measured(variant, result["rows"], result["seconds"], usage.ru_maxrss * 1024, result["engine_peak"],
                    result["engine_spilled"], result["files"], result["bytes"])


def encoder_rates(rows: int = 50_000, seed: int = 0, repeats: int = 3) -> tuple[float, float]:
    """(rows/s of the vectorised encoder, rows/s of the per-row writer) on one batch shaped like the sample's
    converted rows (ids, numbers, strings, two sequences of up to 20 ids); best of `repeats`."""
    rng = np.random.default_rng(seed)

    def seq(max_length: int) -> pa.Array:
        lengths = rng.integers(0, max_length + 1, rows)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
        return pa.ListArray.from_arrays(pa.array(offsets), pa.array(rng.integers(0, 100_000, offsets[-1])))

    columns = {f"id{k}": pa.array(rng.integers(0, 200_000, rows)) for k in range(6)}
    columns |= {f"x{k}": pa.array(rng.random(rows)) for k in range(3)}
    columns |= {"s": pa.array([f"category_{k % 12}" for k in range(rows)]), "seq20": seq(20), "seq10": seq(10)}
    batch = pa.record_batch(columns)
    plain = [Column(name, _column_type(array.type), array.to_pylist()) for name, array in columns.items()]
    best_new = best_old = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        encode_batch(batch).rows()
        best_new = min(best_new, time.perf_counter() - start)
        start = time.perf_counter()
        serialize_rows(plain, range(rows))
        best_old = min(best_old, time.perf_counter() - start)
    return rows / best_new, rows / best_old


def _column_type(kind: pa.DataType) -> str:
    if pa.types.is_list(kind):
        return "int_list"
    return "int" if pa.types.is_integer(kind) else "float" if pa.types.is_floating(kind) else "str"


def self_peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
