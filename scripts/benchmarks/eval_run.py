"""One measured `evaluate` (the scoring of `trainer.evaluation.evaluate.evaluate_model`), run in its own process
by `eval_bench` with one version of prerank first on PYTHONPATH (the baseline's or this checkout's). It uses
only functions both versions have, and prints one JSON line: seconds (wall and CPU) of the set-up (item
catalog, model) and of the evaluation, the rows evaluated and the result.

    python scripts/benchmarks/eval_run.py SPEC MODEL_DIR --data GLOB --items GLOB --sampled 0,10,50
"""
import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import trainer  # noqa: E402,F401  (legacy Keras before TensorFlow)

from trainer.data.catalog import build_catalog  # noqa: E402
from trainer.evaluation.evaluate import evaluate_model  # noqa: E402
from trainer.spec import load_spec  # noqa: E402
from trainer.training.trained import load_trained  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec")
    parser.add_argument("model_dir")
    parser.add_argument("--data", nargs="+", required=True)
    parser.add_argument("--items", nargs="+", required=True)
    parser.add_argument("--sampled", default="0,10,50")
    parser.add_argument("--max-batches", type=int)
    args = parser.parse_args()
    sampled = tuple(int(k) for k in args.sampled.split(","))
    spec = load_spec(args.spec)
    wall, cpu = time.perf_counter(), time.process_time()
    catalog = build_catalog(spec, args.items)
    model = load_trained(spec, args.model_dir, args.data, catalog)
    setup_wall, setup_cpu = time.perf_counter() - wall, time.process_time() - cpu
    wall, cpu = time.perf_counter(), time.process_time()
    result = evaluate_model(model, args.data, sampled=sampled, max_batches=args.max_batches)
    print(json.dumps({"code": os.path.dirname(os.path.dirname(trainer.__file__)), "rows": result["rows"],
                      "setup_wall": setup_wall, "setup_cpu": setup_cpu, "wall": time.perf_counter() - wall,
                      "cpu": time.process_time() - cpu, "catalog": catalog.size, "result": result}))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
