#!/usr/bin/env bash
# The main job end to end on the bundled KuaiRand data, from a fresh clone:
# install, convert, validate the spec, train the joint student/teacher model,
# evaluate it on the held-out day (04-30), plot the run, then export: a pruned,
# verified, versioned SavedModel for TF Serving, evaluated again on 04-30 through
# its own signatures, the ONNX towers, and the item vectors of the catalog.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export PATH="$PWD/.venv/bin:$PATH"
SPEC=feature_specs/kuairand.yaml
if [ ! -f out/kuairand/tfrecord/.complete ]; then
  rm -rf out/kuairand/tfrecord
  prerank convert-kuairand --src data/kuairand --out out/kuairand/tfrecord
  touch out/kuairand/tfrecord/.complete
fi
prerank validate "$SPEC"
MODEL_DIR=${MODEL_DIR:-runs/kuairand}
# 04-29, the spec's validation day for tuning runs, is a training day here: no in-sample "validation"
prerank train "$SPEC" --model-dir "$MODEL_DIR" --no-validation   # resumes if MODEL_DIR holds a checkpoint
prerank evaluate "$SPEC" --model-dir "$MODEL_DIR" --sampled 0,10,50
prerank report --model-dir "$MODEL_DIR"
EXPORT_BASE=${EXPORT_BASE:-exports/kuairand}
prerank export "$SPEC" --model-dir "$MODEL_DIR" --export-base "$EXPORT_BASE"   # a new version each run
VERSION=$(ls "$EXPORT_BASE" | grep -E '^[0-9]+$' | sort -n | tail -1)
prerank verify-export "$EXPORT_BASE/$VERSION"
# the results as served: the export's own signatures on 04-30 -> $EXPORT_BASE/$VERSION.evaluation.json
prerank evaluate --export "$EXPORT_BASE/$VERSION" --sampled 0,10,50
prerank onnx "$SPEC" --model-dir "$MODEL_DIR" --out "${EXPORT_BASE}-onnx/$VERSION"
prerank embed-items "$EXPORT_BASE/$VERSION" --store "${EXPORT_BASE}-items"
