"""The KuaiRand item table as of one day (`prerank kuairand-items`): every video of item_features.parquet with
the item tower's columns, the ones the impressions carry computed for that day, and a click-through prior from
the days before it, for `prerank embed-items --items` and the scoring service's tiers.

KuaiRand-specific, like `kuairand.py` beside it (the generic path is an item table of the team's own).
"""
import os
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from trainer.data.datasets.kuairand import INTEGER_CODES, table_path
from trainer.data.writers import Column, write_csv, write_tfrecord
from trainer.errors import DataError

LIST_COLUMNS = {"tag": ","}  # string columns holding delimited lists


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
    path = table_path(src_dir, name)
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
