"""KuaiRand-Pure preparation: the four bundled parquet tables through the generic converter.

What is KuaiRand-specific, and only here:

- the tables and keys: `interactions.parquet` (the impressions, partitioned
  by its `date`), `user_features.parquet` and `user_sequences.parquet` joined
  on `user_id`, `item_features.parquet` joined on `video_id`;
- the item table mixes static properties (`ITEM_STATIC`, joined under their
  own names) with offline statistics over the whole KuaiRand period (joined
  again with the prefix `stat_`: offline-only); `ITEM_SKIPPED` are already in
  the interactions (or redundant);
- `INTEGER_CODES` are integer codes stored as floats (`int()`: a fraction is
  an error); `tag` holds comma-separated tag ids (`split(tag, ',')`);
- the user's watch / like / long-watch sequences are the bundled pre-period
  ones (`user_sequences.parquet`, 2022-04-08..24, strictly before every
  interaction); users without history get empty sequences and a
  `history_len` of 0, not missing ones.

Every column of the joined tables is kept (the spec reads a subset; the
statistics it leaves out stay available for experiments). Rows keep the
interactions' order within a date; the output is the same, value for value,
as before the generic converter (`tests/test_kuairand.py` compares it with
what the earlier converter wrote), and the same bytes from one run to the
next.
"""
import os

import pyarrow.parquet as pq

from trainer.data.convert.convert import ConvertResult, convert
from trainer.data.convert.engine import EngineSettings
from trainer.data.convert.expressions import Derive
from trainer.data.convert.tables import SideTable, Table
from trainer.errors import DataError
from trainer.spec.types import Spec

STAT_PREFIX = "stat_"
TABLES = ("interactions", "user_features", "item_features", "user_sequences")
# Item columns that are static properties (known when the video is uploaded).
ITEM_STATIC = ("video_type", "upload_type", "visible_status", "server_width", "server_height",
               "music_id", "music_type")
# Item columns already joined into interactions by the preprocessing, or redundant.
ITEM_SKIPPED = ("video_id", "author_id", "tag", "upload_dt", "upload_date", "video_duration", "upload_dt_parsed")
# Float-stored columns that are really integer codes (checked to be integral when converted).
INTEGER_CODES = ("onehot_feat4", "onehot_feat12", "onehot_feat13", "onehot_feat14", "onehot_feat15",
                 "onehot_feat16", "onehot_feat17", "visible_status", "server_width", "server_height", "music_type")
SEQUENCES = ("watch_seq", "like_seq", "long_watch_seq")
SEQUENCE_SKIPPED = ("user_id", "last_time_ms")


def table_path(src_dir: str, name: str) -> str:
    """The path of the bundled KuaiRand table `name`; a DataError if it is missing."""
    path = os.path.join(src_dir, f"{name}.parquet")
    if not os.path.isfile(path):
        raise DataError(f"KuaiRand table not found: {path}")
    return path


def kuairand_tables(src_dir: str) -> tuple[Table, list[SideTable], list[Derive], list[str]]:
    """(impressions, side tables, derives, every column to keep, in order) of the KuaiRand conversion."""
    paths = {name: table_path(src_dir, name) for name in TABLES}
    names = {name: pq.read_schema(path).names for name, path in paths.items()}
    stats = [c for c in names["item_features"] if c not in ITEM_STATIC and c not in ITEM_SKIPPED]
    sequences = [c for c in names["user_sequences"] if c not in SEQUENCE_SKIPPED]
    joins = [SideTable((paths["user_features"],), "user_id"),
             SideTable((paths["item_features"],), "video_id", "", ITEM_STATIC),
             SideTable((paths["item_features"],), "video_id", STAT_PREFIX, tuple(stats)),
             SideTable((paths["user_sequences"],), "user_id", "", tuple(sequences))]
    derives = [Derive("tag", "split(tag, ',')")]
    derives += [Derive(c, f"int({c})") for c in INTEGER_CODES]
    derives += [Derive(c, f"coalesce({c}, [])") for c in SEQUENCES]
    derives += [Derive("history_len", "coalesce(history_len, 0)")]
    keep = (names["interactions"] + [c for c in names["user_features"] if c != "user_id"] + list(ITEM_STATIC)
            + [STAT_PREFIX + c for c in stats] + sequences)
    return Table((paths["interactions"],)), joins, derives, keep


def convert_kuairand(src_dir: str, out_dir: str, fmt: str = "tfrecord", shards_per_date: int = 2,
                     compression: str = "GZIP", max_rows: int | None = None, last: bool = False,
                     spec: Spec | None = None, engine: EngineSettings = EngineSettings(),
                     log=lambda _: None) -> ConvertResult:
    """Convert the KuaiRand tables under `src_dir` into `out_dir/date=YYYYMMDD/part-XXXXX.*` (`shards_per_date`
    files a date), checked against `spec` if given; with `max_rows`, only the first (or with `last`, the last)
    that many impressions (the log is in date order). `out_dir` must not exist, or be empty."""
    table, joins, derives, keep = kuairand_tables(src_dir)
    return convert(spec, table, out_dir, partition_by="date", joins=joins, derives=derives, keep=keep, fmt=fmt,
                   compression=compression, files_per_partition=shards_per_date, max_rows=max_rows,
                   from_end=last, engine=engine, log=log)
