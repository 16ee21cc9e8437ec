"""Readable tables for the command line: the spec summary and a batch summary."""
import numpy as np

from trainer.spec import Feature, Spec


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def _transform(f: Feature) -> str:
    if f.kind in ("categorical", "sequence"):
        v = f.vocabulary
        vocab = {"data": f"vocab:data(min {v.min_count})", "file": "vocab:file",
                 "hash": f"hash:{v.buckets}"}[v.source]
        extra = f" pool:{f.pooling} max:{f.max_length}" if f.kind == "sequence" else ""
        return vocab + (" cross" if f.is_cross else "") + extra
    steps = [s.op if s.op != "bucketize" else f"bucketize({len(s.boundaries) + 1})" for s in f.transforms]
    return "+".join(steps) or "-"


def spec_table(spec: Spec) -> str:
    """feature, kind, side, table, dim, transform; then labels."""
    rows = [[f.name, f.kind, f.side, f.embedding.table if f.embedding else "-",
             str(f.embedding.dim if f.embedding else (f.dim or 1)), _transform(f)] for f in spec.features]
    out = [f"spec '{spec.name}' ({spec.path}): {len(spec.features)} features, {len(spec.tables)} tables, "
           f"{len(spec.labels)} labels",
           _table(["feature", "kind", "side", "table", "dim", "transform"], rows), "",
           _table(["label", "column", "type", "transform", "weight"],
                  [[l.name, l.column, l.type, l.transform, f"{l.weight:g}"] for l in spec.labels])]
    sides = {s: len(spec.features_on(s)) for s in ("user", "context", "item", "cross", "privileged")}
    out.append("\nstudent user tower: user+context ({} + {}), item tower: item ({}); teacher only: cross ({}), "
               "privileged ({})".format(*sides.values()))
    if spec.group_key:
        out.append(f"group key: {', '.join(spec.group_key)}")
    return "\n".join(out)


def _describe(value) -> tuple[str, str, str]:
    import tensorflow as tf  # only batch summaries need it; `prerank validate` stays TensorFlow-free

    if isinstance(value, tf.RaggedTensor):
        lengths = value.row_lengths().numpy()
        return (value.dtype.name, f"ragged [{value.nrows()}, None]",
                f"len mean {lengths.mean():.1f} max {lengths.max(initial=0)}, empty {np.mean(lengths == 0):.0%}")
    array = value.numpy()
    if array.dtype.kind in "SO":
        example = ", ".join(x.decode(errors="replace") for x in array.reshape(-1)[:3])
    elif array.dtype.kind == "f":
        example = f"mean {array.mean():.4g} min {array.min():.4g} max {array.max():.4g}"
    else:
        example = ", ".join(str(x) for x in array.reshape(-1)[:3]) + f" ({len(np.unique(array))} distinct)"
    return array.dtype.name, str(list(array.shape)), example


def batch_table(batch: dict) -> str:
    """One row per raw column and label of a batch: dtype, shape, a glimpse of the values."""
    rows = [[name, *_describe(value)] for name, value in batch["features"].items()]
    rows += [[f"label:{name}", *_describe(value)] for name, value in batch["labels"].items()]
    rows.append(["sample_weight", *_describe(batch["sample_weight"])])
    rows.append(["group", *_describe(batch["group"])])
    return _table(["column", "dtype", "shape", "values"], rows)


def metrics_table(result: dict) -> str:
    """Evaluation results (trainer.evaluate) as aligned rows: model, task, metric values."""
    rows = []
    for task, values in result.get("teacher", {}).items():
        rows.append(["teacher", task, "  ".join(f"{k} {v:.4f}" for k, v in values.items())])
    student = result.get("student")
    if student:
        rows.append(["student", student["task"],
                     "  ".join(f"{k} {v:.4f}" for k, v in student.items() if k != "task")])
    for row in result.get("consistency", {}).get("by_k", []):
        rows.append(["consistency", f"+{row['sampled']} sampled/group",
                     "  ".join(f"{k} {v:.4f}" for k, v in row.items() if k not in ("sampled", "groups"))])
    return _table(["model", "task", "metrics"], rows)
