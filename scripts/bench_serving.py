"""Serving latency on KuaiRand rows, side by side in one process.

1. `prerank` (one user, N candidates, user tower once) against `pairwise` (the user's features repeated N
   times) for N = 100, 1,000, 5,000: p50 / p99 per call and the ratios.
2. One user's vector: the SavedModel's `user_embedding` against ONNX Runtime's user tower.
3. What the signatures' input checks cost: each signature with and without them, p50 / p99.
Needs an export and an ONNX export of the same model (scripts/demo.sh makes both):

    .venv/bin/python scripts/bench_serving.py --export exports/kuairand --onnx exports/kuairand-onnx/1
"""
import argparse
import os
import tempfile

import trainer  # noqa: F401  (legacy Keras before TensorFlow)
import onnxruntime as ort
import tensorflow as tf

from benchmarks.serving_bench import (check_cost_table, input_check_cost, prerank_table, prerank_vs_pairwise,
                                      user_vector_saved_model_vs_onnx)
from serving.savedmodel.opening import open_export
from serving.savedmodel.prune import prune_model
from trainer.data.catalog import build_catalog
from trainer.data.input_config import InputConfig
from trainer.data.pipeline import make_pipeline
from trainer.data.splits import every_split
from trainer.spec import load_spec
from trainer.training.trained import load_trained

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export", default=os.path.join(REPO, "exports", "kuairand"),
                        help="SavedModel version dir or base dir (newest version)")
    parser.add_argument("--onnx", help="ONNX export dir (default: exports/kuairand-onnx/<version>)")
    parser.add_argument("--sizes", default="100,1000,5000")
    parser.add_argument("--reps", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2, help="TF and ONNX Runtime intra-op threads")
    args = parser.parse_args()
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    opened = open_export(args.export)
    export_dir, manifest, loaded = opened.path, opened.manifest, opened.loaded
    spec = load_spec(manifest["spec"])
    data = spec.data.eval or manifest["warmup_data"]
    features = next(iter(make_pipeline(spec, data, InputConfig(batch_size=8, shuffle_buffer=0))))["features"]
    catalog = build_catalog(spec, every_split(spec, "train", "eval"))
    sizes = tuple(int(n) for n in args.sizes.split(","))
    print(f"export {export_dir}; {catalog.size} catalog items; {args.reps} calls each; "
          f"{args.threads} threads; latencies in ms\n")
    print("1. one user, N candidates: prerank (user tower once) vs pairwise (user features repeated N times)")
    rows = prerank_vs_pairwise(loaded, spec, features, catalog, sizes, args.reps)
    print(prerank_table(rows))
    print(f"   same scores: max |prerank - pairwise| = {max(r.max_diff for r in rows):.2g}\n")
    onnx_dir = args.onnx or os.path.join(REPO, "exports", "kuairand-onnx", os.path.basename(export_dir))
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    session = ort.InferenceSession(os.path.join(onnx_dir, "user_vector.onnx"), options,
                                   providers=["CPUExecutionProvider"])
    model = load_trained(spec, manifest["model_dir"], data, checkpoint=manifest["checkpoint"])
    prune_model(model, model.checkpoint_path)
    u = user_vector_saved_model_vs_onnx(loaded, model, session, spec, features, args.reps * 5)
    print("2. one user's vector")
    print(f"{'path':<52}{'p50':>8}{'p99':>8}")
    for name, lat in (("SavedModel user_embedding (raw features)", u.saved_model),
                      ("ONNX Runtime user tower (ids given)", u.onnx)):
        print(f"{name:<52}{lat.p50:>8.3f}{lat.p99:>8.3f}")
    print(f"SavedModel / ONNX Runtime: p50 {u.saved_model.p50 / u.onnx.p50:.1f}x, "
          f"p99 {u.saved_model.p99 / u.onnx.p99:.1f}x; max |diff| {u.max_diff:.2g}")
    batch = next(iter(make_pipeline(spec, data, InputConfig(batch_size=256, shuffle_buffer=0))))["features"]
    print("\n3. the signatures' input checks: with and without, both saved and loaded (calls alternating)")
    with tempfile.TemporaryDirectory() as workdir:
        print(check_cost_table(input_check_cost(model, spec, batch, catalog, sizes, args.reps, workdir)))


if __name__ == "__main__":
    main()
