"""`prerank export`: a pruned, versioned SavedModel for TF Serving.

Layout: BASE/<version>/ (an integer, TF Serving's), holding saved_model.pb,
variables/ and assets.extra/ (warmup requests, `prerank_export.json` recording
where the export came from, what pruning did, and the export's fingerprint: the
identity of its item vectors, `layout.export_fingerprint`). A version is written into
BASE/.tmp-<version>-<host>-<pid> and renamed into place in one step, so TF Serving's
file watcher (which ignores names that are not integers) never sees half a
version (`trainer.files`); an existing version is never overwritten;
leftovers of a killed export are removed by the next one.
"""
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass

import tensorflow as tf

from serving.savedmodel.layout import MANIFEST, MODEL_NAME, checkpoint_digest, directory_bytes, export_fingerprint, versions
from serving.savedmodel.prune import PruneRules, TablePruning, check_counted, prune_model
from serving.savedmodel.quantize import FLOAT32_MAX_ROWS, check_format
from serving.savedmodel.input_checks import input_rule
from serving.savedmodel.requests import call_signature
from serving.savedmodel.signatures import ServingModule, input_columns
from serving.savedmodel.warmup import replay_warmup, write_warmup
from trainer.data.input_config import InputConfig
from trainer.data.pipeline import make_pipeline
from trainer.data.splits import resolve_data
from trainer.errors import ConfigError, ExportError
from trainer.files import atomic_write, publish_directory, remove_stale_temporaries, temporary_for
from trainer.spec.loader import as_spec
from trainer.spec.sides import id_feature
from trainer.spec.types import Spec
from trainer.training.trained import load_trained, trained_checkpoint


@dataclass
class ExportResult:
    """What `export_model` wrote."""

    path: str
    version: int
    pruning: list[TablePruning]
    variables_bytes_before: int | None  # the unpruned SavedModel's variables/ (None: not measured)
    variables_bytes_after: int
    fingerprint: str = ""  # the export's identity (`layout.export_fingerprint`): keys its item vectors
    student_only: bool = False
    embeddings: str = "float32"  # how the tables' rows are stored (`quantize.FORMATS`)


def save_module(module: ServingModule, path: str) -> None:
    """Write the module as a SavedModel with its signatures."""
    tf.saved_model.save(module, path, signatures=dict(module.functions))


