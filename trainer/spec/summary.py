"""The spec as a readable table (`prerank validate`)."""
from trainer.spec.types import Feature, Spec
from trainer.tables import text_table


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
           text_table(["feature", "kind", "side", "table", "dim", "transform"], rows), "",
           text_table(["label", "column", "type", "transform", "weight"],
                       [[l.name, l.column, l.type, l.transform, f"{l.weight:g}"] for l in spec.labels])]
    sides = {s: len(spec.features_on(s)) for s in ("user", "context", "item", "cross", "privileged")}
    out.append("\nstudent user tower: user+context ({} + {}), item tower: item ({}); teacher only: cross ({}), "
               "privileged ({})".format(*sides.values()))
    if spec.group_key:
        out.append(f"group key: {', '.join(spec.group_key)}")
    return "\n".join(out)
