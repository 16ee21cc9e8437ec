"""KuaiRand-Pure converter: joins the four parquet tables into tf.Example rows by date.

Each interaction becomes one row carrying the interaction's columns, its
user's profile, its video's static features, the video's offline statistics
(prefixed `stat_`: averages over the whole KuaiRand period, so offline-only)
and the user's watch / like / long-watch sequences (empty lists for users
without history: those rows are kept). Missing values stay missing (absent
features / empty CSV cells); the spec says which columns take a default.
Rows are sharded by `date` into `OUT/date=YYYYMMDD/part-XXXXX.*`.
"""
import os
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (registers pa.compute)
import pyarrow.parquet as pq

from trainer.errors import DataError
from trainer.data.writers import Column, write_csv, write_shards, write_tfrecord

STAT_PREFIX = "stat_"
# Item columns that are static properties (known when the video is uploaded).
ITEM_STATIC = ("video_type", "upload_type", "visible_status", "server_width", "server_height",
               "music_id", "music_type")
# Item columns already joined into interactions by the preprocessing, or redundant.
ITEM_SKIPPED = ("video_id", "author_id", "tag", "upload_dt", "upload_date", "video_duration", "upload_dt_parsed")
# Float-stored columns that are really integer codes (checked to be integral when converted).
INTEGER_CODES = ("onehot_feat4", "onehot_feat12", "onehot_feat13", "onehot_feat14", "onehot_feat15",
                 "onehot_feat16", "onehot_feat17", "visible_status", "server_width", "server_height", "music_type")
SEQUENCES = ("watch_seq", "like_seq", "long_watch_seq")
LIST_COLUMNS = {"tag": ","}  # string columns holding delimited lists


@dataclass(frozen=True)
class ConvertResult:
    rows_per_date: dict[int, int]
    files: list[str]
    columns: list[str]


def _column(name: str, arr: pa.ChunkedArray, source: str) -> Column:
    values = arr.to_pylist()
    t = arr.type
    if name in LIST_COLUMNS:
        sep = LIST_COLUMNS[name]
        return Column(name, "str_list", [None if v is None else v.split(sep) for v in values])
    if pa.types.is_list(t):
        return Column(name, "int_list", values)
    if pa.types.is_integer(t):
        return Column(name, "int", values)
    if pa.types.is_floating(t):
        if name in INTEGER_CODES:
            bad = [v for v in values if v is not None and not float(v).is_integer()]
            if bad:
                raise DataError(f"{source}: column '{name}' should hold integer codes, found {bad[0]!r}")
            return Column(name, "int", [None if v is None else int(v) for v in values])
        return Column(name, "float", [None if v is None or np.isnan(v) else float(v) for v in values])
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return Column(name, "str", values)
    raise DataError(f"{source}: column '{name}' has unsupported type {t}")


def _read(src_dir: str, name: str, required: tuple[str, ...]) -> pa.Table:
    path = os.path.join(src_dir, f"{name}.parquet")
    if not os.path.isfile(path):
        raise DataError(f"KuaiRand table not found: {path}")
    table = pq.read_table(path)
    missing = [c for c in required if c not in table.column_names]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}")
    return table


def _lookup(keys: pa.ChunkedArray, table: pa.Table, key: str) -> pa.Array:
    """Row index in `table` for each key (-1 where absent), vectorised."""
    ids = table.column(key).to_numpy()
    order = np.argsort(ids, kind="stable")
    wanted = keys.to_numpy()
    pos = np.searchsorted(ids[order], wanted)
    pos = np.clip(pos, 0, len(ids) - 1)
    found = ids[order][pos] == wanted
    return np.where(found, order[pos], -1)


def _take(table: pa.Table, rows: np.ndarray) -> pa.Table:
    """Rows of `table` by index, with nulls where the index is -1."""
    mask = pa.array(rows < 0)
    idx = pa.array(np.where(rows < 0, 0, rows)).cast(pa.int64())
    taken = table.take(idx)
    cols = [pa.compute.if_else(mask, pa.scalar(None, c.type), c) for c in taken.columns]
    return pa.table(cols, names=taken.column_names)


