"""prerank serving: the SavedModel for TF Serving (pruning, signatures, warmup, versioned export,
verification), its TF Serving configs, the ONNX towers, and the item vector store.

    import serving
    result = serving.export(spec, "runs/kuairand", "exports/kuairand")   # -> BASE/<version>
    metrics = serving.evaluate_export(result.path, sampled=(0, 10))     # -> BASE/<version>.evaluation.json

Importing this package selects legacy Keras (through `trainer`) and nothing else; `serving.export` (and the
other names) load their modules on first use.
"""
import importlib

import trainer  # noqa: F401  (selects legacy Keras before TensorFlow is imported)

_API = {"export": ("serving.savedmodel.export", "export_model"),
        "ExportResult": ("serving.savedmodel.export", "ExportResult"),
        "verify_export": ("serving.savedmodel.verify", "verify_export"),
        "evaluate_export": ("serving.savedmodel.evaluation", "evaluate_export")}
__all__ = sorted(_API)


def __getattr__(name: str):
    if name in _API:
        module, attribute = _API[name]
        return getattr(importlib.import_module(module), attribute)
    raise AttributeError(f"module 'serving' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
