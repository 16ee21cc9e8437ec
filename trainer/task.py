"""`python -m trainer.task SPEC --model-dir DIR ...`: the training job, the same as `prerank train`.

The job validates the spec and its config (with `--set` overrides), fits or
reloads the preprocessing into MODEL_DIR/preprocessing/, trains under the
strategy TF_CONFIG selects, checkpoints, logs, evaluates on the validation
data and writes MODEL_DIR/metrics.json (`trainer.api.train`). Run the same
command again after a kill to resume.
"""
import sys

from trainer.cli import train_main

main = train_main

if __name__ == "__main__":
    sys.exit(main())