def join_kuairand(src_dir: str) -> tuple[pa.Table, dict[str, str]]:
    """The joined table (one row per interaction) and each column's source file."""
    inter = _read(src_dir, "interactions", ("user_id", "video_id", "date"))
    users = _read(src_dir, "user_features", ("user_id",))
    items = _read(src_dir, "item_features", ("video_id",))
    seqs = _read(src_dir, "user_sequences", ("user_id",) + SEQUENCES)
    sources = {c: "interactions.parquet" for c in inter.column_names}
    out = {c: inter.column(c) for c in inter.column_names}

    user_rows = _take(users.drop_columns(["user_id"]), _lookup(inter.column("user_id"), users, "user_id"))
    for c in user_rows.column_names:
        out[c], sources[c] = user_rows.column(c), "user_features.parquet"
    item_cols = [c for c in items.column_names if c not in ITEM_SKIPPED]
    item_rows = _take(items.select(item_cols), _lookup(inter.column("video_id"), items, "video_id"))
    for c in item_cols:
        name = c if c in ITEM_STATIC else STAT_PREFIX + c
        if name in out:
            raise DataError(f"item_features.parquet: column '{c}' collides with '{name}' from {sources[name]}")
        out[name], sources[name] = item_rows.column(c), "item_features.parquet"
    seq_cols = [c for c in seqs.column_names if c != "user_id" and c != "last_time_ms"]
    seq_rows = _take(seqs.select(seq_cols), _lookup(inter.column("user_id"), seqs, "user_id"))
    for c in seq_cols:
        col = seq_rows.column(c)
        if c in SEQUENCES:  # users without history get empty sequences, not missing ones
            col = pa.chunked_array([pa.compute.if_else(pa.compute.is_null(chunk), pa.scalar([], chunk.type), chunk)
                                    for chunk in col.chunks], col.type)
        elif c == "history_len":
            col = pa.compute.fill_null(col, 0)
        out[c], sources[c] = col, "user_sequences.parquet"
    return pa.table(out), sources


def convert_kuairand(src_dir: str, out_dir: str, fmt: str = "tfrecord", shards_per_date: int = 2,
                     compression: str = "GZIP", max_rows: int | None = None, last: bool = False) -> ConvertResult:
    """Convert KuaiRand parquet files under `src_dir` to shards under `out_dir/date=*/`; with `max_rows`, only
    the first (or with `last`, the last) that many impressions (the log is in date order)."""
    table, sources = join_kuairand(src_dir)
    if max_rows is not None:
        table = table.slice(max(table.num_rows - max_rows, 0), max_rows) if last else table.slice(0, max_rows)
    columns = [_column(c, table.column(c), sources[c]) for c in table.column_names]
    dates = table.column("date").to_numpy()
    files: list[str] = []
    rows_per_date: dict[int, int] = {}
    for date in sorted(set(dates.tolist())):
        rows = np.nonzero(dates == date)[0].tolist()
        rows_per_date[date] = len(rows)
        files += write_shards(os.path.join(out_dir, f"date={date}"), columns, rows, shards_per_date,
                              fmt=fmt, compression=compression)
    return ConvertResult(rows_per_date, files, [c.name for c in columns])


# ---- the item table: every video as of one day, with a click-through prior from the days before ----

PRIOR_STRENGTH = 20.0  # impressions' worth of the average click rate every video's prior starts from


@dataclass(frozen=True)
class ItemTableResult:
    path: str
    items: int
    left_out: dict[str, int]  # reason -> videos not written
    clicked_days: tuple[int, int] | None  # first and last date of the impressions the prior counts


def _days(yyyymmdd: np.ndarray) -> np.ndarray:
    """YYYYMMDD integers as numpy days."""
    text = [f"{int(d):08d}" for d in yyyymmdd]
    return np.array([np.datetime64(f"{t[:4]}-{t[4:6]}-{t[6:]}") for t in text], dtype="datetime64[D]")