def export_model(spec: Spec | str, model_dir: str, base_dir: str, version: int | None = None,
                 sample_data: str | list[str] | None = None, prune: bool = True, measure_unpruned: bool = True,
                 log: Callable[[str], None] = print, student_only: bool = False,
                 embeddings: str = "float32", rules: PruneRules = PruneRules(),
                 float32_max_rows: int = FLOAT32_MAX_ROWS) -> ExportResult:
    """Export the latest checkpoint of `model_dir` as BASE/<version>; nothing is left behind if it fails.

    Args:
      spec: the model's Spec, or the path of its spec file.
      model_dir: a trained model directory.
      base_dir: TF Serving's base path; the version goes in BASE/<version>.
      version: a positive integer, never an existing one (default: the newest in BASE plus one).
      sample_data: rows for the warmup requests (default: the spec's data.eval, else data.train).
      prune: prune all-zero and never-updated rows (`serving.savedmodel.prune`).
      measure_unpruned: also write the unpruned SavedModel once, to report the bytes pruning saves.
      log: where progress lines go.
      student_only: only the student's signatures (user_embedding, item_embedding, prerank, pairwise,
        prerank_vectors) and the tables they read: no teacher, no cross or privileged tables.
      embeddings: how the kept rows are stored (`serving.savedmodel.quantize`): "float32" (as trained),
        "float16", or "int8" with a per-row float16 scale and offset; dequantized in the graph at lookup.
      rules: the opt-in pruning rules (`prune.PruneRules`: rows read fewer than N times in training read the
        table's OOV row; rows of a small L2 norm read zeros); they need `prune`.
      float32_max_rows: tables of at most this many rows stay float32 whatever `embeddings` says
        (`quantize.table_format`; 0: none).
    """
    spec = as_spec(spec)
    check_format(embeddings)
    if version is not None and version <= 0:
        raise ConfigError.single("--version", "", f"expected a positive integer (TF Serving's versions), "
                                 f"got {version}")
    _, latest = trained_checkpoint(model_dir)  # an untrained or damaged model directory is refused before BASE is
    if rules.rows_below is not None:  # created; so is usage pruning of a model trained before counting existed
        check_counted(latest, rules)
    os.makedirs(base_dir, exist_ok=True)
    remove_stale_temporaries(base_dir)
    existing = versions(base_dir)
    version = version if version is not None else (existing[-1] + 1 if existing else 1)
    final = os.path.join(base_dir, str(version))
    if os.path.exists(final):
        raise ExportError(f"{final} already exists: a version is never overwritten; choose another --version "
                          f"(existing: {existing})")
    sample_data = resolve_data(sample_data, spec, "eval", "train", purpose="rows for the warmup requests")
    model = load_trained(spec, model_dir, sample_data)
    checkpoint = model.checkpoint_path
    temp = temporary_for(final)
    try:
        before = None
        compressed = prune or embeddings != "float32"
        if measure_unpruned and compressed:
            save_module(ServingModule(model, student_only=student_only), temp + ".unpruned")
            before = directory_bytes(os.path.join(temp + ".unpruned", "variables"))
            shutil.rmtree(temp + ".unpruned")
        pruning = prune_model(model, checkpoint, embeddings, prune, rules, float32_max_rows) if compressed else []
        module = ServingModule(model, student_only=student_only)
        log(f"writing {temp} ...")
        save_module(module, temp)
        batch = next(iter(make_pipeline(spec, sample_data, InputConfig(batch_size=64, shuffle_buffer=0))))
        names = [n for n in module.functions if n != "serving_default"]
        vectors = None
        if "item_embedding" in module.functions:  # prerank_vectors' warmup takes the export's own item vectors
            def vectors(inputs):
                return call_signature(module.functions["item_embedding"], inputs, "warmup item vectors")["item_vector"]
        write_warmup(temp, spec, names, batch["features"], MODEL_NAME, item_vectors=vectors)
        replay_warmup(module.functions, temp)  # TF Serving would refuse to load a version whose warmup fails
        after = directory_bytes(os.path.join(temp, "variables"))
        options = {"pruned": prune, "student_only": student_only, "input_checks": True, "embeddings": embeddings}
        if embeddings != "float32" and float32_max_rows != FLOAT32_MAX_ROWS:
            options["float32_max_rows"] = float32_max_rows
        if rules != PruneRules():  # absent otherwise: the fingerprints of exports without rules stay as they were
            options["prune_rules"] = rules.as_dict()
        fingerprint = export_fingerprint(checkpoint_digest(checkpoint), spec.fingerprint, options)
        columns = input_columns(spec, "user") + input_columns(spec, "item") if student_only else \
            input_columns(spec, "all")
        manifest = {
            "version": version, "model_name": MODEL_NAME, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "model_dir": os.path.abspath(model_dir), "checkpoint": os.path.abspath(checkpoint),
            "spec": os.path.abspath(spec.path), "spec_fingerprint": spec.fingerprint, "warmup_data": sample_data,
            "signatures": sorted(module.functions), "pruned": prune, "student_only": student_only,
            "embeddings": embeddings, "prune_rules": rules.as_dict(),
            "float32_max_rows": float32_max_rows if compressed and embeddings != "float32" else 0,
            "fingerprint": fingerprint, "export_options": options,
            "vector_dim": model.config.model.student.user_tower[-1] if model.has_student else None,
            # what evaluating the export needs besides its signatures (`evaluation.ExportScorer`)
            "student_task": model.student_task if model.has_student else None,
            "catalog_id_feature": id_feature(spec, "item", model.config.model.student.dual_augmented.item_feature),
            "input_rules": {c.name: input_rule(c) for c in columns},
            "row_rules": module.row_rules,
            "pruning": [p.as_dict() for p in pruning],
            "variables_bytes": {"before": before, "after": after}}
        atomic_write(os.path.join(temp, MANIFEST), json.dumps(manifest, indent=2) + "\n")
        publish_directory(temp, final)  # one step: TF Serving sees the whole version or none
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        shutil.rmtree(temp + ".unpruned", ignore_errors=True)
        raise
    return ExportResult(final, version, pruning, before, after, fingerprint, student_only, embeddings)
