"""Evaluation results as a readable table (`prerank evaluate`, the end of `prerank train`)."""
from trainer.tables import text_table


def _value(v) -> str:
    return "n/a" if v is None else f"{v:.4f}"  # None: undefined on these rows (see the result's "undefined")


def metrics_table(result: dict) -> str:
    """Evaluation results (`trainer.evaluation.evaluate`) as aligned rows: model, task, metric values."""
    rows = []
    for task, values in result.get("teacher", {}).items():
        rows.append(["teacher", task, "  ".join(f"{k} {_value(v)}" for k, v in values.items())])
    student = result.get("student")
    if student:
        rows.append(["student", student["task"],
                     "  ".join(f"{k} {_value(v)}" for k, v in student.items() if k != "task")])
    for row in result.get("consistency", {}).get("by_k", []):
        rows.append(["consistency", f"+{row['sampled']} sampled/group",
                     "  ".join(f"{k} {_value(v)}" for k, v in row.items() if k not in ("sampled", "groups"))])
    notes = [f"n/a {path}: {why}" for path, why in result.get("undefined", {}).items()]
    return "\n".join([text_table(["model", "task", "metrics"], rows), *notes])
