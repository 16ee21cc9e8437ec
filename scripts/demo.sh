#!/usr/bin/env bash
# The main job end to end on the bundled KuaiRand data, from a fresh clone:
# install, convert, validate the spec, and run the training job.
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
prerank train "$SPEC" --model-dir runs/kuairand