def kuairand_item_table(src_dir: str, out_path: str, reference_date: int) -> ItemTableResult:
    """Write the KuaiRand item table as of `reference_date` (YYYYMMDD) to `out_path` (CSV, or TFRecord for a
    .tfrecord / .tfrecord.gz name): one row per video of item_features.parquet (videos never shown included)
    with the item tower's columns (video_id, author_id, music_id, video_type, upload_type, music_type, tag,
    duration_ms, and freshness_days = reference_date - upload date, as the impressions carry it) and
    `ctr_prior`: the video's click rate on the impressions BEFORE reference_date, smoothed towards the average
    rate with PRIOR_STRENGTH impressions (offline-only stat_* columns see the whole period, the future
    included, and are not used). Videos uploaded after reference_date, or without a duration (none in
    item_features, never shown), are left out and counted."""
    items = _read(src_dir, "item_features", ("video_id", "author_id", "music_id", "video_type", "upload_type",
                                             "music_type", "tag", "video_duration", "upload_date"))
    inter = _read(src_dir, "interactions", ("video_id", "date", "is_click", "duration_ms"))
    video = items.column("video_id").to_numpy()
    dates = inter.column("date").to_numpy()
    before = dates < reference_date
    seen_video = inter.column("video_id").to_numpy()[before]
    clicks = inter.column("is_click").to_numpy()[before].astype(np.float64)
    index = _lookup(pa.chunked_array([seen_video]), items, "video_id")
    known = index >= 0
    shows = np.bincount(index[known], minlength=len(video)).astype(np.float64)
    clicked = np.bincount(index[known], weights=clicks[known], minlength=len(video))
    average = clicks.mean() if clicks.size else 0.0
    prior = (clicked + PRIOR_STRENGTH * average) / (shows + PRIOR_STRENGTH)
    # duration: item_features', else an impression's (any day: a video's length does not change)
    duration = items.column("video_duration").to_numpy(zero_copy_only=False).astype(np.float64)
    shown = _lookup(pa.chunked_array([inter.column("video_id").to_numpy()]), items, "video_id")
    from_impressions = np.full(len(video), np.nan)
    from_impressions[shown[shown >= 0]] = inter.column("duration_ms").to_numpy()[shown >= 0]
    duration = np.where(np.isnan(duration), from_impressions, duration)
    freshness = (np.datetime64(_days(np.array([reference_date]))[0]) - _days(items.column("upload_date").to_numpy())
                 ).astype("timedelta64[D]").astype(np.int64)
    left_out = {"uploaded after the reference date": int((freshness < 0).sum()),
                "no duration": int((np.isnan(duration) & (freshness >= 0)).sum())}
    rows = np.nonzero((freshness >= 0) & ~np.isnan(duration))[0]
    music_type = items.column("music_type").to_numpy(zero_copy_only=False)
    columns = [_column(name, items.column(name), "item_features.parquet")
               for name in ("video_id", "author_id", "music_id", "video_type", "upload_type", "tag")]
    columns += [Column("music_type", "int", [None if np.isnan(v) else int(v) for v in music_type]),
                Column("duration_ms", "int", [int(v) if not np.isnan(v) else None for v in duration]),
                Column("freshness_days", "int", freshness.tolist()),
                Column("ctr_prior", "float", prior.tolist())]
    picked = [Column(c.name, c.type, [c.values[i] for i in rows]) for c in columns]
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    if out_path.endswith((".tfrecord", ".tfrecord.gz")):
        write_tfrecord(out_path, picked, range(len(rows)), "GZIP" if out_path.endswith(".gz") else "none")
    else:
        write_csv(out_path, picked, range(len(rows)))
    span = (int(dates[before].min()), int(dates[before].max())) if before.any() else None
    return ItemTableResult(out_path, len(rows), {k: v for k, v in left_out.items() if v}, span)
